"""What a round costs on this device, measured by running the engine: the γ planner's input.

`planner_for(pair, batch, settings)` gives the `planner.Planner` that generate(gamma="auto") uses.
On first use for a (pair, device, precision, threads, batch) it calibrates: a few short runs of
the engine itself (`calibration_runs`: speculative γ = 1 unforced, forced all-pass rounds of
γ = K, 3, 2, a target→draft hand-off), whose traces give the seconds of each model call by
window (scales s..e fed on a cache of scales < s: its query and KV length) and of the work between
calls (`Timings`). Windows never run are priced by a least-squares fit per model,
seconds ≈ a + b·n + c·n·kv (n positions fed, kv keys seen, a, b, c ≥ 0). The unforced run also
gives the first pass-probability observations of every scale (the prior of `PassEstimator`).

Cached in memory per key and, unless SDVAR_CACHE_DIR=off, as JSON under SDVAR_CACHE_DIR (default
~/.cache/sdvar_explorer/planner); every later auto run refreshes the timings from its own trace
(exponential moving average), so the costs follow the machine's load.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import weakref
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import nnls

from .engine import Pair, Settings, generate
from .planner import Costs, PassEstimator, Planner
from .runtime import machine_name

VERSION = 1
EMA = 0.2                   # weight of a new run's timing in the running estimate
CALIBRATION_SEED = 7919
PASS_SETTINGS = ("cfg", "top_k", "top_p", "accept", "tau", "lenience", "keep_draft_rejected", "verify_mask")


def calibration_runs(K: int) -> list[tuple[str, dict, bool]]:
    """(mode, settings, force every drafted scale to pass) of the calibration runs, after one warm-up.
    The first one alone gives the pass prior (and timings of steps and one-scale verifications)."""
    half = K // 2
    return [("speculative", {"gamma": 1}, False),          # every scale drafted and judged
            ("speculative", {"gamma": K}, True),            # the widest target window
            ("speculative", {"gamma": 3}, True),
            ("speculative", {"gamma": 2}, True),
            ("schedule", {"schedule": "T" * half + "D" * (K - half), "sd_mask": 3}, False)]   # a draft catch-up


@dataclass
class Timings:
    """Mean seconds measured: per call window (model, s, e), and per scale of the work between calls."""

    num_scales: int
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
        """(a, b, c) ≥ 0 of seconds ≈ a + b·n + c·n·kv over the measured windows of `model` (relative errors)."""
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


def run_settings(settings: Settings) -> dict:
    """The settings of the calibration runs: the caller's, with γ fixed and no preview decodes."""
    s = {f.name: getattr(settings, f.name) for f in fields(Settings)}
    s.update(gamma=2, adaptive_gamma=False, entry_num=None, schedule=None, progressive=False)
    return s


def calibrate(pair: Pair, batch: int, settings: Settings, log=None, passes_only: bool = False
              ) -> tuple[Timings, PassEstimator]:
    """Run the calibration runs (after one untimed warm-up; passes_only: the first one only) →
    (timings, a pass estimator holding their observations)."""
    K = pair.layout.num_scales
    ids = [i % pair.num_classes for i in range(batch)]
    base = run_settings(settings)
    generate(pair, "target", ids, CALIBRATION_SEED, **base)   # warm-up
    timings, passes = Timings(K), PassEstimator(K)
    runs = calibration_runs(K)
    for i, (mode, extra, forced) in enumerate(runs[:1] if passes_only else runs):
        trace = generate(pair, mode, ids, CALIBRATION_SEED + i, accept_override=(lambda k: True) if forced else None,
                         **{**base, **extra}).trace
        timings.add(trace)
        if mode == "speculative" and not forced:
            observe_passes(passes, trace, settings)
        if log:
            log(f"calibration run {i + 1}: {mode} {extra}, {trace.timings['total']:.3f} s")
    return timings, passes


def observe_passes(passes: PassEstimator, trace, settings: Settings) -> None:
    """Every judged scale of a trace's rounds as an observation (see speculative.observe)."""
    from .planner import batch_pass_probability

    for rd in trace.rounds:
        judged = rd.accepted_scales + ([rd.corrected_scale] if rd.corrected_scale is not None else [])
        for k in judged:
            rec = trace.scales[k]
            p = batch_pass_probability(rec.p_draft, rec.q_draft) if settings.exact else float(k in rd.accepted_scales)
            passes.observe(k, p)


# ---- the planners on offer, in memory and on disk ----------------------------------------------------

_LOCK = threading.Lock()
_TIMINGS: dict[str, Timings] = {}
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


def _save(key: str, timings: Timings, passes: dict[str, PassEstimator]) -> None:
    path = _path(key)
    if path is None:
        return
    data = {"version": VERSION, "key": key, "timings": asdict(timings),
            "passes": {k: v.to_dict() for k, v in passes.items()}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)
    except OSError:
        pass   # a read-only home: the in-memory cache still works


def planner_for(pair: Pair, batch: int, settings: Settings, log=None, fresh: bool = False) -> Planner:
    """The planner for `pair` at this batch size and these settings: cached, else loaded, else calibrated.
    fresh: calibrate now, whatever the memory and disk caches hold (benchmarks: the machine as it is)."""
    ck, pk = cost_key(pair, batch, settings.precision), pass_key(settings)
    with _LOCK:
        if fresh:
            _TIMINGS.pop(ck, None)
            for key in [k for k in _PLANNERS if k[0] == ck]:
                del _PLANNERS[key]
        if (ck, pk) in _PLANNERS:
            return _PLANNERS[(ck, pk)]
        stored = None if fresh else _load(ck)
        passes = {}
        if ck not in _TIMINGS and stored is not None:
            _TIMINGS[ck] = Timings(**stored["timings"])
        if stored is not None:
            passes = {k: PassEstimator(**v) for k, v in stored["passes"].items()}
        if ck not in _TIMINGS or pk not in passes:
            timings, prior = calibrate(pair, batch, settings, log, passes_only=ck in _TIMINGS)
            if ck in _TIMINGS:   # known costs: this calibration only adds the pass prior (and more timings)
                for table in ("calls", "make", "judge"):
                    for key, (mean, _) in getattr(timings, table).items():
                        Timings._add(getattr(_TIMINGS[ck], table), key, mean, EMA)
            else:
                _TIMINGS[ck] = timings
            passes[pk] = prior
            _save(ck, _TIMINGS[ck], passes)
        planner = Planner(_TIMINGS[ck].costs(pair.layout), passes[pk], source=f"calibrated: {ck}")
        _PLANNERS[(ck, pk)] = planner
        return planner


def refresh(pair: Pair, batch: int, settings: Settings, trace) -> None:
    """Fold an auto run's trace into its timings and hand the new costs to every planner that uses them."""
    ck = cost_key(pair, batch, settings.precision)
    with _LOCK:
        timings = _TIMINGS.get(ck)
        if timings is None:
            return
        timings.add(trace, ema=EMA)
        costs = timings.costs(pair.layout)
        for (k, _), planner in _PLANNERS.items():
            if k == ck:
                planner.set_costs(costs)


def timings_for(pair: Pair, batch: int, precision: str) -> Timings | None:
    """The timings behind the planners of `pair` at this batch size and precision (None: not calibrated)."""
    with _LOCK:
        return _TIMINGS.get(cost_key(pair, batch, precision))


def forget() -> None:
    """Drop the in-memory calibrations (the disk cache stays)."""
    with _LOCK:
        _TIMINGS.clear()
        _PLANNERS.clear()


def describe(costs: Costs) -> str:
    """Milliseconds of the single-scale calls and of the work between them, one line each."""
    K = costs.num_scales
    fmt = lambda xs: " ".join(f"{1000 * x:.1f}" for x in xs)   # noqa: E731
    return (f"target step ms: {fmt([costs.target[k][k] for k in range(K)])}\n"
            f"draft step ms: {fmt([costs.draft[k][k] for k in range(K)])}\n"
            f"target whole-image window ms: {1000 * costs.target[0][K - 1]:.1f}\n"
            f"make ms: {fmt(costs.make)}\njudge ms: {fmt(costs.judge)}")

