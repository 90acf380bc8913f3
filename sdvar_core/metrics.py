"""Quality metrics: FID-tiny with a bootstrap interval, PSNR, SSIM, token agreement.

FID-tiny is the Fréchet distance between Gaussians fitted to the penultimate features of the
procedural-image classifier (`classifier`) for two image sets. It is a proxy for FID on this
project's data, not comparable with Inception FID on ImageNet.

CLI (trains that classifier):
    python -m sdvar_core.metrics train --out assets/classifier --steps 800 --batch-size 32 --threads 1
(the shipped assets/classifier: 99.9% on 2000 held-out images; see its .json)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

from .checkpoints import save_classifier
from .classifier import HELDOUT_SEED, Classifier, features, predict, train_classifier
from .config import CLASSIFIER_STEM
from .data import CLASS_NAMES, NUM_CLASSES, make_batch

# ---- FID-tiny ----------------------------------------------------------------------------------


def gaussian_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D), N >= 2."""
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or len(feats) < 2:
        raise ValueError(f"features must have shape (N, D) with N >= 2, got {feats.shape}")
    return feats.mean(0), np.cov(feats, rowvar=False).reshape(feats.shape[1], feats.shape[1])


def _sqrtm_checked(a: np.ndarray, tol: float = 1e-5) -> np.ndarray | None:
    """sqrtm(a) for (D, D) a, or None if it is not finite or |X @ X - a| > tol * |a| (Frobenius)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)  # judged by the residual below
        root = scipy.linalg.sqrtm(a)
    if not np.isfinite(root).all() or np.linalg.norm(root @ root - a) > tol * np.linalg.norm(a):
        return None
    return root


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):

        |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 sqrtm(sigma1 @ sigma2)).

    mu: (D,), sigma: (D, D). If sqrtm is not finite or inaccurate (near-singular product), eps*I is
    added to both covariances. Tiny imaginary parts from round-off are dropped; the result is >= 0.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"need mu (D,) and sigma (D, D) for both Gaussians, got mu1 {mu1.shape}, "
                         f"sigma1 {sigma1.shape}, mu2 {mu2.shape}, sigma2 {sigma2.shape}")
    covmean = _sqrtm_checked(sigma1 @ sigma2)
    if covmean is None:
        off = eps * np.eye(d)
        covmean = scipy.linalg.sqrtm((sigma1 + off) @ (sigma2 + off))
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean).real
    return max(0.0, float(value))


def fid_from_features(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Na, D) and (Nb, D)."""
    return frechet_distance(*gaussian_stats(feats_a), *gaussian_stats(feats_b))


def fid_tiny(classifier: Classifier, images_a: np.ndarray, images_b: np.ndarray) -> float:
    """FID-tiny between two uint8 image sets (N, S, S, 3); use >= 1000 images each in real use."""
    return fid_from_features(features(classifier, images_a), features(classifier, images_b))


def bootstrap_indices(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n) int64: n_boot resamples of range(n) with replacement. Sets of equal size resampled
    with the same indices give a paired bootstrap (index j of one set goes with index j of the other)."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    return np.random.default_rng(seed).integers(0, n, (n_boot, n))


def bootstrap_fids(real_feats: np.ndarray, fake_feats: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """FID of every resample of the fake features (N, D) against the fixed real set: indices (n_boot, N) →
    (n_boot,). Each resample costs one covariance and one sqrtm."""
    real_stats = gaussian_stats(real_feats)
    f = np.asarray(fake_feats)
    return np.array([frechet_distance(*real_stats, *gaussian_stats(f[idx])) for idx in indices])


def bootstrap_interval(real_feats: np.ndarray, fake_feats: np.ndarray, n_boot: int = 20,
                       seed: int = 0) -> tuple[float, float, float]:
    """FID over n_boot resamples of the fake features (with replacement, real set fixed).

    Returns (mean, lo, hi): mean and 2.5 / 97.5 percentiles of the bootstrap values. Resampling
    repeats images, so these sit above the FID of the full sets: compare settings only at equal
    set sizes.
    """
    vals = bootstrap_fids(real_feats, fake_feats, bootstrap_indices(len(fake_feats), n_boot, seed))
    return float(vals.mean()), float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def bootstrap_fid(classifier: Classifier, real: np.ndarray, fake: np.ndarray, n_boot: int = 20,
                  seed: int = 0) -> tuple[float, float, float]:
    """FID-tiny of uint8 image sets with a bootstrap over the fake set: `bootstrap_interval` of their features."""
    return bootstrap_interval(features(classifier, real), features(classifier, fake), n_boot, seed)


# ---- pixels ------------------------------------------------------------------------------------


def psnr(a: np.ndarray, b: np.ndarray, batch_size: int = 256) -> float:
    """PSNR in dB over all pixels of two equal-shape images or batches.

    uint8 arrays are scaled by 1/255; float arrays are taken as [0, 1]. Identical inputs give inf.
    Batched over the first axis, so that 50k 256-px images fit in memory.
    """
    def unit(x):
        if x.dtype == np.uint8:
            return x.astype(np.float64) / 255
        return x.astype(np.float64)

    a, b = np.asarray(a), np.asarray(b)
    for x in (a, b):
        if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"psnr needs uint8 or float images, got {x.dtype}")
    if a.shape != b.shape or a.size == 0 or a.ndim == 0:
        raise ValueError(f"psnr needs two non-empty images of the same shape, got {a.shape} and {b.shape}")
    squared = sum(float(np.sum((unit(a[i:i + batch_size]) - unit(b[i:i + batch_size])) ** 2))
                  for i in range(0, len(a), batch_size))
    mse = squared / a.size
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


# ---- SSIM --------------------------------------------------------------------------------------


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D Gaussian (size,), float64."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-x * x / (2 * sigma * sigma))
    return w / w.sum()


def ssim(a: np.ndarray, b: np.ndarray, window: int = 11, sigma: float = 1.5, batch_size: int = 64) -> np.ndarray:
    """Per-image SSIM (Wang et al. 2004) of two uint8 image sets (N, H, W, 3). Returns (N,) float64.

    Pixels scaled to [0, 1] (dynamic range L = 1), C1 = (0.01 L)², C2 = (0.03 L)². Local means,
    variances and covariance use a separable Gaussian window (`window` px, std `sigma`) over the
    'valid' positions only (no padding); the SSIM map is averaged over those positions and the
    3 channels. Identical images give exactly 1.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"ssim needs two uint8 arrays of one shape (N, H, W, 3), got {a.dtype} {a.shape} "
                         f"and {b.dtype} {b.shape}")
    if min(a.shape[1:3]) < window:
        raise ValueError(f"images of {a.shape[1]}x{a.shape[2]} px are smaller than the {window}-px SSIM window")
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    g = gaussian_window(window, sigma)
    gx, gy = g.view(1, 1, 1, -1).repeat(3, 1, 1, 1), g.view(1, 1, -1, 1).repeat(3, 1, 1, 1)

    def blur(x):  # (n, 3, H, W) → (n, 3, H-window+1, W-window+1), each channel on its own
        return F.conv2d(F.conv2d(x, gx, groups=3), gy, groups=3)

    out = []
    for i in range(0, len(a), batch_size):
        x = torch.from_numpy(a[i:i + batch_size]).permute(0, 3, 1, 2).double() / 255
        y = torch.from_numpy(b[i:i + batch_size]).permute(0, 3, 1, 2).double() / 255
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        out.append(s.mean(dim=(1, 2, 3)))
    return torch.cat(out).numpy()


# ---- tokens ------------------------------------------------------------------------------------


def token_agreement(tokens_a: np.ndarray, tokens_b: np.ndarray, patch_nums) -> dict:
    """Fraction of equal tokens per scale and over all L positions of two (N, L) token sets
    (`Trace.tokens`, tokens.npz): {'per_scale': [K floats], 'all': float}."""
    tokens_a, tokens_b = np.asarray(tokens_a), np.asarray(tokens_b)
    sizes = [p * p for p in patch_nums]
    if tokens_a.shape != tokens_b.shape or tokens_a.ndim != 2 or tokens_a.shape[1] != sum(sizes):
        raise ValueError(f"token sets must both be (N, {sum(sizes)}) for patch_nums {list(patch_nums)}, "
                         f"got {tokens_a.shape} and {tokens_b.shape}")
    ends = np.cumsum(sizes)
    same = tokens_a == tokens_b
    per_scale = [float(same[:, e - n:e].mean()) for n, e in zip(sizes, ends)]
    return dict(per_scale=per_scale, all=float(same.mean()))


# ---- CLI: train the classifier ----------------------------------------------------------------------


def _train_cli(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = train_classifier(args.steps, args.batch_size, args.seed, lr=args.lr)
    seconds = time.perf_counter() - t0
    images, labels = make_batch(args.heldout, HELDOUT_SEED)
    pred = predict(model, images)
    acc = float((pred == labels).mean())
    per_class = {name: float((pred[labels == c] == c).mean()) for c, name in enumerate(CLASS_NAMES)}
    meta = dict(steps=args.steps, batch_size=args.batch_size, seed=args.seed, lr=args.lr,
                heldout_accuracy=acc, heldout_per_class=per_class, heldout_images=args.heldout,
                heldout_seed=HELDOUT_SEED, train_seconds=round(seconds, 1),
                machine=f"{os.cpu_count()}-core CPU, torch {torch.__version__}, threads={args.threads}",
                params=sum(p.numel() for p in model.parameters()))
    save_classifier(model, args.out, meta)
    print(json.dumps({k: v for k, v in meta.items() if k != "heldout_per_class"}))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sdvar_core.metrics", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("train", help="train the FID-tiny classifier and save it")
    p.add_argument("--out", default=str(CLASSIFIER_STEM), help="path stem: writes <out>.safetensors and <out>.json")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=2, help="torch threads; 1 is faster on a busy machine")
    p.add_argument("--heldout", type=int, default=2000, help="fresh held-out images for the accuracy")
    return parser


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.heldout < NUM_CLASSES:
        parser.error(f"--heldout must be >= {NUM_CLASSES} (one image per class), got {args.heldout}")
    _train_cli(args)


if __name__ == "__main__":
    main()
