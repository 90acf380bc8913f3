"""The VAR transformer: cached inference == teacher forcing, KV rollback, conditioning checks."""
import pytest
import torch

from conftest import teacher_forced_logits
from sdvar_core.config import VARConfig, VQVAEConfig, official_var_config
from sdvar_core.masks import mask_matrix
from sdvar_core.engine import Pair, generate
from sdvar_core.var import VAR, KVCache
from sdvar_core.vqvae import VQVAE


def small_models(seed=0, depth=2, width=64, heads=2, shared_aln=False):
    torch.manual_seed(seed)
    vq = VQVAE(VQVAEConfig(vocab_size=32, z_channels=8, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1,
                           use_attn=False, image_size=64)).eval()
    var = VAR(VARConfig(depth=depth, width=width, heads=heads, vocab_size=32, z_channels=8, num_classes=5,
                        shared_aln=shared_aln)).eval()
    with torch.no_grad():  # break the near-identity init so every block matters
        for p in var.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return vq, var


@pytest.mark.parametrize("shared_aln", [False, True])
def test_cached_loop_equals_teacher_forcing(shared_aln):
    vq, var = small_models(shared_aln=shared_aln)
    pair = Pair(vq, var, var)
    res = generate(pair, "target", [1, 3], seed=5, cfg=0.0, progressive=False)
    tokens = [torch.from_numpy(s.tokens) for s in res.trace.scales]
    tf = teacher_forced_logits(var, [1, 3], tokens, vq)                   # (B, L, V)
    # Re-run the cached loop on the same tokens and compare every scale's conditional logits.
    cond = var.condition(torch.tensor([1, 3]))
    cache, layout, f_hat = var.new_cache(), var.cfg.layout, torch.zeros(2, 8, 16, 16)
    for k in range(layout.num_scales):
        latents = vq.next_input(k - 1, f_hat) if k else None
        logits = var.forward_window(var.embed_window(cond, k, latents), cond, cache)[:2]
        ref = tf[:, layout.starts[k]:layout.ends[k]]
        assert (logits - ref).abs().max().item() <= 1e-4, k
        f_hat = vq.add_scale(k, f_hat, tokens[k])
    assert tf.shape == (2, layout.total, 32)


def test_truncate_and_recompute_equals_uninterrupted():
    vq, var = small_models()
    torch.manual_seed(1)
    layout = var.cfg.layout
    tokens = [torch.randint(0, 32, (2, n)) for n in layout.sizes]
    cond = var.condition(torch.tensor([0, 4]))
    inputs = vq.teacher_inputs(tokens)   # (B, L-1, Cvae)

    def window(k):
        lat = inputs[:, layout.starts[k] - 1:layout.ends[k] - 1] if k else None
        return var.embed_window(cond, k, lat)

    full = var.new_cache()
    ref = [var.forward_window(window(k), cond, full) for k in range(layout.num_scales)]
    for k in (2, 5, 8):
        cache = var.new_cache()
        for j in range(layout.num_scales):
            var.forward_window(window(j), cond, cache)
        cache.truncate(layout.ends[k])
        assert len(cache) == layout.ends[k]
        again = var.forward_window(window(k + 1), cond, cache)
        assert (again - ref[k + 1]).abs().max().item() <= 1e-5


def test_kv_cache_api():
    cache = KVCache(2)
    assert len(cache) == 0
    k = torch.randn(2, 1, 5, 4)
    cache.append(0, k, k)
    cache.append(1, k, k)
    cache.append(0, k, k)
    cache.append(1, k, k)
    assert len(cache) == 10
    cache.truncate(3)
    assert len(cache) == 3 and torch.equal(cache.k[1], k[:, :, :3])
    with pytest.raises(ValueError, match="truncate"):
        cache.truncate(7)
    cache.reset()
    assert len(cache) == 0


def test_official_rule_sizes():
    for depth, params in ((16, 310_283_520), (30, 2_010_020_356)):
        with torch.device("meta"):
            m = VAR(official_var_config(depth))
        assert m.num_params() == params
        assert len(m.state_dict()) == 12 + 13 * depth


def test_bad_class_id():
    _, var = small_models()
    with pytest.raises(ValueError, match="class id"):
        var.condition(torch.tensor([5]))
    with pytest.raises(ValueError, match="class id"):
        var.condition(torch.tensor([-1]))


def test_config_validation():
    with pytest.raises(ValueError, match="heads"):
        VARConfig(depth=2, width=65, heads=2)
    with pytest.raises(ValueError, match="depth"):
        official_var_config(0)


def test_training_mask_is_sd_mask_rule_3():
    """VAR's teacher-forcing mask (a buffer of the official checkpoints) is rule 3 over the whole sequence."""
    var = VAR(VARConfig(depth=1, width=32, heads=1, vocab_size=8, z_channels=4, num_classes=2))
    assert torch.equal(var.attn_bias_for_masking[0, 0] == 0, mask_matrix(3, 9, q_end=680))
