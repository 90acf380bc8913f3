"""The VAR transformer: embeddings, AdaLN blocks, cosine attention, KV cache, AdaLN head.

Faithful to FoundationVision/VAR (state-dict keys match the official checkpoints),
written for speculative decoding: one `forward_window` runs any window of positions
on top of a KV cache that can be truncated (rollback), with an optional attention mask.

Shapes: B = batch, N = model rows (2B with CFG: [cond; uncond]), L = 680 positions,
C = width, H = heads, V = vocab, Cvae = latent channels.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import VARConfig


class KVCache:
    """Keys and values of every block, each (N, H, Lk, head_dim), appended scale by scale."""

    def __init__(self, depth: int):
        self.k: list[torch.Tensor | None] = [None] * depth
        self.v: list[torch.Tensor | None] = [None] * depth

    def __len__(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[2]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k[layer] is not None:
            k = torch.cat((self.k[layer], k), dim=2)
            v = torch.cat((self.v[layer], v), dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v

    def truncate(self, length: int) -> None:
        """Keep the first `length` positions (rollback); 0 empties the cache."""
        if not 0 <= length <= len(self):
            raise ValueError(f"cannot truncate a KV cache of length {len(self)} to {length}")
        if length == 0:
            self.reset()
            return
        self.k = [k[:, :, :length] for k in self.k]
        self.v = [v[:, :, :length] for v in self.v]

    def reset(self) -> None:
        self.k = [None] * len(self.k)
        self.v = [None] * len(self.v)


class SelfAttention(nn.Module):
    """Multi-head attention; with attn_l2_norm, cosine attention with a learned per-head temperature."""

    def __init__(self, cfg: VARConfig):
        super().__init__()
        C, H = cfg.width, cfg.heads
        self.heads, self.head_dim, self.l2_norm = H, cfg.head_dim, cfg.attn_l2_norm
        self.mat_qkv = nn.Linear(C, 3 * C, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(C))
        self.v_bias = nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias", torch.zeros(C))
        if self.l2_norm:
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, H, 1, 1), math.log(4.0)))
            self.max_scale_mul = math.log(100.0)
            self.scale = 1.0
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.proj = nn.Linear(C, C)

    def forward(self, x, attn_mask=None, cache: KVCache | None = None, layer: int = 0):
        """x (N, Lq, C); attn_mask None or bool/float (Lq, Lk_total) → (N, Lq, C)."""
        N, Lq, C = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(N, Lq, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, H, Lq, hd)
        if self.l2_norm:
            q = F.normalize(q, dim=-1) * self.scale_mul_1H11.clamp(max=self.max_scale_mul).exp()
            k = F.normalize(k, dim=-1)
        if cache is not None:
            k, v = cache.append(layer, k, v)
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(N, Lq, C))


class FFN(nn.Module):
    def __init__(self, C: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(C, hidden)
        self.fc2 = nn.Linear(hidden, C)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class AdaLNBlock(nn.Module):
    """x += g1·attn(LN(x)(1+s1)+b1); x += g2·ffn(LN(x)(1+s2)+b2), modulation from the class condition."""

    def __init__(self, cfg: VARConfig):
        super().__init__()
        C = cfg.width
        self.shared_aln = cfg.shared_aln
        self.ln = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=False)
        self.attn = SelfAttention(cfg)
        self.ffn = FFN(C, round(C * cfg.mlp_ratio))
        if cfg.shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C**0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))

    def modulation(self, cond):
        """cond (N, C), or (N, 1, 6, C) when AdaLN is shared → (N, 1, 6, C): gammas, scales, shifts."""
        if self.shared_aln:
            return self.ada_gss + cond
        return self.ada_lin(cond).view(cond.shape[0], 1, 6, -1)

    def forward(self, x, mods, attn_mask=None, cache=None, layer=0):
        """x (N, Lq, C); mods (N, 1, 6, C) from `modulation`."""
        g1, g2, s1, s2, b1, b2 = mods.unbind(2)
        x = x + g1 * self.attn(self.ln(x) * (1 + s1) + b1, attn_mask, cache, layer)
        return x + g2 * self.ffn(self.ln(x) * (1 + s2) + b2)


class AdaLNHead(nn.Module):
    def __init__(self, cfg: VARConfig):
        super().__init__()
        C = cfg.width
        self.ln = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))

    def modulation(self, cond):
        """cond (N, C) → (N, 1, 2, C): scale, shift."""
        return self.ada_lin(cond).view(cond.shape[0], 1, 2, -1)

    def forward(self, x, mods):
        scale, shift = mods.unbind(2)
        return self.ln(x) * (1 + scale) + shift


class VAR(nn.Module):
    """Class-conditional next-scale transformer (state-dict layout of the official VAR)."""

    def __init__(self, cfg: VARConfig):
        super().__init__()
        self.cfg = cfg
        layout = cfg.layout
        C, L = cfg.width, layout.total
        self.num_classes = cfg.num_classes
        self.word_embed = nn.Linear(cfg.z_channels, C)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)  # last row = null class for CFG
        self.pos_start = nn.Parameter(torch.zeros(1, layout.sizes[0], C))
        self.pos_1LC = nn.Parameter(torch.zeros(1, L, C))
        self.lvl_embed = nn.Embedding(layout.num_scales, C)
        if cfg.shared_aln:
            self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        self.blocks = nn.ModuleList(AdaLNBlock(cfg) for _ in range(cfg.depth))
        self.head_nm = AdaLNHead(cfg)
        self.head = nn.Linear(C, cfg.vocab_size)
        lvl = torch.tensor(layout.scale_of_position).view(1, L)
        self.register_buffer("lvl_1L", lvl)
        causal = lvl.view(L, 1) >= lvl.view(1, L)   # sd_mask rule 3 over the whole sequence (tested)
        self.register_buffer("attn_bias_for_masking",
                             torch.zeros(L, L).masked_fill(~causal, float("-inf")).view(1, 1, L, L))
        self.init_weights()

    # ---- conditioning and inputs -------------------------------------------------------
    def condition(self, class_ids: torch.Tensor, cfg_rows: bool = True) -> torch.Tensor:
        """class_ids (B,) → class embeddings (2B, C) as [cond; null] (or (B, C) without CFG rows)."""
        class_ids = torch.as_tensor(class_ids, device=self.class_emb.weight.device).long().view(-1)
        if class_ids.numel() and (int(class_ids.min()) < 0 or int(class_ids.max()) >= self.num_classes):
            raise ValueError(f"class id must be in [0, {self.num_classes}), got {class_ids.tolist()}")
        if cfg_rows:
            class_ids = torch.cat((class_ids, torch.full_like(class_ids, self.num_classes)))
        return self.class_emb(class_ids)

    def embed_window(self, cond: torch.Tensor, first_scale: int, latents: torch.Tensor | None) -> torch.Tensor:
        """Transformer input for the positions of scales first_scale.. .

        cond (N, C) from `condition`; latents (B, Lw, Cvae): VAR inputs of the window's scales ≥ 1
        (area-downsampled cumulative f_hat), B = N or N/2 (then repeated for the null rows).
        Scale 0's slot (when first_scale == 0) is the class token: cond + pos_start.
        Returns (N, Lq, C), Lq = Lw (+ pn_0² when first_scale == 0); adds level + position embeddings.
        """
        layout = self.cfg.layout
        parts = []
        if first_scale == 0:
            parts.append(cond.unsqueeze(1).expand(-1, layout.sizes[0], -1) + self.pos_start)
        if latents is not None and latents.shape[1] > 0:
            x = self.word_embed(latents.to(self.word_embed.weight.dtype))
            if x.shape[0] != cond.shape[0]:
                x = x.repeat(cond.shape[0] // x.shape[0], 1, 1)
            parts.append(x)
        x = torch.cat(parts, dim=1)
        start = layout.starts[first_scale]
        pos = self.lvl_embed(self.lvl_1L[:, start:start + x.shape[1]]) + self.pos_1LC[:, start:start + x.shape[1]]
        return x + pos

    # ---- transformer -------------------------------------------------------------------
    def modulations(self, cond: torch.Tensor) -> list[torch.Tensor]:
        """AdaLN modulations of every block, (N, 1, 6, C) each, then the head's (N, 1, 2, C).

        They depend on the class only, so a run computes them once (for VAR-d16 the ada_lin
        weights are a third of the model, read again in every call otherwise).
        """
        block_cond = cond
        if self.cfg.shared_aln:
            block_cond = self.shared_ada_lin(cond).view(-1, 1, 6, self.cfg.width)
        return [block.modulation(block_cond) for block in self.blocks] + [self.head_nm.modulation(cond.float())]

    def forward_window(self, x: torch.Tensor, cond: torch.Tensor, cache: KVCache | None = None,
                       attn_mask: torch.Tensor | None = None, mods: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Run the blocks and head on x (N, Lq, C) on top of `cache` → logits (N, Lq, V), fp32.

        attn_mask: None (every query sees every cached and new key) or (Lq, len(cache)+Lq),
        bool (True = may attend) or float additive bias. mods: `modulations(cond)`, if already computed.
        """
        mods = self.modulations(cond) if mods is None else mods
        for i, block in enumerate(self.blocks):
            x = block(x, mods[i], attn_mask, cache, i)
        return self.head(self.head_nm(x.float(), mods[-1].float())).float()

    def forward(self, class_ids: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Teacher-forced training forward (class dropout while training).

        class_ids (B,); latents (B, L - pn_0², Cvae) from `VQVAE.teacher_inputs` → logits (B, L, V).
        """
        class_ids = torch.as_tensor(class_ids, device=self.class_emb.weight.device).long()
        cond = self.condition(class_ids, cfg_rows=False)
        if self.training and self.cfg.cond_drop_rate > 0:
            drop = torch.rand(class_ids.shape, device=cond.device) < self.cfg.cond_drop_rate
            cond = torch.where(drop[:, None], self.class_emb.weight[self.num_classes], cond)
        x = self.embed_window(cond, 0, latents)
        L = x.shape[1]
        return self.forward_window(x, cond, None, self.attn_bias_for_masking[0, 0, :L, :L])

    # ---- plumbing ------------------------------------------------------------------------
    def new_cache(self) -> KVCache:
        return KVCache(self.cfg.depth)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_weights(self, init_std: float | None = None, init_head: float = 0.02,
                     init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5):
        """Training initialisation in the spirit of the official one (irrelevant for loaded weights)."""
        std = init_std or (1 / (3 * self.cfg.width)) ** 0.5
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=std)
        nn.init.trunc_normal_(self.pos_start, std=std)
        nn.init.trunc_normal_(self.pos_1LC, std=std)
        C = self.cfg.width
        with torch.no_grad():
            self.head.weight.mul_(init_head)
            self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
            for block in self.blocks:
                block.attn.proj.weight.div_(math.sqrt(2 * self.cfg.depth))
                block.ffn.fc2.weight.div_(math.sqrt(2 * self.cfg.depth))
                if not self.cfg.shared_aln:
                    w = block.ada_lin[-1].weight
                    w[2 * C:].mul_(init_adaln)
                    w[:2 * C].mul_(init_adaln_gamma)


DERIVED_BUFFERS = ("lvl_1L", "attn_bias_for_masking")
"""Buffers rebuilt from the config; our safetensors files leave them out."""
