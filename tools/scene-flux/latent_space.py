"""The VAE's designed latent space: what each of the 16 latent channels says about a scene.

FLUX's transformer has no convolutions: every image token (a 16 x 16 pixel patch, 2 x 2 latent
pixels) is drawn by attention alone, and a CPU-sized model trained for an hour learns a plain
pixel-reconstruction latent too slowly (fourth run: fragmented blobs after 2 000 steps).  So the
VAE is trained to a latent whose layout is fixed in advance and smooth: flat codes over flat
regions, one code per object.  The transformer then only has to place blobs with the right code;
the decoder (a convolution network) learns to render a crisp circle, star or cross from a blob
and its shape code.  Colour and shape have separate channels, so a colour x shape pair the
transformer never saw is still two codes it knows.

Channels, in the pipeline's normalised space (`(z - shift_factor) * scaling_factor`; about zero
mean and unit spread, as FLUX's scheduler assumes), each at latent resolution (1/8 of the image):

| channels | meaning |
|---|---|
| 0-2 | the picture's colour, area-averaged over the latent pixel (RGB in [-1.5, 1.5]); with `RAMPS` (the sixth run on): 0 and 1 are instead the latent pixel's place, x / W and y / H mapped to [-1.5, 1.5], and 2 the picture's grey level |
| 3 | object coverage: -1 background ... +1 object |
| 4-9 | the object's shape, one channel per shape: +1.5 inside an object of that shape, else -0.3 |
| 10-12 | the object's colour inside objects (RGB), 0 on the background |
| 13-15 | the background's colour everywhere (RGB) |

The encoder is trained to produce this latent from a picture, the decoder to turn it (with noise
added, so the transformer's imperfect latents still decode cleanly) back into the picture.
"""

from __future__ import annotations

import numpy as np
import torch

import scenes

CHANNELS = 16
# Channels 0 and 1 carry the pixel's relative place (the same ramps in every scene).  The
# transformer's image tokens know where they are only through RoPE, and the fifth run's model
# placed objects wherever its noise put them, whatever the prompt said; a ramp in the latent is
# one picture-independent pattern to learn, and once it shows through the noise every token can
# read its own place (relative to the canvas, at any size) from its input.
RAMPS = True
DOWN = 8
RGB_SCALE = 1.5
SHAPE_ON, SHAPE_OFF = 1.5, -0.3


def _rgb(colour: str) -> np.ndarray:
    return (np.asarray(scenes.COLOURS[colour], dtype=np.float32) / 127.5 - 1.0) * RGB_SCALE


def designed_latent(image: np.ndarray, mask: np.ndarray, scene: scenes.Scene) -> np.ndarray:
    """[16, H/8, W/8] float32, normalised: the latent the VAE is trained to use for this scene."""
    h, w = mask.shape
    hl, wl = h // DOWN, w // DOWN
    img = image[: hl * DOWN, : wl * DOWN].astype(np.float32) / 127.5 - 1.0
    cov = mask[: hl * DOWN, : wl * DOWN].astype(np.float32)
    img = img.reshape(hl, DOWN, wl, DOWN, 3).mean(axis=(1, 3))
    cov = cov.reshape(hl, DOWN, wl, DOWN).mean(axis=(1, 3))
    out = np.empty((CHANNELS, hl, wl), dtype=np.float32)
    if RAMPS:
        out[0] = np.broadcast_to((np.arange(wl, dtype=np.float32) + 0.5) / wl * 3.0 - 1.5, (hl, wl))
        out[1] = np.broadcast_to(((np.arange(hl, dtype=np.float32) + 0.5) / hl * 3.0 - 1.5)[:, None], (hl, wl))
        out[2] = img.mean(axis=2) * RGB_SCALE
    else:
        out[0:3] = img.transpose(2, 0, 1) * RGB_SCALE
    out[3] = 2.0 * cov - 1.0
    for i, shape in enumerate(scenes.SHAPES):
        out[4 + i] = cov * (SHAPE_ON if shape == scene.shape else SHAPE_OFF)
    out[10:13] = _rgb(scene.colour)[:, None, None] * cov[None]
    out[13:16] = _rgb(scene.background)[:, None, None]
    return out


def batch(rng, w: int, h: int, b: int, held_out=False):
    """b scenes at w x h: (prompts, images uint8 [b, h, w, 3], masks, designed latents [b, 16, h/8, w/8])."""
    prompts, images, masks, latents = [], [], [], []
    for _ in range(b):
        scene = scenes.sample_scene(rng, held_out=held_out)
        prompts.append(scenes.make_prompt(rng, scene))
        image, mask = scenes.render_with_mask(rng, scene, w, h)
        images.append(image)
        masks.append(mask)
        latents.append(designed_latent(image, mask, scene))
    return prompts, images, masks, torch.from_numpy(np.stack(latents))


def check_decoder(vae, n: int = 24, noise: float = 0.1, side: int = 256, seed: int = 99) -> tuple[int, int]:
    """The decoder alone on designed latents (noise added) of n held-out prompts, read back by the
    detector: (agreeing, stated) attributes.  What the transformer gets right is drawn this well."""
    import random

    import detect

    rng = random.Random(seed + 1)
    gen = torch.Generator("cpu").manual_seed(seed)
    scaling, shift = vae.config.scaling_factor, vae.config.shift_factor
    agree = total = 0
    for _, scene in scenes.eval_prompts(n, seed=seed):
        image, mask = scenes.render_with_mask(rng, scene, side, side)
        lat = torch.from_numpy(designed_latent(image, mask, scene))[None]
        lat = lat + noise * torch.randn(lat.shape, generator=gen)
        with torch.no_grad():
            out = vae.decode(lat / scaling + shift).sample.clamp(-1, 1)
        pixels = ((out[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        result, _ = detect.score(pixels, scene.attributes())
        agree += sum(result.values())
        total += len(result)
    return agree, total


if __name__ == "__main__":
    import argparse

    from diffusers import AutoencoderKL

    ap = argparse.ArgumentParser(description="the decoder alone on designed latents of held-out prompts")
    ap.add_argument("vae", help="a diffusers vae/ folder")
    ap.add_argument("--prompts", type=int, default=24)
    args = ap.parse_args()
    torch.set_num_threads(1)
    agree, total = check_decoder(AutoencoderKL.from_pretrained(args.vae).eval(), args.prompts)
    print(f"decoder alone on designed latents of {args.prompts} held-out prompts: {agree}/{total} attributes agree")
