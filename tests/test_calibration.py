"""The calibration that feeds the γ planner: what it measures, its caches in memory and on disk, the
refresh from every auto run."""
import pytest

from sdvar_core import calibration, engine
from sdvar_core.engine import Settings, generate
from sdvar_core.planner import Costs, PassEstimator, Planner

K = 10


def test_first_use_times_two_calls_per_model_and_runs_no_generation(random_pair, monkeypatch):
    """The cost prior: one scale and the window 0..PRIOR_WINDOW of each model, timed on random inputs; the
    work between calls of every scale; no generation. Every window is priced from the FLOPs through those
    two points; the pass prior is optimistic."""
    calibration.forget()

    def no_generation(*a, **k):
        raise AssertionError("the first use must not generate images")
    monkeypatch.setattr(engine, "generate", no_generation)
    planner = calibration.planner_for(random_pair, 1, Settings(gamma="auto"))
    monkeypatch.undo()
    W = calibration.PRIOR_WINDOW
    timings, c = calibration.timings_for(random_pair, 1, "fp32"), planner.costs
    assert set(timings.calls) == {f"{m} 0 {e}" for m in ("draft", "target") for e in (0, W)}
    assert set(timings.make) == {str(k) for k in range(K)}
    layout = random_pair.layout
    for model, table in (("draft", c.draft), ("target", c.target)):
        a, b, cc = timings.fit(model, layout)
        assert [a, b, cc] == timings.prior[model]
        for e in (0, W):   # the prior goes through both measured points (up to the non-negative clip)
            n = layout.ends[e]
            assert table[0][e] == pytest.approx(max(timings.calls[f"{model} 0 {e}"][0], a + b * n + cc * n * n))
        assert all(table[s][e] > 0 for s in range(K) for e in range(s, K))
        beta, gamma = calibration.flop_coefficients(getattr(random_pair, model).cfg, 2)
        assert cc * beta == pytest.approx(b * gamma)   # the shape decides how attention and matrices share the cost
    assert planner.estimator.observations == 0 and planner.estimator.estimate() == [1.0] * K
    assert calibration.planner_for(random_pair, 1, Settings(gamma="auto")) is planner
    calibration.forget()


def test_runs_teach_the_planner_and_measured_windows_replace_the_prior(random_pair):
    calibration.forget()
    planner = calibration.planner_for(random_pair, 1, Settings(gamma="auto", cfg=2.0))
    before = planner.costs
    tr = generate(random_pair, "speculative", [0], 0, gamma="auto", cfg=2.0, progressive=False).trace
    assert planner.costs != before     # the engine handed the trace back through planner.learn
    timings = calibration.timings_for(random_pair, 1, "fp32")
    target_windows = [key for key in timings.calls if key.startswith("target")]
    assert len(target_windows) >= calibration.MIN_FIT_WINDOWS
    assert list(timings.fit("target", random_pair.layout)) != timings.prior["target"]   # fitted on measurements
    judged = sum(len(r.accepted_scales) + (r.corrected_scale is not None) for r in tr.rounds)
    assert (planner.estimator.observations > 0) == (judged > 0)
    calibration.forget()


def test_engine_knows_nothing_of_calibration(random_pair):
    """No import of calibration in the engine or the round; without a planner or a default, a clear error."""
    import ast
    from pathlib import Path

    for name in ("engine.py", "speculative.py", "planner.py"):
        tree = ast.parse((Path(engine.__file__).parent / name).read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not any("calibration" in m for m in imported), name
    engine.set_default_planner(None)
    try:
        with pytest.raises(ValueError, match="gamma='auto' needs a planner"):
            generate(random_pair, "speculative", [0], 0, gamma="auto", progressive=False)
        own = Planner(Costs.flat(K, target=1.0, draft=0.01), PassEstimator.fixed(K, 1.0))
        tr = generate(random_pair, "speculative", [0], 0, gamma="auto", planner=own, progressive=False).trace
        assert tr.rounds[0].gamma == K and tr.rounds[0].plan is not None
    finally:
        engine.set_default_planner(calibration.planner_for)


def test_calibration_is_cached_on_disk_and_refreshed_by_runs(random_pair, tmp_path, monkeypatch):
    monkeypatch.setenv("SDVAR_CACHE_DIR", str(tmp_path))
    calibration.forget()
    settings = Settings(gamma="auto", cfg=2.0)
    first = calibration.planner_for(random_pair, 1, settings)
    assert len(list((tmp_path / "planner").glob("*.json"))) == 1
    generate(random_pair, "speculative", [0], 0, gamma="auto", cfg=2.0, progressive=False)   # stored again
    learned = first.estimator.estimate()
    calibration.forget()

    def no_calibration(*a, **k):
        raise AssertionError("should have come from the disk cache")

    monkeypatch.setattr(calibration, "calibrate", no_calibration)
    again = calibration.planner_for(random_pair, 1, settings)
    assert again is not first and again.costs == first.costs
    assert again.estimator.estimate() == learned
    # other sampling settings start their own (optimistic) pass estimate, with the same costs: no calibration
    other = calibration.planner_for(random_pair, 1, Settings(gamma="auto", cfg=3.0))
    assert other.costs == first.costs and other.estimator.observations == 0
    # refresh by hand (the caller's way) folds a trace in too
    tr = generate(random_pair, "target", [0], 0, cfg=2.0, progressive=False).trace
    before = again.costs
    calibration.refresh(random_pair, 1, settings, tr)
    assert again.costs != before
    calibration.forget()


def test_windows_never_cost_less_than_the_windows_inside_them(random_pair):
    """Noisy timings must not let the planner believe that feeding more scales is cheaper."""
    timings = calibration.Timings(K)
    for k in range(K):
        timings.calls[f"target {k} {k}"] = [0.010 * (k + 1), 1]
        timings.calls[f"draft {k} {k}"] = [0.001 * (k + 1), 1]
    timings.calls["target 7 8"] = [0.001, 1]   # a noisy, impossibly cheap window
    c = timings.costs(random_pair.layout)
    for table in (c.target, c.draft):
        for s in range(K):
            for e in range(s, K):
                assert table[s][e] >= max(table[s][e - 1] if e > s else 0, table[s + 1][e] if s < e else 0)
    assert c.target[7][8] >= c.target[8][8] == pytest.approx(0.09)


def test_fresh_calibration_ignores_the_caches(random_pair, monkeypatch):
    calibration.forget()
    settings = Settings(gamma="auto")
    first = calibration.planner_for(random_pair, 1, settings)
    runs = []
    real = calibration.calibrate
    monkeypatch.setattr(calibration, "calibrate", lambda *a, **k: runs.append(a[1:3]) or real(*a, **k))
    assert calibration.planner_for(random_pair, 1, settings) is first and runs == []
    again = calibration.planner_for(random_pair, 1, settings, fresh=True)
    assert again is not first and runs == [(1, "fp32")]
    calibration.forget()
