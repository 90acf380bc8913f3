"""explore: the defaults and settings of a click, its runs and headline numbers, sweeps, bundles, the pair bank."""
import dataclasses
import re

import numpy as np
import pytest

from conftest import build_random_pair
from sdvar_core import explore, metrics
from sdvar_core.data import CLASS_NAMES
from sdvar_core.engine import Settings
from sdvar_core.trace import ACCEPTED, Trace


def settings(mode="speculative", **kw):
    return explore.click_settings({"mode": mode, **kw})


@pytest.fixture(scope="module")
def click(random_pair):
    calls = []
    runs = explore.run_click(random_pair, "speculative", 4, 9, settings(gamma_auto=False), lambda *a: calls.append(a))
    return runs, calls


def test_defaults_are_the_settings_defaults():
    for name in explore.CLICK_SETTINGS:
        assert explore.DEFAULT_INPUTS[name] == getattr(Settings(), name)
    assert set(explore.CLICK_SETTINGS) | {"entry_num", "schedule", "verify_mask", "progressive"} == \
        {f.name for f in dataclasses.fields(Settings)}


def test_click_settings():
    s = settings("schedule", entry_num=6, schedule="")
    assert s["entry_num"] == 6 and "schedule" not in s
    s = settings("schedule", schedule=" dddt tttttt ")
    assert s["schedule"] == "DDDTTTTTTT" and "entry_num" not in s
    assert "entry_num" not in settings("speculative") and "schedule" not in settings("speculative")
    assert settings(precision="bf16", gamma=3.0, gamma_auto=False) == {**settings(), "precision": "bf16", "gamma": 3}
    # the tab's γ auto box: gamma="auto" in speculative mode only, and it wins over adaptive γ
    assert settings()["gamma"] == "auto" and settings(adaptive_gamma=True)["adaptive_gamma"] is False
    assert settings("target")["gamma"] == 2 and settings(gamma_auto=False)["gamma"] == 2


def test_run_click_runs_three_modes_with_one_seed(click, random_pair):
    runs, calls = click
    assert [runs[k].settings["mode"] for k in ("main", "target", "draft")] == ["speculative", "target", "draft"]
    assert {runs[k].settings["seed"] for k in runs} == {9}
    assert {tuple(runs[k].settings["class_ids"]) for k in runs} == {(4,)}
    assert runs["main"].scales[0].image is not None and runs["target"].scales[0].image is None
    assert runs["target"].target_calls == 10 and runs["draft"].draft_calls == 10
    # progress covers 3 runs × 10 scales, monotonically
    assert calls[-1][:2] == (30, 30) and [c[0] for c in calls] == sorted(c[0] for c in calls)
    assert calls[0][2].startswith("speculative, scale ")
    assert any(re.fullmatch(r"target alone, scale \d+/10, about \d+ s left", c[2]) for c in calls)
    # the same seed reproduces the same target-only run
    again = explore.run_click(random_pair, "target", 4, 9, settings())
    assert again["target"] is again["main"] and again["draft"] is not again["main"]
    assert all(np.array_equal(a.tokens, b.tokens) for a, b in zip(again["main"].scales, runs["target"].scales))


@pytest.mark.parametrize("kw,match", [(dict(gamma=0, gamma_auto=False), "gamma"), (dict(tau=0.0), "tau"), (dict(lenience=0.5), "lenience"),
                                      (dict(top_p=0.0), "top_p")])
def test_run_click_bad_settings_raise_value_error(random_pair, kw, match):
    with pytest.raises(ValueError, match=match):
        explore.run_click(random_pair, "speculative", 0, 0, settings(**kw))


@pytest.mark.parametrize("seed", [-1, 2.5, None])
def test_run_click_bad_seed(random_pair, seed):
    with pytest.raises(ValueError, match="seed"):
        explore.run_click(random_pair, "target", 0, seed, settings())


def test_class_index(random_pair):
    assert explore.class_index(random_pair, "star", None) == CLASS_NAMES.index("star")
    with pytest.raises(ValueError, match="class_name must be one of 'circle'.*got 'dog'"):
        explore.class_index(random_pair, "dog", None)
    unnamed = build_random_pair()
    unnamed.class_names = None
    assert explore.class_index(unnamed, None, 7) == 7
    for bad in (10, -1, 2.5, None):
        with pytest.raises(ValueError, match="class_id must be an integer in 0..9"):
            explore.class_index(unnamed, None, bad)


def test_more_smooth_reaches_the_engine(random_pair):
    s = explore.click_settings({"mode": "target", "more_smooth": True})
    runs = explore.run_click(random_pair, "target", 0, 1, s)
    assert s["more_smooth"] is True and runs["main"].settings["more_smooth"] is True
    with pytest.raises(ValueError, match="more_smooth"):
        explore.run_click(random_pair, "speculative", 0, 1, explore.click_settings({"more_smooth": True}))


def test_settings_of_a_trace(click):
    runs, _ = click
    assert explore.settings_of(runs["main"]) == Settings(**settings(gamma_auto=False))
    assert explore.settings_of(runs["main"]).exact


# ---- headline numbers ---------------------------------------------------------------------------

def test_headline_numbers(three_runs):
    runs = three_runs
    h = explore.headline(runs["spec"], runs["target"])
    assert h["target_calls"] == runs["spec"].target_calls
    assert h["draft_calls"] == runs["spec"].draft_calls
    assert h["target_only_calls"] == 10
    assert h["speedup"] == pytest.approx(runs["target"].timings["total"] / runs["spec"].timings["total"])
    accepted = sum(int((s.status == ACCEPTED).sum()) for s in runs["spec"].scales)
    assert h["accepted_tokens"] == accepted
    assert h["verified_tokens"] == 2 * 680
    assert explore.headline(runs["target"])["speedup"] is None


def test_token_agreement_of_two_runs(three_runs):
    runs = three_runs
    assert explore.agreement(runs["target"], runs["target"]) == 1.0
    a = explore.agreement(runs["spec"], runs["target"])
    same = sum(int((x.tokens == y.tokens).sum()) for x, y in zip(runs["spec"].scales, runs["target"].scales))
    assert a == same / (2 * 680)
    assert explore.headline(runs["spec"], runs["target"])["token_agreement"] == a
    per_scale = metrics.token_agreement(runs["spec"].tokens, runs["target"].tokens, runs["spec"].patch_nums)
    assert per_scale["all"] == a and len(per_scale["per_scale"]) == 10


# ---- bundles and sweeps -------------------------------------------------------------------------

def test_bundle_round_trip(tmp_path, click):
    runs, _ = click
    explore.save_bundle(tmp_path / "a.npz", runs, {"seed": 9, "mode": "speculative"}, "my example")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert explore.list_bundles(tmp_path) == [("my example", str(tmp_path / "a.npz"))]
    loaded, inputs, title = explore.load_bundle(tmp_path / "a.npz")
    assert title == "my example" and inputs == {"seed": 9, "mode": "speculative"}
    for k in ("main", "target", "draft"):
        assert isinstance(loaded[k], Trace)
        assert len(loaded[k].calls) == len(runs[k].calls)
        assert np.array_equal(loaded[k].images, runs[k].images)
    assert explore.list_bundles(tmp_path / "missing") == []


def test_sweep_configs():
    cfgs = explore.sweep_configs("schedule", ["0", "4", "10"], ["D→T", "T→D"], ["1", "3"], [], [])
    assert [c["series"] for c in cfgs[:2]] == ["target only", "draft only"]
    scheds = [c["schedule"] for c in cfgs[2:]]
    assert scheds == ["DDDDTTTTTT", "DDDDTTTTTT", "TTTTDDDDDD", "TTTTDDDDDD"]   # 0 and 10 are baselines
    assert [c["sd_mask"] for c in cfgs[2:]] == [1, 3, 1, 3]
    spec = explore.sweep_configs("speculative", [], [], [], ["2", "1"], ["0.8", "1.0"])
    assert [(c["gamma"], c["tau"]) for c in spec[2:]] == [(1, 1.0), (2, 1.0), (1, 0.8), (2, 0.8)]
    with pytest.raises(ValueError, match="at least one"):
        explore.sweep_configs("schedule", [], ["D→T"], ["1"], [], [])
    with pytest.raises(ValueError, match="baseline"):
        explore.sweep_configs("schedule", ["10"], ["D→T"], ["1"], [], [])
    with pytest.raises(ValueError, match="too many"):
        explore.sweep_configs("speculative", [], [], [], [str(g) for g in range(1, 11)], [str(t / 10) for t in range(1, 11)])
    with pytest.raises(ValueError, match="kind"):
        explore.sweep_configs("other", [], [], [], [], [])


def test_parse_seeds():
    assert explore.parse_seeds("0, 1,5") == [0, 1, 5]
    assert explore.parse_seeds("2-4; 7") == [2, 3, 4, 7]
    for bad, match in (("", "at least one"), ("a", "integers"), ("0-20", "at most"), ("-3", r"each seed must be an integer in 0\.\.2\^63-1, got -3"),
                       (f"0, {2**63}", "each seed must be"), ("5-3", "upwards"), ("1" * 300, "at most 200 characters")):
        with pytest.raises(ValueError, match=match):
            explore.parse_seeds(bad)


def test_run_config_and_sweep_row(random_pair):
    base = dict(cfg=1.5, top_k=0, top_p=1.0, accept="prob", lenience=1.0)
    cfgs = explore.sweep_configs("schedule", ["4"], ["D→T"], ["3"], [], [])
    ref = explore.run_config(random_pair, cfgs[0], [0, 1], [0, 1, 2], base)
    assert len(ref) == 2 and ref[0].images.shape[0] == 3
    row = explore.sweep_row(cfgs[0], ref, ref, [0, 1, 2], None)
    assert row["speedup"] == pytest.approx(1.0) and row["token_agreement"] == 1.0 and row["images"] == 6
    sched = explore.run_config(random_pair, cfgs[2], [0, 1], [0, 1, 2], base)
    row = explore.sweep_row(cfgs[2], sched, ref, [0, 1, 2], None)
    assert row["target_calls"] == 6 and row["draft_calls"] == 4
    assert row["token_agreement"] == pytest.approx(np.mean([explore.agreement(s, r) for s, r in zip(sched, ref)]))
    assert row["config"] == "D→T, sd_mask 3, entry_num 4 (DDDDTTTTTT)"


# ---- pairs ----------------------------------------------------------------------------------------

def test_pair_bank_fallbacks(pair_loader):
    bank = explore.PairBank(pair_loader)
    assert bank.get("tiny").name == "random-test" and "tiny" not in bank.notes
    with pytest.raises(ValueError, match="could not be loaded.*official weights not found"):
        bank.get("d16-d30")
    with pytest.raises(ValueError, match="model must be one of 'tiny'.*got 'd99'"):
        bank.get("d99")

    def broken(key, precision="fp32"):
        raise RuntimeError("the tiny pair is incomplete")   # any error, not only ValueError
    bank = explore.PairBank(broken)
    pair = bank.get("tiny")
    assert "random weights" in pair.name and "incomplete" in bank.notes["tiny"]
    assert "Masks and Shapes tabs" in bank.notes["tiny"]


def test_quality_classifier_only_for_the_embedded_classes(random_pair):
    other = build_random_pair()
    other.class_names = None
    clf, note = explore.load_quality_classifier(other)
    assert clf is None and "embedded pair only" in note
    clf, note = explore.load_quality_classifier(random_pair)
    assert (clf is None) == bool(note)
