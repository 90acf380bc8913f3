"""What a model call costs before anything was measured: FLOPs and bytes of a window, from the shapes.

A VAR call feeds n new positions (one window of scales) on a KV cache, for 2B rows (the CFG pair of
each sample); after the call the cache holds kv positions. Per row, per block:
qkv 6nC², projection 2nC², MLP 2·2·n·C·(r·C), attention scores and values 2·2·n·kv·C; plus the head
2nCV. The AdaLN modulations depend on the class only and are made once per run, so they are left out.
Bytes: the weights of the blocks and the head, read once per call, and the keys and values it reads.

`seconds ≈ overhead + flops / flop_rate + bytes / byte_rate` is the prior the γ planner's costs start from
(`calibration`) and the GPU-time requests of a Space are sized with; pure functions, no torch.
"""
from __future__ import annotations


def call_flops(cfg, rows: int, n: int, kv: int) -> float:
    """Multiply-adds × 2 of one forward of `cfg` (a VARConfig) feeding n positions for `rows` rows
    with kv keys in the cache afterwards (kv ≥ n)."""
    C, depth, V = cfg.width, cfg.depth, cfg.vocab_size
    hidden = round(C * cfg.mlp_ratio)
    per_block = 8 * n * C * C + 4 * n * C * hidden + 4 * n * kv * C
    return float(rows) * (depth * per_block + 2 * n * C * V + 2 * n * cfg.z_channels * C)


def weight_count(cfg) -> int:
    """Weights a call reads: the blocks' attention and MLP matrices and the head (not the per-run AdaLN)."""
    C, hidden = cfg.width, round(cfg.width * cfg.mlp_ratio)
    return cfg.depth * (4 * C * C + 2 * C * hidden) + C * cfg.vocab_size


def call_bytes(cfg, rows: int, kv: int, dtype_bytes: int = 4) -> float:
    """Bytes one call reads: its weights once, and the keys and values of kv positions in every block."""
    return float(dtype_bytes) * (weight_count(cfg) + 2 * cfg.depth * rows * kv * cfg.width)
