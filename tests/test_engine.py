"""The engine: identity with D == T, exactness of the lossless rule, KV rollback, relaxed mode, traces."""
import copy
import io
import math

import numpy as np
import pytest
import torch

import sdvar_core.speculative as speculative
from conftest import teacher_forced_logits
from sdvar_core import data
from sdvar_core.config import VARConfig, VQVAEConfig
from sdvar_core.engine import Pair, Run, Settings, generate
from sdvar_core.picture import encode_image, keep_grids
from sdvar_core.planner import Costs, PassEstimator, Planner
from sdvar_core.trace import ACCEPTED, CORRECTED, INPUT, TARGET, PlanRecord, Trace
from sdvar_core.var import VAR
from sdvar_core.vqvae import VQVAE

V = 8


def make_var(seed, depth, width, heads, vocab=V, patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), noise=0.3):
    torch.manual_seed(seed)
    m = VAR(VARConfig(depth=depth, width=width, heads=heads, vocab_size=vocab, z_channels=4, num_classes=3,
                      patch_nums=patch_nums)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * noise)
    return m


def make_vqvae(vocab=V, patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), image_size=64):
    torch.manual_seed(0)
    return VQVAE(VQVAEConfig(vocab_size=vocab, z_channels=4, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1,
                             use_attn=False, image_size=image_size, patch_nums=patch_nums)).eval()


@pytest.fixture(scope="module")
def models():
    vq = make_vqvae()
    return vq, make_var(1, 1, 32, 1), make_var(2, 2, 64, 2)


def same_tokens(a: Trace, b: Trace) -> bool:
    return all(np.array_equal(x.tokens, y.tokens) for x, y in zip(a.scales, b.scales))


class HistoryPlanner:
    """γ from past rounds in an arbitrary way: every γ from 0 to the scales left occurs, so the draft
    falls behind and catches up. Exactness must not depend on how γ is chosen from the past."""

    def __init__(self, num_scales: int):
        self.num_scales, self.seen, self.plans = num_scales, [], 0

    def plan(self, start, draft_next, t=0.0):
        self.plans += 1
        gamma = (self.plans + len(self.seen) + int(10 * sum(self.seen[-3:]))) % (self.num_scales - start + 1)
        return PlanRecord(start, draft_next, gamma, [], [], float(len(self.seen)), t)

    def observe(self, k, p_pass):
        self.seen.append(p_pass)


def test_identity_when_draft_is_target(models):
    vq, _, target = models
    pair = Pair(vq, target, target)
    kw = dict(cfg=1.5, top_k=5, top_p=0.9, progressive=False)
    ref = generate(pair, "target", [0, 2], seed=7, **kw).trace
    assert ref.target_calls == 10 and ref.draft_calls == 0
    for e in range(11):
        tr = generate(pair, "schedule", [0, 2], seed=7, entry_num=e, sd_mask=3, **kw).trace
        assert same_tokens(tr, ref), f"entry_num {e}"
        assert tr.draft_calls == e and tr.target_calls == 10 - e
    for gamma in (1, 2, 3, 4, 10):
        tr = generate(pair, "speculative", [0, 2], seed=7, gamma=gamma, **kw).trace
        assert same_tokens(tr, ref), f"gamma {gamma}"
        assert tr.target_calls == math.ceil(10 / gamma)
        assert all((s.status == ACCEPTED).all() for s in tr.scales)
    planner, gammas, catch_up = HistoryPlanner(10), set(), False
    for seed in range(4):   # γ = "auto": rounds of 0 (target alone) to 10 scales, draft catch-up calls
        ref = generate(pair, "target", [0, 2], seed=seed, **kw).trace
        tr = generate(pair, "speculative", [0, 2], seed=seed, gamma="auto", planner=planner, **kw).trace
        assert same_tokens(tr, ref), f"auto, seed {seed}"
        gammas |= {r.gamma for r in tr.rounds}
        catch_up |= any(c.model == "draft" and len(c.scales) > 1 for c in tr.calls)
    assert 0 in gammas and max(gammas) > 2 and catch_up
    tr = generate(pair, "speculative", [0, 2], seed=7, gamma="auto", **kw).trace   # the calibrated planner
    assert same_tokens(tr, generate(pair, "target", [0, 2], seed=7, **kw).trace)
    assert all(r.plan is not None and r.plan.chosen == r.gamma for r in tr.rounds)


def test_schedule_prefill_and_masks(models):
    vq, draft, target = models
    pair = Pair(vq, draft, target)
    for rule in range(6):
        tr = generate(pair, "schedule", [1], seed=0, entry_num=5, sd_mask=rule, progressive=False).trace
        prefill = [c for c in tr.calls if c.kind == "prefill"]
        assert len(prefill) == 1 and prefill[0].mask_rule == rule and prefill[0].model == "target"
        # rule 0 feeds only the current scale; the others feed the draft's prefix too (91 positions)
        assert prefill[0].query_len == (36 if rule == 0 else 91)
        assert [s.producer for s in tr.scales] == ["draft"] * 5 + ["target"] * 5
    tr = generate(pair, "schedule", [1], seed=0, schedule="TTTTTTTTDD", progressive=False).trace
    assert tr.target_calls == 8 and tr.draft_calls == 2
    assert (tr.scales[0].status == TARGET).all()


def mini_pair(draft_noise_seed=11):
    """A 3-scale layout (1, 2, 4 tokens per side) so that thousands of samples are cheap."""
    pn = (1, 2, 4)
    vq = make_vqvae(patch_nums=pn, image_size=16)
    target = make_var(3, 2, 32, 1, patch_nums=pn, noise=0.6)
    draft = make_var(draft_noise_seed, 1, 32, 1, patch_nums=pn, noise=0.6)
    return Pair(vq, draft, target)


def target_marginals(pair, cls):
    """Exact target probabilities: scale 0 (V,), and scale 1's per-position marginals (4, V) with cfg 0."""
    T = pair.target
    p0 = None
    p1 = torch.zeros(4, V)
    for x0 in range(V):
        tokens = [torch.tensor([[x0]]), torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 16, dtype=torch.long)]
        probs = teacher_forced_logits(T, [cls], tokens, pair.vqvae).softmax(-1)[0]
        p0 = probs[0]
        p1 += p0[x0] * probs[1:5]
    return p0, p1


def scale01_frequencies(pair, mode, n_seeds=40, batch=100, **kw):
    """Token frequencies of scale 0 (V,) and scale 1's four positions (4, V) over n_seeds × batch samples
    of class 1 (no CFG), and the sample count."""
    counts0, counts1 = torch.zeros(V), torch.zeros(4, V)
    for seed in range(n_seeds):
        tr = generate(pair, mode, [1] * batch, seed=seed, cfg=0.0, progressive=False, **kw).trace
        t0, t1 = torch.from_numpy(tr.scales[0].tokens), torch.from_numpy(tr.scales[1].tokens)
        counts0 += torch.bincount(t0.flatten(), minlength=V)
        for j in range(4):
            counts1[j] += torch.bincount(t1[:, j], minlength=V)
    n = n_seeds * batch
    return counts0 / n, counts1 / n, n


def assert_matches(freq, p, n):
    tol = 5 * torch.sqrt(p * (1 - p) / n) + 1e-3   # 5 standard errors per cell
    assert ((freq - p).abs() <= tol).all(), (freq, p)


# γ = "auto" in the statistical tests: the history planner (every γ, catch-up calls) and a real planner
# whose costs make drafting pay, learning from the runs before (its γ depends on their acceptance).
AUTO = {"fixed γ 2": lambda: dict(gamma=2),
        "auto (history)": lambda: dict(gamma="auto", planner=HistoryPlanner(3)),
        "auto (planner)": lambda: dict(gamma="auto", planner=Planner(Costs.flat(3, target=1.0, draft=0.005), margin=0))}


@pytest.mark.parametrize("how", list(AUTO))
def test_exact_mode_samples_the_target_distribution(how):
    pair = mini_pair()
    p0, p1 = target_marginals(pair, 1)
    q0, _ = target_marginals(Pair(pair.vqvae, pair.draft, pair.draft), 1)
    assert (p0 - q0).abs().max() > 0.1, "draft and target must differ for the test to have power"
    f0, f1, n = scale01_frequencies(pair, "speculative", **AUTO[how]())
    assert_matches(f0, p0, n)
    assert_matches(f1, p1, n)


@pytest.mark.parametrize("how", list(AUTO))
def test_broken_acceptance_rule_fails_the_same_test(monkeypatch, how):
    pair = mini_pair()
    p0, _ = target_marginals(pair, 1)

    def accept_everything(rule, p, q, draft, generator, lenience=1.0):
        return torch.ones_like(draft, dtype=torch.bool), draft

    monkeypatch.setattr(speculative, "accept_tokens", accept_everything)
    f0, _, n = scale01_frequencies(pair, "speculative", **AUTO[how]())
    with pytest.raises(AssertionError):
        assert_matches(f0, p0, n)


def fresh_cache(runner, tokens):
    """A KV cache built scale by scale from scratch over the final tokens."""
    model, vq = runner.model, runner.canvas.vqvae
    cache, f_hat = model.new_cache(), runner.canvas.zero
    for k in range(runner.next_scale):
        latents = vq.next_input(k - 1, f_hat) if k else None
        model.forward_window(model.embed_window(runner.cond, k, latents), runner.cond, cache)
        f_hat = vq.add_scale(k, f_hat, tokens[k])
    return cache


@pytest.mark.parametrize("settings", [dict(gamma=3), dict(gamma=2, tau=0.4), dict(gamma=4, adaptive_gamma=True)])
@torch.no_grad()
def test_rollback_leaves_caches_of_a_fresh_run(models, settings):
    vq, draft, target = models
    run = Run(Pair(vq, draft, target), torch.tensor([0, 1]), 3, Settings(**settings))
    speculative.run_speculative(run)
    assert any(r.corrected_scale is not None or r.stale_scales for r in run.rounds), "no rejection happened"
    tokens = run.canvas.tokens
    assert torch.allclose(run.canvas.fhats[-1], vq.tokens_to_fhat(tokens), atol=1e-5)
    for runner in run.runners.values():
        ref = fresh_cache(runner, tokens)
        assert len(runner.cache) == len(ref) > 0
        for a, b in zip(runner.cache.k + runner.cache.v, ref.k + ref.v):
            assert (a - b).abs().max().item() < 1e-4


def test_relaxed_mode_makes_fewer_target_calls_and_traces_round_trip(models, tmp_path):
    vq, draft, target = models
    pair = Pair(vq, draft, target)
    exact = generate(pair, "speculative", [0, 1], seed=4, gamma=3).trace
    relaxed = generate(pair, "speculative", [0, 1], seed=4, gamma=3, tau=0.05, lenience=3.0).trace
    assert relaxed.target_calls < exact.target_calls
    assert any(s.stale for s in relaxed.scales) == any(r.stale_scales for r in relaxed.rounds)
    assert any((s.status == CORRECTED).any() for s in exact.scales)
    path = tmp_path / "run.npz"
    relaxed.save(path)
    back = Trace.load(path)
    assert back.settings == relaxed.settings and back.calls == relaxed.calls and back.rounds == relaxed.rounds
    assert back.shapes == relaxed.shapes and back.timings == relaxed.timings
    for a, b in zip(back.scales, relaxed.scales):
        for name in ("tokens", "status", "draft_tokens", "p_draft", "q_draft", "image"):
            assert np.array_equal(getattr(a, name), getattr(b, name))
        assert (a.stale, a.producer, a.pn) == (b.stale, b.producer, b.pn)
    assert np.array_equal(back.images, relaxed.images)


def test_trace_shapes_are_captured(models):
    vq, draft, target = models
    tr = generate(Pair(vq, draft, target), "speculative", [0, 1, 2], seed=1, gamma=2).trace
    table = {(r.scale, r.model, r.tensor): r.shape for r in tr.shapes}
    assert table[(9, "target", "logits")] == [6, 256, V]
    assert table[(9, "target", "cfg_logits")] == [3, 256, V]
    assert table[(4, "draft", "logits")] == [6, 25, V]
    assert table[(9, "vqvae", "f_hat")] == [3, 4, 16, 16]
    # the last round drafts and verifies scale 9 on caches that start at position 0
    assert table[(9, "target", "kv_len")] == table[(9, "draft", "kv_len")] == [680]
    assert (tr.calls[-1].model, tr.calls[-1].kind, tr.calls[-1].scales[-1]) == ("target", "verify", 9)
    assert tr.images.shape == (3, 64, 64, 3) and tr.scales[3].image.shape == (3, 64, 64, 3)
    assert tr.target_calls + tr.draft_calls == len(tr.calls)


@pytest.mark.parametrize("kw,match", [
    (dict(mode="speculative", gamma=0), "gamma"), (dict(mode="schedule", entry_num=11), "entry_num"),
    (dict(mode="schedule", entry_num=3, sd_mask=6), "sd_mask"), (dict(mode="speculative", tau=0.0), "tau"),
    (dict(mode="speculative", tau=1.5), "tau"), (dict(mode="speculative", lenience=0.5), "lenience"),
    (dict(mode="schedule", schedule="DDDTTTTTT"), "schedule"), (dict(mode="schedule", schedule="DDDTTTTTTX"), "schedule"),
    (dict(mode="fast"), "mode"), (dict(mode="target", cfg=-1), "cfg"), (dict(mode="target", top_p=0), "top_p"),
    (dict(mode="target", top_k=-2), "top_k"), (dict(mode="target", nonsense=1), "nonsense"),
    (dict(mode="speculative", accept="kl"), "accept"), (dict(mode="speculative", verify_mask=0), "verify_mask"),
    (dict(mode="speculative", gamma="fast"), "gamma"), (dict(mode="speculative", gamma=2.5), "gamma"),
    (dict(mode="speculative", gamma="auto", adaptive_gamma=True), "adaptive_gamma"),
    (dict(mode="target", precision="fp16"), "precision"), (dict(mode="target", precision="fp64"), "precision"),
])
def test_bad_settings_name_the_setting(models, kw, match):
    vq, draft, target = models
    with pytest.raises(ValueError, match=match):
        generate(Pair(vq, draft, target), class_ids=[0], seed=0, **kw)


def test_bad_class_ids_and_mismatched_pair(models):
    vq, draft, target = models
    pair = Pair(vq, draft, target)
    with pytest.raises(ValueError, match="class"):
        generate(pair, "target", [3], seed=0)
    with pytest.raises(ValueError, match="class"):
        generate(pair, "target", [], seed=0)
    other = make_var(5, 1, 32, 1, vocab=16)
    with pytest.raises(ValueError, match="codebook"):
        Pair(vq, other, target)


def test_more_smooth_uses_the_soft_codebook_mixture(models):
    vq, draft, target = models
    pair = Pair(vq, draft, target)
    idx = torch.randint(0, V, (2, 9))
    one_hot = torch.nn.functional.one_hot(idx, V).float()
    assert torch.allclose(vq.soft_contribution(2, one_hot), vq.scale_contribution(2, idx), atol=1e-6)
    a = generate(pair, "target", [0, 1], seed=3, more_smooth=True, progressive=False)
    b = generate(pair, "target", [0, 1], seed=3, more_smooth=True, progressive=False)
    plain = generate(pair, "target", [0, 1], seed=3, progressive=False)
    assert np.array_equal(a.images, b.images) and not np.array_equal(a.images, plain.images)
    tr = generate(pair, "schedule", [0], seed=3, entry_num=4, more_smooth=True, progressive=False).trace
    assert tr.draft_calls == 4 and tr.target_calls == 6
    with pytest.raises(ValueError, match="more_smooth"):
        generate(pair, "speculative", [0], seed=0, more_smooth=True)
    # in-painting with the soft mixture: kept cells use the picture's codebook vector (a one-hot weight)
    pic = encode_image(pair, data.make_images([2], 0)[0])
    keep = np.zeros((64, 64), dtype=bool)
    keep[:, :32] = True
    soft = generate(pair, "target", [0], seed=3, more_smooth=True, prefix=pic, keep_mask=keep, progressive=False).trace
    for rec, grid in zip(soft.scales, keep_grids(keep, pair.layout.patch_nums)):
        assert np.array_equal(rec.tokens[0][grid.reshape(-1)], pic.tokens[rec.scale].reshape(-1)[grid.reshape(-1)])


def test_exact_mode_matches_target_only_at_the_last_scale():
    """Two-sample check at the third (last) scale. Small batches, so that rounds often keep two scales
    (a round stops at the first scale that some sample of the batch fails) before a rollback."""
    base = mini_pair()
    draft = copy.deepcopy(base.target)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn_like(p, generator=torch.Generator().manual_seed(p.numel())) * 0.3)
    pair = Pair(base.vqvae, draft, base.target)
    batch, seeds = 1, 1500

    def last_scale_freq(mode, **kw):
        counts, kept_two = torch.zeros(16, V), 0
        for seed in range(seeds):
            tr = generate(pair, mode, [1] * batch, seed=1000 + seed, cfg=0.0, progressive=False, **kw).trace
            t2 = torch.from_numpy(tr.scales[2].tokens)
            counts += torch.nn.functional.one_hot(t2, V).sum(0)
            kept_two += any(len(r.accepted_scales) >= 1 and len(r.finalized) >= 2 for r in tr.rounds)
        return counts / (batch * seeds), kept_two

    (ref, _), (spec, multi) = last_scale_freq("target"), last_scale_freq("speculative", gamma=2)
    auto, multi_auto = last_scale_freq("speculative", gamma="auto", planner=HistoryPlanner(3))
    drafted, _ = last_scale_freq("draft")
    assert min(multi, multi_auto) > seeds // 10, "too few rounds kept two scales for the test to cover them"
    n = batch * seeds
    for other in (spec, auto):
        pooled = (ref + other) / 2
        tol = 5 * torch.sqrt(pooled * (1 - pooled) * 2 / n) + 1e-3
        assert ((ref - other).abs() <= tol).all()
    assert ((ref - drafted).abs() > tol).any(), "the draft must differ for the test to have power"


def test_forced_verdicts_override_the_acceptance_test(models):
    """accept_override(k) decides each judged scale: True keeps every drafted token, False corrects them all."""
    vq, draft, target = models
    pair = Pair(vq, draft, target)
    judged = []
    tr = generate(pair, "speculative", [0, 1], seed=2, gamma=3, progressive=False,
                  accept_override=lambda k: judged.append(k) or True).trace
    assert judged == list(range(10)) and tr.target_calls == 4 and tr.settings["forced_acceptance"] is True
    for s in tr.scales:
        assert (s.status == ACCEPTED).all() and np.array_equal(s.tokens, s.draft_tokens)
    tr = generate(pair, "speculative", [0, 1], seed=2, gamma=3, progressive=False, accept_override=lambda k: False).trace
    assert tr.target_calls == 10 and all((s.status == CORRECTED).all() for s in tr.scales)
    assert [r.corrected_scale for r in tr.rounds] == list(range(10))
    assert "forced_acceptance" not in generate(pair, "speculative", [0], seed=2, progressive=False).trace.settings
    with pytest.raises(ValueError, match="speculative mode only"):
        generate(pair, "target", [0], seed=0, accept_override=lambda k: True)


def test_auto_degenerates_to_target_only_when_drafts_cannot_pay(models):
    """γ = 0 in every round: the target's calls and tokens of a target-only run, and no draft call."""
    vq, draft, target = models
    pair = Pair(vq, draft, target)
    planner = Planner(Costs.flat(10, target=1.0, draft=0.5), PassEstimator.fixed(10, 0.0))
    tr = generate(pair, "speculative", [0, 1], seed=5, gamma="auto", planner=planner, progressive=False).trace
    ref = generate(pair, "target", [0, 1], seed=5, progressive=False).trace
    assert same_tokens(tr, ref) and tr.draft_calls == 0 and tr.target_calls == 10
    assert [r.gamma for r in tr.rounds] == [0] * 10 and all((s.status == TARGET).all() for s in tr.scales)
    assert [(c.kind, c.scales) for c in tr.calls] == [(c.kind, c.scales) for c in ref.calls]


def test_plans_see_only_finished_rounds(models, tmp_path):
    """Each round is planned after the previous round's calls and before its own, knowing exactly the
    scales judged in earlier rounds; the plans survive save/load."""
    vq, draft, target = models
    planner = Planner(Costs.flat(10, target=1.0, draft=0.01), PassEstimator(10, decay=1.0), margin=0.0)
    seen = 0.0
    for seed in range(3):
        tr = generate(Pair(vq, draft, target), "speculative", [0], seed=seed, gamma="auto", planner=planner,
                      progressive=False).trace
        calls, previous_end = iter(tr.calls), 0.0
        for rd in tr.rounds:
            assert rd.plan.observations == pytest.approx(seen) and rd.plan.chosen == rd.gamma
            own = [next(calls) for _ in range(rd.gamma + 1 if rd.gamma else 1)]
            assert previous_end <= rd.plan.t <= own[0].t_start
            previous_end = own[-1].t_end
            seen += len(rd.accepted_scales) + (rd.corrected_scale is not None)
        assert next(calls, None) is None
    assert any(r.gamma > 1 for r in tr.rounds)
    tr.save(tmp_path / "auto.npz")
    assert Trace.load(tmp_path / "auto.npz").rounds == tr.rounds


def test_auto_with_forced_verdicts_needs_its_own_planner(models):
    vq, draft, target = models
    with pytest.raises(ValueError, match="own planner"):
        generate(Pair(vq, draft, target), "speculative", [0], 0, gamma="auto", accept_override=lambda k: True)
    with pytest.raises(ValueError, match="gamma='auto' only"):
        generate(Pair(vq, draft, target), "speculative", [0], 0, gamma=2, planner=HistoryPlanner(10))


# ---- a picture's prefix and kept region (in-painting) keep the exact rule exact ------------------

def mini_picture(pair):
    """A 16 px data-set picture (a square) as the mini pair's three token maps."""
    return encode_image(pair, data.make_images([1], 0, size=16)[0])


def scale1_given(var, pair, cls, x0):
    """Exact probabilities of scale 1's four positions given scale 0 = x0, no CFG: (4, V)."""
    tokens = [torch.tensor([[x0]]), torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 16, dtype=torch.long)]
    return teacher_forced_logits(var, [cls], tokens, pair.vqvae).softmax(-1)[0, 1:5]


# the in-paint case keeps the top-left quarter: scale 0 (1×1, a quarter kept) is generated, scale 1 keeps
# its top-left token, scale 2 its top-left 2×2
QUARTER = np.zeros((16, 16), dtype=bool)
QUARTER[:8, :8] = True


def picture_case(case, pair):
    """(generate's picture arguments, the exact target distributions to match, a check of the kept tokens)."""
    pic = mini_picture(pair)
    x0 = int(pic.tokens[0][0, 0])
    if case == "prefix":   # scale 0 is the picture's; scale 1 must follow the target given it
        p1 = scale1_given(pair.target, pair, 1, x0)
        q1 = scale1_given(pair.draft, pair, 1, x0)
        assert (p1 - q1).abs().max() > 0.1, "draft and target must differ for the test to have power"
        expected = {"f1": (p1, slice(0, 4))}
        return dict(prefix=pic.tokens, prefix_scales=1), expected, lambda f0, f1: f0[x0] == 1
    p0, p1 = target_marginals(pair, 1)   # scale 1's inputs depend on scale 0 only, so positions 1..3 keep p1
    corner = int(pic.tokens[1].reshape(-1)[0])
    expected = {"f0": (p0, slice(None)), "f1": (p1[1:], slice(1, 4))}
    return dict(prefix=pic.tokens, keep_mask=QUARTER), expected, lambda f0, f1: bool(f1[0, corner] == 1)


@pytest.mark.parametrize("case", ["prefix", "inpaint"])
@pytest.mark.parametrize("how", list(AUTO))
def test_exact_mode_on_a_picture_samples_the_target_given_it(case, how):
    pair = mini_pair()
    kw, expected, kept = picture_case(case, pair)
    runs = [("speculative", AUTO[how]())]
    if how == next(iter(AUTO)):   # once: target alone with the same picture follows the same distributions
        runs.insert(0, ("target", {}))
    for mode, extra in runs:
        f0, f1, n = scale01_frequencies(pair, mode, **kw, **extra)
        assert kept(f0, f1), f"{mode}: the picture's tokens must stay"
        for name, (p, cells) in expected.items():
            assert_matches({"f0": f0, "f1": f1}[name][cells], p, n)


@pytest.mark.parametrize("case", ["prefix", "inpaint"])
def test_broken_acceptance_rule_fails_on_a_picture(monkeypatch, case):
    pair = mini_pair()
    kw, expected, _ = picture_case(case, pair)

    def accept_everything(rule, p, q, draft, generator, lenience=1.0):
        return torch.ones_like(draft, dtype=torch.bool), draft

    monkeypatch.setattr(speculative, "accept_tokens", accept_everything)
    f0, f1, n = scale01_frequencies(pair, "speculative", gamma=2, **kw)
    name, (p, cells) = next(iter(expected.items()))
    with pytest.raises(AssertionError):
        assert_matches({"f0": f0, "f1": f1}[name][cells], p, n)


@pytest.mark.parametrize("mode,kw", [("target", {}), ("draft", {}), ("schedule", dict(entry_num=5, sd_mask=1)),
                                     ("speculative", dict(gamma=2)), ("speculative", dict(gamma=3, tau=0.5, lenience=2.0)),
                                     ("speculative", dict(gamma="auto", planner=HistoryPlanner(10)))])
def test_picture_tokens_stay_in_every_mode(models, mode, kw):
    """The prefix scales come back unchanged, and so do the kept tokens of every scale; the first model call of
    each model feeds the prefix with the first scale it makes; the trace keeps prefix and mask through save/load."""
    vq, draft, target = models
    pair = Pair(vq, draft, target)
    pic = encode_image(pair, data.make_images([4], 1)[0])
    for k in (0, 3, 10):
        tr = generate(pair, mode, [0, 2], seed=5, prefix=pic.tokens, prefix_scales=k, progressive=False, **kw).trace
        for j in range(k):
            assert all(np.array_equal(t, pic.tokens[j].reshape(-1)) for t in tr.scales[j].tokens)
            assert tr.scales[j].producer == "input" and (tr.scales[j].status == INPUT).all()
        assert all(c.scales[-1] >= k for c in tr.calls) and all(c.scales[0] == 0 for c in tr.calls[:1])
        assert len(tr.calls) == 0 if k == 10 else min(c.scales[0] for c in tr.calls) == 0
        if k == 0 and kw.get("gamma") != "auto":   # k = 0 is a normal run (the history planner has a memory)
            assert same_tokens(tr, generate(pair, mode, [0, 2], seed=5, progressive=False, **kw).trace)
    mask = np.zeros((64, 64), dtype=bool)
    mask[:, :40] = True                                   # keep the left 40 columns, paint the rest
    tr = generate(pair, mode, [0, 2], seed=5, prefix=pic, prefix_scales=2, keep_mask=mask, progressive=False, **kw).trace
    grids = keep_grids(mask, pair.layout.patch_nums)
    for j, (rec, grid) in enumerate(zip(tr.scales, grids)):
        keep = grid.reshape(-1)
        assert all(np.array_equal(t[keep], pic.tokens[j].reshape(-1)[keep]) for t in rec.tokens)
        if j >= 2:
            assert ((rec.status == INPUT) == keep).all()
    assert any(not g.all() for g in grids[2:]) and any(g.any() for g in grids[2:])
    back = Trace.load(io.BytesIO(tr.to_bytes()))
    assert back.prefix_scales == 2 and np.array_equal(back.keep_mask, mask)
    assert np.array_equal(back.picture_tokens, np.concatenate([t.reshape(-1) for t in pic.tokens]))


def test_keep_mask_grids_and_bad_picture_arguments(models):
    """A token cell is kept when at least half of its pixels are; bad prefix arguments name themselves."""
    half = np.zeros((64, 64), dtype=bool)
    half[:, :32] = True
    grids = keep_grids(half, (1, 2, 3, 13))
    assert grids[0].all() and grids[1].tolist() == [[True, False], [True, False]]
    assert grids[2][:, 0].all() and not grids[2][:, 2].any() and grids[2][:, 1].all()   # the middle column is half kept
    assert grids[3][:, :6].all() and not grids[3][:, 7:].any()
    vq, draft, target = models
    pair = Pair(vq, draft, target)
    pic = encode_image(pair, data.make_images([4], 1)[0])
    for kw, match in ((dict(prefix_scales=3), "need prefix"), (dict(prefix=pic, prefix_scales=11), "prefix_scales"),
                      (dict(prefix=pic.tokens[:2], prefix_scales=3), "3 are needed"),
                      (dict(prefix=pic, keep_mask=np.ones((32, 32), bool)), "keep_mask"),
                      (dict(prefix=pic, keep_mask=np.ones((64, 64))), "keep_mask"),
                      (dict(prefix=[t + 100 for t in pic.tokens], prefix_scales=2), "token ids")):
        with pytest.raises(ValueError, match=match):
            generate(pair, "target", [0], seed=0, **kw)


def test_the_judge_counts_only_generated_tokens():
    """A kept (picture) token counts as accepted and is not judged: τ applies to the generated tokens."""
    class KeptRun:
        def kept(self, k):
            return torch.tensor([True, True, False, False])
    accepted = torch.tensor([[False, False, True, False], [True, True, True, True]])
    out, share = speculative.verdict(KeptRun(), 0, accepted)
    assert out.tolist() == [[True, True, True, False], [True, True, True, True]]
    assert share.tolist() == [0.5, 1.0]

    class AllKept:
        def kept(self, k):
            return torch.ones(4, dtype=torch.bool)
    assert speculative.verdict(AllKept(), 0, torch.zeros(2, 4, dtype=torch.bool))[1].tolist() == [1.0, 1.0]
