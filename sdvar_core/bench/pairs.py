"""The pairs the benchmarks run: the embedded pair, a random pair of its shapes, random official-size VARs."""
from __future__ import annotations

import torch

from ..config import OFFICIAL_VQVAE, TINY_VQVAE, official_var_config, preset
from ..engine import Pair
from ..var import VAR
from ..vqvae import VQVAE
from ..zoo import load_pair, random_pair


def get_pair(name: str, device: torch.device) -> Pair:
    """'tiny' → the embedded pair (assets/tiny; a clear error if absent), 'random' → zoo.random_pair."""
    if name == "random":
        return random_pair(device, name="random (embedded shapes)")
    if name == "tiny":
        return load_pair("tiny", device=device)
    raise ValueError(f"--pair must be 'tiny' or 'random', got {name!r}")


def random_official_var(name: str, device, seed: int = 0, small: bool = False) -> VAR:
    """A random-weight VAR of preset `name`, built on `device`; small=True puts it on the tiny VQ-VAE's codebook."""
    cfg = preset(name)
    if small:
        cfg = official_var_config(cfg.depth, vocab_size=TINY_VQVAE.vocab_size, z_channels=TINY_VQVAE.z_channels,
                                  num_classes=10)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        return VAR(cfg).to(device).eval()


def random_vqvae(device, small: bool = False, seed: int = 0) -> VQVAE:
    """A random-weight VQ-VAE on `device`: the official one, or with small=True the tiny one."""
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        return VQVAE(TINY_VQVAE if small else OFFICIAL_VQVAE).to(device).eval()


def random_official_pair(draft: str, target: str, device, small: bool = False) -> Pair:
    """Random official-size VARs `draft` → `target` (presets) sharing a random VQ-VAE."""
    return Pair(random_vqvae(device, small), random_official_var(draft, device, 1, small),
                random_official_var(target, device, 2, small), name=f"random {draft} → {target}")
