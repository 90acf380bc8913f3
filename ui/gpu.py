"""The callbacks that run models, as ZeroGPU requests: each asks for the GPU seconds its inputs need.

`gpu_callback(fn, budget, cap)` wraps a callback `fn(bank, view, …, *, inputs)` for `listen`: same
signature, same keyword inputs, gr.Request and gr.Progress, generator or not. On a ZeroGPU Space
(the `spaces` package with SPACES_ZERO_GPU set) a call

1. prices itself first: `budget(*args, **kwargs)` (same arguments as fn) gives a `gpu_budget.Budget`
   and a hint naming a smaller request; a bad input or a request over `cap` seconds is refused here,
   before any GPU is asked for (a ValueError: `bind` shows it);
2. runs fn inside `spaces.GPU(duration=…)`, whose duration callable reads the seconds from the job
   it is given (the decorated function's only argument). ZeroGPU runs that function in a forked
   worker process and pickles its arguments and results, so the shared objects (the pair bank, the
   view, the host) travel as references into this process's memory, which the fork copied, and the
   result's component keys as component ids;
3. turns ZeroGPU's refusals (quota exceeded, no GPU free, a duration over the maximum, an aborted
   task: `gr.Error`s titled 'ZeroGPU …' raised by `spaces.zero.client.schedule` and the wrappers of
   spaces 0.51) into a plain message: what happened, what this request asked for, how long a smaller
   one would ask, and that logging in raises the daily quota. The page keeps working: the precomputed
   runs, the Masks and Shapes tabs and every view of a stored run need no GPU and are never decorated.

Elsewhere (no `spaces`, or not on ZeroGPU) `spaces.GPU` returns the function unchanged and fn runs
here, through the same reference passing, without asking for anything.
"""
from __future__ import annotations

import functools
import inspect
import itertools
import threading
import weakref
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, NamedTuple

import gradio as gr

from sdvar_core import gpu_budget
from sdvar_core.explore import (OFFICIAL_DEPTHS, check_sweep_size, class_index, click_settings, parse_seeds,
                                sweep_configs)
from sdvar_core.validate import check

from .common import bind
from .hosting import safe

try:  # ZeroGPU on Hugging Face Spaces; a no-op decorator elsewhere
    import spaces
    from spaces.config import Config as _SpacesConfig

    GPU = spaces.GPU
except ImportError:  # pragma: no cover  (the tests install spaces; the app runs without it)
    spaces, _SpacesConfig = None, None

    def GPU(fn=None, **_):
        return fn if fn is not None else (lambda f: f)

DEVICE = gpu_budget.GPU_PRIOR   # the class requests are priced with: ZeroGPU's card is not measured here
LOGIN_NOTE = ("Visitors get a daily ZeroGPU quota (hub docs: 2 minutes without an account, 3.5 with a free Hugging "
              "Face account, 25 with PRO): logging in raises it. The precomputed runs, the Masks and Shapes tabs "
              "and the views of a run already shown need no GPU and keep working.")


def on_zerogpu() -> bool:
    """True on a ZeroGPU Space (spaces installed and SPACES_ZERO_GPU set)."""
    return bool(_SpacesConfig is not None and _SpacesConfig.zero_gpu)


def in_gpu_worker() -> bool:
    """True inside a ZeroGPU worker process (forked for a GPU request)."""
    if not on_zerogpu():
        return False
    from spaces.zero import wrappers   # only on ZeroGPU: importing it needs a CUDA build of torch

    return bool(getattr(wrappers, "forked", False))


# ---- what crosses into the GPU worker -------------------------------------------------------------------

# Objects passed by reference (same key here and in a worker forked from here) and their components by Gradio
# id (the keys of a callback's result); weak: the page's event handlers keep them alive as long as it exists.
_LOCAL: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_COMPONENTS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_KEYS = itertools.count(1)
_LOCK = threading.Lock()


class Local(NamedTuple):
    """A reference to an object of this process (a worker forked from it holds the same one)."""

    key: int


class ComponentRef(NamedTuple):
    """A Gradio component in a callback's result, by its id."""

    id: int


def local(obj) -> Local:
    """A picklable reference to `obj` (registered once)."""
    with _LOCK:
        for key, known in _LOCAL.items():
            if known is obj:
                return Local(key)
        key = next(_KEYS)
        _LOCAL[key] = obj
        for value in vars(obj).values() if hasattr(obj, "__dict__") else ():
            if isinstance(value, gr.blocks.Block):   # a view's components
                _COMPONENTS[value._id] = value
        return Local(key)


def resolve(value):
    """The object behind a Local, else the value."""
    return _LOCAL[value.key] if isinstance(value, Local) else value


def to_refs(result):
    """A callback's {component: value} with picklable keys (values are pictures, figures, tables)."""
    if isinstance(result, dict):
        return {ComponentRef(k._id) if isinstance(k, gr.blocks.Block) else k: v for k, v in result.items()}
    return result


def from_refs(result):
    if isinstance(result, dict):
        return {_COMPONENTS[k.id] if isinstance(k, ComponentRef) else k: v for k, v in result.items()}
    return result


class RequestInfo(NamedTuple):
    """What a callback reads of its gr.Request (the request itself does not pickle)."""

    session_hash: str | None
    username: str | None = None


@dataclass(frozen=True)
class Job:
    """One GPU request: the callback (a module-level function), its arguments, the seconds asked for."""

    fn: Any
    args: tuple
    kwargs: dict
    seconds: int

    def run(self):
        """fn's result (or generator). Errors become gr.Errors as `bind` makes them: ZeroGPU hands a
        worker's gr.Error back as it is, any other exception only by its class name."""
        return bind(self.fn)(*(resolve(a) for a in self.args), **self.kwargs)


def job_seconds(job: Job) -> int:
    """The duration callable given to spaces.GPU: it receives the decorated function's argument (the job)."""
    return job.seconds


# ---- the wrapper --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Priced:
    """What a budget callable returns: the request's budget and a smaller request in words."""

    budget: gpu_budget.Budget
    smaller: str = ""


def gpu_callback(fn, budget, cap: int = gpu_budget.CAP_S):
    """fn as a GPU request priced by `budget` (called with fn's arguments → Priced); see the module docstring."""
    generator = inspect.isgeneratorfunction(fn)
    if generator:   # one task per callback: ZeroGPU keeps workers per decorated function
        def task(job: Job):
            for out in job.run():
                yield to_refs(out)
    else:
        def task(job: Job):
            return to_refs(job.run())
    task.__name__ = task.__qualname__ = f"gpu_{fn.__name__}"
    remote = GPU(duration=job_seconds)(task)

    def prepare(args, kwargs) -> tuple[Job, Priced | None]:
        priced = budget(*args, **kwargs, cap=cap) if on_zerogpu() else None   # ValueError: refused here
        job = Job(fn, tuple(portable(a) for a in args), {k: portable(v, by_reference=False) for k, v in kwargs.items()},
                  priced.budget.seconds if priced else gpu_budget.FLOOR_S)
        return job, priced

    if generator:
        def wrapper(*args, **kwargs):
            job, priced = prepare(args, kwargs)
            try:
                for out in remote(job):
                    yield from_refs(out)
            except gr.Error as e:
                raise refused(e, priced) from None
    else:
        def wrapper(*args, **kwargs):
            job, priced = prepare(args, kwargs)
            try:
                return from_refs(remote(job))
            except gr.Error as e:
                raise refused(e, priced) from None
    wrapper = functools.wraps(fn)(wrapper)
    wrapper.gpu_budget = budget   # for the tests: every GPU callback is priced
    return wrapper


def portable(value, by_reference: bool = True):
    """An argument as it can cross into a forked worker: plain values, paths and gr.Progress as they are, a
    gr.Request as RequestInfo, anything else (the bank, the view, the host) by reference."""
    if isinstance(value, gr.Request):
        return RequestInfo(value.session_hash, getattr(value, "username", None))
    if not by_reference or value is None or isinstance(value, (str, int, float, bool, list, tuple, dict, PurePath,
                                                                gr.Progress)):
        return value
    return local(value)


def refused(error: gr.Error, priced: Priced | None) -> gr.Error:
    """ZeroGPU's refusal as a plain message (other gr.Errors, e.g. a bad input's, pass unchanged)."""
    title = str(getattr(error, "title", "") or "")
    if not title.startswith("ZeroGPU"):
        return error
    text = str(getattr(error, "message", error)).strip().rstrip(".")
    asked = f"This request asked for {priced.budget.seconds} s of GPU time. " if priced else ""
    smaller = f"{priced.smaller} " if priced and priced.smaller else ""
    if "aborted" in text.lower() or "worker error" in title.lower():
        what = f"The GPU request stopped before it finished ({text})."
    elif "duration" in title.lower():
        what = f"The GPU request was larger than this Space allows ({text})."
    elif "queue" in title.lower() or "no gpu" in text.lower():
        what = f"No GPU became free in time ({text})."
    else:
        what = f"Your GPU quota for today does not cover this request ({text})."
    return gr.Error(safe(f"{what} {asked}{smaller}{LOGIN_NOTE}", 900), title="GPU not granted", print_exception=False)


# ---- budgets of the app's GPU callbacks (same arguments as the callbacks; `cap` last) -----------------

def shapes_of(bank, model) -> gpu_budget.PairShapes:
    """The pair's shapes without loading an official pair (its configs are the presets)."""
    model = check("model", model, choices=("tiny",) + tuple(OFFICIAL_DEPTHS))
    if model == "tiny":
        return gpu_budget.PairShapes.of(bank.get("tiny"))
    return gpu_budget.PairShapes.official(*OFFICIAL_DEPTHS[model])


def _smaller(bank, model, text: str, **kw) -> str:
    """'A smaller request: …' naming the target-alone click here and the embedded pair's default click."""
    parts = [text] if text else []
    if model != "tiny":
        tiny = shapes_of(bank, "tiny")
        b = gpu_budget.generate_click(tiny, "speculative", click_settings({}, len(tiny.patch_nums)), DEVICE)
        parts.append(f"a Generate click on the embedded pair asks for {b.seconds} s")
    return ("A smaller request: " + "; ".join(parts) + ".") if parts else ""


def generate_budget(bank, host, view, request=None, *, model, cap: int = gpu_budget.CAP_S, progress=None,
                    **inputs) -> Priced:
    """A Generate click: the chosen mode with its settings, the target alone, the draft alone. Its inputs
    are checked as the callback checks them, so a bad one never asks for a GPU."""
    shapes = shapes_of(bank, model)
    K = len(shapes.patch_nums)
    mode = check("mode", inputs.get("mode", "speculative"))
    settings = click_settings(inputs, K)
    check("seed", inputs.get("seed"))
    if model == "tiny":
        class_index(bank.get("tiny"), inputs.get("class_name"), inputs.get("class_id"))
    else:
        check("class_id", inputs.get("class_id"), num_classes=shapes.target.num_classes)
    b = gpu_budget.generate_click(shapes, mode, settings, DEVICE, cap=cap)
    alone = gpu_budget.generate_click(shapes, "target", settings, DEVICE, cap=cap)
    hint = f"'target only' asks for {alone.seconds} s" if mode != "target" else ""
    return Priced(b, _smaller(bank, model, hint))


def gallery_budget(bank, view, *, model, mask_entry, cap: int = gpu_budget.CAP_S, progress=None, **_) -> Priced:
    """The six masks: seven runs at batch 1."""
    shapes = shapes_of(bank, model)
    entry = check("mask_entry", mask_entry, num_scales=len(shapes.patch_nums))
    b = gpu_budget.mask_gallery(shapes, entry, DEVICE, cap=cap)
    return Priced(b, _smaller(bank, model, ""))


def sweep_budget(bank, view, host, request=None, *, model, sweep_kind, sweep_seeds, sweep_classes, sweep_entries,
                 sweep_dirs, sweep_masks, sweep_gammas, sweep_taus, cap: int = gpu_budget.CAP_S, progress=None,
                 **_) -> Priced:
    """A sweep: every entry once per seed, at every class (≤ 16 classes) or the chosen one."""
    shapes = shapes_of(bank, model)
    K = len(shapes.patch_nums)
    seeds = parse_seeds(sweep_seeds)
    configs = sweep_configs(sweep_kind, sweep_entries, sweep_dirs, sweep_masks, sweep_gammas, sweep_taus, K)
    if host is not None:
        check_sweep_size(configs, seeds, host.limits.sweep_max_runs)
    classes = shapes.target.num_classes
    images = classes if check("sweep_classes", sweep_classes) == "all" and classes <= 16 else 1
    b = gpu_budget.sweep(shapes, configs, len(seeds), images, DEVICE, cap=cap)
    one = gpu_budget.sweep(shapes, configs, 1, images, DEVICE, cap=max(cap, gpu_budget.ZEROGPU_MAX_S))
    return Priced(b, f"A smaller request: the same sweep with one seed asks for {one.seconds} s." if len(seeds) > 1
                  else "")


def picture_budget(bank, view, cache=None, *, model, cap: int = gpu_budget.CAP_S, progress=None, **inputs) -> Priced:
    """Your picture: its pyramid, or a run on it (the callbacks with a `picture_task` input run models)."""
    shapes = shapes_of(bank, model)
    run = "picture_task" in inputs
    return Priced(gpu_budget.picture(shapes, DEVICE, run=run, cap=cap), _smaller(bank, model, ""))
