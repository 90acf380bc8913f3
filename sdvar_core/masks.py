"""The six sd_mask attention rules of the SDVAR hand-off, as pure functions.

At a hand-off the incoming model must produce scale `current` (= entry_num).
It prefills positions [0, end_current): the prefix scales 0..current-1, whose
tokens are already fixed, plus the current scale, whose inputs are known.
The rule says which keys each of those queries may attend to. Scales after
`current` are then generated one by one on the KV cache, which is native VAR
(block-causal) attention; windows that reach past end_current show that.

Notation: sq / sk = scale of the query / key position, c = current.
The rules are the ones the original SDVAR code implements (sdvar-seed-analysis.md §3.2);
where that code's docstrings say otherwise, they are wrong.

    rule  prefix rows (sq < c)      current rows (sq == c)   rows after (sq > c)
    0     nothing (not fed)         sk == c                  c <= sk <= sq
    1     sk < sq or key == query   sk < sq or key == query  sk <= sq
    2     sk < sq or key == query   sk <= c (all fed keys)   sk <= sq
    3     sk <= sq                  sk <= sq                 sk <= sq
    4     sk == sq                  sk == sq                 sk <= sq
    5     sk == sq                  sk <= c (all fed keys)   sk <= sq

Masks are boolean, True = the query may attend to the key.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch

from sdvar_core.config import ScaleLayout

Positions = torch.Tensor | range


@dataclass(frozen=True)
class MaskRule:
    """One sd_mask value: its number, a short name and a plain-English explanation."""

    id: int
    name: str
    explanation: str


RULES: dict[int, MaskRule] = {r.id: r for r in (
    MaskRule(0, "none (prefix not fed)",
             "The earlier scales are not given to the model at all. It starts from an empty "
             "memory and sees only the tokens of the current scale (the first scale it has to "
             "produce), which attend to each other. Whatever the earlier scales decided reaches "
             "it only through the current scale's input, which was built from them. Later scales "
             "see the current scale onwards, never the earlier ones."),
    MaskRule(1, "SD, including current",
             "Every token sees all tokens of every earlier scale, and within its own scale only "
             "itself: tokens of the same scale cannot look at each other. 'Including the current "
             "scale' means this restriction is applied to the current scale too, so a token of "
             "the scale being produced sees the whole prefix and itself, but not its neighbours. "
             "Later scales attend natively (their own scale and all earlier ones)."),
    MaskRule(2, "SD, excluding current",
             "Like rule 1 for the earlier scales: each of their tokens sees all earlier scales "
             "and itself, but not the other tokens of its own scale. 'Excluding the current "
             "scale' means the current scale is exempt from this restriction: its tokens see "
             "every token that was fed in, i.e. the whole prefix and all of their own scale, "
             "exactly as in normal VAR. Only the prefix is computed differently from VAR."),
    MaskRule(3, "VAR native (block-causal)",
             "The attention VAR was trained with: every token sees all tokens of its own scale "
             "and of every earlier scale, and nothing of later scales. With identical draft and "
             "target models this rule reproduces the target model exactly."),
    MaskRule(4, "block, including current",
             "Every token sees only the tokens of its own scale (all of them) and nothing of any "
             "other scale. 'Including the current scale' means this applies to the current scale "
             "too: its tokens see each other but not the prefix. The prefix still influences them "
             "through their inputs. Later scales attend natively."),
    MaskRule(5, "block, excluding current",
             "Like rule 4 for the earlier scales: each of their tokens sees only its own scale. "
             "'Excluding the current scale' means the current scale is exempt: its tokens see "
             "every token that was fed in (the whole prefix and their own scale), exactly as in "
             "normal VAR. Only the prefix is computed differently from VAR."),
)}


def _check_index(name: str, value, n: int, what: str = "") -> int:
    """value as an int in 0..n-1, else ValueError naming the setting."""
    try:
        i = operator.index(value)
    except TypeError:
        i = None
    if i is None or isinstance(value, bool) or not 0 <= i < n:
        raise ValueError(f"{name} must be an int in 0..{n - 1}{what}, got {value!r}")
    return i


def _check_rule(rule) -> int:
    return _check_index("sd_mask rule", rule, len(RULES))


def _check_current(current, layout: ScaleLayout) -> int:
    if not isinstance(layout, ScaleLayout):
        raise ValueError(f"layout must be a ScaleLayout, got {type(layout).__name__}")
    return _check_index("current", current, layout.num_scales)


def _check_positions(pos: Positions, L: int, name: str) -> torch.Tensor:
    """range or 1-D integer tensor of positions in [0, L) -> LongTensor."""
    if isinstance(pos, range):
        pos = torch.arange(pos.start, pos.stop, pos.step)
    if not isinstance(pos, torch.Tensor) or pos.ndim != 1 or pos.dtype.is_floating_point or pos.dtype == torch.bool:
        raise ValueError(f"{name} must be a range or a 1-D integer tensor of positions")
    pos = pos.long().cpu()
    if pos.numel() and (pos.min() < 0 or pos.max() >= L):
        raise ValueError(f"{name} must lie in 0..{L - 1}, got values in {pos.min().item()}..{pos.max().item()}")
    return pos


def rule_name(rule: int) -> str:
    """Short name of an sd_mask rule, e.g. 'SD, including current'."""
    return RULES[_check_rule(rule)].name


def rule_explanation(rule: int) -> str:
    """One-paragraph plain-English explanation of an sd_mask rule."""
    return RULES[_check_rule(rule)].explanation


def scale_ids(layout: ScaleLayout = ScaleLayout()) -> torch.Tensor:
    """Scale index of every position, LongTensor (L,) (VAR's lvl_1L)."""
    return torch.repeat_interleave(torch.arange(layout.num_scales), torch.tensor(layout.sizes))


def allowed(rule: int, layout: ScaleLayout, current: int,
            q_positions: Positions, k_positions: Positions) -> torch.Tensor:
    """Which keys each query may attend to under sd_mask `rule` at hand-off scale `current`.

    q_positions, k_positions: absolute positions, ranges or 1-D integer tensors (Lq,), (Lk,).
    Returns BoolTensor (Lq, Lk), True = allowed. See the module docstring for the table.
    """
    rule = _check_rule(rule)
    c = _check_current(current, layout)
    q = _check_positions(q_positions, layout.total, "q_positions")
    k = _check_positions(k_positions, layout.total, "k_positions")
    sid = scale_ids(layout)
    sq, sk = sid[q][:, None], sid[k][None, :]  # (Lq, 1), (1, Lk)
    native = sk <= sq
    if rule == 0:
        # only scales >= c exist: prefix rows and prefix keys are never fed
        return native & (sk >= c) & (sq >= c)
    if rule in (1, 2):
        base = (sk < sq) | (q[:, None] == k[None, :])
    elif rule == 3:
        base = native
    else:  # 4, 5
        base = sk == sq
    # rows from here on attend natively: the current scale's rows for the
    # "excluding current" rules, and every scale after current (KV-cache steps)
    native_from = c if rule in (2, 5) else c + 1
    return torch.where(sq >= native_from, native, base)


def mask_matrix(rule: int, current: int, layout: ScaleLayout = ScaleLayout(),
                q_start: int = 0, q_end: int | None = None, k_end: int | None = None) -> torch.Tensor:
    """The mask for queries [q_start, q_end) against keys [0, k_end).

    Defaults: q_end = end of the current scale (the prefill window), k_end = q_end.
    Returns BoolTensor (q_end - q_start, k_end), True = allowed.
    """
    c = _check_current(current, layout)
    L = layout.total
    q_end = layout.ends[c] if q_end is None else q_end
    k_end = q_end if k_end is None else k_end
    if not 0 <= q_start < q_end <= L:
        raise ValueError(f"need 0 <= q_start < q_end <= {L}, got q_start={q_start}, q_end={q_end}")
    if not 1 <= k_end <= L:
        raise ValueError(f"k_end must be in 1..{L}, got {k_end}")
    return allowed(rule, layout, c, range(q_start, q_end), range(k_end))


def pair_counts(rule: int, current: int, layout: ScaleLayout = ScaleLayout(),
                q_end: int | None = None) -> dict:
    """Allowed / total query-key pairs of the window [0, q_end) x [0, q_end).

    q_end defaults to the end of the current scale (the prefill window).
    Returns {"allowed", "total", "sparsity", "per_scale": {k: {...same keys}}},
    where sparsity = fraction of pairs blocked and per_scale groups the query rows
    by scale (only scales with rows in the window).
    """
    m = mask_matrix(rule, current, layout, q_end=q_end)
    sid = scale_ids(layout)[: m.shape[0]]
    per_allowed = torch.bincount(sid, weights=m.sum(dim=1).double()).long()
    per_rows = torch.bincount(sid)

    def summary(a: int, t: int) -> dict:
        return {"allowed": a, "total": t, "sparsity": 1.0 - a / t}

    per_scale = {k: summary(int(per_allowed[k]), int(per_rows[k]) * m.shape[1])
                 for k in range(len(per_rows)) if per_rows[k] > 0}
    return {**summary(int(m.sum()), m.numel()), "per_scale": per_scale}


def attended_keys(rule: int, current: int, scale: int, row: int, col: int,
                  layout: ScaleLayout = ScaleLayout()) -> list[torch.Tensor]:
    """Which keys the token at (scale, row, col) attends to, grouped by key scale.

    The token is position starts[scale] + row * pn + col. Keys are all L positions:
    for scales <= current that is what the prefill sees, for later scales what the
    KV-cache step sees. Returns a list over key scales j of BoolTensor (pn_j, pn_j).
    """
    c = _check_current(current, layout)
    scale = _check_index("scale", scale, layout.num_scales)
    pn = layout.patch_nums[scale]
    row = _check_index("row", row, pn, f" for scale {scale} ({pn}x{pn})")
    col = _check_index("col", col, pn, f" for scale {scale} ({pn}x{pn})")
    q = layout.starts[scale] + row * pn + col
    keys = allowed(rule, layout, c, range(q, q + 1), range(layout.total))[0]
    return [keys[s:e].view(p, p) for s, e, p in zip(layout.starts, layout.ends, layout.patch_nums)]
