"""CFG, top-k/top-p filtering, seeded sampling and the acceptance tests."""
import pytest
import torch

from sdvar_core.sampling import (accept_tokens, cfg_mix, filter_logits, guidance,
                                 probabilities, residual, sample, smooth_weights)


def test_guidance_ramp_and_mix():
    assert guidance(2.0, 0, 10) == 0 and guidance(2.0, 9, 10) == 2.0
    cond, uncond = torch.randn(3, 4, 7), torch.randn(3, 4, 7)
    mixed = cfg_mix(torch.cat((cond, uncond)), 0.5)
    assert torch.allclose(mixed, 1.5 * cond - 0.5 * uncond)


@pytest.mark.parametrize("top_k,top_p", [(1, 1.0), (3, 1.0), (0, 0.01), (0, 0.5), (5, 0.3), (50, 0.9)])
def test_filters_keep_the_most_likely_token(top_k, top_p):
    torch.manual_seed(0)
    logits = torch.randn(4, 9, 50) * 3
    kept = filter_logits(logits, top_k, top_p) > float("-inf")
    assert kept.gather(-1, logits.argmax(-1, keepdim=True)).all()
    if top_k:
        assert (kept.sum(-1) <= top_k).all()
    p = probabilities(logits, top_k, top_p)
    assert torch.allclose(p.sum(-1), torch.ones(4, 9))


def test_top_k_keeps_ties_and_top_p_keeps_the_nucleus():
    logits = torch.tensor([[[3.0, 2.0, 2.0, 0.0]]])
    assert (filter_logits(logits, 2) > float("-inf")).sum() == 3
    probs = torch.tensor([[[0.5, 0.3, 0.15, 0.05]]])
    kept = filter_logits(probs.log(), 0, 0.75) > float("-inf")
    assert kept.tolist() == [[[True, True, False, False]]]


def test_same_seed_same_tokens_other_seed_different():
    p = torch.softmax(torch.randn(2, 64, 100), -1)
    a = sample(p, torch.Generator().manual_seed(1))
    b = sample(p, torch.Generator().manual_seed(1))
    c = sample(p, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_exact_acceptance_keeps_identical_distributions():
    p = torch.softmax(torch.randn(2, 30, 20), -1)
    x = sample(p, torch.Generator().manual_seed(0))
    accepted, _ = accept_tokens("prob", p, p.clone(), x, torch.Generator().manual_seed(0))
    assert accepted.all()


def test_exact_acceptance_matches_target_distribution():
    """Accept with min(1, p/q), else resample from (p−q)+: the result is distributed as p."""
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.1, 0.2, 0.3, 0.4])
    n = 200_000
    P, Q = p.expand(1, n, 4), q.expand(1, n, 4)
    x = sample(Q, g)
    accepted, repl = accept_tokens("prob", P, Q, x, g)
    out = torch.where(accepted, x, repl)
    freq = torch.bincount(out.flatten(), minlength=4).float() / n
    assert (freq - p).abs().max() < 5 * (0.25 / n) ** 0.5
    assert abs(accepted.float().mean().item() - torch.minimum(p, q).sum().item()) < 0.01


def test_top1_rule_and_residual():
    p = torch.tensor([[[0.1, 0.7, 0.2]]])
    acc, _ = accept_tokens("top1", p, p, torch.tensor([[1]]), None)
    assert acc.item()
    acc, _ = accept_tokens("top1", p, p, torch.tensor([[2]]), None)
    assert not acc.item()
    r = residual(torch.tensor([0.5, 0.5, 0.0]), torch.tensor([0.25, 0.75, 0.0]))
    assert torch.allclose(r, torch.tensor([1.0, 0.0, 0.0]))
    same = torch.tensor([0.2, 0.8])
    assert torch.allclose(residual(same, same), same)  # no mass left: fall back to p
    with pytest.raises(ValueError, match="rule"):
        accept_tokens("kl", p, p, torch.tensor([[1]]), None)


def test_smooth_weights_follow_the_filtered_distribution():
    p = probabilities(torch.randn(2, 16, 40) * 2, top_k=5)
    w_first = smooth_weights(p, 0, 10, torch.Generator().manual_seed(0))
    w_last = smooth_weights(p, 9, 10, torch.Generator().manual_seed(0))
    for w in (w_first, w_last):
        assert torch.allclose(w.sum(-1), torch.ones(2, 16), atol=1e-5)
        assert (w[p == 0] == 0).all()                      # filtered-out codes get no weight
    assert w_last.max(-1).values.mean() > w_first.max(-1).values.mean()   # colder at the last scale
    again = smooth_weights(p, 0, 10, torch.Generator().manual_seed(0))
    assert torch.equal(w_first, again)


def test_sampler_matches_probabilities_and_never_draws_zero_mass():
    from sdvar_core.sampling import sample_rows

    p = torch.tensor([0.0, 0.1, 0.0, 0.6, 0.3, 0.0])
    n = 100_000
    x = sample_rows(p.expand(n, 6), torch.Generator().manual_seed(3))
    freq = torch.bincount(x, minlength=6).float() / n
    assert (freq[p == 0] == 0).all()
    assert ((freq - p).abs() <= 5 * torch.sqrt(p * (1 - p) / n) + 1e-9).all()
    last_only = torch.tensor([[0.0, 0.0, 1.0, 0.0]]).expand(1000, 4)
    assert (sample_rows(last_only, torch.Generator().manual_seed(0)) == 2).all()
