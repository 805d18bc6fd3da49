"""Train a small FLUX.1-dev-architecture model on the scene world (CPU, fixed seeds, one command).

Stages: (1) tokenizers from scene prompts (built exactly as tools/tiny-flux builds them);
(2) the AutoencoderKL (16 latent channels, 8x), trained on crops of rendered scenes, its latents
pushed to FLUX.1's statistics so that scaling_factor 0.3611 / shift_factor 0.1159 stay right;
(3) the FluxTransformer2DModel (guidance-embedded, dev) together with the CLIP and T5 text encoders,
by rectified flow on latents of scenes rendered on the fly at many sizes and aspect ratios, with the
scheduler's resolution-dependent sigma shift.  A diffusers folder is saved every few minutes, so a
partial run still leaves a usable model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tools" / "tiny-flux"))
import generate as tiny  # noqa: E402  (tokenizer builders, scheduler config; sets offline env)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import latent_space  # noqa: E402
import scenes  # noqa: E402

torch.set_num_threads(int(os.environ.get("SCENE_FLUX_THREADS", "2")))
torch.use_deterministic_algorithms(False)

T5_LEN = 32
VAE_SCALING, VAE_SHIFT = tiny.VAE_SCALING, tiny.VAE_SHIFT


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------
# Tokenizers and models
# ------------------------------------------------------------------------------------------------

def corpus() -> list[str]:
    rng = random.Random(11)
    lines = []
    for _ in range(3000):
        s = scenes.sample_scene(rng, held_out=None)
        lines.append(scenes.make_prompt(rng, s, fillers=0.5))
    return lines + tiny.corpus_lines()


def build_tokenizers(folder: Path):
    from transformers import CLIPTokenizer, T5TokenizerFast

    lines = corpus()
    tiny.corpus_lines = lambda: lines  # the builders read their training text from this function
    tiny.build_clip_tokenizer(folder / "tokenizer")
    tiny.build_t5_tokenizer(folder / "tokenizer_2")
    tiny.write_json(
        folder / "tokenizer_2" / "special_tokens_map.json",
        {
            "additional_special_tokens": [f"<extra_id_{i}>" for i in range(tiny.T5_EXTRA_IDS)],
            "eos_token": {"content": "</s>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
            "pad_token": {"content": "<pad>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
            "unk_token": {"content": "<unk>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
        },
    )
    clip_tok = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    t5_tok = T5TokenizerFast.from_pretrained(str(folder / "tokenizer_2"))
    return clip_tok, t5_tok


def build_models(clip_tok, t5_tok, args):
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(args.seed)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=64,
        bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.eos_token_id,
        attn_implementation="eager"))
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tok), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
        dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, is_encoder_decoder=False,
        use_cache=False, attn_implementation="eager"))
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=args.double, num_single_layers=args.single,
        attention_head_dim=32, num_attention_heads=args.heads, joint_attention_dim=64, pooled_projection_dim=64,
        guidance_embeds=True, axes_dims_rope=tuple(args.rope_axes))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=tuple(args.vae_channels), layers_per_block=1,
        latent_channels=16, norm_num_groups=1, sample_size=256, scaling_factor=VAE_SCALING,
        shift_factor=VAE_SHIFT, use_quant_conv=False, use_post_quant_conv=False)
    with torch.no_grad():
        # Start the latents near FLUX.1's spread (std 1/0.3611) instead of far below it.
        vae.encoder.conv_out.weight[:16].mul_(8.0)
    return {"clip": clip, "t5": t5, "transformer": transformer, "vae": vae}


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def timed_lr(lr_max: float, step: int, frac: float, warmup: int, floor: float) -> float:
    """Every stage's schedule: linear warm-up over `warmup` steps, then a cosine over the stage's
    elapsed share of its time budget (`frac`), from lr_max down to floor * lr_max."""
    return lr_max * min(1.0, (step + 1) / warmup) * (0.5 * (1 + math.cos(math.pi * frac)) * (1 - floor) + floor)


CROP_ASPECTS = [1.0, 0.75, 1.33, 0.5625, 1.78]


def random_canvas(rng: random.Random, sides: list[int], crop: int) -> tuple[int, int]:
    """(width, height) of a scene that VAE crops are cut from: one of `sides` as the height, an
    aspect ratio near a preset's, multiples of 16, never smaller than the crop."""
    side = rng.choice(sides)
    w = max(crop, int(side * rng.choice(CROP_ASPECTS)) // 16 * 16)
    h = max(crop, side // 16 * 16)
    return w, h


# ------------------------------------------------------------------------------------------------
# Stage 2: VAE
# ------------------------------------------------------------------------------------------------

def train_vae(vae, steps: int, rng: random.Random, crop: int = 64, batch: int = 8, lr_max: float = 1e-3,
              clip: float = 100.0, stat_w: float = 0.1, noise: float = 0.1, every: int = 100,
              minutes: float = 1e9) -> None:
    opt = torch.optim.AdamW(vae.parameters(), lr=lr_max, weight_decay=0.0)
    target_std = 1.0 / VAE_SCALING
    vae.train()
    t0 = time.time()
    t_end = time.time() + minutes * 60
    for step in range(steps):
        # Time-based cosine (as the transformer stage): the stage fits its budget on a busy machine.
        frac = min(1.0, 1 - (t_end - time.time()) / (minutes * 60))
        lr = timed_lr(lr_max, step, frac, warmup=30, floor=0.1)
        for g in opt.param_groups:
            g["lr"] = lr
        crops = []
        for _ in range(batch):
            w, h = random_canvas(rng, [96, 128, 192, 256, 384, 512], crop)
            img = scenes.render(rng, scenes.sample_scene(rng, held_out=None), w, h)
            y, x = rng.randrange(h - crop + 1), rng.randrange(w - crop + 1)
            crops.append(img[y:y + crop, x:x + crop])
        x = to_tensor(crops)
        z = vae.encode(x).latent_dist.mean
        # Latent statistics as FLUX.1's VAE has them (the pipeline applies 0.3611 / 0.1159).
        mean_c = z.mean(dim=(0, 2, 3))
        std_c = z.std(dim=(0, 2, 3))
        stat = ((mean_c - VAE_SHIFT) ** 2).mean() + ((std_c - target_std) ** 2).mean()
        # Noise on the latent: the decoder must stay clean for the transformer's imperfect latents.
        zn = z + noise * target_std * torch.randn_like(z)
        rec = vae.decode(zn).sample
        loss = (rec - x).abs().mean() + ((rec - x) ** 2).mean() + stat_w * stat
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), clip)
        opt.step()
        if frac >= 1.0:
            log(f"vae time budget reached at step {step + 1}")
            break
        if step % every == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {loss.item():.4f} stat {stat.item():.3f} "
                f"std {std_c.mean().item():.2f} ({time.time() - t0:.0f}s)")
    vae.eval()


def _designed_crops(rng: random.Random, batch: int, crop: int):
    """Crops (aligned to the latent grid) of scenes rendered at many sizes: images [-1, 1], object
    masks and the designed latents in the VAE's own (unnormalised) space."""
    imgs, masks, lats = [], [], []
    for _ in range(batch):
        w, h = random_canvas(rng, [128, 192, 256, 320, 384, 512], crop)
        scene = scenes.sample_scene(rng, held_out=False)
        img, mask = scenes.render_with_mask(rng, scene, w, h)
        lat = latent_space.designed_latent(img, mask, scene)
        y, x = rng.randrange(0, h - crop + 1, 8), rng.randrange(0, w - crop + 1, 8)
        imgs.append(img[y:y + crop, x:x + crop])
        masks.append(mask[y:y + crop, x:x + crop])
        lats.append(lat[:, y // 8:(y + crop) // 8, x // 8:(x + crop) // 8])
    z = torch.from_numpy(np.stack(lats)) / VAE_SCALING + VAE_SHIFT
    return to_tensor(imgs), torch.from_numpy(np.stack(masks)).float()[:, None], z


def train_designed_vae(vae, minutes: float, encoder_minutes: float, rng: random.Random, crop: int = 128,
                       batch: int = 8, lr_max: float = 2e-3, noise: float = 0.15) -> dict:
    """The VAE on the designed latent space (latent_space.py): first the decoder renders pictures from
    designed latents with noise on them (the pixels an object covers weigh 5x: shapes must come out
    crisp), then the encoder learns to produce those latents from pictures."""
    stats = {}
    for part, budget in (("decoder", minutes), ("encoder", encoder_minutes)):
        module = vae.decoder if part == "decoder" else vae.encoder
        params = list(module.parameters())
        if part == "encoder" and vae.quant_conv is not None:
            params += list(vae.quant_conv.parameters())
        opt = torch.optim.AdamW(params, lr=lr_max, weight_decay=0.0)
        t0 = time.time()
        step = 0
        while True:
            frac = min(1.0, (time.time() - t0) / (budget * 60))
            lr = timed_lr(lr_max, step, frac, warmup=50, floor=0.05)
            for g in opt.param_groups:
                g["lr"] = lr
            x, mask, z = _designed_crops(rng, batch, crop)
            if part == "decoder":
                zn = z + noise / VAE_SCALING * torch.randn_like(z)
                rec = vae.decode(zn).sample
                weight = 1.0 + 4.0 * torch.nn.functional.max_pool2d(mask, 5, stride=1, padding=2)
                err = (rec - x).abs() + (rec - x) ** 2
                loss = (weight * err).sum() / (weight.sum() * 3)
            else:
                pred = vae.encode(x).latent_dist.mean
                loss = ((pred - z) * VAE_SCALING).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if step % 50 == 0:
                log(f"{part} step {step} loss {loss.item():.4f} lr {lr:.2e} ({time.time() - t0:.0f}s)")
            step += 1
            if frac >= 1.0:
                break
        stats[f"{part}_steps"] = step
        stats[f"{part}_loss"] = float(loss.item())
    vae.eval()
    return stats


def finetune_decoder(vae, minutes: float, rng: random.Random, crop: int = 64, batch: int = 8,
                     lr_max: float = 1e-3, noise: float = 0.1) -> int:
    """Stage 4: the decoder alone on the frozen encoder's latents.  The transformer learned the
    encoder's latent space, which this stage leaves untouched, so it can run after (or beside) stage 3."""
    dec = list(vae.decoder.parameters())
    opt = torch.optim.AdamW(dec, lr=lr_max, weight_decay=0.0)
    target_std = 1.0 / VAE_SCALING
    vae.eval()
    vae.decoder.train()
    t0 = time.time()
    step = 0
    while True:
        frac = min(1.0, (time.time() - t0) / (minutes * 60))
        lr = timed_lr(lr_max, step, frac, warmup=20, floor=0.1)
        for g in opt.param_groups:
            g["lr"] = lr
        crops = []
        for _ in range(batch):
            w, h = random_canvas(rng, [96, 128, 192, 256, 384, 512], crop)
            img = scenes.render(rng, scenes.sample_scene(rng, held_out=None), w, h)
            y, x = rng.randrange(h - crop + 1), rng.randrange(w - crop + 1)
            crops.append(img[y:y + crop, x:x + crop])
        x = to_tensor(crops)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
        zn = z + noise * target_std * torch.randn_like(z)
        rec = vae.decode(zn).sample
        loss = (rec - x).abs().mean() + ((rec - x) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 25 == 0:
            log(f"decoder step {step} loss {loss.item():.4f} lr {lr:.2e} ({time.time() - t0:.0f}s)")
        step += 1
        if frac >= 1.0:
            break
    vae.eval()
    return step


def merge_decoder(out: Path, state: dict) -> None:
    """Put a fine-tuned VAE into a saved model folder (only vae/ changes)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(out / "vae"))
    vae.load_state_dict(state, strict=True)
    vae.save_pretrained(str(out / "vae"), safe_serialization=True)


# ------------------------------------------------------------------------------------------------
# Stage 3: transformer + text encoders
# ------------------------------------------------------------------------------------------------

ASPECTS = [1.0, 0.75, 0.5625, 1.3333, 1.7778]  # W/H of the presets


def sample_bucket(rng: random.Random, tiers) -> tuple[int, int, int]:
    """(width, height, batch) for one step: mostly small images, sometimes preset-like large ones.
    A tier is (shorter side, batch, share of steps) or, with a fourth entry, a fixed aspect ratio."""
    tier = rng.choices(tiers, weights=[t[2] for t in tiers])[0]
    short, batch = tier[:2]
    aspect = rng.choice(ASPECTS) if rng.random() < 0.8 else rng.uniform(0.5, 2.0)
    if len(tier) > 3:
        aspect = tier[3]
    if short >= 1024:
        # The presets' own sizes: 1024 is their longer side (1024 x 576, 768 x 1024, ...).
        w, h = (short, short / aspect) if aspect >= 1 else (short * aspect, short)
    elif aspect >= 1:
        h, w = short, short * aspect
    else:
        w, h = short, short / aspect
    w, h = max(64, int(round(w / 16)) * 16), max(64, int(round(h / 16)) * 16)
    scale = (short * short) / (w * h)
    return w, h, max(1, int(round(batch * scale))) if batch > 1 else 1


def object_coverage(masks: list[np.ndarray], h: int, w: int) -> torch.Tensor:
    """[b, tokens]: per image token (16 x 16 pixels), the largest share of its 3 x 3 neighbourhood's
    tokens that objects cover (so a shape's edge tokens count as the shape)."""
    m = torch.from_numpy(np.stack(masks)).float().view(len(masks), 1, h // 16, 16, w // 16, 16)
    cov = m.mean(dim=(3, 5))
    cov = torch.nn.functional.max_pool2d(cov, 3, stride=1, padding=1)
    return cov.reshape(len(masks), -1)


def pack(latents: torch.Tensor) -> torch.Tensor:
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def img_ids(h2: int, w2: int) -> torch.Tensor:
    ids = torch.zeros(h2, w2, 3)
    ids[..., 1] = torch.arange(h2)[:, None]
    ids[..., 2] = torch.arange(w2)[None, :]
    return ids.reshape(h2 * w2, 3)


def encode_text(models, clip_tok, t5_tok, prompts: list[str]):
    ci = clip_tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    ti = t5_tok(prompts, padding="max_length", max_length=T5_LEN, truncation=True, return_tensors="pt").input_ids
    pooled = models["clip"](ci, output_hidden_states=False).pooler_output
    text = models["t5"](ti, output_hidden_states=False)[0]
    return pooled, text


def sample_sigmas(rng_t: torch.Generator, b: int, seq_len: int) -> torch.Tensor:
    u = torch.sigmoid(torch.randn(b, generator=rng_t))
    uni = torch.rand(b, generator=rng_t)
    u = torch.where(torch.rand(b, generator=rng_t) < 0.1, uni, u).clamp(1e-4, 1 - 1e-4)
    m = (1.15 - 0.5) / (4096 - 256)
    mu = seq_len * m + (0.5 - 256 * m)
    e = math.exp(mu)
    return e / (e + (1 / u - 1))


TRAINED = ("transformer", "clip", "t5")


def swap_in(models, ema: dict | None) -> dict | None:
    """Load the EMA weights into the trained modules; returns the live weights to swap back."""
    if ema is None:
        return None
    backup = {}
    for name in TRAINED:
        backup[name] = {k: v.detach().clone() for k, v in models[name].state_dict().items()}
        models[name].load_state_dict(ema[name], strict=True)
    return backup


def swap_out(models, backup: dict | None) -> None:
    if backup is not None:
        for name in TRAINED:
            models[name].load_state_dict(backup[name], strict=True)


def save_folder(models, out: Path, clip_tok, t5_tok, tok_src: Path, ema=None) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    transformer = models["transformer"]
    # The EMA of the transformer and of the text encoders together: an averaged transformer fed by
    # the live (faster-moving) text encoders reads embeddings it was never averaged over.
    backup = swap_in(models, ema)
    tiny.write_json(tmp / "scheduler" / "scheduler_config.json", tiny.scheduler_config(True))
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(str(tmp / "scheduler")),
        vae=models["vae"], text_encoder=models["clip"], tokenizer=clip_tok, text_encoder_2=models["t5"],
        tokenizer_2=t5_tok, transformer=transformer)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    swap_out(models, backup)
    # flux-rs reads the T5 length the model was trained with from here (FLUX's default is 512).
    tiny.write_json(tmp / "flux-rs-model.json", {"text_length": T5_LEN})
    # The tokenizer folders exactly as built (FLUX.1-dev's file set), not transformers' re-save.
    for name in ("tokenizer", "tokenizer_2"):
        shutil.rmtree(tmp / name)
        shutil.copytree(tok_src / name, tmp / name)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, c4 = x.shape
    x = x.view(b, h // 16, w // 16, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, h // 8, w // 8)


@torch.no_grad()
def sample(models, clip_tok, t5_tok, prompts: list[str], w: int, h: int, steps: int, guidance: float,
           seed: int) -> list[np.ndarray]:
    """FluxPipeline's sampling, written out: shifted linspace sigmas, Euler, same latent packing."""
    b = len(prompts)
    g = torch.Generator("cpu").manual_seed(seed)
    x = pack(torch.randn(b, 16, h // 8, w // 8, generator=g))
    seq = x.shape[1]
    m = (1.15 - 0.5) / (4096 - 256)
    e = math.exp(seq * m + (0.5 - 256 * m))
    base = np.linspace(1.0, 1.0 / steps, steps)
    sig = [e / (e + (1 / s - 1)) for s in base] + [0.0]
    pooled, text = encode_text(models, clip_tok, t5_tok, prompts)
    ids = img_ids(h // 16, w // 16)
    for i in range(steps):
        t = torch.full((b,), sig[i])
        v = models["transformer"](hidden_states=x, timestep=t, guidance=torch.full((b,), guidance),
                                  pooled_projections=pooled, encoder_hidden_states=text,
                                  txt_ids=torch.zeros(T5_LEN, 3), img_ids=ids, return_dict=False)[0]
        x = x + (sig[i + 1] - sig[i]) * v
    z = unpack(x, h, w) / VAE_SCALING + VAE_SHIFT
    img = models["vae"].decode(z).sample.clamp(-1, 1)
    return [((im.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8) for im in img]


def monitor(models, clip_tok, t5_tok, n: int, held_out: bool = True) -> str:
    """Agreement on n held-out prompts (or n prompts of pairs training shows) at 256x256, 12 steps,
    guidance 3.5: progress while training, and whether a miss is one of generalisation."""
    import detect

    per: dict[str, list[bool]] = {}
    if held_out:
        pairs = scenes.eval_prompts(n, seed=777)
    else:
        rng = random.Random(778)
        pairs = []
        for _ in range(n):
            sc = scenes.sample_scene(rng, held_out=False)
            pairs.append((scenes.make_prompt(rng, sc, fillers=0.25), sc))
    imgs = []
    for i in range(0, n, 8):
        chunk = pairs[i:i + 8]
        imgs += sample(models, clip_tok, t5_tok, [p for p, _ in chunk], 256, 256, 12, 3.5, seed=5 + i)
    for img, (_, scene) in zip(imgs, pairs):
        res, _ = detect.score(img, scene.attributes())
        for k, v in res.items():
            per.setdefault(k, []).append(bool(v))
    total = sum(len(v) for v in per.values())
    ok = sum(sum(v) for v in per.values())
    return f"{ok}/{total} = {ok / max(1, total):.3f} " + " ".join(
        f"{k} {sum(v)}/{len(v)}" for k, v in sorted(per.items()))


def position_probe(models, clip_tok, t5_tok, seeds: int = 8) -> str:
    """Whether the prompt moves the object: the detected centre (mean over the same `seeds` noises)
    of one large square said to be on the left, right, top or bottom.  A model that ignores
    positions gives the same centre for all four (the fifth run: x 0.42-0.43, y 0.49-0.50)."""
    import detect

    out = []
    for place in ("on the left", "on the right", "at the top", "at the bottom"):
        imgs = sample(models, clip_tok, t5_tok, [f"one large red square {place}, blue background"] * seeds,
                      256, 256, 12, 3.5, seed=11)
        found = [detect.detect(im) for im in imgs]
        xy = [(f["x"], f["y"]) for f in found if f.get("x") is not None]
        if xy:
            out.append(f"{place.split()[-1]} x {np.mean([p[0] for p in xy]):.2f} y {np.mean([p[1] for p in xy]):.2f}")
        else:
            out.append(f"{place.split()[-1]} none found")
    return ", ".join(out)


ATTRIBUTE_CLASSES = {
    "colour": scenes.COLOUR_NAMES,
    "background": scenes.COLOUR_NAMES + [None],
    "shape": scenes.SHAPES,
    "count": [1, 2, 3],
    "size": scenes.SIZES + [None],
    "position": list(scenes.POSITIONS) + [None],
}


def attribute_labels(scene: scenes.Scene) -> dict[str, int]:
    stated = {"colour": scene.colour, "shape": scene.shape, "count": scene.count,
              "background": scene.background if scene.states_background else None,
              "size": scene.size if scene.states_size else None,
              "position": scene.position if scene.states_position else None}
    return {k: ATTRIBUTE_CLASSES[k].index(v) for k, v in stated.items()}


def pretrain_text(models, clip_tok, t5_tok, minutes: float, rng: random.Random, batch: int = 128) -> str:
    """Teach both text encoders to read a prompt before the transformer sees them: linear heads on
    CLIP's pooled output and on T5's mean token must recover every stated attribute (which colour
    is the background, the count, the place, ...).  Text only, so thousands of steps a minute; the
    transformer then starts from embeddings that already separate what a scene depends on."""
    heads = torch.nn.ModuleDict({
        f"{enc}_{k}": torch.nn.Linear(64, len(v)) for enc in ("clip", "t5") for k, v in ATTRIBUTE_CLASSES.items()})
    params = list(heads.parameters()) + list(models["clip"].parameters()) + list(models["t5"].parameters())
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    models["clip"].train()
    models["t5"].train()
    t0 = time.time()
    step, acc = 0, {}
    while time.time() - t0 < minutes * 60:
        sc = [scenes.sample_scene(rng, held_out=False) for _ in range(batch)]
        prompts = [scenes.make_prompt(rng, s) for s in sc]
        labels = [attribute_labels(s) for s in sc]
        pooled, text = encode_text(models, clip_tok, t5_tok, prompts)
        mask = (t5_tok(prompts, padding="max_length", max_length=T5_LEN, truncation=True,
                       return_tensors="pt").attention_mask.float())[..., None]
        t5_mean = (text * mask).sum(1) / mask.sum(1)
        loss = 0.0
        for enc, feat in (("clip", pooled), ("t5", t5_mean)):
            for k in ATTRIBUTE_CLASSES:
                y = torch.tensor([lab[k] for lab in labels])
                logits = heads[f"{enc}_{k}"](feat)
                loss = loss + torch.nn.functional.cross_entropy(logits, y)
                acc[f"{enc}_{k}"] = (logits.argmax(-1) == y).float().mean().item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0:
            log(f"text step {step} loss {loss.item():.3f} clip acc " + " ".join(
                f"{k} {acc['clip_' + k]:.2f}" for k in ATTRIBUTE_CLASSES))
        step += 1
    summary = " ".join(f"{k} {v:.2f}" for k, v in acc.items())
    log(f"text encoders pretrained: {step} steps; accuracy {summary}")
    return summary


def train_transformer(models, clip_tok, t5_tok, args, out: Path, tok_src: Path, rng: random.Random) -> dict:
    transformer, vae = models["transformer"], models["vae"]
    text_params = list(models["clip"].parameters()) + list(models["t5"].parameters())
    params = list(transformer.parameters()) + text_params
    # The text encoders start from nothing and must learn to tell prompts apart: a larger step.
    opt = torch.optim.AdamW([{"params": list(transformer.parameters()), "scale": 1.0},
                             {"params": text_params, "scale": args.text_lr_scale}],
                            lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    ema = {name: {k: v.detach().clone() for k, v in models[name].state_dict().items()} for name in TRAINED}
    rng_t = torch.Generator("cpu").manual_seed(args.seed + 3)
    # (shorter side, batch, share of steps).  A small object is 0.15 of the shorter side: about two
    # latent pixels at 128 px, five at 256 px, so the shapes are learnt at 192-384 px; the larger
    # sizes teach where "left" is on a wide canvas (positions are absolute token indices).
    tiers = [(128, 16, 0.25), (192, 8, 0.3), (256, 5, 0.25), (384, 2, 0.13), (640, 1, 0.05), (1024, 1, 0.02)]
    if args.tiers == "eval":
        # Most steps at the size the agreement is measured at (256 x 256: positions are absolute
        # token indices, so every other canvas size teaches a different column for "left"); the rest
        # keeps every preset aspect ratio and the large sizes coherent.
        tiers = [(256, 8, 0.55, 1.0), (256, 8, 0.12), (192, 8, 0.1), (384, 3, 0.13), (640, 1, 0.06), (1024, 1, 0.04)]
    if args.tiers == "small":
        # Cheaper steps, more scenes per minute: colours, places and counts before shapes.
        tiers = [(128, 16, 0.45), (192, 8, 0.35), (256, 5, 0.14), (384, 2, 0.04), (640, 1, 0.02)]
    if args.smoke:
        tiers = [(128, 8, 0.7), (256, 2, 0.3)]
    for m in ("clip", "t5"):
        models[m].train()
    transformer.train()
    t0 = last_save = time.time()
    losses = []
    stats = {"steps": 0, "samples": 0}
    budget = args.minutes * 60
    for step in range(10**9):
        # Time-based schedule: the run fits its budget whatever else the machine is doing.
        frac = min(1.0, (time.time() - t0) / budget)
        lr = timed_lr(args.lr, step, frac, warmup=200, floor=0.05)
        for g in opt.param_groups:
            g["lr"] = lr * g["scale"]
        w, h, b = sample_bucket(rng, tiers)
        prompts, imgs, masks, lat = latent_space.batch(rng, w, h, b)
        if args.latent == "designed":
            # The designed latent straight from the scene (what the trained encoder approximates).
            x0 = pack(lat)
        else:
            with torch.no_grad():
                z = vae.encode(to_tensor(imgs)).latent_dist.mean
                x0 = pack((z - VAE_SHIFT) * VAE_SCALING)
        seq = x0.shape[1]
        sigma = sample_sigmas(rng_t, b, seq)
        if frac < args.curriculum:
            # First the prompt alone: at sigma 0.8-1 the target is mostly the prompt's mean picture,
            # so the whole step's gradient teaches the text path before the model learns to denoise.
            sigma = 0.8 + 0.2 * torch.rand(b, generator=rng_t)
        elif args.high_noise > 0:
            # The prompt decides the picture at high noise only (below ~0.7 the layout is already in
            # x_t), and logit-normal sampling rarely goes there: without this the text is learnt late.
            high = torch.rand(b, generator=rng_t) < args.high_noise
            sigma = torch.where(high, 0.7 + 0.3 * torch.rand(b, generator=rng_t), sigma)
        noise = torch.randn(x0.shape, generator=rng_t)
        xt = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
        guidance = 1.0 + 9.0 * torch.rand(b, generator=rng_t)
        pooled, text = encode_text(models, clip_tok, t5_tok, prompts)
        pred = transformer(
            hidden_states=xt, timestep=sigma, guidance=guidance, pooled_projections=pooled,
            encoder_hidden_states=text, txt_ids=torch.zeros(T5_LEN, 3), img_ids=img_ids(h // 16, w // 16),
            return_dict=False)[0]
        err = ((pred - (noise - x0)) ** 2).mean(dim=2)
        if args.object_weight > 0 and time.time() - t0 < args.object_weight_minutes * 60:
            # Objects cover 2-8 % of a picture and of a plain loss; the tokens they (or their edges)
            # touch count 1 + object_weight times as much, so the shapes are learnt as early as the
            # backgrounds are.  Only for a while: the weight depends on where the objects are, which
            # the model cannot know at high noise, so it biases it towards objects everywhere
            # (sprinkled dots); the plain loss afterwards has no such bias.
            weight = 1.0 + args.object_weight * object_coverage(masks, h, w)
            loss = (weight * err).sum() / weight.sum()
        else:
            loss = err.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for name in TRAINED:
                for k, v in models[name].state_dict().items():
                    if v.dtype.is_floating_point:
                        ema[name][k].mul_(decay).add_(v.detach(), alpha=1 - decay)
                    else:
                        ema[name][k].copy_(v)
        losses.append(loss.item())
        stats["steps"] = step + 1
        stats["samples"] += b
        if step % 50 == 0:
            log(f"step {step} {w}x{h}x{b} loss {np.mean(losses[-50:]):.4f} lr {lr:.2e} "
                f"({time.time() - t0:.0f}s)")
        done = frac >= 1.0 or (args.steps and step + 1 >= args.steps)
        if time.time() - last_save > args.save_every * 60 or done:
            for m in ("clip", "t5"):
                models[m].eval()
            save_folder(models, out, clip_tok, t5_tok, tok_src, ema)
            if args.monitor:
                backup = swap_in(models, ema)
                transformer.eval()
                log(f"monitor at step {step + 1}: held-out {monitor(models, clip_tok, t5_tok, args.monitor)}")
                log(f"monitor at step {step + 1}: trained pairs "
                    f"{monitor(models, clip_tok, t5_tok, args.monitor // 2, held_out=False)}")
                log(f"monitor at step {step + 1}: centres {position_probe(models, clip_tok, t5_tok)}")
                swap_out(models, backup)
                transformer.train()
            for m in ("clip", "t5"):
                models[m].train()
            last_save = time.time()
            log(f"saved {out} at step {step + 1}")
        if done:
            break
    stats["seconds"] = round(time.time() - t0, 1)
    stats["final_loss"] = float(np.mean(losses[-100:]))
    return stats


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=REPO / "fixtures" / "scene-flux-dev")
    ap.add_argument("--work", type=Path, default=REPO / ".cache" / "scene-flux")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae-steps", type=int, default=3000)
    ap.add_argument("--vae-minutes", type=float, default=8.0,
                    help="time budget of the VAE stage (with --latent designed: of its decoder part)")
    ap.add_argument("--minutes", type=float, default=80.0, help="time budget of the transformer stage")
    ap.add_argument("--steps", type=int, default=0, help="stop earlier after this many steps (0: no limit)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--double", type=int, default=2)
    ap.add_argument("--single", type=int, default=3)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--save-every", type=float, default=8.0, help="minutes between checkpoints")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--text-minutes", type=float, default=3.0,
                    help="time budget of teaching the text encoders the scene attributes first")
    ap.add_argument("--curriculum", type=float, default=0.1,
                    help="fraction of the transformer stage's time trained at sigma 0.8-1 only")
    ap.add_argument("--tiers", choices=["eval", "default", "small"], default="eval", help="training sizes")
    ap.add_argument("--object-weight-minutes", type=float, default=16.0,
                    help="how long (of the transformer stage) --object-weight applies")
    ap.add_argument("--rope-axes", type=int, nargs=3, default=[8, 12, 12],
                    help="the transformer's axes_dims_rope (sum: the head width, 32)")
    ap.add_argument("--no-ramps", action="store_true",
                    help="the fifth run's designed latent: picture colour in channels 0-2, no place ramps")
    ap.add_argument("--latent", choices=["designed", "learned"], default="designed",
                    help="the VAE's latent space: designed (latent_space.py) or learned by reconstruction")
    ap.add_argument("--vae-channels", type=int, nargs=4, default=[16, 32, 64, 64],
                    help="the VAE's block_out_channels")
    ap.add_argument("--encoder-minutes", type=float, default=2.0,
                    help="time budget of the encoder's part of the designed VAE stage")
    ap.add_argument("--object-weight", type=float, default=0.0,
                    help="extra loss weight of the image tokens objects touch (0: plain loss)")
    ap.add_argument("--monitor", type=int, default=16,
                    help="held-out prompts sampled (12 steps, 256 px) at every checkpoint; 0: none")
    ap.add_argument("--high-noise", type=float, default=0.4,
                    help="fraction of samples whose sigma is drawn uniform in [0.7, 1] (text conditioning)")
    ap.add_argument("--text-lr-scale", type=float, default=0.3, help="text encoders' learning rate / --lr")
    ap.add_argument("--resume", action="store_true",
                    help="start the transformer stage from the model in --out (its VAE, text encoders and "
                         "transformer), skipping the VAE stage")
    ap.add_argument("--reuse-vae", action="store_true",
                    help="take the VAE from --work if there (vae_ramps.pt, with --no-ramps vae_designed.pt, "
                         "with --latent learned vae.pt)")
    ap.add_argument("--decoder-minutes", type=float, default=0.0, help="time budget of the decoder stage")
    ap.add_argument("--stage", choices=["all", "decoder", "merge"], default="all",
                    help="decoder: only stage 4 from --work/vae.pt (writes vae_ft.pt); merge: vae_ft.pt into --out")
    args = ap.parse_args()
    latent_space.RAMPS = not args.no_ramps
    random.seed(args.seed)
    np.random.seed(args.seed)
    rng = random.Random(args.seed)
    t_start = time.time()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.resume:
        # The tokenizers the model was trained with, copied out of the folder that is rewritten.
        from transformers import CLIPTokenizer, T5TokenizerFast

        tok_src = args.work / "tokenizers-resumed"
        for name in ("tokenizer", "tokenizer_2"):
            shutil.rmtree(tok_src / name, ignore_errors=True)
            shutil.copytree(args.out / name, tok_src / name)
        clip_tok = CLIPTokenizer.from_pretrained(str(tok_src / "tokenizer"))
        t5_tok = T5TokenizerFast.from_pretrained(str(tok_src / "tokenizer_2"))
    else:
        tok_src = args.work / "tokenizers"
        clip_tok, t5_tok = build_tokenizers(tok_src)
    models = build_models(clip_tok, t5_tok, args)
    for name, m in models.items():
        log(f"{name}: {sum(p.numel() for p in m.parameters()) / 1e6:.2f} M parameters")
    if args.latent == "learned":
        vae_path = args.work / "vae.pt"
    else:
        vae_path = args.work / ("vae_designed.pt" if args.no_ramps else "vae_ramps.pt")
    ft_path = args.work / "vae_ft.pt"
    if args.stage == "decoder":
        models["vae"].load_state_dict(torch.load(vae_path))
        t = time.time()
        steps = finetune_decoder(models["vae"], args.decoder_minutes, random.Random(args.seed + 4))
        torch.save(models["vae"].state_dict(), ft_path)
        log(f"decoder stage: {steps} steps in {time.time() - t:.0f}s -> {ft_path}")
        return 0
    if args.stage == "merge":
        merge_decoder(args.out, torch.load(ft_path))
        log(f"merged {ft_path} into {args.out / 'vae'}")
        return 0
    t_vae = time.time()
    if args.resume:
        from diffusers import AutoencoderKL, FluxTransformer2DModel
        from transformers import CLIPTextModel, T5EncoderModel

        models["vae"] = AutoencoderKL.from_pretrained(str(args.out / "vae")).eval()
        models["transformer"] = FluxTransformer2DModel.from_pretrained(str(args.out / "transformer"))
        models["clip"] = CLIPTextModel.from_pretrained(str(args.out / "text_encoder"), attn_implementation="eager")
        models["t5"] = T5EncoderModel.from_pretrained(str(args.out / "text_encoder_2"), attn_implementation="eager")
        log(f"resumed from {args.out}")
    elif args.reuse_vae and vae_path.exists():
        models["vae"].load_state_dict(torch.load(vae_path))
        models["vae"].eval()
        log("VAE reused")
    elif args.latent == "designed":
        vae_stats = train_designed_vae(models["vae"], args.vae_minutes, args.encoder_minutes,
                                       random.Random(args.seed + 1))
        log(f"VAE on the designed latent space: {vae_stats}")
        torch.save(models["vae"].state_dict(), vae_path)
    else:
        train_vae(models["vae"], args.vae_steps, random.Random(args.seed + 1), lr_max=1e-3, every=25,
                  minutes=args.vae_minutes)
        torch.save(models["vae"].state_dict(), vae_path)
    for p in models["vae"].parameters():
        p.requires_grad_(False)
    t_vae = time.time() - t_vae
    if args.text_minutes > 0:
        pretrain_text(models, clip_tok, t5_tok, args.text_minutes, random.Random(args.seed + 5))
    stats = train_transformer(models, clip_tok, t5_tok, args, args.out, tok_src, random.Random(args.seed + 2))
    t = time.time()
    for p in models["vae"].decoder.parameters():
        p.requires_grad_(True)
    if args.decoder_minutes > 0:
        stats["decoder_steps"] = finetune_decoder(models["vae"], args.decoder_minutes, random.Random(args.seed + 4))
        torch.save(models["vae"].state_dict(), ft_path)
        merge_decoder(args.out, models["vae"].state_dict())
    stats["decoder_seconds"] = round(time.time() - t, 1)
    stats.update(vae_seconds=round(t_vae, 1), total_seconds=round(time.time() - t_start, 1),
                 args={k: str(v) for k, v in vars(args).items()})
    (args.work / "train_stats.json").write_text(json.dumps(stats, indent=1))
    log(f"done: {json.dumps(stats)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
