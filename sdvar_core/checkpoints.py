"""Our own weights on disk, and the state-dict checks every load runs.

A model is `<stem>.safetensors` (its state dict) + `<stem>.json` ({"config": ..., **meta}): the
VQ-VAE, the VAR (without the buffers rebuilt from its config, `var.DERIVED_BUFFERS`) and the
FID-tiny classifier. Loading checks every key and shape against a model built from the JSON
config before `load_state_dict(strict=True)`, so a mismatch is a ValueError naming the keys.
Official `.pth` files (`zoo`) go through the same checks.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from .classifier import Classifier, ClassifierConfig
from .config import VARConfig, VQVAEConfig, official_var_file
from .var import DERIVED_BUFFERS, VAR
from .vqvae import VQVAE

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


# ---- safetensors + JSON ----------------------------------------------------------------------------


def _save(model: torch.nn.Module, stem, config: dict, meta: dict | None, dtype: torch.dtype | None = None,
          skip: tuple[str, ...] = ()) -> None:
    """Write `<stem>.safetensors` (state dict without `skip`; floating tensors as `dtype` when given)
    and `<stem>.json` ({'config': config, **meta})."""
    Path(stem).parent.mkdir(parents=True, exist_ok=True)
    cast = lambda v: v.to(dtype) if dtype is not None and v.is_floating_point() else v  # noqa: E731
    state = {k: cast(v.detach().cpu()).contiguous() for k, v in model.state_dict().items() if k not in skip}
    save_file(state, f"{stem}.safetensors")
    Path(f"{stem}.json").write_text(json.dumps({"config": config, **(meta or {})}, indent=2) + "\n")


def read_json(path) -> object:
    """The JSON document in `path`; ValueError naming the file when it cannot be read or parsed."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({type(e).__name__}: {e})") from e


def _load(stem, what: str, config_from: Callable[[dict], object], build: Callable[[object], torch.nn.Module],
          device, skip: tuple[str, ...] = ()) -> torch.nn.Module:
    """Read `<stem>.json` + `<stem>.safetensors` into build(config), checked key by key; eval mode on `device`.

    Keys in `skip` are not in the file: the model keeps its own (buffers derived from the config).
    A file stored in a lower precision is cast back to the model's dtypes by load_state_dict.
    """
    json_path, st_path = Path(f"{stem}.json"), Path(f"{stem}.safetensors")
    absent = [str(p) for p in (json_path, st_path) if not p.is_file()]
    if absent:
        raise ValueError(f"{what} file(s) not found: {', '.join(absent)}")
    info = read_json(json_path)
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise ValueError(f"{json_path}: expected {{'config': {{...}}, ...}} with the {what} config")
    try:
        model = build(config_from(info["config"]))
    except (TypeError, ValueError, KeyError, AttributeError, ArithmeticError) as e:
        raise ValueError(f"{json_path}: bad {what} config: {type(e).__name__}: {e}") from e
    try:
        state = load_file(str(st_path))
    except Exception as e:  # safetensors raises its own error type for a damaged header
        raise ValueError(f"{st_path}: cannot be read as safetensors: {e}") from e
    state = {k: v for k, v in state.items() if k not in skip}
    source = f"{what} weights {st_path}"
    if isinstance(model, VAR):
        check_var_state(state, model, source, skip=skip)
    else:
        check_state_dict(state, {k: v for k, v in model.state_dict().items() if k not in skip}, source)
    own = model.state_dict()
    try:
        model.load_state_dict({**state, **{k: own[k] for k in skip}}, strict=True)
    except RuntimeError as e:  # e.g. a tensor of a type that cannot be copied into the parameter
        raise ValueError(f"{source} could not be loaded: {e}") from e
    return model.to(device).eval()


def save_vqvae(model: VQVAE, stem, meta: dict | None = None) -> None:
    """`<stem>.safetensors` + `<stem>.json` of a VQ-VAE."""
    _save(model, stem, model.cfg.to_dict(), meta)


def load_vqvae(stem, device="cpu") -> VQVAE:
    """An eval-mode VQ-VAE from `<stem>.json` + `<stem>.safetensors`."""
    return _load(stem, "VQ-VAE", VQVAEConfig.from_dict, VQVAE, device)


def save_var(model: VAR, stem, meta: dict | None = None, dtype: torch.dtype | None = None) -> None:
    """`<stem>.safetensors` (without DERIVED_BUFFERS) + `<stem>.json` of a VAR.

    dtype: store floating-point tensors in this dtype (e.g. float16 to halve the file); loading casts back.
    """
    _save(model, stem, model.cfg.to_dict(), meta, dtype, skip=DERIVED_BUFFERS)


def load_var(stem, device="cpu") -> VAR:
    """An eval-mode VAR from `<stem>.json` + `<stem>.safetensors` (every non-derived key, right shapes)."""
    return _load(stem, "VAR", VARConfig.from_dict, VAR, device, skip=DERIVED_BUFFERS)


def save_classifier(model: Classifier, stem, meta: dict | None = None) -> None:
    """`<stem>.safetensors` + `<stem>.json` of the FID-tiny classifier."""
    _save(model, stem, asdict(model.config), meta)


def load_classifier(stem, device="cpu") -> Classifier:
    """An eval-mode classifier from `<stem>.json` + `<stem>.safetensors`."""
    return _load(stem, "classifier", lambda d: ClassifierConfig(**d), Classifier, device)
