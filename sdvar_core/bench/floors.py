"""What the device allows and what one model costs: weight-read and FLOP floors, single-model
end-to-end timing against the CPU goals, and a cProfile of one row."""
from __future__ import annotations

import cProfile
import io
import pstats
import statistics
import time
from typing import Callable

import torch

from ..config import VARConfig
from ..engine import Pair, generate
from ..runtime import DTYPES, machine_name
from .harness import Row
from .pairs import random_official_var, random_vqvae
from .tables import LoadMeter, fmt, markdown_table

CPU_GOALS = {"total": 15.0, "transformer": 10.5, "decode": 4.5}  # VAR-d16, one CFG image, 2-core CPU (issue 2)


def _time(fn: Callable[[], None], device: torch.device, repeats: int) -> float:
    """Median seconds of fn() over `repeats` after one warm-up, synchronised on CUDA."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int = 10) -> float:
    """Bytes per second of a large device copy, counting bytes read plus bytes written."""
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / _time(lambda: dst.copy_(src), device, repeats)


def matmul_rate(device: torch.device, n: int, dtype: torch.dtype, repeats: int = 10) -> float:
    """FLOP/s of an n×n×n matrix product in `dtype` on random data."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / _time(lambda: a @ b, device, repeats)


def transformer_flops(cfg: VARConfig, batch: int) -> float:
    """FLOPs of the transformer for `batch` CFG images (2·batch rows) over all scales with a KV cache.

    Per block and position: 24·C² (qkv, proj, 4x MLP) + 4·C·kv (scores and values over the keys
    seen); the head adds 2·C·V per position. AdaLN and embeddings (per row, not per position) are left out.
    """
    layout, C = cfg.layout, cfg.width
    per_row = 0.0
    for k, n in enumerate(layout.sizes):
        kv = layout.ends[k]
        per_row += cfg.depth * n * (24 * C * C + 4 * C * kv) + 2 * n * C * cfg.vocab_size
    return 2 * batch * per_row


def run_floor(presets: list[str], batches: list[int], device: torch.device, *, precision: str, repeats: int,
              small: bool = False, deadline: float | None = None) -> str:
    """Per-image transformer and decode times of random official VARs against the weight-read and FLOP floors."""
    big = device.type == "cuda"
    bw = copy_bandwidth(device, 2**30 if big else 2**26)
    rate = matmul_rate(device, 8192 if big else 1024, DTYPES[precision])
    print(f"  copy bandwidth {bw / 1e9:.0f} GB/s, {precision} matmul {rate / 1e12:.1f} TFLOP/s", flush=True)
    vq = random_vqvae(device, small)
    weight_bytes = 4 if precision == "fp32" else 2
    meter = LoadMeter()
    lines = []
    for name in presets:
        var = random_official_var(name, device, small=small)
        variants = [("fp32 weights", var)] if precision == "fp32" else [("fp32 weights + autocast", var), ("bf16 weights", None)]
        for label, model in variants:
            if deadline is not None and time.perf_counter() > deadline:
                print(f"  deadline reached: skipping {name} {label}", flush=True)
                continue
            if model is None:
                model = var.to(torch.bfloat16)
            pair = Pair(vq, model, model, name=name)
            P = model.num_params()
            for b in batches:
                ids = list(range(b))
                try:
                    runs = [generate(pair, "target", ids, seed=r, progressive=False, precision=precision).trace.timings
                            for r in range(repeats + 1)][1:]   # the first run warms up
                except (RuntimeError, ValueError) as e:   # e.g. a dtype the engine does not support
                    lines.append([name, label, b, f"failed: {type(e).__name__}: {str(e)[:80]}"] + [""] * 6)
                    continue
                tr = statistics.median(t["transformer"] for t in runs) / b
                dec = statistics.median(t["decode"] for t in runs) / b
                tot = statistics.median(t["total"] for t in runs) / b
                wfloor = P * weight_bytes * model.cfg.layout.num_scales / bw / b
                ffloor = transformer_flops(model.cfg, b) / rate / b
                lines.append([name, label, b, fmt(1000 * tr, 1), fmt(1000 * dec, 1), fmt(1000 * tot, 1),
                              fmt(1000 * wfloor, 2), fmt(1000 * ffloor, 2), fmt(tr / max(wfloor, ffloor), 1),
                              f"{P:,}"])
                print("  " + " | ".join(map(str, lines[-1])), flush=True)
                meter.sample()
        del var
        if big:
            torch.cuda.empty_cache()
    head = (f"## Floors: random official VARs, {precision}\n\n"
            f"- machine: {machine_name(device)}; {meter}\n"
            f"- measured: device copy {bw / 1e9:.0f} GB/s (bytes read + written), {precision} {('8192' if big else '1024')}³ "
            f"matmul {rate / 1e12:.2f} TFLOP/s\n"
            f"- per image: median of {repeats} generate() runs after one warm-up, ÷ batch; one CFG image = 2 rows; "
            f"VQ-VAE {'tiny' if small else 'official'} decode in {precision} (autocast)\n"
            f"- weight-read floor = parameters × {weight_bytes} bytes × 10 scales ÷ copy bandwidth ÷ batch "
            f"(every call reads every weight once); FLOP floor = transformer_flops ÷ matmul rate ÷ batch; "
            f"× floor = transformer ÷ the larger floor\n"
            f"- 'fp32 weights + autocast' is the engine's precision='bf16' path: the first call of a run casts the "
            f"fp32 weights to a bf16 copy that the later calls of the run reuse\n")
    return head + "\n" + markdown_table(
        ["model", "weights", "batch", "transformer ms/img", "decode ms/img", "total ms/img", "weight floor ms/img",
         "FLOP floor ms/img", "× floor", "params"], lines) + "\n"


# ---- single-model speed (issue 2) ---------------------------------------------------------------------


def run_generate(preset_name: str, device: torch.device, *, batch: int, repeats: int, precision: str,
                 warmup: int) -> str:
    """Time one model end to end (transformer loop and VQ-VAE decode apart) → markdown.

    Before each repeat a matrix product measures what the device delivers at that moment (on a
    shared CPU that moves with the load): the FLOP floor of the transformer loop at that rate
    says how much of the time is the machine and how much the code.
    """
    meter = LoadMeter()
    t0 = time.perf_counter()
    vq = random_vqvae(device)
    var = random_official_var(preset_name, device)
    pair = Pair(vq, var, var, name=preset_name)
    print(f"built {preset_name} ({var.num_params():,} params) + VQ-VAE in {time.perf_counter() - t0:.1f} s; "
          f"{machine_name(device)}", flush=True)
    ids = [i % var.cfg.num_classes for i in range(batch)]
    mm_n = 8192 if device.type == "cuda" else 1024
    flops = transformer_flops(var.cfg, batch)
    for w in range(warmup):
        generate(pair, "target", ids, seed=1000 + w, progressive=False, precision=precision)
    runs = []
    for r in range(repeats):
        rate = matmul_rate(device, mm_n, DTYPES[precision], repeats=5)
        t = time.perf_counter()
        timings = generate(pair, "target", ids, seed=r, progressive=False, precision=precision).trace.timings
        runs.append({**timings, "wall": time.perf_counter() - t, "rate": rate / 1e9,
                     "floor": flops / rate})
        meter.sample()
        print(f"  repeat {r + 1}/{repeats}: " + ", ".join(f"{k} {v:.2f}" for k, v in runs[-1].items()
                                                          if k != "progressive") + f"; {meter}", flush=True)
    keys = ["wall", "total", "transformer", "decode", "overhead", "rate", "floor"]
    med = {k: statistics.median(r[k] for r in runs) for k in keys}
    lines = [[f"repeat {i + 1}"] + [fmt(r[k], 2) for k in keys] + [fmt(r["transformer"] / r["floor"], 1)]
             for i, r in enumerate(runs)]
    lines.append(["**median**"] + [f"**{med[k]:.2f}**" for k in keys] + [""])
    goal = ""
    if device.type == "cpu" and preset_name == "var-d16" and batch == 1:
        checks = [f"{k} {med[k]:.2f} s {'≤' if med[k] <= g else '>'} {g} s: {'met' if med[k] <= g else 'NOT met'}"
                  for k, g in CPU_GOALS.items()]
        goal = "- goals (2-core CPU, d16, one CFG image): " + "; ".join(checks) + "\n"
    head = (f"## Single model: {preset_name}, batch {batch}, {precision}\n\n"
            f"- machine: {machine_name(device)}; {meter}\n"
            f"- random weights ({var.num_params():,} params) + official VQ-VAE (256×256 decode); mode 'target', "
            f"CFG 1.5, progressive=False; {warmup} warm-up run(s), {repeats} timed; seconds from Trace.timings "
            f"(wall = around generate())\n"
            f"- GFLOP/s: a {mm_n}³ {precision} matrix product just before each repeat; FLOP floor = "
            f"transformer_flops ({flops / 1e12:.3f} TFLOP for {batch} CFG image(s)) ÷ that rate\n" + goal)
    return head + "\n" + markdown_table(["run"] + [f"{k} s" for k in keys[:5]]
                                        + ["matmul GFLOP/s", "FLOP floor s", "transformer ÷ floor"], lines) + "\n"


# ---- profile ---------------------------------------------------------------------------------------------


def run_profile(pair: Pair, row: Row, batch: int, top: int) -> str:
    """cProfile of one generate() call of `row` (after one warm-up), sorted by own time."""
    ids = [i % pair.num_classes for i in range(batch)]
    generate(pair, row.mode, ids, 0, progressive=False, **row.kwargs)
    prof = cProfile.Profile()
    prof.enable()
    out = generate(pair, row.mode, ids, 0, progressive=False, **row.kwargs)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    t = out.trace.timings
    return (f"{row.name}: total {t['total']:.3f} s, transformer {t['transformer']:.3f} s, decode {t['decode']:.3f} s, "
            f"overhead {t['overhead']:.3f} s ({100 * t['overhead'] / t['total']:.1f} %)\n" + buf.getvalue())
