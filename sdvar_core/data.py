"""A procedural, class-conditional image set: 10 classes of shapes and textures.

Nothing is downloaded. Image i of a call depends only on (seed, start + i, class_ids[i]),
through its own generator `np.random.default_rng([seed, start + i])`, so any shard of a
large set can be rendered on its own and comes out identical.

Each image is one foreground colour over one background colour. The coarse token scales
of a VAR decide the layout and the colours; the fine scales decide the edges and textures.
Shapes are rendered at 2x and box-downsampled, so their edges are anti-aliased.

The ranges below (data version 2) are narrow on purpose: shapes sit near the centre at a
similar size and nearly upright, textures are near-axis-aligned with a large period. A VAR
samples the tokens of one scale independently, so a layout that is ambiguous at a coarse
scale (where is the shape, which way do the stripes run) comes out as a patchwork; with
these ranges a small VAR trained on a CPU draws every class. Colours stay fully random.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

CLASS_NAMES = ("circle", "square", "triangle", "star", "ring", "cross", "stripes", "checker", "heart", "diamond")
NUM_CLASSES = len(CLASS_NAMES)
MIN_SIZE = 16
MIN_COLOR_DISTANCE = 0.5  # Euclidean RGB distance in [0,1]^3 between foreground and background

DATA_VERSION = 2
SHAPE_RADIUS = (0.55, 0.75)     # half-size in [-1, 1] units: about 18 to 24 px at 64 px
CENTRE_JITTER = 0.12            # the shape's centre lies in [-0.12, 0.12]^2 (about ±4 px)
MAX_ROTATION = 0.3              # radians, either way; square and diamond less, so neither becomes the other
_MAX_ROTATION = {"square": 0.2, "diamond": 0.2}
TEXTURE_PERIOD = (0.55, 0.7)    # one stripe + one gap, in [-1, 1] units: about 18 to 22 px
TEXTURE_ANGLE_JITTER = 0.08     # radians around horizontal (stripes) or axis-aligned (checker)
TEXTURE_PHASE_JITTER = 0.15     # in periods


@lru_cache(maxsize=8)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of an n x n raster in [-1, 1], y pointing up. Two (n, n) float32."""
    t = ((np.arange(n, dtype=np.float32) + 0.5) / n) * 2 - 1
    return t[None, :].repeat(n, 0), -t[:, None].repeat(n, 1)


def _colors(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A (background, foreground) pair of RGB colours in [0,1], at least MIN_COLOR_DISTANCE apart."""
    bg = rng.random(3)
    fg = rng.random(3)
    while np.linalg.norm(fg - bg) < MIN_COLOR_DISTANCE:
        fg = rng.random(3)
    return bg, fg


def _shape_mask(name: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Inside test of a shape in its own frame, where it fits roughly in the unit disk. u, v: (n, n)."""
    if name == "circle":
        return u * u + v * v <= 1.0
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.75
    if name == "triangle":  # equilateral, vertices on the unit circle, so each edge is 0.5 from the centre
        inside = v >= -0.5
        for a in (np.pi / 6, 5 * np.pi / 6):
            inside &= u * np.cos(a) + v * np.sin(a) <= 0.5
        return inside
    if name == "star":  # 5 points: fold the angle into one half-spike, then one half-plane test
        inner = rng.uniform(0.38, 0.5)
        rho = np.hypot(u, v)
        half = np.pi / 5
        phi = np.abs(np.mod(np.arctan2(v, u) + half, 2 * half) - half)
        px, py = rho * np.cos(phi), rho * np.sin(phi)
        bx, by = inner * np.cos(half), inner * np.sin(half)  # inner vertex; the outer one is (1, 0)
        return (bx - 1) * py - by * (px - 1) <= 0  # on the centre's side of the edge (1,0)-(bx,by)
    if name == "ring":
        rr = u * u + v * v
        return (rr <= 1.0) & (rr >= rng.uniform(0.5, 0.68) ** 2)
    if name == "cross":
        w = rng.uniform(0.22, 0.32)
        au, av = np.abs(u), np.abs(v)
        return ((au <= w) & (av <= 1.0)) | ((av <= w) & (au <= 1.0))
    if name == "heart":  # (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, scaled and shifted into the unit disk
        x, y = 1.25 * u, 1.25 * (v + 0.1)
        q = x * x + y * y - 1
        return q * q * q - x * x * y * y * y <= 0
    if name == "diamond":
        return np.abs(u) / 0.65 + np.abs(v) <= 1.0
    raise AssertionError(name)


def _texture_mask(name: str, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stripes (horizontal) or a checkerboard over the whole image, with a random period and small
    random tilt and phase. x, y: (n, n)."""
    period = rng.uniform(*TEXTURE_PERIOD)
    a = np.pi / 2 + rng.uniform(-TEXTURE_ANGLE_JITTER, TEXTURE_ANGLE_JITTER)  # normal of horizontal stripes
    phase = lambda: 0.25 + rng.uniform(-TEXTURE_PHASE_JITTER, TEXTURE_PHASE_JITTER)  # noqa: E731
    s = (x * np.cos(a) + y * np.sin(a)) / period + phase()
    if name == "stripes":
        return np.mod(s, 1.0) < 0.5
    t = (-x * np.sin(a) + y * np.cos(a)) / period + phase()
    return (np.mod(s, 1.0) < 0.5) ^ (np.mod(t, 1.0) < 0.5)


def _render(class_id: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """One image of class `class_id`. Returns (size, size, 3) uint8."""
    name = CLASS_NAMES[class_id]
    bg, fg = _colors(rng)
    x, y = _grid(2 * size)
    if name in ("stripes", "checker"):
        mask = _texture_mask(name, x, y, rng)
    else:
        r = rng.uniform(*SHAPE_RADIUS)
        cx, cy = rng.uniform(-CENTRE_JITTER, CENTRE_JITTER, size=2)
        lim = _MAX_ROTATION.get(name, MAX_ROTATION)
        th = rng.uniform(-lim, lim)
        c, s = np.cos(th), np.sin(th)
        dx, dy = x - cx, y - cy
        mask = _shape_mask(name, (dx * c + dy * s) / r, (-dx * s + dy * c) / r, rng)
    alpha = mask.reshape(size, 2, size, 2).mean(axis=(1, 3), dtype=np.float32)  # 2x2 box filter
    img = bg + (fg - bg) * alpha[..., None]
    return np.round(img * 255).astype(np.uint8)


def _check_seed(seed: int) -> int:
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def make_images(class_ids, seed: int, size: int = 64, start: int = 0) -> np.ndarray:
    """Render one image per class id.

    class_ids: ints in [0, 10), length N. Image i uses the generator default_rng([seed, start + i]),
    so make_images(ids[a:b], seed, start=a) equals make_images(ids, seed)[a:b].
    Returns (N, size, size, 3) uint8.
    """
    seed, start = _check_seed(seed), int(start)
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if int(size) != size or size < MIN_SIZE:
        raise ValueError(f"size must be an int >= {MIN_SIZE}, got {size!r}")
    ids = np.asarray(class_ids).reshape(-1)
    if ids.size and (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= NUM_CLASSES):
        raise ValueError(f"class_ids must be ints in [0, {NUM_CLASSES}), got {ids.tolist()[:10]}...")
    out = np.empty((ids.size, size, size, 3), dtype=np.uint8)
    for i, c in enumerate(ids):
        out[i] = _render(int(c), np.random.default_rng([seed, start + i]), int(size))
    return out


def make_labels(n: int, seed: int, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Balanced labels: arange(n) % num_classes shuffled by `seed`. Returns (n,) int64."""
    seed = _check_seed(seed)
    if int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not 1 <= num_classes <= NUM_CLASSES:
        raise ValueError(f"num_classes must be in [1, {NUM_CLASSES}], got {num_classes}")
    labels = np.arange(int(n), dtype=np.int64) % num_classes
    return np.random.default_rng(seed).permutation(labels)


def make_batch(n: int, seed: int, size: int = 64, num_classes: int = NUM_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """n images with balanced labels, both fixed by `seed`.

    Returns images (n, size, size, 3) uint8 and labels (n,) int64.
    """
    labels = make_labels(n, seed, num_classes)
    return make_images(labels, seed, size), labels


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [0, 1]."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 of shape (N, H, W, 3), got {images.dtype} {images.shape}")
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)


class ProceduralDataset(torch.utils.data.Dataset):
    """`length` items; item i is (image (3, size, size) float in [0,1], label int).

    Items equal make_batch(length, seed, size, num_classes), rendered one at a time.
    """

    def __init__(self, length: int, seed: int, size: int = 64, num_classes: int = NUM_CLASSES):
        self.labels = make_labels(length, seed, num_classes)
        if int(size) != size or size < MIN_SIZE:
            raise ValueError(f"size must be an int >= {MIN_SIZE}, got {size!r}")
        self.seed, self.size = int(seed), int(size)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for length {len(self)}")
        i %= len(self)
        label = int(self.labels[i])
        img = make_images([label], self.seed, self.size, start=i)
        return to_tensor(img)[0], label
