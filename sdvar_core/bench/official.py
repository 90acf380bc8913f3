"""Our engine against the official VAR code's own loop, end to end, on the same random weights.

Needs a checkout of https://github.com/FoundationVision/VAR (--var-repo; nothing of it is vendored
here). Its `VQVAE` and `VAR` are built with flash-attention and fused kernels off and get our random
official-size models' state dicts (the key layouts are the same); `VAR.autoregressive_infer_cfg`
then makes CFG images end to end (its own sampling with torch.multinomial, its f_hat updates, the
decode), timed against `generate(pair, "target", ...)` with the same CFG, top-k and top-p. For bf16
the official call runs inside torch.autocast(device, bfloat16) (as its demo does on CUDA with fp16);
ours uses precision="bf16". Rows are interleaved and rotated per repeat.
"""
from __future__ import annotations

import importlib
import statistics
import sys
import time
from pathlib import Path

import torch

from ..engine import Pair, generate
from ..runtime import check_precision, machine_name
from .pairs import random_official_var, random_vqvae
from .tables import LoadMeter, markdown_table, med_range

BF16_GOAL = 1.5   # issue 12: bf16 makes official-size d16 end to end ≥ 1.5× faster than fp32 on the CPU


def official_models(repo: str | Path, ours_vq, ours_var, device: torch.device):
    """The official VQVAE and VAR (from a checkout at `repo`) holding our models' weights, in eval mode."""
    repo = Path(repo).resolve()
    if not (repo / "models" / "var.py").is_file():
        raise ValueError(f"--var-repo {repo}: not a checkout of FoundationVision/VAR (no models/var.py)")
    sys.path.insert(0, str(repo))
    try:
        models = importlib.import_module("models")
    finally:
        sys.path.remove(str(repo))
    cfg, vq_cfg = ours_var.cfg, ours_vq.cfg
    vae = models.VQVAE(vocab_size=vq_cfg.vocab_size, z_channels=vq_cfg.z_channels, ch=vq_cfg.ch, test_mode=True,
                       share_quant_resi=vq_cfg.share_quant_resi, v_patch_nums=tuple(vq_cfg.patch_nums))
    var = models.VAR(vae_local=vae, num_classes=cfg.num_classes, depth=cfg.depth, embed_dim=cfg.width,
                     num_heads=cfg.heads, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1 * cfg.depth / 24,
                     norm_eps=cfg.norm_eps, shared_aln=cfg.shared_aln, cond_drop_rate=cfg.cond_drop_rate,
                     attn_l2_norm=cfg.attn_l2_norm, patch_nums=tuple(cfg.patch_nums), flash_if_available=False,
                     fused_if_available=False)
    for theirs, mine, name in ((vae, ours_vq, "VQ-VAE"), (var, ours_var, "VAR")):
        missing, unexpected = theirs.load_state_dict(mine.state_dict(), strict=False)
        if missing or unexpected:
            raise ValueError(f"official {name} and ours differ: missing {missing[:5]}, unexpected {unexpected[:5]}")
    var.rng = torch.Generator(device=device)
    var.uniform_prob = var.uniform_prob.to(device)
    return vae.to(device).eval(), var.to(device).eval()


@torch.no_grad()
def same_models(ours_vq, ours_var, vae, var, device) -> tuple[float, float]:
    """Max |Δ| of teacher-forced logits and of a decode between our models and the official ones."""
    g = torch.Generator().manual_seed(0)
    tokens = [torch.randint(0, ours_vq.cfg.vocab_size, (1, p * p), generator=g).to(device) for p in ours_var.cfg.patch_nums]
    latents = ours_vq.teacher_inputs(tokens)
    label = torch.tensor([0], device=device)
    cond_drop, var.cond_drop_rate = var.cond_drop_rate, 0.0
    logits = (ours_var(label, latents) - var(label, latents)).abs().max().item()
    var.cond_drop_rate = cond_drop
    f = torch.randn(1, ours_vq.cfg.z_channels, ours_vq.cfg.latent_size, ours_vq.cfg.latent_size, generator=g).to(device)
    decode = (ours_vq.fhat_to_image(f) - vae.fhat_to_img(f).add(1).mul(0.5)).abs().max().item()
    return logits, decode


def run_official(repo: str, preset_name: str, device: torch.device, *, batch: int, repeats: int, precisions,
                 cfg: float = 1.5, top_k: int = 900, top_p: float = 0.96) -> str:
    """Seconds per CFG image, end to end, ours vs the official loop in each precision → markdown."""
    for p in precisions:
        check_precision(device, p)
    meter = LoadMeter()
    t0 = time.perf_counter()
    vq, var = random_vqvae(device), random_official_var(preset_name, device)
    pair = Pair(vq, var, var, name=preset_name)
    official_vq, official = official_models(repo, vq, var, device)
    d_logits, d_decode = same_models(vq, var, official_vq, official, device)
    ids = [i % var.cfg.num_classes for i in range(batch)]
    labels = torch.tensor(ids, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def ours(precision, seed):
        generate(pair, "target", ids, seed, cfg=cfg, top_k=top_k, top_p=top_p, precision=precision, progressive=False)

    def theirs(precision, seed):
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            official.autoregressive_infer_cfg(batch, labels, g_seed=seed, cfg=cfg, top_k=top_k, top_p=top_p)

    rows = [(f"{who} {p}", fn, p) for p in precisions for who, fn in (("ours", ours), ("official loop", theirs))]
    for _, fn, p in rows:   # warm-up
        fn(p, 0)
    secs: dict[str, list[float]] = {name: [] for name, _, _ in rows}
    for r in range(repeats):
        k = r % len(rows)
        for name, fn, p in rows[k:] + rows[:k]:
            sync()
            t = time.perf_counter()
            fn(p, 1 + r)
            sync()
            secs[name].append((time.perf_counter() - t) / batch)
        meter.sample()
        print(f"  repeat {r + 1}/{repeats}: " + ", ".join(f"{n} {v[-1]:.2f} s" for n, v in secs.items()), flush=True)
    ref = secs[rows[0][0]]
    lines = [[name, med_range(v, 2), med_range([a / b for a, b in zip(ref, v)])] for name, v in secs.items()]
    goal = ""
    if "fp32" in precisions and "bf16" in precisions and device.type == "cpu":
        ratio = statistics.median(a / b for a, b in zip(secs["ours fp32"], secs["ours bf16"]))
        goal = (f"- **bf16 vs fp32, ours: {ratio:.2f}×** (goal ≥ {BF16_GOAL} on the CPU: "
                f"{'met' if ratio >= BF16_GOAL else 'NOT met'})\n")
    head = (f"## Ours vs the official VAR loop: {preset_name}, batch {batch}\n\n"
            f"- machine: {machine_name(device)}; {meter}\n"
            f"- random weights ({var.num_params():,} params) + official-size VQ-VAE, the same state dicts in both "
            f"codes (teacher-forced logits differ by at most {d_logits:.1e}, a decode by {d_decode:.1e}); CFG {cfg:g}, top-k {top_k}, top-p {top_p:g}; end to end per CFG image (transformer loop, "
            f"sampling, f_hat, 256×256 decode); {repeats} interleaved repeats after one warm-up each; "
            f"{time.perf_counter() - t0:.0f} s in all\n"
            f"- official loop: `VAR.autoregressive_infer_cfg` from the checkout given, flash/fused kernels off; "
            f"bf16 = inside torch.autocast(bfloat16). Ours: `generate(mode='target', precision=...)`\n" + goal)
    return head + "\n" + markdown_table(["row", "s per image, median [min–max]", f"speed-up vs {rows[0][0]}"],
                                        lines) + "\n"

