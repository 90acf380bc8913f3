"""How many seconds of GPU a request of the app asks for (ZeroGPU's `@spaces.GPU(duration=…)`).

A request's seconds come from its model calls, priced before anything runs by the cost prior
(`costprior`: FLOPs and bytes of each call window, from the shapes), with the rates of a device class:

    call seconds = call_overhead + block_overhead·depth + flops / flop_rate + bytes / byte_rate

plus, per run, the work between calls (`step_s` a scale) and the VQ-VAE decodes (`decode_s` per 256-px
image, scaled by the pixel count), plus the GPU worker's start (`startup_s`, and the weights moved onto
the GPU at `transfer_rate`) and the page's figures drawn inside the request (`RENDER_S`). The request is
that estimate × MARGIN, rounded up, at least FLOOR_S; one that would need more than the cap (default
CAP_S) is refused with a message saying how to split or shrink it (`TooLong`, a ValueError).

Call lists are the worst case of each mode: a speculative run with γ drafts γ scales every round and
has every round rejected at its first scale (the target re-verifies a γ-scale window at every scale;
on the H200 this is the measured "γ = 4, forced acceptance 0" pattern: 10 target and 34 draft calls).
γ auto is priced as AUTO_GAMMA with every round rejected, plus the planner's first-use calibration
(`calibration.calibrate`: two timed calls of each model after warm-ups of the same shapes, and the work
between calls; under a fifth of one plain generation by its own account), priced as CALIBRATION_RUNS
runs of γ = 1 with every scale rejected (a draft and a target call per scale). On ZeroGPU every request
may land on a fresh worker, so it is always counted.

Device classes (the numbers behind them: BENCHMARKS.md, cited in each):
- H200: fitted to the H200 "Call patterns: var-d16 → var-d30" tables (bf16 autocast, batch 1 and 16):
  the per-call and per-block overheads reproduce the launch-bound batch-1 rows of the target and the
  draft alone, the rates keep batch 16 under the prediction; the target alone, the draft alone and
  speculative γ 1–4 rejected everywhere come out within −2 % … +32 % of their measured medians
  (tests/test_gpu.py); decode from the "Floors" table.
- GPU_PRIOR (the default): any GPU not yet measured — a ZeroGPU slice of an H200 or an RTX Pro 6000,
  an L4 or A10G Space: H200 overheads × 1.5, byte rate × 0.2, decode × 2.5, a slower worker start, and
  the fp32 FLOP rate of a ZeroGPU slice (the app runs fp32 unless bf16 is picked).
- CPU: fitted to the CPU tables (embedded pair's mode table, 1 thread; VAR-d16 single model, 2 threads).

The budget functions are pure (shapes in, seconds out; no torch). `table` and `python -m sdvar_core.gpu_budget`
(the table README "Deploy it as a Space" quotes) price the app's own defaults (`explore`, imported there).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .config import OFFICIAL_VQVAE, VARConfig, official_var_config
from .costprior import call_bytes, call_flops, weight_count

MARGIN = 1.5          # requested = predicted × MARGIN (issue 22: "what the cost model predicts × 1.5")
FLOOR_S = 5           # never ask for less: a fresh ZeroGPU worker's start alone can take a few seconds
CAP_S = 120           # default cap: an anonymous visitor's whole daily ZeroGPU quota (hub docs: 2 minutes)
ZEROGPU_MAX_S = 300   # the most one ZeroGPU call may request (ZeroGPU team, zero-gpu-explorers discussion #7)
AUTO_GAMMA = 2        # γ auto is priced as this fixed γ with every round rejected
CALIBRATION_RUNS = 1  # runs the planner's first-use calibration is priced as (see the module docstring)
# Figures, tables and CSV drawn inside the request. A whole Generate click (its three runs included) takes
# 0.91 s through the app on the 2-core CPU of BENCHMARKS.md ("Click → full view"), so its drawing is < 0.6 s.
RENDER_S = {"generate": 0.6, "gallery": 0.4, "sweep_entry": 0.3}
# Daily ZeroGPU quotas by visitor (hub docs "Spaces ZeroGPU", Usage Tiers), seconds.
QUOTAS = {"anonymous": 120, "free account": 210, "PRO": 1500}


@dataclass(frozen=True)
class DeviceClass:
    """Rates of one kind of device for the cost prior; bytes are counted at 4 per weight or cached number."""

    name: str
    flop_rate: float          # FLOP/s of a call's arithmetic
    byte_rate: float          # bytes/s of its weight and key/value reads
    call_overhead_s: float    # seconds every call costs, whatever its size (launches, Python)
    block_overhead_s: float   # … and per transformer block
    step_s: float             # work between calls, per scale of a run (sampling, f_hat update)
    decode_s: float           # one decode of the official VQ-VAE (256 px, ch 160); others scaled by pixels × ch²
    startup_s: float          # the GPU worker's start: process, CUDA context, first kernels
    transfer_rate: float      # bytes/s moving the weights onto the device at the worker's start
    note: str = ""

    def call_seconds(self, cfg: VARConfig, rows: int, n: int, kv: int) -> float:
        """Seconds of one call of `cfg` feeding n positions for `rows` rows, kv keys cached afterwards."""
        return (self.call_overhead_s + self.block_overhead_s * cfg.depth
                + call_flops(cfg, rows, n, kv) / self.flop_rate + call_bytes(cfg, rows, kv) / self.byte_rate)

    def decode_seconds(self, image_size: int, ch: int, images: int) -> float:
        """Seconds of `images` decodes by a VQ-VAE of this picture size and channel width (at least 1/100
        of the official one's each)."""
        return images * self.decode_s * max(0.01, (image_size / 256) ** 2 * (ch / 160) ** 2)


H200 = DeviceClass(
    "H200", flop_rate=300e12, byte_rate=2.0e12, call_overhead_s=6.5e-3, block_overhead_s=0.45e-3,
    step_s=1e-3, decode_s=10.8e-3, startup_s=2.0, transfer_rate=5e9,
    note="fitted to BENCHMARKS.md 'Call patterns: var-d16 → var-d30' (H200, bf16, batch 1 and 16); decode: "
         "'Floors' (≤ 10.8 ms per 256-px image)")
GPU_PRIOR = DeviceClass(
    "GPU (not yet measured)", flop_rate=25e12, byte_rate=0.4e12, call_overhead_s=9.75e-3, block_overhead_s=0.675e-3,
    step_s=3e-3, decode_s=27e-3, startup_s=3.0, transfer_rate=2.5e9,
    note="H200 overheads × 1.5, byte rate × 0.2, decode × 2.5; FLOP rate: fp32 (the app's default precision) "
         "without tensor cores on a ZeroGPU slice of an H200, 67 TFLOP/s × 60 of 132 SMs ≈ 30")
CPU = DeviceClass(
    "CPU (2 cores)", flop_rate=150e9, byte_rate=10e9, call_overhead_s=3e-3, block_overhead_s=0.8e-3,
    step_s=1e-3, decode_s=2.0, startup_s=0.0, transfer_rate=math.inf,
    note="fitted to BENCHMARKS.md 'Mode table' (embedded pair, CPU, 1 thread) and 'Single model: VAR-d16 on the "
         "CPU' (decode ≤ 2 s per 256-px image)")
CLASSES = {"h200": H200, "gpu": GPU_PRIOR, "cpu": CPU}


@dataclass(frozen=True)
class PairShapes:
    """What the prior needs of a pair: the two VAR configs and the picture size (no weights)."""

    draft: VARConfig
    target: VARConfig
    image_size: int
    decoder_ch: int = 160   # the VQ-VAE's base channel width
    name: str = ""

    @staticmethod
    def of(pair) -> "PairShapes":
        """The shapes of a loaded `engine.Pair`."""
        vq = pair.vqvae.cfg
        return PairShapes(pair.draft.cfg, pair.target.cfg, int(vq.image_size), int(vq.ch), pair.name)

    @staticmethod
    def official(draft_depth: int, target_depth: int) -> "PairShapes":
        """Official VAR d{draft} → d{target} (the config presets; 256 px)."""
        return PairShapes(official_var_config(draft_depth), official_var_config(target_depth),
                          OFFICIAL_VQVAE.image_size, OFFICIAL_VQVAE.ch, f"d{draft_depth}-d{target_depth}")

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return tuple(self.target.patch_nums)

    def weight_bytes(self) -> float:
        """fp32 bytes of both transformers' call weights (what a worker moves onto the GPU, roughly)."""
        return 4.0 * (weight_count(self.draft) + weight_count(self.target))


# ---- the calls of one run -------------------------------------------------------------------------

def run_calls(shapes: PairShapes, mode: str, batch: int = 1, gamma: int = 2, schedule: str | None = None
              ) -> list[tuple[str, int, int]]:
    """The worst-case model calls of one run: [(model 'draft'/'target', n positions fed, kv afterwards)].

    mode 'target' / 'draft': one call per scale. 'schedule': each scale by its letter (D/T); a model that
    takes over feeds the scales it has not seen in one window first. 'speculative': γ drafted scales per
    round, every round rejected at its first scale (see the module docstring)."""
    sizes = [p * p for p in shapes.patch_nums]
    K = len(sizes)
    ends = [sum(sizes[:k + 1]) for k in range(K)]
    if mode in ("target", "draft"):
        return [(mode, sizes[k], ends[k]) for k in range(K)]
    if mode == "schedule":
        schedule = schedule or "D" * (K // 2) + "T" * (K - K // 2)
        if len(schedule) != K or set(schedule) - set("DT"):
            raise ValueError(f"schedule must be {K} letters D/T, got {schedule!r}")
        calls, seen = [], {"D": 0, "T": 0}
        for k, letter in enumerate(schedule):
            start = seen[letter]   # the first scale this model has not fed yet
            calls.append(("draft" if letter == "D" else "target", ends[k] - (ends[start - 1] if start else 0), ends[k]))
            seen[letter] = k + 1
        return calls
    if mode == "speculative":
        gamma = max(1, min(int(gamma), K))
        calls = []
        for k in range(K):
            last = min(k + gamma, K) - 1
            calls += [("draft", sizes[j], ends[j]) for j in range(k, last + 1)]
            calls.append(("target", ends[last] - (ends[k - 1] if k else 0), ends[last]))
        return calls
    raise ValueError(f"mode must be target, draft, schedule or speculative, got {mode!r}")


def run_seconds(shapes: PairShapes, device: DeviceClass, mode: str, batch: int = 1, gamma: int = 2,
                schedule: str | None = None, previews: bool = False) -> float:
    """Predicted seconds of one run at `batch` images (2·batch rows: the CFG pair); previews: a decode
    after every scale (the chosen run of a Generate click), else one final decode."""
    cfgs = {"draft": shapes.draft, "target": shapes.target}
    rows = 2 * int(batch)
    K = len(shapes.patch_nums)
    calls = sum(device.call_seconds(cfgs[m], rows, n, kv)
                for m, n, kv in run_calls(shapes, mode, batch, gamma, schedule))
    decodes = device.decode_seconds(shapes.image_size, shapes.decoder_ch, batch * (K if previews else 1))
    return calls + K * device.step_s + decodes


def speculative_gamma(settings: dict, num_scales: int) -> int:
    """The γ a speculative run is priced with: auto → AUTO_GAMMA; adaptive γ may grow by one."""
    gamma = settings.get("gamma", 2)
    if gamma == "auto":
        return AUTO_GAMMA
    gamma = int(gamma)
    return min(num_scales, gamma + 1) if settings.get("adaptive_gamma") else gamma


# ---- requests --------------------------------------------------------------------------------------

class TooLong(ValueError):
    """A request that would need more GPU seconds than one call may ask for."""


@dataclass(frozen=True)
class Budget:
    """A request's prediction and what it asks for."""

    what: str            # the request in words
    predicted_s: float   # the cost model's seconds (worker start included)
    seconds: int         # what to request: predicted × margin, rounded up, at least the floor

    def __str__(self) -> str:
        return f"{self.what}: {self.seconds} s of GPU (predicted {self.predicted_s:.1f} s)"


def request(what: str, work_s: float, shapes: PairShapes, device: DeviceClass, margin: float = MARGIN,
            floor: int = FLOOR_S, cap: int = CAP_S, smaller: str = "") -> Budget:
    """The Budget of `work_s` seconds of runs and figures on `shapes`' pair, with the worker's start;
    TooLong when it would ask more than `cap` seconds; its message ends with `smaller` (how to shrink the
    request; '{parts}' in it becomes how many requests of at most `cap` seconds the work needs)."""
    predicted = device.startup_s + shapes.weight_bytes() / device.transfer_rate + work_s
    seconds = max(int(floor), math.ceil(predicted * margin))
    if seconds > cap:
        parts = math.ceil(seconds / cap)
        smaller = (smaller or "split it into {parts} smaller ones").format(parts=parts)
        raise TooLong(f"{what} would need about {seconds} s of GPU time, more than the {cap} s one request may ask "
                      f"for here; {smaller}")
    return Budget(what, predicted, seconds)


def generate_click(shapes: PairShapes, mode: str, settings: dict, device: DeviceClass = GPU_PRIOR, batch: int = 1,
                   **kw) -> Budget:
    """A Generate click (`explore.run_click`): the chosen run with a preview decode per scale, then the
    target alone and the draft alone (unless the chosen mode is one of them); γ auto adds the calibration."""
    K = len(shapes.patch_nums)
    gamma = speculative_gamma(settings, K) if mode == "speculative" else 2
    schedule = settings.get("schedule")
    if mode == "schedule" and not schedule and settings.get("entry_num") is not None:
        schedule = "D" * int(settings["entry_num"]) + "T" * (K - int(settings["entry_num"]))
    work = run_seconds(shapes, device, mode, batch, gamma, schedule, previews=True)
    work += sum(run_seconds(shapes, device, m, batch) for m in ("target", "draft") if m != mode)
    if mode == "speculative" and settings.get("gamma") == "auto":   # each calibration run ≤ a rejected γ = 1 run
        work += CALIBRATION_RUNS * run_seconds(shapes, device, "speculative", batch, 1)
    return request(f"a Generate click ({mode}) on {shapes.name or 'this pair'}", work + RENDER_S["generate"],
                   shapes, device, **kw)


def mask_gallery(shapes: PairShapes, entry_num: int, device: DeviceClass = GPU_PRIOR, **kw) -> Budget:
    """The six masks (`explore.run_mask_gallery`): the target alone and six D·e T·(K−e) hand-offs, batch 1."""
    K = len(shapes.patch_nums)
    entry_num = max(1, min(int(entry_num), K - 1))
    schedule = "D" * entry_num + "T" * (K - entry_num)
    work = run_seconds(shapes, device, "target") + 6 * run_seconds(shapes, device, "schedule", schedule=schedule)
    return request(f"the six masks on {shapes.name or 'this pair'}", work + RENDER_S["gallery"], shapes, device, **kw)


def sweep(shapes: PairShapes, configs: list[dict], seeds: int, images: int, device: DeviceClass = GPU_PRIOR,
          **kw) -> Budget:
    """A sweep (`explore.sweep_configs` entries, each run once per seed at `images` images a batch)."""
    K = len(shapes.patch_nums)
    work = 0.0
    for c in configs:
        gamma = speculative_gamma(c, K) if c["mode"] == "speculative" else 2
        work += seeds * run_seconds(shapes, device, c["mode"], images, gamma, c.get("schedule"))
        work += RENDER_S["sweep_entry"]
    runs = len(configs) * seeds
    smaller = (f"choose fewer seeds or settings ({len(configs)} settings × {seeds} seed(s) = {runs} runs "
               f"of {images} image(s)), or split it into {{parts}} sweeps")   # {parts}: filled by `request`
    return request(f"this sweep ({runs} runs)", work, shapes, device, smaller=smaller, **kw)


def picture(shapes: PairShapes, device: DeviceClass = GPU_PRIOR, run: bool = False, **kw) -> Budget:
    """Your picture (`picture_tab`): its pyramid (an encode and a decode per scale, priced as a target-alone run
    with a decode per scale: a bound), and for a run on it also the chosen mode, priced as exact speculative
    γ = 1 with every round rejected (the most calls of any mode) with previews, and the target alone."""
    work = run_seconds(shapes, device, "target", previews=True)
    if run:
        work += run_seconds(shapes, device, "speculative", 1, 1, previews=True) + run_seconds(shapes, device, "target")
    what = "a run on your picture" if run else "your picture's pyramid"
    return request(f"{what} on {shapes.name or 'this pair'}", work + RENDER_S["generate"], shapes, device, **kw)


# ---- the README's table -------------------------------------------------------------------------------

def clicks_per_quota(seconds: int) -> dict[str, int]:
    """How many requests of `seconds` each a visitor's daily quota admits (QUOTAS), each asked in full."""
    return {who: q // seconds for who, q in QUOTAS.items()}


def table(pairs: dict[str, PairShapes], device: DeviceClass = GPU_PRIOR) -> str:
    """Markdown: per pair, what a default Generate click (speculative, γ auto), a target-only click, the six
    masks and the default sweep ask for, and the clicks each daily quota buys."""
    from .explore import DEFAULT_INPUTS, click_settings, sweep_configs   # the app's own defaults

    rows = ["| pair | request | predicted s | requested s | anonymous (2 min) | free account (3.5 min) "
            "| PRO (25 min) |",
            "|---|---|---|---|---|---|---|"]
    for label, shapes in pairs.items():
        K = len(shapes.patch_nums)
        settings = click_settings({}, K)
        budgets = [("Generate, speculative γ auto (default)", generate_click(shapes, "speculative", settings, device)),
                   ("Generate, target only", generate_click(shapes, "target", settings, device)),
                   ("six masks", mask_gallery(shapes, DEFAULT_INPUTS["entry_num"], device))]
        configs = sweep_configs("schedule", [2, 4, 6, 8], ["D→T"], [1, 3], [], [], K)
        images = shapes.target.num_classes if shapes.target.num_classes <= 16 else 1
        try:
            budgets.append((f"default sweep (2 seeds × {len(configs)} settings, {images} image(s))",
                            sweep(shapes, configs, 2, images, device)))
        except TooLong as e:
            rows.append(f"| {label} | default sweep | — | refused: {e} | | | |")
        for what, b in budgets:
            n = clicks_per_quota(b.seconds)
            rows.append(f"| {label} | {what} | {b.predicted_s:.1f} | {b.seconds} | {n['anonymous']} | "
                        f"{n['free account']} | {n['PRO']} |")
    return "\n".join(rows)


def main() -> None:
    from .zoo import load_pair

    pairs = {"embedded (tiny)": PairShapes.of(load_pair("tiny"))}
    pairs.update({f"VAR d16 → d{t}": PairShapes.official(16, t) for t in (20, 24, 30)})
    print(f"Device class: {GPU_PRIOR.name} ({GPU_PRIOR.note}); margin × {MARGIN}, floor {FLOOR_S} s, "
          f"cap {CAP_S} s.\n")
    print(table(pairs))


if __name__ == "__main__":
    main()
