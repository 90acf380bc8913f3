"""Where pairs come from: the official VAR/VQ-VAE .pth files (strict), the hub download, the embedded
pair and other folders of our own weights, and random weights.

Official files (FoundationVision/var on the Hugging Face hub): `var_d{depth}.pth` (flat VAR state
dict, 12 + 13·depth keys) and `vae_ch160v4096z32.pth` (flat VQ-VAE state dict, 324 keys). Self-trained
checkpoints of the official trainer nest them as ckpt['trainer']['var_wo_ddp'] / ['vae_local'].
Every state dict is checked key by key and shape by shape (`checkpoints`) before
`load_state_dict(strict=True)`. Our own weights: `checkpoints.save_*` / `load_*`.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import socket
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import torch

from .checkpoints import check_state_dict, check_var_state, load_var, load_vqvae, read_json
from .config import (OFFICIAL_VQVAE, TINY_DIR, TINY_VQVAE, VARConfig, VQVAEConfig, official_var_config,
                     official_var_file)
from .data import CLASS_NAMES
from .engine import Pair
from .runtime import DTYPES, check_precision, resolve_device
from .var import VAR
from .vqvae import VQVAE

HUB_REPO = "FoundationVision/var"
OFFICIAL_VAE_FILE = "vae_ch160v4096z32.pth"
WEIGHTS_ENV = "SDVAR_WEIGHTS_DIR"
DEFAULT_DRAFT_DEPTH, DEFAULT_TARGET_DEPTH = 16, 30
EMBEDDED_TARGET = dict(depth=6, width=192, heads=3)   # the shipped pair's shapes (assets/tiny)
EMBEDDED_DRAFT = dict(depth=2, width=128, heads=2)


# ---- official checkpoints ----------------------------------------------------------------------


def read_checkpoint(path, nested: str) -> dict[str, torch.Tensor]:
    """A flat state dict from a .pth file, read with weights_only=True (no arbitrary pickles).

    A training checkpoint {'trainer': {nested: state_dict, ...}, ...} gives its `nested` entry
    ('var_wo_ddp' or 'vae_local').
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint file not found: {path}")
    try:
        # zip-format files (torch.save's default) are memory-mapped: tensors are read as they are used
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:  # not a plain tensor file: arbitrary objects, or not a pickle at all
        reason = str(e).partition("WeightsUnpickler error:")[2].strip().split(". ")[0].splitlines()
        raise ValueError(f"{path}: refused by torch.load(weights_only=True), not a plain tensor checkpoint"
                         + (f" ({reason[0]})" if reason else "")) from e
    except Exception as e:  # corrupt zip, truncated file, not a torch file at all
        raise ValueError(f"{path}: cannot be read as a PyTorch checkpoint: {e}") from e
    if isinstance(obj, dict) and "trainer" in obj:
        trainer = obj["trainer"]
        if not isinstance(trainer, dict) or nested not in trainer:
            found = sorted(trainer) if isinstance(trainer, dict) else type(trainer).__name__
            raise ValueError(f"{path}: a training checkpoint without ['trainer'][{nested!r}] (found {found})")
        obj = trainer[nested]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise ValueError(f"{path}: expected a state dict (str → tensor) or a training checkpoint with "
                         f"['trainer'][{nested!r}], got {type(obj).__name__}")
    return dict(obj)


def matrix_keys(model: torch.nn.Module) -> set[str]:
    """State-dict keys of the weight matrices of every nn.Linear: the part of a VAR held in bf16."""
    return {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def _fill(model: torch.nn.Module, state: dict, device, precision: str = "fp32") -> torch.nn.Module:
    """Load a checked `state` into a model built on the meta device (no second copy in memory).
    precision 'bf16'/'fp16': the Linear weight matrices are held in that dtype (cast tensor by tensor
    from the memory-mapped file), everything else (embeddings, norms, biases) in fp32."""
    low = matrix_keys(model) if precision != "fp32" else set()
    dtype = DTYPES[precision]
    # copies, never views: no tensor may keep the memory-mapped file alive (its pages would stay resident)
    state = {k: v.to(dtype if k in low else torch.float32, copy=True) if v.is_floating_point() else v.clone()
             for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval()


def load_official_vqvae(vae_path, device="cpu", cfg: VQVAEConfig = OFFICIAL_VQVAE) -> VQVAE:
    """The VQ-VAE from `vae_ch160v4096z32.pth` (or a file of the same layout for `cfg`), in eval mode."""
    state = read_checkpoint(vae_path, "vae_local")
    with torch.device("meta"):
        model = VQVAE(cfg)
    reference = model.state_dict()
    key = "quantize.ema_vocab_hit_SV"  # training statistics; like the official loader, a file with another
    if key in state and state[key].shape[1:] == reference[key].shape[1:]:  # scale count gets the model's own
        if state[key].shape[0] != reference[key].shape[0]:
            state[key] = torch.zeros(reference[key].shape)
    check_state_dict(state, reference, f"VQ-VAE checkpoint {vae_path}")
    return _fill(model, state, device)


def load_official_var(depth: int, var_path, device="cpu", vqvae_cfg: VQVAEConfig = OFFICIAL_VQVAE,
                      precision: str = "fp32") -> VAR:
    """VAR(official_var_config(depth)) from `var_d{depth}.pth`, in eval mode; vocab/Cvae/scales from vqvae_cfg;
    precision 'bf16': its weight matrices held in bf16 (runs then autocast to bf16)."""
    state = read_checkpoint(var_path, "var_wo_ddp")
    cfg = official_var_config(depth, vocab_size=vqvae_cfg.vocab_size, z_channels=vqvae_cfg.z_channels,
                              patch_nums=vqvae_cfg.patch_nums)
    with torch.device("meta"):
        model = VAR(cfg)
    check_var_state(state, model, f"VAR checkpoint {var_path}")
    return _fill(model, state, device, precision)


def load_official(depth: int, var_path, vae_path, device="cpu", vqvae_cfg: VQVAEConfig | None = None):
    """(vqvae, var) from the official files, both in eval mode on `device`.

    depth: any depth of the official rule (width 64·depth, heads = depth).
    vqvae_cfg: OFFICIAL_VQVAE unless given (small configs serve the tests).
    """
    vqvae_cfg = vqvae_cfg or OFFICIAL_VQVAE
    vqvae = load_official_vqvae(vae_path, device, vqvae_cfg)
    var = load_official_var(depth, var_path, device, vqvae_cfg)
    return vqvae, var


# ---- finding the official files ----------------------------------------------------------------


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()  # read now: huggingface_hub reads it at import
    return env in ("1", "ON", "YES", "TRUE") or constants.HF_HUB_OFFLINE


def _unreachable(url: str, timeout: float = 3.0) -> str | None:
    """None if a TCP connection to the url's host (or its proxy) opens within `timeout`, else why not.

    hf_hub_download retries for about 25 s per file; this probe makes an unreachable hub fail at once.
    """
    u = urlparse(url)
    proxy = urllib.request.getproxies().get(u.scheme)
    if proxy:
        u = urlparse(proxy)
    host, port = u.hostname, u.port or (443 if u.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return None
    except OSError as e:
        return f"cannot connect to {host}:{port} ({e})"


def _from_hub(names: list[str]) -> tuple[dict[str, Path], str | None]:
    """Files of HUB_REPO from the local hub cache, else downloaded: ({name: path}, why some are missing)."""
    from huggingface_hub import constants, hf_hub_download

    found = {}
    for name in names:
        try:
            found[name] = Path(hf_hub_download(HUB_REPO, name, local_files_only=True))
        except OSError:  # not in the cache
            pass
    todo = [n for n in names if n not in found]
    if not todo:
        return found, None
    if _offline():
        return found, "HF_HUB_OFFLINE is set and they are not in the local hub cache"
    why = _unreachable(constants.ENDPOINT)
    if why:
        return found, f"the hub is unreachable: {why}"
    for name in todo:
        try:
            found[name] = Path(hf_hub_download(HUB_REPO, name, etag_timeout=5))
        except Exception as e:  # network, HTTP or disk errors of any kind end up in the message
            return found, f"downloading {name} failed: {type(e).__name__}: {e}"
    return found, None


def find_official_weights(depth: int, weights_dir=None) -> tuple[Path, Path]:
    """(var_path, vae_path) of `var_d{depth}.pth` and `vae_ch160v4096z32.pth`.

    Looks in `weights_dir`, else in $SDVAR_WEIGHTS_DIR, then the hub repo FoundationVision/var
    (the local hub cache first; downloads unless HF_HUB_OFFLINE=1). Fails fast with a ValueError.
    """
    names = [official_var_file(depth), OFFICIAL_VAE_FILE]
    if weights_dir is not None:
        folder, where = Path(weights_dir), f"weights_dir={weights_dir}"
    elif os.environ.get(WEIGHTS_ENV):
        folder, where = Path(os.environ[WEIGHTS_ENV]), f"${WEIGHTS_ENV}={os.environ[WEIGHTS_ENV]}"
    else:
        folder, where = None, f"no folder (weights_dir not given, ${WEIGHTS_ENV} not set)"
    if folder is not None and not folder.is_dir():
        where += " (not a folder)"
    found = {n: folder / n for n in names if folder is not None and (folder / n).is_file()}
    missing = [n for n in names if n not in found]
    if missing:
        hub, why = _from_hub(missing)
        found.update(hub)
        if why:
            raise ValueError(
                f"official weights not found: looked for {' and '.join(names)} in {where} and on the "
                f"Hugging Face hub repo {HUB_REPO}; missing {', '.join(n for n in names if n not in found)}: {why}. "
                f"Fix: download them from https://huggingface.co/{HUB_REPO}/tree/main into a folder and pass "
                f"weights_dir=<folder> or set {WEIGHTS_ENV}=<folder>, or go online (HF_HUB_OFFLINE unset).")
    return found[names[0]], found[names[1]]


# ---- hashes ----------------------------------------------------------------------------------------


def file_sha256(path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_card(folder) -> dict:
    """Check every file listed in `<folder>/card.json` ({"files": {name: {"sha256": hex}}}); return the card."""
    folder = Path(folder)
    card_path = folder / "card.json"
    if not card_path.is_file():
        raise ValueError(f"model card not found: {card_path}")
    card = read_json(card_path)
    files = card.get("files") if isinstance(card, dict) else None
    if not isinstance(files, dict) or not files:
        raise ValueError(f"{card_path}: expected a non-empty 'files' mapping of name → {{'sha256': ...}}")
    bad = []
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            bad.append(f"{name} (missing)")
        elif not isinstance(entry, dict) or file_sha256(path) != entry.get("sha256"):
            recorded = str(entry.get("sha256") if isinstance(entry, dict) else entry)[:12]
            bad.append(f"{name} (sha256 {file_sha256(path)[:12]}… ≠ card {recorded}…)")
    if bad:
        raise ValueError(f"{card_path}: files do not match the card: {', '.join(bad)}")
    return card


# ---- pairs ------------------------------------------------------------------------------------------


def load_pair_folder(folder, device="cpu", name: str | None = None, class_names=None) -> Pair:
    """The pair stored in `folder` as vqvae/draft/target .json + .safetensors (`checkpoints`)."""
    folder = Path(folder)
    return Pair(load_vqvae(folder / "vqvae", device), load_var(folder / "draft", device),
                load_var(folder / "target", device), name=folder.name if name is None else name,
                class_names=class_names)


def plain_model_folder(folder, model_stem, out) -> Path:
    """A pair folder `out` whose target is the VAR at `model_stem` (.json + .safetensors) and whose VQ-VAE
    and draft are those of `folder`, so that `sample --pair OUT --mode target` samples that model alone
    (the plain mid model of the frontier and the card). Files are copied; returns `out`."""
    import shutil

    folder, model_stem, out = Path(folder), Path(model_stem), Path(out)
    sources = {f"{name}.{ext}": folder / f"{name}.{ext}" for name in ("vqvae", "draft") for ext in ("json", "safetensors")}
    sources.update({f"target.{ext}": Path(f"{model_stem}.{ext}") for ext in ("json", "safetensors")})
    missing = [str(p) for p in sources.values() if not p.is_file()]
    if missing:
        raise ValueError(f"cannot build a plain-model pair folder: {', '.join(missing)} not found")
    out.mkdir(parents=True, exist_ok=True)
    for name, src in sources.items():
        dst = out / name
        if not dst.is_file() or dst.stat().st_size != src.stat().st_size or file_sha256(dst) != file_sha256(src):
            shutil.copy2(src, dst)
    return out


def _tiny_pair(device, folder: Path = TINY_DIR) -> Pair:
    """The embedded pair of `folder` (assets/tiny): vqvae, draft, target (+ card.json, checked when present)."""
    folder = Path(folder)
    need = [folder / f"{s}.{e}" for s in ("vqvae", "draft", "target") for e in ("json", "safetensors")]
    missing = [p.name for p in need if not p.is_file()]
    if missing:
        raise ValueError(f"the tiny pair is incomplete: {', '.join(missing)} missing in {folder} "
                         f"(the repo ships them there; or pass name='official' for the official weights)")
    if (folder / "card.json").is_file():
        verify_card(folder)
    return load_pair_folder(folder, device, name="tiny", class_names=list(CLASS_NAMES))


def _official_pair(draft_depth: int, target_depth: int, weights_dir, device, precision: str = "fp32") -> Pair:
    """One shared official VQ-VAE (fp32) with VAR-d{draft_depth} and VAR-d{target_depth} (one model if equal),
    their weight matrices held in `precision`."""
    check_precision(device, precision)
    target_path, vae_path = find_official_weights(target_depth, weights_dir)
    draft_path = find_official_weights(draft_depth, weights_dir)[0] if draft_depth != target_depth else None
    vqvae = load_official_vqvae(vae_path, device)
    target = load_official_var(target_depth, target_path, device, precision=precision)
    draft = load_official_var(draft_depth, draft_path, device, precision=precision) if draft_path else target
    return Pair(vqvae, draft, target, name=f"official d{draft_depth}→d{target_depth}", class_names=None)


def load_pair(name: str = "tiny", *, draft_depth: int | None = None, target_depth: int | None = None,
              weights_dir=None, device=None, folder=None, precision: str = "fp32") -> Pair:
    """A draft/target Pair.

    name 'tiny': the embedded pair (assets/tiny, or `folder`), class names from data.CLASS_NAMES.
    name 'official' (or draft_depth/target_depth given): official VAR-d{draft_depth} (default 16) and
    VAR-d{target_depth} (default 30) sharing the official VQ-VAE; class_names None (ImageNet ids);
    precision 'bf16' holds their weight matrices in bf16 (half the memory; runs are then bf16).
    device: CUDA when available unless given.
    """
    if name not in ("tiny", "official"):
        raise ValueError(f"unknown pair {name!r}; known: 'tiny', 'official'")
    device = resolve_device("auto" if device is None else device)
    if name == "official" or draft_depth is not None or target_depth is not None:
        return _official_pair(draft_depth or DEFAULT_DRAFT_DEPTH, target_depth or DEFAULT_TARGET_DEPTH,
                              weights_dir, device, precision)
    return _tiny_pair(device, folder or TINY_DIR)


def random_pair(device="cpu", seed: int = 0, target: dict | None = None, draft: dict | None = None,
                vqvae_cfg: VQVAEConfig = TINY_VQVAE, num_classes: int = len(CLASS_NAMES),
                name: str = "random", class_names=tuple(CLASS_NAMES)) -> Pair:
    """A pair with random weights: VQ-VAE `vqvae_cfg`, then the draft, then the target, all drawn from
    `seed` (the global RNG is left alone). Default shapes are the embedded pair's (EMBEDDED_DRAFT,
    EMBEDDED_TARGET). For tests, benchmarks, and the app when the embedded weights are missing."""
    kw = dict(vocab_size=vqvae_cfg.vocab_size, z_channels=vqvae_cfg.z_channels, num_classes=num_classes,
              patch_nums=vqvae_cfg.patch_nums)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        vq = VQVAE(vqvae_cfg).to(device).eval()   # built on the device; .to() moves any stray tensor
        d = VAR(VARConfig(**(draft or EMBEDDED_DRAFT), **kw)).to(device).eval()
        t = VAR(VARConfig(**(target or EMBEDDED_TARGET), **kw)).to(device).eval()
    return Pair(vq, d, t, name=name, class_names=list(class_names) if class_names is not None else None)
