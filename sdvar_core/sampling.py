"""CFG mix, top-k/top-p filtering, sampling with an explicit generator, and speculative acceptance.

Pure tensor functions: no models. Shapes: B batch, n tokens of one scale, V vocab.
"""
from __future__ import annotations

import torch


def guidance(cfg: float, k: int, num_scales: int) -> float:
    """VAR's linear CFG ramp t = cfg·k/(K-1): no guidance at the first scale, full at the last."""
    return cfg * k / max(num_scales - 1, 1)


def cfg_mix(logits: torch.Tensor, t: float) -> torch.Tensor:
    """logits (2B, n, V) as [cond; uncond] → (1+t)·cond − t·uncond, (B, n, V)."""
    cond, uncond = logits.chunk(2, dim=0)
    return (1 + t) * cond - t * uncond


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Top-k then top-p filtering, −inf outside; a new tensor. logits (..., V).

    Top-k keeps every logit ≥ the k-th largest (ties kept); top-p drops the smallest
    entries whose cumulative probability stays ≤ 1 − top_p. The argmax always survives.
    """
    V = logits.shape[-1]
    out = logits.float().clone()
    if 0 < top_k < V:
        kth = out.topk(int(top_k), dim=-1).values[..., -1:]
        out.masked_fill_(out < kth, float("-inf"))
    if 0 < top_p < 1:
        sorted_logits, order = out.sort(dim=-1)  # ascending
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cum <= 1 - top_p
        drop_sorted[..., -1] = False
        out.masked_fill_(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return out


def probabilities(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The distribution actually sampled from: softmax of the filtered logits, (..., V)."""
    return filter_logits(logits, top_k, top_p).softmax(dim=-1)


def sample_rows(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row by inverse CDF: probs (R, V) → LongTensor (R,).

    One uniform per row from `generator` (torch.multinomial is several times slower on the CPU).
    A zero-probability entry is never drawn: the search finds the first CDF value strictly above a
    target kept strictly below the total.
    """
    cdf = probs.cumsum(-1)
    total = cdf[:, -1:]
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=cdf.dtype)
    target = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))  # strictly below the total
    return torch.searchsorted(cdf, target, right=True).squeeze(-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per token: probs (B, n, V) → LongTensor (B, n)."""
    B, n, V = probs.shape
    return sample_rows(probs.reshape(-1, V), generator).view(B, n)


def smooth_weights(probs: torch.Tensor, k: int, num_scales: int, generator: torch.Generator | None) -> torch.Tensor:
    """VAR's `more_smooth`: Gumbel-softmax weights over the codebook for a soft embedding, (B, n, V).

    softmax((log p · (1 + r) + g) / τ) with r = k/(K-1), τ = max(0.27·(1 − 0.95·r), 0.005) and Gumbel
    noise g from `generator`; p is the filtered distribution (log p equals the filtered logits up to a
    per-row constant, which the softmax ignores).
    """
    r = k / max(num_scales - 1, 1)
    tau = max(0.27 * (1 - 0.95 * r), 0.005)
    gumbel = -torch.empty_like(probs).exponential_(generator=generator).log()
    return ((probs.log() * (1 + r) + gumbel) / tau).softmax(dim=-1)


def gather(probs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """probs (B, n, V), tokens (B, n) → probability of each token, (B, n)."""
    return probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """normalize(max(0, p − q)) over V; rows with no mass left fall back to p."""
    r = (p - q).clamp_min(0)
    mass = r.sum(-1, keepdim=True)
    return torch.where(mass > 0, r / mass.clamp_min(1e-30), p)


def accept_tokens(rule: str, p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor,
                  generator: torch.Generator | None, lenience: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token speculative test of drafted tokens against the target.

    p, q (B, n, V): target and draft distributions actually sampled from; draft (B, n).
    rule 'prob': accept with probability min(1, λ·p(x)/q(x)) (λ = lenience; λ = 1 is lossless);
    rule 'top1': accept iff the draft token is the target's argmax (the original SDVAR code's rule).
    Returns (accepted bool (B, n), tokens (B, n)): the draft token where accepted, else a
    replacement drawn from normalize(max(0, p − q)) for 'prob' (the exact correction) or from p
    for 'top1'. Generator use: one uniform per token ('prob'), one draw per rejected token.
    """
    if rule == "prob":
        u = torch.rand(draft.shape, generator=generator, device=p.device)
        accepted = u * gather(q, draft) < lenience * gather(p, draft)
    elif rule == "top1":
        accepted = draft == p.argmax(-1)
    else:
        raise ValueError(f"acceptance rule must be 'prob' or 'top1', got {rule!r}")
    tokens, rejected = draft.clone(), ~accepted
    if rejected.any():
        dist = residual(p[rejected], q[rejected]) if rule == "prob" else p[rejected]
        tokens[rejected] = sample_rows(dist, generator)
    return accepted, tokens
