"""Evaluate a scene-flux checkpoint with diffusers' FluxPipeline and the detector; draw a gallery.

    python evaluate.py --model fixtures/scene-flux-dev --out .cache/scene-flux/eval

Every prompt uses a colour x shape pair that training never showed (scenes.HELD_OUT).  Reports
attribute agreement per attribute, per size, per step count and per guidance scale, and whether
different seeds give different layouts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

import detect  # noqa: E402
import scenes  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PRESETS = {
    "square_hd": (1024, 1024), "square": (512, 512), "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024), "landscape_4_3": (1024, 768), "landscape_16_9": (1024, 576),
}
T5_LEN = 32


def load(model: Path):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(model), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompt: str, w: int, h: int, steps: int, guidance: float, seed: int) -> Image.Image:
    with torch.no_grad():
        return pipe(prompt, width=w, height=h, num_inference_steps=steps, guidance_scale=guidance,
                    generator=torch.Generator("cpu").manual_seed(seed), max_sequence_length=T5_LEN,
                    output_type="pil").images[0]


def run_set(pipe, prompts, w, h, steps, guidance, seed0, keep=None) -> dict:
    per_attr: dict[str, list[bool]] = {a: [] for a in detect.ATTRIBUTES}
    rows = []
    for i, (prompt, scene) in enumerate(prompts):
        img = generate(pipe, prompt, w, h, steps, guidance, seed0 + i)
        res, found = detect.score(img, scene.attributes())
        for k, v in res.items():
            per_attr[k].append(bool(v))
        rows.append({"prompt": prompt, "seed": seed0 + i, "stated": scene.attributes(), "agree": res,
                     "found": {k: found.get(k) for k in ("colour", "background", "shape", "count", "position", "x", "y")}})
        if keep is not None:
            keep.append((img, prompt, res))
    total = sum(len(v) for v in per_attr.values())
    ok = sum(sum(v) for v in per_attr.values())
    return {"size": f"{w}x{h}", "steps": steps, "guidance": guidance, "prompts": len(prompts),
            "agreement": round(ok / max(1, total), 4), "attributes": total,
            "per_attribute": {k: round(sum(v) / len(v), 3) if v else None for k, v in per_attr.items()},
            "rows": rows}


def seed_variety(pipe, w, h, steps, n_prompts=6, n_seeds=4) -> dict:
    """Prompts with no position: do seeds move the objects?"""
    rng = random.Random(99)
    dists, diffs = [], []
    for _ in range(n_prompts):
        scene = scenes.sample_scene(rng, held_out=True)
        scene.position = None
        prompt = scenes.make_prompt(rng, scene, fillers=0.0)
        found, pix = [], []
        for s in range(n_seeds):
            img = generate(pipe, prompt, w, h, steps, 3.5, 1000 + s)
            f = detect.detect(img)
            found.append((f.get("x"), f.get("y")))
            pix.append(np.asarray(img).astype(np.float32))
        for a in range(n_seeds):
            for b in range(a + 1, n_seeds):
                if None not in found[a] and None not in found[b]:
                    dists.append(float(np.hypot(found[a][0] - found[b][0], found[a][1] - found[b][1])))
                diffs.append(float(np.abs(pix[a] - pix[b]).mean()))
    return {"pairs": len(diffs), "mean_centroid_distance": round(float(np.mean(dists)), 3) if dists else None,
            "pairs_moved_over_0.05": round(float(np.mean([d > 0.05 for d in dists])), 3) if dists else None,
            "mean_abs_pixel_difference": round(float(np.mean(diffs)), 2)}


def font(size: int):
    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",):
        if os.path.exists(path):
            return ImageFont.truetype(path, size)
    return ImageFont.load_default()


def gallery(items, path: Path, cols: int = 4, cell: int = 256) -> None:
    """items: (image, caption) pairs; captions are wrapped under each picture."""
    f = font(13)
    cap_h = 58
    rows = (len(items) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (cell + 8) + 8, rows * (cell + cap_h + 8) + 8), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (img, caption) in enumerate(items):
        x, y = 8 + (i % cols) * (cell + 8), 8 + (i // cols) * (cell + cap_h + 8)
        im = img.copy()
        im.thumbnail((cell, cell))
        sheet.paste(im, (x + (cell - im.width) // 2, y + (cell - im.height) // 2))
        words, lines, line = caption.split(), [], ""
        for word in words:
            if draw.textlength(line + " " + word, font=f) > cell and line:
                lines.append(line)
                line = word
            else:
                line = (line + " " + word).strip()
        lines.append(line)
        for k, text in enumerate(lines[:4]):
            draw.text((x, y + cell + 2 + 14 * k), text, fill=(0, 0, 0), font=f)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=REPO / "fixtures" / "scene-flux-dev")
    ap.add_argument("--out", type=Path, default=REPO / ".cache" / "scene-flux" / "eval")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--size", default="256x256", help="size of the main held-out set")
    ap.add_argument("--per-size", type=int, default=2, help="prompts per preset size at 4 steps (0: skip presets)")
    ap.add_argument("--per-size-28", type=int, default=1, help="prompts per preset size at 28 steps")
    ap.add_argument("--guidances", default="7.0", help="extra guidance scales for the main set (28 steps)")
    ap.add_argument("--guidance-n", type=int, default=20, help="prompts of the main set run at those scales")
    ap.add_argument("--gallery", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="main set only, 28 and 4 steps")
    args = ap.parse_args()
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    pipe = load(args.model)
    w, h = (int(v) for v in args.size.split("x"))
    prompts = scenes.eval_prompts(args.n)
    report = {"model": str(args.model), "held_out_pairs": scenes.HELD_OUT, "runs": []}
    t0 = time.time()
    shown = []

    def record(r):
        report["runs"].append(r)
        print(f"{r['size']:>10} steps {r['steps']:>2} g {r['guidance']:>4}: agreement {r['agreement']:.3f} "
              f"{r['per_attribute']} ({time.time() - t0:.0f}s)", flush=True)
        (args.out / "report.json").write_text(json.dumps(report, indent=1))

    record(run_set(pipe, prompts, w, h, 28, 3.5, 0, keep=shown))
    record(run_set(pipe, prompts, w, h, 4, 3.5, 0))
    if not args.quick:
        sub = prompts[: args.guidance_n]
        for g in [float(v) for v in args.guidances.split(",") if v]:
            base = next(r for r in report["runs"] if r["steps"] == 28)
            r = run_set(pipe, sub, w, h, 28, g, 0)
            # The same prompts and seeds at the default guidance, for a like-for-like comparison.
            ok = sum(sum(row["agree"].values()) for row in base["rows"][: len(sub)])
            n_attr = sum(len(row["agree"]) for row in base["rows"][: len(sub)])
            r["agreement_same_prompts_at_3.5"] = round(ok / max(1, n_attr), 4)
            record(r)
        report["seed_variety"] = sv = seed_variety(pipe, w, h, 28, n_prompts=3, n_seeds=3)
        print("seed variety", sv, flush=True)
        if args.per_size:
            for name, (pw, ph) in PRESETS.items():
                for steps, n in ((28, args.per_size_28), (4, args.per_size)):
                    if n:
                        r = run_set(pipe, prompts[:n], pw, ph, steps, 3.5, 0, keep=shown if steps == 28 else None)
                        r["preset"] = name
                        record(r)
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    if args.gallery:
        items = [(img, f"{prompt}  [{sum(res.values())}/{len(res)}]") for img, prompt, res in shown[:12]]
        # One picture per preset size (the first prompt of each), with its size in the caption.
        for k, name in enumerate(PRESETS):
            j = len(prompts) + k * args.per_size_28
            if j < len(shown):
                img, prompt, res = shown[j]
                items.append((img, f"{name} {img.width}x{img.height}: {prompt}  [{sum(res.values())}/{len(res)}]"))
        gallery(items, args.gallery, cols=6)
    print(f"done in {time.time() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
