"""Model-size dataclasses, presets, the scale layout and where the shipped assets are.

Knows nothing of torch modules: everything here is plain Python so masks, viz
and the app can use the layout without building a model.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

OFFICIAL_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)

# What the repository ships: the embedded pair, the FID-tiny classifier, the app's precomputed runs
# (in assets/ of the checkout, or the folder $SDVAR_ASSETS_DIR names).
ASSETS_DIR = Path(os.environ.get("SDVAR_ASSETS_DIR") or Path(__file__).resolve().parent.parent / "assets")
TINY_DIR = ASSETS_DIR / "tiny"
MID_STEM = TINY_DIR / "mid"                    # the plain mid model: a baseline beside the pair, not a default
FRONTIER_JSON = ASSETS_DIR / "frontier.json"   # the speed–quality frontier of the pair (`bench frontier`)
CLASSIFIER_STEM = ASSETS_DIR / "classifier"   # <stem>.json + <stem>.safetensors
EXAMPLES_DIR = ASSETS_DIR / "examples"


@dataclass(frozen=True)
class ScaleLayout:
    """Where each scale's tokens sit in the flattened sequence.

    Scale k has pn_k x pn_k tokens at positions [starts[k], ends[k]).
    With the official patch_nums: 10 scales, 680 tokens.
    """

    patch_nums: tuple[int, ...] = OFFICIAL_PATCH_NUMS

    def __post_init__(self):
        pn = tuple(int(p) for p in self.patch_nums)
        if not pn or any(p < 1 for p in pn) or list(pn) != sorted(set(pn)):
            raise ValueError(f"patch_nums must be strictly increasing positive ints, got {self.patch_nums}")
        object.__setattr__(self, "patch_nums", pn)

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @cached_property
    def sizes(self) -> tuple[int, ...]:
        """Tokens per scale, pn^2."""
        return tuple(p * p for p in self.patch_nums)

    @cached_property
    def starts(self) -> tuple[int, ...]:
        out, acc = [], 0
        for s in self.sizes:
            out.append(acc)
            acc += s
        return tuple(out)

    @cached_property
    def ends(self) -> tuple[int, ...]:
        return tuple(s + n for s, n in zip(self.starts, self.sizes))

    @property
    def total(self) -> int:
        """L, the sequence length (680 for the official layout)."""
        return self.ends[-1]

    @cached_property
    def scale_of_position(self) -> tuple[int, ...]:
        """Scale index of every position 0..L-1 (VAR's lvl_1L)."""
        return tuple(k for k, n in enumerate(self.sizes) for _ in range(n))

    def phi_index(self, k: int, num_phi: int = 4) -> int:
        """Which partially-shared phi conv scale k uses (VAR's tick rule).

        For the official 10 scales and 4 phis this is [0,0,1,1,1,2,2,3,3,3];
        the exact tie at k=2 resolves to 1 as in float64 (see var-architecture.md §3.3).
        """
        sn = self.num_scales
        if sn == 10 and num_phi == 4:
            return (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)[k]
        if num_phi == 1:
            return 0
        ticks = [1 / (2 * num_phi) + i * (1 - 1 / num_phi) / (num_phi - 1) for i in range(num_phi)]
        r = k / (sn - 1) if sn > 1 else 0.0
        return min(range(num_phi), key=lambda j: abs(ticks[j] - r))


class _ModelConfig:
    """Shared by the model configs: the scale layout and a JSON-friendly round trip."""

    @property
    def layout(self) -> ScaleLayout:
        return ScaleLayout(self.patch_nums)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


@dataclass(frozen=True)
class VQVAEConfig(_ModelConfig):
    """Multi-scale residual VQ-VAE. Official: ch=160, ch_mult=(1,1,2,2,4), V=4096, Cvae=32, 256 px."""

    vocab_size: int = 4096
    z_channels: int = 32
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    use_attn: bool = True  # attention at the lowest resolution and in the middle (official: yes)
    share_quant_resi: int = 4
    quant_resi: float = 0.5
    beta: float = 0.25
    image_size: int = 256
    patch_nums: tuple[int, ...] = OFFICIAL_PATCH_NUMS

    def __post_init__(self):
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "patch_nums", tuple(self.patch_nums))
        down = 2 ** (len(self.ch_mult) - 1)
        if self.image_size % down:
            raise ValueError(f"image_size {self.image_size} is not divisible by the downsampling factor {down}")
        if self.image_size // down != self.patch_nums[-1]:
            raise ValueError(
                f"the last patch_num ({self.patch_nums[-1]}) must equal the latent size "
                f"image_size/{down} = {self.image_size // down}")

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class VARConfig(_ModelConfig):
    """VAR transformer size. Official rule: width = 64*depth, heads = depth, head_dim 64."""

    depth: int = 16
    width: int = 1024
    heads: int = 16
    mlp_ratio: float = 4.0
    vocab_size: int = 4096
    z_channels: int = 32
    num_classes: int = 1000
    patch_nums: tuple[int, ...] = OFFICIAL_PATCH_NUMS
    shared_aln: bool = False
    attn_l2_norm: bool = True
    norm_eps: float = 1e-6
    cond_drop_rate: float = 0.1  # training only
    name: str = field(default="", compare=False)

    def __post_init__(self):
        object.__setattr__(self, "patch_nums", tuple(self.patch_nums))
        for key in ("depth", "width", "heads", "vocab_size", "z_channels", "num_classes"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


def official_var_config(depth: int, **overrides) -> VARConfig:
    """The official VAR size rule for any depth: width 64*depth, heads = depth."""
    depth = int(depth)
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    kw = dict(depth=depth, width=64 * depth, heads=depth, name=f"var-d{depth}")
    kw.update(overrides)
    return VARConfig(**kw)


def official_var_file(depth: int) -> str:
    """File name of the official VAR-d{depth} checkpoint (FoundationVision/var on the hub)."""
    return f"var_d{int(depth)}.pth"


OFFICIAL_VQVAE = VQVAEConfig()

# 64 px, latent 16x16 with the official 10 scales; 2.6 M parameters.
TINY_VQVAE = VQVAEConfig(vocab_size=512, z_channels=16, ch=32, ch_mult=(1, 2, 4), num_res_blocks=1,
                         use_attn=False, image_size=64)

PRESETS: dict[str, VARConfig] = {f"var-d{d}": official_var_config(d) for d in (16, 20, 24, 30)}


def preset(name: str) -> VARConfig:
    """Look up a preset ('var-d16' …) or any 'var-dN' following the official rule."""
    if name in PRESETS:
        return PRESETS[name]
    if name.startswith("var-d") and name[5:].isdigit():
        return official_var_config(int(name[5:]))
    raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)} or any 'var-dN'")
