"""Where and how things run: device choice, mixed precision, a name for the machine, derived seeds.

One home for these helpers; the engine, training, sampling, benchmarks and the app all use them.
"""
from __future__ import annotations

import contextlib
import os
import platform
from functools import lru_cache
from pathlib import Path

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}   # of each precision


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' → CUDA when available, else CPU; 'cuda' without a GPU is a ValueError."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind = str(name).split(":")[0]
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: no CUDA device is available here (use 'cpu' or 'auto')")
    return torch.device(name)


@lru_cache(maxsize=None)
def cpu_bf16_supported() -> bool:
    """True when the CPU runs bfloat16 matrix products natively (avx512_bf16 / AMX)."""
    with contextlib.suppress(Exception):
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def precision_supported(device: torch.device, precision: str) -> bool:
    """Whether `precision` autocast is offered on `device`: fp32 always, bf16 on CUDA and on CPUs with
    native bf16, fp16 on CUDA only."""
    if precision == "fp32":
        return True
    if device.type == "cuda":
        return precision in ("bf16", "fp16")
    return precision == "bf16" and cpu_bf16_supported()


def check_precision(device: torch.device, precision: str) -> None:
    """ValueError naming what is allowed when `precision` cannot run on `device`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not precision_supported(device, precision):
        allowed = [p for p in PRECISIONS if precision_supported(device, p)]
        raise ValueError(f"precision {precision!r} is not available on {device.type} here; use one of {allowed}")


def best_precision(device: torch.device) -> str:
    """bf16 where it runs natively (CUDA, or a CPU with bf16), else fp32: the training default."""
    return "bf16" if precision_supported(device, "bf16") else "fp32"


def autocast_for(device: torch.device, precision: str):
    """A factory of context managers: autocast to bf16/fp16 on `device`, or nothing for fp32
    (ValueError where `precision` cannot run on `device`)."""
    check_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=DTYPES[precision])


def autocast_session(device: torch.device, precision: str):
    """A context around one run whose model calls each enter `autocast_for(...)()`: the weights are cast
    once per run instead of once per call.

    Autocast keeps the low-precision copies of the weights it casts until the outermost autocast
    region exits; this region (autocast disabled, so it casts nothing itself) is that outermost one.
    For fp32 it does nothing.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)


def machine_name(device: torch.device) -> str:
    """One line naming the processor: GPU name and memory, or CPU model, cores and threads."""
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return (f"{p.name} ({p.total_memory / 2**30:.0f} GiB), {os.cpu_count()} CPU cores, "
                f"torch {torch.__version__}, CUDA {torch.version.cuda}")
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (f"{model}, {os.cpu_count()} logical cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} intra-op thread(s)")


SEED_STRIDE = 1_000_003   # seed·stride + index differs for every (seed, index) with 0 <= index < stride


def derived_seed(seed: int, index: int) -> int:
    """The seed of part `index` (a sampling chunk, a training step) of a job seeded `seed`."""
    return int(seed) * SEED_STRIDE + int(index)
