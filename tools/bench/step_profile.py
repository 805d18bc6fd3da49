#!/usr/bin/env python3
"""Where one transformer step spends its time, in ONNX Runtime and in torch: a benchmark probe.

Runs the benchmark model's transformer once per repeat at one image size with random inputs of the
pipeline's shapes, under ONNX Runtime's profiler (the ONNX graph, as flux-rs and the Python peer
run it) and under torch's profiler (diffusers' FluxTransformer2DModel, as the diffusers peer runs
it), with the same thread count, and splits the step into attention (ONNX: the Softmax and the
MatMuls between two activations, i.e. QK^T and PV; torch: scaled_dot_product_attention), linear
layers (ONNX: MatMul/Gemm against a weight; torch: aten::linear) and the rest, after two warm-up
runs. The step's wall time comes from as many runs again with no profiler attached, so the
profilers' own cost is in neither the step nor "the rest". Prints one JSON document:

    {"width", "height", "image_tokens", "text_tokens", "threads", "repeats",
     "onnxruntime": {"step_ms", "attention_ms", "linear_ms", "other_ms"},
     "torch": {"step_ms", "attention_ms", "linear_ms", "other_ms"},
     "onnxruntime_built": {...} or null, "flops": {"linear", "attention"}}

With --built-model, the same weights built by flux-builder (fused MultiHeadAttention, counted as
attention; MatMulNBits and DynamicQuantizeMatMul as linear) are profiled the same way.

    python step_profile.py --onnx-model .cache/models/medium-flux-dev \
        --diffusers-model .cache/bench/diffusers/medium-flux-dev --size 1024x576 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common  # noqa: E402

bench_common.offline_environment()

import numpy as np  # noqa: E402

# The first two runs of a session are slower (allocations, the memory arena growing).
WARMUP_RUNS = 2


def inputs(session_inputs, image_tokens: int, seed: int) -> dict:
    """Random inputs of the pipeline's shapes (batch 1) for the graph's declared inputs."""
    rng = np.random.default_rng(seed)
    text_tokens = text_length(session_inputs)
    feeds = {}
    for port in session_inputs:
        name = port.name
        if name == "hidden_states":
            shape = [1, image_tokens, port.shape[2]]
        elif name == "encoder_hidden_states":
            shape = [1, text_tokens, port.shape[2]]
        elif name == "pooled_projections":
            shape = [1, port.shape[1]]
        elif name in ("timestep", "guidance"):
            feeds[name] = np.array([0.5 if name == "timestep" else 3.5], np.float32)
            continue
        elif name == "img_ids":
            shape = [image_tokens, 3]
        elif name == "txt_ids":
            shape = [text_tokens, 3]
        else:
            raise SystemExit(f"unexpected transformer input {name}")
        feeds[name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def text_length(session_inputs) -> int:
    for port in session_inputs:
        if port.name == "encoder_hidden_states" and isinstance(port.shape[1], int):
            return port.shape[1]
    raise SystemExit("the transformer's encoder_hidden_states has no fixed text length")


def split(walls: list[float], attention_us: float, linear_us: float, repeats: int) -> dict:
    """The step's median wall time and its parts in milliseconds; `other` is what neither
    attention nor the linear layers took."""
    step_ms = statistics.median(walls) * 1e3
    attention_ms = attention_us / 1e3 / repeats
    linear_ms = linear_us / 1e3 / repeats
    return {
        "step_ms": step_ms,
        "attention_ms": attention_ms,
        "linear_ms": linear_ms,
        "other_ms": max(step_ms - attention_ms - linear_ms, 0.0),
    }


def timed_runs(run, repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls of `run`, with no profiler attached."""
    walls = []
    for _ in range(repeats):
        begin = time.perf_counter()
        run()
        walls.append(time.perf_counter() - begin)
    return walls


def profile_onnxruntime(model: Path, image_tokens: int, threads: int, repeats: int) -> tuple[dict, int]:
    import onnxruntime as ort

    path = str(bench_common.transformer_path(model))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    profile_dir = tempfile.mkdtemp(prefix="flux-step-profile-")
    options.profile_file_prefix = os.path.join(profile_dir, "ort")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feeds = inputs(session.get_inputs(), image_tokens, seed=0)
    for _ in range(WARMUP_RUNS):  # allocations, arena growth, prepacking
        session.run(None, feeds)
    for _ in range(repeats):
        session.run(None, feeds)
    profile = Path(session.end_profiling())
    events = json.loads(profile.read_text())
    shutil.rmtree(profile_dir, ignore_errors=True)
    # The step itself is timed with the profiler off: its bookkeeping between kernels would
    # otherwise land in "rest".
    walls = timed_runs(lambda: session.run(None, feeds), repeats)
    # The warm-up runs' kernels are in the profile too: count only the measured runs' nodes.
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    if len(runs) != WARMUP_RUNS + repeats:
        raise SystemExit(f"the ONNX Runtime profile has {len(runs)} runs, expected {WARMUP_RUNS + repeats}")
    measured_from = runs[WARMUP_RUNS]["ts"]
    attention = linear = 0.0
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        if event["ts"] < measured_from:
            continue
        op = event["args"].get("op_name", "")
        ranks = [len(next(iter(shape.values()))) for shape in event["args"].get("input_type_shape", [])]
        microseconds = float(event["dur"])
        if op in ("Softmax", "MultiHeadAttention", "Attention", "GroupQueryAttention"):
            # The built graphs' fused attention is one kernel: QK^T, softmax and PV together.
            attention += microseconds
        elif op in ("MatMul", "FusedMatMul") and len(ranks) >= 2 and ranks[0] == 4 and ranks[1] == 4:
            attention += microseconds
        elif op in ("MatMul", "FusedMatMul", "Gemm", "MatMulNBits", "DynamicQuantizeMatMul"):
            linear += microseconds
    return split(walls, attention, linear, repeats), text_length(session.get_inputs())


def profile_torch(model: Path, image_tokens: int, text_tokens: int, threads: int, repeats: int) -> dict:
    import torch
    from diffusers import FluxTransformer2DModel

    transformer = FluxTransformer2DModel.from_pretrained(str(model), subfolder="transformer",
                                                         torch_dtype=torch.float32).eval()
    config = transformer.config
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    kwargs = {
        "hidden_states": randn(1, image_tokens, config.in_channels),
        "encoder_hidden_states": randn(1, text_tokens, config.joint_attention_dim),
        "pooled_projections": randn(1, config.pooled_projection_dim),
        "timestep": torch.tensor([0.5]),
        "img_ids": randn(image_tokens, 3),
        "txt_ids": randn(text_tokens, 3),
        "return_dict": False,
    }
    if config.guidance_embeds:
        kwargs["guidance"] = torch.tensor([3.5])
    with torch.inference_mode():
        for _ in range(WARMUP_RUNS):
            transformer(**kwargs)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            for _ in range(repeats):
                transformer(**kwargs)
        walls = timed_runs(lambda: transformer(**kwargs), repeats)
    totals = {event.key: event.cpu_time_total for event in profiler.key_averages()}
    attention_us = totals.get("aten::scaled_dot_product_attention", 0.0)
    linear_us = totals.get("aten::linear", 0.0)
    return split(walls, attention_us, linear_us, repeats), step_flops(config, image_tokens, text_tokens)


def step_flops(config, image_tokens: int, text_tokens: int) -> dict:
    """Floating-point operations of one step (batch 1), counted from the architecture: a linear
    layer of K inputs and N outputs applied to M tokens is 2*M*K*N; attention over S tokens of
    width D is 2*S*S*D for QK^T and as much for PV, per block. The per-block modulation linears
    and the embedders of the timestep, guidance and pooled text see one token: counted too."""
    d = config.num_attention_heads * config.attention_head_dim
    c, j, p = config.in_channels, config.joint_attention_dim, config.pooled_projection_dim
    mlp = int(d * 4)
    s = image_tokens + text_tokens
    blocks = config.num_layers + config.num_single_layers
    linear = 0
    # Double blocks: each stream has its own q/k/v (3 D^2), output (D^2) and MLP (2 D*4D)
    # weights, applied to that stream's tokens; modulation: 2 x (D -> 6D) on one token.
    linear += config.num_layers * 2 * (s * (4 * d * d + 2 * d * mlp) + 2 * 6 * d * d)
    # Single blocks: q/k/v, the MLP's input, and one output over the joined [D + 4D] width.
    linear += config.num_single_layers * 2 * (s * (3 * d * d + d * mlp + (d + mlp) * d) + 3 * d * d)
    # Embedders and the output layer.
    linear += 2 * (image_tokens * c * d + text_tokens * j * d + image_tokens * d * c)
    linear += 2 * (256 * d + d * d) * (3 if config.guidance_embeds else 2) + 2 * (p * d + d * d)
    linear += 2 * 2 * d * d  # norm_out's modulation (D -> 2D)
    attention = blocks * 4 * s * s * d
    return {"linear": float(linear), "attention": float(attention)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx-model", type=Path, required=True, help="model folder in the ONNX layout")
    parser.add_argument("--diffusers-model", type=Path, required=True,
                        help="the same weights in diffusers' layout (torch_weights.py diffusers)")
    parser.add_argument("--built-model", type=Path,
                        help="the same weights built by flux-builder (fused attention): profiled too")
    parser.add_argument("--size", type=bench_common.parse_size, required=True, help="WIDTHxHEIGHT")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    bench_common.set_threads(args.threads, torch_too=True)

    width, height = args.size
    image_tokens = (width // 16) * (height // 16)
    onnxruntime, text_tokens = profile_onnxruntime(args.onnx_model, image_tokens, args.threads, args.repeats)
    torch_side, flops = profile_torch(args.diffusers_model, image_tokens, text_tokens, args.threads, args.repeats)
    built = None
    if args.built_model is not None:
        built, built_text = profile_onnxruntime(args.built_model, image_tokens, args.threads, args.repeats)
        if built_text != text_tokens:
            raise SystemExit(f"the built graph has {built_text} text tokens, the export {text_tokens}")
    json.dump({
        "width": width,
        "height": height,
        "image_tokens": image_tokens,
        "text_tokens": text_tokens,
        "threads": args.threads,
        "repeats": args.repeats,
        "onnxruntime": onnxruntime,
        "torch": torch_side,
        "onnxruntime_built": built,
        "flops": flops,
    }, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
