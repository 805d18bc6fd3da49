#!/usr/bin/env python3
"""The benchmark's Rust peer (candle's FLUX, tools/candle-peer) reads BFL-named weights: this writes
a diffusers folder's transformer as a BFL single file, with the same conversion the fixtures use
(tools/tiny-flux/formats.py: transformer_to_bfl, checked against diffusers' own conversion back),
and the widths candle's `Config` needs, in BFL's field names.

    python candle_weights.py --diffusers .cache/models/medium-flux-dev-diffusers \
        --out .cache/bench/candle/medium

writes OUT/flux1.safetensors and OUT/config.json; a folder already written for the same source is
kept (a stamp holds the source's transformer config and weight file sizes).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common  # noqa: E402

bench_common.offline_environment()

REPO = Path(__file__).resolve().parents[2]
FORMATS = REPO / "tools" / "tiny-flux" / "formats.py"


def stamp_of(source: Path) -> dict:
    transformer = source / "transformer"
    return {
        "config": json.loads((transformer / "config.json").read_text()),
        "weights": sorted((p.name, p.stat().st_size) for p in transformer.glob("*.safetensors")),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diffusers", type=Path, required=True, help="a diffusers FLUX folder")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    stamp = stamp_of(args.diffusers)
    stamp_path = args.out / "stamp.json"
    if stamp_path.exists() and json.loads(stamp_path.read_text()) == json.loads(json.dumps(stamp)):
        print(f"candle weights up to date in {args.out}")
        return 0

    import torch
    from diffusers import FluxTransformer2DModel

    spec = importlib.util.spec_from_file_location("tiny_flux_formats", FORMATS)
    formats = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(formats)

    transformer = FluxTransformer2DModel.from_pretrained(
        str(args.diffusers), subfolder="transformer", torch_dtype=torch.float32)
    config = transformer.config
    args.out.mkdir(parents=True, exist_ok=True)
    formats.write_bfl_transformer(args.out, transformer, "flux1.safetensors")
    (args.out / "config.json").write_text(json.dumps({
        "in_channels": config.in_channels,
        "vec_in_dim": config.pooled_projection_dim,
        "context_in_dim": config.joint_attention_dim,
        "hidden_size": config.num_attention_heads * config.attention_head_dim,
        "mlp_ratio": 4.0,
        "num_heads": config.num_attention_heads,
        "depth": config.num_layers,
        "depth_single_blocks": config.num_single_layers,
        "axes_dim": list(config.axes_dims_rope),
        "theta": 10_000,
        "qkv_bias": True,
        "guidance_embed": bool(config.guidance_embeds),
    }, indent=2) + "\n")
    stamp_path.write_text(json.dumps(stamp))
    print(f"wrote candle weights into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
