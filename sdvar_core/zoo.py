"""Loading models: the official VAR/VQ-VAE .pth files (strict), the hub download, our own safetensors.

Official files (FoundationVision/var on the Hugging Face hub): `var_d{depth}.pth` (flat VAR state
dict, 12 + 13·depth keys) and `vae_ch160v4096z32.pth` (flat VQ-VAE state dict, 324 keys). Self-trained
checkpoints of the official trainer nest them as ckpt['trainer']['var_wo_ddp'] / ['vae_local'].
Every state dict is checked key by key and shape by shape before `load_state_dict(strict=True)`.

Our own weights are `<stem>.safetensors` + `<stem>.json` ({"config": ..., **meta}); VAR files leave
out the buffers rebuilt from the config (`var.DERIVED_BUFFERS`).
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import socket
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file, save_file

from .config import OFFICIAL_VQVAE, VARConfig, VQVAEConfig, official_var_config
from .data import CLASS_NAMES
from .engine import Pair
from .runtime import resolve_device
from .var import DERIVED_BUFFERS, VAR
from .vqvae import VQVAE, load_vqvae

TINY_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny"
HUB_REPO = "FoundationVision/var"
OFFICIAL_VAE_FILE = "vae_ch160v4096z32.pth"
WEIGHTS_ENV = "SDVAR_WEIGHTS_DIR"
DEFAULT_DRAFT_DEPTH, DEFAULT_TARGET_DEPTH = 16, 30


def official_var_file(depth: int) -> str:
    return f"var_d{int(depth)}.pth"


# ---- state-dict checks -----------------------------------------------------------------------


def _few(items: list[str], n: int = 6) -> str:
    """The first n items, then how many more."""
    return ", ".join(items[:n]) + (f", … and {len(items) - n} more" if len(items) > n else "")


def check_state_dict(state: dict, reference: dict, source: str) -> None:
    """Raise ValueError unless `state` has exactly the keys of `reference`, each with the same shape.

    Both map key → tensor (meta tensors are fine: only shapes are read). The message names the
    missing, unexpected and misshaped keys (first few of each, with counts; both shapes).
    """
    missing = [k for k in reference if k not in state]
    unexpected = [k for k in state if k not in reference]
    misshaped = [f"{k} {tuple(state[k].shape)} in the file vs {tuple(reference[k].shape)} in the model"
                 for k in reference if k in state and tuple(state[k].shape) != tuple(reference[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
    if misshaped:
        problems.append(f"{len(misshaped)} misshaped key(s): {_few(misshaped)}")
    if missing and all(k.endswith("attn.scale_mul_1H11") for k in missing):
        problems.append("hint: files without scale_mul_1H11 predate normalised attention; get the current ones")
    if problems:
        raise ValueError(f"{source} does not match the model: " + "; ".join(problems))


def var_state_size(state: dict) -> tuple[int | None, int | None]:
    """(number of blocks, width) of a VAR state dict, from the `blocks.{i}.` keys and pos_1LC (1, L, C)."""
    ids = {int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    pos = state.get("pos_1LC")
    width = int(pos.shape[-1]) if isinstance(pos, torch.Tensor) and pos.dim() == 3 else None
    return (max(ids) + 1 if ids else None), width


def check_var_state(state: dict, model: VAR, source: str = "VAR checkpoint", skip: tuple[str, ...] = ()) -> None:
    """check_state_dict against `model` (keys in `skip` left out), with a clear message for a wrong depth."""
    blocks, width = var_state_size(state)
    cfg = model.cfg
    looks = blocks if blocks is not None else (width // 64 if width is not None else cfg.depth)
    if looks != cfg.depth:
        seen = ", ".join(([f"{blocks} blocks"] if blocks is not None else [])
                         + ([f"width {width}"] if width is not None else []))
        raise ValueError(
            f"{source} looks like depth {looks} ({seen}), but the model has depth {cfg.depth} (width {cfg.width}); "
            f"load it with depth={looks} (official file: {official_var_file(looks)})")
    check_state_dict(state, {k: v for k, v in model.state_dict().items() if k not in skip}, source)


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
        obj = torch.load(path, map_location="cpu", weights_only=True)
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


def _fill(model: torch.nn.Module, state: dict, device) -> torch.nn.Module:
    """Load a checked `state` into a model built on the meta device (no second copy in memory)."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
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


def load_official_var(depth: int, var_path, device="cpu", vqvae_cfg: VQVAEConfig = OFFICIAL_VQVAE) -> VAR:
    """VAR(official_var_config(depth)) from `var_d{depth}.pth`, in eval mode; vocab/Cvae/scales from vqvae_cfg."""
    state = read_checkpoint(var_path, "var_wo_ddp")
    cfg = official_var_config(depth, vocab_size=vqvae_cfg.vocab_size, z_channels=vqvae_cfg.z_channels,
                              patch_nums=vqvae_cfg.patch_nums)
    with torch.device("meta"):
        model = VAR(cfg)
    check_var_state(state, model, f"VAR checkpoint {var_path}")
    return _fill(model, state, device)


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


# ---- our own weights -----------------------------------------------------------------------------


def save_var(model: VAR, stem, meta: dict | None = None, dtype: torch.dtype | None = None) -> None:
    """Write `<stem>.safetensors` (state dict without DERIVED_BUFFERS) and `<stem>.json` ({'config': ..., **meta}).

    dtype: store floating-point tensors in this dtype (e.g. float16 to halve the file); loading casts back.
    """
    Path(stem).parent.mkdir(parents=True, exist_ok=True)
    cast = lambda v: v.to(dtype) if dtype is not None and v.is_floating_point() else v  # noqa: E731
    state = {k: cast(v.detach().cpu()).contiguous() for k, v in model.state_dict().items() if k not in DERIVED_BUFFERS}
    save_file(state, f"{stem}.safetensors")
    info = {"config": model.cfg.to_dict(), **(meta or {})}
    Path(f"{stem}.json").write_text(json.dumps(info, indent=2) + "\n")


def load_var(stem, device="cpu") -> VAR:
    """Read `<stem>.json` + `<stem>.safetensors` (every non-derived key, right shapes) into an eval-mode VAR."""
    json_path, st_path = Path(f"{stem}.json"), Path(f"{stem}.safetensors")
    absent = [str(p) for p in (json_path, st_path) if not p.is_file()]
    if absent:
        raise ValueError(f"VAR file(s) not found: {', '.join(absent)}")
    info = json.loads(json_path.read_text())
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise ValueError(f"{json_path}: expected {{'config': {{VARConfig fields}}, ...}}")
    try:
        cfg = VARConfig.from_dict(info["config"])
    except TypeError as e:
        raise ValueError(f"{json_path}: bad VAR config: {e}") from e
    try:
        state = load_file(str(st_path))
    except Exception as e:  # safetensors raises its own error type for a damaged header
        raise ValueError(f"{st_path}: cannot be read as safetensors: {e}") from e
    model = VAR(cfg)
    state = {k: v for k, v in state.items() if k not in DERIVED_BUFFERS}  # rebuilt from the config
    check_var_state(state, model, f"VAR weights {st_path}", skip=DERIVED_BUFFERS)
    own = model.state_dict()
    model.load_state_dict({**state, **{k: own[k] for k in DERIVED_BUFFERS}}, strict=True)
    return model.to(device).eval()


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
    card = json.loads(card_path.read_text())
    files = card.get("files") if isinstance(card, dict) else None
    if not isinstance(files, dict) or not files:
        raise ValueError(f"{card_path}: expected a non-empty 'files' mapping of name → {{'sha256': ...}}")
    bad = []
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            bad.append(f"{name} (missing)")
        elif file_sha256(path) != entry.get("sha256"):
            bad.append(f"{name} (sha256 {file_sha256(path)[:12]}… ≠ card {str(entry.get('sha256'))[:12]}…)")
    if bad:
        raise ValueError(f"{card_path}: files do not match the card: {', '.join(bad)}")
    return card


# ---- pairs ------------------------------------------------------------------------------------------


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
    vqvae = load_vqvae(folder / "vqvae", device)
    return Pair(vqvae, load_var(folder / "draft", device), load_var(folder / "target", device),
                name="tiny", class_names=list(CLASS_NAMES))


def _official_pair(draft_depth: int, target_depth: int, weights_dir, device) -> Pair:
    """One shared official VQ-VAE with VAR-d{draft_depth} and VAR-d{target_depth} (one model if equal)."""
    target_path, vae_path = find_official_weights(target_depth, weights_dir)
    draft_path = find_official_weights(draft_depth, weights_dir)[0] if draft_depth != target_depth else None
    vqvae, target = load_official(target_depth, target_path, vae_path, device)
    draft = load_official_var(draft_depth, draft_path, device) if draft_path else target
    return Pair(vqvae, draft, target, name=f"official d{draft_depth}→d{target_depth}", class_names=None)


def load_pair(name: str = "tiny", *, draft_depth: int | None = None, target_depth: int | None = None,
              weights_dir=None, device=None, folder=None) -> Pair:
    """A draft/target Pair.

    name 'tiny': the embedded pair (assets/tiny, or `folder`), class names from data.CLASS_NAMES.
    name 'official' (or draft_depth/target_depth given): official VAR-d{draft_depth} (default 16) and
    VAR-d{target_depth} (default 30) sharing the official VQ-VAE; class_names None (ImageNet ids).
    device: CUDA when available unless given.
    """
    if name not in ("tiny", "official"):
        raise ValueError(f"unknown pair {name!r}; known: 'tiny', 'official'")
    device = resolve_device("auto" if device is None else device)
    if name == "official" or draft_depth is not None or target_depth is not None:
        return _official_pair(draft_depth or DEFAULT_DRAFT_DEPTH, target_depth or DEFAULT_TARGET_DEPTH,
                              weights_dir, device)
    return _tiny_pair(device, folder or TINY_DIR)
