"""The γ planner: its expected costs against the cost model, its choices in the regimes that matter,
the pass estimator."""
import math
import random

import numpy as np
import pytest

from sdvar_core.bench.costmodel import expected_round_sum
from sdvar_core.planner import (Costs, PassEstimator, Planner, batch_pass_probability, pick, policy_value,
                                solve)
from sdvar_core.trace import Candidate

K = 10


def random_costs(rng: random.Random, judge: float = 0.0) -> Costs:
    """A fixed cost per call plus a random cost per scale fed (windows cost less than their steps)."""
    def table(fixed, hi):
        per_scale = [rng.uniform(0, hi) for _ in range(K)]
        return [[fixed + sum(per_scale[s:e + 1]) for e in range(K)] for s in range(K)]
    return Costs(draft=table(0.2, 0.5), target=table(1.0, 2.0), make=[rng.uniform(0, 0.2) for _ in range(K)],
                 judge=[judge] * K)


def test_fixed_gamma_value_is_the_cost_models_expected_sum():
    """policy_value(γ) is expected_round_sum with the same round cost: the planner generalises the cost model."""
    rng = random.Random(0)
    for _ in range(5):
        c = random_costs(rng)
        c.make = [0.0] * K
        pp = [rng.random() for _ in range(K)]
        for g in (1, 2, 3, 4, 10):
            def round_cost(s, e):
                return sum(c.draft[k][k] for k in range(s, e + 1)) + c.target[s][e]
            assert policy_value(c, pp, g) == pytest.approx(expected_round_sum(g, pp, round_cost), rel=1e-12)


def test_the_plan_is_never_worse_than_target_alone_or_any_fixed_gamma():
    rng = random.Random(1)
    for _ in range(10):
        c, pp = random_costs(rng, judge=0.05), [rng.random() for _ in range(K)]
        best = solve(c, pp, margin=0.0).value[0][0]
        assert best <= c.target_only() + 1e-12
        for g in range(1, K + 1):
            assert best <= policy_value(c, pp, g) + 1e-12


def test_drafts_that_never_pass_degenerate_to_target_alone():
    c = random_costs(random.Random(2))
    sol = solve(c, [0.0] * K)
    assert all(sol.choose(s, d).gamma == 0 for s in range(K) for d in range(s + 1))
    assert sol.value[0][0] == pytest.approx(c.target_only())


def test_launch_bound_calls_with_passing_drafts_draft_the_whole_image():
    """GPU-like costs (every call about as long, whatever its window) and drafts that always pass:
    one round drafts all scales, and the predicted speed-up is K·t ÷ (K·d + t)."""
    t, d = 0.0226, 0.0134
    c = Costs.flat(K, target=t, draft=d)
    plan = Planner(c, PassEstimator.fixed(K, 1.0)).plan(0, 0)
    assert plan.chosen == K
    chosen = next(x for x in plan.candidates if x.gamma == K)
    assert chosen.speedup == pytest.approx(K * t / (K * d + t))
    assert chosen.gain == pytest.approx(K)


def test_plan_record_is_consistent():
    rng = random.Random(3)
    c = random_costs(rng)
    planner = Planner(c, PassEstimator.fixed(K, 0.7), margin=0.0)
    rec = planner.plan(4, 2, t=0.5)
    assert [x.gamma for x in rec.candidates] == list(range(0, K - 4 + 1))
    assert rec.chosen == min(rec.candidates, key=lambda x: (x.value, x.gamma)).gamma
    rest = c.target_only(4)
    for x in rec.candidates:
        assert x.speedup == pytest.approx(rest / x.value) and 1 <= x.gain <= max(x.gamma, 1)
    assert rec.candidates[0].gain == 1 and rec.start == 4 and rec.draft_next == 2 and rec.t == 0.5
    # the draft's catch-up call (scales 2..4 instead of 4) is charged to every drafting candidate
    caught_up = planner.plan(4, 4)
    for a, b in zip(rec.candidates[1:], caught_up.candidates[1:]):
        assert a.cost - b.cost == pytest.approx(c.draft[2][4] - c.draft[4][4])
    with pytest.raises(ValueError, match="draft_next"):
        planner.plan(3, 4)


def test_margin_favours_the_target_alone():
    zero = Candidate(0, 1, 1.0, 10.0, 1.0)
    draft = Candidate(2, 1.5, 1.5, 9.8, 1.02)
    assert pick([zero, draft], margin=0.03).gamma == 0
    assert pick([zero, draft], margin=0.0).gamma == 2
    assert pick([zero, draft], margin=0.03, allow_zero=False).gamma == 2


def test_costs_reject_bad_tables():
    good = Costs.flat(3, 1.0, 0.5)
    with pytest.raises(ValueError, match="same scales"):
        Costs(draft=good.draft, target=good.target, make=[0.0] * 2, judge=[0.0] * 3)
    with pytest.raises(ValueError, match="finite"):
        Costs(draft=good.draft, target=[[math.nan] * 3] * 3, make=[0.0] * 3, judge=[0.0] * 3)
    with pytest.raises(ValueError, match="pass_prob"):
        solve(good, [0.5, 1.5, 0.5])


def test_pass_estimator_learns_with_a_weak_prior_and_forgets_slowly():
    est = PassEstimator(3)
    assert est.estimate() == [0.5] * 3
    for _ in range(20):
        est.observe(0, 1.0)
        est.observe(1, 0.0)
    e = est.estimate()
    assert e[0] > 0.98 and e[1] < 0.02 and e[2] == 0.5
    est.observe(0, 0.0)   # one new failure moves a long history only a little
    assert 0.9 < est.estimate()[0] < e[0]
    assert PassEstimator.fixed(3, 0.25).estimate() == pytest.approx([0.25] * 3)
    with pytest.raises(ValueError, match="pass probability"):
        est.observe(0, 1.5)
    assert PassEstimator(**est.to_dict()).estimate() == est.estimate()


def test_batch_pass_probability_is_the_product_of_token_acceptances():
    p = np.array([[0.2, 0.5], [0.1, 0.3]])
    q = np.array([[0.4, 0.25], [0.1, 0.6]])
    assert batch_pass_probability(p, q) == pytest.approx(0.5 * 1 * 1 * 0.5)
    assert batch_pass_probability(p, q, lenience=2.0) == pytest.approx(1.0)
    assert batch_pass_probability(np.zeros((1, 3)), np.full((1, 3), 0.3)) == 0.0


def test_observations_invalidate_the_plan():
    c = Costs.flat(K, target=1.0, draft=0.1)
    planner = Planner(c, PassEstimator(K, prior_mean=0.0, prior_weight=1.0, decay=1.0))
    assert planner.plan(0, 0).chosen == 0
    for _ in range(50):
        for k in range(K):
            planner.observe(k, 1.0)
    assert planner.plan(0, 0).chosen > 1
