"""economics.py: the odds of whole scales, the cost what-if on the planner's own cost model, the frontier."""
import math

import numpy as np
import pandas as pd
import pytest

from sdvar_core import economics as ec
from sdvar_core.engine import generate
from sdvar_core.planner import Costs, PassEstimator, Planner, batch_pass_probability, policy_value, schedule_value, solve


@pytest.fixture(scope="module")
def runs(three_runs):
    return three_runs


@pytest.fixture(scope="module")
def click(runs, random_pair):
    """A click of the exact γ = 3 run (two images) with its target-only and draft-only twins."""
    draft = generate(random_pair, "draft", [2, 7], seed=3, progressive=False).trace
    return {"main": runs["spec"], "target": runs["target"], "draft": draft}


# ---- why it stalls ---------------------------------------------------------------------------------

def test_scale_odds_are_the_products_of_the_tokens_keep_probabilities(runs):
    trace = runs["spec"]
    odds = ec.scale_odds(trace)
    assert [o.tokens for o in odds] == [p * p for p in trace.patch_nums]
    for o, rec, rate in zip(odds, trace.scales, trace.acceptance_per_scale()):
        keep = np.minimum(1.0, rec.p_draft.astype(float) / rec.q_draft.astype(float))
        assert o.alpha == pytest.approx(rate)
        assert o.expected_alpha == pytest.approx(keep.mean())
        assert o.pass_prob == pytest.approx(np.prod(keep, axis=1).mean(), rel=1e-9, abs=1e-300)
        assert o.batch_pass == pytest.approx(batch_pass_probability(rec.p_draft, rec.q_draft), rel=1e-9, abs=1e-300)
        assert o.batch_pass <= o.pass_prob <= keep.min(axis=1).mean() + 1e-12   # all ≤ the weakest token


def test_scale_odds_of_a_run_without_verification(runs):
    odds = ec.scale_odds(runs["schedule"])
    assert all(o.alpha is None and o.pass_prob is None and o.planned is None for o in odds)
    assert ec.mean_alpha(odds) is None


def test_keep_probabilities_and_format_prob():
    keep = ec.keep_probabilities(np.array([[0.2, 0.5, 0.3]]), np.array([[0.4, 0.25, 0.0]]))
    assert keep.tolist() == [[0.5, 1.0, 1.0]]
    assert [ec.format_prob(p) for p in (1.0, 0.4891, 0.02, 2.04e-05, 2.2e-115, 0.0, None)] == \
        ["1.00", "0.49", "0.02", "2e-5", "2e-115", "0", "–"]


# ---- the cost what-if ---------------------------------------------------------------------------------

def test_schedule_value_prices_each_call_from_the_costs():
    p = 0.01
    c = Costs.flat(3, target=1.0, draft=0.5, per_scale_target=p, make=0.1)
    assert schedule_value(c, "TTT") == pytest.approx(c.target_only()) == pytest.approx(3 * (1 + p) + 0.3)
    assert schedule_value(c, "DDT") == pytest.approx(0.5 + 0.5 + (1 + 3 * p) + 0.3)     # the target prefills 1–3
    assert schedule_value(c, "TDD") == pytest.approx((1 + p) + 0.5 + 0.5 + 0.3)
    assert schedule_value(c, "DDT", sd_mask=0) == pytest.approx(0.5 + 0.5 + (1 + p) + 0.3)   # prefix not fed
    with pytest.raises(ValueError, match="schedule must be 3 letters"):
        schedule_value(c, "DX")


def test_cost_whatif_uses_the_planners_cost_model(click):
    w = ec.cost_whatif(click)
    costs = ec.click_costs([click["main"], click["target"], click["draft"]])
    pi, sources = ec.pass_probabilities(click["main"])
    assert w.pass_prob == pi and set(sources) == {"measured"}
    shared = click["target"].timings["decode"]
    base = costs.target_only() + shared
    by = {p.label: p for p in w.predictions}
    for g in ec.GAMMAS:
        assert by[f"γ = {g}"].speedup == pytest.approx(base / (policy_value(costs, pi, g) + shared))
    assert by["γ auto"].speedup == pytest.approx(base / (solve(costs, pi).value[0][0] + shared))
    for label, schedule, _ in ec.HANDOFFS:
        assert by[label].speedup == pytest.approx(base / (schedule_value(costs, schedule) + shared))
        assert not by[label].lossless
    assert by["draft only"].speedup == pytest.approx(base / (schedule_value(costs, "D" * 10) + shared))
    assert w.click_label == "γ = 3"
    assert w.measured_speedup == pytest.approx(click["target"].timings["total"] / click["main"].timings["total"])
    assert w.measured_ratio == pytest.approx(ec.measured_ratio(costs)) == pytest.approx(w.ratio)


def test_whatif_costs_rescale_the_draft_and_add_a_fixed_cost():
    c = Costs.flat(4, target=0.02, draft=0.004, per_scale_target=0.01, make=0.001)
    assert ec.whatif_costs(c).to_dict() == c.to_dict()
    assert ec.measured_ratio(c) == pytest.approx(0.004 / 0.03)
    w = ec.whatif_costs(c, ratio=0.5, overhead=2.0)
    fixed = 2.0 * ec.mean_target_step(c)
    assert w.target[0][3] == pytest.approx(c.target[0][3] + fixed)
    assert w.draft[1][1] == pytest.approx(c.draft[1][1] * 0.5 / ec.measured_ratio(c) + 0.5 * fixed)
    assert ec.measured_ratio(ec.whatif_costs(c, ratio=0.5)) == pytest.approx(0.5)
    assert w.make == c.make


def test_pass_probabilities_scale_rejections_and_batches(runs):
    trace = runs["spec"]   # two images
    odds = ec.scale_odds(trace)
    pi, _ = ec.pass_probabilities(trace)
    assert pi == pytest.approx([o.batch_pass for o in odds], rel=1e-9, abs=1e-300)
    assert ec.pass_probabilities(trace, rejection=0.0)[0] == [1.0] * 10
    four = ec.pass_probabilities(trace, batch=4)[0]
    assert four == pytest.approx([o.batch_pass ** 2 for o in odds], rel=1e-6, abs=1e-300)
    better = ec.pass_probabilities(trace, rejection=0.1)[0]
    assert all(b >= p for b, p in zip(better, pi))
    assumed, sources = ec.pass_probabilities(runs["schedule"])
    assert set(sources) == {"assumed"}
    assert assumed == pytest.approx([ec.ASSUMED_ALPHA ** (p * p * 2) for p in trace.patch_nums])


def test_pass_probabilities_of_target_alone_rounds_come_from_the_plan(random_pair):
    planner = Planner(Costs.flat(10, target=0.02, draft=0.02), PassEstimator.fixed(10, 0.3))
    trace = generate(random_pair, "speculative", [1], seed=2, gamma="auto", planner=planner, progressive=False).trace
    assert [r.gamma for r in trace.rounds] == [0] * 10   # a draft as slow as the target never pays
    pi, sources = ec.pass_probabilities(trace)
    assert set(sources) == {"planner"} and pi == pytest.approx([0.3] * 10)
    assert ec.pass_probabilities(trace, rejection=0.0)[0] == pytest.approx([1.0] * 10)


@pytest.mark.parametrize("knobs,field", [(dict(ratio=0.0), "draft/target cost ratio"),
                                         (dict(overhead=-1.0), "fixed cost per call"),
                                         (dict(rejection=1.5), "rejection multiplier"),
                                         (dict(batch=2.5), "batch"), (dict(batch=0), "batch")])
def test_bad_knobs_name_the_field(click, knobs, field):
    with pytest.raises(ValueError, match=field):
        ec.cost_whatif(click, **knobs)


def test_what_pays_where(click):
    """Costs where a call's size hardly matters and a perfect draft make exact speculation pay; measured
    costs with measured odds do not."""
    measured = {p.label: p.speedup for p in ec.cost_whatif(click).predictions}
    assert measured["γ = 4"] < 1
    gpu = ec.REGIME_BY_KEY["gpu1"]
    perfect = {p.label: p.speedup for p in ec.cost_whatif(click, gpu.ratio, gpu.overhead, 0.0, 1).predictions}
    assert perfect["γ = 4"] > perfect["γ = 1"] and perfect["γ auto"] > 1


def test_click_setting(runs, random_pair):
    assert ec.click_setting(runs["spec"]) == ("γ = 3", "")
    assert ec.click_setting(runs["target"]) == ("target alone", "target")
    label, how = ec.click_setting(runs["schedule"])   # DDDDTTTTTT under sd_mask 1: not a preset
    assert how == "schedule:DDDDTTTTTT" and "sd_mask 1" in label
    relaxed = generate(random_pair, "speculative", [1], seed=1, gamma=2, tau=0.5, progressive=False).trace
    w = ec.cost_whatif({"main": relaxed, "target": runs["target"]})
    assert ec.click_setting(relaxed)[1] == "relaxed" and "no prediction" in w.notes[0]
    assert [p.speedup for p in w.predictions if p.kind == "click"] == [None]


# ---- the frontier --------------------------------------------------------------------------------------

def test_pareto_front():
    x = [1.0, 2.0, 1.5, 3.0, 2.5, math.nan]
    y = [0.9, 0.5, 0.8, 0.2, 0.1, 1.0]
    assert ec.pareto_front(x, y) == [0, 2, 1, 3]          # 4 is beaten by 3 (faster and better); NaN never
    assert ec.pareto_front(x, y, higher_y=False) == [4, 3]   # lower is better (FID)
    assert ec.pareto_front([1.0, 1.0], [0.5, 0.5]) == [0]


def test_frontier_of_a_sweep_table():
    df = pd.DataFrame({"config": ["target only", "draft only", "D→T, sd_mask 3, entry_num 4 (DDDDTTTTTT)",
                                  "τ = 1, γ = 2", "T→D, sd_mask 3, entry_num 8 (TTTTTTTTDD)"],
                       "speedup": [1.0, 2.5, 1.1, 0.5, 1.4], "token_agreement": [1.0, 0.2, 0.3, 0.4, 0.7],
                       "class_accuracy": [0.6, 0.3, 0.35, np.nan, 0.62], "target_calls": [10, 0, 6, 9, 8]})
    assert ec.quality_choices(df) == ["class_accuracy", "token_agreement"]
    pts, metric = ec.frontier(df)
    assert metric == "class_accuracy"
    assert list(pts["anchor"]) == [True, True, False, False, False]
    assert list(pts["on_front"]) == [False, True, False, False, True]   # T→D e=8 beats the target alone here
    assert "target calls: 8" in pts["hover"][4] and "on the Pareto front" in pts["hover"][4]
    pts, _ = ec.frontier(df, "token_agreement")
    assert list(pts["on_front"]) == [True, True, False, False, True]
    with pytest.raises(ValueError, match="quality must be one of"):
        ec.frontier(df, "beauty")
    assert ec.frontier(pd.DataFrame())[0].empty
