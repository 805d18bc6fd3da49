"""The scene world: attributes, prompts in several phrasings, and a renderer (Pillow, flat colours).

A scene is one group of 1-3 identical objects (colour, shape, size) placed at a named position on a
plain background.  Coordinates are relative to the image (x / W, y / H) and object sizes relative to
min(W, H), so the same scene renders at every size and aspect ratio.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (35, 70, 225),
    "yellow": (245, 215, 25),
    "orange": (245, 130, 15),
    "purple": (140, 45, 185),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOUR_NAMES = list(COLOURS)
SHAPES = ["circle", "square", "triangle", "star", "ring", "cross"]
PLURAL = {s: s + ("es" if s.endswith("s") else "s") for s in SHAPES}  # "crosses"
SIZES = ["small", "large"]
COUNTS = {1: "one", 2: "two", 3: "three"}
# Relative anchor of each named position (x, y), y down.
POSITIONS = {
    "left": (0.24, 0.5),
    "right": (0.76, 0.5),
    "top": (0.5, 0.24),
    "bottom": (0.5, 0.76),
    "centre": (0.5, 0.5),
    "top left": (0.24, 0.24),
    "top right": (0.76, 0.24),
    "bottom left": (0.24, 0.76),
    "bottom right": (0.76, 0.76),
}
CORNERS = ["top left", "top right", "bottom left", "bottom right"]
# Object diameter relative to min(W, H).
DIAMETER = {"small": 0.15, "large": 0.32}
GROUP_DIAMETER = {"small": 0.13, "large": 0.22}

# Colour x shape pairs that training never shows as an object (evaluation uses only these).
HELD_OUT = [
    ("red", "star"), ("green", "ring"), ("blue", "triangle"), ("yellow", "cross"),
    ("orange", "circle"), ("purple", "square"), ("white", "triangle"), ("black", "star"),
]

FILLERS_BEFORE = [
    "a photo of", "a picture of", "an image of", "please draw", "draw", "a simple drawing of",
    "a nice illustration of", "high quality render of", "a cute", "an abstract painting of",
]
FILLERS_AFTER = [
    "high quality", "4k", "beautiful", "very detailed", "simple style", "flat colours",
    "trending on artstation", "minimalist", "clean", "masterpiece", "award winning",
]


@dataclass
class Scene:
    colour: str
    shape: str
    size: str
    count: int
    position: str | None  # None: anywhere
    background: str
    # What the prompt states (the detector scores only these).
    states_background: bool = True
    states_position: bool = True
    states_size: bool = True

    def attributes(self) -> dict:
        out = {"colour": self.colour, "shape": self.shape, "count": self.count}
        if self.states_background:
            out["background"] = self.background
        if self.position is not None and self.states_position:
            out["position"] = self.position
        return out


def sample_scene(rng: random.Random, held_out: bool | None = False) -> Scene:
    """held_out False: never a held-out pair; True: always one; None: anything."""
    while True:
        colour = rng.choice(COLOUR_NAMES)
        shape = rng.choice(SHAPES)
        is_held = (colour, shape) in HELD_OUT
        if held_out is None or is_held == held_out:
            break
    background = rng.choice([c for c in COLOUR_NAMES if c != colour])
    count = rng.choices([1, 2, 3], weights=[0.55, 0.25, 0.2])[0]
    size = rng.choice(SIZES)
    if count == 1:
        position = rng.choice(list(POSITIONS) + [None])
    elif count == 2:
        position = rng.choice(["left", "right", "top", "bottom", "centre", None])
    else:
        position = rng.choice(["left", "right", "top", "bottom", None] if size == "small" else ["top", "bottom", None])
    return Scene(colour, shape, size, count, position, background)


def _position_phrase(rng: random.Random, position: str) -> str:
    if position in CORNERS:
        return rng.choice([f"in the {position} corner", f"in the {position}", f"at the {position}"])
    if position == "centre":
        return rng.choice(["in the centre", "in the middle", "at the centre", "centered"])
    if position in ("left", "right"):
        return rng.choice([f"on the {position}", f"at the {position}", f"on the {position} side"])
    return rng.choice([f"at the {position}", f"on the {position}", f"near the {position}"])


def make_prompt(rng: random.Random, scene: Scene, fillers: float = 0.3) -> str:
    """One of several phrasings; sets what the prompt states on the scene."""
    scene.states_size = rng.random() < 0.8
    scene.states_background = rng.random() < 0.85
    scene.states_position = scene.position is not None
    size = f"{scene.size} " if scene.states_size else ""
    if scene.count == 1:
        first = scene.size if scene.states_size else scene.colour
        article = rng.choice(["an" if first[0] in "aeiou" else "a", "one"])
        noun = f"{article} {size}{scene.colour} {scene.shape}"
    else:
        noun = f"{COUNTS[scene.count]} {size}{scene.colour} {PLURAL[scene.shape]}"
    pos = _position_phrase(rng, scene.position) if scene.position is not None else ""
    bg = scene.background
    style = rng.randrange(4)
    if style == 0 or not scene.states_background:
        text = noun + (f" {pos}" if pos else "")
        if scene.states_background:
            text += f" on a {bg} background"
    elif style == 1:
        text = noun + (f" {pos}" if pos else "") + f", {bg} background"
    elif style == 2:
        text = f"{bg} background with {noun}" + (f" {pos}" if pos else "")
    else:
        text = f"{noun} on {bg}" + (f", {pos}" if pos else "")
    if rng.random() < fillers:
        text = f"{rng.choice(FILLERS_BEFORE)} {text}"
    if rng.random() < fillers:
        text = f"{text}, {rng.choice(FILLERS_AFTER)}"
    return text


def _star(cx, cy, r):
    pts = []
    for i in range(10):
        rad = r if i % 2 == 0 else r * 0.45
        a = -math.pi / 2 + i * math.pi / 5
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill, bg) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "triangle":
        h = r * 1.0
        draw.polygon([(cx, cy - h), (cx + r * 0.95, cy + h * 0.75), (cx - r * 0.95, cy + h * 0.75)], fill=fill)
    elif shape == "star":
        draw.polygon(_star(cx, cy, r * 1.1), fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        ri = r * 0.55
        draw.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=bg)
    elif shape == "cross":
        a = r * 0.32
        draw.rectangle([cx - r, cy - a, cx + r, cy + a], fill=fill)
        draw.rectangle([cx - a, cy - r, cx + a, cy + r], fill=fill)
    else:
        raise ValueError(shape)


def layout(rng: random.Random, scene: Scene, width: int, height: int) -> list[tuple[float, float, float]]:
    """Object centres and radii in pixels."""
    m = min(width, height)
    if scene.count == 1:
        r = DIAMETER[scene.size] * m / 2 * rng.uniform(0.9, 1.1)
        if scene.position is None:
            ax, ay = rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75)
        else:
            ax, ay = POSITIONS[scene.position]
            ax += rng.uniform(-0.05, 0.05)
            ay += rng.uniform(-0.05, 0.05)
        return [(ax * width, ay * height, r)]
    r = GROUP_DIAMETER[scene.size] * m / 2 * rng.uniform(0.9, 1.1)
    # Box (relative) the centres are drawn from.
    box = {
        None: (0.15, 0.85, 0.15, 0.85),
        "left": (0.12, 0.36, 0.12, 0.88),
        "right": (0.64, 0.88, 0.12, 0.88),
        "top": (0.12, 0.88, 0.12, 0.36),
        "bottom": (0.12, 0.88, 0.64, 0.88),
        "centre": (0.3, 0.7, 0.3, 0.7),
    }[scene.position]
    x0, x1, y0, y1 = box[0] * width, box[1] * width, box[2] * height, box[3] * height
    x0, x1 = min(x0 + r * 0.3, (x0 + x1) / 2), max(x1 - r * 0.3, (x0 + x1) / 2)
    y0, y1 = min(y0 + r * 0.3, (y0 + y1) / 2), max(y1 - r * 0.3, (y0 + y1) / 2)
    gap = 2.6 * r
    for _ in range(200):
        pts = [(rng.uniform(x0, x1), rng.uniform(y0, y1)) for _ in range(scene.count)]
        if all(math.dist(p, q) >= gap for i, p in enumerate(pts) for q in pts[i + 1:]):
            return [(x, y, r) for x, y in pts]
    # Fallback: evenly along the longer side of the box.
    out = []
    for i in range(scene.count):
        t = (i + 0.5) / scene.count
        if x1 - x0 >= y1 - y0:
            out.append((x0 + t * (x1 - x0), (y0 + y1) / 2, min(r, 0.36 * (x1 - x0) / scene.count)))
        else:
            out.append(((x0 + x1) / 2, y0 + t * (y1 - y0), min(r, 0.36 * (y1 - y0) / scene.count)))
    return out


def render(rng: random.Random, scene: Scene, width: int, height: int) -> np.ndarray:
    """RGB uint8 [H, W, 3]."""
    return render_with_mask(rng, scene, width, height)[0]


def render_with_mask(rng: random.Random, scene: Scene, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 [H, W, 3] and the objects' mask (bool [H, W]: pixels an object covers)."""
    bg = COLOURS[scene.background]
    img = Image.new("RGB", (width, height), bg)
    mask = Image.new("L", (width, height), 0)
    draw, draw_mask = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    for cx, cy, r in layout(rng, scene, width, height):
        draw_shape(draw, scene.shape, cx, cy, r, COLOURS[scene.colour], bg)
        draw_shape(draw_mask, scene.shape, cx, cy, r, 255, 0)
    return np.asarray(img), np.asarray(mask) > 0


def eval_prompts(n: int, seed: int = 1234) -> list[tuple[str, Scene]]:
    """n held-out prompts (every one uses a colour x shape pair training never shows)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        scene = sample_scene(rng, held_out=True)
        # Cycle through the held-out pairs so each is represented.
        scene.colour, scene.shape = HELD_OUT[i % len(HELD_OUT)]
        if scene.background == scene.colour:
            scene.background = next(c for c in COLOUR_NAMES if c != scene.colour)
        out.append((make_prompt(rng, scene, fillers=0.25), scene))
    return out
