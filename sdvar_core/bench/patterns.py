"""Call patterns of every mode on official-size random VARs, run by the engine itself.

Random weights accept nothing meaningful, so speculative rows force the acceptance: each drafted
scale passes with probability `a` (for the whole batch), through the engine's `accept_override`
hook; the calls are then the engine's own for those outcomes. The table reports the seconds of
the transformer calls (Trace.calls, timed between device synchronisations): sampling, acceptance
tests and VQ-VAE work run but are not in these times.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

from ..calibration import calibrate
from ..engine import Pair, Settings, generate
from ..planner import Costs, PassEstimator, Planner, solve
from ..runtime import machine_name
from .costmodel import predicted_speedup
from .harness import TARGET_ROW, Row, table_rows
from .tables import LoadMeter, fmt, markdown_table, med_range


@dataclass(frozen=True)
class Pattern:
    """A named call pattern: a row of the tables, with a forced pass probability for speculative rows."""

    row: Row
    accept: float | None = None

    @property
    def name(self) -> str:
        return self.row.name


def forced_verdicts(accept: float, rng: np.random.Generator):
    """An `accept_override` for generate: each judged scale passes with probability `accept`."""
    return lambda k: bool(rng.random() < accept)


def mode_patterns(num_scales: int, gammas: Iterable[int], accepts: Iterable[float], auto: bool = False) -> list[Pattern]:
    """Target only, draft only, both hand-off directions (e = 1..9), sd_masks at e = K/2, speculative γ × forced
    acceptance (and with auto, gamma="auto" × forced acceptance)."""
    pats = [Pattern(Row(TARGET_ROW, "target")), Pattern(Row("draft only", "draft"))]
    for row in table_rows("report", num_scales):
        if row.mode == "schedule" and (row.kwargs["sd_mask"] == 3 or row.name.startswith(f"D→T e={num_scales // 2} ")):
            pats.append(Pattern(row))
    for g in gammas:
        for a in accepts:
            pats.append(Pattern(Row(f"spec γ={g} forced acceptance {a:g}", "speculative", (("gamma", g),)), a))
    if auto:
        for a in accepts:
            pats.append(Pattern(Row(f"spec γ=auto forced acceptance {a:g}", "speculative", (("gamma", "auto"),)), a))
    return pats


def run_pattern(pair: Pair, pattern: Pattern, batch: int, seed: int, precision: str, rng: np.random.Generator,
                costs: Costs | None = None):
    """One generate() call of `pattern` (final picture only) → its trace. An auto pattern is planned with
    `costs` and its forced acceptance as a known pass probability."""
    ids = [i % pair.num_classes for i in range(batch)]
    override = None if pattern.accept is None else forced_verdicts(pattern.accept, rng)
    planner = None
    if pattern.row.kwargs.get("gamma") == "auto":
        planner = Planner(costs, PassEstimator.fixed(pair.layout.num_scales, pattern.accept))
    return generate(pair, pattern.row.mode, ids, seed, progressive=False, precision=precision,
                    accept_override=override, planner=planner, **pattern.row.kwargs).trace


def run_patterns(pair: Pair, device: torch.device, *, batch: int, repeats: int, precision: str,
                 gammas, accepts, deadline: float | None = None, title: str = "Call patterns", auto: bool = False) -> str:
    """Every mode's call pattern with interleaved repeats → markdown (with the cost model's prediction).
    auto: also gamma="auto" rows, planned with costs calibrated first on this pair and batch."""
    layout = pair.layout
    pats = mode_patterns(layout.num_scales, gammas, accepts, auto)
    meter = LoadMeter()
    t0 = time.perf_counter()
    costs = calibrate(pair, batch, precision).costs(layout) if auto else None
    for p in pats[:2]:   # warm-up
        run_pattern(pair, p, batch, 0, precision, np.random.default_rng(0))
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
            trace = run_pattern(pair, p, batch, r, precision, np.random.default_rng([r, i]), costs)
            secs[p.name][r] = sum(c.seconds for c in trace.calls)
            calls[p.name].append((trace.target_calls, trace.draft_calls))
            for c in trace.calls:
                single.setdefault((c.model, tuple(c.scales), c.mask_rule), []).append(c.seconds)
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
        if p.accept is not None and p.row.kwargs["gamma"] == "auto":   # the planner's own costs, calls only
            calls_only = Costs(costs.draft, costs.target, [0.0] * layout.num_scales, [0.0] * layout.num_scales)
            pred = calls_only.target_only() / solve(calls_only, [p.accept] * layout.num_scales).value[0][0]
        elif p.accept is not None:
            pred = predicted_speedup(p.row.kwargs["gamma"], [p.accept] * layout.num_scales, draft_cost, target_cost)
        lines.append([p.name, fmt(float(np.mean(tc)), 1), fmt(float(np.mean(dc)), 1),
                      med_range([1000 * v for v in secs[p.name].values()], 1), med_range(sp), fmt(pred, 2)])
    n_params = {"target": pair.target.num_params(), "draft": pair.draft.num_params()}
    head = (f"## {title}: {pair.draft.cfg.name or 'draft'} → {pair.target.cfg.name or 'target'}, "
            f"batch {batch}, {precision}\n\n"
            f"- machine: {machine_name(device)}; {meter}\n"
            f"- random weights (target {n_params['target']:,} params, draft {n_params['draft']:,}); {done} interleaved "
            f"repeats; {time.perf_counter() - t0:.0f} s in all\n"
            f"- **transformer calls only**: the engine runs each pattern (sampling, acceptance tests and VQ-VAE "
            f"work included), and the table sums the seconds of its model calls (Trace.calls, each timed between "
            f"device synchronisations); decode and everything between the calls are left out\n"
            f"- speculative rows: forced acceptance a = probability that a drafted scale passes (for the whole "
            f"batch) under the exact round rule, through generate(accept_override=…); the calls are the engine's "
            f"own for the drawn outcomes (a fresh draw per repeat, so calls and times vary between repeats)\n"
            f"- predicted: `predicted_speedup` from the mean per-call costs measured here with pass probability a "
            f"at every scale, nothing outside the calls"
            + ("; auto rows: the planner (pass probability a known in advance) with per-call costs calibrated "
               "before the repeats, its prediction from those costs" if auto else "") + "\n")
    return head + "\n" + markdown_table(
        ["pattern", "target calls", "draft calls", "call ms, median [min–max]", "speed-up vs target only",
         "predicted speed-up"], lines) + "\n"
