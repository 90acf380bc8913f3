"""The cost prior's FLOP and byte counts against what torch counts and holds."""
import torch
from torch.utils.flop_counter import FlopCounterMode

from sdvar_core.config import VARConfig
from sdvar_core.costprior import call_bytes, call_flops, weight_count
from sdvar_core.var import VAR


def small_var() -> VAR:
    cfg = VARConfig(depth=2, width=64, heads=2, vocab_size=96, z_channels=8, num_classes=5,
                    patch_nums=(1, 2, 3, 4))
    return VAR(cfg).eval()


def explicit_attention(q, k, v, attn_mask=None, scale=None):
    """Attention as two matmuls, which torch's FLOP counter sees (it does not count the CPU's fused kernel)."""
    scores = (q @ k.transpose(-2, -1)) * scale
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return scores.softmax(-1) @ v


def test_call_flops_match_torch_flop_counter(monkeypatch):
    """Windows of every size, first call and calls on a filled cache: the analytic count equals torch's
    count of the call (the per-run modulations made beforehand, as the engine does)."""
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", explicit_attention)
    model = small_var()
    layout = model.cfg.layout
    cond = model.condition(torch.tensor([1, 3]))          # B = 2 → 4 rows
    mods = model.modulations(cond)
    cache = model.new_cache()
    for first, last in [(0, 0), (1, 2), (3, 3)]:
        n = layout.ends[last] - layout.starts[first]
        latents = None if last == 0 else torch.randn(2, layout.ends[last] - layout.starts[max(first, 1)], 8)
        with torch.no_grad():
            x = model.embed_window(cond, first, latents)
            with FlopCounterMode(display=False) as counter:
                model.forward_window(x, cond, cache, None, mods)
        kv = len(cache)
        counted = counter.get_total_flops()
        # torch counts matmuls only; the analytic count adds the small word embedding (done before the call)
        expected = call_flops(model.cfg, 4, n, kv) - 4 * 2 * n * 8 * 64
        assert counted == expected, (first, last, counted, expected)


def test_weight_count_is_the_blocks_and_head_matrices():
    model = small_var()
    matrices = sum(m.weight.numel() for b in model.blocks for m in (b.attn.mat_qkv, b.attn.proj, b.ffn.fc1, b.ffn.fc2))
    assert weight_count(model.cfg) == matrices + model.head.weight.numel()
    assert call_bytes(model.cfg, 4, 10, 2) == 2 * (weight_count(model.cfg) + 2 * 2 * 4 * 10 * 64)
