"""The Trace: everything a run did, recorded while running — the contract between engine and UI.

Plain dataclasses of numpy arrays and Python scalars; saved as one .npz (arrays) with the
metadata as JSON inside, loaded without pickle.
"""
from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

# Per-token status codes in ScaleRecord.status
ACCEPTED, CORRECTED, TARGET, DRAFT, INPUT = 0, 1, 2, 3, 4
STATUS_NAMES = {ACCEPTED: "draft accepted", CORRECTED: "corrected by target",
                TARGET: "made by target", DRAFT: "made by draft", INPUT: "from your picture"}

TENSOR_MEANINGS = {
    "input": "transformer input for the positions fed in this call: (rows, query length, width); rows = 2B with CFG",
    "logits": "head output for this scale's positions, conditional and null-class rows: (2B, pn², V)",
    "cfg_logits": "guided logits (1+t)·cond − t·uncond, t = cfg·k/9: (B, pn², V)",
    "indices": "sampled token ids of this scale: (B, pn²)",
    "h_up": "codebook vectors of the tokens, upsampled to the latent grid and passed through phi: (B, Cvae, h, w)",
    "f_hat": "cumulative latent after this scale, sum of all scales' h_up: (B, Cvae, h, w)",
    "next_input": "f_hat area-downsampled to the next scale, flattened: the next scale's VAR input (B, pn_next², Cvae)",
    "kv_len": "positions held in the model's KV cache after the call: (length,)",
}


@dataclass
class ModelCall:
    """One forward of one model. Times are seconds since the run started (synchronised on CUDA)."""

    model: str            # "draft" | "target"
    kind: str             # "step" | "prefill" | "verify"
    scales: list[int]     # scales whose inputs were fed in this call
    query_len: int        # positions fed per row
    kv_before: int
    kv_after: int
    mask_rule: int | None  # sd_mask rule of the attention mask; None = no mask (all cached keys)
    t_start: float
    t_end: float

    @property
    def seconds(self) -> float:
        return self.t_end - self.t_start


@dataclass
class ShapeRecord:
    scale: int
    model: str            # "draft" | "target" | "vqvae"
    tensor: str           # a key of TENSOR_MEANINGS
    shape: list[int]


@dataclass
class Candidate:
    """One γ considered at a round: expected finalized scales, round seconds, seconds to finish."""

    gamma: int
    gain: float       # expected scales finalized by this round
    cost: float       # expected seconds of this round
    value: float      # expected seconds to finish the image: this round, then the planned rounds
    speedup: float    # the score: target alone on the remaining scales ÷ value


@dataclass
class PlanRecord:
    """The plan of one speculative round, as the Trace keeps it."""

    start: int                  # first scale of the round
    draft_next: int             # first scale the draft's KV cache lacks (< start: a catch-up call)
    chosen: int                 # γ of the round (0: the target makes scale `start` alone)
    candidates: list[Candidate]
    pass_prob: list[float]      # π_k used, for every scale (only k ≥ start matter)
    observations: float         # discounted count of finished-round observations behind π
    t: float                    # when the plan was made, seconds since the run started

    @classmethod
    def from_dict(cls, d: dict) -> "PlanRecord":
        return cls(**{**d, "candidates": [Candidate(**c) for c in d["candidates"]]})


@dataclass
class RoundRecord:
    """One speculative round: draft `drafted` scales from `start`, one target call, keep `finalized`.

    With gamma="auto" a round may draft nothing (gamma 0, drafted []): the target makes scale
    `start` alone; `plan` holds the planner's reasoning."""

    start: int
    gamma: int
    drafted: list[int]
    finalized: list[int]
    accepted_scales: list[int]     # drafted scales kept (for every sample)
    corrected_scale: int | None    # the scale finalized with target corrections, if any
    stale_scales: list[int]        # relaxed mode: scales judged against a condition built from replaced tokens
    plan: PlanRecord | None = None  # gamma="auto": how γ was chosen

    @classmethod
    def from_dict(cls, d: dict) -> "RoundRecord":
        plan = d.get("plan")
        return cls(**{**d, "plan": None if plan is None else PlanRecord.from_dict(plan)})


@dataclass
class ScaleRecord:
    """What happened at scale k. Arrays have a leading batch axis B."""

    scale: int
    pn: int
    producer: str                         # "draft" | "target" | "draft+target" | "input" (a picture's prefix)
    tokens: np.ndarray                    # (B, pn²) int64 final tokens
    status: np.ndarray                    # (B, pn²) int8 codes ACCEPTED/CORRECTED/TARGET/DRAFT/INPUT
    draft_tokens: np.ndarray | None = None  # (B, pn²) what the draft proposed (speculative)
    p_draft: np.ndarray | None = None     # (B, pn²) target probability of the drafted token
    q_draft: np.ndarray | None = None     # (B, pn²) draft probability of the drafted token
    stale: bool = False                   # judged against a stale condition (relaxed mode)
    image: np.ndarray | None = None       # (B, H, W, 3) uint8: the picture after this scale


_ARRAY_FIELDS = ("tokens", "status", "draft_tokens", "p_draft", "q_draft", "image")


@dataclass
class Trace:
    settings: dict
    patch_nums: list[int]
    scales: list[ScaleRecord] = field(default_factory=list)
    calls: list[ModelCall] = field(default_factory=list)
    shapes: list[ShapeRecord] = field(default_factory=list)
    rounds: list[RoundRecord] = field(default_factory=list)
    timings: dict = field(default_factory=dict)   # seconds: total, transformer, decode, progressive, overhead
    images: np.ndarray | None = None              # (B, H, W, 3) uint8 final images
    # a run on a picture (generate's prefix / keep_mask): scales taken whole, the picture's tokens of
    # the scales it used side by side ((L',) int64), the kept region ((H, W) bool, True = the picture's)
    prefix_scales: int = 0
    picture_tokens: np.ndarray | None = None
    keep_mask: np.ndarray | None = None

    # ---- summaries -----------------------------------------------------------------------
    def calls_of(self, model: str) -> int:
        return sum(c.model == model for c in self.calls)

    @property
    def target_calls(self) -> int:
        return self.calls_of("target")

    @property
    def draft_calls(self) -> int:
        return self.calls_of("draft")

    @property
    def tokens(self) -> np.ndarray:
        """Final tokens of every scale side by side: (B, L), scale k at its layout positions."""
        return np.concatenate([s.tokens for s in self.scales], axis=1)

    def acceptance_per_scale(self) -> list[float | None]:
        """Fraction of drafted tokens accepted as drafted, per scale (None where nothing was verified).
        Tokens kept from a picture (INPUT, in-painting) are not judged and not counted."""
        out = []
        for s in self.scales:
            judged = int((s.status != INPUT).sum())
            verified = s.draft_tokens is not None and s.producer == "draft+target" and judged > 0
            out.append(int((s.status == ACCEPTED).sum()) / judged if verified else None)
        return out

    # ---- persistence ---------------------------------------------------------------------
    def save(self, path) -> None:
        """Write to a path or a binary file object."""
        arrays, scale_meta = {}, []
        for i, s in enumerate(self.scales):
            meta = {k: v for k, v in asdict(s).items() if k not in _ARRAY_FIELDS}
            for name in _ARRAY_FIELDS:
                value = getattr(s, name)
                if value is not None:
                    arrays[f"scale{i}_{name}"] = np.asarray(value)
            scale_meta.append(meta)
        if self.images is not None:
            arrays["images"] = self.images
        for name in ("picture_tokens", "keep_mask"):
            if getattr(self, name) is not None:
                arrays[name] = np.asarray(getattr(self, name))
        meta = {"settings": self.settings, "patch_nums": list(self.patch_nums), "scales": scale_meta,
                "calls": [asdict(c) for c in self.calls], "shapes": [asdict(r) for r in self.shapes],
                "rounds": [asdict(r) for r in self.rounds], "timings": self.timings,
                "prefix_scales": int(self.prefix_scales)}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        if hasattr(path, "write"):
            np.savez_compressed(path, **arrays)
        else:
            with open(path, "wb") as f:
                np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "Trace":
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
        scales = []
        for i, m in enumerate(meta["scales"]):
            extra = {name: arrays.get(f"scale{i}_{name}") for name in _ARRAY_FIELDS}
            scales.append(ScaleRecord(**m, **extra))
        return cls(settings=meta["settings"], patch_nums=meta["patch_nums"], scales=scales,
                   calls=[ModelCall(**c) for c in meta["calls"]],
                   shapes=[ShapeRecord(**r) for r in meta["shapes"]],
                   rounds=[RoundRecord.from_dict(r) for r in meta["rounds"]],
                   timings=meta["timings"], images=arrays.get("images"),
                   prefix_scales=int(meta.get("prefix_scales", 0)), picture_tokens=arrays.get("picture_tokens"),
                   keep_mask=arrays.get("keep_mask"))

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        self.save(buf)
        return buf.getvalue()
