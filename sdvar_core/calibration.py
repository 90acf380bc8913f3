"""What a round costs on this device: the γ planner's input, from a cost prior and every run's trace.

`planner_for(pair, batch, settings)` gives the `planner.Planner` that generate(gamma="auto") uses
(importing this module installs it as the engine's default). On first use for a (pair, device,
precision, threads, batch) it times two calls of each model on random inputs — one scale (scale 0)
and the window of scales 0..PRIOR_WINDOW on a fresh cache, each after an untimed warm-up call of the
same shapes (first calls pay for allocations and kernel choices) — and the work between calls of
every scale size on random logits: together under a fifth of one plain generation. Each model's seconds per call then follow its FLOPs (`costprior.call_flops`, from the
shapes), seconds ≈ a + θ·FLOPs(n, kv) = a + b·n + c·n·kv (n positions fed, kv keys after the call;
the weights' bytes, read once per call, are in a). Every run the planner plans hands its trace back
(`Planner.learn`): measured windows replace the prior, and once a model has ≥ 3 measured windows a
least-squares fit of (a, b, c) over them prices the windows never run (`Timings`).

Pass probabilities start optimistic (π = 1 worth 0.2 observations) and learn from every judged
scale: a draft is tried where it could pay, and dropped at once where it does not; where drafting
cannot pay even if every scale passed (a CPU), γ = 0 from the first round.

Cached in memory per key and, unless SDVAR_CACHE_DIR=off, as JSON under SDVAR_CACHE_DIR (default
~/.cache/sdvar_explorer/planner); the timings follow the machine's load (exponential moving average).
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import weakref
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import nnls

from . import engine
from .costprior import call_flops
from .engine import Pair, Settings
from .planner import Costs, PassEstimator, Planner
from .runtime import autocast_for, autocast_session, machine_name
from .sampling import cfg_mix, guidance, probabilities, sample

VERSION = 2
EMA = 0.2                   # weight of a new run's timing in the running estimate
PRIOR_WINDOW = 4            # the prior's second timed call feeds scales 0..PRIOR_WINDOW
MIN_FIT_WINDOWS = 3         # measured windows of a model before a fit over them replaces the prior
OPTIMISTIC_PASS = 1.0       # the pass prior: try a draft where it could pay (see the module docstring)
CALIBRATION_SEED = 7919
PASS_SETTINGS = ("cfg", "top_k", "top_p", "accept", "tau", "lenience", "keep_draft_rejected", "verify_mask")


@dataclass
class Timings:
    """Mean seconds measured: per call window (model, s, e), and per scale of the work between calls."""

    num_scales: int
    prior: dict = field(default_factory=dict)   # model → [a, b, c] of the cost prior (`calibrate`)
    calls: dict = field(default_factory=dict)   # "model s e" → [mean seconds, observations]
    make: dict = field(default_factory=dict)    # "k" → [mean, n]: after a call that made scale k
    judge: dict = field(default_factory=dict)   # "k" → [mean, n]: after verifying scale k alone

    @staticmethod
    def _add(table: dict, key: str, seconds: float, ema: float | None) -> None:
        mean, n = table.get(key, (0.0, 0))
        w = 1 / (n + 1) if ema is None or n == 0 else ema
        table[key] = [mean + w * (seconds - mean), n + 1]

    def add(self, trace, ema: float | None = None) -> None:
        """Fold one run's trace in: running means (ema None) or exponential moving averages."""
        calls = trace.calls
        loop_end = trace.timings["overhead"] + trace.timings["transformer"]
        starts = np.cumsum([0] + [p * p for p in trace.patch_nums])
        for i, c in enumerate(calls):
            s, e = c.scales[0], c.scales[-1]
            if c.kv_before == starts[s]:   # a cache holding every scale < s (not an sd_mask 0 prefill)
                self._add(self.calls, f"{c.model} {s} {e}", c.seconds, ema)
            gap = (calls[i + 1].t_start if i + 1 < len(calls) else loop_end) - c.t_end
            if c.kind in ("step", "prefill"):
                self._add(self.make, str(e), gap, ema)
            elif s == e:                       # a verification of one scale: the gap is its judging
                self._add(self.judge, str(e), gap, ema)

    def fit(self, model: str, layout) -> tuple[float, float, float]:
        """(a, b, c) ≥ 0 of seconds ≈ a + b·n + c·n·kv: the least-squares fit over the measured windows of
        `model` (relative errors), or the cost prior while fewer than MIN_FIT_WINDOWS were measured."""
        measured = sum(1 for key in self.calls if key.split()[0] == model)
        if model in self.prior and measured < MIN_FIT_WINDOWS:
            return tuple(float(v) for v in self.prior[model])
        rows, ys = [], []
        for key, (mean, _) in self.calls.items():
            m, s, e = key.split()
            if m != model or mean <= 0:
                continue
            s, e = int(s), int(e)
            n, kv = layout.ends[e] - layout.starts[s], layout.ends[e]
            rows.append([1.0, n, n * kv])
            ys.append(mean)
        if not rows:
            raise ValueError(f"no {model} call was measured")
        A, y = np.array(rows), np.array(ys)
        scale = A.max(axis=0)
        coef, _ = nnls(A / scale / y[:, None], np.ones(len(y)))
        return tuple(float(v) for v in coef / scale)

    def costs(self, layout) -> Costs:
        """The planner's costs: measured means where measured, the fit elsewhere; a window costs at least
        as much as every window inside it."""
        K = self.num_scales
        tables = {}
        for model in ("draft", "target"):
            a, b, c = self.fit(model, layout)
            table = [[0.0] * K for _ in range(K)]
            for s in range(K):
                for e in range(s, K):
                    n, kv = layout.ends[e] - layout.starts[s], layout.ends[e]
                    measured = self.calls.get(f"{model} {s} {e}")
                    table[s][e] = measured[0] if measured else a + b * n + c * n * kv
            for e in range(K):   # a window never costs less than one it contains (noise could say so)
                for s in reversed(range(e + 1)):
                    table[s][e] = max(table[s][e], table[s][e - 1] if e > s else 0.0,
                                      table[s + 1][e] if s < e else 0.0)
            tables[model] = table
        make = [max(self.make.get(str(k), (0.0, 0))[0], 0.0) for k in range(K)]
        judge = [max(self.judge[str(k)][0], 0.0) if str(k) in self.judge else make[k] for k in range(K)]
        return Costs(draft=tables["draft"], target=tables["target"], make=make, judge=judge)


# ---- calibration -----------------------------------------------------------------------------------


def flop_coefficients(cfg, rows: int) -> tuple[float, float]:
    """(β, γ) with call_flops(cfg, rows, n, kv) = β·n + γ·n·kv."""
    beta = call_flops(cfg, rows, 1, 0)
    return beta, call_flops(cfg, rows, 1, 1) - beta


def _seconds(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


@torch.no_grad()
def calibrate(pair: Pair, batch: int, precision: str, log=None) -> Timings:
    """The cost prior of `pair` at this batch size and precision (see the module docstring): two timed
    calls per model after a warm-up, and the work between calls of every scale on random logits."""
    layout, device = pair.layout, pair.target.device
    K, cvae = layout.num_scales, pair.vqvae.cfg.z_channels
    autocast = autocast_for(device, precision)
    g = torch.Generator(device=device).manual_seed(CALIBRATION_SEED)
    ids = torch.arange(batch, device=device) % pair.num_classes
    timings = Timings(K)
    t0 = time.perf_counter()
    with autocast_session(device, precision), autocast():
        for name in ("draft", "target"):
            model = getattr(pair, name)
            cond = model.condition(ids)
            mods = model.modulations(cond)

            def call(last: int) -> None:   # scales 0..last on a fresh cache
                n = layout.ends[last]
                latents = torch.randn(batch, n - layout.sizes[0], cvae, device=device) if last else None
                model.forward_window(model.embed_window(cond, 0, latents), cond, model.new_cache(), None, mods)

            call(0), call(PRIOR_WINDOW)   # warm-up: first-call allocations and kernel choices of these shapes
            t_one, t_window = _seconds(lambda: call(0), device), _seconds(lambda: call(PRIOR_WINDOW), device)
            beta, gamma = flop_coefficients(model.cfg, 2 * batch)
            f_one = beta * layout.ends[0] + gamma * layout.ends[0] ** 2
            f_window = beta * layout.ends[PRIOR_WINDOW] + gamma * layout.ends[PRIOR_WINDOW] ** 2
            theta = max(t_window - t_one, 0.0) / (f_window - f_one)
            timings.prior[name] = [max(t_one - theta * f_one, 0.0), theta * beta, theta * gamma]
            timings.calls[f"{name} 0 0"] = [t_one, 1]
            timings.calls[f"{name} 0 {PRIOR_WINDOW}"] = [t_window, 1]
        V, settings = pair.vqvae.cfg.vocab_size, Settings()
        for k in range(K):   # the work after a call: distribution, sample, canvas, next input
            n = layout.sizes[k]
            logits = torch.randn(2 * batch, n, V, device=device, generator=g)

            def make() -> None:
                p = probabilities(cfg_mix(logits, guidance(settings.cfg, k, K)), settings.top_k, settings.top_p)
                f_hat = pair.vqvae.scale_contribution(k, sample(p, g))
                if k + 1 < K:
                    pair.vqvae.next_input(k, f_hat)
            timings.make[str(k)] = [_seconds(make, device), 1]
    if log:
        log(f"cost prior of {pair.name}: {time.perf_counter() - t0:.2f} s")
    return timings


# ---- the planners on offer, in memory and on disk ----------------------------------------------------

_LOCK = threading.Lock()
_TIMINGS: dict[str, Timings] = {}
_PASSES: dict[str, dict[str, PassEstimator]] = {}   # cost key → pass key → estimator
_PLANNERS: dict[tuple[str, str], Planner] = {}
_FINGERPRINTS: dict[int, tuple[weakref.ref, str]] = {}


def fingerprint(pair: Pair) -> str:
    """A short hash of the pair's configurations and the first values of every weight tensor
    (remembered per Pair object: weights are not expected to change under a loaded pair)."""
    known = _FINGERPRINTS.get(id(pair))
    if known is not None and known[0]() is pair:
        return known[1]
    h = hashlib.sha1()
    for m in (pair.vqvae, pair.draft, pair.target):
        h.update(json.dumps(m.cfg.to_dict(), sort_keys=True, default=str).encode())
        for p in m.parameters():
            h.update(p.detach().flatten()[:16].float().cpu().numpy().tobytes())
    _FINGERPRINTS[id(pair)] = (weakref.ref(pair), h.hexdigest()[:16])
    return _FINGERPRINTS[id(pair)][1]


@lru_cache(maxsize=None)
def _machine(device: str, threads: int) -> str:
    return machine_name(torch.device(device))


def cost_key(pair: Pair, batch: int, precision: str) -> str:
    """What the timings depend on: the pair, the machine, device, precision, intra-op threads, batch size."""
    device, threads = pair.target.device, torch.get_num_threads()
    return f"{fingerprint(pair)}|{_machine(str(device), threads)}|{device}|{precision}|threads {threads}|batch {int(batch)}"


def pass_key(settings: Settings) -> str:
    return json.dumps({k: getattr(settings, k) for k in PASS_SETTINGS}, sort_keys=True)


def cache_dir() -> Path | None:
    """Where calibrations are kept on disk: $SDVAR_CACHE_DIR/planner (default ~/.cache/sdvar_explorer); None if off."""
    root = os.environ.get("SDVAR_CACHE_DIR", str(Path.home() / ".cache" / "sdvar_explorer"))
    return None if root.strip().lower() in ("", "off", "0", "none") else Path(root) / "planner"


def _path(key: str) -> Path | None:
    folder = cache_dir()
    return None if folder is None else folder / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.json"


def _load(key: str) -> dict | None:
    path = _path(key)
    try:
        data = json.loads(path.read_text()) if path is not None and path.is_file() else None
    except (OSError, ValueError):
        return None
    return data if data and data.get("version") == VERSION and data.get("key") == key else None


def _save(key: str) -> None:
    """Store the timings and pass estimators of `key` (caller holds _LOCK)."""
    path = _path(key)
    if path is None:
        return
    data = {"version": VERSION, "key": key, "timings": asdict(_TIMINGS[key]),
            "passes": {k: v.to_dict() for k, v in _PASSES.get(key, {}).items()}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)
    except OSError:
        pass   # a read-only home: the in-memory cache still works


def new_estimator(num_scales: int) -> PassEstimator:
    """The pass estimator of settings never seen: optimistic (see the module docstring)."""
    return PassEstimator(num_scales, prior_mean=OPTIMISTIC_PASS)


def planner_for(pair: Pair, batch: int, settings: Settings, log=None, fresh: bool = False) -> Planner:
    """The planner for `pair` at this batch size and these settings: cached, else loaded, else from a new
    cost prior. fresh: time the prior now, whatever the memory and disk caches hold (benchmarks)."""
    ck, pk = cost_key(pair, batch, settings.precision), pass_key(settings)
    with _LOCK:
        if fresh:
            _TIMINGS.pop(ck, None)
            _PASSES.pop(ck, None)
            for key in [k for k in _PLANNERS if k[0] == ck]:
                del _PLANNERS[key]
        if (ck, pk) in _PLANNERS:
            return _PLANNERS[(ck, pk)]
        if ck not in _TIMINGS:
            stored = None if fresh else _load(ck)
            if stored is not None:
                _TIMINGS[ck] = Timings(**stored["timings"])
                _PASSES[ck] = {k: PassEstimator(**v) for k, v in stored["passes"].items()}
            else:
                _TIMINGS[ck], _PASSES[ck] = calibrate(pair, batch, settings.precision, log), {}
                _save(ck)
        estimator = _PASSES[ck].setdefault(pk, new_estimator(pair.layout.num_scales))
        layout = pair.layout
        planner = Planner(_TIMINGS[ck].costs(layout), estimator, source=f"calibrated: {ck}",
                          learn=lambda trace: _learn(ck, layout, trace))
        _PLANNERS[(ck, pk)] = planner
        return planner


def _learn(ck: str, layout, trace) -> None:
    """Fold a run's call timings into the timings of `ck`, hand the new costs to every planner that uses
    them, and store them (the pass estimators learn in the engine, round by round)."""
    with _LOCK:
        timings = _TIMINGS.get(ck)
        if timings is None:
            return
        timings.add(trace, ema=EMA)
        costs = timings.costs(layout)
        for (k, _), planner in _PLANNERS.items():
            if k == ck:
                planner.set_costs(costs)
        _save(ck)


def refresh(pair: Pair, batch: int, settings: Settings, trace) -> None:
    """Fold a run's trace (of `pair` at this batch size and precision) into its timings."""
    _learn(cost_key(pair, batch, settings.precision), pair.layout, trace)


def timings_for(pair: Pair, batch: int, precision: str) -> Timings | None:
    """The timings behind the planners of `pair` at this batch size and precision (None: not calibrated)."""
    with _LOCK:
        return _TIMINGS.get(cost_key(pair, batch, precision))


def forget() -> None:
    """Drop the in-memory calibrations (the disk cache stays)."""
    with _LOCK:
        _TIMINGS.clear()
        _PASSES.clear()
        _PLANNERS.clear()


def describe(costs: Costs) -> str:
    """Milliseconds of the single-scale calls and of the work between them, one line each."""
    K = costs.num_scales
    fmt = lambda xs: " ".join(f"{1000 * x:.1f}" for x in xs)   # noqa: E731
    return (f"target step ms: {fmt([costs.target[k][k] for k in range(K)])}\n"
            f"draft step ms: {fmt([costs.draft[k][k] for k in range(K)])}\n"
            f"target whole-image window ms: {1000 * costs.target[0][K - 1]:.1f}\n"
            f"make ms: {fmt(costs.make)}\njudge ms: {fmt(costs.judge)}")



engine.set_default_planner(planner_for)
