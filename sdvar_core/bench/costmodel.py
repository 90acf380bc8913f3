"""The cost model of speculative decoding over scales: expected calls and speed-up from per-call costs.

Pure functions of their inputs (pass probabilities per scale, seconds per call); `call_cost_model`
turns measured call times into those costs.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np

from ..config import ScaleLayout


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


def call_cost_model(results: Iterable, layout: ScaleLayout):
    """(draft_cost list, target_cost(s, e)) from the `call_seconds` of measured rows (harness.RowResult):
    mean seconds per (model, window).

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
