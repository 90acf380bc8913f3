"""The small CNN classifier of the procedural images: its features give FID-tiny (`metrics`).

Trained on fresh procedural batches (`python -m sdvar_core.metrics train`); the shipped one is
assets/classifier (`config.CLASSIFIER_STEM`), stored by `checkpoints.save_classifier`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .data import NUM_CLASSES, make_images, to_tensor

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
