"""One click of the explorer, streamed: the chosen run scale by scale, then the comparisons.

`stream_click` runs the chosen mode in a worker thread and yields a `ClickUpdate` after each
finalized scale (its tokens, the counters, the picture so far when a preview was decoded), then
the finished run, then the target-alone and draft-alone runs of the same class and seed. Those
comparisons come from a `ComparisonCache` when an earlier click ran them with the same pair,
class, seed, sampling settings and precision (a click that changes only the speculative or
hand-off settings reuses them). A stop flag, checked after every scale, ends the runs within one
scale; so does closing the generator.

Previews (`previews="budget"`): decoding the picture after a scale costs one VQ-VAE decode (a few
ms for the embedded pair, about 1.5 s for the official 256 px VQ-VAE on a 2-core CPU in bf16). A
scale is announced first, its preview decoded after (the run's clock paused) and sent as the next
update: the first scale's always; after that every scale's when the first took under
CHEAP_PREVIEW_S, else only while previews have cost at most PREVIEW_SHARE of the run's own time so
far; the other scales show their tokens only. `previews="all"` decodes every scale in the engine
(every update has its picture), "none" none (the final picture always).

With γ="auto" on a pair whose planner has no costs yet, the click first says it is calibrating and
makes the cost prior (`calibration`), so the progress line tells what the wait is.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from scipy.optimize import nnls

from .calibration import fingerprint, planner_for, timings_for
from .costprior import call_flops
from .engine import Pair, ScaleDone, Settings, generate
from .trace import Trace
from .validate import check

PREVIEW_SHARE = 0.25      # previews may add this share of the run's time
CHEAP_PREVIEW_S = 0.05    # a first preview this fast: decode every scale (the scrubber then has all pictures)
CACHE_SIZE = 64           # comparison runs kept (final pictures only: a few hundred kB each at 256 px)
SAMPLING_KEYS = ("cfg", "top_k", "top_p", "precision", "more_smooth")   # what a one-model run depends on


class ClickStopped(Exception):
    """Raised inside the engine's callback when the click's stop flag is set."""


@dataclass
class ClickUpdate:
    """One step of a streamed click.

    stage: 'scale' (a scale of the chosen run finalized), 'main' (the chosen run is done),
    'comparison' (a comparison run is done; `runs` has it). runs: the Traces so far ("main",
    "target", "draft"). cached: the comparisons reused from an earlier click.
    """

    stage: str                        # see the docstring; also "comparison scale" (a comparison run's scale)
    runs: dict
    text: str
    done: int
    total: int
    event: ScaleDone | None = None
    partial: Trace | None = None      # stage 'scale': the chosen run's finalized scales so far
    picture: np.ndarray | None = None  # stage 'scale': the newest preview (B, H, W, 3) in this update, if any
    cached: set = field(default_factory=set)


class ComparisonCache:
    """Target-alone and draft-alone traces by (pair, mode, class, seed, sampling settings), least recently
    used dropped first; shared by all sessions (traces are read-only once made)."""

    def __init__(self, size: int = CACHE_SIZE):
        self.size, self.lock, self.items = size, threading.Lock(), OrderedDict()

    @staticmethod
    def key(pair: Pair, mode: str, class_id: int, seed: int, settings: dict) -> tuple:
        return (fingerprint(pair), mode, int(class_id), int(seed),
                tuple((k, settings.get(k)) for k in SAMPLING_KEYS))

    def get(self, key) -> Trace | None:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        return None

    def put(self, key, trace: Trace) -> None:
        with self.lock:
            self.items[key] = trace
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)

    def clear(self) -> None:
        with self.lock:
            self.items.clear()


COMPARISONS = ComparisonCache()


def step_flops(pair: Pair) -> list[float]:
    """FLOPs of making each scale in a one-model run of the target (from its shapes)."""
    layout, cfg = pair.layout, pair.target.cfg
    return [call_flops(cfg, 2, layout.sizes[k], layout.ends[k]) for k in range(layout.num_scales)]


def eta_seconds(flops: list[float], seconds: list[float]) -> float | None:
    """Seconds left, from the clock after each finalized scale so far (`seconds`, len ≥ 3) and each scale's
    FLOPs: a fit of scale time ≈ a + θ·FLOPs (a, θ ≥ 0) over the scales done, summed over those to come."""
    done = len(seconds)
    if done < 3 or done >= len(flops):
        return None
    times = np.diff([0.0, *seconds])
    A = np.stack([np.ones(done), np.asarray(flops[:done]) / max(flops)], axis=1)
    coef, _ = nnls(A, times)
    rest = np.asarray(flops[done:]) / max(flops)
    return float(coef[0] * len(rest) + coef[1] * rest.sum())


def partial_trace(pair: Pair, settings: dict, records: list) -> Trace:
    """A Trace holding the finalized scales so far (what the token-grid view needs while streaming)."""
    return Trace(settings=dict(settings), patch_nums=list(pair.layout.patch_nums), scales=list(records))


def _streamed(run, stop: threading.Event, decide=None) -> Iterator:
    """Run `run(on_scale)` (a generate call) in a worker thread: yields lists of the ScaleDone events that
    arrived since the last look (a slow consumer sees the newest scale, never falls behind; an event comes
    again once `decide(ev)`, called in the worker after the event is sent, decoded its preview), then the
    finished Trace. Setting `stop` ends the run within one scale (ClickStopped); leaving the generator
    early sets it and waits for the worker."""
    updates: queue.Queue = queue.Queue()

    def on_scale(ev: ScaleDone) -> None:
        if stop.is_set():
            raise ClickStopped()
        updates.put(("scale", ev))
        if decide is not None and decide(ev):
            updates.put(("scale", ev))

    def work():
        try:
            updates.put(("done", run(on_scale).trace))
        except BaseException as e:  # noqa: BLE001  (handed to the consumer, which re-raises it)
            updates.put(("error", e))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    finished = False
    try:
        while True:
            items = [updates.get()]
            while not updates.empty():
                items.append(updates.get())
            if stop.is_set():
                raise ClickStopped()
            scales = [value for kind, value in items if kind == "scale"]
            if scales:
                yield scales
            for kind, value in items:
                if kind == "error":
                    finished = True
                    raise value
                if kind == "done":
                    finished = True
                    yield value
                    return
    finally:
        if not finished:
            stop.set()
        thread.join()


def stream_click(pair: Pair, mode: str, class_id: int, seed: int, settings: dict, *,
                 cache: ComparisonCache | None = COMPARISONS, stop: threading.Event | None = None,
                 previews: str = "budget") -> Iterator[ClickUpdate]:
    """The runs of one click as they happen (module docstring). settings: `generate` settings of the
    chosen run (checked there). Raises ClickStopped when `stop` is set during a run."""
    seed, mode = check("seed", seed), check("mode", mode)
    class_id = check("class_id", class_id, num_classes=pair.num_classes)
    stop = stop or threading.Event()
    if previews not in ("budget", "all", "none"):
        raise ValueError(f"previews must be 'budget', 'all' or 'none', got {previews!r}")
    K = pair.layout.num_scales
    names = {"target": "target alone", "draft": "draft alone", "schedule": "hand-off", "speculative": "speculative"}
    jobs = [m for m in ("target", "draft") if m != mode]
    total, flops = K * (1 + len(jobs)), step_flops(pair)
    spent = {"previews": 0.0, "first": None}

    def decide(ev: ScaleDone) -> bool:   # the preview budget (module docstring); True: decoded
        if previews != "budget" or ev.image is not None or ev.done == ev.total:   # the last: the final decode
            return False
        first = spent["first"]
        if first is None or first < CHEAP_PREVIEW_S or spent["previews"] <= PREVIEW_SHARE * ev.seconds:
            t = time.perf_counter()
            ev.image = ev.decode()
            spent["previews"] += time.perf_counter() - t
            spent["first"] = spent["previews"] if first is None else first
            return True
        return False

    def progress(what: str, events: list, clock: list) -> tuple[ScaleDone, str]:
        """The newest event of a batch and the progress line; new scales' clocks go into `clock`."""
        for ev in events:
            if ev.done > len(clock):
                clock.append(ev.seconds)
        ev = max(events, key=lambda e: e.done)
        eta = eta_seconds(flops, clock)
        return ev, f"{what}, scale {ev.done}/{K}" + ("" if eta is None else f", about {eta:.0f} s left")

    if mode == "speculative" and settings.get("gamma") == "auto":
        if timings_for(pair, 1, settings.get("precision", "fp32")) is None:
            yield ClickUpdate("calibrating", {}, "calibrating the γ planner", 0, total)
        planner = planner_for(pair, 1, Settings(**{**settings, "progressive": False}))
        settings = {**settings, "planner": planner}

    main_run = lambda on_scale: generate(pair, mode, [class_id], seed=seed, on_scale=on_scale,  # noqa: E731
                                         **{**settings, "progressive": previews == "all"})
    records, clock = [], []
    info = main_settings(mode, class_id, seed, pair, {k: v for k, v in settings.items() if k != "planner"})
    for value in _streamed(main_run, stop, decide):
        if isinstance(value, list):
            records += [ev.record for ev in value if ev.done > len(records)]
            ev, text = progress(names[mode], value, clock)
            picture = next((e.image for e in sorted(value, key=lambda e: -e.done) if e.image is not None), None)
            yield ClickUpdate("scale", {}, text, ev.done, total, event=ev, partial=partial_trace(pair, info, records),
                              picture=picture)
        else:
            main = value
    runs, cached = {"main": main}, set()
    yield ClickUpdate("main", dict(runs), f"{names[mode]} done", K, total)
    only = {k: settings[k] for k in SAMPLING_KEYS if k in settings}
    for i, m in enumerate(jobs):
        key = ComparisonCache.key(pair, m, class_id, seed, settings) if cache is not None else None
        trace = cache.get(key) if cache is not None else None
        if trace is None:
            run = lambda on_scale, m=m: generate(pair, m, [class_id], seed=seed, on_scale=on_scale,  # noqa: E731
                                                 progressive=False, **only)
            clock = []
            for value in _streamed(run, stop):
                if isinstance(value, list):
                    ev, text = progress(names[m], value, clock)
                    yield ClickUpdate("comparison scale", dict(runs), text, K * (1 + i) + ev.done, total,
                                      cached=set(cached))
                else:
                    trace = value
            if cache is not None:
                cache.put(key, trace)
        else:
            cached.add(m)
        runs[m] = trace
        yield ClickUpdate("comparison", dict(runs), f"{names[m]} done" + (" (reused)" if m in cached else ""),
                          K * (2 + i), total, cached=set(cached))


def main_settings(mode: str, class_id: int, seed: int, pair: Pair, settings: dict) -> dict:
    """The settings a streamed partial trace names (the finished trace has the engine's full record)."""
    return {"mode": mode, "seed": int(seed), "class_ids": [int(class_id)], "pair": pair.name, **settings}


def run_click(pair: Pair, mode: str, class_id: int, seed: int, settings: dict, on_progress=None,
              cache: ComparisonCache | None = None) -> dict:
    """The runs behind one click, waited for: {"main", "target", "draft": Trace} (a comparison equal to the
    chosen mode is that run). The chosen run decodes its picture after every scale.
    on_progress(done, total, text) after each step. cache: reuse comparisons from it (default: all three run now)."""
    runs = {}
    for update in stream_click(pair, mode, class_id, seed, {**settings}, cache=cache, previews="all"):
        if on_progress is not None:
            on_progress(update.done, update.total, update.text)
        runs.update(update.runs)
    main = runs["main"]
    runs.setdefault("target", main)
    runs.setdefault("draft", main)
    return runs
