"""story.py: the round-by-round account, the why text and the what-if text, from traces alone."""
import numpy as np
import pytest

from sdvar_core import economics, story
from sdvar_core.trace import ACCEPTED, CORRECTED, TARGET, Candidate, ModelCall, PlanRecord, RoundRecord, ScaleRecord, Trace

A, C, T = ACCEPTED, CORRECTED, TARGET


def known_trace() -> Trace:
    """Three scales (1×1, 2×2, 3×3), one image. Round 1 drafts all three: scale 1 passes, scale 2 has a
    rejection (finalized with the correction), scale 3's draft is dropped. Round 2: the planner picks γ = 0
    and the target makes scale 3 alone."""
    i8 = lambda x: np.array([x], dtype=np.int8)  # noqa: E731
    f = lambda x: np.array([x], dtype=np.float32)  # noqa: E731
    scales = [
        ScaleRecord(0, 1, "draft+target", np.array([[5]]), i8([A]), np.array([[5]]), f([0.5]), f([0.4])),
        ScaleRecord(1, 2, "draft+target", np.array([[1, 9, 3, 4]]), i8([A, C, A, A]), np.array([[1, 2, 3, 4]]),
                    f([0.3, 0.1, 0.5, 0.6]), f([0.3, 0.4, 0.2, 0.6])),
        ScaleRecord(2, 3, "target", np.arange(9)[None], i8([T] * 9)),
    ]
    calls = [ModelCall("draft", "step", [0], 1, 0, 1, None, 0.000, 0.001),
             ModelCall("draft", "step", [1], 4, 1, 5, None, 0.001, 0.002),
             ModelCall("draft", "step", [2], 9, 5, 14, None, 0.002, 0.004),
             ModelCall("target", "verify", [0, 1, 2], 14, 0, 14, 3, 0.005, 0.010),
             ModelCall("target", "step", [2], 9, 5, 14, None, 0.031, 0.035)]
    plan = PlanRecord(start=2, draft_next=2, chosen=0, candidates=[Candidate(0, 1.0, 0.01, 0.01, 1.0),
                                                                   Candidate(1, 1.0, 0.02, 0.02, 0.5)],
                      pass_prob=[0.9, 0.5, 0.1], observations=2.0, t=0.030)
    rounds = [RoundRecord(0, 3, [0, 1, 2], [0, 1], [0], 1, []),
              RoundRecord(2, 0, [], [2], [], None, [], plan=plan)]
    settings = {"mode": "speculative", "seed": 0, "class_ids": [0], "gamma": "auto", "accept": "prob", "tau": 1.0,
                "lenience": 1.0, "keep_draft_rejected": False}
    return Trace(settings, [1, 2, 3], scales, calls, [], rounds,
                 {"total": 0.04, "transformer": 0.015, "decode": 0.004, "overhead": 0.021, "progressive": 0.0})


def test_round_story_of_a_known_trace():
    trace = known_trace()
    text = story.round_story(trace, 0)
    for part in [
        "### Round 1 of 2: scales 1–3 drafted (γ = 3), scales 1–2 finalized",
        "**Draft**: 3 calls, one per drafted scale: scale 1 (1 position, KV 0 → 1); scale 2 (4 positions, KV 1 → 5); "
        "scale 3 (9 positions, KV 5 → 14). It proposed 14 tokens.",
        "**Target**: one verify call for scales 1 · 1×1, 2 · 2×2 and 3 · 3×3 at once — query length 14, KV cache "
        "0 → 14, sd_mask 3 · VAR native (block-causal).",
        "**Verdict**: scale 1 · 1×1: 1 of 1 accepted; scale 2 · 2×2: 3 of 4 accepted, 1 corrected by the target. "
        "Scale 2 did not pass, so the round ends there: it is finalized with the target's corrections, and the "
        "drafted scales after it are dropped",
        "**Discarded**: the draft's scale 3 · 3×3 (9 tokens)",
        "**Rollback**: both KV caches roll back to 5 positions (scales 1–2); the next round starts at scale 3.",
    ]:
        assert part in text
    assert "Plan" not in text   # a fixed-γ round has no plan
    text = story.round_story(trace, 1)
    for part in [
        "### Round 2 of 2: the target alone makes scale 3 (γ = 0)",
        "pass probabilities 0.10 (scale 3 on)",
        "γ = 0: finish in 10.0 ms (1.00×), γ = 1: finish in 20.0 ms (0.50×)",
        "chose **γ = 0**: no draft was predicted at least 3 % faster than the target alone",
        "one step call fed scale 3 · 3×3 — query length 9, KV cache 5 → 14",
        "a γ = 0 round is exactly what the target alone does",
        "that was the last scale",
    ]:
        assert part in text
    overview = story.rounds_overview(trace)
    assert overview.startswith("**2 rounds, 2 target calls, 3 draft calls**")
    assert "1: γ 3, drafted 1–3, kept 1, corrected 2" in overview and "2: γ 0, target alone" in overview
    with pytest.raises(ValueError, match="round must be an integer in 1..2"):
        story.round_story(trace, 2)


def test_round_calls_and_spans_of_a_known_trace():
    trace = known_trace()
    groups = story.round_calls(trace)
    assert [[c.kind for c in g] for g in groups] == [["step", "step", "step", "verify"], ["step"]]
    assert story.round_span(trace, 0) == (0.0, 0.010)
    assert story.round_span(trace, 1) == (0.030, 0.035)   # from the moment the round was planned
    assert story.rollback_scale(trace, trace.rounds[0]) == 2
    broken = known_trace()
    broken.calls = broken.calls[:-1]
    with pytest.raises(ValueError, match="do not match round 2"):
        story.round_calls(broken)


def test_why_text_of_a_known_trace():
    text = story.why_text(known_trace())
    assert "probability **0.85** on average" in text            # (1 + 4 · 0.8125) / 5 tokens
    assert "scale 1 (1 token) 1.00, scale 2 (4 tokens) 0.25" in text   # min(1, 0.1/0.4) = 0.25 the only < 1
    assert "1 of 2 rounds finalized a single scale: **2 target calls** for 3 scales" in text


def test_stories_of_a_real_run_agree_with_its_calls(three_runs):
    trace = three_runs["spec"]   # exact rule, γ = 3, two images
    groups = story.round_calls(trace)
    assert sum(len(g) for g in groups) == len(trace.calls)
    for i, rd in enumerate(trace.rounds):
        text = story.round_story(trace, i)
        keep = story.rollback_scale(trace, rd)
        if i + 1 < len(trace.rounds):   # the next target call starts from the cache the story rolled back to
            assert groups[i + 1][-1].kv_before == sum(p * p for p in trace.patch_nums[:keep])
            assert f"the next round starts at scale {rd.finalized[-1] + 2}" in text
        assert f"query length {groups[i][-1].query_len}" in text
        assert "(over the batch of 2)" in text
    assert f"**{trace.target_calls} target calls**" in story.why_text(trace)


def test_run_story_and_why_text_without_rounds(three_runs):
    trace = three_runs["schedule"]
    text = story.run_story(trace)
    assert "no speculative rounds" in text
    assert "target hand-off prefill: scales 1–5 — query length 55, KV 0 → 55, sd_mask 1 · SD, including current" in text
    assert "verified no drafted tokens" in story.why_text(trace)


def test_whatif_text(three_runs):
    runs = {"main": three_runs["spec"], "target": three_runs["target"]}
    w = economics.cost_whatif(runs)
    text = story.whatif_text(w)
    assert f"measured **{w.measured_speedup:.2f}×**" in text
    assert "γ planner's own cost model" in text
    for r in economics.REGIMES:
        assert r.sentence in text
