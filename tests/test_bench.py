"""Benchmarks: the cost model, call patterns against the engine's traces, the tables and the CLI."""
import math
import re
import statistics

import numpy as np
import pytest
import torch

from sdvar_core import bench
from sdvar_core.config import ScaleLayout, VQVAEConfig
from sdvar_core.engine import generate
from sdvar_core.classifier import Classifier, ClassifierConfig

L = ScaleLayout()
K = L.num_scales


def flat(cost):
    return lambda s, e: cost


# ---- cost model ------------------------------------------------------------------------------


def test_cost_model_known_values():
    draft = [0.1] * K
    # every scale passes, one round drafts all 10: 10 draft calls (1 s) + one target call (1 s) vs 10 target calls
    assert bench.predicted_speedup(10, [1.0] * K, draft, flat(1.0)) == pytest.approx(10 / 2)
    # γ = 1: every round is one draft + one target call whatever the acceptance
    for p in (0.0, 0.3, 1.0):
        assert bench.predicted_speedup(1, [p] * K, draft, flat(1.0)) == pytest.approx(10 / 11)
    # seconds shared by both runs (decode, overhead) dilute the ratio
    assert bench.predicted_speedup(10, [1.0] * K, draft, flat(1.0), fixed=2.0) == pytest.approx(12 / 4)
    # expected target calls: ceil(10/γ) when all pass, 10 when none do
    for g in (1, 2, 3, 4):
        assert bench.expected_round_sum(g, [1.0] * K, flat(1.0)) == pytest.approx(math.ceil(K / g))
        assert bench.expected_round_sum(g, [0.0] * K, flat(1.0)) == pytest.approx(K)
    # γ = 2, two scales, pass probability p for scale 0: one round with prob p, else two
    p = 0.25
    assert bench.expected_round_sum(2, [p, 0.5], flat(1.0)) == pytest.approx(p * 1 + (1 - p) * 2)


def test_cost_model_monotone_in_acceptance():
    draft = [1e-3 + 1e-5 * n for n in L.sizes]

    def target(s, e):   # fixed launch cost + per position fed: subadditive like real calls
        return 5e-3 + 4e-5 * (L.ends[e] - L.starts[s])

    for g in (2, 3, 4):
        preds = [bench.predicted_speedup(g, [a] * K, draft, target, fixed=0.01) for a in np.linspace(0, 1, 21)]
        assert all(b >= a - 1e-12 for a, b in zip(preds, preds[1:])), preds
        assert preds[-1] > preds[0]
        calls = [bench.expected_round_sum(g, [a] * K, flat(1.0)) for a in np.linspace(0, 1, 21)]
        assert all(b <= a + 1e-12 for a, b in zip(calls, calls[1:]))


def test_cost_model_matches_simulated_call_patterns():
    """The expected number of target calls equals the mean over simulated engine call patterns."""
    rng = np.random.default_rng(0)
    for g, a in ((2, 0.5), (3, 0.8), (4, 0.3)):
        sims = [sum(c.model == "target" for c in bench.speculative_calls(g, bench.forced_outcomes(a, rng), L))
                for _ in range(3000)]
        assert np.mean(sims) == pytest.approx(bench.expected_round_sum(g, [a] * K, flat(1.0)), abs=0.08)


def test_cost_model_rejects_bad_input():
    with pytest.raises(ValueError, match="gamma"):
        bench.expected_round_sum(0, [0.5] * K, flat(1.0))
    with pytest.raises(ValueError, match="probabilities"):
        bench.expected_round_sum(2, [1.5] * K, flat(1.0))
    with pytest.raises(ValueError, match="draft_cost"):
        bench.predicted_speedup(2, [0.5] * K, [0.1] * 3, flat(1.0))


# ---- call patterns ---------------------------------------------------------------------------


def _key(c):
    return (c.model, c.kind, tuple(c.scales), c.kv_before, c.mask_rule)


def test_schedule_calls_match_the_engine(random_pair):
    for sched in ("DDDDDTTTTT", "TTTDDDDDDD", "DTDTDTDTDT"):
        for m in range(6):
            trace = generate(random_pair, "schedule", [0, 1], 0, schedule=sched, sd_mask=m, progressive=False).trace
            assert [_key(c) for c in trace.calls] == [_key(c) for c in bench.schedule_calls(sched, m, L)]


def test_speculative_calls_match_the_engine(random_pair):
    """Given the outcomes the engine judged, the simulated calls are the engine's calls."""
    for g in (1, 2, 3, 4):
        for seed, batch in ((0, 1), (1, 3)):
            trace = generate(random_pair, "speculative", list(range(batch)), seed, gamma=g, progressive=False).trace
            outcomes = []
            for rd in trace.rounds:
                outcomes += [True] * len(rd.accepted_scales) + ([False] if rd.corrected_scale is not None else [])
            simulated = bench.speculative_calls(g, iter(outcomes), L)
            assert [_key(c) for c in trace.calls] == [_key(c) for c in simulated]


def test_speculative_call_counts():
    all_pass = bench.speculative_calls(4, iter(lambda: True, None), L)
    assert sum(c.model == "target" for c in all_pass) == 3 and sum(c.model == "draft" for c in all_pass) == 10
    assert [c.scales for c in all_pass if c.model == "target"] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]
    none_pass = bench.speculative_calls(2, iter(lambda: False, None), L)
    assert sum(c.model == "target" for c in none_pass) == 10 and sum(c.model == "draft" for c in none_pass) == 19


def test_replay_runs_a_pattern(random_pair):
    models = {"draft": random_pair.draft, "target": random_pair.target}
    calls = bench.speculative_calls(3, bench.forced_outcomes(0.5, np.random.default_rng(1)), L)
    calls += bench.schedule_calls("DDDTTTTTTT", 0, L)   # sd_mask 0 resets a cache
    with torch.no_grad():
        secs = bench.replay(calls, models, 2, bench.autocast_for(torch.device("cpu"), "bf16"), torch.device("cpu"))
    assert len(secs) == len(calls) and all(s > 0 for s in secs)


# ---- tables ------------------------------------------------------------------------------------


def _cell(table: str, row: str, col: int) -> str:
    line = next(ln for ln in table.splitlines() if ln.startswith(f"| {row} |"))
    return [c.strip() for c in line.strip("|").split("|")][col]


def test_mode_table_ratios_are_against_target_only_of_the_same_run(random_pair):
    rows = [r for r in bench.table_rows("modes") if r.name in (bench.TARGET_ROW, "draft only", "spec γ=2 exact")]
    plan = bench.modes_plan(10, batch=1, seeds=1, repeats=3)
    results = bench.measure(random_pair, rows, plan, log=lambda s: None)
    base = results[bench.TARGET_ROW]
    assert len(base.walls) == 3
    for name in ("draft only", "spec γ=2 exact"):
        res = results[name]
        expected = [base.walls[r] / res.walls[r] for r in range(3)]
        assert bench.speedups(base, res) == pytest.approx(expected)
        table = bench.modes_table(results)
        assert _cell(table, name, 5).startswith(f"{statistics.median(expected):.2f} [")
    assert _cell(bench.modes_table(results), bench.TARGET_ROW, 5) == "1.00 [1.00–1.00]"
    assert _cell(bench.modes_table(results), "draft only", 2) == "0.0"        # target calls
    assert _cell(bench.modes_table(results), "draft only", 3) == "10.0"       # draft calls


def test_measure_stops_at_the_deadline_after_whole_repeats(random_pair):
    rows = [r for r in bench.table_rows("modes") if r.name in (bench.TARGET_ROW, "draft only")]
    logs = []
    results = bench.measure(random_pair, rows, bench.modes_plan(10, 1, 1, 4), deadline=0.0, log=logs.append)
    assert all(len(res.walls) == 1 for res in results.values())   # the first repeat always runs
    assert any("1 of 4 repeats" in line for line in logs)


def test_modes_rows_cover_the_brief():
    names = [r.name for r in bench.table_rows("modes")]
    for e in range(11):
        assert f"D→T e={e}" in names and f"T→D e={e}" in names
    assert {f"spec γ={g} exact" for g in (1, 2, 3, 4)} <= set(names)
    assert sum(n.startswith("spec γ=3 prob") for n in names) == 6 and "spec γ=3 top1 τ=0.5 λ=1" in names
    assert len(names) == len(set(names))
    schedules = {r.kwargs["schedule"] for r in bench.table_rows("modes") if r.mode == "schedule" and r.kwargs["sd_mask"] == 3}
    assert "DDDTTTTTTT" in schedules and "TTTDDDDDDD" in schedules


def test_report_runs_on_a_tiny_setting(tmp_path):
    """Every row of the report on a very small random pair (a narrow VQ-VAE keeps the 64 px decode cheap)."""
    vq = VQVAEConfig(vocab_size=64, z_channels=8, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, use_attn=False,
                     image_size=64)
    pair = bench.random_pair("cpu", target=dict(depth=1, width=32, heads=1), draft=dict(depth=1, width=16, heads=1),
                             vqvae_cfg=vq)
    torch.manual_seed(0)
    clf = Classifier(ClassifierConfig(widths=(8, 16, 32), depth=1)).eval()
    text = bench.build_report(pair, clf, torch.device("cpu"), images_per_class=1, batch=5, n_boot=5, n_real=40)
    rows = bench.table_rows("report")
    for r in rows:
        assert f"| {r.name} |" in text
    table = text.split("### Cost model")[0]
    assert _cell(table, bench.TARGET_ROW, 4).startswith("1.00")
    assert _cell(table, bench.TARGET_ROW, 8) == "0.000"     # ΔFID of target only against itself
    assert _cell(table, bench.TARGET_ROW, 9) == "✗"        # 10 target calls > 5
    assert re.search(r"δ = \d+\.\d{3}", text)
    cost = text.split("### Cost model")[1]
    for g in (1, 2, 3, 4):
        assert f"| spec γ={g} exact |" in cost
    out = tmp_path / "B.md"
    bench.write_section(out, "report", text)
    assert out.read_text().count("| spec γ=1 exact |") == 2   # main table + cost model


def test_write_section_replaces_in_place(tmp_path):
    path = tmp_path / "B.md"
    path.write_text("# Title\n\nintro\n")
    bench.write_section(path, "a", "first")
    bench.write_section(path, "b", "other")
    bench.write_section(path, "a", "second")
    text = path.read_text()
    assert text.startswith("# Title\n\nintro\n") and "first" not in text
    assert text.index("second") < text.index("other") and text.count("<!-- bench:a -->") == 1


# ---- CLI ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["floor", "--batches", "0"], "positive integer"),
    (["patterns", "--accept", "1.5"], "probabilities"),
    (["floor", "--presets", "var-x"], "unknown preset"),
])
def test_cli_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.main(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["generate", "--device", "cpu", "--precision", "bf16"], "needs CUDA"),
    (["modes", "--pair", "nope", "--device", "cpu"], "--pair must be"),
    (["report", "--pair", "random", "--classifier", "no/such/stem", "--device", "cpu"], "classifier not found"),
    (["profile", "--pair", "random", "--row", "nope", "--device", "cpu"], "unknown row"),
    (["report", "--pair", "random", "--max-minutes", "0", "--device", "cpu"], "--max-minutes must be > 0"),
])
def test_cli_clear_errors(argv, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        bench.main(argv)


def test_device_sections_run_small():
    """The floor and pattern sections of scripts/gpu_bench.sh, shrunk, on the CPU."""
    cpu = torch.device("cpu")
    floor = bench.run_floor(["var-d1"], [1], cpu, precision="fp32", repeats=1, small=True)
    assert "| var-d1 | fp32 weights | 1 |" in floor and "weight-read floor" in floor
    models = {"draft": bench.random_official_var("var-d1", cpu, 1, small=True),
              "target": bench.random_official_var("var-d1", cpu, 2, small=True)}
    text = bench.run_patterns(models, cpu, batch=1, repeats=2, precision="fp32", gammas=[2], accepts=[1.0])
    assert _cell(text, bench.TARGET_ROW, 1) == "10.0" and _cell(text, bench.TARGET_ROW, 4).startswith("1.00")
    # forced acceptance 1 with γ = 2: five rounds, ten drafted scales
    assert _cell(text, "spec γ=2 forced acceptance 1", 1) == "5.0"
    assert _cell(text, "spec γ=2 forced acceptance 1", 2) == "10.0"
    assert _cell(text, "T→D e=3", 1) == "3.0" and _cell(text, "D→T e=5 sd_mask 0", 2) == "5.0"
