#!/usr/bin/env python3
"""diffusers' FluxPipeline (torch, CPU, float32) on the benchmark model's weights: a benchmark peer.

Loads the diffusers-format folder that `torch_weights.py diffusers` wrote (the same weights as the
ONNX graphs, checked there), runs `FluxPipeline.__call__` with the benchmark's prompt, size, steps,
guidance and seed, and encodes the PIL images like the other implementations. diffusers has no
stage hooks, so the breakdown is coarse: per-step time from the step-end callback, `total` end to
end including the image encoding.

    python diffusers_peer.py --model .cache/bench/diffusers/tiny-flux-dev --size 512x512 --steps 4 --threads 2
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common  # noqa: E402

bench_common.offline_environment()

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main() -> int:
    parser = bench_common.argument_parser(__doc__)
    parser.add_argument("--text-length", type=int, default=None,
                        help="T5 length (max_sequence_length); default: the T5 length of the ONNX export, "
                             "from the stamp written by torch_weights.py")
    args = parser.parse_args()
    bench_common.set_threads(args.threads, torch_too=True)

    from diffusers import FluxPipeline

    folder = Path(args.model)
    text_length = args.text_length or onnx_text_length(folder)
    start = time.perf_counter()
    pipe = FluxPipeline.from_pretrained(str(folder), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    load_seconds = time.perf_counter() - start

    def run_once(width, height, steps):
        marks = []

        def on_step_end(_pipe, _step, _timestep, _kwargs):
            marks.append(time.perf_counter())
            return {}

        begin = time.perf_counter()
        with torch.inference_mode():
            output = pipe(
                prompt=args.prompt,
                height=height,
                width=width,
                num_inference_steps=steps,
                guidance_scale=args.guidance,
                num_images_per_prompt=1,
                generator=torch.Generator("cpu").manual_seed(args.seed),
                max_sequence_length=text_length,
                output_type="np",
                callback_on_step_end=on_step_end,
            )
        decoded = time.perf_counter()
        pixels = (np.clip(output.images, 0, 1) * 255).round().astype(np.uint8)
        for image in pixels:
            bench_common.encode_image(image, args.format)
        end = time.perf_counter()
        return {"encode": end - decoded, "total": end - begin, "step_seconds": bench_common.step_durations(marks)}

    versions = {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__}
    document = bench_common.run_matrix("diffusers", args, load_seconds, run_once, versions)
    json.dump(document, sys.stdout)
    sys.stdout.write("\n")
    return 0


def onnx_text_length(folder: Path) -> int:
    stamp = folder / "flux-rs-bench-stamp.json"
    if not stamp.exists():
        raise SystemExit(f"{folder}: no {stamp.name}; make the weights with torch_weights.py diffusers")
    return int(json.loads(stamp.read_text())["text_length"])


if __name__ == "__main__":
    sys.exit(main())
