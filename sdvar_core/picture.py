"""Your own picture through VAR's scales: load and check an image, turn it into the pair's K token maps,
and describe what each scale adds (the pyramid). The engine takes the tokens as a prefix or an in-paint
context (`generate(..., prefix=, prefix_scales=, keep_mask=)`, see `context`).

    enc = encode_image(pair, "photo.png")        # EncodedImage: K (pn, pn) token maps, the fitted image
    pyr = pyramid(pair, enc)                     # per scale: rebuilt picture, what it added, PSNR/SSIM
    generate(pair, "speculative", [3], seed=0, prefix=enc.tokens, prefix_scales=4)

Loading rules (each bad case is a ValueError that names it):
- not an image, or a format Pillow cannot read → refused;
- more than MAX_PIXELS pixels → refused from the file's header, before any pixel is decoded;
- a side below MIN_SIDE pixels (an empty or 1×1 image) → refused;
- animated (GIF, APNG, WebP): the first frame is used, and the result says so;
- 16-bit (mode I;16 or I, or a uint16 array): scaled to 8 bits (value / 257);
- palette, CMYK, grayscale, black-and-white: converted to RGB;
- transparency (an alpha channel or a transparent palette colour): flattened on BACKGROUND (white);
- floating-point images (mode F): refused (their range is unknown).
Then the picture is centre-cropped to a square and resized to the pair's resolution (Lanczos), and
`EncodedImage.resize` names what was done.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageSequence, UnidentifiedImageError

MAX_PIXELS = 25_000_000          # 25 megapixels, e.g. 5000 × 5000; checked from the header before decoding
MIN_SIDE = 8                     # pixels; smaller pictures (empty, 1×1) are refused
BACKGROUND = (255, 255, 255)     # transparent pixels are flattened on white
KEEP_FRACTION = 0.5              # a token cell is kept when at least this share of its pixels is kept


# ---- loading ---------------------------------------------------------------------------------

def _check_size(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise ValueError(f"the picture is too large: {width}×{height} = {width * height:,} pixels; "
                         f"the limit is {MAX_PIXELS:,} pixels")
    if min(width, height) < MIN_SIDE:
        raise ValueError(f"the picture is too small: {width}×{height} pixels; each side needs at least "
                         f"{MIN_SIDE} pixels")


def _open(source) -> Image.Image:
    """A lazily opened PIL image from a path, bytes or a file object (nothing decoded yet)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise ValueError(f"no picture file at {Path(source).name!r}")
    elif not hasattr(source, "read"):
        raise ValueError(f"a picture must be an image file, an HxWx3 uint8 array or a PIL image, got "
                         f"{type(source).__name__}")
    try:
        return Image.open(source)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"not an image (Pillow cannot read it: {type(e).__name__})") from None
    except Image.DecompressionBombError:
        raise ValueError(f"the picture is too large; the limit is {MAX_PIXELS:,} pixels") from None


def _has_transparency(im: Image.Image) -> bool:
    """Whether any pixel of the (decoded) image is not fully opaque."""
    if "A" not in im.getbands() and "transparency" not in im.info and im.mode not in ("PA", "La", "RGBa"):
        return False
    return bool(np.asarray(im.convert("RGBA"))[..., 3].min() < 255)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any single-frame PIL image → RGB: 16-bit scaled, palette/CMYK/grey converted, alpha on BACKGROUND."""
    if im.mode == "F":
        raise ValueError("floating-point pictures (mode F) are not supported: save it as 8 or 16 bits per channel")
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info or im.mode in ("PA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA" or "transparency" in im.info:
        im = im.convert("RGBA")
        flat = Image.new("RGBA", im.size, BACKGROUND + (255,))
        return Image.alpha_composite(flat, im).convert("RGB")
    return im.convert("RGB")


def _array_to_rgb(a: np.ndarray) -> np.ndarray:
    """An (H, W), (H, W, 1|3|4) uint8 or uint16 array → (H, W, 3) uint8 (alpha flattened on BACKGROUND)."""
    if a.dtype == np.uint16:
        a = np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8)
    if a.dtype != np.uint8:
        raise ValueError(f"a picture array must be uint8 (or uint16), got {a.dtype}")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"a picture array must be (H, W), (H, W, 3) or (H, W, 4), got shape {a.shape}")
    _check_size(a.shape[1], a.shape[0])
    if a.shape[2] == 1:
        return np.repeat(a, 3, axis=2)
    if a.shape[2] == 4:
        alpha = a[..., 3:].astype(np.float64) / 255
        rgb = a[..., :3] * alpha + np.array(BACKGROUND) * (1 - alpha)
        return np.round(rgb).astype(np.uint8)
    return np.ascontiguousarray(a)


@dataclass
class Loaded:
    """A checked picture: (H, W, 3) uint8 RGB, and what loading changed (notes, in words)."""

    image: np.ndarray
    notes: list[str] = field(default_factory=list)


def load_image(source) -> Loaded:
    """A picture from a path, bytes, a file object, a PIL image or an array, checked and made RGB uint8.
    See the module docstring for the rules; every refusal is a ValueError that says why."""
    notes = []
    if isinstance(source, np.ndarray):
        return Loaded(_array_to_rgb(source))
    im = source if isinstance(source, Image.Image) else _open(source)
    try:
        _check_size(*im.size)                      # from the header: nothing decoded yet
        frames = getattr(im, "n_frames", 1)
        if frames > 1:
            im = next(iter(ImageSequence.Iterator(im)))
            notes.append(f"animated ({frames} frames): the first frame is used")
        mode = im.mode
        try:
            transparent = _has_transparency(im)
            rgb = _to_rgb(im)
        except (OSError, SyntaxError, ValueError) as e:
            if isinstance(e, ValueError) and "mode F" in str(e):
                raise
            raise ValueError(f"the picture file is damaged or truncated ({type(e).__name__})") from None
        if mode not in ("RGB", "RGBA") or transparent:   # an opaque RGBA (a canvas export) needs no word
            notes.append(f"mode {mode} converted to RGB" + (" (transparency flattened on white)" if transparent else ""))
        return Loaded(np.asarray(rgb, dtype=np.uint8).copy(), notes)
    finally:
        if im is not source:
            im.close()


def fit(image: np.ndarray, size: int) -> tuple[np.ndarray, str]:
    """(H, W, 3) uint8 → the centred square crop resized to size×size (Lanczos), and what was done in words."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    steps = [f"{w}×{h}"]
    if h != w:
        image = image[top:top + side, left:left + side]
        steps.append(f"centre crop {side}×{side}")
    if side != size:
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS))
        steps.append(f"resized to {size}×{size} (Lanczos)")
    if len(steps) == 1:
        steps.append("used as is")
    return np.array(image, dtype=np.uint8), " → ".join(steps)   # a writable copy


def load_painted(source) -> np.ndarray:
    """The painted pixels of a brush layer (a transparent image with strokes; same checks as `load_image`)
    → (H, W) bool, True where anything was painted (alpha > 0)."""
    im = source if isinstance(source, Image.Image) else _open(source)
    try:
        _check_size(*im.size)
        try:
            return np.asarray(im.convert("RGBA"))[..., 3] > 0
        except (OSError, SyntaxError, ValueError):
            raise ValueError("the painted layer is damaged or truncated") from None
    finally:
        if im is not source:
            im.close()


def fit_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A (H, W) bool mask cropped and resized like its picture (`fit`) → (size, size) bool: a pixel is set
    when at least half of what it covers was."""
    m = np.asarray(mask, dtype=bool)
    h, w = m.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    grey = Image.fromarray((m[top:top + side, left:left + side] * 255).astype(np.uint8))
    return np.asarray(grey.resize((size, size), Image.Resampling.BOX)) >= 128


# ---- encoding ----------------------------------------------------------------------------------

@dataclass
class EncodedImage:
    """A picture as the pair's tokens: `tokens` K int64 arrays (pn_k, pn_k) (codebook ids, row-major),
    `image` the fitted (S, S, 3) uint8 input they encode, `resize` what loading and fitting did."""

    tokens: list[np.ndarray]
    resize: str
    image: np.ndarray

    @property
    def patch_nums(self) -> list[int]:
        return [t.shape[0] for t in self.tokens]


def _device(pair) -> torch.device:
    return next(pair.vqvae.parameters()).device


@torch.no_grad()
def encode_image(pair, image) -> EncodedImage:
    """The picture (a path, bytes, HxWx3 uint8 array or PIL image) as the pair's K token maps; it is
    checked (`load_image`), centre-cropped and resized to the pair's resolution first (`fit`)."""
    loaded = load_image(image)
    fitted, resize = fit(loaded.image, pair.vqvae.cfg.image_size)
    if loaded.notes:
        resize = "; ".join(loaded.notes) + "; " + resize
    x = torch.from_numpy(fitted).to(_device(pair)).permute(2, 0, 1)[None].float().div(255)
    tokens = pair.vqvae.image_to_tokens(x)
    pns = pair.layout.patch_nums
    return EncodedImage([t[0].view(pn, pn).cpu().numpy().astype(np.int64) for t, pn in zip(tokens, pns)],
                        resize, fitted)


# ---- the pyramid -------------------------------------------------------------------------------

@dataclass
class Pyramid:
    """What each scale of an encoded picture contributes. K = scales, S = image side, h = latent side.

    input (S, S, 3) uint8; tokens K (pn, pn) int64; rebuilt (K, S, S, 3) uint8: decoded from scales 1..k;
    added (K, S, S, 3) uint8: rebuilt[k] − rebuilt[k−1] around mid-grey, ×2 (scale 1: rebuilt[0]); residual (K, h, h):
    the norm over latent channels of what was left to quantise before scale k (f − f_hat_{k−1});
    energy_share (K,): the share of the latent's energy ‖f‖² that scale k removed from the residual;
    psnr_db (K,), ssim (K,): rebuilt[k] against the input."""

    input: np.ndarray
    tokens: list[np.ndarray]
    rebuilt: np.ndarray
    added: np.ndarray
    residual: np.ndarray
    energy_share: np.ndarray
    psnr_db: np.ndarray
    ssim: np.ndarray
    patch_nums: list[int]
    resize: str = ""


@torch.no_grad()
def pyramid(pair, encoded: EncodedImage) -> Pyramid:
    """The pyramid of an encoded picture (one encoder pass, one batched decode of the K partial sums)."""
    from .engine import to_uint8
    from .metrics import psnr, ssim

    vq, device = pair.vqvae, _device(pair)
    x = torch.from_numpy(encoded.image).to(device).permute(2, 0, 1)[None].float().div(255)
    f = vq.encode(x)
    tokens = [torch.from_numpy(t).to(device).view(1, -1) for t in encoded.tokens]
    fhats = vq.progressive_fhats(tokens)
    before = [torch.zeros_like(f)] + fhats[:-1]
    residual = torch.cat([(f - b).norm(dim=1) for b in before]).cpu().numpy()
    left = np.array([float((f - b).pow(2).sum()) for b in before + [fhats[-1]]])
    energy = max(float(f.pow(2).sum()), 1e-12)
    share = (left[:-1] - left[1:]) / energy
    rebuilt = to_uint8(vq.fhat_to_image(torch.cat(fhats)))
    diff = rebuilt[1:].astype(np.int16) - rebuilt[:-1].astype(np.int16)
    added = np.concatenate([rebuilt[:1], np.clip(128 + 2 * diff, 0, 255).astype(np.uint8)])
    inputs = np.repeat(encoded.image[None], len(tokens), axis=0)
    psnrs = np.array([psnr(r, encoded.image) for r in rebuilt])
    return Pyramid(encoded.image, list(encoded.tokens), rebuilt, added, residual, share, psnrs,
                   np.asarray(ssim(rebuilt, inputs), dtype=np.float64), list(pair.layout.patch_nums),
                   encoded.resize)


# ---- the context of a run ----------------------------------------------------------------------

def keep_grids(keep_mask: np.ndarray, patch_nums) -> list[np.ndarray]:
    """A (H, W) bool mask in image pixels (True = keep the input) → per scale a (pn, pn) bool grid: a
    token cell is kept when at least KEEP_FRACTION of its pixels are (area average, adaptive pooling
    where pn does not divide H)."""
    m = torch.from_numpy(np.asarray(keep_mask, dtype=np.float32))[None, None]
    return [(F.adaptive_avg_pool2d(m, pn)[0, 0] >= KEEP_FRACTION).numpy() for pn in patch_nums]


def check_keep_mask(keep_mask, image_size: int) -> np.ndarray:
    """keep_mask as a (S, S) bool array, or ValueError."""
    a = np.asarray(keep_mask)
    if a.dtype != np.bool_ or a.shape != (image_size, image_size):
        raise ValueError(f"keep_mask must be a bool array of shape ({image_size}, {image_size}) (the pair's "
                         f"image size; True = keep the input), got {a.dtype} {a.shape}")
    return a


def check_prefix(prefix, patch_nums, vocab_size: int, needed: int) -> list[np.ndarray]:
    """The picture's token maps (an EncodedImage or a list of (pn, pn) or (pn²,) int arrays), the first
    `needed` of them checked → list of (pn²,) int64 arrays."""
    if isinstance(prefix, EncodedImage):
        prefix = prefix.tokens
    if prefix is None or isinstance(prefix, (str, bytes)) or not hasattr(prefix, "__len__"):
        raise ValueError(f"prefix must be the picture's token maps (encode_image), got {type(prefix).__name__}")
    if len(prefix) < needed:
        raise ValueError(f"prefix has {len(prefix)} token maps, {needed} are needed")
    out = []
    for k, (t, pn) in enumerate(zip(list(prefix)[:needed], patch_nums)):
        a = np.asarray(t.cpu() if isinstance(t, torch.Tensor) else t)
        if a.size != pn * pn or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"prefix map {k + 1} must be {pn}×{pn} integer token ids, got {a.dtype} {a.shape}")
        a = a.reshape(-1).astype(np.int64)
        if a.min() < 0 or a.max() >= vocab_size:
            raise ValueError(f"prefix map {k + 1} has token ids outside 0..{vocab_size - 1}")
        out.append(a)
    return out


@dataclass
class Context:
    """What a run takes from a picture. tokens: the picture's maps (1, pn²) long on the run's device, for
    the scales the run uses; prefix_scales: scales taken whole (teacher-forced); keep: per scale a (pn²,)
    bool tensor (True = the picture's token) or None without a keep mask; keep_mask: the (S, S) input."""

    tokens: list[torch.Tensor]
    prefix_scales: int
    keep: list[torch.Tensor] | None
    keep_mask: np.ndarray | None


def context(pair, prefix, prefix_scales: int, keep_mask) -> Context | None:
    """Check generate's picture arguments → a Context, or None for a normal run (no prefix, no mask)."""
    from .validate import check

    K = pair.layout.num_scales
    prefix_scales = check("prefix_scales", prefix_scales, num_scales=K)
    if prefix is None:
        if prefix_scales or keep_mask is not None:
            raise ValueError("prefix_scales and keep_mask need prefix: the picture's token maps (encode_image)")
        return None
    if prefix_scales == 0 and keep_mask is None:   # k = 0 without a mask is a normal run
        return None
    grids = None
    if keep_mask is not None:
        keep_mask = check_keep_mask(keep_mask, pair.vqvae.cfg.image_size)
        grids = keep_grids(keep_mask, pair.layout.patch_nums)
    maps = check_prefix(prefix, pair.layout.patch_nums, pair.vqvae.cfg.vocab_size, K if grids else prefix_scales)
    device = pair.target.device
    tokens = [torch.from_numpy(a).to(device)[None] for a in maps]
    keep = None if grids is None else [torch.from_numpy(g.reshape(-1)).to(device) for g in grids]
    return Context(tokens, prefix_scales, keep, keep_mask)
