"""A small classifier for the procedural images, and FID-tiny computed from its features.

FID-tiny is the Fréchet distance between Gaussians fitted to the classifier's penultimate
features of two image sets. It is a proxy for FID on this project's data, not comparable
with Inception FID on ImageNet.

CLI:  python -m sdvar_core.metrics train --out assets/classifier --steps 800 --batch-size 32 --threads 1
(the shipped assets/classifier: 99.9% on 2000 held-out images; see its .json)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from sdvar_core.data import CLASS_NAMES, NUM_CLASSES, make_batch, make_images, to_tensor

HELDOUT_SEED = 2**31 - 1  # reserved for held-out evaluation; training draws from its own seed


@dataclass(frozen=True)
class ClassifierConfig:
    """widths: channels per stage (the last is the feature dim D); depth: 3x3 convs per stage.

    A stride-2 stem halves the input, and every stage but the last ends in a 2x2 max-pool.
    """

    image_size: int = 64
    num_classes: int = NUM_CLASSES
    widths: tuple[int, ...] = (32, 64, 128)
    depth: int = 2

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths must be positive ints, got {self.widths}")
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        down = 2 ** len(self.widths)
        if self.image_size < down or self.image_size % down:
            raise ValueError(f"image_size {self.image_size} must be a positive multiple of {down} for widths {self.widths}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class Classifier(nn.Module):
    """Small CNN: (N, 3, S, S) in [0, 1] -> (N, num_classes) logits.

    Stem conv stride 2 (S/2), `depth` convs per stage with a 2x2 max-pool between stages,
    global average pooling to the (N, D) features, and a linear head. Conv + BatchNorm + ReLU throughout.
    """

    def __init__(self, config: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        self.config = config
        w = config.widths
        layers, c = _conv_bn_relu(3, w[0], stride=2), w[0]
        for i, width in enumerate(w):
            for _ in range(config.depth):
                layers += _conv_bn_relu(c, width)
                c = width
            if i < len(w) - 1:
                layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(w[-1], config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) in [0, 1] -> (N, D) penultimate features."""
        return self.body(x * 2 - 1).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) in [0, 1] -> (N, num_classes) logits."""
        return self.head(self.features(x))


def _new_classifier(config: ClassifierConfig, seed: int) -> Classifier:
    """A freshly initialised classifier whose weights depend only on `seed` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Classifier(config)


def train_classifier(steps: int, batch_size: int = 32, seed: int = 0, device: str = "cpu", lr: float = 3e-3,
                     progress: bool = True, config: ClassifierConfig = ClassifierConfig()) -> Classifier:
    """Train on fresh procedural batches (never repeated): AdamW, short warm-up, cosine decay.

    Step k's images are make_images(labels_k, seed, start=k*batch_size). Returns the model in eval mode.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (BatchNorm), got {batch_size}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    model = _new_classifier(config, seed).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, min(50, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * k / steps)))
    label_rng = np.random.default_rng([seed, 1])
    bar = tqdm(range(steps), desc="classifier", disable=not progress)
    for k in bar:
        labels = label_rng.integers(0, config.num_classes, batch_size)
        x = to_tensor(make_images(labels, seed, config.image_size, start=k * batch_size)).to(device)
        loss = F.cross_entropy(model(x), torch.from_numpy(labels).to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if k % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


def _check_images(images: np.ndarray, size: int) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != (size, size, 3) or len(images) == 0:
        raise ValueError(f"images must be a non-empty uint8 array of shape (N, {size}, {size}, 3), "
                         f"got {images.dtype} {images.shape}")
    return images


@torch.inference_mode()
def _batched(model: Classifier, images: np.ndarray, batch_size: int, fn) -> np.ndarray:
    """Apply fn(model, x) to uint8 images (N, S, S, 3) in batches; concatenated numpy output."""
    images = _check_images(images, model.config.image_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [fn(model, to_tensor(images[i:i + batch_size]).to(device)).cpu().numpy()
           for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return np.concatenate(out)


def predict(classifier: Classifier, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Predicted classes of uint8 images (N, S, S, 3). Returns (N,) int64."""
    return _batched(classifier, images, batch_size, lambda m, x: m(x).argmax(1))


def class_accuracy(classifier: Classifier, images: np.ndarray, labels) -> float:
    """Fraction of uint8 images (N, S, S, 3) classified as their labels (N,)."""
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(images):
        raise ValueError(f"labels has length {len(labels)} but images has {len(images)}")
    return float((predict(classifier, images) == labels).mean())


def features(classifier: Classifier, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Penultimate features of uint8 images (N, S, S, 3). Returns (N, D) float64."""
    return _batched(classifier, images, batch_size, lambda m, x: m.features(x)).astype(np.float64)


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


def bootstrap_fid(classifier: Classifier, real: np.ndarray, fake: np.ndarray, n_boot: int = 20,
                  seed: int = 0) -> tuple[float, float, float]:
    """FID-tiny with a bootstrap over the fake set (resampled with replacement, real set fixed).

    Returns (mean, lo, hi): mean and 2.5 / 97.5 percentiles of the n_boot bootstrap values.
    Resampling repeats images, so these sit above fid_tiny on the same sets: compare settings
    only at equal set sizes. Features are computed once; each resample costs one covariance and one sqrtm.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    real_stats = gaussian_stats(features(classifier, real))
    f = features(classifier, fake)
    rng = np.random.default_rng(seed)
    vals = np.array([frechet_distance(*real_stats, *gaussian_stats(f[rng.integers(0, len(f), len(f))]))
                     for _ in range(n_boot)])
    return float(vals.mean()), float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB over all pixels of two equal-shape images or batches.

    uint8 arrays are scaled by 1/255; float arrays are taken as [0, 1]. Identical inputs give inf.
    """
    def unit(x):
        x = np.asarray(x)
        if x.dtype == np.uint8:
            return x.astype(np.float64) / 255
        if np.issubdtype(x.dtype, np.floating):
            return x.astype(np.float64)
        raise ValueError(f"psnr needs uint8 or float images, got {x.dtype}")
    a, b = unit(a), unit(b)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"psnr needs two non-empty images of the same shape, got {a.shape} and {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def save_classifier(model: Classifier, path_stem, meta: dict | None = None) -> None:
    """Write <stem>.safetensors (weights) and <stem>.json ({"config": ..., **meta})."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              str(stem.with_name(stem.name + ".safetensors")))
    info = {"config": asdict(model.config), **(meta or {})}
    stem.with_name(stem.name + ".json").write_text(json.dumps(info, indent=2) + "\n")


def load_classifier(path_stem, device: str = "cpu") -> Classifier:
    """Load <stem>.json + <stem>.safetensors (strict). Returns the model in eval mode."""
    stem = Path(path_stem)
    info = json.loads(stem.with_name(stem.name + ".json").read_text())
    model = Classifier(ClassifierConfig(**info["config"]))
    model.load_state_dict(load_file(str(stem.with_name(stem.name + ".safetensors"))), strict=True)
    return model.to(device).eval()


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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sdvar_core.metrics", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("train", help="train the FID-tiny classifier and save it")
    p.add_argument("--out", default="assets/classifier", help="path stem: writes <out>.safetensors and <out>.json")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=2, help="torch threads; 1 is faster on a busy machine")
    p.add_argument("--heldout", type=int, default=2000, help="fresh held-out images for the accuracy")
    args = parser.parse_args(argv)
    if args.heldout < NUM_CLASSES:
        parser.error(f"--heldout must be >= {NUM_CLASSES} (one image per class), got {args.heldout}")
    _train_cli(args)


if __name__ == "__main__":
    main()
