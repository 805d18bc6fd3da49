"""Shared pieces of the benchmark peers: arguments, thread settings, the run matrix, the JSON result.

Every peer prints one JSON document shaped like the Rust worker's (crates/flux-bench/src/pipeline.rs), so
`cargo xtask bench` reads all three the same way:

    {"implementation", "versions", "threads", "load_seconds", "peak_rss_bytes",
     "runs": [{"width", "height", "image_tokens", "steps", "repeats",
               "median": {"tokenize", "clip", "t5", "denoise", "vae", "encode", "total",
                          "ort_session_total", "per_step"},   # seconds; a stage a peer cannot
               "samples": [{...}, ...]}]}                     # see on its own is absent
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
from pathlib import Path


def offline_environment() -> None:
    """No hub, no telemetry: everything the peers read is on disk."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("DIFFUSERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def set_threads(threads: int, *, torch_too: bool) -> None:
    """The same intra-op thread count for every library a peer uses (ORT sessions take it in
    their options; the BLAS pools take it here, and torch when the peer runs on it). A peer that
    does not use torch must not import it: its libraries would count in that peer's memory."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)
    if not torch_too:
        return
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)


def transformer_path(folder: Path) -> Path:
    """The transformer graph flux-core loads from an ONNX model folder: float32 first, then the
    builder's quantized graphs (a folder built with --precision int8|int4 has only those)."""
    for precision in ("fp32", "bf16", "fp16", "int8", "int4"):
        path = folder / "transformer.opt" / precision / "model.onnx"
        if path.exists():
            return path
    raise SystemExit(f"no transformer.opt/<precision>/model.onnx in {folder}")


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, got {text!r}") from None
    if width % 16 or height % 16 or width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r}: both sides must be positive multiples of 16")
    return width, height


def parse_steps(text: str) -> list[int]:
    try:
        steps = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"steps must be a comma-separated list of integers, got {text!r}") from None
    if not steps or min(steps) < 1:
        raise argparse.ArgumentTypeError(f"steps must be at least 1, got {text!r}")
    return steps


def argument_parser(doc: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder in the FLUX.1-dev-onnx layout")
    parser.add_argument("--size", type=parse_size, action="append", required=True,
                        help="WIDTHxHEIGHT (repeatable)")
    parser.add_argument("--steps", type=parse_steps, required=True, help="comma-separated step counts")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per size and step count")
    parser.add_argument("--threads", type=int, required=True, help="intra-op threads (ORT and torch)")
    parser.add_argument("--prompt", default="A photo of a cat sitting on a wooden table")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument("--format", choices=["jpeg", "png"], default="jpeg")
    return parser


def encode_image(pixels, image_format: str) -> bytes:
    """HWC u8 pixels to JPEG or PNG bytes, with flux-core's settings (pixels.rs): JPEG quality 95
    with full-resolution chroma (4:4:4; Pillow would subsample to 4:2:0 by default)."""
    from PIL import Image

    buffer = io.BytesIO()
    image = Image.fromarray(pixels)
    if image_format == "jpeg":
        image.save(buffer, format="JPEG", quality=95, subsampling=0)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def step_durations(marks: list[float]) -> list[float]:
    """Seconds between consecutive step-end callbacks (what a peer without stage hooks can see)."""
    return [b - a for a, b in zip(marks, marks[1:])]


def peak_rss_bytes() -> int:
    """VmHWM of this process (Linux), else getrusage's maximum resident set size."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def median_of(samples: list[dict]) -> dict:
    keys = [k for k in samples[0] if isinstance(samples[0][k], (int, float))]
    return {k: statistics.median(s[k] for s in samples) for k in keys}


def run_matrix(implementation: str, args, load_seconds: float, run_once, versions: dict) -> dict:
    """For each size: one warm-up run (1 step, excluded), then `repeats` measured runs per step count."""
    runs = []
    for width, height in args.size:
        run_once(width, height, 1)
        for steps in args.steps:
            samples = []
            for _ in range(args.repeats):
                timings = run_once(width, height, steps)
                step_seconds = timings.pop("step_seconds", [])
                if "denoise" in timings:
                    timings["per_step"] = timings["denoise"] / steps
                elif step_seconds:
                    timings["per_step"] = statistics.median(step_seconds)
                samples.append(timings)
            runs.append({
                "width": width,
                "height": height,
                "image_tokens": (height // 16) * (width // 16),
                "steps": steps,
                "repeats": args.repeats,
                "median": median_of(samples),
                "samples": samples,
            })
    return {
        "implementation": implementation,
        "versions": versions,
        "threads": args.threads,
        "load_seconds": load_seconds,
        "peak_rss_bytes": peak_rss_bytes(),
        "runs": runs,
    }

