"""The rows of the benchmark tables and the loop that measures them with interleaved repeats.

Every ratio is taken between rows of one run whose repeats are interleaved: repeat r runs
every row once, in an order rotated by r, so a slow phase of a shared machine hits all rows
alike. Times are wall-clock medians over repeats with their [min–max].
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..engine import Pair, generate
from .tables import LoadMeter

TARGET_ROW = "target only"


@dataclass(frozen=True)
class Row:
    """One line of a table: a generate() mode with its settings."""

    name: str
    mode: str
    settings: tuple = ()   # sorted (key, value) pairs of generate() settings
    model: str = "pair"    # whose weights: the pair given to `measure`, or a key of its `pairs` (e.g. "mid")

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
    round_gammas: dict = field(default_factory=dict)   # γ → number of speculative rounds that drafted γ scales

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
            self.round_gammas[rd.gamma] = self.round_gammas.get(rd.gamma, 0) + 1
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
            log: Callable[[str], None] = print, meter: LoadMeter | None = None,
            pairs: dict[str, Pair] | None = None) -> dict[str, RowResult]:
    """Run every row on the runs of each repeat of `plan`, repeats interleaved.

    Repeat r runs the rows in an order rotated by r. Target-only and draft-only run once each
    first as a warm-up (untimed). Past `deadline` (a time.perf_counter() value) no new repeat
    starts, so every row has the same completed repeats. on_images(row, images, class_ids) sees
    each run's images. settings: extra generate() settings for every row (e.g. precision).
    A gamma="auto" row also runs once untimed first (its planner calibrates then). pairs: the other
    models rows may name in `Row.model` (a plain mid model runs as the target of its own pair).
    """
    settings = dict(settings or {})
    models = {"pair": pair, **(pairs or {})}
    missing = sorted({row.model for row in rows} - set(models))
    if missing:
        raise ValueError(f"rows name models that were not given: {', '.join(missing)}")
    results = {row.name: RowResult(row) for row in rows}
    ids0, seed0 = plan[0][0]
    for row in rows:
        if row.mode in ("target", "draft"):
            generate(models[row.model], row.mode, ids0, seed0, progressive=False, **settings)
        elif row.kwargs.get("gamma") == "auto":
            generate(models[row.model], row.mode, ids0, seed0, progressive=False, **row.kwargs, **settings)
    for r, runs in enumerate(plan):
        if r and deadline is not None and time.perf_counter() > deadline:
            log(f"  deadline reached: {r} of {len(plan)} repeats done")
            break
        t0 = time.perf_counter()
        k = r % len(rows)
        for row in rows[k:] + rows[:k]:
            for class_ids, seed in runs:
                t = time.perf_counter()
                out = generate(models[row.model], row.mode, class_ids, seed, progressive=False, **row.kwargs,
                               **settings)
                results[row.name].add(r, time.perf_counter() - t, out.trace)
                if on_images is not None:
                    on_images(row, out.images, class_ids)
        if meter is not None:
            meter.sample()
        log(f"  repeat {r + 1}/{len(plan)}: {time.perf_counter() - t0:.1f} s"
            + (f", {meter}" if meter is not None else ""))
    return results


def modes_plan(num_classes: int, batch: int, seeds: int, repeats: int) -> Plan:
    """Every repeat runs seeds 0..seeds−1 on class ids 0, 1, … (mod num_classes), `batch` images each."""
    ids = [i % num_classes for i in range(batch)]
    return [[(ids, s) for s in range(seeds)] for _ in range(repeats)]
