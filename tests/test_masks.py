"""Tests for sdvar_core.masks: worked example, properties, and a slow loop reference."""
import time

import pytest
import torch

from sdvar_core.config import ScaleLayout
from sdvar_core.masks import (RULES, allowed, attended_keys, mask_matrix, pair_counts, rule_explanation, rule_name,
                              scale_ids)

FULL = ScaleLayout()
SMALL = ScaleLayout((1, 2, 3, 4))  # 30 tokens
ALL_RULES = range(6)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Masks are small: intra-op threads only fight each other on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def ref_allowed(rule, layout, c, q, k):
    """One (query, key) pair straight from the rule table (analysis §3.2 + continuation)."""
    sq, sk = layout.scale_of_position[q], layout.scale_of_position[k]
    if sq > c:  # after the hand-off: native steps on the KV cache; rule 0's cache has no prefix
        return sk <= sq and (rule != 0 or sk >= c)
    if rule == 0:
        return sq == c and sk == c
    if rule in (2, 5) and sq == c:
        return k < layout.ends[c]
    if rule in (1, 2):
        return sk < sq or q == k
    if rule == 3:
        return sk <= sq
    return sk == sq  # 4, 5


def ref_matrix(rule, layout, c, qs, ks):
    return torch.tensor([[ref_allowed(rule, layout, c, q, k) for k in ks] for q in qs], dtype=torch.bool)


# ---- worked example (analysis §3.2, entry_num 5: s = 55, p = 91) ----

@pytest.mark.parametrize("rule, n_keys", [(0, 36), (1, 56), (2, 91), (3, 91), (4, 36), (5, 91)])
def test_worked_example_first_query_of_scale_5(rule, n_keys):
    m = mask_matrix(rule, 5)
    assert m.shape == (91, 91)
    assert FULL.starts[5] == 55 and FULL.ends[5] == 91
    assert int(m[55].sum()) == n_keys


def test_worked_example_which_keys():
    m1, m4 = mask_matrix(1, 5)[55], mask_matrix(4, 5)[55]
    assert m1[:55].all() and m1[55] and not m1[56:].any()
    assert not m4[:55].any() and m4[55:91].all()


def test_sd_rule_is_identity_inside_a_prefix_scale():
    for c in range(1, 10):
        m = mask_matrix(1, c)
        for k in range(c):
            s, e = FULL.starts[k], FULL.ends[k]
            assert torch.equal(m[s:e, s:e], torch.eye(e - s, dtype=torch.bool))


# ---- slow reference ----

@pytest.mark.parametrize("rule", ALL_RULES)
def test_equals_loop_reference_small_layout(rule):
    L = SMALL.total
    for c in range(SMALL.num_scales):
        got = mask_matrix(rule, c, SMALL, q_end=L)
        assert torch.equal(got, ref_matrix(rule, SMALL, c, range(L), range(L))), (rule, c)


@pytest.mark.parametrize("rule", ALL_RULES)
def test_equals_loop_reference_full_layout_some_rows(rule):
    L = FULL.total
    rows = [0, 3, 29, 54, 55, 90, 91, 300, 679]
    for c in (0, 4, 5, 9):
        got = allowed(rule, FULL, c, torch.tensor(rows), range(L))
        assert torch.equal(got, ref_matrix(rule, FULL, c, rows, range(L))), (rule, c)


# ---- properties over all rules and currents ----

def windows(layout, c):
    e = layout.ends[c]
    L = layout.total
    yield 0, e, e
    yield layout.starts[c], e, e  # current rows only against the whole prefill
    yield 1, max(2, e - 1), e
    yield 0, L, L
    yield layout.starts[c], L, L


@pytest.mark.parametrize("layout", [SMALL, FULL], ids=["small", "full"])
@pytest.mark.parametrize("rule", ALL_RULES)
def test_window_equals_slice_of_full_matrix(layout, rule):
    L = layout.total
    for c in range(layout.num_scales):
        full = mask_matrix(rule, c, layout, q_end=L)
        e = layout.ends[c]
        assert torch.equal(mask_matrix(rule, c, layout), full[:e, :e])
        for qs, qe, ke in windows(layout, c):
            assert torch.equal(mask_matrix(rule, c, layout, qs, qe, ke), full[qs:qe, :ke]), (c, qs, qe, ke)
        q = torch.tensor([e - 1, 0, L - 1])
        k = torch.tensor([L - 1, 0, e - 1, 0])
        assert torch.equal(allowed(rule, layout, c, q, k), full[q][:, k])


@pytest.mark.parametrize("layout", [SMALL, FULL], ids=["small", "full"])
def test_structural_properties(layout):
    L = layout.total
    sid = scale_ids(layout)
    later = sid[None, :] > sid[:, None]
    for c in range(layout.num_scales):
        s, e = layout.starts[c], layout.ends[c]
        m = {r: mask_matrix(r, c, layout, q_end=L) for r in ALL_RULES}
        diag = torch.eye(L, dtype=torch.bool)
        for r in range(1, 6):
            assert m[r][diag].all(), (r, c)
            assert not (m[r] & later).any(), (r, c)  # never a later scale
            assert not m[r][:e, e:].any(), (r, c)  # prefill rows stay inside the prefill
        assert not m[0][:s].any() and not m[0][:, :s].any()  # rule 0: the prefix does not exist
        assert m[0][s:e, s:e].all() and not (m[0] & later).any()
        for r in (2, 5):
            assert m[r][s:e, :e].all()  # open current rows
        for sup, sub in ((3, 1), (3, 4), (2, 1), (5, 4), (3, 0)):
            assert not (m[sub] & ~m[sup]).any(), (sup, sub, c)
        assert torch.equal(m[3], m[3].new_ones(()).expand(L, L) & ~later)
        for r in ALL_RULES:  # rows after current are native (rule 0 without the prefix)
            assert torch.equal(m[r][e:, s:], m[3][e:, s:])


def test_rules_differ_where_they_should():
    # at c = 0 there is no prefix: 2 and 5 coincide with 3 (open current row = native)
    for r in (2, 3, 5):
        assert torch.equal(mask_matrix(r, 0, q_end=680), mask_matrix(3, 9, q_end=680))
    m = {r: mask_matrix(r, 5) for r in ALL_RULES}
    assert len({tuple(v.flatten().tolist()) for v in m.values()}) == 6


@pytest.mark.parametrize("layout", [SMALL, FULL], ids=["small", "full"])
@pytest.mark.parametrize("rule", ALL_RULES)
def test_pair_counts_agree_with_mask(layout, rule):
    for c in sorted({0, 1, layout.num_scales // 2, layout.num_scales - 1}):
        for q_end in (None, layout.total, layout.ends[c] - 1 if layout.ends[c] > 1 else 1):
            m = mask_matrix(rule, c, layout, q_end=q_end)
            pc = pair_counts(rule, c, layout, q_end=q_end)
            assert pc["allowed"] == int(m.sum()) and pc["total"] == m.numel()
            assert pc["sparsity"] == pytest.approx(1 - m.double().mean().item())
            sid = scale_ids(layout)[: m.shape[0]]
            assert sorted(pc["per_scale"]) == sorted(set(sid.tolist()))
            for k, d in pc["per_scale"].items():
                rows = m[sid == k]
                assert d["allowed"] == int(rows.sum()) and d["total"] == rows.numel()
                assert d["sparsity"] == pytest.approx(1 - rows.double().mean().item())
            assert sum(d["allowed"] for d in pc["per_scale"].values()) == pc["allowed"]


def test_pair_counts_worked_numbers():
    # SD prefix rows at c = 5: each prefix token sees the tokens before its scale plus itself
    per = pair_counts(1, 5)["per_scale"]
    for k in range(5):
        assert per[k]["allowed"] == FULL.sizes[k] * (FULL.starts[k] + 1)
    assert per[5]["allowed"] == 36 * 56


@pytest.mark.parametrize("layout", [SMALL, FULL], ids=["small", "full"])
@pytest.mark.parametrize("rule", ALL_RULES)
def test_attended_keys_agrees_with_matrix_row(layout, rule):
    L = layout.total
    for c in range(0, layout.num_scales, 2):
        full = mask_matrix(rule, c, layout, q_end=L)
        for scale in range(layout.num_scales):
            pn = layout.patch_nums[scale]
            for row, col in {(0, 0), (pn - 1, pn - 1), (pn // 2, pn - 1)}:
                grids = attended_keys(rule, c, scale, row, col, layout)
                assert [g.shape for g in grids] == [(p, p) for p in layout.patch_nums]
                q = layout.starts[scale] + row * pn + col
                assert torch.equal(torch.cat([g.flatten() for g in grids]), full[q])


def test_attended_keys_row_major_self():
    grids = attended_keys(1, 7, 6, 2, 5)  # scale 6 is 8x8, prefix under SD: only itself in its scale
    own = torch.zeros(8, 8, dtype=torch.bool)
    own[2, 5] = True
    assert torch.equal(grids[6], own)
    assert all(g.all() for g in grids[:6]) and not any(g.any() for g in grids[7:])


# ---- attention, names, speed ----

def test_bool_mask_means_may_attend_in_sdpa():
    """The VAR passes mask_matrix's bool masks to SDPA as they are: True = the query may attend to the key."""
    torch.manual_seed(0)
    m = mask_matrix(5, 3)
    q, k, v = (torch.randn(1, 2, m.shape[0], 8) for _ in range(3))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m)
    ref = torch.softmax((q @ k.transpose(-1, -2) / 8 ** 0.5).masked_fill(~m, float("-inf")), -1) @ v
    assert torch.allclose(out, ref, atol=1e-5)


def test_names_and_explanations():
    assert sorted(RULES) == list(ALL_RULES)
    names = [rule_name(r) for r in ALL_RULES]
    assert len(set(names)) == 6 and all(names)
    for r in (1, 2, 4, 5):
        assert "current scale" in rule_explanation(r)
    assert "including" in rule_name(1) and "excluding" in rule_name(2)


def test_full_matrix_is_fast():
    t = time.perf_counter()
    for r in ALL_RULES:
        mask_matrix(r, 9)
    assert time.perf_counter() - t < 1.0  # a Python double loop takes seconds per matrix


# ---- bad input ----

@pytest.mark.parametrize("call, word", [
    (lambda: mask_matrix(6, 0), "rule"),
    (lambda: mask_matrix(-1, 0), "rule"),
    (lambda: mask_matrix(1.0, 0), "rule"),
    (lambda: mask_matrix(True, 0), "rule"),
    (lambda: rule_name(7), "rule"),
    (lambda: rule_explanation("1"), "rule"),
    (lambda: mask_matrix(1, 10), "current"),
    (lambda: mask_matrix(1, -1), "current"),
    (lambda: mask_matrix(1, 4, SMALL), "current"),
    (lambda: mask_matrix(1, 2, (1, 2, 3)), "layout"),
    (lambda: mask_matrix(1, 5, q_start=91), "q_start"),
    (lambda: mask_matrix(1, 5, q_end=681), "q_end"),
    (lambda: mask_matrix(1, 5, q_start=-1), "q_start"),
    (lambda: mask_matrix(1, 5, k_end=0), "k_end"),
    (lambda: mask_matrix(1, 5, k_end=681), "k_end"),
    (lambda: allowed(1, FULL, 5, range(679, 681), range(10)), "q_positions"),
    (lambda: allowed(1, FULL, 5, range(3), torch.tensor([-1])), "k_positions"),
    (lambda: allowed(1, FULL, 5, torch.tensor([0.5]), range(3)), "q_positions"),
    (lambda: allowed(1, FULL, 5, torch.zeros(2, 2, dtype=torch.long), range(3)), "q_positions"),
    (lambda: pair_counts(1, 5, q_end=0), "q_end"),
    (lambda: attended_keys(1, 5, 10, 0, 0), "scale"),
    (lambda: attended_keys(1, 5, 2, 3, 0), "row"),
    (lambda: attended_keys(1, 5, 2, 0, -1), "col"),
    (lambda: attended_keys(9, 5, 2, 0, 0), "rule"),
])
def test_bad_input_raises_value_error(call, word):
    with pytest.raises(ValueError, match=word):
        call()
