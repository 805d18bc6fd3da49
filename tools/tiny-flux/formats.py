"""The tiny models in the formats people hold them in, for the Rust model builder (flux-builder).

From the very torch modules whose ONNX graphs generate.py commits (so its references apply
unchanged) this writes

* diffusers folders (`save_pretrained(safe_serialization=True)`, T5 in two shards),
* BFL single files (`flux1-dev.safetensors`, `ae.safetensors`) with the tensor names of the
  official repositories, checked against diffusers' own single-file conversion,
* a rank-4 LoRA in diffusers/PEFT names and the same LoRA in kohya names, with a reference case
  rendered through diffusers' own `load_lora_weights`,
* a bf16 copy of the schnell diffusers folder with its own reference case,
* on demand (`--real-width`), a model with FLUX.1-dev's real widths, outside git.

See README.md, "Other formats".
"""

from __future__ import annotations

import copy
import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import torch

LORA_RANK = 4
LORA_KOHYA_ALPHA = 2.0
LORA_SCALE = 0.8
SEED_LORA = 707

MODEL_INDEX = {
    "_class_name": "FluxPipeline",
    "_diffusers_version": "0.30.0.dev0",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "FluxTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def _save_file(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)


def _state_dicts_equal(a: dict, b: dict, what: str) -> None:
    assert set(a) == set(b), f"{what}: names differ: {sorted(set(a) ^ set(b))[:8]}"
    for name in a:
        assert a[name].shape == b[name].shape, f"{what}: {name} shape {a[name].shape} != {b[name].shape}"
        assert torch.equal(a[name].to(b[name].dtype), b[name]), f"{what}: {name} differs"


# --------------------------------------------------------------------------------------------------
# diffusers folders
# --------------------------------------------------------------------------------------------------


def write_diffusers(onnx_folder: Path, dst: Path, models: dict, dtype=torch.float32) -> None:
    """A FLUX diffusers folder from the modules of `onnx_folder` (tokenizers and scheduler copied),
    every component's weights stored in `dtype`."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    _write_json(dst / "model_index.json", MODEL_INDEX)
    for sub in ("scheduler", "tokenizer", "tokenizer_2"):
        shutil.copytree(onnx_folder / sub, dst / sub)

    def stored(module):
        return module if dtype == torch.float32 else copy.deepcopy(module).to(dtype)

    stored(models["clip"]).save_pretrained(str(dst / "text_encoder"), safe_serialization=True)
    # Shards with their index (two for the tiny models, like the T5-XXL of FLUX.1-dev).
    t5 = stored(models["t5"])
    total = sum(p.numel() * p.element_size() for p in t5.state_dict().values())
    biggest = max(p.numel() * p.element_size() for p in t5.state_dict().values())
    t5.save_pretrained(str(dst / "text_encoder_2"), safe_serialization=True,
                       max_shard_size=max(total // 2 + 1, biggest))
    shards = sorted(p.name for p in (dst / "text_encoder_2").glob("*.safetensors"))
    assert len(shards) >= 2 and (dst / "text_encoder_2" / "model.safetensors.index.json").is_file(), shards
    stored(models["transformer"]).save_pretrained(str(dst / "transformer"), safe_serialization=True)
    stored(models["vae"]).save_pretrained(str(dst / "vae"), safe_serialization=True)
    for m in models.values():
        m.eval()


def load_diffusers(dst: Path):
    """The pipeline diffusers loads from the folder (eager attention, float32 compute)."""
    from diffusers import FluxPipeline
    from transformers import CLIPTextModel, T5EncoderModel

    clip = CLIPTextModel.from_pretrained(str(dst / "text_encoder"), attn_implementation="eager", dtype=torch.float32)
    t5 = T5EncoderModel.from_pretrained(str(dst / "text_encoder_2"), attn_implementation="eager", dtype=torch.float32)
    pipe = FluxPipeline.from_pretrained(str(dst), text_encoder=clip, text_encoder_2=t5, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.text_encoder, pipe.text_encoder_2, pipe.transformer, pipe.vae):
        module.eval()
    return pipe


def check_diffusers(dst: Path, models: dict, dtype=torch.float32):
    """Every component loads back through diffusers/transformers with the very same weights (rounded
    to `dtype`), computing in float32."""
    pipe = load_diffusers(dst)
    for name, key in (("text_encoder", "clip"), ("text_encoder_2", "t5"), ("transformer", "transformer"),
                      ("vae", "vae")):
        want = {k: v.to(dtype).to(torch.float32) for k, v in models[key].state_dict().items()}
        got = getattr(pipe, name).state_dict()
        assert all(v.dtype == torch.float32 for v in got.values()), f"{name} not loaded in float32"
        _state_dicts_equal(got, want, name)
    print(f"  {dst.name}: every component loads back with identical weights ({dtype})")
    return pipe


# --------------------------------------------------------------------------------------------------
# BFL single files
# --------------------------------------------------------------------------------------------------


def _swap_halves(w: torch.Tensor) -> torch.Tensor:
    first, second = w.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def transformer_to_bfl(sd: dict, num_double: int, num_single: int) -> dict:
    """diffusers FluxTransformer2DModel names -> BFL (flux1-dev.safetensors) names: the inverse of
    diffusers' convert_flux_transformer_checkpoint_to_diffusers."""
    out = {}
    for bfl, dif in (("time_in", "timestep_embedder"), ("vector_in", "text_embedder"),
                     ("guidance_in", "guidance_embedder")):
        for layer, lin in (("in_layer", "linear_1"), ("out_layer", "linear_2")):
            for p in ("weight", "bias"):
                key = f"time_text_embed.{dif}.{lin}.{p}"
                if key in sd:
                    out[f"{bfl}.{layer}.{p}"] = sd[key]
    for p in ("weight", "bias"):
        out[f"txt_in.{p}"] = sd[f"context_embedder.{p}"]
        out[f"img_in.{p}"] = sd[f"x_embedder.{p}"]
        out[f"final_layer.linear.{p}"] = sd[f"proj_out.{p}"]
        # BFL's final modulation is (shift, scale); diffusers' AdaLayerNormContinuous is (scale, shift).
        out[f"final_layer.adaLN_modulation.1.{p}"] = _swap_halves(sd[f"norm_out.linear.{p}"])
    for i in range(num_double):
        d, b = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for p in ("weight", "bias"):
            out[f"{b}img_mod.lin.{p}"] = sd[f"{d}norm1.linear.{p}"]
            out[f"{b}txt_mod.lin.{p}"] = sd[f"{d}norm1_context.linear.{p}"]
            out[f"{b}img_attn.qkv.{p}"] = torch.cat([sd[f"{d}attn.to_{x}.{p}"] for x in "qkv"])
            out[f"{b}txt_attn.qkv.{p}"] = torch.cat([sd[f"{d}attn.add_{x}_proj.{p}"] for x in "qkv"])
            out[f"{b}img_mlp.0.{p}"] = sd[f"{d}ff.net.0.proj.{p}"]
            out[f"{b}img_mlp.2.{p}"] = sd[f"{d}ff.net.2.{p}"]
            out[f"{b}txt_mlp.0.{p}"] = sd[f"{d}ff_context.net.0.proj.{p}"]
            out[f"{b}txt_mlp.2.{p}"] = sd[f"{d}ff_context.net.2.{p}"]
            out[f"{b}img_attn.proj.{p}"] = sd[f"{d}attn.to_out.0.{p}"]
            out[f"{b}txt_attn.proj.{p}"] = sd[f"{d}attn.to_add_out.{p}"]
        out[f"{b}img_attn.norm.query_norm.scale"] = sd[f"{d}attn.norm_q.weight"]
        out[f"{b}img_attn.norm.key_norm.scale"] = sd[f"{d}attn.norm_k.weight"]
        out[f"{b}txt_attn.norm.query_norm.scale"] = sd[f"{d}attn.norm_added_q.weight"]
        out[f"{b}txt_attn.norm.key_norm.scale"] = sd[f"{d}attn.norm_added_k.weight"]
    for i in range(num_single):
        d, b = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for p in ("weight", "bias"):
            out[f"{b}modulation.lin.{p}"] = sd[f"{d}norm.linear.{p}"]
            out[f"{b}linear1.{p}"] = torch.cat([sd[f"{d}attn.to_{x}.{p}"] for x in "qkv"] + [sd[f"{d}proj_mlp.{p}"]])
            out[f"{b}linear2.{p}"] = sd[f"{d}proj_out.{p}"]
        out[f"{b}norm.query_norm.scale"] = sd[f"{d}attn.norm_q.weight"]
        out[f"{b}norm.key_norm.scale"] = sd[f"{d}attn.norm_k.weight"]
    return out  # write_bfl checks that diffusers' conversion gives back every tensor


def diffusers_flux_converter(inner_dim: int, mlp_ratio: float = 4.0):
    """diffusers' own BFL -> diffusers conversion.  It hard-codes FLUX.1's 3072 width for the split
    of the single blocks' linear1; for the tiny model that one constant is replaced, nothing else."""
    from diffusers.loaders import single_file_utils

    source = inspect.getsource(single_file_utils.convert_flux_transformer_checkpoint_to_diffusers)
    assert source.count("inner_dim = 3072") == 1 and source.count("mlp_ratio = 4.0") == 1
    source = source.replace("inner_dim = 3072", f"inner_dim = {inner_dim}").replace(
        "mlp_ratio = 4.0", f"mlp_ratio = {mlp_ratio}")
    namespace = dict(vars(single_file_utils))
    exec(compile(source, "<diffusers convert_flux_transformer_checkpoint_to_diffusers>", "exec"), namespace)
    return namespace["convert_flux_transformer_checkpoint_to_diffusers"]


def vae_to_bfl(sd: dict, num_blocks: int) -> dict:
    """diffusers AutoencoderKL names -> the LDM names of BFL's ae.safetensors (attention projections
    as 1x1 convolutions [C, C, 1, 1], decoder up blocks in reverse order)."""
    out = {}
    for key, value in sd.items():
        k = key
        for part in ("encoder", "decoder"):
            k = k.replace(f"{part}.conv_norm_out.", f"{part}.norm_out.")
        k = k.replace("mid_block.attentions.0.", "mid.attn_1.")
        if ".mid.attn_1." in k:
            k = (k.replace("group_norm.", "norm.").replace("to_q.", "q.").replace("to_k.", "k.")
                 .replace("to_v.", "v.").replace("to_out.0.", "proj_out."))
            if value.ndim == 2:
                value = value[:, :, None, None]
        for j in (0, 1):
            k = k.replace(f"mid_block.resnets.{j}.", f"mid.block_{j + 1}.")
        for i in range(num_blocks):
            k = k.replace(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.")
            k = k.replace(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
            j = num_blocks - 1 - i
            k = k.replace(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{j}.block.")
            k = k.replace(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{j}.upsample.")
        k = k.replace("conv_shortcut.", "nin_shortcut.")
        assert k not in out, f"two diffusers names map to {k}"
        out[k] = value
    return out


def write_bfl_transformer(dst: Path, transformer, file_name: str) -> int:
    """The transformer as a BFL single file, checked against diffusers' conversion."""
    config = transformer.config
    inner = config.num_attention_heads * config.attention_head_dim
    sd = {k: v.detach().clone() for k, v in transformer.state_dict().items()}
    bfl = transformer_to_bfl(sd, config.num_layers, config.num_single_layers)
    back = diffusers_flux_converter(inner)(dict(bfl))
    _state_dicts_equal(back, sd, f"{file_name} through diffusers' conversion")
    _save_file(bfl, dst / file_name)
    return len(bfl)


def write_bfl(dst: Path, models: dict, file_name: str, with_ae: bool = True) -> None:
    """flux1-dev.safetensors and ae.safetensors, each checked against diffusers' conversion."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    if dst.exists():
        shutil.rmtree(dst)
    count = write_bfl_transformer(dst, models["transformer"], file_name)
    if not with_ae:
        print(f"  {dst.name}: {file_name} ({count} tensors) converts back exactly")
        return

    vae = models["vae"]
    vsd = {k: v.detach().clone() for k, v in vae.state_dict().items()}
    ae = vae_to_bfl(vsd, len(vae.config.block_out_channels))
    back = convert_ldm_vae_checkpoint(dict(ae), dict(vae.config))
    _state_dicts_equal(back, vsd, "ae.safetensors through diffusers' conversion")
    _save_file(ae, dst / "ae.safetensors")

    # The VAE also through diffusers' own single-file loader (the transformer's cannot: its
    # converter hard-codes the 3072 width, see diffusers_flux_converter).
    from diffusers import AutoencoderKL

    with __import__("tempfile").TemporaryDirectory() as tmp:
        vae.save_config(tmp)
        loaded = AutoencoderKL.from_single_file(str(dst / "ae.safetensors"), config=tmp, torch_dtype=torch.float32)
    _state_dicts_equal(loaded.state_dict(), vsd, "ae.safetensors through AutoencoderKL.from_single_file")
    for m in models.values():
        m.eval()
    print(f"  {dst.name}: {file_name} ({count} tensors) and ae.safetensors ({len(ae)}) convert back exactly")


# --------------------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------------------

# (kohya module name, the diffusers modules it covers).  A fused BFL module (qkv) is one kohya
# LoRA whose down matrix the three diffusers modules share and whose up matrix is split by rows, so
# the two files hold exactly the same low-rank update.  The single blocks' linear1 is left out:
# diffusers' kohya converter hard-codes FLUX.1's widths for its split.
LORA_TARGETS = [
    ("double_blocks_{i}_img_attn_qkv", ["transformer_blocks.{i}.attn.to_q", "transformer_blocks.{i}.attn.to_k",
                                        "transformer_blocks.{i}.attn.to_v"]),
    ("double_blocks_{i}_img_attn_proj", ["transformer_blocks.{i}.attn.to_out.0"]),
    ("double_blocks_{i}_txt_attn_qkv", ["transformer_blocks.{i}.attn.add_q_proj",
                                        "transformer_blocks.{i}.attn.add_k_proj",
                                        "transformer_blocks.{i}.attn.add_v_proj"]),
    ("double_blocks_{i}_img_mlp_0", ["transformer_blocks.{i}.ff.net.0.proj"]),
    ("double_blocks_{i}_txt_mlp_2", ["transformer_blocks.{i}.ff_context.net.2"]),
    ("double_blocks_{i}_img_mod_lin", ["transformer_blocks.{i}.norm1.linear"]),
    ("single_blocks_{i}_linear2", ["single_transformer_blocks.{i}.proj_out"]),
    ("single_blocks_{i}_modulation_lin", ["single_transformer_blocks.{i}.norm.linear"]),
]


def make_lora(transformer, seed: int) -> tuple[dict, dict]:
    """The same rank-4 LoRA in diffusers/PEFT names (alpha = rank, so its scale is 1) and in kohya
    names (alpha 2, so its up matrices are doubled).  Sizes are chosen so that the update is about
    as large as the weights it changes: the images differ visibly."""
    generator = torch.Generator("cpu").manual_seed(seed)
    modules = dict(transformer.named_modules())
    peft, kohya = {}, {}
    config = transformer.config
    for kohya_fmt, targets in LORA_TARGETS:
        count = config.num_layers if kohya_fmt.startswith("double") else config.num_single_layers
        for i in range(count):
            linears = [modules[t.format(i=i)] for t in targets]
            fan_in = linears[0].in_features
            assert all(m.in_features == fan_in for m in linears)
            outs = [m.out_features for m in linears]
            down = torch.randn(LORA_RANK, fan_in, generator=generator) / fan_in**0.5
            up = torch.randn(sum(outs), LORA_RANK, generator=generator) * (2.0 / LORA_RANK**0.5)
            for target, piece in zip(targets, torch.split(up, outs, dim=0)):
                peft[f"transformer.{target.format(i=i)}.lora_A.weight"] = down.clone()
                peft[f"transformer.{target.format(i=i)}.lora_B.weight"] = piece.clone()
            name = "lora_unet_" + kohya_fmt.format(i=i)
            kohya[f"{name}.lora_down.weight"] = down.clone()
            kohya[f"{name}.lora_up.weight"] = up * (LORA_RANK / LORA_KOHYA_ALPHA)
            kohya[f"{name}.alpha"] = torch.tensor(LORA_KOHYA_ALPHA, dtype=torch.float32)
    return peft, kohya


def write_lora(dst: Path, transformer) -> tuple[Path, Path]:
    peft, kohya = make_lora(transformer, SEED_LORA)
    peft_path, kohya_path = dst / "lora-peft.safetensors", dst / "lora-kohya.safetensors"
    _save_file(peft, peft_path)
    _save_file(kohya, kohya_path)
    return peft_path, kohya_path


def lora_pipeline(pipe_factory, lora_path: Path, scale: float):
    """A pipeline over a copy of the transformer with the LoRA loaded by diffusers itself."""
    pipe = pipe_factory()
    pipe.load_lora_weights(str(lora_path), adapter_name="tiny")
    pipe.set_adapters(["tiny"], adapter_weights=[scale])
    for module in (pipe.text_encoder, pipe.text_encoder_2, pipe.transformer, pipe.vae):
        module.eval()
    return pipe


def transformer_probe(transformer, dev: bool) -> torch.Tensor:
    """One transformer call on fixed random inputs (to compare two ways of loading the same LoRA)."""
    g = torch.Generator("cpu").manual_seed(99)
    config = transformer.config
    with torch.no_grad():
        ids = torch.zeros(16, 3)
        ids[:, 1] = torch.arange(16) // 4
        ids[:, 2] = torch.arange(16) % 4
        return transformer(
            hidden_states=torch.randn(1, 16, 64, generator=g),
            encoder_hidden_states=torch.randn(1, 32, config.joint_attention_dim, generator=g),
            pooled_projections=torch.randn(1, config.pooled_projection_dim, generator=g),
            timestep=torch.tensor([0.7]),
            img_ids=ids,
            txt_ids=torch.zeros(32, 3),
            guidance=torch.tensor([3.5]) if dev else None,
            return_dict=False,
        )[0]


# --------------------------------------------------------------------------------------------------
# Driver (called by generate.py for each tiny variant, after its own references)
# --------------------------------------------------------------------------------------------------

BUILDER_CASES = "builder-cases"


def gen_formats(out: Path, dev: bool, onnx_folder: Path, models: dict, render_case, base_case: dict) -> list[dict]:
    """Writes the other formats of one tiny variant and its builder reference cases; returns the
    cases' index entries."""
    from PIL import Image

    name = "dev" if dev else "schnell"
    cases_root = out / "reference" / BUILDER_CASES
    diffusers_dir = out / f"tiny-flux-{name}-diffusers"
    write_diffusers(onnx_folder, diffusers_dir, models)
    check_diffusers(diffusers_dir, models)
    base_dir = out / "reference" / "cases" / base_case["name"]
    base_pixels = np.stack([np.asarray(Image.open(p), dtype=np.float32) for p in sorted(base_dir.glob("image_*.png"))])
    entries = []
    if dev:
        write_bfl(out / "tiny-flux-dev-bfl", models, "flux1-dev.safetensors")
        lora_dir = out / "tiny-flux-dev-lora"
        if lora_dir.exists():
            shutil.rmtree(lora_dir)
        peft_path, kohya_path = write_lora(lora_dir, models["transformer"])
        pipe = lora_pipeline(lambda: load_diffusers(diffusers_dir), peft_path, LORA_SCALE)
        kohya_pipe = lora_pipeline(lambda: load_diffusers(diffusers_dir), kohya_path, LORA_SCALE)
        with_lora = transformer_probe(pipe.transformer, dev)
        with_kohya = transformer_probe(kohya_pipe.transformer, dev)
        without = transformer_probe(models["transformer"], dev)
        kohya_diff = float((with_lora - with_kohya).abs().max())
        effect = float((with_lora - without).abs().max())
        print(f"  LoRA: PEFT vs kohya file through diffusers {kohya_diff:.2e}; effect on the transformer {effect:.2f}")
        assert kohya_diff <= 1e-5 and effect > 0.1, (kohya_diff, effect)
        del kohya_pipe
        # The torch-merged weights (diffusers' fuse_lora at the same scale), for a weight-level check.
        fused_pipe = load_diffusers(diffusers_dir)
        fused_pipe.load_lora_weights(str(peft_path), adapter_name="tiny")
        fused_pipe.fuse_lora(lora_scale=LORA_SCALE)
        fused_pipe.unload_lora_weights()
        fused_diff = float((transformer_probe(fused_pipe.transformer, dev) - with_lora).abs().max())
        base = models["transformer"].state_dict()
        fused = {k: v.detach().clone() for k, v in fused_pipe.transformer.state_dict().items()
                 if not torch.equal(v, base[k])}
        targets = {f"{t.format(i=0)}.weight" for _, ts in LORA_TARGETS for t in ts}
        assert set(fused) == targets, sorted(set(fused) ^ targets)
        _save_file(fused, lora_dir / "fused-reference.safetensors")
        print(f"  LoRA fused by diffusers vs unfused: {fused_diff:.2e} ({len(fused)} weights changed)")
        assert fused_diff <= 1e-5, fused_diff
        del fused_pipe
        case = dict(base_case, name="dev_lora_square_seed42")
        case_dir = cases_root / case["name"]
        if case_dir.exists():
            shutil.rmtree(case_dir)
        render_case(pipe, case, case_dir, "dev")
        lora = {"file": f"{lora_dir.name}/{peft_path.name}", "kohya_file": f"{lora_dir.name}/{kohya_path.name}",
                "fused_reference": f"{lora_dir.name}/fused-reference.safetensors",
                "scale": LORA_SCALE, "rank": LORA_RANK, "kohya_alpha": LORA_KOHYA_ALPHA}
        entries.append({"name": case["name"], "model": diffusers_dir.name, "lora": lora})
    else:
        # The schnell transformer as flux1-schnell.safetensors (no guidance embedder); its VAE is
        # the dev model's (same seed), so tiny-flux-dev-bfl/ae.safetensors serves both.
        write_bfl(out / "tiny-flux-schnell-bfl", models, "flux1-schnell.safetensors", with_ae=False)
        bf16_dir = out / f"tiny-flux-{name}-bf16-diffusers"
        write_diffusers(onnx_folder, bf16_dir, models, torch.bfloat16)
        pipe = check_diffusers(bf16_dir, models, torch.bfloat16)
        case = dict(base_case, name="schnell_bf16_square")
        case_dir = cases_root / case["name"]
        if case_dir.exists():
            shutil.rmtree(case_dir)
        render_case(pipe, case, case_dir, "schnell")
        entries.append({"name": case["name"], "model": bf16_dir.name, "lora": None})
    case_json = json.loads((case_dir / "case.json").read_text(encoding="utf-8"))
    case_json["model_folder"] = entries[-1]["model"]
    case_json["lora"] = entries[-1]["lora"]
    _write_json(case_dir / "case.json", case_json)
    pixels = np.stack([np.asarray(Image.open(p), dtype=np.float32) for p in sorted(case_dir.glob("image_*.png"))])
    change = float(np.abs(pixels - base_pixels).mean())
    print(f"    {case['name']}: mean pixel change from {base_case['name']} {change:.2f} of 255")
    if dev:
        assert change > 5.0, "the LoRA hardly changes the image"
    for m in models.values():
        m.eval()
    return entries


def write_builder_index(out: Path, entries: list[dict]) -> None:
    root = out / "reference" / BUILDER_CASES
    index_path = root / "index.json"
    if index_path.exists():
        names = {e["name"] for e in entries}
        kept = [c for c in json.loads(index_path.read_text(encoding="utf-8"))["cases"] if c["name"] not in names]
        entries = [{k: c[k] for k in ("name", "model", "lora")} for c in kept] + entries
    entries.sort(key=lambda e: e["name"])
    index = {
        "description": "diffusers FluxPipeline references for the model builder's inputs (diffusers folders, "
                       "BFL files, LoRAs), written like reference/cases (same files, same arithmetic); 'model' "
                       "is the fixture folder the case was rendered from; see tools/tiny-flux/README.md",
        "cases": [],
    }
    for entry in entries:
        files = sorted(p.name for p in (root / entry["name"]).iterdir() if p.is_file())
        index["cases"].append(dict(entry, files=files))
    _write_json(index_path, index)


# --------------------------------------------------------------------------------------------------
# --real-width: FLUX.1-dev's real widths, one block of each kind, 1-layer encoders, bf16 (outside git)
# --------------------------------------------------------------------------------------------------

REAL_TEXT_LENGTH = 512
SEED_REAL = 808
REAL_CASE = dict(name="real_width_square", prompt="A photo of a cat sitting on a wooden table", seed=42, width=128,
                 height=128, num_images=1, num_inference_steps=2, guidance_scale=3.5)


def build_real_width(tiny_folder: Path, perturb) -> dict:
    """The four modules at FLUX.1-dev's widths with the tiny tokenizers' vocabularies (no real
    tokenizer can be downloaded here): CLIP-L (768 wide, 12 heads, MLP 3072), T5-XXL (4096 wide,
    64 heads x 64, d_ff 10240, gated-gelu), the transformer (24 heads x 128, joint 4096, pooled 768,
    rope axes 16/56/56), the VAE (128/256/512/512, two resnets per block, 32 groups)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

    clip_tok = CLIPTokenizer.from_pretrained(str(tiny_folder / "tokenizer"))
    t5_tok = T5TokenizerFast.from_pretrained(str(tiny_folder / "tokenizer_2"))
    torch.manual_seed(SEED_REAL)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tok), hidden_size=768, intermediate_size=3072, num_hidden_layers=1,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
        bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.eos_token_id,
        attn_implementation="eager"))
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tok), d_model=4096, d_kv=64, d_ff=10240, num_layers=1, num_heads=64,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
        dropout_rate=0.1, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, is_encoder_decoder=False,
        use_cache=False, attn_implementation="eager"))
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
        axes_dims_rope=(16, 56, 56))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        latent_channels=16, norm_num_groups=32, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
        use_quant_conv=False, use_post_quant_conv=False)
    models = {"clip": clip, "t5": t5, "transformer": transformer, "vae": vae}
    for i, (key, module) in enumerate(models.items()):
        perturb(module, SEED_REAL + 1 + i, 0.02)
        module.eval()
    return models


def render_real(pipe, case: dict, case_dir: Path) -> None:
    """A reference at 512 text tokens (generate.py's render_case is fixed at the tiny length)."""
    captured = {}
    original_encode = pipe.encode_prompt

    def encode_prompt(*args, **kwargs):
        captured["encoded"] = original_encode(*args, **kwargs)
        return captured["encoded"]

    def on_step_end(_pipe, step, timestep, kwargs):
        captured["latents"] = kwargs["latents"].clone()
        return {}

    pipe.encode_prompt = encode_prompt
    try:
        with torch.no_grad():
            output = pipe(prompt=case["prompt"], height=case["height"], width=case["width"],
                          num_inference_steps=case["num_inference_steps"], guidance_scale=case["guidance_scale"],
                          num_images_per_prompt=case["num_images"],
                          generator=torch.Generator("cpu").manual_seed(case["seed"]),
                          max_sequence_length=REAL_TEXT_LENGTH, output_type="pil", callback_on_step_end=on_step_end)
    finally:
        del pipe.encode_prompt
    prompt_embeds, pooled, _ = captured["encoded"]
    clip_ids = pipe.tokenizer(case["prompt"], padding="max_length", max_length=77, truncation=True,
                              return_tensors="pt").input_ids
    t5_ids = pipe.tokenizer_2(case["prompt"], padding="max_length", max_length=REAL_TEXT_LENGTH, truncation=True,
                              return_tensors="pt").input_ids
    h8, w8 = case["height"] // 8, case["width"] // 8
    noise = torch.randn((case["num_images"], 16, h8, w8), generator=torch.Generator("cpu").manual_seed(case["seed"]))
    case_dir.mkdir(parents=True, exist_ok=True)
    _write_json(case_dir / "case.json", dict({k: v for k, v in case.items() if k != "name"},
                                             max_sequence_length=REAL_TEXT_LENGTH, image_seq_len=(h8 // 2) * (w8 // 2)))
    for name, value in (("clip_ids", clip_ids[0].to(torch.int64)), ("t5_ids", t5_ids[0].to(torch.int64)),
                        ("pooled", pooled[:1]), ("text_embeddings", prompt_embeds[:1]), ("noise", noise),
                        ("sigmas", pipe.scheduler.sigmas.to(torch.float32)), ("final_latents", captured["latents"])):
        np.save(case_dir / f"{name}.npy", np.ascontiguousarray(value.detach().numpy()), allow_pickle=False)
    for i, image in enumerate(output.images):
        image.save(case_dir / f"image_{i}.png", format="PNG")


def gen_real_width(folder: Path, tiny_folder: Path, perturb) -> None:
    """Writes folder/diffusers (bf16, like the real repos), folder/bfl (flux1-dev.safetensors and
    ae.safetensors in bf16, checked with diffusers' from_single_file, which works at this width) and
    folder/reference (one case, computed in float32 from the bf16 weights)."""
    import time

    start = time.time()
    models = build_real_width(tiny_folder, perturb)
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    print("  parameters: " + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in counts.items()))
    if folder.exists():
        shutil.rmtree(folder)
    write_diffusers(tiny_folder, folder / "diffusers", models, torch.bfloat16)
    print(f"  diffusers folder written ({time.time() - start:.0f} s)")
    bf16 = {name: copy.deepcopy(m).to(torch.bfloat16) for name, m in models.items()}
    write_bfl(folder / "bfl", bf16, "flux1-dev.safetensors")
    from diffusers import FluxTransformer2DModel

    loaded = FluxTransformer2DModel.from_single_file(str(folder / "bfl" / "flux1-dev.safetensors"),
                                                     config=str(folder / "diffusers" / "transformer"),
                                                     torch_dtype=torch.bfloat16)
    _state_dicts_equal(loaded.state_dict(), bf16["transformer"].state_dict(), "flux1-dev.safetensors from_single_file")
    del loaded, bf16, models
    print(f"  BFL files written and loaded back by from_single_file ({time.time() - start:.0f} s)")
    pipe = load_diffusers(folder / "diffusers")
    render_real(pipe, REAL_CASE, folder / "reference" / REAL_CASE["name"])
    _write_json(folder / "parameters.json", counts)
    print(f"  reference {REAL_CASE['name']} written ({time.time() - start:.0f} s)")
