"""The README's gallery: pictures the `flux` binary made with its bundled model, prompts under each.

    python tools/scene-flux/gallery.py --flux target/release/flux --out docs/gallery.png

Every picture is made by `flux generate` (the Rust pipeline, the API defaults of 28 steps and
guidance 3.5 unless the caption says otherwise, a fixed seed) and composed with Pillow; nothing is
picked by hand: the prompts are the first of the held-out set (colour x shape pairs training never
showed) plus one per preset size.  Needs only Pillow (no torch).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

import scenes
from evaluate import gallery

# (prompt, size, steps): held-out pairs, then the preset sizes with the default steps.
PRESET_PROMPTS = [
    ("a large orange circle in the bottom right corner, black background", "square_hd", 28),
    ("two small black stars at the bottom on a yellow background", "landscape_4_3", 28),
    ("purple background with a large white triangle on the left", "portrait_4_3", 28),
]


def run(flux: Path, prompt: str, size: str, steps: int, seed: int, folder: Path) -> Path:
    out = subprocess.run(
        [str(flux), "generate", prompt, "--size", size, "--steps", str(steps), "--seed", str(seed),
         "--format", "png", "-o", str(folder)],
        check=True, capture_output=True, text=True)
    paths = [line for line in out.stdout.splitlines() if line.endswith(".png")]
    if not paths:
        raise SystemExit(f"flux generate printed no image path:\n{out.stdout}\n{out.stderr}")
    return Path(paths[0])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flux", type=Path, default=Path("target/release/flux"))
    ap.add_argument("--out", type=Path, default=Path("docs/gallery.png"))
    ap.add_argument("--count", type=int, default=9, help="held-out prompts (256x256)")
    args = ap.parse_args()
    items = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i, (prompt, _) in enumerate(scenes.eval_prompts(args.count, seed=4321)):
            path = run(args.flux, prompt, "256x256", 28, 10 + i, folder)
            items.append((Image.open(path).copy(), f"{prompt} (256x256, seed {10 + i})"))
        for i, (prompt, size, steps) in enumerate(PRESET_PROMPTS):
            path = run(args.flux, prompt, size, steps, 40 + i, folder)
            img = Image.open(path).copy()
            items.append((img, f"{prompt} ({size} {img.width}x{img.height}, seed {40 + i})"))
    gallery(items, args.out, cols=4, cell=224)
    print(f"wrote {args.out} ({len(items)} pictures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
