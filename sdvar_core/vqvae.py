"""Multi-scale residual VQ-VAE (VAR's tokenizer), faithful to the official layout.

Image (B,3,H,W) in [0,1] --encoder, quant_conv--> f (B,Cvae,h,w) --quantizer--> one
token map per scale (B, pn_k**2). Tokens go back to f_hat = sum_k phi_k(up(embed_k)),
and post_quant_conv + decoder turn f_hat into an image.

With `OFFICIAL_VQVAE` the state dict has exactly the 324 keys of the released
`vae_ch160v4096z32.pth`, so `load_state_dict(official_sd, strict=True)` works.

Training (`VQVAE.forward`) uses the official losses: a straight-through estimator
for the encoder, plus per scale ||f_hat_k - sg(f)||^2 (codebook and phi) and
beta * ||sg(f_hat_k) - f||^2 (commitment), averaged over scales. The codebook is
learned by gradient (no EMA update); instead the per-scale usage EMA buffer
`ema_vocab_hit_SV` drives a dead-code restart: every `restart_every` training
calls, codes used less than `dead_usage` times per batch (summed over scales) are
re-seeded with residual vectors from the current batch.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import VQVAEConfig


def num_groups(channels: int) -> int:
    """The largest divisor of `channels` that is <= 32 and leaves >= 4 channels per group.

    Official widths (160/320/640) get 32. Small widths keep several channels per group:
    with one channel per group GroupNorm would erase each channel's spatial mean (the image colour).
    """
    return max(g for g in range(1, min(32, max(1, channels // 4)) + 1) if channels % g == 0)


def Normalize(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups(channels), channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """(B,Cin,H,W) -> (B,Cout,H,W): two GN-SiLU-conv3x3 layers plus a (1x1 if Cin != Cout) shortcut."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.norm1 = Normalize(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = Normalize(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """(B,C,H,W) -> (B,C,H,W): single-head self-attention over H*W with a fused 1x1 qkv conv."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = Normalize(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(-1, -2).unbind(1)  # each (B,HW,C)
        h = F.scaled_dot_product_attention(q, k, v)  # scale C**-0.5
        return x + self.proj_out(h.transpose(-1, -2).reshape(B, C, H, W))


class Downsample2x(nn.Module):
    """(B,C,H,W) -> (B,C,H/2,W/2): zero-pad right/bottom by 1, then 3x3 conv, stride 2."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample2x(nn.Module):
    """(B,C,H,W) -> (B,C,2H,2W): nearest x2, then 3x3 conv."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class MidBlock(nn.Module):
    """ResnetBlock, attention (if enabled), ResnetBlock at the lowest resolution."""

    def __init__(self, ch: int, use_attn: bool):
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch)
        self.attn_1 = AttnBlock(ch) if use_attn else nn.Identity()
        self.block_2 = ResnetBlock(ch, ch)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """(B,3,H,W) in [-1,1] -> (B,z_channels,H/2**(n-1),W/2**(n-1)), n = len(ch_mult).

    Level i has num_res_blocks ResnetBlocks (+ attention at the last level when
    use_attn) and a Downsample2x except at the last level.
    """

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        n = len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(3, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = cfg.ch
        for i, mult in enumerate(cfg.ch_mult):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            block_out = cfg.ch * mult
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if cfg.use_attn and i == n - 1:
                    level.attn.append(AttnBlock(block_in))
            if i != n - 1:
                level.downsample = Downsample2x(block_in)
            self.down.append(level)
        self.mid = MidBlock(block_in, cfg.use_attn)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B,z_channels,h,w) -> (B,3,h*2**(n-1),w*2**(n-1)), unclamped (about [-1,1]).

    `up[i]` is stored by level index but run from n-1 down to 0; each level has
    num_res_blocks+1 ResnetBlocks (+ attention at level n-1) and an Upsample2x except level 0.
    """

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        n = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = MidBlock(block_in, cfg.use_attn)
        up = []
        for i in reversed(range(n)):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            block_out = cfg.ch * cfg.ch_mult[i]
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if cfg.use_attn and i == n - 1:
                    level.attn.append(AttnBlock(block_in))
            if i != 0:
                level.upsample = Upsample2x(block_in)
            up.insert(0, level)
        self.up = nn.ModuleList(up)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 3, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Phi(nn.Conv2d):
    """(B,C,h,w) -> (B,C,h,w): (1-r)*h + r*conv3x3(h); official r = 0.5.

    A Conv2d subclass so that its keys are `qresi_ls.{j}.weight/bias` as in the checkpoint.
    """

    def __init__(self, channels: int, resi_ratio: float):
        super().__init__(channels, channels, 3, padding=1)
        self.resi_ratio = resi_ratio

    def forward(self, h):
        return h * (1 - self.resi_ratio) + super().forward(h) * self.resi_ratio


class PhiPartiallyShared(nn.Module):
    """`share_quant_resi` Phi convs; scale k uses `layout.phi_index(k, share_quant_resi)`."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.qresi_ls = nn.ModuleList(Phi(cfg.z_channels, cfg.quant_resi) for _ in range(cfg.share_quant_resi))
        self.table = tuple(cfg.layout.phi_index(k, cfg.share_quant_resi) for k in range(cfg.layout.num_scales))

    def __getitem__(self, k: int) -> Phi:
        return self.qresi_ls[self.table[k]]


class MultiScaleQuantizer(nn.Module):
    """Residual quantization of f (B,Cvae,h,w) into one token map per scale.

    Holds the codebook `embedding` (V, Cvae), the phi convs `quant_resi` and the
    usage statistics `ema_vocab_hit_SV` (num_scales, V), a persistent buffer.
    """

    def __init__(self, cfg: VQVAEConfig, restart_every: int = 100, dead_usage: float = 1.0):
        super().__init__()
        self.cfg = cfg
        self.patch_nums = cfg.layout.patch_nums
        self.latent = cfg.latent_size
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.z_channels)
        nn.init.uniform_(self.embedding.weight, -1.0 / cfg.vocab_size, 1.0 / cfg.vocab_size)
        self.quant_resi = PhiPartiallyShared(cfg)
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.patch_nums), cfg.vocab_size))
        self.restart_every = restart_every  # training calls between dead-code restarts; 0 = never
        self.dead_usage = dead_usage  # a code is dead below this many hits per batch (EMA, all scales)
        self.train_calls = 0

    # --- token <-> latent ---------------------------------------------------

    def nearest(self, z):
        """z (B,C,p,p) -> nearest code indices (B, p*p), row-major, by squared L2 distance."""
        zf = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        e = self.embedding.weight
        d = zf.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * zf @ e.t()
        return d.argmin(1).view(z.shape[0], -1)

    def embed(self, k: int, idx):
        """idx (B, pn_k**2) -> (B, Cvae, pn_k, pn_k)."""
        pn = self.patch_nums[k]
        return self.embedding(idx).transpose(1, 2).reshape(idx.shape[0], -1, pn, pn)

    def contribution(self, k: int, idx):
        """idx (B, pn_k**2) -> phi_k(bicubic(embed)) (B, Cvae, h, w); no upsample at the last scale."""
        return self.contribution_of(k, self.embed(k, idx))

    def contribution_of(self, k: int, h):
        """h (B, Cvae, pn_k, pn_k) latent vectors of scale k -> phi_k(bicubic(h)) (B, Cvae, h, w)."""
        if k != len(self.patch_nums) - 1:
            h = F.interpolate(h, size=(self.latent, self.latent), mode="bicubic", align_corners=False)
        return self.quant_resi[k](h)

    def downsample(self, f, k: int):
        """f (B,C,h,w) -> area-downsampled (B,C,pn_k,pn_k) (identity at the latent size)."""
        pn = self.patch_nums[k]
        return f if pn == f.shape[-1] else F.interpolate(f, size=(pn, pn), mode="area")

    @torch.no_grad()
    def f_to_tokens(self, f) -> list[torch.Tensor]:
        """f (B,Cvae,h,w) -> list of (B, pn_k**2) LongTensors (official residual quantization)."""
        f_rest, out = f.clone(), []
        for k in range(len(self.patch_nums)):
            idx = self.nearest(self.downsample(f_rest, k))
            f_rest -= self.contribution(k, idx)
            out.append(idx)
        return out

    # --- training -----------------------------------------------------------

    def forward(self, f):
        """f (B,Cvae,h,w) -> (f_hat with straight-through grad to f, vq_loss scalar, list of idx).

        In training mode also updates `ema_vocab_hit_SV` and restarts dead codes.
        """
        with torch.autocast(f.device.type, enabled=False):  # distances and residuals stay fp32
            return self._quantize(f.float())

    def _quantize(self, f):
        f_sg = f.detach()
        f_rest, f_hat = f_sg.clone(), torch.zeros_like(f_sg)
        vq_loss, tokens, pool = 0.0, [], []
        for k in range(len(self.patch_nums)):
            z = self.downsample(f_rest, k)
            idx = self.nearest(z)
            h = self.contribution(k, idx)
            f_hat = f_hat + h
            f_rest = f_rest - h.detach()
            vq_loss = vq_loss + F.mse_loss(f_hat, f_sg) + self.cfg.beta * F.mse_loss(f_hat.detach(), f)
            tokens.append(idx)
            pool.append(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
        if self.training:
            self._track_usage(tokens, torch.cat(pool))
        return f + (f_hat - f).detach(), vq_loss / len(self.patch_nums), tokens

    @torch.no_grad()
    def _track_usage(self, tokens, pool):
        """Update the per-scale hit EMA; every `restart_every` calls re-seed dead codes from `pool` (N, Cvae)."""
        V = self.cfg.vocab_size
        hits = torch.stack([torch.bincount(t.flatten(), minlength=V).float() for t in tokens])
        if self.train_calls == 0 and not self.ema_vocab_hit_SV.any():
            self.ema_vocab_hit_SV.copy_(hits)
        else:
            self.ema_vocab_hit_SV.mul_(0.99).add_(hits, alpha=0.01)
        if self.restart_every and self.train_calls % self.restart_every == 0:
            dead = (self.ema_vocab_hit_SV.sum(0) < self.dead_usage).nonzero().flatten()
            if len(dead):
                pick = torch.randint(len(pool), (len(dead),), device=pool.device)
                self.embedding.weight[dead] = pool[pick] + 1e-3 * torch.randn_like(pool[pick])
                self.ema_vocab_hit_SV[:, dead] = self.dead_usage / len(self.patch_nums)
        self.train_calls += 1


class VQVAE(nn.Module):
    """The VQ-VAE plus the token <-> f_hat <-> image API used by VAR and speculative decoding.

    Shapes: images (B,3,H,W) in [0,1], H = W = cfg.image_size; latents (B,Cvae,h,w),
    h = w = cfg.latent_size; tokens: list of K LongTensors (B, pn_k**2), row-major.
    """

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        for key in ("vocab_size", "z_channels", "ch", "num_res_blocks", "share_quant_resi"):
            if int(getattr(cfg, key)) < 1:
                raise ValueError(f"VQVAEConfig.{key} must be >= 1, got {getattr(cfg, key)}")
        if not 0 < cfg.quant_resi <= 1:
            raise ValueError(f"VQVAEConfig.quant_resi must be in (0, 1], got {cfg.quant_resi}")
        self.cfg = cfg
        self.layout = cfg.layout
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = MultiScaleQuantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, padding=1)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, padding=1)

    # --- checks ------------------------------------------------------------------

    def _check_images(self, images):
        s = self.cfg.image_size
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2:] != (s, s):
            raise ValueError(f"images must have shape (B, 3, {s}, {s}) (image_size={s}), got {tuple(images.shape)}")

    def _check_scale(self, k: int):
        if not 0 <= k < self.layout.num_scales:
            raise ValueError(f"scale k must be in [0, {self.layout.num_scales}), got {k}")

    def _check_idx(self, k: int, idx):
        self._check_scale(k)
        if idx.dim() != 2 or idx.shape[1] != self.layout.sizes[k]:
            raise ValueError(f"tokens of scale {k} must have shape (B, {self.layout.sizes[k]}), got {tuple(idx.shape)}")

    def _check_tokens(self, tokens):
        if len(tokens) != self.layout.num_scales:
            raise ValueError(f"expected {self.layout.num_scales} token maps, got {len(tokens)}")
        for k, idx in enumerate(tokens):
            self._check_idx(k, idx)

    # --- image <-> latent -----------------------------------------------------------

    def encode(self, images):
        """images (B,3,H,W) in [0,1] -> f (B,Cvae,h,w), before quantization."""
        self._check_images(images)
        return self.quant_conv(self.encoder(images * 2 - 1))

    def fhat_to_image(self, f_hat):
        """f_hat (B,Cvae,h,w) -> image (B,3,H,W) in [0,1]."""
        return (self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1) + 1) / 2

    # --- tokens ---------------------------------------------------------------------

    @torch.no_grad()
    def image_to_tokens(self, images) -> list[torch.Tensor]:
        """images (B,3,H,W) in [0,1] -> list of K LongTensors (B, pn_k**2)."""
        return self.quantize.f_to_tokens(self.encode(images))

    def scale_contribution(self, k: int, idx):
        """idx (B, pn_k**2) -> phi_k(bicubic_up(embed)) (B, Cvae, h, w); no upsample at the last scale."""
        self._check_idx(k, idx)
        return self.quantize.contribution(k, idx)

    def soft_contribution(self, k: int, probs):
        """probs (B, pn_k**2, V) -> the contribution of the probability-weighted codebook mixture
        (VAR's `more_smooth`), (B, Cvae, h, w)."""
        self._check_scale(k)
        pn = self.layout.patch_nums[k]
        h = (probs @ self.quantize.embedding.weight).transpose(1, 2).reshape(probs.shape[0], -1, pn, pn)
        return self.quantize.contribution_of(k, h)

    def add_scale(self, k: int, f_hat, idx):
        """f_hat (B,Cvae,h,w) + scale k's contribution -> new f_hat (the input is not modified)."""
        return f_hat + self.scale_contribution(k, idx)

    def next_input(self, k: int, f_hat):
        """f_hat after scale k -> VAR's input for scale k+1: (B, pn_{k+1}**2, Cvae), row-major."""
        self._check_scale(k)
        if k == self.layout.num_scales - 1:
            raise ValueError(f"scale k={k} is the last scale; there is no next input")
        return self.quantize.downsample(f_hat, k + 1).flatten(2).transpose(1, 2)

    def tokens_to_fhat(self, tokens):
        """tokens (K maps) -> f_hat (B, Cvae, h, w) = sum_k scale_contribution(k)."""
        return self.progressive_fhats(tokens)[-1]

    def progressive_fhats(self, tokens) -> list[torch.Tensor]:
        """tokens (K maps) -> [f_hat after scale 0, ..., after scale K-1], each (B, Cvae, h, w)."""
        self._check_tokens(tokens)
        B, C, s = tokens[0].shape[0], self.cfg.z_channels, self.cfg.latent_size
        f_hat = torch.zeros(B, C, s, s, device=tokens[0].device, dtype=self.quantize.embedding.weight.dtype)
        out = []
        for k, idx in enumerate(tokens):
            f_hat = self.add_scale(k, f_hat, idx)
            out.append(f_hat)
        return out

    def teacher_inputs(self, tokens):
        """tokens (K maps) -> VAR's teacher-forcing input (B, L - pn_0**2, Cvae) (idxBl_to_var_input)."""
        fhats = self.progressive_fhats(tokens)
        return torch.cat([self.next_input(k, fhats[k]) for k in range(len(tokens) - 1)], dim=1)

    def tokens_to_image(self, tokens):
        """tokens (K maps) -> image (B,3,H,W) in [0,1]."""
        return self.fhat_to_image(self.tokens_to_fhat(tokens))

    # --- training ---------------------------------------------------------------------

    def forward(self, images):
        """images (B,3,H,W) in [0,1] -> (recon (B,3,H,W) in [0,1], losses).

        losses: 'recon' (MSE in [-1,1] space), 'vq' (codebook + beta*commitment),
        'loss' (their sum, to optimise), 'usage' (fraction of codes hit in this batch).
        """
        f = self.encode(images)
        f_hat, vq_loss, tokens = self.quantize(f)
        out = self.decoder(self.post_quant_conv(f_hat))
        out = out.float()
        recon = F.mse_loss(out, images * 2 - 1)
        used = torch.zeros(self.cfg.vocab_size, dtype=torch.bool, device=images.device)
        for t in tokens:
            used[t.flatten()] = True
        losses = {"loss": recon + vq_loss, "recon": recon.detach(), "vq": vq_loss.detach(),
                  "usage": used.float().mean()}
        return (out.clamp(-1, 1) + 1) / 2, losses
