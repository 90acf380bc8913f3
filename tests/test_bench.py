"""Benchmarks: the cost model, call patterns against the engine's traces, the tables and the CLI."""
import math
import re
import statistics

import numpy as np
import pytest
import torch

from sdvar_core.bench import cli, harness, patterns, plans, report, tables
from sdvar_core.bench.costmodel import expected_round_sum, predicted_speedup
from sdvar_core.bench.floors import run_floor
from sdvar_core.bench.harness import TARGET_ROW
from sdvar_core.bench.pairs import random_official_pair
from sdvar_core.classifier import Classifier, ClassifierConfig
from sdvar_core.config import ScaleLayout, VQVAEConfig
from sdvar_core.engine import generate
from sdvar_core.zoo import random_pair as make_random_pair

LAYOUT = ScaleLayout()
K = LAYOUT.num_scales


def flat(cost):
    return lambda s, e: cost


# ---- cost model ------------------------------------------------------------------------------


def test_cost_model_known_values():
    draft = [0.1] * K
    # every scale passes, one round drafts all 10: 10 draft calls (1 s) + one target call (1 s) vs 10 target calls
    assert predicted_speedup(10, [1.0] * K, draft, flat(1.0)) == pytest.approx(10 / 2)
    # γ = 1: every round is one draft + one target call whatever the acceptance
    for p in (0.0, 0.3, 1.0):
        assert predicted_speedup(1, [p] * K, draft, flat(1.0)) == pytest.approx(10 / 11)
    # seconds shared by both runs (decode, overhead) dilute the ratio
    assert predicted_speedup(10, [1.0] * K, draft, flat(1.0), fixed=2.0) == pytest.approx(12 / 4)
    # expected target calls: ceil(10/γ) when all pass, 10 when none do
    for g in (1, 2, 3, 4):
        assert expected_round_sum(g, [1.0] * K, flat(1.0)) == pytest.approx(math.ceil(K / g))
        assert expected_round_sum(g, [0.0] * K, flat(1.0)) == pytest.approx(K)
    # γ = 2, two scales, pass probability p for scale 0: one round with prob p, else two
    p = 0.25
    assert expected_round_sum(2, [p, 0.5], flat(1.0)) == pytest.approx(p * 1 + (1 - p) * 2)


def test_cost_model_monotone_in_acceptance():
    draft = [1e-3 + 1e-5 * n for n in LAYOUT.sizes]

    def target(s, e):   # fixed launch cost + per position fed: subadditive like real calls
        return 5e-3 + 4e-5 * (LAYOUT.ends[e] - LAYOUT.starts[s])

    for g in (2, 3, 4):
        preds = [predicted_speedup(g, [a] * K, draft, target, fixed=0.01) for a in np.linspace(0, 1, 21)]
        assert all(b >= a - 1e-12 for a, b in zip(preds, preds[1:])), preds
        assert preds[-1] > preds[0]
        calls = [expected_round_sum(g, [a] * K, flat(1.0)) for a in np.linspace(0, 1, 21)]
        assert all(b <= a + 1e-12 for a, b in zip(calls, calls[1:]))


def test_cost_model_matches_the_engine_under_forced_verdicts(random_pair):
    """The expected number of target calls equals the engine's, run with forced verdicts.

    Every scale is judged exactly once (a failing scale ends its round and the next round starts after
    it), so the engine's target calls are a function of one pass/fail verdict per scale, and their
    expectation is multilinear in the pass probabilities: equal at every 0/1 vertex means equal
    everywhere. Checked on random vertices for each γ.
    """
    rng = np.random.default_rng(0)
    for g in (1, 2, 3, 4):
        for _ in range(6):
            verdicts = [bool(v) for v in rng.integers(0, 2, K)]
            trace = generate(random_pair, "speculative", [0], 0, gamma=g, progressive=False,
                             accept_override=lambda k: verdicts[k]).trace
            assert trace.target_calls == expected_round_sum(g, [float(v) for v in verdicts], flat(1.0))


def test_cost_model_rejects_bad_input():
    with pytest.raises(ValueError, match="gamma"):
        expected_round_sum(0, [0.5] * K, flat(1.0))
    with pytest.raises(ValueError, match="probabilities"):
        expected_round_sum(2, [1.5] * K, flat(1.0))
    with pytest.raises(ValueError, match="draft_cost"):
        predicted_speedup(2, [0.5] * K, [0.1] * 3, flat(1.0))


# ---- call patterns, through the engine ------------------------------------------------------------


def _key(c):
    return (c.model, c.kind, tuple(c.scales), c.kv_before, c.mask_rule)


def test_forced_verdicts_replay_the_engine(random_pair):
    """Forcing the verdicts a real run judged reproduces that run's calls."""
    for g in (1, 2, 3, 4):
        for seed, batch in ((0, 1), (1, 3)):
            trace = generate(random_pair, "speculative", list(range(batch)), seed, gamma=g, progressive=False).trace
            verdict = {}
            for rd in trace.rounds:
                verdict.update({k: True for k in rd.accepted_scales})
                if rd.corrected_scale is not None:
                    verdict[rd.corrected_scale] = False
            forced = generate(random_pair, "speculative", list(range(batch)), seed, gamma=g, progressive=False,
                              accept_override=verdict.__getitem__).trace
            assert [_key(c) for c in forced.calls] == [_key(c) for c in trace.calls]


def test_forced_call_counts(random_pair):
    all_pass = generate(random_pair, "speculative", [0], 0, gamma=4, progressive=False,
                        accept_override=lambda k: True).trace
    assert all_pass.target_calls == 3 and all_pass.draft_calls == 10
    assert [tuple(c.scales) for c in all_pass.calls if c.model == "target"] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]
    none_pass = generate(random_pair, "speculative", [0], 0, gamma=2, progressive=False,
                         accept_override=lambda k: False).trace
    assert none_pass.target_calls == 10 and none_pass.draft_calls == 19


def test_mode_patterns_cover_the_rows():
    pats = patterns.mode_patterns(K, [2, 3], [0.0, 1.0])
    names = [p.name for p in pats]
    assert names[:2] == [TARGET_ROW, "draft only"] and len(names) == len(set(names))
    assert {"D→T e=3", "T→D e=9", "D→T e=5 sd_mask 0"} <= set(names)
    forced = [p for p in pats if p.accept is not None]
    assert [(p.row.kwargs["gamma"], p.accept) for p in forced] == [(2, 0.0), (2, 1.0), (3, 0.0), (3, 1.0)]


# ---- tables ------------------------------------------------------------------------------------


def _cell(table: str, row: str, col: int) -> str:
    line = next(ln for ln in table.splitlines() if ln.startswith(f"| {row} |"))
    return [c.strip() for c in line.strip("|").split("|")][col]


def test_mode_table_ratios_are_against_target_only_of_the_same_run(random_pair):
    rows = [r for r in harness.table_rows("modes") if r.name in (TARGET_ROW, "draft only", "spec γ=2 exact")]
    plan = harness.modes_plan(10, batch=1, seeds=1, repeats=3)
    results = harness.measure(random_pair, rows, plan, log=lambda s: None)
    base = results[TARGET_ROW]
    assert len(base.walls) == 3
    for name in ("draft only", "spec γ=2 exact"):
        res = results[name]
        expected = [base.walls[r] / res.walls[r] for r in range(3)]
        assert harness.speedups(base, res) == pytest.approx(expected)
        table = report.modes_table(results)
        assert _cell(table, name, 5).startswith(f"{statistics.median(expected):.2f} [")
    assert _cell(report.modes_table(results), TARGET_ROW, 5) == "1.00 [1.00–1.00]"
    assert _cell(report.modes_table(results), "draft only", 2) == "0.0"        # target calls
    assert _cell(report.modes_table(results), "draft only", 3) == "10.0"       # draft calls


def test_measure_stops_at_the_deadline_after_whole_repeats(random_pair):
    rows = [r for r in harness.table_rows("modes") if r.name in (TARGET_ROW, "draft only")]
    logs = []
    results = harness.measure(random_pair, rows, harness.modes_plan(10, 1, 1, 4), deadline=0.0, log=logs.append)
    assert all(len(res.walls) == 1 for res in results.values())   # the first repeat always runs
    assert any("1 of 4 repeats" in line for line in logs)


def test_modes_rows_cover_the_brief():
    names = [r.name for r in harness.table_rows("modes")]
    for e in range(11):
        assert f"D→T e={e}" in names and f"T→D e={e}" in names
    assert {f"spec γ={g} exact" for g in (1, 2, 3, 4)} <= set(names)
    assert sum(n.startswith("spec γ=3 prob") for n in names) == 6 and "spec γ=3 top1 τ=0.5 λ=1" in names
    assert len(names) == len(set(names))
    schedules = {r.kwargs["schedule"] for r in harness.table_rows("modes") if r.mode == "schedule" and r.kwargs["sd_mask"] == 3}
    assert "DDDTTTTTTT" in schedules and "TTTDDDDDDD" in schedules


def test_report_runs_on_a_tiny_setting(tmp_path):
    """Every row of the report on a very small random pair (a narrow VQ-VAE keeps the 64 px decode cheap)."""
    vq = VQVAEConfig(vocab_size=64, z_channels=8, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, use_attn=False,
                     image_size=64)
    pair = make_random_pair("cpu", target=dict(depth=1, width=32, heads=1), draft=dict(depth=1, width=16, heads=1),
                            vqvae_cfg=vq)
    torch.manual_seed(0)
    clf = Classifier(ClassifierConfig(widths=(8, 16, 32), depth=1)).eval()
    text = report.build_report(pair, clf, torch.device("cpu"), images_per_class=1, batch=5, n_boot=5, n_real=40)
    rows = harness.table_rows("report")
    for r in rows:
        assert f"| {r.name} |" in text
    table = text.split("### Cost model")[0]
    assert _cell(table, TARGET_ROW, 4).startswith("1.00")
    assert _cell(table, TARGET_ROW, 8) == "0.000"     # ΔFID of target only against itself
    assert _cell(table, TARGET_ROW, 9) == "✗"        # 10 target calls > 5
    assert re.search(r"δ = \d+\.\d{3}", text)
    cost = text.split("### Cost model")[1]
    for g in (1, 2, 3, 4):
        assert f"| spec γ={g} exact |" in cost
    out = tmp_path / "B.md"
    tables.write_section(out, "report", text)
    assert out.read_text().count("| spec γ=1 exact |") == 2   # main table + cost model


def test_write_section_replaces_in_place(tmp_path):
    path = tmp_path / "B.md"
    path.write_text("# Title\n\nintro\n")
    tables.write_section(path, "a", "first")
    tables.write_section(path, "b", "other")
    tables.write_section(path, "a", "second")
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
        cli.main(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["generate", "--device", "cpu", "--precision", "fp16"], "not available on cpu"),
    (["modes", "--pair", "nope", "--device", "cpu"], "--pair must be"),
    (["report", "--pair", "random", "--classifier", "no/such/stem", "--device", "cpu"], "classifier not found"),
    (["profile", "--pair", "random", "--row", "nope", "--device", "cpu"], "unknown row"),
    (["report", "--pair", "random", "--max-minutes", "0", "--device", "cpu"], "--max-minutes must be > 0"),
    (["predict", "--from", "no/such/file.md", "--device", "cpu"], "no such file"),
    (["predict", "--from", "README.md", "--sections", "nope", "--device", "cpu"], "no section 'nope'"),
    (["official", "--var-repo", ".", "--device", "cpu"], "not a checkout of FoundationVision/VAR"),
])
def test_cli_clear_errors(argv, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        cli.main(argv)


def test_device_sections_run_small():
    """The floor and pattern sections of scripts/gpu_bench.sh, shrunk, on the CPU."""
    cpu = torch.device("cpu")
    floor = run_floor(["var-d1"], [1], cpu, precision="fp32", repeats=1, small=True)
    assert "| var-d1 | fp32 weights | 1 |" in floor and "weight-read floor" in floor
    pair = random_official_pair("var-d1", "var-d1", cpu, small=True)
    text = patterns.run_patterns(pair, cpu, batch=1, repeats=2, precision="fp32", gammas=[2], accepts=[1.0], auto=True)
    assert float(_cell(text, "spec γ=auto forced acceptance 1", 5)) > 0   # the planner's prediction
    assert _cell(text, TARGET_ROW, 1) == "10.0" and _cell(text, TARGET_ROW, 4).startswith("1.00")
    # forced acceptance 1 with γ = 2: five rounds, ten drafted scales
    assert _cell(text, "spec γ=2 forced acceptance 1", 1) == "5.0"
    assert _cell(text, "spec γ=2 forced acceptance 1", 2) == "10.0"
    assert _cell(text, "T→D e=3", 1) == "3.0" and _cell(text, "D→T e=5 sd_mask 0", 2) == "5.0"


# ---- the γ planner's benchmarks -----------------------------------------------------------------


def test_planner_table_runs_small():
    """Every row at each batch size, the auto row's rounds by γ, and the goals table."""
    vq = VQVAEConfig(vocab_size=64, z_channels=8, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, use_attn=False,
                     image_size=64)
    pair = make_random_pair("cpu", target=dict(depth=1, width=32, heads=1), draft=dict(depth=1, width=16, heads=1),
                            vqvae_cfg=vq)
    text = plans.run_planner(pair, torch.device("cpu"), batches=[1, 2], repeats=1, seeds=1, gammas=[1, 2])
    table = text.split("### Goals")[0]
    for b in (1, 2):
        for row in (TARGET_ROW, "spec γ=1 exact", "spec γ=2 exact", plans.AUTO_ROW):
            assert f"| {b} | {row} |" in table
    auto_rounds = [ln for ln in table.splitlines() if plans.AUTO_ROW in ln]
    assert all(re.search(r"\d+: \d+", ln) for ln in auto_rounds)
    goals = text.split("### Goals")[1]
    assert goals.count("met") >= 4 and "| 2 |" in goals


def _pattern_table(t_ms: float, d_ms: float, window_ms: dict) -> str:
    """A patterns table whose rows follow flat per-call costs: target step t, draft step d, window w: window_ms[w]."""
    lines = [f"| {TARGET_ROW} | 10.0 | 0.0 | {10 * t_ms:.1f} | 1.00 | — |", f"| draft only | 0.0 | 10.0 | {10 * d_ms:.1f} | 2.00 | — |"]
    for g, w in window_ms.items():
        calls = math.ceil(10 / g)
        lines.append(f"| spec γ={g} forced acceptance 1 | {calls:.1f} | 10.0 | {calls * w + 10 * d_ms:.1f} | 1.00 | 1.00 |")
    return "| pattern | target calls | draft calls | call ms | speed-up vs target only | predicted |\n|---|---|\n" + "\n".join(lines)


def test_planner_prices_measured_call_patterns():
    text = _pattern_table(20.0, 10.0, {1: 20.0, 2: 20.0, 3: 20.0, 4: 20.0})
    costs = plans.pattern_costs(plans.parse_pattern_rows(text))
    assert costs.target[0][0] == pytest.approx(0.02) and costs.draft[3][3] == pytest.approx(0.01)
    assert costs.target[0][9] == pytest.approx(0.02)   # windows never cheaper than narrower ones
    out = plans.predict_patterns(text, "flat")
    # every drafted scale passes: one round of ten, 10 t ÷ (10 d + t)
    assert _cell(out, "1", 1) == f"{200 / 120:.2f}" and _cell(out, "1", 2) == "10"
    assert _cell(out, "0", 1) == "1.00" and _cell(out, "0", 2) == " ".join(["0"] * 10)
    assert _cell(out, "1", 3).startswith(f"{200 / 300:.2f} / ")   # fixed γ = 1: ten draft + ten target calls
