"""Write the files the Rust semantic test reads (fixtures/scene-eval/), from scenes.py alone (no torch).

- prompts.json: the held-out prompts (every one uses a colour x shape pair training never shows)
  with the attributes each states, and prompts with no position for the seed-variety check;
- detector/: scenes rendered by scenes.py at several sizes with their attributes, so the Rust
  detector is checked against the renderer's own images before it judges the model.

    python tools/scene-flux/export_eval.py      # rewrites fixtures/scene-eval/
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

from PIL import Image

import scenes

HERE = Path(__file__).resolve().parent
OUT = HERE.parents[1] / "fixtures" / "scene-eval"
DETECTOR_SIZES = [(128, 128), (256, 256), (192, 128), (128, 192), (256, 144), (144, 256)]


def main() -> int:
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "detector").mkdir(parents=True)
    held = [{"prompt": p, "stated": s.attributes()} for p, s in scenes.eval_prompts(48)]
    rng = random.Random(99)
    unplaced = []
    for _ in range(8):
        scene = scenes.sample_scene(rng, held_out=True)
        scene.position = None
        unplaced.append({"prompt": scenes.make_prompt(rng, scene, fillers=0.0), "stated": scene.attributes()})
    cases = []
    rng = random.Random(7)
    for k in range(48):
        scene = scenes.sample_scene(rng, held_out=None)
        scenes.make_prompt(rng, scene)
        w, h = DETECTOR_SIZES[k % len(DETECTOR_SIZES)]
        name = f"{k:02d}.png"
        Image.fromarray(scenes.render(rng, scene, w, h)).save(OUT / "detector" / name, optimize=True)
        cases.append({"file": name, "stated": scene.attributes()})
    doc = {
        "description": "written by tools/scene-flux/export_eval.py from tools/scene-flux/scenes.py; read by "
                       "crates/flux-core/tests/it/scene_model.rs",
        "colours": {name: list(rgb) for name, rgb in scenes.COLOURS.items()},
        "held_out_pairs": [list(p) for p in scenes.HELD_OUT],
        "held_out": held,
        "unplaced": unplaced,
        "detector_cases": cases,
    }
    (OUT / "prompts.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(held)} held-out prompts, {len(unplaced)} unplaced, {len(cases)} detector cases to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
