"""Run a draft/target pair: one model alone, a hand-off schedule, or speculative decoding.

The engine owns the per-run state — each model's KV cache (`Runner`), the shared latent
canvas of final tokens (`Canvas`) — and records the Trace while it runs.
`generate(pair, mode, class_ids, seed, **settings)` is the public entry.

Precision: with 'bf16' (CUDA, or a CPU with native bf16) or 'fp16' (CUDA) the model calls and the
final decode run under autocast; sampling, acceptance tests and the latent canvas stay fp32. A pair
whose VARs are held in bf16 (`Pair.precision`, official pairs on such CPUs) runs in bf16 only.

Streaming: `on_scale(ScaleDone)` is called after each finalized scale, with the picture so far when
the run decodes previews (`progressive`); the run's clock stops while previews decode, so the
trace's timings leave them out. The engine knows nothing of how γ="auto" is planned: the caller
gives a planner, or the default one installed with `set_default_planner` (the calibration layer's).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from . import masks
from .picture import context as picture_context
from .runtime import DTYPES, autocast_for, autocast_session
from .sampling import cfg_mix, guidance, probabilities, sample, smooth_weights
from .trace import DRAFT, INPUT, TARGET, ModelCall, ScaleRecord, ShapeRecord, Trace
from .validate import MODES, check, check_settings

# The acceptance generator's seed is one step of Knuth's MMIX linear congruential generator applied to
# the run's seed, so sampling and acceptance draw from unrelated streams.
LCG_MULTIPLIER, LCG_INCREMENT = 6364136223846793005, 1442695040888963407


@dataclass
class Pair:
    """A draft and a target VAR sharing one VQ-VAE (codebook, phi, latent grid)."""

    vqvae: torch.nn.Module
    draft: torch.nn.Module
    target: torch.nn.Module
    name: str = ""
    class_names: list[str] | None = None

    def __post_init__(self):
        vq = self.vqvae.cfg
        for role, m in (("draft", self.draft), ("target", self.target)):
            c = m.cfg
            if (c.vocab_size, c.z_channels, tuple(c.patch_nums)) != (vq.vocab_size, vq.z_channels, tuple(vq.patch_nums)):
                raise ValueError(
                    f"the {role} VAR does not share the VQ-VAE's codebook/layout: vocab {c.vocab_size} vs "
                    f"{vq.vocab_size}, Cvae {c.z_channels} vs {vq.z_channels}, patch_nums {c.patch_nums} vs {vq.patch_nums}")
        if self.draft.cfg.num_classes != self.target.cfg.num_classes:
            raise ValueError("draft and target must have the same number of classes")

    @property
    def num_classes(self) -> int:
        return self.target.cfg.num_classes

    @property
    def layout(self):
        return self.vqvae.cfg.layout

    @property
    def precision(self) -> str:
        """The precision the VARs' weights are held in: 'fp32', or 'bf16'/'fp16' (then runs use it)."""
        dtype = self.target.head.weight.dtype
        return next(name for name, d in DTYPES.items() if d == dtype)


@dataclass
class Settings:
    """Every knob of a run. `validate(mode)` turns bad values into ValueErrors naming the setting."""

    cfg: float = 1.5
    top_k: int = 0
    top_p: float = 1.0
    entry_num: int | None = None   # schedule shorthand: 'D'*e + 'T'*(10-e)
    schedule: str | None = None    # one letter per scale, 'D' or 'T'
    sd_mask: int = 3               # attention rule of the incoming model's prefill at a switch
    gamma: int | str = 2           # scales drafted per speculative round, or "auto": planned before each round
    adaptive_gamma: bool = False   # +1 after a fully accepted round, −1 after a round whose first scale failed
    accept: str = "prob"           # 'prob' (min(1, λp/q)) or 'top1' (draft token == argmax p)
    tau: float = 1.0               # a scale passes when its accepted fraction ≥ τ (1 = every token)
    lenience: float = 1.0          # λ ≥ 1; λ = 1 and τ = 1 with 'prob' is the exact (lossless) rule
    keep_draft_rejected: bool = False  # relaxed: keep the draft's rejected tokens in passing scales (original SDVAR code)
    verify_mask: int = 3           # attention rule of the target's verification forward
    precision: str = "fp32"        # 'fp32', or autocast: 'bf16' (CUDA, CPUs with native bf16), 'fp16' (CUDA)
    progressive: bool = True       # decode the picture after every scale for the trace
    more_smooth: bool = False      # VAR's soft (Gumbel-softmax) codebook mixture in f_hat; not in speculative mode

    def validate(self, mode: str, num_scales: int, device=None) -> None:
        """Check every field for `mode` in place (4.0 → 4); the rules live in `validate`."""
        check_settings(self, mode, num_scales, device)

    @property
    def exact(self) -> bool:
        """The lossless speculative rule: the output has the target's distribution."""
        return self.accept == "prob" and self.tau == 1 and self.lenience == 1 and not self.keep_draft_rejected

    def schedule_string(self, mode: str, num_scales: int) -> str:
        if mode == "target":
            return "T" * num_scales
        if mode == "draft":
            return "D" * num_scales
        if self.schedule is not None:
            return self.schedule
        if self.entry_num is None:
            raise ValueError("schedule mode needs entry_num or schedule")
        return "D" * int(self.entry_num) + "T" * (num_scales - int(self.entry_num))


@dataclass
class Result:
    images: np.ndarray   # (B, H, W, 3) uint8
    trace: Trace


@dataclass
class ScaleDone:
    """What `on_scale` gets after each finalized scale (its tokens will not change any more)."""

    done: int                  # scales finalized so far, 1..total
    total: int                 # K
    record: ScaleRecord        # the scale's tokens (B, pn²), status, producer
    image: np.ndarray | None   # (B, H, W, 3) uint8: the picture after this scale (progressive runs), else None
    target_calls: int          # model calls so far
    draft_calls: int
    seconds: float             # the run's clock (previews left out)
    decode: Callable[[], np.ndarray]   # the picture after this scale, decoded now if not yet (clock paused);
                                       # it becomes the scale's picture in the trace


PlannerSource = Callable[["Pair", int, Settings], object]
_default_planner: PlannerSource | None = None


def set_default_planner(source: PlannerSource | None) -> None:
    """Install what gives generate(gamma="auto") its planner when the caller gives none:
    source(pair, batch, settings) → a `planner.Planner` (the calibration layer installs its own)."""
    global _default_planner
    _default_planner = source


class Canvas:
    """Final tokens so far and the cumulative latent after each scale; scale k's VAR input comes from here."""

    def __init__(self, vqvae, batch: int, recorder: "Recorder"):
        self.vqvae, self.rec = vqvae, recorder
        s = vqvae.cfg.latent_size
        self.zero = torch.zeros(batch, vqvae.cfg.z_channels, s, s, device=next(vqvae.parameters()).device)
        self.tokens: list[torch.Tensor] = []
        self.fhats: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.tokens)

    def push(self, k: int, idx: torch.Tensor, model: str, soft: torch.Tensor | None = None) -> None:
        """Append scale k's tokens (B, pn²): f_hat += phi_k(upsample(embed(idx))), or with `soft`
        (B, pn², V) codebook weights (more_smooth) the weighted mixture instead of embed(idx)."""
        assert k == len(self.tokens), (k, len(self.tokens))
        h_up = self.vqvae.scale_contribution(k, idx) if soft is None else self.vqvae.soft_contribution(k, soft)
        f_hat = (self.fhats[-1] if self.fhats else self.zero) + h_up
        self.tokens.append(idx)
        self.fhats.append(f_hat)
        self.rec.shape(k, model, "indices", idx)
        self.rec.shape(k, "vqvae", "h_up", h_up)
        self.rec.shape(k, "vqvae", "f_hat", f_hat)

    def truncate(self, n: int) -> None:
        del self.tokens[n:], self.fhats[n:]

    def latent_input(self, k: int) -> torch.Tensor:
        """VAR input of scale k ≥ 1: area-downsampled f_hat after scale k−1, (B, pn_k², Cvae)."""
        x = self.vqvae.next_input(k - 1, self.fhats[k - 1])
        self.rec.shape(k - 1, "vqvae", "next_input", x)
        return x


class Recorder:
    """Collects call records and shapes for the Trace, timing against the run's start."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.t0 = time.perf_counter()
        self.paused_seconds = 0.0
        self.calls: list[ModelCall] = []
        self.shapes: list[ShapeRecord] = []
        self._seen: set = set()

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - self.t0

    @contextlib.contextmanager
    def paused(self):
        """The run's clock stands still inside (preview decodes are not part of the run's time)."""
        t = self.now()
        try:
            yield
        finally:
            gap = self.now() - t
            self.t0 += gap
            self.paused_seconds += gap

    def shape(self, scale: int, model: str, tensor: str, value) -> None:
        shape = list(value.shape) if hasattr(value, "shape") else list(value)
        key = (scale, model, tensor)
        if key in self._seen:  # a re-run scale (after a rollback) replaces its earlier record
            self.shapes = [r for r in self.shapes if (r.scale, r.model, r.tensor) != key]
        self._seen.add(key)
        self.shapes.append(ShapeRecord(scale, model, tensor, shape))


class Runner:
    """One model in a run: its class condition, its KV cache, and forwards over scale windows."""

    def __init__(self, name: str, model, class_ids: torch.Tensor, canvas: Canvas, rec: Recorder, autocast):
        self.name, self.model, self.canvas, self.rec, self.autocast = name, model, canvas, rec, autocast
        self.layout = model.cfg.layout
        held_low = model.head.weight.dtype != torch.float32   # bf16 weights mix with fp32 inputs under autocast
        with autocast() if held_low else contextlib.nullcontext():
            self.cond = model.condition(class_ids)       # (2B, C)
            self.mods = model.modulations(self.cond)     # AdaLN modulations: constant over the run
        self.cache = model.new_cache()
        self.next_scale = 0   # first scale whose inputs are not in the cache
        self.cache_from = 0   # first cached scale (> 0 only after an sd_mask 0 hand-off)

    def rollback(self, num_scales: int) -> None:
        """Keep cached positions of scales < num_scales only (KV rollback)."""
        if self.next_scale > num_scales:
            self.cache.truncate(self.layout.starts[num_scales] - self.layout.starts[self.cache_from])
            self.next_scale = num_scales

    def forward_upto(self, k: int, kind: str = "step", rule: int = 3, current: int | None = None) -> dict[int, torch.Tensor]:
        """Feed every scale from `next_scale` to k in one forward → {scale: logits (2B, pn², V)}.

        The attention mask is sd_mask `rule` with `current` = the first scale this call must
        produce (default: the first scale fed). A 'prefill' under rule 0 drops the cache and feeds scale k alone.
        A single scale under rule 3 needs no mask: it sees the whole cache and itself.
        """
        if kind == "prefill" and rule == 0:
            self.cache.reset()
            self.cache_from = self.next_scale = k
        first, kv_before, layout = self.next_scale, len(self.cache), self.layout
        current = first if current is None else current
        latents = [self.canvas.latent_input(j) for j in range(max(first, 1), k + 1)]
        latents = torch.cat(latents, dim=1) if latents else None
        mask = None
        if rule != 0 and (first < k or rule != 3):
            assert self.cache_from == 0, "masked windows need a cache that starts at position 0"
            mask = masks.mask_matrix(rule, current, layout, q_start=layout.starts[first], q_end=layout.ends[k],
                                     k_end=layout.ends[k]).to(self.model.device)
        t_start = self.rec.now()
        with self.autocast():
            x = self.model.embed_window(self.cond, first, latents)
            logits = self.model.forward_window(x, self.cond, self.cache, mask, self.mods)
        t_end = self.rec.now()
        self.rec.calls.append(ModelCall(self.name, kind, list(range(first, k + 1)), x.shape[1], kv_before,
                                        len(self.cache), rule if kind == "prefill" or mask is not None else None,
                                        t_start, t_end))
        self.next_scale = k + 1
        out, offset = {}, 0
        for j in range(first, k + 1):
            out[j] = logits[:, offset:offset + layout.sizes[j]]
            offset += layout.sizes[j]
        self.rec.shape(k, self.name, "input", x)
        self.rec.shape(k, self.name, "kv_len", [len(self.cache)])
        return out


class Run:
    """Everything one `generate` call shares: pair, settings, generators, canvas, runners, trace records."""

    def __init__(self, pair: Pair, class_ids: torch.Tensor, seed: int, settings: Settings, planner=None,
                 picture=None):
        self.pair, self.s, self.planner = pair, settings, planner   # planner: gamma="auto" (planner.Planner)
        self.picture = picture       # picture.Context: a prefix and/or a kept region, or None
        self.first = picture.prefix_scales if picture is not None else 0   # first scale the models make
        self.layout = pair.layout
        self.K = self.layout.num_scales
        device = pair.target.device
        self.rec = Recorder(device)
        self.g_sample = torch.Generator(device=device).manual_seed(int(seed))
        self.g_accept = torch.Generator(device=device).manual_seed((int(seed) * LCG_MULTIPLIER + LCG_INCREMENT) % 2**63)
        self.canvas = Canvas(pair.vqvae, len(class_ids), self.rec)
        self.autocast = autocast_for(device, settings.precision)   # each model call and the decode
        self.runners = {name: Runner(name, getattr(pair, name), class_ids, self.canvas, self.rec, self.autocast)
                        for name in ("draft", "target")}
        self.records: dict[int, ScaleRecord] = {}
        self.rounds = []
        self.final = 0               # scales < final are finalized (and announced to on_scale)
        self.frames: dict[int, np.ndarray] = {}   # scale → the picture after it (B, H, W, 3), where decoded
        self.on_scale = None         # streaming callback, see generate
        self.accept_override = None  # forced verdicts of drafted scales, see generate
        for k in range(self.first):  # the picture's first scales: on the canvas, fed with the first model call
            idx = picture.tokens[k].expand(len(class_ids), -1).clone()
            self.canvas.push(k, idx, "input")
            self.record_scale(k, "input", idx, torch.full_like(idx, INPUT))

    # ---- in-painting: outside the painted region every scale's tokens are the picture's ---------
    def kept(self, k: int) -> torch.Tensor | None:
        """(pn²,) bool: the positions of scale k that keep the picture's token, or None (no keep mask)."""
        return None if self.picture is None or self.picture.keep is None else self.picture.keep[k]

    def keep_input(self, k: int, idx: torch.Tensor) -> torch.Tensor:
        """Sampled tokens (B, pn²) of scale k with the kept positions replaced by the picture's."""
        keep = self.kept(k)
        return idx if keep is None else torch.where(keep, self.picture.tokens[k], idx)

    def mark_input(self, k: int, status: torch.Tensor) -> torch.Tensor:
        """Status codes (B, pn²) with the kept positions of scale k marked INPUT."""
        keep = self.kept(k)
        return status if keep is None else torch.where(keep, torch.full_like(status, INPUT), status)

    def distribution(self, logits: torch.Tensor, k: int, model: str) -> torch.Tensor:
        """(2B, n, V) logits of scale k → the filtered CFG distribution sampled from, (B, n, V)."""
        self.rec.shape(k, model, "logits", logits)
        mixed = cfg_mix(logits, guidance(self.s.cfg, k, self.K))
        self.rec.shape(k, model, "cfg_logits", mixed)
        return probabilities(mixed, self.s.top_k, self.s.top_p)

    def record_scale(self, k: int, producer: str, tokens: torch.Tensor, status: torch.Tensor, **extra) -> None:
        to_np = lambda t: None if t is None else t.detach().cpu().numpy()  # noqa: E731
        self.records[k] = ScaleRecord(scale=k, pn=self.layout.patch_nums[k], producer=producer,
                                      tokens=to_np(tokens), status=to_np(status).astype(np.int8),
                                      **{n: to_np(v) if isinstance(v, torch.Tensor) else v for n, v in extra.items()})

    def finalize(self, upto: int) -> None:
        """Scales < upto hold their final tokens on the canvas: decode their previews (clock paused) and
        announce each to on_scale."""
        for k in range(self.final, upto):
            if self.s.progressive:
                self.preview(k)
            if self.on_scale is not None:
                calls = [c.model for c in self.rec.calls]
                self.on_scale(ScaleDone(k + 1, self.K, self.records[k], self.frames.get(k), calls.count("target"),
                                        calls.count("draft"), self.rec.now(), lambda k=k: self.preview(k)))
        self.final = max(self.final, upto)

    def preview(self, k: int) -> np.ndarray:
        """The picture after finalized scale k, (B, H, W, 3) uint8: decoded once, with the clock paused."""
        if k not in self.frames:
            with self.rec.paused(), self.autocast():
                self.frames[k] = to_uint8(self.pair.vqvae.fhat_to_image(self.canvas.fhats[k]))
        return self.frames[k]

    def make_scale(self, name: str, k: int, kind: str = "step", rule: int = 3) -> None:
        """Model `name` makes scale k alone: its call, its distribution, a sample, the canvas, the record."""
        logits = self.runners[name].forward_upto(k, kind, rule, current=k)[k]
        p = self.distribution(logits, k, name)
        idx = self.keep_input(k, sample(p, self.g_sample))
        soft = smooth_weights(p, k, self.K, self.g_sample) if self.s.more_smooth else None
        if soft is not None and self.kept(k) is not None:   # kept positions: the picture's codebook vector
            one_hot = torch.nn.functional.one_hot(idx, soft.shape[-1]).to(soft.dtype)
            soft = torch.where(self.kept(k)[:, None], one_hot, soft)
        self.canvas.push(k, idx, name, soft)
        self.record_scale(k, name, idx, self.mark_input(k, torch.full_like(idx, DRAFT if name == "draft" else TARGET)))
        self.finalize(k + 1)


def run_schedule(run: Run, schedule: str) -> None:
    """Each scale made by the model its letter names; a switch prefills the incoming model under sd_mask."""
    previous = None
    for k, letter in enumerate(schedule):
        if k < run.first:   # the picture's prefix
            continue
        name = "draft" if letter == "D" else "target"
        switch = previous is not None and name != previous
        kind, rule = ("prefill", run.s.sd_mask) if switch else ("step", 3)
        run.make_scale(name, k, kind, rule)
        previous = name


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [0, 1] → (..., H, W, 3) uint8 (rounded)."""
    return (images.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).movedim(-3, -1).cpu().numpy()


@torch.no_grad()
def generate(pair: Pair, mode: str, class_ids, seed: int = 0, on_scale=None,
             accept_override: Callable[[int], bool] | None = None, planner=None,
             prefix=None, prefix_scales: int = 0, keep_mask=None, **settings) -> Result:
    """Generate images with `pair` in `mode` ('target', 'draft', 'schedule', 'speculative').

    class_ids: int or sequence of B ints; settings: fields of `Settings`.
    on_scale(ScaleDone): optional callback after each finalized scale (streaming: with the picture so
    far when `progressive`); an exception raised in it ends the run (how a caller cancels one).
    accept_override(k) → bool (speculative mode; for benchmarks): the verdict on drafted scale k,
    asked once per judged scale instead of the acceptance test's. True keeps every drafted token
    of k for every sample; False rejects them all (the scale is finalized with the rule's
    replacements and ends the round). The model calls are then those the engine makes for that
    sequence of verdicts. The trace's settings say `forced_acceptance: True`.
    planner (gamma="auto"): a `planner.Planner` that picks γ before each round; by default the one the
    installed default source gives (`set_default_planner`; importing `sdvar_core` installs the
    calibration layer's). After the run the planner's `learn(trace)` is called when it has one (the
    calibration layer's planners fold the run's call timings into their costs). Each round's plan is
    in `trace.rounds[i].plan`.
    prefix: a picture's K token maps (`picture.encode_image`, or (pn, pn) int arrays), shared by the batch.
    prefix_scales k: the picture's scales 1..k are taken whole (status INPUT, fed to each model with its
    first call: teacher forcing) and the mode makes scales k+1..K; k = K returns the reconstruction.
    keep_mask: (S, S) bool in image pixels, True = keep the picture (in-painting): at every scale a token
    cell whose pixels are at least half kept (`picture.keep_grids`) takes the picture's token after each
    model call; speculative decoding judges only the other tokens. The trace records both.
    Returns Result(images (B, H, W, 3) uint8, trace).
    """
    unknown = set(settings) - set(Settings.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown setting(s): {sorted(unknown)}")
    s = Settings(**settings)
    s.validate(mode, pair.layout.num_scales, pair.target.device)
    seed = check("seed", seed)
    if accept_override is not None and mode != "speculative":
        raise ValueError(f"accept_override applies to speculative mode only, not {mode!r}")
    if hasattr(class_ids, "tolist"):   # a tensor or an array
        class_ids = class_ids.tolist()
    if not isinstance(class_ids, (list, tuple)):
        class_ids = [class_ids]
    if len(class_ids) == 0:
        raise ValueError("class_ids is empty")
    class_ids = [check("class_id", c, num_classes=pair.num_classes) for c in list(class_ids)]
    device = pair.target.device
    class_ids = torch.as_tensor(class_ids, dtype=torch.long, device=device)
    picture = picture_context(pair, prefix, prefix_scales, keep_mask)
    auto = mode == "speculative" and s.gamma == "auto"
    if planner is not None and not auto:
        raise ValueError("planner applies to speculative mode with gamma='auto' only")
    if s.precision == "fp32" and pair.precision != "fp32":
        raise ValueError(f"this pair's weights are held in {pair.precision}: run it with precision="
                         f"'{pair.precision}', or load it in fp32 for fp32 runs")
    if auto and planner is None:
        if accept_override is not None:
            raise ValueError("gamma='auto' with accept_override needs its own planner (forced verdicts would "
                             "teach the shared one false pass probabilities)")
        if _default_planner is None:
            raise ValueError("gamma='auto' needs a planner: pass planner=..., or import sdvar_core.calibration")
        planner = _default_planner(pair, len(class_ids), s)

    with autocast_session(device, s.precision):   # casts of the weights are made once per run
        run = Run(pair, class_ids, seed, s, planner if auto else None, picture)
        run.on_scale, run.accept_override = on_scale, accept_override
        if mode == "speculative":
            from .speculative import run_speculative
            run_speculative(run)
        else:
            run_schedule(run, s.schedule_string(mode, run.K))
        run.finalize(run.K)   # a picture's every scale (k = K) is final without a model call
        t_loop = run.rec.now()
        with run.autocast():
            images = to_uint8(pair.vqvae.fhat_to_image(run.canvas.fhats[-1]))
        t_total = run.rec.now()

    scales = [run.records[k] for k in range(run.K)]
    run.frames.setdefault(run.K - 1, images)   # the last scale's picture is the final one
    for k, rec in enumerate(scales):
        rec.image = run.frames.get(k)
    transformer = sum(c.seconds for c in run.rec.calls)
    settings_out = {"mode": mode, "seed": int(seed), "class_ids": class_ids.tolist(), "pair": pair.name, **asdict(s)}
    if mode != "speculative":
        settings_out["schedule_resolved"] = s.schedule_string(mode, run.K)
    if accept_override is not None:
        settings_out["forced_acceptance"] = True
    if picture is not None:
        settings_out.update(prefix_scales=picture.prefix_scales, inpaint=picture.keep is not None)
    trace = Trace(settings=settings_out, patch_nums=list(pair.layout.patch_nums), scales=scales,
                  calls=run.rec.calls, shapes=run.rec.shapes, rounds=run.rounds,
                  timings={"total": t_total, "transformer": transformer, "decode": t_total - t_loop,
                           "overhead": t_loop - transformer, "progressive": run.rec.paused_seconds},
                  images=images)
    if picture is not None:
        trace.prefix_scales, trace.keep_mask = picture.prefix_scales, picture.keep_mask
        trace.picture_tokens = torch.cat(picture.tokens, dim=1)[0].cpu().numpy()
    if auto and getattr(planner, "learn", None) is not None:
        planner.learn(trace)
    return Result(images=images, trace=trace)
