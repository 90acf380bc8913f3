"""The γ planner measured and predicted: target only vs exact speculative with fixed γ vs γ = "auto".

`run_planner` interleaves the rows at each batch size (ratios within one run) and checks the
issue's goals: auto ≥ 0.95× target only, and at most 5 % slower than the best fixed γ.
`predict_patterns` prices the call patterns of a `patterns` table (e.g. the GPU sections of
BENCHMARKS.md) with the planner: what auto would choose and the speed-up it predicts for each
forced acceptance, beside the measured fixed-γ rows.
"""
from __future__ import annotations

import re
import statistics
import time

import numpy as np
import torch

from .. import calibration
from ..engine import Pair, Settings
from ..planner import Costs, policy_value, solve
from ..runtime import machine_name
from .harness import TARGET_ROW, Row, RowResult, measure, modes_plan
from .tables import LoadMeter, fmt, markdown_table, med_range

AUTO_ROW = "spec γ=auto exact"
GOAL_VS_TARGET, GOAL_VS_BEST = 0.95, 1 / 1.05   # auto ≥ 0.95× target only; ≤ 5 % slower than the best fixed γ


def planner_rows(gammas) -> list[Row]:
    exact = (("accept", "prob"), ("lenience", 1.0), ("tau", 1.0))
    return ([Row(TARGET_ROW, "target")]
            + [Row(f"spec γ={g} exact", "speculative", tuple(sorted(exact + (("gamma", g),)))) for g in gammas]
            + [Row(AUTO_ROW, "speculative", tuple(sorted(exact + (("gamma", "auto"),))))])


def ratios(a: RowResult, b: RowResult) -> list[float]:
    """Per repeat: a's wall time ÷ b's (> 1: b is faster)."""
    aw, bw = a.walls, b.walls
    return [aw[r] / bw[r] for r in sorted(bw) if r in aw and bw[r] > 0]


def run_planner(pair: Pair, device: torch.device, *, batches, repeats: int, seeds: int, gammas=(1, 2, 3, 4),
                settings: dict | None = None, deadline: float | None = None) -> str:
    """Target only, exact speculative γ in `gammas` and γ = auto at each batch size → markdown."""
    settings = dict(settings or {})
    meter = LoadMeter()
    t0 = time.perf_counter()
    rows = planner_rows(gammas)
    lines, goals, notes = [], [], []
    for b in batches:
        s = Settings(**{**settings, "gamma": "auto"})
        t = time.perf_counter()
        planner = calibration.planner_for(pair, b, s, fresh=True)   # measured now, before the timed repeats
        notes.append(f"- batch {b}: calibration {time.perf_counter() - t:.1f} s; "
                     + calibration.describe(planner.costs).replace("\n", "; ")
                     + "; pass prior " + " ".join(f"{p:.2f}" for p in planner.estimator.estimate()))
        print(notes[-1], flush=True)
        end = None if deadline is None else time.perf_counter() + (deadline - time.perf_counter()) / (len(batches) - batches.index(b))
        results = measure(pair, rows, modes_plan(pair.num_classes, b, seeds, repeats), deadline=end,
                          settings=settings, meter=meter)
        base, auto = results[TARGET_ROW], results[AUTO_ROW]
        for res in results.values():
            used = ", ".join(f"{g}: {n}" for g, n in sorted(res.round_gammas.items())) if res.row is rows[-1] else ""
            lines.append([b, res.row.name, fmt(res.mean("target_calls"), 1), fmt(res.mean("draft_calls"), 1),
                          med_range(list(res.walls.values()), 3), med_range(ratios(base, res)), used])
        fixed = [results[r.name] for r in rows[1:-1]]
        best = max(fixed, key=lambda r: statistics.median(ratios(base, r)))
        vs_target, vs_best = statistics.median(ratios(base, auto)), statistics.median(ratios(best, auto))
        goals.append([b, f"{vs_target:.2f}", "met" if vs_target >= GOAL_VS_TARGET else "NOT met",
                      best.row.name, f"{vs_best:.2f}", "met" if vs_best >= GOAL_VS_BEST else "NOT met"])
    st = Settings(**settings)
    head = (f"## γ planner: {pair.name}, exact rule, cfg {st.cfg:g}, top-k {st.top_k}, top-p {st.top_p:g}, "
            f"{st.precision}\n\n"
            f"- machine: {machine_name(device)}; {meter}\n"
            f"- rows interleaved and rotated per repeat at each batch size; {repeats} repeat(s) × {seeds} seed(s); "
            f"{time.perf_counter() - t0:.0f} s in all; wall s: one repeat of a row (all its seeds); speed-up: "
            f"target-only wall ÷ row wall per repeat, median [min–max]\n"
            f"- auto: `gamma=\"auto\"` with the calibrated planner of this pair, batch and settings (calibrated "
            f"afresh before the timed repeats, refreshed by every auto run); rounds by γ counts the rounds of all its "
            f"runs (γ = 0: the target made the scale alone)\n" + "\n".join(notes) + "\n")
    goal = ("\n### Goals\n\n" + markdown_table(
        ["batch", "auto vs target only", f"≥ {GOAL_VS_TARGET}", "best fixed γ", "auto vs best fixed γ (wall best ÷ auto)",
         f"≥ {GOAL_VS_BEST:.3f}"], goals) + "\n")
    return head + "\n" + markdown_table(["batch", "row", "target calls", "draft calls", "wall s, median [min–max]",
                                         "speed-up vs target only", "rounds by γ"], lines) + "\n" + goal


# ---- the planner's prediction for measured call patterns ---------------------------------------------


def parse_pattern_rows(text: str) -> dict[str, tuple[float, float, float, float | None]]:
    """{row name: (target calls, draft calls, median call ms, measured speed-up)} from a `patterns` table."""
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 5 or not re.match(r"^\d", cells[1] or ""):
            continue
        speed = re.match(r"^([\d.]+)", cells[4])
        out[cells[0]] = (float(cells[1]), float(cells[2]), float(cells[3].split()[0]),
                         float(speed.group(1)) if speed else None)
    return out


def pattern_costs(rows: dict, K: int = 10) -> Costs:
    """Per-call costs from a patterns table's row totals (transformer calls only, seconds).

    A target step and a draft step cost the target-only and draft-only row ÷ 10 (the table does not
    split them by scale); a target window of w scales costs what the forced-acceptance-1 rows of
    γ = w pay per target call after their 10 draft steps, a least-squares line in w beyond the γ
    measured (never below the narrower windows). Nothing between calls (make, judge = 0), like the
    table itself.
    """
    t_step = rows[TARGET_ROW][2] / 1000 / K
    d_step = rows["draft only"][2] / 1000 / K
    sizes, per_call = [], []
    for name, (tc, dc, ms, _) in rows.items():
        m = re.match(r"spec γ=(\d+) forced acceptance 1$", name)
        if m and tc > 0:
            sizes.append(int(m.group(1)))
            per_call.append((ms / 1000 - dc * d_step) / tc)
    if len(sizes) >= 2:
        slope, icpt = np.polyfit(sizes, per_call, 1)
    else:
        slope, icpt = 0.0, t_step
    window = {1: t_step}
    for w in range(2, K + 1):   # a wider window never costs less than a narrower one
        window[w] = max(per_call[sizes.index(w)] if w in sizes else icpt + slope * w, window[w - 1])
    target = [[window[e - s + 1] if e >= s else 0.0 for e in range(K)] for s in range(K)]
    return Costs(draft=[[d_step] * K for _ in range(K)], target=target, make=[0.0] * K, judge=[0.0] * K)


def predict_patterns(text: str, title: str, accepts=(0.0, 0.5, 0.8, 1.0), gammas=(1, 2, 3, 4)) -> str:
    """The planner on a patterns table: auto's predicted speed-up and plan for each forced acceptance."""
    rows = parse_pattern_rows(text)
    missing = [n for n in (TARGET_ROW, "draft only") if n not in rows]
    if missing:
        raise ValueError(f"{title}: the table has no row {missing[0]!r}")
    K = 10
    costs = pattern_costs(rows, K)
    base = costs.target_only()
    lines = []
    for a in accepts:
        sol = solve(costs, [a] * K, margin=0.0)
        plan, s, d = [], 0, 0
        while s < K:   # the plan when every drafted scale passes (the draft lags after γ = 0 rounds)
            g = sol.choose(s, d).gamma
            plan.append(g)
            s, d = (s + 1, d) if g == 0 else (s + g, s + g)
        fixed = []
        for g in gammas:
            measured = rows.get(f"spec γ={g} forced acceptance {a:g}")
            fixed.append(f"{base / policy_value(costs, [a] * K, g):.2f} / {fmt(measured[3] if measured else None, 2)}")
        lines.append([f"{a:g}", f"{base / sol.value[0][0]:.2f}", " ".join(map(str, plan))] + fixed)
    head = (f"#### Planner prediction: {title}\n\n"
            f"- per-call costs from the table's own rows (`pattern_costs`): target step "
            f"{1000 * costs.target[0][0]:.1f} ms, draft step {1000 * costs.draft[0][0]:.1f} ms, target window of "
            f"2/4/10 scales {1000 * costs.target[0][1]:.1f}/{1000 * costs.target[0][3]:.1f}/"
            f"{1000 * costs.target[0][K - 1]:.1f} ms; transformer calls only\n"
            f"- auto: the planner's optimum (margin 0) with pass probability a at every scale; plan: γ per round "
            f"when every drafted scale passes\n"
            f"- fixed γ: predicted by the same costs / measured in the table\n")
    return head + "\n" + markdown_table(["forced acceptance a", "auto predicted speed-up", "auto plan (all pass)"]
                                        + [f"γ={g} predicted / measured" for g in gammas], lines) + "\n"

