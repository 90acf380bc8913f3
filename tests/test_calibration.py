"""The calibration that feeds the γ planner: what it measures, its caches in memory and on disk, the
refresh from every auto run."""
import pytest

from sdvar_core import calibration
from sdvar_core.engine import Settings, generate

K = 10


def test_calibration_measures_every_window_the_planner_needs(random_pair):
    calibration.forget()
    settings = Settings(gamma="auto")
    planner = calibration.planner_for(random_pair, 1, settings)
    c, timings = planner.costs, calibration.timings_for(random_pair, 1, "fp32")
    for k in range(K):   # the steps of both models and one-scale verifications were run, not fitted
        assert f"target {k} {k}" in timings.calls and f"draft {k} {k}" in timings.calls
        assert c.target[k][k] > 0 and c.draft[k][k] > 0 and c.make[k] > 0 and c.judge[k] > 0
    assert {"target 0 9", "target 0 2", "target 8 9", "draft 0 5"} <= set(timings.calls)
    for model in ("draft", "target"):
        assert all(v >= 0 for v in timings.fit(model, random_pair.layout))
    assert planner.estimator.observations == pytest.approx(K)   # one unforced γ = 1 run judges every scale once
    assert calibration.planner_for(random_pair, 1, settings) is planner
    calibration.forget()


def test_calibration_is_cached_on_disk_and_refreshed_by_runs(random_pair, tmp_path, monkeypatch):
    monkeypatch.setenv("SDVAR_CACHE_DIR", str(tmp_path))
    calibration.forget()
    settings = Settings(gamma="auto", cfg=2.0)
    first = calibration.planner_for(random_pair, 1, settings)
    assert len(list((tmp_path / "planner").glob("*.json"))) == 1
    calibration.forget()

    def no_calibration(*a, **k):
        raise AssertionError("should have come from the disk cache")

    monkeypatch.setattr(calibration, "calibrate", no_calibration)
    again = calibration.planner_for(random_pair, 1, settings)
    assert again is not first and again.costs == first.costs
    assert again.estimator.estimate() == first.estimator.estimate()
    # other sampling settings need their own pass prior: a γ = 1 run, not the whole calibration
    monkeypatch.undo()
    monkeypatch.setenv("SDVAR_CACHE_DIR", str(tmp_path))
    runs = []
    real = calibration.calibrate
    monkeypatch.setattr(calibration, "calibrate", lambda *a, **k: runs.append(k) or real(*a, **k))
    calibration.planner_for(random_pair, 1, Settings(gamma="auto", cfg=3.0))
    assert runs == [{"passes_only": True}]
    # every auto run folds its own timings in
    tr = generate(random_pair, "speculative", [0], 0, gamma="auto", cfg=2.0, progressive=False).trace
    before = again.costs
    calibration.refresh(random_pair, 1, Settings(gamma="auto", cfg=2.0), tr)
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
    monkeypatch.setattr(calibration, "calibrate", lambda *a, **k: runs.append(k) or real(*a, **k))
    assert calibration.planner_for(random_pair, 1, settings) is first and runs == []
    again = calibration.planner_for(random_pair, 1, settings, fresh=True)
    assert again is not first and runs == [{"passes_only": False}]
    calibration.forget()
