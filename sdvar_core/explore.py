"""What one click of the explorer runs, its headline numbers, sweeps over settings, precomputed
example bundles, and the pairs the explorer offers.

UI-free: the app (`ui/`) wires these to widgets, `scripts/make_examples.py` uses them to precompute
runs, and notebooks can call them directly.
"""
from __future__ import annotations

import gc
import io
import json
import logging
import threading
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

from . import metrics
from .checkpoints import load_classifier
from .classifier import class_accuracy
from .config import CLASSIFIER_STEM
from .data import CLASS_NAMES
from .click import run_click  # noqa: F401  (one click's runs: the app, the examples and the tests use it here)
from .engine import Pair, Settings, generate
from .runtime import best_precision, resolve_device
from .trace import ACCEPTED, INPUT, Trace
from .validate import check, check_list, shown

log = logging.getLogger(__name__)

DIRECTIONS = {"D→T": "draft first, then target: 'D'·e + 'T'·(10−e)",
              "T→D": "target first, then draft: 'T'·e + 'D'·(10−e)"}
MAX_SWEEP_CONFIGS, MAX_SWEEP_SEEDS = 64, 8
MAX_SWEEP_RUNS = 64   # settings × seeds in one sweep (the app's default; $SDVAR_SWEEP_MAX_RUNS there)

# ---- the pairs on offer -----------------------------------------------------------------------

MODELS = {"tiny": "Embedded toy pair (64 px, 10 shapes) — CPU, offline",
          "d16-d20": "VAR d16 → d20 (ImageNet 256 px)",
          "d16-d24": "VAR d16 → d24 (ImageNet 256 px)",
          "d16-d30": "VAR d16 → d30 (ImageNet 256 px)"}
OFFICIAL_DEPTHS = {"d16-d20": (16, 20), "d16-d24": (16, 24), "d16-d30": (16, 30)}


def default_pair_loader(weights_dir: str | None = None):
    """(key, precision) → Pair: 'tiny' from assets/tiny (held in fp32: it is small), the official pairs from
    weights_dir / $SDVAR_WEIGHTS_DIR / the hub, their weight matrices held in `precision`."""
    def load(key: str, precision: str = "fp32") -> Pair:
        from . import zoo

        if key == "tiny":
            return zoo.load_pair("tiny")
        draft, target = OFFICIAL_DEPTHS[key]
        return zoo.load_pair(draft_depth=draft, target_depth=target, weights_dir=weights_dir, precision=precision)
    return load


def held_precision(key: str, device, precision: str | None = None) -> str:
    """The precision a pair is held in: the embedded pair fp32; an official pair `precision` (bf16 or
    fp16: half the memory; fp32), by default bf16 where it runs natively (CUDA, CPUs with bf16)."""
    if key == "tiny":
        return "fp32"
    if precision is None:
        return best_precision(device)
    return precision


class PairBank:
    """Loaded pairs, shared read-only by every session (models only; results live in the sessions).

    Holds the embedded pair and at most one official pair, in one precision: loading another official
    pair, or the same in another precision, drops the previous one (a d16 + d30 pair alone is about
    9 GB in fp32, 4.6 GB with its matrices in bf16). loader(key, precision) → Pair.
    """

    def __init__(self, loader, device=None):
        self.loader = loader
        self.device = resolve_device("auto" if device is None else device)
        self.pairs: dict[str, Pair] = {}
        self.notes: dict[str, str] = {}
        self.lock = threading.Lock()

    def get(self, key: str, precision: str | None = None) -> Pair:
        """The pair for `key`, held in `precision` (None: as it is held, else `held_precision`'s default);
        ValueError with a clear message when it cannot be loaded.

        If the embedded pair cannot be loaded (a file missing or damaged), an untrained pair with its
        shapes stands in, and `notes['tiny']` says which file and what still works.
        """
        key = check("model", key, choices=tuple(MODELS))
        with self.lock:
            held = self.pairs.get(key)
            want = held_precision(key, self.device, precision) if precision is not None or held is None else None
            if held is not None and want is not None and held.precision != want:
                del self.pairs[key]
            if key not in self.pairs:
                if key != "tiny":
                    for other in [k for k in self.pairs if k != "tiny"]:
                        del self.pairs[other]
                    gc.collect()   # the dropped pair's weights go before the next one's are read
                try:
                    self.pairs[key] = self.loader(key, want)
                except Exception as e:  # a damaged or missing file of any kind: the app must keep running
                    if key != "tiny":
                        raise ValueError(f"{MODELS[key]} could not be loaded: {e}") from e
                    log.warning("the embedded pair could not be loaded: %s", e)
                    from .zoo import random_pair

                    self.pairs[key] = random_pair(name="tiny (random weights)")
                    self.notes[key] = (f"The embedded pair could not be loaded: {e}. An untrained pair with random "
                                       "weights stands in: Generate and Compare run, but their pictures are noise. "
                                       "The Masks and Shapes tabs and the official models work as usual.")
            return self.pairs[key]


# ---- one click --------------------------------------------------------------------------------

# Settings fields the Generate tab sets; the others keep their `Settings` defaults (entry_num and
# schedule come from the tab's own inputs, `progressive` is chosen per run).
CLICK_SETTINGS = tuple(f.name for f in fields(Settings)
                       if f.name not in ("entry_num", "schedule", "verify_mask", "progressive"))
# The Generate tab's inputs with their defaults (precomputed examples store them under these names):
# the settings' defaults are `Settings()`'s; the rest are the tab's own (gamma_auto: γ = "auto" in
# speculative mode, the slider's γ otherwise).
DEFAULT_INPUTS = dict(class_name=CLASS_NAMES[8], class_id=207, seed=0, mode="speculative", entry_num=4, schedule="",
                      gamma_auto=True, **{name: getattr(Settings(), name) for name in CLICK_SETTINGS})


def click_settings(inputs: dict, num_scales: int = 10) -> dict:
    """Settings for engine.generate from the Generate tab's values (keys of DEFAULT_INPUTS; missing ones
    take the defaults), each checked and coerced by its rule (`validate`: 3.0 → 3, 'no' is no boolean).
    A schedule string, when given, wins over entry_num; in speculative mode gamma_auto sets gamma="auto"
    (and adaptive γ off). The engine checks the schedule against the pair's scales."""
    v = {**DEFAULT_INPUTS, **inputs}
    s = {name: check(name, v[name]) for name in CLICK_SETTINGS}
    entry_num = check("entry_num", v["entry_num"], num_scales=num_scales)   # checked even when unused
    text = check("schedule_text", "" if v["schedule"] is None else v["schedule"], label="schedule")
    mode = check("mode", v["mode"])
    if mode == "speculative" and check("gamma_auto", v["gamma_auto"]):
        s.update(gamma="auto", adaptive_gamma=False)
    if mode == "schedule":
        text = text.strip().upper().replace(" ", "")
        if text:
            s["schedule"] = text
        else:
            s["entry_num"] = entry_num
    return s


def settings_of(trace: Trace) -> Settings:
    """The `Settings` a trace was made with (fields missing from older traces take their defaults)."""
    return Settings(**{f.name: trace.settings[f.name] for f in fields(Settings) if f.name in trace.settings})


def class_index(pair: Pair, class_name, class_id) -> int:
    """The class id from the name picker (pairs with names) or the number box (ImageNet ids)."""
    if pair.class_names:
        names = tuple(pair.class_names)
        return names.index(check("class_name", class_name, choices=names))
    return check("class_id", class_id, num_classes=pair.num_classes)


def headline(main: Trace, target_only: Trace | None = None, draft_only: Trace | None = None) -> dict:
    """The numbers at the top of the page, all from runs of the same click.

    wall_s is the run's generation time (the transformer loop plus the final decode, without the
    per-scale preview decodes). speedup = target-only wall time / this run's wall time;
    token_agreement: the fraction of final tokens equal to the target-only run's.
    """
    drafted = [s for s in main.scales if s.producer == "draft+target"]
    out = {"target_calls": main.target_calls, "draft_calls": main.draft_calls,
           "wall_s": float(main.timings["total"]),
           "accepted_tokens": int(sum((s.status == ACCEPTED).sum() for s in drafted)),
           "verified_tokens": int(sum((s.status != INPUT).sum() for s in drafted)),   # a picture's are not judged
           "target_only_wall_s": None, "target_only_calls": None, "speedup": None,
           "draft_only_wall_s": None, "token_agreement": None}
    if target_only is not None:
        out["target_only_wall_s"] = float(target_only.timings["total"])
        out["target_only_calls"] = target_only.target_calls
        out["speedup"] = out["target_only_wall_s"] / max(out["wall_s"], 1e-9)
        out["token_agreement"] = agreement(main, target_only)
    if draft_only is not None:
        out["draft_only_wall_s"] = float(draft_only.timings["total"])
    return out


def run_mask_gallery(pair: Pair, class_id: int, seed: int, entry_num: int, settings: dict | None = None,
                     on_progress=None) -> dict:
    """The six masks on one seed: the target alone, then the hand-off 'D'·e + 'T'·(K−e) under each sd_mask
    0–5 (batch 1, final pictures only). Returns {"target": Trace, 0: Trace, …, 5: Trace}."""
    K = pair.layout.num_scales
    entry_num, seed = check("entry_num", entry_num, num_scales=K), check("seed", seed)
    if not 1 <= entry_num < K:
        raise ValueError(f"entry_num must be an integer in 1..{K - 1} (a hand-off needs both models), got {entry_num}")
    s = {k: v for k, v in (settings or {}).items() if k not in ("entry_num", "schedule", "sd_mask", "gamma",
                                                                 "adaptive_gamma", "progressive")}
    jobs = [("target", "target", {})] + [(r, "schedule", dict(entry_num=int(entry_num), sd_mask=r)) for r in range(6)]
    out = {}
    for i, (key, mode, extra) in enumerate(jobs):
        if on_progress is not None:
            on_progress(i, len(jobs), "target alone" if key == "target" else f"sd_mask {key}")
        out[key] = generate(pair, mode, [int(class_id)], seed=int(seed), progressive=False, **{**s, **extra}).trace
    return out


def gallery_summary(runs: dict, entry_num: int) -> dict:
    """What the six-masks view keeps of `run_mask_gallery`'s runs: the final pictures, each mask's token
    agreement with the target alone, and the settings (small: fits a session's state)."""
    target = runs["target"]
    return {"entry_num": int(entry_num), "seed": int(target.settings["seed"]),
            "class_id": int(target.settings["class_ids"][0]), "patch_nums": list(target.patch_nums),
            "target": target.images[0], "images": {r: runs[r].images[0] for r in range(6)},
            "agreement": {r: agreement(runs[r], target) for r in range(6)}}


def agreement(a: Trace, b: Trace) -> float:
    """Fraction of all final tokens (every scale, every sample) that are equal in two runs."""
    if list(a.patch_nums) != list(b.patch_nums):
        raise ValueError("the two runs have different layouts")
    return metrics.token_agreement(a.tokens, b.tokens, a.patch_nums)["all"]


def sweep_configs(kind: str, entry_nums, directions, sd_masks, gammas, taus, num_scales: int = 10) -> list[dict]:
    """The runs of a sweep: target-only and draft-only baselines first, then one entry per setting.

    entry_nums, sd_masks, gammas: integers (or numbers written as text, as check boxes send them);
    directions: keys of DIRECTIONS; taus: numbers in (0, 1]. Each list is checked by `validate`."""
    configs = [dict(kind="baseline", series="target only", mode="target"),
               dict(kind="baseline", series="draft only", mode="draft")]
    kind = check("sweep_kind", kind)
    if kind == "schedule":
        entry_nums = sorted(check_list("sweep_entries", entry_nums, label="entry_num", num_scales=num_scales))
        directions = check_list("sweep_dirs", directions, label="direction", choices=tuple(DIRECTIONS))
        sd_masks = check_list("sweep_masks", sd_masks, label="sd_mask")
        if not entry_nums or not directions or not sd_masks:
            raise ValueError("a schedule sweep needs at least one entry_num, one direction and one sd_mask")
        for d in directions:
            first, second = ("D", "T") if d == "D→T" else ("T", "D")
            for m in sd_masks:
                for e in entry_nums:
                    schedule = first * e + second * (num_scales - e)
                    if len(set(schedule)) == 1:   # no hand-off: that is a baseline
                        continue
                    configs.append(dict(kind="schedule", series=f"{d}, sd_mask {m}", mode="schedule",
                                        schedule=schedule, sd_mask=m, entry_num=e, direction=d))
    else:
        gammas = sorted(check_list("sweep_gammas", gammas, label="γ", num_scales=num_scales))
        taus = sorted(check_list("sweep_taus", taus, label="τ"), reverse=True)
        if not gammas or not taus:
            raise ValueError("a speculative sweep needs at least one γ and one τ")
        for t in taus:
            for g in gammas:
                configs.append(dict(kind="speculative", series=f"τ = {t:g}", mode="speculative", gamma=g, tau=t))
    if len(configs) == 2:
        raise ValueError("every chosen schedule equals a baseline (entry_num 0 or 10); pick entry_num in 1..9")
    if len(configs) > MAX_SWEEP_CONFIGS:
        raise ValueError(f"{len(configs)} runs per seed is too many for one sweep (at most {MAX_SWEEP_CONFIGS})")
    return configs


def config_label(config: dict) -> str:
    """A sweep entry in words: 'target only', 'D→T, sd_mask 1, entry_num 4', 'τ = 1, γ = 2'."""
    if config["kind"] == "schedule":
        return f"{config['series']}, entry_num {config['entry_num']} ({config['schedule']})"
    if config["kind"] == "speculative":
        return f"{config['series']}, γ = {config['gamma']}"
    return config["series"]


def parse_seeds(text: str) -> list[int]:
    """'0, 1, 5' or '0-3' → [0, 1, 5] / [0, 1, 2, 3]; each seed in 0..2^63-1, at most MAX_SWEEP_SEEDS."""
    text = check("seeds_text", text, label="seeds")
    seeds = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-") if "-" in part[1:] else (part, "", part)
        try:
            lo, hi = int(lo), int(hi)
        except ValueError:
            raise ValueError(f"seeds must be integers like '0, 1, 2' or '0-3', got {shown(part)}") from None
        lo, hi = (check("seed", v, label="each seed") for v in (lo, hi))
        if hi < lo:
            raise ValueError(f"a seed range must run upwards, got {shown(part)}")
        if hi - lo >= MAX_SWEEP_SEEDS:
            raise ValueError(f"at most {MAX_SWEEP_SEEDS} seeds per sweep, got the range {shown(part)}")
        seeds += range(lo, hi + 1)
    if not seeds:
        raise ValueError("give at least one seed, e.g. '0, 1'")
    seeds = list(dict.fromkeys(seeds))
    if len(seeds) > MAX_SWEEP_SEEDS:
        raise ValueError(f"at most {MAX_SWEEP_SEEDS} seeds per sweep, got {len(seeds)}")
    return seeds


def check_sweep_size(configs: list, seeds: list, max_runs: int = MAX_SWEEP_RUNS) -> None:
    """ValueError when settings × seeds exceeds `max_runs` (each run is one batch through the engine)."""
    runs = len(configs) * len(seeds)
    if runs > max_runs:
        raise ValueError(f"this sweep has {len(configs)} settings × {len(seeds)} seed(s) = {runs} engine runs; "
                         f"at most {max_runs} per sweep (choose fewer settings or seeds)")


def run_config(pair: Pair, config: dict, seeds: list[int], class_ids: list[int], base: dict,
               on_scale=None) -> list[Trace]:
    """One sweep entry: a batch of `class_ids` for every seed (final pictures only); on_scale(done, total)
    is the engine's progress callback (raising in it stops the sweep)."""
    s = {**base, **{k: config[k] for k in ("schedule", "sd_mask", "gamma", "tau") if k in config}}
    return [generate(pair, config["mode"], class_ids, seed=seed, progressive=False, on_scale=on_scale, **s).trace
            for seed in seeds]


def sweep_row(config: dict, traces: list[Trace], reference: list[Trace], class_ids, classifier) -> dict:
    """Measured numbers of one sweep entry against the target-only runs of the same seeds."""
    wall = float(np.mean([t.timings["total"] for t in traces]))
    ref_wall = float(np.mean([t.timings["total"] for t in reference]))
    images = np.concatenate([t.images for t in traces])
    acc = None
    if classifier is not None:
        acc = class_accuracy(classifier, images, np.tile(class_ids, len(traces)))
    return {"config": config_label(config), "kind": config["kind"], "series": config["series"], "mode": config["mode"],
            "schedule": config.get("schedule", ""), "entry_num": config.get("entry_num"),
            "direction": config.get("direction", ""), "sd_mask": config.get("sd_mask"),
            "gamma": config.get("gamma"), "tau": config.get("tau"), "images": len(images),
            "target_calls": float(np.mean([t.target_calls for t in traces])),
            "draft_calls": float(np.mean([t.draft_calls for t in traces])),
            "wall_s": wall, "speedup": ref_wall / max(wall, 1e-9),
            "token_agreement": float(np.mean([agreement(t, r) for t, r in zip(traces, reference)])),
            "pixel_psnr_db": float(np.mean([metrics.psnr(t.images, r.images) for t, r in zip(traces, reference)])),
            "class_accuracy": acc}


def load_quality_classifier(pair: Pair, stem=CLASSIFIER_STEM):
    """(classifier or None, note): the embedded pair's classifier (`stem`: assets/classifier) when it
    is present and readable; otherwise the note names the file and why."""
    if list(pair.class_names or []) != list(CLASS_NAMES):
        return None, "Class accuracy is measured for the embedded pair only (its classifier knows its 10 classes)."
    stem = Path(stem)
    files = [stem.with_name(stem.name + ext) for ext in (".json", ".safetensors")]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        return None, f"Class accuracy unavailable: {' and '.join(missing)} missing in {stem.parent}."
    try:
        clf = load_classifier(stem)
    except Exception as e:  # a damaged or incompatible file must not stop the sweep
        return None, f"Class accuracy unavailable: the classifier could not be loaded ({e})."
    if clf.config.image_size != pair.vqvae.cfg.image_size:
        return None, "Class accuracy unavailable: the classifier's image size differs from the pair's."
    return clf, ""


def save_bundle(path, runs: dict, inputs: dict, title: str) -> None:
    """One precomputed click in one .npz: the three traces (each a Trace .npz inside) and the inputs."""
    arrays = {k: np.frombuffer(runs[k].to_bytes(), dtype=np.uint8) for k in ("main", "target", "draft")}
    meta = {"title": title, "inputs": inputs}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def load_bundle(path) -> tuple[dict, dict, str]:
    """(runs, inputs, title) of a bundle written by save_bundle; ValueError naming the file when it is
    missing, damaged or not a bundle."""
    try:
        with np.load(path, allow_pickle=False) as z:
            runs = {k: Trace.load(io.BytesIO(z[k].tobytes())) for k in ("main", "target", "draft")}
            meta = json.loads(z["meta"].tobytes().decode())
        inputs, title = meta["inputs"], meta["title"]
        if not isinstance(inputs, dict) or not isinstance(title, str):
            raise TypeError("meta must hold an 'inputs' mapping and a 'title' text")
    except Exception as e:  # zip, JSON, missing keys, damaged traces: all mean "not a readable bundle"
        raise ValueError(f"{path}: not a readable example bundle ({type(e).__name__}: {shown(str(e), 200)})") from e
    return runs, inputs, title


def scan_bundles(folder) -> tuple[list[tuple[str, str]], list[str]]:
    """([(title, path)] of the readable bundles in `folder`, sorted by file name; [why each other
    *.npz was skipped]). Every bundle is read in full, so a damaged one is found here, not on a click."""
    bundles, skipped = [], []
    for p in sorted(Path(folder).glob("*.npz")) if folder and Path(folder).is_dir() else []:
        try:
            title = load_bundle(p)[2]
        except ValueError as e:
            skipped.append(str(e))
            log.warning("example bundle skipped: %s", e)
            continue
        if title in dict(bundles):
            skipped.append(f"{p}: skipped, its title {shown(title)} is already taken by another bundle")
            continue
        bundles.append((title, str(p)))
    return bundles, skipped


def list_bundles(folder) -> list[tuple[str, str]]:
    """[(title, path)] of the readable bundles in `folder`, sorted by file name; damaged files are
    skipped with a warning in the log (`scan_bundles` also says why)."""
    return scan_bundles(folder)[0]


# ---- what a session keeps of a run ------------------------------------------------------------

def view_trace(trace: Trace, sample: int = 0) -> Trace:
    """What the app's views need of a run after it is shown, for one sample: per scale its tokens,
    statuses, draft proposals with p and q, and picture (the scale scrubber), and the recorded shapes
    (the Shapes tab). Calls, rounds, timings and the final images are left out; arrays are copies, so
    the full trace can be freed. About 0.15 MB for the embedded pair's 64 px pictures."""
    pick = lambda a: None if a is None else np.array(a[sample:sample + 1])  # noqa: E731
    scales = [replace(s, tokens=pick(s.tokens), status=pick(s.status), draft_tokens=pick(s.draft_tokens),
                      p_draft=pick(s.p_draft), q_draft=pick(s.q_draft), image=pick(s.image)) for s in trace.scales]
    return Trace(settings=dict(trace.settings), patch_nums=list(trace.patch_nums), scales=scales,
                 shapes=list(trace.shapes))


def view_click(runs: dict) -> dict:
    """What the teaching views need of a click besides `view_trace` of its chosen run: that run's calls,
    rounds and timings, and the calls and timings of the target-only and draft-only runs (None where a
    comparison is the chosen run itself). A few kB: no arrays. `click_runs` puts the click back together.
    The views read the batch's first sample, as `view_trace` keeps it (a click of the app is one image)."""
    def calls_only(t: Trace) -> Trace:
        return Trace(settings=dict(t.settings), patch_nums=list(t.patch_nums), calls=list(t.calls),
                     timings=dict(t.timings))
    main = runs["main"]
    return {"calls": list(main.calls), "rounds": list(main.rounds), "timings": dict(main.timings),
            **{k: None if runs.get(k) is None or runs[k] is main else calls_only(runs[k]) for k in ("target", "draft")}}


def click_runs(kept: Trace | None, click: dict | None) -> dict | None:
    """{"main", "target", "draft"} for the teaching views from a session's `view_trace` and `view_click`
    of the same click (None when either is missing: no run yet, or the session expired)."""
    if kept is None or click is None:
        return None
    main = replace(kept, calls=click["calls"], rounds=click["rounds"], timings=click["timings"])
    return {"main": main, "target": click["target"] or main, "draft": click["draft"] or main}
