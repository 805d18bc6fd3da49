#!/usr/bin/env python3
"""Generate the flux-rs test fixtures: tiny FLUX.1 models (ONNX), tokenizers and diffusers references.

Everything is built from fixed seeds on the CPU with no download of any kind.  See README.md.

    python generate.py                 # (re)write fixtures/ in the repository
    python generate.py --check         # regenerate into a temp dir and compare bit for bit
    python generate.py --medium        # a 50-150 M parameter dev model outside git, for benchmarks
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "fixtures"
DEFAULT_MEDIUM_OUT = REPO / ".cache" / "models" / "medium-flux-dev"

# Determinism: one thread, deterministic kernels.  Reference numbers must not depend on the machine's
# core count (reduction order changes the last bits).
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=False)
        f.write("\n")


def save_npy(path: Path, array) -> None:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.ascontiguousarray(array)
    path.parent.mkdir(parents=True, exist_ok=True)
    # allow_pickle=False keeps the files plain .npy v1.0 that ndarray-npy reads.
    np.save(path, array, allow_pickle=False)


# --------------------------------------------------------------------------------------------------
# Stage 1: raw torch.randn references (the RNG port's truth)
# --------------------------------------------------------------------------------------------------

RANDN_SEEDS = [0, 1, 42, 2**31, 4294967295]
RANDN_SMALL_SHAPES = [[1], [3], [15], [16], [17], [31], [2, 3, 5], [1, 16, 8, 8], [2, 16, 12, 20]]
# Large shapes cost 1 MiB each, so only a few seed/shape pairs.
RANDN_LARGE = [(0, [1, 16, 128, 128]), (4294967295, [1, 16, 128, 128]), (42, [4, 16, 64, 64])]


def gen_randn(out: Path) -> None:
    root = out / "reference" / "randn"
    entries = []
    pairs = [(s, shape) for s in RANDN_SEEDS for shape in RANDN_SMALL_SHAPES] + RANDN_LARGE
    for seed, shape in pairs:
        generator = torch.Generator("cpu").manual_seed(seed)
        sample = torch.randn(shape, generator=generator, dtype=torch.float32)
        name = f"seed{seed}_{'x'.join(str(d) for d in shape)}.npy"
        save_npy(root / name, sample)
        entries.append({"seed": seed, "shape": shape, "file": name})
    write_json(
        root / "index.json",
        {
            "description": "torch.randn(shape, generator=torch.Generator('cpu').manual_seed(seed), "
            "dtype=torch.float32), one fresh generator per entry",
            "torch_version": torch.__version__,
            "entries": entries,
        },
    )
