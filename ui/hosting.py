"""What serving the app to the public needs: the limits (from SDVAR_* environment variables), the
sweep lane's bookkeeping (running sweeps, stop requests, the per-session limit), the folder of
sweep CSVs, and messages that are safe to show.

Every limit has a default that fits a 2-core CPU Space; README "Running it publicly" lists them.
"""
from __future__ import annotations

import ctypes
import hashlib
import html
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, fields
from pathlib import Path

import gradio as gr

from sdvar_core.validate import Rule, check

MESSAGE_CHARS = 500   # the longest message the app shows (user text inside it is cut earlier, in `validate`)


def safe(text, limit: int = MESSAGE_CHARS) -> str:
    """`text` cut to `limit` characters and HTML-escaped: Gradio renders toasts and Markdown as HTML."""
    text = str(text)
    if len(text) > limit:
        text = text[:limit] + "…"
    return html.escape(text, quote=False)


# ---- limits ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    """How much the app lets its users do at once, and how long it keeps their things.

    Each field is read from the environment variable in ENV (README "Running it publicly")."""

    generate_concurrency: int = 1    # Generate clicks running at the same time (others wait in the queue)
    generates_per_session: int = 2   # Generate clicks one session may have queued or running
    sweep_concurrency: int = 1       # sweeps running at the same time, in their own lane
    sweeps_per_session: int = 1      # sweeps one session may have queued or running
    sweep_max_runs: int = 64         # settings × seeds in one sweep
    queue_size: int = 32             # events waiting in the queue, all sessions together
    max_sessions: int = 64           # sessions whose state the server keeps (the oldest is dropped first)
    session_ttl: int = 3600          # seconds a session keeps its last run after it was made
    cache_ttl: int = 3600            # seconds before Gradio's cached files (pictures, CSVs) are deleted
    gpu_max_seconds: int = 120       # the most GPU seconds one request may ask for on ZeroGPU (ui.gpu)


ENV = {"generate_concurrency": "SDVAR_GENERATE_CONCURRENCY", "generates_per_session": "SDVAR_GENERATES_PER_SESSION",
       "sweep_concurrency": "SDVAR_SWEEP_CONCURRENCY",
       "sweeps_per_session": "SDVAR_SWEEPS_PER_SESSION", "sweep_max_runs": "SDVAR_SWEEP_MAX_RUNS",
       "queue_size": "SDVAR_QUEUE_SIZE", "max_sessions": "SDVAR_MAX_SESSIONS",
       "session_ttl": "SDVAR_SESSION_TTL", "cache_ttl": "SDVAR_CACHE_TTL", "gpu_max_seconds": "SDVAR_GPU_MAX_SECONDS"}
_RANGES = {"generate_concurrency": (1, 64), "generates_per_session": (1, 64), "sweep_concurrency": (1, 64),
           "sweeps_per_session": (1, 64),
           "sweep_max_runs": (1, 10_000), "queue_size": (1, 100_000), "max_sessions": (1, 1_000_000),
           "session_ttl": (10, 30 * 86400), "cache_ttl": (60, 30 * 86400), "gpu_max_seconds": (5, 300)}


def limits_from_env(environ=None) -> Limits:
    """Limits with every SDVAR_* variable that is set; ValueError naming a variable with a bad value."""
    environ = os.environ if environ is None else environ
    values = {}
    for f in fields(Limits):
        text = environ.get(ENV[f.name], "").strip()
        if text:
            lo, hi = _RANGES[f.name]
            values[f.name] = check(f.name, text, rule=Rule("int", lo, hi, text_ok=True), label=ENV[f.name])
    return Limits(**values)


M_ARENA_MAX = -8   # glibc's mallopt parameter number (malloc.h)


def _glibc(name: str):
    """The C function `name` of glibc, or None off Linux/glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):   # not glibc
        return None


def _env_number(environ, variable: str, default: str, rule: Rule):
    """$variable (default when unset or blank) checked by `rule`; ValueError naming the variable."""
    text = environ.get(variable, "").strip() or default
    return check(variable.lower(), text, rule=rule, label=variable)


def limit_malloc_arenas(environ=None) -> int | None:
    """Cap glibc's malloc arenas for this process at $SDVAR_MALLOC_ARENAS (default 2; 0 leaves glibc's
    default); the number applied, or None where nothing was changed.

    glibc gives threads that allocate at the same time heaps of their own (up to 8 per core). Gradio
    serves sessions from a pool of worker threads, so what a session leaves behind when it is dropped
    ends up scattered over many heaps that are rarely returned to the system, and the resident memory
    grows with the number of sessions served. Two arenas keep it flat (BENCHMARKS.md, issue 10).
    Same effect as starting the process with MALLOC_ARENA_MAX=2, which wins when set. Linux/glibc only."""
    environ = os.environ if environ is None else environ
    n = _env_number(environ, "SDVAR_MALLOC_ARENAS", "2", Rule("int", 0, 64, text_ok=True))
    mallopt = _glibc("mallopt")
    if n == 0 or "MALLOC_ARENA_MAX" in environ or mallopt is None:
        return None
    return n if mallopt(M_ARENA_MAX, n) == 1 else None


def trim_heap_every(environ=None) -> threading.Thread | None:
    """Hand freed heap memory back to the system every $SDVAR_TRIM_SECONDS seconds (default 5; 0: never),
    from a daemon thread; the thread, or None where nothing was started. Linux/glibc only.

    A click allocates tens of MB (pictures, figures, JSON) and frees them again, but glibc returns a
    heap's free pages only from its top, so the resident memory keeps the high-water mark of every
    session's allocations scattered through the heap. `malloc_trim(0)` releases all free pages (a few
    milliseconds); with it the resident memory follows what is really in use (BENCHMARKS.md, issue 10)."""
    environ = os.environ if environ is None else environ
    seconds = _env_number(environ, "SDVAR_TRIM_SECONDS", "5", Rule("float", 0, 3600, text_ok=True))
    trim = _glibc("malloc_trim")
    if seconds == 0 or trim is None:
        return None

    def loop():
        while True:
            time.sleep(seconds)
            trim(0)
    thread = threading.Thread(target=loop, name="sdvar-trim-heap", daemon=True)
    thread.start()
    return thread


def cache_schedule(limits: Limits) -> tuple[int, int]:
    """(how often, how old): Gradio's `delete_cache` deletes cached files older than cache_ttl,
    checking every cache_ttl / 4 (at most every 10 minutes)."""
    return min(600, max(30, limits.cache_ttl // 4)), limits.cache_ttl


# ---- the sweep lane ---------------------------------------------------------------------------------

class SweepStopped(Exception):
    """Raised inside a sweep's engine calls when its session pressed Stop."""


class StopFlag(threading.Event):
    """A sweep's stop flag: set in this process, or by the mark file Stop leaves in `marks` (a sweep that runs
    in a forked ZeroGPU worker shares no memory with the process that serves Stop, only the disk)."""

    def __init__(self, mark: Path | None = None):
        super().__init__()
        self.mark = mark

    def is_set(self) -> bool:
        return super().is_set() or (self.mark is not None and self.mark.exists())


class SweepLane:
    """The sweeps (or Generate clicks) running now, by session, each with its stop flag.

    A sweep calls `start(session)` / `finish` around its work; Stop calls `stop(session)`, and the sweep's
    per-scale callback (`check_stop`) then raises SweepStopped, so the engine stops within one scale.
    With a `marks` folder, Stop also leaves a mark there, which reaches sweeps running in other processes.
    """

    def __init__(self, marks: Path | None = None):
        self.lock = threading.Lock()
        self.flags: dict[str, list[threading.Event]] = {}
        self.marks = marks
        if marks is not None:
            marks.mkdir(parents=True, exist_ok=True)

    def _mark(self, session: str) -> Path | None:
        if self.marks is None:
            return None
        return self.marks / f"{hashlib.sha256(str(session).encode()).hexdigest()[:16]}.stop"

    def start(self, session: str) -> threading.Event:
        mark = self._mark(session)
        if mark is not None:
            mark.unlink(missing_ok=True)   # a Stop pressed before this sweep does not stop it
        flag = StopFlag(mark)
        with self.lock:
            self.flags.setdefault(session, []).append(flag)
        return flag

    def finish(self, session: str, flag: threading.Event) -> None:
        with self.lock:
            flags = self.flags.get(session, [])
            if flag in flags:
                flags.remove(flag)
            if not flags:
                self.flags.pop(session, None)
                mark = self._mark(session)
                if mark is not None:
                    mark.unlink(missing_ok=True)

    def stop(self, session: str) -> int:
        """Ask every running sweep of `session` to stop (here and, with marks, in other processes); how
        many run in this process."""
        with self.lock:
            flags = list(self.flags.get(session, []))
        for flag in flags:
            flag.set()
        mark = self._mark(session)
        if mark is not None:
            mark.touch()
        return len(flags)

    def count(self, session: str | None = None) -> int:
        """Running sweeps of `session` (all sessions when None)."""
        with self.lock:
            if session is None:
                return sum(len(f) for f in self.flags.values())
            return len(self.flags.get(session, []))


def check_stop(flag: threading.Event):
    """An engine on_scale callback that raises SweepStopped once `flag` is set."""
    def on_scale(_done):
        if flag.is_set():
            raise SweepStopped()
    return on_scale


def admission(blocks, concurrency_id: str, limit: int, what: str):
    """A Gradio `validator` that refuses an event before it is queued when its session already has
    `limit` events of `concurrency_id` waiting or running (named in the message as `what`)."""
    def admit(request: gr.Request, **inputs):
        waiting = pending_events(blocks, request.session_hash, concurrency_id)
        if waiting >= limit:
            raise gr.Error(safe(f"This session already has {waiting} {what}(s) queued or running (at most {limit} "
                                f"per session): wait for it to finish{', or press Stop' if what == 'sweep' else ''}."),
                           print_exception=False)
        return gr.skip()   # valid: nothing to mark on the inputs
    return admit


def pending_events(blocks, session: str, concurrency_id: str) -> int:
    """Events of `session` in `concurrency_id` that Gradio's queue holds (waiting or running).

    Reads the queue's bookkeeping (gradio 6.31: Queue.pending_event_ids_session and
    event_ids_to_events); tests/test_robustness.py checks that it still sees queued sweeps."""
    queue = getattr(blocks, "_queue", None)
    ids = set(getattr(queue, "pending_event_ids_session", {}).get(session, ()))
    events = getattr(queue, "event_ids_to_events", {})
    return sum(1 for i in ids if i in events and getattr(events[i], "concurrency_id", None) == concurrency_id)


# ---- sweep CSVs -----------------------------------------------------------------------------------------

class SweepFiles:
    """One folder for the CSVs of running sweeps. Gradio copies each CSV into its own cache when it
    is sent (and deletes it there after cache_ttl), so a sweep deletes its file when it ends; files
    older than `ttl` (a sweep killed with the process) go at the next sweep, the folder at exit."""

    def __init__(self, ttl: float, root: str | Path | None = None):
        self.ttl = ttl
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="sdvar-sweeps-"))
        self.root.mkdir(parents=True, exist_ok=True)

    def new(self, stem: str) -> Path:
        """A fresh CSV path; old leftovers are removed first."""
        now = time.time()
        for p in self.root.glob("*.csv"):
            try:
                if now - p.stat().st_mtime > self.ttl:
                    p.unlink()
            except OSError:
                pass
        return self.root / f"{stem}-{uuid.uuid4().hex[:8]}.csv"

    @staticmethod
    def discard(path: Path | None) -> None:
        if path is not None:
            Path(path).unlink(missing_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Host:
    """What the served app shares between sessions besides the models: its limits, the sweep lane, the
    folder of sweep CSVs and the running clicks."""

    limits: Limits
    lane: SweepLane       # running sweeps and their stop flags
    files: SweepFiles
    clicks: SweepLane     # running Generate clicks and their stop flags

    @classmethod
    def create(cls, limits: Limits | None = None) -> "Host":
        limits = limits or limits_from_env()
        files = SweepFiles(limits.cache_ttl)   # Stop's marks live beside the CSVs (see SweepLane)
        return cls(limits, SweepLane(files.root / "sweep-stops"), files, SweepLane(files.root / "click-stops"))
