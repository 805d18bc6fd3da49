"""diffusers' reference for the scene model: one builder case, written as tools/tiny-flux writes its own.

    python tools/scene-flux/reference.py     # fixtures/reference/builder-cases/scene_dev_square

Runs diffusers' float32 `FluxPipeline` on `fixtures/scene-flux-dev` (the committed checkpoint) for
one held-out prompt and writes every intermediate the Rust replay compares with (token ids, text
embeddings, noise, sigmas, final latents, the PNG), adds the case to the builder cases' index and
rewrites `fixtures/index.json`.  flux-builder's test builds the folder and replays the case.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tools" / "tiny-flux"))
import formats  # noqa: E402
import generate as tiny  # noqa: E402  (render_case, the file index; sets offline env)

import torch  # noqa: E402

FIXTURES = REPO / "fixtures"
MODEL = "scene-flux-dev"
CASE = dict(name="scene_dev_square", prompt="a large orange circle in the bottom right corner, black background",
            seed=42, width=256, height=256, num_images=1, num_inference_steps=12, guidance_scale=3.5)


def main() -> int:
    from diffusers import FluxPipeline

    torch.set_num_threads(2)
    pipe = FluxPipeline.from_pretrained(str(FIXTURES / MODEL), torch_dtype=torch.float32)
    root = FIXTURES / "reference" / formats.BUILDER_CASES
    case_dir = root / CASE["name"]
    if case_dir.exists():
        shutil.rmtree(case_dir)
    # The model's text length (flux-rs-model.json) is the one render_case pads T5 to.
    assert tiny.T5_MAX_LENGTH == 32
    tiny.render_case(pipe, CASE, case_dir, "dev")
    formats.write_builder_index(FIXTURES, [{"name": CASE["name"], "model": MODEL, "lora": None}])
    tiny.write_file_index(FIXTURES)
    print(f"wrote {case_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
