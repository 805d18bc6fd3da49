#!/usr/bin/env python3
"""A plain Python FLUX.1 pipeline on the `onnxruntime` package: the benchmark peer of flux-core.

Same graphs, same steps as flux-core (shared/flux-pipeline.md): tokenizers from `transformers`,
CLIP and T5 encoded once, numpy noise, 2x2 packing, the shifted flow-matching schedule, one
transformer call per Euler step, unpack, VAE decode, pixels, JPEG/PNG encoding with Pillow.
It is written the way a competent Python user would write it (numpy arrays fed straight to
`InferenceSession.run`), not tuned against flux-rs.

Prints one JSON document on stdout (see `bench_common.result_document`); `cargo xtask bench` runs it.

    python ort_pipeline.py --model fixtures/tiny-flux-dev --size 512x512 --steps 1,4 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common  # noqa: E402

bench_common.offline_environment()

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
# Imported here, not in the pipeline's constructor: the load time measured is the model's, not
# the import's (as for flux-rs and diffusers, whose imports are not timed either).
from transformers import CLIPTokenizer, T5TokenizerFast  # noqa: E402

CLIP_LENGTH = 77


class TimedSession:
    """An InferenceSession whose `run` calls add their wall time to a shared counter, so the
    peer reports its own overhead (end-to-end minus time inside ONNX Runtime) like flux-core."""

    def __init__(self, path: Path, threads: int, counter: dict):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.counter = counter
        self.inputs = {i.name: i for i in self.session.get_inputs()}

    def run(self, feeds: dict) -> list:
        start = time.perf_counter()
        outputs = self.session.run(None, feeds)
        self.counter["ort"] += time.perf_counter() - start
        return outputs

    def id_dtype(self) -> type:
        return np.int64 if self.inputs["input_ids"].type == "tensor(int64)" else np.int32


class OrtFluxPipeline:
    def __init__(self, folder: Path, threads: int):
        self.counter = {"ort": 0.0}
        self.clip = TimedSession(folder / "clip.opt" / "model.onnx", threads, self.counter)
        self.t5 = TimedSession(folder / "t5.opt" / "model.onnx", threads, self.counter)
        self.transformer = TimedSession(bench_common.transformer_path(folder), threads, self.counter)
        self.vae = TimedSession(folder / "vae.opt" / "model.onnx", threads, self.counter)
        self.clip_tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
        self.t5_tokenizer = T5TokenizerFast.from_pretrained(str(folder / "tokenizer_2"))
        self.text_length = int(self.t5.inputs["input_ids"].shape[1])
        self.has_guidance = "guidance" in self.transformer.inputs
        self.scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        manifest = folder / "flux-rs.json"
        factors = json.loads(manifest.read_text()) if manifest.exists() else {}
        self.vae_scaling = float(factors.get("vae_scaling_factor", 0.3611))
        self.vae_shift = float(factors.get("vae_shift_factor", 0.1159))

    def sigmas(self, steps: int, image_tokens: int) -> np.ndarray:
        sigmas = np.linspace(1.0, 1.0 / steps, steps, dtype=np.float64)
        cfg = self.scheduler
        if cfg.get("use_dynamic_shifting", False):
            slope = (cfg["max_shift"] - cfg["base_shift"]) / (cfg["max_image_seq_len"] - cfg["base_image_seq_len"])
            mu = cfg["base_shift"] + slope * (image_tokens - cfg["base_image_seq_len"])
            sigmas = math.exp(mu) / (math.exp(mu) + (1.0 / sigmas - 1.0))
        else:
            shift = cfg.get("shift", 1.0)
            sigmas = shift * sigmas / (1.0 + (shift - 1.0) * sigmas)
        return np.append(sigmas.astype(np.float32), np.float32(0.0))

    def generate(self, prompt: str, width: int, height: int, steps: int, guidance: float, seed: int,
                 num_images: int, image_format: str, on_step=None) -> tuple[list[bytes], dict]:
        timings = {}
        self.counter["ort"] = 0.0
        start = time.perf_counter()

        mark = time.perf_counter()
        clip_ids = self.clip_tokenizer(prompt, padding="max_length", max_length=CLIP_LENGTH, truncation=True,
                                       return_tensors="np").input_ids.astype(self.clip.id_dtype())
        t5_ids = self.t5_tokenizer(prompt, padding="max_length", max_length=self.text_length, truncation=True,
                                   return_tensors="np").input_ids.astype(self.t5.id_dtype())
        timings["tokenize"] = time.perf_counter() - mark

        mark = time.perf_counter()
        pooled = self.clip.run({"input_ids": clip_ids})[-1]
        timings["clip"] = time.perf_counter() - mark
        mark = time.perf_counter()
        (text,) = self.t5.run({"input_ids": t5_ids})
        timings["t5"] = time.perf_counter() - mark

        # Stage boundaries as flux-core's (pipeline.rs): noise and the schedule are counted in
        # the total only, packing and the steps in "denoise", the VAE alone in "vae", and the
        # float-to-u8 conversion with the encoding in "encode".
        h8, w8 = height // 8, width // 8
        rng = np.random.default_rng(seed)
        noise = rng.standard_normal((num_images, 16, h8, w8), dtype=np.float32)
        sigmas = self.sigmas(steps, (h8 // 2) * (w8 // 2))

        mark = time.perf_counter()
        latents = pack(noise)
        feeds = {
            "encoder_hidden_states": np.repeat(text, num_images, axis=0),
            "pooled_projections": np.repeat(pooled, num_images, axis=0),
            "img_ids": img_ids(h8 // 2, w8 // 2),
            "txt_ids": np.zeros((self.text_length, 3), np.float32),
        }
        if self.has_guidance:
            feeds["guidance"] = np.full((num_images,), guidance, np.float32)
        for i in range(steps):
            feeds["hidden_states"] = latents
            feeds["timestep"] = np.full((num_images,), sigmas[i], np.float32)
            (velocity,) = self.transformer.run(feeds)
            latents = latents + (sigmas[i + 1] - sigmas[i]) * velocity
            if on_step is not None:
                on_step(i)
        timings["denoise"] = time.perf_counter() - mark

        mark = time.perf_counter()
        z = unpack(latents, h8, w8) / np.float32(self.vae_scaling) + np.float32(self.vae_shift)
        (decoded,) = self.vae.run({"latent": z.astype(np.float32)})
        timings["vae"] = time.perf_counter() - mark

        mark = time.perf_counter()
        pixels = (np.clip(decoded / 2 + 0.5, 0, 1) * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)
        encoded = [bench_common.encode_image(p, image_format) for p in pixels]
        timings["encode"] = time.perf_counter() - mark
        timings["total"] = time.perf_counter() - start
        timings["ort_session_total"] = self.counter["ort"]
        return encoded, timings


def pack(latents: np.ndarray) -> np.ndarray:
    b, c, h, w = latents.shape
    return np.ascontiguousarray(
        latents.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4))


def unpack(latents: np.ndarray, h: int, w: int) -> np.ndarray:
    b, _, c4 = latents.shape
    return latents.reshape(b, h // 2, w // 2, c4 // 4, 2, 2).transpose(0, 3, 1, 4, 2, 5).reshape(b, c4 // 4, h, w)


def img_ids(h2: int, w2: int) -> np.ndarray:
    ids = np.zeros((h2, w2, 3), np.float32)
    ids[..., 1] = np.arange(h2, dtype=np.float32)[:, None]
    ids[..., 2] = np.arange(w2, dtype=np.float32)[None, :]
    return ids.reshape(h2 * w2, 3)


def main() -> int:
    parser = bench_common.argument_parser(__doc__)
    args = parser.parse_args()
    bench_common.set_threads(args.threads, torch_too=False)
    start = time.perf_counter()
    pipe = OrtFluxPipeline(Path(args.model), args.threads)
    load_seconds = time.perf_counter() - start

    def run_once(width, height, steps):
        _, timings = pipe.generate(args.prompt, width, height, steps, args.guidance, args.seed, 1, args.format)
        return timings

    document = bench_common.run_matrix("python-onnxruntime", args, load_seconds, run_once,
                                       {"onnxruntime": ort.__version__, "numpy": np.__version__})
    json.dump(document, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
