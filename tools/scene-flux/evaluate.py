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


def summarise(per_attr: dict, w: int, h: int, steps: int, guidance: float, n: int, rows: list) -> dict:
    total = sum(len(v) for v in per_attr.values())
    ok = sum(sum(v) for v in per_attr.values())
    return {"size": f"{w}x{h}", "steps": steps, "guidance": guidance, "prompts": n,
            "agreement": round(ok / max(1, total), 4), "attributes": total,
            "per_attribute": {k: round(sum(v) / len(v), 3) if v else None for k, v in per_attr.items()},
            "rows": rows}


def run_set(pipe, prompts, w, h, steps, guidance, seed0, keep=None, out: Path | None = None,
            partial: Path | None = None) -> dict:
    per_attr: dict[str, list[bool]] = {a: [] for a in detect.ATTRIBUTES}
    rows = []
    folder = out / f"{w}x{h}_steps{steps}_g{guidance}" if out else None
    if folder:
        folder.mkdir(parents=True, exist_ok=True)
    for i, (prompt, scene) in enumerate(prompts):
        img = generate(pipe, prompt, w, h, steps, guidance, seed0 + i)
        if folder:
            img.save(folder / f"{i:02d}.png")
        res, found = detect.score(img, scene.attributes())
        for k, v in res.items():
            per_attr[k].append(bool(v))
        rows.append({"prompt": prompt, "seed": seed0 + i, "stated": scene.attributes(), "agree": res,
                     "image": str(folder / f"{i:02d}.png") if folder else None,
                     "found": {k: found.get(k) for k in ("colour", "background", "shape", "count", "position", "x", "y")}})
        if keep is not None:
            keep.append((img, prompt, res))
        if partial is not None:
            # A run cut short still leaves what it measured.
            partial.write_text(json.dumps(summarise(per_attr, w, h, steps, guidance, len(rows), rows), indent=1))
    return summarise(per_attr, w, h, steps, guidance, len(prompts), rows)


def seed_variety(pipe, w, h, steps, n_prompts=6, n_seeds=4, out: Path | None = None) -> dict:
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
            if out:
                out.mkdir(parents=True, exist_ok=True)
                img.save(out / f"p{len(dists)}_{s}.png")
            f = detect.detect(img)
            found.append((f.get("x"), f.get("y")))
            pix.append(np.asarray(img).astype(np.float32))
        for a in range(n_seeds):
            for b in range(a + 1, n_seeds):
                if None not in found[a] and None not in found[b]:
                    dists.append(float(np.hypot(found[a][0] - found[b][0], found[a][1] - found[b][1])))
                diffs.append(float(np.abs(pix[a] - pix[b]).mean()))
    return {"steps": steps, "size": f"{w}x{h}", "pairs": len(diffs), "mean_centroid_distance": round(float(np.mean(dists)), 3) if dists else None,
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


def make_gallery(out: Path, path: Path) -> None:
    """From the saved reports: 12 pictures of the main set (28 steps) and one per preset size."""
    runs = []
    for rep in sorted(out.glob("report_*.json")):
        runs += json.loads(rep.read_text())["runs"]
    items = []
    for part in sorted(out.glob("partial_main_*.json")):
        runs.append(json.loads(part.read_text()))
    main = [r for r in runs if r["guidance"] == 3.5 and "preset" not in r and r["size"] != "seeds"]
    main.sort(key=lambda r: (-r["steps"], -r["prompts"]))
    if main:
        rows = main[0]["rows"][:12]
        if len(rows) < 12 and len(main) > 1:
            rows = rows + [r for r in next(m for m in main if m["steps"] != main[0]["steps"])["rows"]][len(rows):12]
        for row in rows:
            steps = 28 if row in main[0]["rows"] else 4
            items.append((Image.open(row["image"]), f"{row['prompt']}  ({steps} steps) "
                                                    f"[{sum(row['agree'].values())}/{len(row['agree'])}]"))
    seen = set()
    for r in sorted([r for r in runs if "preset" in r], key=lambda r: -r["steps"]):
        if r["preset"] in seen:
            continue
        seen.add(r["preset"])
        row = r["rows"][0]
        img = Image.open(row["image"])
        items.append((img, f"{r['preset']} {img.width}x{img.height}, {r['steps']} steps: {row['prompt']}  "
                           f"[{sum(row['agree'].values())}/{len(row['agree'])}]"))
    gallery(items, path, cols=6)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=REPO / "fixtures" / "scene-flux-dev")
    ap.add_argument("--out", type=Path, default=REPO / ".cache" / "scene-flux" / "eval")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--size", default="256x256", help="size of the main held-out set")
    ap.add_argument("--parts", default="main,guidance,seeds,presets",
                    help="which parts to run (two processes can share the work)")
    ap.add_argument("--guidances", default="7.0", help="extra guidance scales for the main set (28 steps)")
    ap.add_argument("--guidance-n", type=int, default=20, help="prompts of the main set run at those scales")
    ap.add_argument("--seed-steps", type=int, default=28)
    ap.add_argument("--per-size", type=int, default=2, help="prompts per preset size at 4 steps")
    ap.add_argument("--per-size-28", default="square:2", help="preset:n pairs run at 28 steps")
    ap.add_argument("--gallery", type=Path, default=None, help="only compose the gallery from saved reports")
    args = ap.parse_args()
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.gallery:
        make_gallery(args.out, args.gallery)
        return 0
    parts = args.parts.split(",")
    pipe = load(args.model)
    w, h = (int(v) for v in args.size.split("x"))
    prompts = scenes.eval_prompts(args.n)
    report = {"model": str(args.model), "held_out_pairs": scenes.HELD_OUT, "runs": []}
    report_path = args.out / f"report_{'_'.join(parts)}.json"
    t0 = time.time()

    def record(r):
        r["seconds"] = round(time.time() - t0, 1)
        report["runs"].append(r)
        print(f"{r['size']:>10} steps {r['steps']:>2} g {r['guidance']:>4}: agreement {r['agreement']:.3f} "
              f"{r['per_attribute']} ({time.time() - t0:.0f}s)", flush=True)
        report_path.write_text(json.dumps(report, indent=1))

    if "main" in parts:
        for steps in (4, 28):
            record(run_set(pipe, prompts, w, h, steps, 3.5, 0, out=args.out,
                           partial=args.out / f"partial_main_{steps}.json"))
    if "guidance" in parts:
        sub = prompts[: args.guidance_n]
        for g in [3.5] + [float(v) for v in args.guidances.split(",") if v]:
            record(run_set(pipe, sub, w, h, 28, g, 0, out=args.out / "guidance"))
    if "seeds" in parts:
        report["seed_variety"] = sv = seed_variety(pipe, w, h, args.seed_steps, n_prompts=3, n_seeds=3,
                                                   out=args.out / "seeds")
        print("seed variety", sv, flush=True)
        report_path.write_text(json.dumps(report, indent=1))
    if "presets" in parts:
        n28 = dict((k, int(v)) for k, v in (kv.split(":") for kv in args.per_size_28.split(",") if kv))
        for name, (pw, ph) in PRESETS.items():
            for steps, n in ((28, n28.get(name, 0)), (4, args.per_size)):
                if n:
                    r = run_set(pipe, prompts[:n], pw, ph, steps, 3.5, 0, out=args.out / "presets")
                    r["preset"] = name
                    record(r)
    print(f"done in {time.time() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
