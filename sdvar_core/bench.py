"""Benchmarks: single-model speed, the mode table, the quality report, the cost model, GPU floors.

Every ratio is taken between rows of one run whose repeats are interleaved: repeat r runs
every row once, in an order rotated by r, so a slow phase of a shared machine hits all rows
alike. Times are wall-clock medians over repeats with their [min–max]; outputs name the
machine and the load average (os.getloadavg, 1 minute) seen during the run.

Sub-commands (`python -m sdvar_core.bench <cmd> --help` lists every flag):

  generate  a random-weight official-size VAR (--preset var-d16) with the official VQ-VAE makes
            CFG images end to end; transformer loop and 256x256 decode timed apart
            (Trace.timings, progressive=False); median of --repeats; CPU goals checked for d16.
  modes     the mode table of a pair (--pair tiny|random): target only, draft only, hand-off
            schedules 'D'*e+'T'*(10-e) and 'T'*e+'D'*(10-e) for e = 0..10, sd_masks at e = 5,
            speculative exact (γ 1..4) and relaxed; target/draft calls, wall time, speed-up over
            the target-only row of the same run, mean acceptance, engine overhead.
  report    the mode table with quality (class accuracy, FID-tiny against real procedural
            images, --images-per-class per row), whether the seed's claims hold, and the cost
            model's predicted speed-up against the measured one; markdown, optionally written
            into a marked section of a file (--out FILE --section NAME).
  profile   cProfile of one row: where the engine's own overhead goes.
  floor     weight-read and FLOP floors against measured per-image times of random official
            VARs (bandwidth from a large device copy, rate from a large matrix product).
  patterns  official-size random d16→d30: the transformer calls of every mode's call pattern,
            replayed with VAR.forward_window on the engine's windows, KV lengths and masks.
            Random weights accept nothing meaningful, so speculative rows force acceptance: each
            drafted scale passes with probability --accept (exact rule), and the calls are the
            ones the engine makes for that outcome (tested against the engine's own traces).
            Sampling, acceptance tests and VQ-VAE work are not in these times.
  gpu       floor + patterns + the embedded pair's modes table under one deadline
            (scripts/gpu_bench.sh runs it once on a lent GPU; --small shrinks it for a CPU try).

On a shared 2-core CPU give small models --threads 1: two intra-op threads wait for each other
when other processes hold the cores.

Examples:
  python -m sdvar_core.bench generate --preset var-d16 --repeats 3
  python -m sdvar_core.bench modes --pair tiny --threads 1 --seeds 2 --repeats 5 --out BENCHMARKS.md --section modes-cpu
  python -m sdvar_core.bench report --images-per-class 100 --max-minutes 50 --out BENCHMARKS.md --section report-cpu
  bash scripts/gpu_bench.sh    # the device checks, once, on a lent GPU (results under $OUT)
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import math
import os
import platform
import pstats
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from . import masks
from .config import OFFICIAL_VQVAE, TINY_VQVAE, ScaleLayout, VARConfig, VQVAEConfig, official_var_config, preset
from .engine import Pair, generate
from .var import VAR
from .vqvae import VQVAE

EMBEDDED_TARGET = dict(depth=6, width=192, heads=3)   # the shipped pair's shapes (assets/tiny)
EMBEDDED_DRAFT = dict(depth=2, width=128, heads=2)
CPU_GOALS = {"total": 15.0, "transformer": 10.5, "decode": 4.5}  # VAR-d16, one CFG image, 2-core CPU (issue 2)
TARGET_ROW = "target only"
REAL_SEED = 7_000_003   # the report's real procedural images (not a training or held-out seed)
CLAIM_CALLS, CLAIM_SPEEDUP = 5, 1.3   # the seed's claims: target calls ≤ 5, speed-up ≥ 1.3 (of 1.3–1.7)


# ---- machine, load, formatting ---------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """'auto' → CUDA when available, else CPU; 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def machine(device: torch.device) -> str:
    """One line naming the processor that ran the numbers."""
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


class LoadMeter:
    """Samples the 1-minute load average during a run."""

    def __init__(self):
        self.samples: list[float] = []
        self.sample()

    def sample(self) -> None:
        with contextlib.suppress(OSError):
            self.samples.append(os.getloadavg()[0])

    def __str__(self) -> str:
        if not self.samples:
            return "load average unavailable"
        return (f"1-min load average {min(self.samples):.1f}–{max(self.samples):.1f} "
                f"({len(self.samples)} samples) on {os.cpu_count()} logical cores")


def fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def med_range(xs: list[float], digits: int = 2) -> str:
    """'median [min–max]' of a list (just the value for one element)."""
    if not xs:
        return "—"
    m = statistics.median(xs)
    if len(xs) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} [{min(xs):.{digits}f}–{max(xs):.{digits}f}]"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(path, key: str, text: str) -> None:
    """Put `text` between `<!-- bench:key -->` markers in `path`: replaced if present, else appended."""
    path = Path(path)
    begin, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = path.read_text() if path.is_file() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        new = head + block + ("\n" + tail if tail else "")
    else:
        new = old + ("\n" if old and not old.endswith("\n\n") else "") + block
    path.write_text(new)


def emit(text: str, out: str | None, section: str) -> None:
    """Print, and write into section `section` of `out` when given."""
    print(text, flush=True)
    if out:
        write_section(out, section, text)


# ---- pairs ---------------------------------------------------------------------------------


def random_pair(device="cpu", seed: int = 0, target: dict | None = None, draft: dict | None = None,
                vqvae_cfg: VQVAEConfig = TINY_VQVAE, num_classes: int = 10) -> Pair:
    """A pair of random-weight VARs on the tiny VQ-VAE; default shapes are the embedded pair's."""
    kw = dict(vocab_size=vqvae_cfg.vocab_size, z_channels=vqvae_cfg.z_channels, num_classes=num_classes,
              patch_nums=vqvae_cfg.patch_nums)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        vq = VQVAE(vqvae_cfg).to(device).eval()   # built on the device; .to() moves any stray tensor
        t = VAR(VARConfig(**(target or EMBEDDED_TARGET), **kw)).to(device).eval()
        d = VAR(VARConfig(**(draft or EMBEDDED_DRAFT), **kw)).to(device).eval()
    return Pair(vq, d, t, name="random (embedded shapes)" if target is None and draft is None else "random")


def get_pair(name: str, device: torch.device) -> Pair:
    """'tiny' → the embedded pair (assets/tiny; a clear error if absent), 'random' → random_pair."""
    if name == "random":
        return random_pair(device)
    if name == "tiny":
        from .zoo import load_pair
        return load_pair("tiny", device=device)
    raise ValueError(f"--pair must be 'tiny' or 'random', got {name!r}")


def random_official_var(name: str, device, seed: int = 0, small: bool = False) -> VAR:
    """A random-weight VAR of preset `name`, built on `device`; small=True puts it on the tiny VQ-VAE's codebook."""
    cfg = preset(name)
    if small:
        cfg = official_var_config(cfg.depth, vocab_size=TINY_VQVAE.vocab_size, z_channels=TINY_VQVAE.z_channels,
                                  num_classes=10)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        return VAR(cfg).to(device).eval()


# ---- rows of the tables ----------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One line of a table: a generate() mode with its settings."""

    name: str
    mode: str
    settings: tuple = ()   # sorted (key, value) pairs of generate() settings

    @property
    def kwargs(self) -> dict:
        return dict(self.settings)

    def describe(self) -> str:
        s = self.kwargs
        if "schedule" in s:
            return f"schedule {s['schedule']}, sd_mask {s['sd_mask']}"
        if self.mode == "speculative":
            return ", ".join(f"{k} {v}" for k, v in self.settings)
        return self.mode


def _row(name: str, mode: str, **settings) -> Row:
    return Row(name, mode, tuple(sorted(settings.items())))


def schedule_row(direction: str, e: int, sd_mask: int = 3, K: int = 10) -> Row:
    """'D→T': 'D'*e + 'T'*(K-e); 'T→D': 'T'*e + 'D'*(K-e)."""
    a, b = direction.split("→")
    name = f"{direction} e={e}" + (f" sd_mask {sd_mask}" if sd_mask != 3 else "")
    return _row(name, "schedule", schedule=a * e + b * (K - e), sd_mask=sd_mask)


RELAXED = [("prob", tau, lam) for tau in (0.9, 0.7, 0.5) for lam in (1.0, 2.0)] + [("top1", 0.5, 1.0)]
RELAXED_GAMMA = 3


def table_rows(which: str = "modes", K: int = 10) -> list[Row]:
    """Rows of the 'modes' table or the 'report'.

    Both: target only, draft only, both hand-off directions, speculative exact γ = 1..4 and
    relaxed (γ = 3: 'prob' with τ 0.9/0.7/0.5 and λ 1/2, 'top1' with τ 0.5). 'modes' runs e = 0..10
    (e = 0 and 10 repeat the single-model patterns: a timing-noise control) and sd_mask 0, 1, 2, 4, 5
    at e = 5; 'report' runs e = 1..9 and sd_mask 0, 1, 2, 4, 5 at e = 3, 5, 7 (rule 3 is the plain row).
    """
    if which not in ("modes", "report"):
        raise ValueError(f"which must be 'modes' or 'report', got {which!r}")
    es = range(K + 1) if which == "modes" else range(1, K)
    entries = (K // 2,) if which == "modes" else (3, 5, 7)
    rows = [Row(TARGET_ROW, "target"), Row("draft only", "draft")]
    rows += [schedule_row(d, e, 3, K) for d in ("D→T", "T→D") for e in es]
    rows += [schedule_row("D→T", e, m, K) for e in entries for m in (0, 1, 2, 4, 5)]
    rows += [_row(f"spec γ={g} exact", "speculative", gamma=g, accept="prob", tau=1.0, lenience=1.0)
             for g in (1, 2, 3, 4)]
    rows += [_row(f"spec γ={RELAXED_GAMMA} {acc} τ={tau} λ={lam:g}", "speculative", gamma=RELAXED_GAMMA,
                  accept=acc, tau=tau, lenience=lam) for acc, tau, lam in RELAXED]
    return rows


# ---- measuring rows with interleaved repeats ---------------------------------------------------


@dataclass
class RunRecord:
    """One generate() call of a row."""

    repeat: int
    wall: float
    timings: dict
    target_calls: int
    draft_calls: int
    acceptance: float | None   # mean over verified scales of the accepted fraction


@dataclass
class RowResult:
    """Everything measured for one row across the repeats of a run."""

    row: Row
    runs: list[RunRecord] = field(default_factory=list)
    call_seconds: dict = field(default_factory=dict)   # (model, scales) → [seconds]
    passes: np.ndarray | None = None                   # (K,) scale passed (every sample) in a round
    judged: np.ndarray | None = None                   # (K,) scale judged in a round

    def add(self, repeat: int, wall: float, trace) -> None:
        acc = [a for a in trace.acceptance_per_scale() if a is not None]
        self.runs.append(RunRecord(repeat, wall, dict(trace.timings), trace.target_calls, trace.draft_calls,
                                   float(np.mean(acc)) if acc else None))
        for c in trace.calls:
            self.call_seconds.setdefault((c.model, tuple(c.scales)), []).append(c.seconds)
        K = len(trace.patch_nums)
        if self.passes is None:
            self.passes, self.judged = np.zeros(K), np.zeros(K)
        for rd in trace.rounds:
            for k in rd.accepted_scales:
                self.passes[k] += 1
                self.judged[k] += 1
            if rd.corrected_scale is not None:
                self.judged[rd.corrected_scale] += 1

    def per_repeat(self, value: Callable[[RunRecord], float]) -> dict[int, float]:
        out: dict[int, float] = {}
        for r in self.runs:
            out[r.repeat] = out.get(r.repeat, 0.0) + value(r)
        return out

    @property
    def walls(self) -> dict[int, float]:
        return self.per_repeat(lambda r: r.wall)

    def mean(self, attr: str) -> float | None:
        vals = [getattr(r, attr) for r in self.runs if getattr(r, attr) is not None]
        return float(np.mean(vals)) if vals else None

    def pass_rate(self) -> list[float | None]:
        """Per scale: fraction of the rounds judging it in which every sample passed."""
        if self.judged is None:
            return []
        return [float(p / j) if j else None for p, j in zip(self.passes, self.judged)]


def speedups(base: RowResult, row: RowResult) -> list[float]:
    """Per repeat: base wall time ÷ row wall time (> 1: the row is faster)."""
    bw, rw = base.walls, row.walls
    return [bw[r] / rw[r] for r in sorted(rw) if r in bw and rw[r] > 0]


def overhead_fractions(base: RowResult, row: RowResult) -> list[float]:
    """Per repeat: the row's engine overhead (Trace.timings['overhead']) ÷ the base row's total."""
    bt, ro = base.per_repeat(lambda r: r.timings["total"]), row.per_repeat(lambda r: r.timings["overhead"])
    return [ro[r] / bt[r] for r in sorted(ro) if r in bt and bt[r] > 0]


Plan = list[list[tuple[list[int], int]]]   # per repeat: the (class_ids, seed) runs of every row


def measure(pair: Pair, rows: list[Row], plan: Plan, *, deadline: float | None = None,
            on_images: Callable | None = None, settings: dict | None = None,
            log: Callable[[str], None] = print, meter: LoadMeter | None = None) -> dict[str, RowResult]:
    """Run every row on the runs of each repeat of `plan`, repeats interleaved.

    Repeat r runs the rows in an order rotated by r. Target-only and draft-only run once each
    first as a warm-up (untimed). Past `deadline` (a time.perf_counter() value) no new repeat
    starts, so every row has the same completed repeats. on_images(row, images, class_ids) sees
    each run's images. settings: extra generate() settings for every row (e.g. precision).
    """
    settings = dict(settings or {})
    results = {row.name: RowResult(row) for row in rows}
    ids0, seed0 = plan[0][0]
    for row in rows:
        if row.mode in ("target", "draft"):
            generate(pair, row.mode, ids0, seed0, progressive=False, **settings)
    for r, runs in enumerate(plan):
        if r and deadline is not None and time.perf_counter() > deadline:
            log(f"  deadline reached: {r} of {len(plan)} repeats done")
            break
        t0 = time.perf_counter()
        k = r % len(rows)
        for row in rows[k:] + rows[:k]:
            for class_ids, seed in runs:
                t = time.perf_counter()
                out = generate(pair, row.mode, class_ids, seed, progressive=False, **row.kwargs, **settings)
                results[row.name].add(r, time.perf_counter() - t, out.trace)
                if on_images is not None:
                    on_images(row, out.images, class_ids)
        if meter is not None:
            meter.sample()
        log(f"  repeat {r + 1}/{len(plan)}: {time.perf_counter() - t0:.1f} s"
            + (f", {meter}" if meter is not None else ""))
    return results


# ---- the cost model ----------------------------------------------------------------------------


def expected_round_sum(gamma: int, pass_prob: list[float], round_cost: Callable[[int, int], float]) -> float:
    """E[Σ round_cost(start, end)] over the rounds of speculative decoding with the exact round rule.

    A round starting at scale s drafts scales s..e (e = min(s+γ, K) − 1) and verifies them in one
    target call; drafted scales are judged in order, each passing with probability pass_prob[k];
    the first failing scale is finalized with corrections and ends the round. The next round
    starts after the last finalized scale. round_cost = 1 gives the expected number of target calls.
    """
    K = len(pass_prob)
    if int(gamma) != gamma or gamma < 1:
        raise ValueError(f"gamma must be an integer >= 1, got {gamma}")
    if any(not 0 <= p <= 1 for p in pass_prob):
        raise ValueError(f"pass probabilities must lie in [0, 1], got {pass_prob}")
    E = [0.0] * (K + 1)   # E[s]: expected remaining cost from a round starting at s
    for s in reversed(range(K)):
        e = min(s + gamma, K) - 1
        reach, rest = 1.0, 0.0
        for k in range(s, e + 1):
            rest += reach * (1 - pass_prob[k]) * E[k + 1]   # k fails: finalized corrected, next round at k+1
            reach *= pass_prob[k]
        E[s] = round_cost(s, e) + rest + reach * E[e + 1]
    return E[0]


def predicted_speedup(gamma: int, pass_prob: list[float], draft_cost: list[float],
                      target_cost: Callable[[int, int], float], fixed: float = 0.0) -> float:
    """Target-only time ÷ expected speculative time, from per-call costs.

    draft_cost[k]: seconds of a draft call on scale k; target_cost(s, e): seconds of a target call
    feeding scales s..e (target only makes target_cost(k, k) for every k); fixed: seconds both
    runs share (decode, engine overhead). A pure function of its inputs.
    """
    K = len(pass_prob)
    if len(draft_cost) != K:
        raise ValueError(f"draft_cost has {len(draft_cost)} entries for {K} scales")
    target_only = sum(target_cost(k, k) for k in range(K)) + fixed
    spec = expected_round_sum(gamma, pass_prob,
                              lambda s, e: sum(draft_cost[s:e + 1]) + target_cost(s, e)) + fixed
    return target_only / spec


def call_cost_model(results: Iterable[RowResult], layout: ScaleLayout):
    """(draft_cost list, target_cost(s, e)) from measured calls: mean seconds per (model, window).

    A target window never measured is estimated from a least-squares line in the number of
    positions fed, fitted to every measured target call.
    """
    seconds: dict = {}
    for res in results:
        for key, vals in res.call_seconds.items():
            seconds.setdefault(key, []).extend(vals)
    mean = {key: float(np.mean(v)) for key, v in seconds.items()}
    K = layout.num_scales
    draft_cost = [mean.get(("draft", (k,)), math.nan) for k in range(K)]
    pts = [(layout.ends[w[-1]] - layout.starts[w[0]], t) for (m, w), t in mean.items() if m == "target"]
    if len(pts) >= 2:
        a, b = np.polyfit([p[0] for p in pts], [p[1] for p in pts], 1)
    else:
        a, b = 0.0, pts[0][1] if pts else math.nan

    def target_cost(s: int, e: int) -> float:
        key = ("target", tuple(range(s, e + 1)))
        return mean[key] if key in mean else float(a * (layout.ends[e] - layout.starts[s]) + b)

    return draft_cost, target_cost


# ---- the modes table -----------------------------------------------------------------------------


def modes_plan(num_classes: int, batch: int, seeds: int, repeats: int) -> Plan:
    """Every repeat runs seeds 0..seeds−1 on class ids 0, 1, … (mod num_classes), `batch` images each."""
    ids = [i % num_classes for i in range(batch)]
    return [[(ids, s) for s in range(seeds)] for _ in range(repeats)]


def modes_table(results: dict[str, RowResult]) -> str:
    """Markdown: calls, wall time, speed-up and overhead against the target-only row of the same run."""
    base = results[TARGET_ROW]
    lines = []
    for res in results.values():
        walls = list(res.walls.values())
        lines.append([res.row.name, res.row.describe(), fmt(res.mean("target_calls"), 1),
                      fmt(res.mean("draft_calls"), 1), med_range(walls, 3), med_range(speedups(base, res)),
                      fmt(res.mean("acceptance"), 3), med_range([100 * f for f in overhead_fractions(base, res)], 1)])
    return markdown_table(["row", "settings", "target calls", "draft calls", "wall s, median [min–max]",
                           "speed-up vs target only", "mean acceptance", "engine overhead, % of target-only total"],
                          lines)


def run_modes(pair: Pair, device: torch.device, *, batch: int, seeds: int, repeats: int,
              deadline: float | None = None, settings: dict | None = None, title: str = "Mode table") -> str:
    """Measure the modes rows and return the markdown section."""
    rows = table_rows("modes", pair.layout.num_scales)
    meter = LoadMeter()
    t0 = time.perf_counter()
    print(f"{title}: {len(rows)} rows × {repeats} repeats × {seeds} seed(s), batch {batch}", flush=True)
    results = measure(pair, rows, modes_plan(pair.num_classes, batch, seeds, repeats), deadline=deadline,
                      settings=settings, meter=meter)
    base = results[TARGET_ROW]
    ov = overhead_fractions(base, base)
    done = len(base.walls)
    head = (f"## {title}\n\n"
            f"- pair: {pair.name} (target {pair.target.num_params():,} params, draft {pair.draft.num_params():,})\n"
            f"- machine: {machine(device)}; {meter}\n"
            f"- {done} interleaved repeats (rows rotated each repeat) × {seeds} seed(s), batch {batch} "
            f"(class ids 0, 1, …), CFG 1.5, {(settings or {}).get('precision', 'fp32')}, progressive decode off; "
            f"{time.perf_counter() - t0:.0f} s in all\n"
            f"- wall s: one repeat of a row (all its seeds); speed-up: target-only wall ÷ row wall per repeat; "
            f"engine overhead: Trace.timings['overhead'] (loop time outside model forwards, incl. f_hat "
            f"updates and sampling) ÷ target-only total, per repeat\n"
            f"- **engine overhead of target only: {med_range([100 * f for f in ov], 1)} % of its total** "
            f"(goal < 10 % for small models on CPU)\n")
    return head + "\n" + modes_table(results) + "\n"


# ---- the report ------------------------------------------------------------------------------------


def report_plan(num_classes: int, images_per_class: int, batch: int) -> Plan:
    """One repeat per chunk of `batch` images: class ids run 0, 1, …, num_classes−1, 0, …; seed 1000 + chunk."""
    total = images_per_class * num_classes
    if batch < 1 or total < 1:
        raise ValueError(f"need batch >= 1 and images per class >= 1, got {batch} and {images_per_class}")
    chunks = math.ceil(total / batch)
    return [[([i % num_classes for i in range(c * batch, min((c + 1) * batch, total))], 1000 + c)]
            for c in range(chunks)]


def claims(calls: float | None, speedup: float | None, dfid: float | None, tol: float) -> tuple[str, str, str, str]:
    """✓/✗ for the seed's three claims (target calls ≤ 5, speed-up ≥ 1.3, ΔFID ≤ tol) and all three."""
    marks = [calls is not None and calls <= CLAIM_CALLS,
             speedup is not None and speedup >= CLAIM_SPEEDUP,
             dfid is not None and dfid <= tol]
    sym = ["✓" if m else "✗" for m in marks]
    return sym[0], sym[1], sym[2], "hold" if all(marks) else "no"


def build_report(pair: Pair, classifier, device: torch.device, *, images_per_class: int, batch: int,
                 n_boot: int = 50, n_real: int | None = None, deadline: float | None = None,
                 settings: dict | None = None, rows: list[Row] | None = None) -> str:
    """Measure the report rows (timing and quality from the same interleaved runs) → markdown.

    n_real: real procedural images for FID-tiny (default: max(1000, images per row)).
    """
    from .classifier import features, predict
    from .data import make_batch
    from .metrics import bootstrap_fid, fid_from_features

    rows = rows or table_rows("report", pair.layout.num_scales)
    plan = report_plan(pair.num_classes, images_per_class, batch)
    per_row = images_per_class * pair.num_classes
    feats: dict[str, list] = {r.name: [] for r in rows}
    correct: dict[str, int] = {r.name: 0 for r in rows}
    count: dict[str, int] = {r.name: 0 for r in rows}
    target_images: list[np.ndarray] = []

    def on_images(row: Row, images: np.ndarray, class_ids: list[int]) -> None:
        feats[row.name].append(features(classifier, images))
        correct[row.name] += int((predict(classifier, images) == np.asarray(class_ids)).sum())
        count[row.name] += len(images)
        if row.name == TARGET_ROW:
            target_images.append(images)

    meter = LoadMeter()
    t0 = time.perf_counter()
    print(f"report: {len(rows)} rows × {per_row} images in {len(plan)} chunks of ≤ {batch}", flush=True)
    results = measure(pair, rows, plan, deadline=deadline, on_images=on_images, settings=settings, meter=meter)
    n_real = n_real or max(1000, per_row)
    real, real_labels = make_batch(n_real, REAL_SEED, size=pair.vqvae.cfg.image_size)
    real_feats = features(classifier, real)
    real_acc = float((predict(classifier, real) == real_labels).mean())
    fid = {name: fid_from_features(np.concatenate(f), real_feats) for name, f in feats.items() if len(f) and
           sum(map(len, f)) >= 2}
    t_imgs = np.concatenate(target_images)
    _, lo, hi = bootstrap_fid(classifier, real, t_imgs, n_boot=n_boot)
    tol = (hi - lo) / 2
    base = results[TARGET_ROW]
    done = len(base.walls)

    lines = []
    for res in results.values():
        name = res.row.name
        sp = speedups(base, res)
        calls = res.mean("target_calls")
        dfid = fid[name] - fid[TARGET_ROW] if name in fid else None
        lines.append([name, res.row.describe(), fmt(calls, 1), fmt(res.mean("draft_calls"), 1), med_range(sp),
                      fmt(res.mean("acceptance"), 3), fmt(correct[name] / max(count[name], 1), 3),
                      fmt(fid.get(name), 3), fmt(dfid, 3),
                      *claims(calls, statistics.median(sp) if sp else None, dfid, tol)])
    table = markdown_table(["row", "settings", "target calls", "draft calls", "speed-up vs target only",
                            "mean acceptance", "class accuracy", "FID-tiny", "ΔFID vs target only",
                            "calls ≤ 5", "speed-up ≥ 1.3", "ΔFID ≤ δ", "seed's claims"], lines)
    head = (f"## Report: {pair.name} pair\n\n"
            f"- machine: {machine(device)}; {meter}\n"
            f"- {count[TARGET_ROW]} images per row (asked: {per_row}, {images_per_class} per class; fewer when the time "
            f"limit stopped the run), generated in {done} chunks of ≤ {batch} "
            f"(each chunk: the same class ids and seed for every row), rows interleaved and rotated per chunk; "
            f"CFG 1.5, {(settings or {}).get('precision', 'fp32')}; {time.perf_counter() - t0:.0f} s in all\n"
            f"- target calls / draft calls: mean per generate call of {batch} images (a speculative round stops at "
            f"the first scale that some image of the batch fails, so calls grow with the batch)\n"
            f"- speed-up: target-only wall time ÷ the row's, per chunk, median [min–max]\n"
            f"- class accuracy: the classifier's accuracy on the row's images against the requested classes "
            f"(on {n_real} real images: {real_acc:.3f})\n"
            f"- FID-tiny: Fréchet distance of classifier features against {n_real} real procedural images "
            f"(data.make_batch, seed {REAL_SEED})\n"
            f"- **δ, the quality tolerance standing in for the seed's 'FID +0.07'**: +0.07 is at the noise floor of "
            f"50k-sample FID, so δ is FID-tiny's own noise at this sample size: the half-width of the 95 % bootstrap "
            f"interval of target-only FID-tiny ({n_boot} resamples of its images, real set fixed): "
            f"[{lo:.3f}, {hi:.3f}] → **δ = {tol:.3f}**. A row keeps quality when FID-tiny(row) − FID-tiny(target only) ≤ δ.\n"
            f"- seed's claims (sdvar-seed-analysis.md §7): target calls ≤ {CLAIM_CALLS}, speed-up ≥ {CLAIM_SPEEDUP} "
            f"(the low end of 1.3–1.7×), ΔFID ≤ δ; 'hold' only when all three do\n")
    return head + "\n" + table + "\n\n" + cost_model_section(results, pair.layout, base) + "\n"


def cost_model_section(results: dict[str, RowResult], layout: ScaleLayout, base: RowResult) -> str:
    """Predicted (cost model) against measured speed-up and target calls of every speculative row."""
    pool = [r for r in results.values() if r.row.mode in ("target", "draft", "speculative")]
    draft_cost, target_cost = call_cost_model(pool, layout)
    fixed = statistics.median(base.per_repeat(lambda r: r.wall - r.timings["transformer"]).values())
    lines = []
    for res in results.values():
        if res.row.mode != "speculative":
            continue
        gamma = res.row.kwargs["gamma"]
        rates = [p if p is not None else 0.0 for p in res.pass_rate()]
        sp = speedups(base, res)
        calls = expected_round_sum(gamma, rates, lambda s, e: 1.0)
        pred = predicted_speedup(gamma, rates, draft_cost, target_cost, fixed)
        lines.append([res.row.name, " ".join(fmt(p, 2) for p in res.pass_rate()), fmt(calls, 2),
                      fmt(res.mean("target_calls"), 2), fmt(pred, 2), fmt(statistics.median(sp) if sp else None, 2)])
    dc = " ".join(f"{1000 * c:.1f}" for c in draft_cost)
    tc = " ".join(f"{1000 * target_cost(k, k):.1f}" for k in range(layout.num_scales))
    return ("### Cost model: predicted against measured\n\n"
            "Prediction = target-only time ÷ expected speculative time, from `predicted_speedup`: mean measured "
            "seconds of a draft call per scale and of a target call per window (a window never measured: a line "
            "fitted in positions fed), the row's measured per-scale pass rates (rounds in which every image of "
            "the batch passed the scale ÷ rounds that judged it) and the exact round rule; the seconds outside "
            f"model calls (decode + engine overhead) are taken equal to target-only's ({fixed:.3f} s per "
            "generate call). Relaxed rows re-feed scales after a rollback, which the model leaves out. The "
            "comparison is this table: the project does not depend on matplotlib.\n\n"
            f"- draft call ms per scale: {dc}\n- target call ms per scale (target only): {tc}\n\n"
            + markdown_table(["row", "pass rate per scale 0..9", "predicted target calls", "measured target calls",
                              "predicted speed-up", "measured speed-up"], lines) + "\n")


# ---- call patterns (replayed on official-size models) ------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One transformer call as the engine makes it (the fields of trace.ModelCall that shape its cost)."""

    model: str
    kind: str
    scales: tuple[int, ...]
    kv_before: int
    mask_rule: int | None   # as recorded in the trace: the rule when a mask was used or the call is a prefill

    @property
    def current(self) -> int:
        """The scale the engine's mask treats as current: the produced scale for a prefill, else the first fed."""
        return self.scales[-1] if self.kind == "prefill" else self.scales[0]


class _Model:
    """KV bookkeeping of one model in a simulated run (mirrors engine.Runner)."""

    def __init__(self, name: str, layout: ScaleLayout):
        self.name, self.layout = name, layout
        self.next, self.kv = 0, 0

    def call(self, k: int, kind: str, rule: int) -> Call:
        L = self.layout
        if kind == "prefill" and rule == 0:
            self.next, self.kv = k, 0
        first, kv_before = self.next, self.kv
        masked = rule != 0 and (first < k or rule != 3)
        self.kv += L.ends[k] - L.starts[first]
        self.next = k + 1
        return Call(self.name, kind, tuple(range(first, k + 1)), kv_before,
                    rule if kind == "prefill" or masked else None)

    def rollback(self, n: int) -> None:
        if self.next > n:
            self.kv -= self.layout.ends[self.next - 1] - self.layout.starts[n]
            self.next = n


def schedule_calls(schedule: str, sd_mask: int, layout: ScaleLayout) -> list[Call]:
    """The calls of engine.run_schedule for a 'D'/'T' schedule string."""
    models = {"D": _Model("draft", layout), "T": _Model("target", layout)}
    calls, prev = [], None
    for k, letter in enumerate(schedule):
        switch = prev is not None and letter != prev
        calls.append(models[letter].call(k, "prefill" if switch else "step", sd_mask if switch else 3))
        prev = letter
    return calls


def speculative_calls(gamma: int, outcomes: Iterator[bool], layout: ScaleLayout, verify_mask: int = 3) -> list[Call]:
    """The calls of engine speculative decoding with the exact rule, given each judged scale's outcome.

    outcomes yields, for every drafted scale judged in order, whether it passed; a failed scale is
    finalized with corrections and ends the round (both models roll back to just after it).
    """
    D, T = _Model("draft", layout), _Model("target", layout)
    K, calls, start = layout.num_scales, [], 0
    while start < K:
        drafted = range(start, min(start + gamma, K))
        calls += [D.call(k, "step", 3) for k in drafted]
        calls.append(T.call(drafted[-1], "verify", verify_mask))
        last = drafted[-1]
        for k in drafted:
            if not next(outcomes):
                last = k
                break
        D.rollback(last + 1)
        T.rollback(last + 1)
        start = last + 1
    return calls


def forced_outcomes(accept: float, rng: np.random.Generator) -> Iterator[bool]:
    """Each judged scale passes with probability `accept` (the forced acceptance of `patterns`)."""
    while True:
        yield bool(rng.random() < accept)


def replay(calls: list[Call], models: dict[str, VAR], batch: int, autocast, device: torch.device,
           gen: torch.Generator | None = None) -> list[float]:
    """Run `calls` with VAR.embed_window + forward_window on random latents; seconds of each call.

    Caches are truncated to each call's kv_before (rollback) like the engine's; masks are the
    engine's (sd_mask rule matrices). Each call is timed between device synchronisations, like
    engine.Recorder; latents and masks are made before the clock starts, as in the engine.
    """
    any_model = next(iter(models.values()))
    L = any_model.cfg.layout
    cvae = any_model.cfg.z_channels
    caches = {n: m.new_cache() for n, m in models.items()}
    ids = torch.arange(batch, device=device) % any_model.cfg.num_classes
    conds = {n: m.condition(ids) for n, m in models.items()}
    mods = {n: m.modulations(conds[n]) for n, m in models.items()}   # once per run, as the engine does
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = []
    for c in calls:
        m, cache = models[c.model], caches[c.model]
        if c.kind == "prefill" and c.mask_rule == 0:
            cache.reset()
        elif len(cache) > c.kv_before:
            cache.truncate(c.kv_before)
        if len(cache) != c.kv_before:
            raise ValueError(f"call pattern inconsistent: {c} with a cache of {len(cache)}")
        first, k = c.scales[0], c.scales[-1]
        n_lat = L.ends[k] - L.starts[max(first, 1)] if k >= 1 else 0
        latents = torch.randn(batch, n_lat, cvae, device=device, generator=gen) if n_lat else None
        mask = None
        if c.mask_rule not in (None, 0):
            mask = masks.mask_matrix(c.mask_rule, c.current, L, q_start=L.starts[first], q_end=L.ends[k],
                                     k_end=L.ends[k]).to(device)
        sync()
        t = time.perf_counter()
        with autocast():
            x = m.embed_window(conds[c.model], first, latents)
            m.forward_window(x, conds[c.model], cache, mask, mods[c.model])
        sync()
        out.append(time.perf_counter() - t)
    return out


def autocast_for(device: torch.device, precision: str):
    """A context factory: bf16/fp16 autocast on `device`, or none for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return lambda: torch.autocast(device.type, dtype=dtype)


@dataclass(frozen=True)
class Pattern:
    """A named call pattern; `make(rng)` gives its calls (random only for forced acceptance)."""

    name: str
    make: Callable[[np.random.Generator], list[Call]]
    gamma: int | None = None
    accept: float | None = None


def mode_patterns(layout: ScaleLayout, gammas: Iterable[int], accepts: Iterable[float]) -> list[Pattern]:
    """Target only, draft only, both hand-off directions (e = 1..9), sd_masks at e = 5, speculative γ × forced acceptance."""
    K = layout.num_scales

    def sched(s, m=3):
        calls = schedule_calls(s, m, layout)
        return lambda rng: calls

    pats = [Pattern(TARGET_ROW, sched("T" * K)), Pattern("draft only", sched("D" * K))]
    for row in table_rows("report", K):
        if row.mode == "schedule" and (row.kwargs["sd_mask"] == 3 or row.name.startswith(f"D→T e={K // 2} ")):
            pats.append(Pattern(row.name, sched(row.kwargs["schedule"], row.kwargs["sd_mask"])))
    for g in gammas:
        for a in accepts:
            pats.append(Pattern(f"spec γ={g} forced acceptance {a:g}",
                                lambda rng, g=g, a=a: speculative_calls(g, forced_outcomes(a, rng), layout), g, a))
    return pats


def run_patterns(models: dict[str, VAR], device: torch.device, *, batch: int, repeats: int, precision: str,
                 gammas, accepts, deadline: float | None = None, title: str = "Call patterns") -> str:
    """Replay every mode's call pattern with interleaved repeats → markdown (with the cost model's prediction)."""
    layout = models["target"].cfg.layout
    pats = mode_patterns(layout, gammas, accepts)
    autocast = autocast_for(device, precision)
    gen = torch.Generator(device=device).manual_seed(0)
    meter = LoadMeter()
    t0 = time.perf_counter()
    with torch.no_grad():
        for p in pats[:2]:   # warm-up
            replay(p.make(np.random.default_rng(0)), models, batch, autocast, device, gen)
        secs = {p.name: {} for p in pats}
        calls = {p.name: [] for p in pats}
        single: dict = {}
        done = 0
        for r in range(repeats):
            if r and deadline is not None and time.perf_counter() > deadline:
                print(f"  deadline reached: {r} of {repeats} repeats done", flush=True)
                break
            k = r % len(pats)
            for i, p in enumerate(pats[k:] + pats[:k]):
                cs = p.make(np.random.default_rng([r, i]))
                ts = replay(cs, models, batch, autocast, device, gen)
                secs[p.name][r] = sum(ts)
                calls[p.name].append((sum(c.model == "target" for c in cs), sum(c.model == "draft" for c in cs)))
                for c, t in zip(cs, ts):
                    single.setdefault((c.model, c.scales, c.mask_rule), []).append(t)
            done = r + 1
            meter.sample()
            print(f"  repeat {r + 1}/{repeats}: {time.perf_counter() - t0:.1f} s", flush=True)
    # cost model on the same measurements: unmasked single-scale draft calls and target windows
    mean = {k: float(np.mean(v)) for k, v in single.items()}
    draft_cost = [mean.get(("draft", (k,), None), math.nan) for k in range(layout.num_scales)]
    base = secs[TARGET_ROW]

    def target_cost(s, e):
        key = ("target", tuple(range(s, e + 1)), None if s == e else 3)
        return mean.get(key, math.nan)

    lines = []
    for p in pats:
        sp = [base[r] / secs[p.name][r] for r in secs[p.name] if r in base]
        tc = [c[0] for c in calls[p.name]]
        dc = [c[1] for c in calls[p.name]]
        pred = None
        if p.gamma is not None:
            pred = predicted_speedup(p.gamma, [p.accept] * layout.num_scales, draft_cost, target_cost)
        lines.append([p.name, fmt(float(np.mean(tc)), 1), fmt(float(np.mean(dc)), 1),
                      med_range([1000 * v for v in secs[p.name].values()], 1), med_range(sp), fmt(pred, 2)])
    n_params = {n: m.num_params() for n, m in models.items()}
    head = (f"## {title}: {models['draft'].cfg.name or 'draft'} → {models['target'].cfg.name or 'target'}, "
            f"batch {batch}, {precision}\n\n"
            f"- machine: {machine(device)}; {meter}\n"
            f"- random weights (target {n_params['target']:,} params, draft {n_params['draft']:,}); {done} interleaved "
            f"repeats; {time.perf_counter() - t0:.0f} s in all\n"
            f"- **transformer calls only**, replayed with VAR.forward_window on the windows, KV lengths and masks "
            f"the engine uses (sampling, acceptance tests, VQ-VAE work and decode are not included); each call "
            f"timed between device synchronisations as the engine does\n"
            f"- speculative rows: forced acceptance a = probability that a drafted scale passes (for the whole "
            f"batch) under the exact round rule; the calls are those the engine makes for the drawn outcomes "
            f"(a fresh draw per repeat, so calls and times vary between repeats)\n"
            f"- predicted: `predicted_speedup` from the mean per-call costs measured here with pass probability a "
            f"at every scale, nothing outside the calls\n")
    return head + "\n" + markdown_table(
        ["pattern", "target calls", "draft calls", "call ms, median [min–max]", "speed-up vs target only",
         "predicted speed-up"], lines) + "\n"


# ---- floors: weight reads and FLOPs ------------------------------------------------------------------


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
    L, C = cfg.layout, cfg.width
    per_row = 0.0
    for k, n in enumerate(L.sizes):
        kv = L.ends[k]
        per_row += cfg.depth * n * (24 * C * C + 4 * C * kv) + 2 * n * C * cfg.vocab_size
    return 2 * batch * per_row


def run_floor(presets: list[str], batches: list[int], device: torch.device, *, precision: str, repeats: int,
              small: bool = False, deadline: float | None = None) -> str:
    """Per-image transformer and decode times of random official VARs against the weight-read and FLOP floors."""
    big = device.type == "cuda"
    bw = copy_bandwidth(device, 2**30 if big else 2**26)
    mm_dtype = torch.bfloat16 if precision == "bf16" else torch.float16 if precision == "fp16" else torch.float32
    rate = matmul_rate(device, 8192 if big else 1024, mm_dtype)
    print(f"  copy bandwidth {bw / 1e9:.0f} GB/s, {precision} matmul {rate / 1e12:.1f} TFLOP/s", flush=True)
    vq_cfg = TINY_VQVAE if small else OFFICIAL_VQVAE
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        vq = VQVAE(vq_cfg).to(device).eval()
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
            f"- machine: {machine(device)}; {meter}\n"
            f"- measured: device copy {bw / 1e9:.0f} GB/s (bytes read + written), {precision} {('8192' if big else '1024')}³ "
            f"matmul {rate / 1e12:.2f} TFLOP/s\n"
            f"- per image: median of {repeats} generate() runs after one warm-up, ÷ batch; one CFG image = 2 rows; "
            f"VQ-VAE {'tiny' if small else 'official'} decode in fp32\n"
            f"- weight-read floor = parameters × {weight_bytes} bytes × 10 scales ÷ copy bandwidth ÷ batch "
            f"(every call reads every weight once); FLOP floor = transformer_flops ÷ matmul rate ÷ batch; "
            f"× floor = transformer ÷ the larger floor\n"
            f"- 'fp32 weights + autocast' is the engine's precision='bf16' path: every call reads the fp32 weights "
            f"and writes/reads a bf16 copy (≈ 4× the bf16 weight bytes)\n")
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
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        vq = VQVAE(OFFICIAL_VQVAE).to(device).eval()
    var = random_official_var(preset_name, device)
    pair = Pair(vq, var, var, name=preset_name)
    print(f"built {preset_name} ({var.num_params():,} params) + VQ-VAE in {time.perf_counter() - t0:.1f} s; "
          f"{machine(device)}", flush=True)
    ids = [i % var.cfg.num_classes for i in range(batch)]
    mm_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    mm_n = 8192 if device.type == "cuda" else 1024
    flops = transformer_flops(var.cfg, batch)
    for w in range(warmup):
        generate(pair, "target", ids, seed=1000 + w, progressive=False, precision=precision)
    runs = []
    for r in range(repeats):
        rate = matmul_rate(device, mm_n, mm_dtype, repeats=5)
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
            f"- machine: {machine(device)}; {meter}\n"
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


# ---- CLI -----------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _int_list(text: str) -> list[int]:
    """'1,8' → [1, 8]: a comma-separated list of positive integers."""
    values = [_positive_int(t) for t in text.split(",") if t.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _prob_list(text: str) -> list[float]:
    out = []
    for t in text.split(","):
        try:
            v = float(t)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected probabilities in [0, 1], got {t!r}") from None
        if not 0 <= v <= 1:
            raise argparse.ArgumentTypeError(f"expected probabilities in [0, 1], got {t!r}")
        out.append(v)
    return out


def _preset_list(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    for n in names:
        try:
            preset(n)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    if not names:
        raise argparse.ArgumentTypeError("expected at least one preset name")
    return names


def _common(p: argparse.ArgumentParser, out: bool = True) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    p.add_argument("--threads", type=_positive_int, help="CPU intra-op threads (default: torch's)")
    if out:
        p.add_argument("--out", help="also write the markdown into this file (a marked section; created if absent)")
        p.add_argument("--section", help="name of the marked section in --out (default: the sub-command)")


def _precision(args, device: torch.device) -> str:
    if args.precision != "fp32" and device.type != "cuda":
        raise ValueError(f"--precision {args.precision} needs CUDA (the engine autocasts only there); use fp32 on CPU")
    return args.precision


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sdvar_core.bench", description=__doc__.split("\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("generate", help="one official-size model end to end (issue 2)")
    p.add_argument("--preset", default="var-d16", help="var-d16, var-d20, var-d24, var-d30 or any var-dN")
    p.add_argument("--batch", type=_positive_int, default=1)
    p.add_argument("--repeats", type=_positive_int, default=3)
    p.add_argument("--warmup", type=int, help="untimed runs first (default: 1 on CUDA, 0 on CPU)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    _common(p)

    for name, helptext in (("modes", "the mode table of a pair (issue 3)"), ("report", "mode table with quality and the cost model (issue 6)")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--pair", default="tiny", help="tiny (assets/tiny) or random (random weights, embedded shapes)")
        p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
        _common(p)
    sub.choices["modes"].add_argument("--batch", type=_positive_int, default=1, help="images per generate call")
    sub.choices["modes"].add_argument("--seeds", type=_positive_int, default=2, help="generate calls per row and repeat")
    sub.choices["modes"].add_argument("--repeats", type=_positive_int, default=3)
    rp = sub.choices["report"]
    rp.add_argument("--images-per-class", type=_positive_int, default=100,
                    help="images per class per row (≥ 100 for the final report: 1000 per row)")
    rp.add_argument("--batch", type=_positive_int, default=10, help="images per generate call (one chunk = one repeat)")
    rp.add_argument("--classifier", default="assets/classifier", help="path stem of the FID-tiny classifier")
    rp.add_argument("--n-boot", type=_positive_int, default=50, help="bootstrap resamples for δ")
    rp.add_argument("--max-minutes", type=float, help="start no new chunk after this many minutes (the report "
                    "then covers the chunks done)")

    p = sub.add_parser("profile", help="cProfile of one row")
    p.add_argument("--pair", default="tiny", help="tiny or random")
    p.add_argument("--row", default=TARGET_ROW, help="a row name of the modes table")
    p.add_argument("--batch", type=_positive_int, default=1)
    p.add_argument("--top", type=_positive_int, default=25)
    _common(p, out=False)

    p = sub.add_parser("floor", help="per-image times against the weight-read and FLOP floors")
    p.add_argument("--presets", type=_preset_list, default=["var-d16", "var-d30"])
    p.add_argument("--batches", type=_int_list, default=[1, 8])
    p.add_argument("--repeats", type=_positive_int, default=3)
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="bf16")
    p.add_argument("--small", action="store_true", help="tiny VQ-VAE and its codebook (a quick CPU try)")
    _common(p)

    p = sub.add_parser("patterns", help="official-size call patterns of every mode, forced acceptance")
    p.add_argument("--draft", default="var-d16")
    p.add_argument("--target", default="var-d30")
    p.add_argument("--batches", type=_int_list, default=[1, 16])
    p.add_argument("--repeats", type=_positive_int, default=3)
    p.add_argument("--gammas", type=_int_list, default=[1, 2, 3, 4])
    p.add_argument("--accept", type=_prob_list, default=[0.0, 0.5, 0.8, 1.0], help="forced per-scale pass probabilities")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="bf16")
    p.add_argument("--small", action="store_true", help="tiny codebook (a quick CPU try)")
    _common(p)

    p = sub.add_parser("gpu", help="floor + patterns + the embedded pair's modes under one deadline (gpu_bench.sh)")
    p.add_argument("--deadline-s", type=float, default=180.0, help="seconds for everything (sections get 30/45/25 %%)")
    p.add_argument("--small", action="store_true", help="shrink every size (a CPU try of the script)")
    _common(p)
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        with torch.no_grad():
            _main(args)
    except ValueError as e:
        sys.exit(f"error: {e}")


def _main(args) -> None:
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    out, section = getattr(args, "out", None), getattr(args, "section", None) or args.cmd
    if args.cmd == "generate":
        preset(args.preset)
        warmup = args.warmup if args.warmup is not None else (1 if device.type == "cuda" else 0)
        if warmup < 0:
            raise ValueError(f"--warmup must be >= 0, got {warmup}")
        emit(run_generate(args.preset, device, batch=args.batch, repeats=args.repeats,
                          precision=_precision(args, device), warmup=warmup), out, section)
    elif args.cmd == "modes":
        pair = get_pair(args.pair, device)
        emit(run_modes(pair, device, batch=args.batch, seeds=args.seeds, repeats=args.repeats,
                       settings={"precision": _precision(args, device)}), out, section)
    elif args.cmd == "report":
        from .checkpoints import load_classifier
        if args.max_minutes is not None and not args.max_minutes > 0:
            raise ValueError(f"--max-minutes must be > 0, got {args.max_minutes}")
        stem = Path(args.classifier)
        if not stem.with_name(stem.name + ".json").is_file():
            raise ValueError(f"classifier not found: {stem}.json / .safetensors "
                             f"(train it: python -m sdvar_core.metrics train --out {stem})")
        pair = get_pair(args.pair, device)
        clf = load_classifier(stem, device=str(device))
        deadline = time.perf_counter() + 60 * args.max_minutes if args.max_minutes else None
        emit(build_report(pair, clf, device, images_per_class=args.images_per_class, batch=args.batch,
                          n_boot=args.n_boot, deadline=deadline, settings={"precision": _precision(args, device)}),
             out, section)
    elif args.cmd == "profile":
        pair = get_pair(args.pair, device)
        rows = {r.name: r for r in table_rows("modes", pair.layout.num_scales)}
        if args.row not in rows:
            raise ValueError(f"unknown row {args.row!r}; rows: {', '.join(rows)}")
        print(run_profile(pair, rows[args.row], args.batch, args.top))
    elif args.cmd == "floor":
        emit(run_floor(args.presets, args.batches, device, precision=_precision(args, device), repeats=args.repeats,
                       small=args.small), out, section)
    elif args.cmd == "patterns":
        for n in (args.draft, args.target):
            preset(n)
        prec = _precision_any(args.precision, device)
        models = {"draft": random_official_var(args.draft, device, 1, args.small),
                  "target": random_official_var(args.target, device, 2, args.small)}
        for b in args.batches:
            emit(run_patterns(models, device, batch=b, repeats=args.repeats, precision=prec, gammas=args.gammas,
                              accepts=args.accept), out, f"{section}-b{b}")
    elif args.cmd == "gpu":
        run_gpu(device, args.deadline_s, args.small, out)


def _precision_any(precision: str, device: torch.device) -> str:
    """patterns autocasts by itself, so bf16 also runs on CPU; fp16 autocast needs CUDA."""
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs CUDA; use bf16 or fp32 on CPU")
    return precision


def run_gpu(device: torch.device, deadline_s: float, small: bool, out: str | None) -> None:
    """The three device checks of scripts/gpu_bench.sh, each under its share of the deadline."""
    if deadline_s <= 0:
        raise ValueError(f"--deadline-s must be > 0, got {deadline_s}")
    t0 = time.perf_counter()
    ends = [t0 + f * deadline_s for f in (0.30, 0.75, 1.0)]
    prec = "bf16" if device.type == "cuda" else "fp32"
    presets = ["var-d1", "var-d2"] if small else ["var-d16", "var-d30"]
    print(f"[gpu] floors ({time.perf_counter() - t0:.0f} s)", flush=True)
    emit(run_floor(presets, [1, 2] if small else [1, 8], device, precision=prec, repeats=1 if small else 3,
                   small=small, deadline=ends[0]), out, "gpu-floor")
    models = {"draft": random_official_var(presets[0], device, 1, small),
              "target": random_official_var(presets[1], device, 2, small)}
    batches = [1, 2] if small else [1, 16]
    for i, b in enumerate(batches):
        print(f"[gpu] call patterns, batch {b} ({time.perf_counter() - t0:.0f} s)", flush=True)
        end = time.perf_counter() + (ends[1] - time.perf_counter()) / (len(batches) - i)
        emit(run_patterns(models, device, batch=b, repeats=1 if small else 5, precision=prec,
                          gammas=[1, 2, 3, 4], accepts=[0.0, 0.5, 0.8, 1.0], deadline=end), out, f"gpu-patterns-b{b}")
    del models
    if device.type == "cuda":
        torch.cuda.empty_cache()
    print(f"[gpu] embedded pair modes ({time.perf_counter() - t0:.0f} s)", flush=True)
    try:
        pair = get_pair("random" if small else "tiny", device)
    except ValueError as e:
        emit(f"## Mode table on {machine(device)}\n\nskipped: {e}\n", out, "gpu-modes")
        return
    emit(run_modes(pair, device, batch=1, seeds=1 if small else 2, repeats=1 if small else 5, deadline=ends[2],
                   settings={"precision": "fp32"}, title="Mode table (GPU, fp32)"), out, "gpu-modes")
    print(f"[gpu] done in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
