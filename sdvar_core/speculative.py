"""Speculative decoding over scales: the draft proposes γ scales, the target checks them in one call.

Exact rule (accept 'prob', τ = 1, λ = 1): each drafted token x is kept with probability
min(1, p(x)/q(x)), else replaced by a draw from normalize(max(0, p − q)); the first scale
with a replacement is finalized with its corrections and the rest of the draft is dropped.
That keeps the output distribution equal to the target's. Relaxed rules pass a scale when
its accepted fraction ≥ τ and go on judging later scales against a condition built from the
draft's uncorrected tokens (flagged `stale` in the trace).

With gamma="auto" the planner (`run.planner`, see `planner`) picks γ before each round from
finished rounds only, 0 meaning the target makes the next scale alone; after the round it learns
how the judged scales went. A γ chosen before the draft exists cannot favour any token, so the
exact rule stays exact.

On a picture (`picture.Context`) the rounds start after its prefix, and with a kept region the drafted
tokens there are the picture's: they count as accepted and only the generated tokens are judged.
Tokens of one scale are sampled independently given the earlier scales, so replacing kept positions
after sampling leaves the others' distribution alone, and the exact rule stays exact.
"""
from __future__ import annotations

import numpy as np
import torch

from .planner import batch_pass_probability
from .sampling import accept_tokens, gather, sample
from .trace import ACCEPTED, CORRECTED, DRAFT, RoundRecord


def run_speculative(run) -> None:
    """Fill run.canvas scale by scale with draft→verify rounds (see engine.Run)."""
    D, T, canvas, s = run.runners["draft"], run.runners["target"], run.canvas, run.s
    start, gamma, plan = run.first, s.gamma, None
    while start < run.K:
        if run.planner is not None:                         # γ from finished rounds only
            plan = run.planner.plan(start, D.next_scale, run.rec.now())
            gamma = plan.chosen
        if gamma == 0:                                      # the target makes the scale alone
            run.make_scale("target", start)
            run.rounds.append(RoundRecord(start=start, gamma=0, drafted=[], finalized=[start], accepted_scales=[],
                                          corrected_scale=None, stale_scales=[], plan=plan))
            start += 1
            continue
        drafted = list(range(start, min(start + gamma, run.K)))
        q, x = {}, {}
        for k in drafted:                                   # draft: γ scales on D's own KV cache
            q[k] = run.distribution(D.forward_upto(k)[k], k, "draft")
            x[k] = run.keep_input(k, sample(q[k], run.g_sample))
            canvas.push(k, x[k], "draft")
        logits = T.forward_upto(drafted[-1], "verify", s.verify_mask)   # target: one call for all of them
        final, passed, stale = judge(run, drafted, q, x, logits)
        changed = [k for k, tokens in zip(drafted, final) if not torch.equal(tokens, x[k])]
        last = start + len(final) - 1
        keep = changed[0] if changed else last + 1          # canvas scales < keep hold final tokens
        canvas.truncate(keep)
        for k in range(keep, last + 1):                     # rebuild f_hat from the final tokens
            canvas.push(k, final[k - start], "target")
        valid = min(keep, last)                             # cached inputs of scales ≤ valid are still right
        D.rollback(valid + 1)
        T.rollback(valid + 1)
        run.rounds.append(RoundRecord(start=start, gamma=gamma, drafted=drafted, finalized=list(range(start, last + 1)),
                                      accepted_scales=drafted[:passed], corrected_scale=last if passed < len(final) else None,
                                      stale_scales=stale, plan=plan))
        if run.planner is not None:
            observe(run, drafted[:len(final)], passed)
        run.finalize(last + 1)
        if s.adaptive_gamma:
            gamma = min(gamma + 1, run.K) if passed == len(drafted) else max(gamma - 1, 1) if passed == 0 else gamma
        start = last + 1


def judge(run, drafted, q, x, logits):
    """Test drafted scales in order against the target's logits.

    Returns (final tokens of each finalized scale, number of scales that passed for every
    sample, scales judged against a stale condition). Decisions are per sample; the round
    stops at the first scale that some sample fails, which keeps the exact rule exact.
    """
    s, final, stale, any_replaced = run.s, [], [], False
    for k in drafted:
        p = run.distribution(logits[k], k, "target")
        accepted, replacement = accept_tokens(s.accept, p, q[k], x[k], run.g_accept, s.lenience)
        if run.accept_override is not None:                                  # a forced verdict (benchmarks)
            accepted = torch.full_like(accepted, bool(run.accept_override(k)))
        accepted, share = verdict(run, k, accepted)
        passes = share >= s.tau                                              # (B,)
        keep = accepted | (passes[:, None] & s.keep_draft_rejected)
        tokens = torch.where(keep, x[k], replacement)
        status = run.mark_input(k, torch.where(accepted, ACCEPTED, torch.where(keep, DRAFT, CORRECTED)))
        if any_replaced:
            stale.append(k)
        run.record_scale(k, "draft+target", tokens, status, draft_tokens=x[k], p_draft=gather(p, x[k]),
                         q_draft=gather(q[k], x[k]), stale=any_replaced)
        final.append(tokens)
        if not passes.all():
            return final, len(final) - 1, stale
        any_replaced = any_replaced or not torch.equal(tokens, x[k])
    return final, len(final), stale


def verdict(run, k: int, accepted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(accepted (B, pn²) with a picture's kept positions accepted as drafted, (B,) share of the judged
    tokens accepted). Kept tokens are the picture's, not judged; a scale with none left to judge passes."""
    kept = run.kept(k)
    if kept is None:
        return accepted, accepted.float().mean(dim=1)
    judged = int((~kept).sum())
    if not judged:
        return accepted | kept, accepted.new_ones(len(accepted), dtype=torch.float)
    share = (accepted & ~kept).float().sum(dim=1) / judged
    return accepted | kept, share


def observe(run, judged: list[int], passed: int) -> None:
    """Tell the planner how the judged scales went: under the exact rule the probability that the whole
    batch passes given the drafted tokens (∏ min(1, p/q)), otherwise the outcome (relaxed, forced)."""
    for i, k in enumerate(judged):
        if run.s.exact and run.accept_override is None:
            rec, kept = run.records[k], run.kept(k)
            p, q = rec.p_draft, rec.q_draft
            if kept is not None:   # kept tokens always pass
                p, q = (np.where(kept.cpu().numpy(), 1.0, a) for a in (p, q))
            run.planner.observe(k, batch_pass_probability(p, q))
        else:
            run.planner.observe(k, float(i < passed))
