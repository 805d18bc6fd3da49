"""A detector for scene images: colour masks, connected components, centroids, template shapes.

`detect(image)` reads what an image shows (background colour, object colour, count, shape,
position, size); `score(image, attributes)` compares that with what a prompt states.  It knows
nothing about the model: it was written against the renderer's own images (`python detect.py
--self-test` checks it agrees with them).
"""

from __future__ import annotations

import argparse
import random
import sys

import numpy as np
from PIL import Image, ImageDraw

from scenes import COLOURS, COLOUR_NAMES, SHAPES, draw_shape, make_prompt, render, sample_scene

PALETTE = np.array([COLOURS[c] for c in COLOUR_NAMES], dtype=np.float32)
MAX_SIDE = 256
TEMPLATE = 32
# A pixel farther than this (RGB Euclidean) from every palette colour is "unknown".
COLOUR_TOLERANCE = 100.0


def _templates() -> dict[str, np.ndarray]:
    out = {}
    for shape in SHAPES:
        img = Image.new("L", (400, 400), 0)
        draw_shape(ImageDraw.Draw(img), shape, 200, 200, 150, 255, 0)
        out[shape] = _normalise(np.asarray(img) > 127)
    return out


def _normalise(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
    img = Image.fromarray((crop * 255).astype(np.uint8)).resize((TEMPLATE, TEMPLATE), Image.BILINEAR)
    return np.asarray(img) > 127


_TEMPLATES = None


def classify_shape(mask: np.ndarray) -> tuple[str, float]:
    global _TEMPLATES
    if _TEMPLATES is None:
        _TEMPLATES = _templates()
    norm = _normalise(mask)
    best, best_iou = "", -1.0
    for shape, tmpl in _TEMPLATES.items():
        iou = float((norm & tmpl).sum()) / max(1.0, float((norm | tmpl).sum()))
        if iou > best_iou:
            best, best_iou = shape, iou
    return best, best_iou


def components(mask: np.ndarray) -> np.ndarray:
    """4-connected component labels (0 = not in mask) by max-label propagation."""
    h, w = mask.shape
    labels = np.where(mask, np.arange(1, h * w + 1, dtype=np.int64).reshape(h, w), 0)
    while True:
        new = labels.copy()
        new[1:, :] = np.maximum(new[1:, :], labels[:-1, :])
        new[:-1, :] = np.maximum(new[:-1, :], labels[1:, :])
        new[:, 1:] = np.maximum(new[:, 1:], labels[:, :-1])
        new[:, :-1] = np.maximum(new[:, :-1], labels[:, 1:])
        new = np.where(mask, new, 0)
        if np.array_equal(new, labels):
            return labels
        labels = new


def position_name(x: float, y: float) -> str:
    col = "left" if x < 0.4 else "right" if x > 0.6 else ""
    row = "top" if y < 0.4 else "bottom" if y > 0.6 else ""
    if col and row:
        return f"{row} {col}"
    return col or row or "centre"


def position_agrees(stated: str, x: float, y: float, count: int) -> bool:
    """Side positions of a group constrain only their axis; a single object must also be central on
    the other axis; corners and centre constrain both."""
    if stated == "centre":
        return 0.33 <= x <= 0.67 and 0.33 <= y <= 0.67
    ok_x = {"left": x < 0.4, "right": x > 0.6}
    ok_y = {"top": y < 0.4, "bottom": y > 0.6}
    parts = stated.split()
    if len(parts) == 2:
        return ok_y[parts[0]] and ok_x[parts[1]]
    if stated in ok_x:
        return ok_x[stated] and (count > 1 or 0.3 <= y <= 0.7)
    return ok_y[stated] and (count > 1 or 0.3 <= x <= 0.7)


def detect(image) -> dict:
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    img = img.convert("RGB")
    scale = MAX_SIDE / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BOX)
    px = np.asarray(img).astype(np.float32)
    h, w, _ = px.shape
    dist = np.linalg.norm(px[:, :, None, :] - PALETTE[None, None], axis=-1)
    cls = dist.argmin(-1)
    cls[dist.min(-1) > COLOUR_TOLERANCE] = -1
    border = max(1, round(0.04 * min(h, w)))
    frame = np.concatenate([cls[:border].ravel(), cls[-border:].ravel(), cls[:, :border].ravel(), cls[:, -border:].ravel()])
    frame = frame[frame >= 0]
    if frame.size == 0:
        return {"background": None, "colour": None, "count": 0, "shape": None, "position": None}
    bg = int(np.bincount(frame, minlength=len(COLOUR_NAMES)).argmax())
    obj = (cls >= 0) & (cls != bg)
    counts = np.bincount(cls[obj], minlength=len(COLOUR_NAMES)) if obj.any() else np.zeros(len(COLOUR_NAMES), int)
    result = {"background": COLOUR_NAMES[bg], "colour": None, "count": 0, "shape": None, "position": None,
              "size": None, "shapes": [], "ious": []}
    min_area = 0.002 * h * w
    if counts.max() < min_area:
        return result
    colour = int(counts.argmax())
    labels = components(cls == colour)
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    keep = [(a, i) for i, a in zip(ids, areas) if a >= min_area]
    if not keep:
        return result
    largest = max(a for a, _ in keep)
    keep = sorted([(a, i) for a, i in keep if a >= 0.25 * largest], reverse=True)
    cx, cy, shapes, ious, diam = [], [], [], [], []
    for _, i in keep:
        ys, xs = np.nonzero(labels == i)
        cx.append((xs.mean() + 0.5) / w)
        cy.append((ys.mean() + 0.5) / h)
        shape, iou = classify_shape(labels == i)
        shapes.append(shape)
        ious.append(round(iou, 3))
        diam.append(max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) / min(h, w))
    # The shape of the group: most common, ties to the largest component's.
    shape = max(shapes, key=lambda s: (shapes.count(s), -shapes.index(s)))
    x, y = float(np.mean(cx)), float(np.mean(cy))
    result.update(colour=COLOUR_NAMES[colour], count=len(keep), shape=shape, position=position_name(x, y),
                  x=round(x, 3), y=round(y, 3), size="large" if max(diam) > 0.21 else "small",
                  shapes=shapes, ious=ious)
    return result


ATTRIBUTES = ["colour", "background", "shape", "position", "count"]


def score(image, attributes: dict) -> dict:
    """{attribute: True/False} for every attribute the prompt states."""
    found = detect(image)
    out = {}
    for key, want in attributes.items():
        if key == "position":
            out[key] = found["colour"] is not None and position_agrees(want, found["x"], found["y"], found["count"])
        else:
            out[key] = found.get(key) == want
    return out, found


def self_test(n: int) -> int:
    rng = random.Random(7)
    sizes = [(128, 128), (256, 256), (512, 512), (1024, 576), (576, 1024), (768, 1024)]
    bad = total = 0
    for k in range(n):
        scene = sample_scene(rng, held_out=None)
        make_prompt(rng, scene)
        wh = sizes[k % len(sizes)]
        res, found = score(render(rng, scene, *wh), scene.attributes())
        total += len(res)
        if not all(res.values()):
            bad += sum(not v for v in res.values())
            print("MISS", wh, scene, {k: v for k, v in res.items() if not v}, found)
    print(f"self-test: {total - bad}/{total} attributes agree on rendered scenes")
    return 0 if bad <= 0.01 * total else 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--self-test", type=int, default=300)
    sys.exit(self_test(ap.parse_args().self_test))
