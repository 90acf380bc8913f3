"""What a run did, told round by round in plain language, from its Trace alone.

`round_story(trace, i)`: which scales the draft proposed, the target's single call (query length,
KV cache before → after, attention mask), how many tokens were accepted / corrected per scale,
what was discarded, where both KV caches rolled back to, and — for gamma="auto" — the planner's
candidates and why it chose its γ. `run_story(trace)` tells a run without rounds (one model alone,
a hand-off schedule) call by call. `round_calls` / `round_span` tie each round to its model calls,
so a figure can highlight the round on the timeline. Scales are 1-based in the text.
"""
from __future__ import annotations

from . import masks
from .config import ScaleLayout
from .trace import ACCEPTED, CORRECTED, DRAFT, INPUT, ModelCall, RoundRecord, Trace


def _scales(ks: list[int], patch_nums) -> str:
    """[3, 4] → 'scales 4 · 4×4 and 5 · 5×5'; [] → 'no scale'."""
    if not ks:
        return "no scale"
    names = [f"{k + 1} · {patch_nums[k]}×{patch_nums[k]}" for k in ks]
    head = "scale" if len(ks) == 1 else "scales"
    return f"{head} {names[0]}" if len(ks) == 1 else f"{head} {', '.join(names[:-1])} and {names[-1]}"


def _range(ks: list[int]) -> str:
    """[3, 4, 5] → '4–6'; [3] → '4' (1-based)."""
    return f"{ks[0] + 1}" if len(ks) == 1 else f"{ks[0] + 1}–{ks[-1] + 1}"


def _plural(ks: list[int]) -> str:
    return "scale" if len(ks) == 1 else "scales"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _mask(rule: int | None) -> str:
    if rule is None:
        return "no mask (block-causal: every cached key and its own scale)"
    return f"sd_mask {rule} · {masks.rule_name(rule)}"


def round_calls(trace: Trace) -> list[list[ModelCall]]:
    """The model calls of each round, in order: γ draft calls then one target call (γ = 0: one target call)."""
    out, i, calls = [], 0, trace.calls
    for rd in trace.rounds:
        n = len(rd.drafted) + 1
        group = calls[i:i + n]
        want = ["draft"] * len(rd.drafted) + ["target"]
        if [c.model for c in group] != want:
            raise ValueError(f"the trace's calls do not match round {len(out) + 1} (expected {want})")
        out.append(group)
        i += n
    if i != len(calls):
        raise ValueError(f"the trace has {len(calls) - i} call(s) after its last round")
    return out


def round_span(trace: Trace, i: int) -> tuple[float, float]:
    """(first call's start, last call's end) of round i (0-based), seconds since the run started."""
    group = round_calls(trace)[check_round(trace, i)]
    plan = trace.rounds[i].plan
    start = min([group[0].t_start] + ([plan.t] if plan is not None else []))
    return start, group[-1].t_end


def check_round(trace: Trace, i) -> int:
    n = len(trace.rounds)
    if n == 0:
        raise ValueError("this run has no speculative rounds")
    if isinstance(i, bool) or int(i) != i or not 0 <= int(i) < n:
        raise ValueError(f"round must be an integer in 1..{n}, got {i if isinstance(i, bool) else int(i) + 1}")
    return int(i)


def rollback_scale(trace: Trace, rd: RoundRecord) -> int:
    """How many scales both KV caches keep after the round: up to the first finalized scale with a
    replaced token (relaxed rules may keep draft tokens after it), else every finalized scale."""
    last = rd.finalized[-1]
    if not rd.drafted:
        return last + 1
    changed = [k for k in rd.finalized if (trace.scales[k].status == CORRECTED).any()]
    keep = changed[0] if changed else last + 1
    return min(keep, last) + 1


def _plan_text(plan) -> str:
    cands = ", ".join(f"γ = {c.gamma}: finish in {c.value * 1e3:.1f} ms ({c.speedup:.2f}×)" for c in plan.candidates)
    zero = plan.candidates[0]
    best = min(plan.candidates[1:], key=lambda c: (c.value, c.gamma), default=None)
    if plan.chosen == 0:
        why = ("no draft was predicted at least 3 % faster than the target alone" if best is not None else
               "no scale was left to draft")
    else:
        chosen = next(c for c in plan.candidates if c.gamma == plan.chosen)
        why = (f"drafting {plan.chosen} scale(s) was predicted to finish {1 - chosen.value / zero.value:.0%} sooner "
               f"than the target alone (a draft must win by 3 %)")
    probs = " ".join(f"{p:.2f}" for p in plan.pass_prob[plan.start:])
    return (f"**Plan** (γ auto): from this machine's measured call costs and pass probabilities {probs} "
            f"(scale {plan.start + 1} on), the planner compared {cands} — and chose **γ = {plan.chosen}**: {why}.")


def _verdict(trace: Trace, k: int, batch_note: str) -> str:
    rec = trace.scales[k]
    acc, cor, kept = (int((rec.status == code).sum()) for code in (ACCEPTED, CORRECTED, DRAFT))
    parts = [f"{acc} of {int((rec.status != INPUT).sum())} accepted"]   # a picture's kept tokens are not judged
    if cor:
        parts.append(f"{cor} corrected by the target")
    if kept:
        parts.append(f"{kept} rejected but kept (relaxed)")
    text = f"{_scales([k], trace.patch_nums)}: " + ", ".join(parts) + batch_note
    return text + (" — judged against a stale condition (relaxed)" if rec.stale else "")


def round_story(trace: Trace, i: int) -> str:
    """Round i (0-based) of a speculative run in plain language (Markdown)."""
    i = check_round(trace, i)
    rd, group = trace.rounds[i], round_calls(trace)[i]
    layout, pn = ScaleLayout(tuple(trace.patch_nums)), trace.patch_nums
    n, B = len(trace.rounds), trace.scales[0].status.shape[0]
    batch_note = f" (over the batch of {B})" if B > 1 else ""
    lines = []
    if rd.plan is not None:
        lines.append(_plan_text(rd.plan))
    target = group[-1]
    if not rd.drafted:
        k = rd.finalized[0]
        head = f"### Round {i + 1} of {n}: the target alone makes scale {k + 1} (γ = 0)"
        lines.append(f"**Target**: one step call fed {_scales([k], pn)} — query length {target.query_len}, "
                     f"KV cache {target.kv_before} → {target.kv_after}, {_mask(target.mask_rule)}. Nothing was "
                     "drafted: a γ = 0 round is exactly what the target alone does. The draft's cache stays where it "
                     "was and catches up in one call when it drafts again.")
        return "\n\n".join([head] + [f"- {line}" for line in lines]
                           + [f"- **After**: the next round starts at scale {k + 2}." if k + 1 < len(pn)
                              else "- **After**: that was the last scale; the image is decoded."])
    head = (f"### Round {i + 1} of {n}: {_plural(rd.drafted)} {_range(rd.drafted)} drafted (γ = {rd.gamma}), "
            f"{_plural(rd.finalized)} {_range(rd.finalized)} finalized")
    draft_calls = group[:-1]
    catch = draft_calls[0].scales[0] < rd.start
    steps = "; ".join(f"{_plural(c.scales)} {_range(c.scales)} ({_count(c.query_len, 'position')}, KV "
                      f"{c.kv_before} → {c.kv_after})" for c in draft_calls)
    lines.append(f"**Draft**: {_count(len(draft_calls), 'call')}, one per drafted scale: {steps}"
                 + (f"; its first call also caught up scale(s) {_range(list(range(draft_calls[0].scales[0], rd.start)))}"
                    " it skipped during γ = 0 rounds" if catch else "")
                 + f". It proposed {sum(layout.sizes[k] for k in rd.drafted) * B} tokens.")
    lines.append(f"**Target**: one verify call for {_scales(rd.drafted, pn)} at once — query length "
                 f"{target.query_len}, KV cache {target.kv_before} → {target.kv_after}, {_mask(target.mask_rule)}. "
                 "It processed every drafted token: a verify call saves calls, not work.")
    judged = rd.finalized
    verdicts = [_verdict(trace, k, batch_note) for k in judged]
    ended = rd.corrected_scale is not None
    verdict = "; ".join(verdicts) + "."
    if ended:
        verdict += (f" Scale {rd.corrected_scale + 1} did not pass{' for the whole batch' if B > 1 else ''}, so the "
                    "round ends there: "
                    "it is finalized with the target's corrections"
                    + (", and the drafted scales after it are dropped (they were built on tokens that changed)."
                       if rd.corrected_scale < rd.drafted[-1] else "."))
    else:
        verdict += " Every drafted scale passed."
    lines.append(f"**Verdict**: {verdict}")
    dropped = [k for k in rd.drafted if k not in rd.finalized]
    if dropped:
        lines.append(f"**Discarded**: the draft's {_scales(dropped, pn)} "
                     f"({sum(layout.sizes[k] for k in dropped) * B} tokens) and the target's logits for them.")
    else:
        lines.append("**Discarded**: nothing.")
    keep = rollback_scale(trace, rd)
    nxt = rd.finalized[-1] + 1
    after = (f"**Rollback**: both KV caches roll back to {layout.ends[keep - 1]} positions (scales 1–{keep}); "
             + (f"the next round starts at scale {nxt + 1}." if nxt < len(pn) else "that was the last scale."))
    lines.append(after)
    return "\n\n".join([head] + [f"- {line}" for line in lines])


def rounds_overview(trace: Trace) -> str:
    """One line per round: γ, scales finalized, target calls so far."""
    if not trace.rounds:
        return run_story(trace)
    rows = []
    for i, rd in enumerate(trace.rounds):
        what = ("target alone" if not rd.drafted else
                f"drafted {_range(rd.drafted)}, kept {_range(rd.accepted_scales) if rd.accepted_scales else 'none'}"
                + (f", corrected {rd.corrected_scale + 1}" if rd.corrected_scale is not None else ""))
        rows.append(f"{i + 1}: γ {rd.gamma}, {what}")
    return (f"**{len(trace.rounds)} rounds, {trace.target_calls} target calls, {trace.draft_calls} draft calls** — "
            + " · ".join(rows))


def run_story(trace: Trace) -> str:
    """A run without speculative rounds, call by call (Markdown)."""
    st = trace.settings
    pn = trace.patch_nums
    lines = [f"This **{st['mode']}** run has no speculative rounds: each scale is made by one model, no token is "
             "verified, nothing is rolled back."]
    for c in trace.calls:
        kind = {"step": "step", "prefill": "hand-off prefill", "verify": "verify"}[c.kind]
        lines.append(f"- {c.model} {kind}: {_scales(c.scales, pn) if len(c.scales) <= 2 else 'scales ' + _range(c.scales)}"
                     f" — query length {c.query_len}, KV {c.kv_before} → {c.kv_after}, {_mask(c.mask_rule)}")
    return "\n".join(lines)


def why_text(trace: Trace) -> str:
    """Why this run made the target calls it made, in three sentences (Markdown)."""
    from .economics import ASSUMED_ALPHA, format_prob, mean_alpha, scale_odds

    odds, K = scale_odds(trace), len(trace.patch_nums)
    verified = [o for o in odds if o.pass_prob is not None]
    if not verified:
        if any(o.planned is not None for o in odds):
            last = odds[-1]
            return (f"The γ planner drafted nothing the target verified in this run: with the pass probabilities it "
                    f"learned from earlier rounds (scale {K}: {format_prob(last.planned)}) no draft was predicted to "
                    f"pay, so every round was the target alone ({trace.target_calls} target calls). The chart shows "
                    "the planner's estimates; a fixed γ shows the measured odds.")
        return (f"This **{trace.settings['mode']}** run verified no drafted tokens, so there are no odds to show. "
                f"The dotted line is what a per-token acceptance of {ASSUMED_ALPHA} would give: a scale of n tokens "
                f"passes with {ASSUMED_ALPHA}ⁿ. Generate in speculative mode (a fixed γ) to measure them.")
    B = trace.scales[0].status.shape[0]
    alpha = mean_alpha(odds)
    picks = sorted({verified[0].scale, verified[len(verified) // 2].scale, verified[-1].scale})
    sizes = ", ".join(f"scale {k + 1} ({odds[k].tokens} token{'s' * (odds[k].tokens > 1)}) "
                      f"{format_prob(odds[k].pass_prob)}" for k in picks)
    multi = sum(len(r.finalized) > 1 for r in trace.rounds)
    rounds = len(trace.rounds)
    text = (f"The target kept a drafted token with probability **{alpha:.2f}** on average (min(1, p/q)), but a "
            f"drafted scale survives only if **every** one of its tokens is kept: {sizes}"
            + (f" per image; a round needs all {B} images to pass" if B > 1 else "") + ". "
            f"A round stops at its first scale that fails, so {rounds - multi} of {rounds} rounds finalized a single "
            f"scale: **{trace.target_calls} target calls** for {K} scales, against {K} for the target alone. "
            "And the target still processes every token it verifies: a call saved saves only the call's fixed "
            "cost — the what-if below shows on which hardware that pays.")
    return text


def whatif_text(w) -> str:
    """The cost what-if in words (`economics.WhatIf`): the click measured and predicted, what pays, the
    assumptions, and one sentence per hardware regime (Markdown)."""
    from .economics import regime_text

    by_label = {p.label: p for p in w.predictions}
    click = by_label.get(w.click_label)
    lines = []
    if w.measured_speedup is not None:
        pred = (f"; with these knobs the cost model predicts **{click.speedup:.2f}×**"
                if click is not None and click.speedup is not None else "")
        lines.append(f"**This click** ({w.click_label}) measured **{w.measured_speedup:.2f}×** the target alone{pred}.")
    lossless = [p for p in w.predictions if p.lossless and p.speedup is not None and p.kind != "click"]
    best = max(lossless, key=lambda p: p.speedup, default=None)
    if best is not None:
        verdict = ("pays" if best.speedup > 1.005 else "does not pay: the best exact choice is the target alone"
                   if best.kind == "auto" else "does not pay")
        lines.append(f"**Exact (lossless) speculation {verdict}** here: best {best.label} at {best.speedup:.2f}×"
                     + (" — γ auto drafts nothing where drafting cannot pay." if best.kind == "auto" and
                        best.speedup <= 1.005 else "."))
    lossy = [p for p in w.predictions if not p.lossless and p.kind == "handoff" and p.speedup is not None]
    if lossy:
        top = max(lossy, key=lambda p: p.speedup)
        lines.append(f"**Hand-offs** that give the large scales to the draft reach {top.speedup:.2f}× ({top.label}) — "
                     "lossy: the Compare tab's frontier shows what they cost in quality.")
    src = {"measured": "measured ∏ min(1, p/q)", "planner": "the γ planner's estimate",
           "measured mean": "the run's mean per-token acceptance", "assumed": "an assumed per-token acceptance"}
    used = ", ".join(dict.fromkeys(src[s] for s in w.sources))
    lines.append(f"How: this click's measured calls priced by the γ planner's own cost model (draft/target cost per "
                 f"call {w.measured_ratio:.2f} as measured); pass probabilities per scale from {used}; the target "
                 f"alone would take {w.target_seconds * 1e3:.0f} ms with these knobs.")
    lines += w.notes
    return "\n\n".join(lines) + "\n\n" + regime_text()
