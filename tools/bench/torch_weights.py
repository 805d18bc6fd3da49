#!/usr/bin/env python3
"""diffusers-format weights for the benchmark's diffusers peer, rebuilt from the fixtures generator.

The fixtures generator (tools/tiny-flux/generate.py) writes ONNX graphs only. Its models are built
deterministically from fixed seeds, so this script rebuilds the same torch modules with the
generator's own building blocks, proves they are the ones in the ONNX graphs (every graph run on
random inputs against its torch module, with the generator's own tolerances), and saves a
`FluxPipeline` with `save_pretrained` so the peer loads it the ordinary diffusers way.

    python torch_weights.py diffusers --model fixtures/tiny-flux-dev --out .cache/bench/diffusers/tiny-flux-dev
    python torch_weights.py diffusers --model .cache/models/medium-flux-dev --out .cache/bench/diffusers/medium-flux-dev

(the medium model itself comes from `generate.py --medium`).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common  # noqa: E402

bench_common.offline_environment()

REPO = Path(__file__).resolve().parents[2]
GENERATOR = REPO / "tools" / "tiny-flux" / "generate.py"
STAMP = "flux-rs-bench-stamp.json"
# `generate.py --medium` builds its model with this seed offset (gen_medium); a drift shows up as a
# failed check against the graphs, never as a silently different model.
MEDIUM_SEED_OFFSET = 1000


def load_generator():
    spec = importlib.util.spec_from_file_location("tiny_flux_generate", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def onnx_digest(folder: Path) -> str:
    """Identifies the ONNX graphs the weights were checked against (sizes and first MiB of each)."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.onnx")):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(str(path.stat().st_size).encode())
        with open(path, "rb") as f:
            digest.update(f.read(1 << 20))
    return digest.hexdigest()


def is_current(out: Path, folder: Path) -> bool:
    stamp = out / STAMP
    if not stamp.exists():
        return False
    return json.loads(stamp.read_text()).get("onnx_digest") == onnx_digest(folder)


def rebuild_models(gen, folder: Path, sizes, dev: bool, seed_offset: int):
    from transformers import CLIPTokenizer, T5TokenizerFast

    clip_tok = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    t5_tok = T5TokenizerFast.from_pretrained(str(folder / "tokenizer_2"))
    models = {
        "clip": gen.build_clip(sizes, len(clip_tok), clip_tok.bos_token_id, clip_tok.eos_token_id,
                               gen.SEED_CLIP + seed_offset),
        "t5": gen.build_t5(sizes, len(t5_tok), gen.SEED_T5 + seed_offset),
        "transformer": gen.build_transformer(sizes, dev, (gen.SEED_DEV if dev else gen.SEED_SCHNELL) + seed_offset),
        "vae": gen.build_vae(sizes, gen.SEED_VAE + seed_offset),
    }
    return models, clip_tok, t5_tok


def verify_against_onnx(gen, folder: Path, models: dict, sizes, dev: bool, tolerance: float) -> None:
    """Each ONNX graph against the rebuilt torch module: equal within the generator's tolerance, or
    the rebuild is not the model in the folder and the peer would be measuring something else."""
    import onnxruntime as ort
    import torch

    g = torch.Generator("cpu").manual_seed(77)
    t5_session = ort.InferenceSession(str(folder / "t5.opt" / "model.onnx"), providers=["CPUExecutionProvider"])
    t5_input = t5_session.get_inputs()[0]
    length = int(t5_input.shape[1])
    id_dtype = torch.int64 if t5_input.type == "tensor(int64)" else torch.int32
    clip_vocab = models["clip"].config.vocab_size
    t5_vocab = models["t5"].config.vocab_size
    gen.check_graph(folder / "clip.opt" / "model.onnx", gen.ClipGraph(models["clip"]).eval(),
                    {"input_ids": torch.randint(0, clip_vocab, (2, gen.CLIP_LENGTH), generator=g).to(id_dtype)})
    gen.check_graph(folder / "t5.opt" / "model.onnx", gen.T5Graph(models["t5"]).eval(),
                    {"input_ids": torch.randint(0, t5_vocab, (2, length), generator=g).to(id_dtype)})
    h2, w2 = 4, 6
    feeds = {
        "hidden_states": torch.randn(1, h2 * w2, 64, generator=g),
        "encoder_hidden_states": torch.randn(1, length, sizes.t5_dim, generator=g),
        "pooled_projections": torch.randn(1, sizes.clip_hidden, generator=g),
        "timestep": torch.rand(1, generator=g),
        "img_ids": gen.make_img_ids(h2, w2),
        "txt_ids": torch.zeros(length, 3),
    }
    if dev:
        feeds["guidance"] = torch.rand(1, generator=g) * 10
    gen.check_graph(folder / "transformer.opt" / "fp32" / "model.onnx",
                    gen.TransformerGraph(models["transformer"], dev).eval(), feeds, tolerance)
    gen.check_graph(folder / "vae.opt" / "model.onnx", gen.VaeGraph(models["vae"]).eval(),
                    {"latent": torch.randn(1, 16, 8, 8, generator=g)}, tolerance)


def save_pipeline(gen, folder: Path, models: dict, clip_tok, t5_tok, out: Path) -> None:
    pipe = gen.make_pipeline(folder, models, clip_tok, t5_tok)
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(str(out), safe_serialization=True)
    import onnxruntime as ort

    t5 = ort.InferenceSession(str(folder / "t5.opt" / "model.onnx"), providers=["CPUExecutionProvider"])
    stamp = {"onnx_folder": str(folder), "onnx_digest": onnx_digest(folder),
             "text_length": int(t5.get_inputs()[0].shape[1])}
    (out / STAMP).write_text(json.dumps(stamp) + "\n")


def is_dev(folder: Path) -> bool:
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    return bool(config.get("use_dynamic_shifting", False))


def sizes_and_offset(gen, folder: Path):
    """Which of the generator's model shapes (seeds, check tolerance) made this folder: read off the graphs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "transformer.opt" / "fp32" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    t5_dim = int(session.get_inputs()[1].shape[2])
    if t5_dim == gen.TINY.t5_dim:
        return gen.TINY, 0, 1e-5
    if t5_dim == gen.MEDIUM.t5_dim:
        # The generator checks its medium export at 1e-4 (12 blocks of float32 rounding).
        return gen.MEDIUM, MEDIUM_SEED_OFFSET, 1e-4
    raise SystemExit(f"{folder}: text width {t5_dim} matches neither the tiny nor the medium generator model")


def command_diffusers(args) -> int:
    folder = args.model.resolve()
    if is_current(args.out, folder):
        print(f"diffusers weights up to date: {args.out}", file=sys.stderr)
        return 0
    gen = load_generator()
    sizes, offset, tolerance = sizes_and_offset(gen, folder)
    dev = is_dev(folder)
    print(f"rebuilding torch weights of {folder} from the generator's seeds", file=sys.stderr)
    models, clip_tok, t5_tok = rebuild_models(gen, folder, sizes, dev, offset)
    try:
        verify_against_onnx(gen, folder, models, sizes, dev, tolerance)
    except (AssertionError, TypeError, AttributeError) as error:
        print(f"error: the torch modules rebuilt from {GENERATOR} do not match the ONNX graphs in {folder} "
              f"({error}); the generator or the model folder changed since. The diffusers peer cannot run on "
              f"the same weights.", file=sys.stderr)
        return 3
    save_pipeline(gen, folder, models, clip_tok, t5_tok, args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    diffusers = commands.add_parser("diffusers", help="diffusers weights for an existing ONNX model folder")
    diffusers.add_argument("--model", type=Path, required=True)
    diffusers.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    return command_diffusers(args)


if __name__ == "__main__":
    sys.exit(main())
