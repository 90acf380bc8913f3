"""What one click of the explorer runs, its headline numbers, sweeps over settings, precomputed
example bundles, and the pairs the explorer offers.

UI-free: the app (`ui/`) wires these to widgets, `scripts/make_examples.py` uses them to precompute
runs, and notebooks can call them directly.
"""
from __future__ import annotations

import io
import json
import threading
from dataclasses import fields
from pathlib import Path

import numpy as np

from . import metrics
from .checkpoints import load_classifier
from .classifier import class_accuracy
from .config import CLASSIFIER_STEM
from .data import CLASS_NAMES
from .engine import Pair, Settings, generate
from .trace import ACCEPTED, Trace

DIRECTIONS = {"D→T": "draft first, then target: 'D'·e + 'T'·(10−e)",
              "T→D": "target first, then draft: 'T'·e + 'D'·(10−e)"}
MAX_SWEEP_CONFIGS, MAX_SWEEP_SEEDS = 64, 8

# ---- the pairs on offer -----------------------------------------------------------------------

MODELS = {"tiny": "Embedded toy pair (64 px, 10 shapes) — CPU, offline",
          "d16-d20": "VAR d16 → d20 (ImageNet 256 px)",
          "d16-d24": "VAR d16 → d24 (ImageNet 256 px)",
          "d16-d30": "VAR d16 → d30 (ImageNet 256 px)"}
OFFICIAL_DEPTHS = {"d16-d20": (16, 20), "d16-d24": (16, 24), "d16-d30": (16, 30)}


def default_pair_loader(weights_dir: str | None = None):
    """key → Pair: 'tiny' from assets/tiny, the official pairs from weights_dir / $SDVAR_WEIGHTS_DIR / the hub."""
    def load(key: str) -> Pair:
        from . import zoo

        if key == "tiny":
            return zoo.load_pair("tiny")
        draft, target = OFFICIAL_DEPTHS[key]
        return zoo.load_pair(draft_depth=draft, target_depth=target, weights_dir=weights_dir)
    return load


class PairBank:
    """Loaded pairs, shared read-only by every session (models only; results live in the sessions).

    Holds the embedded pair and at most one official pair: loading another official pair drops the
    previous one (a d16 + d30 pair alone is about 9 GB in fp32).
    """

    def __init__(self, loader):
        self.loader = loader
        self.pairs: dict[str, Pair] = {}
        self.notes: dict[str, str] = {}
        self.lock = threading.Lock()

    def get(self, key: str) -> Pair:
        """The pair for `key`; ValueError with a clear message when it cannot be loaded.

        If the embedded pair's weights are missing, an untrained pair with its shapes stands in
        (noted in `notes`).
        """
        if key not in MODELS:
            raise ValueError(f"unknown model {key!r}; choose one of {', '.join(MODELS)}")
        with self.lock:
            if key not in self.pairs:
                if key != "tiny":
                    for other in [k for k in self.pairs if k != "tiny"]:
                        del self.pairs[other]
                try:
                    self.pairs[key] = self.loader(key)
                except (ValueError, ImportError, OSError) as e:
                    if key != "tiny":
                        raise ValueError(f"{MODELS[key]} could not be loaded: {e}") from e
                    from .zoo import random_pair

                    self.pairs[key] = random_pair(name="tiny (random weights)")
                    self.notes[key] = (f"The embedded weights could not be loaded ({e}); an untrained pair with "
                                       "random weights stands in, so pictures are noise.")
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


def click_settings(inputs: dict) -> dict:
    """Settings for engine.generate from the Generate tab's values (keys of DEFAULT_INPUTS; missing ones
    take the defaults), each cast to its `Settings` type. A schedule string, when given, wins over
    entry_num; in speculative mode gamma_auto sets gamma="auto" (and adaptive γ off). Validation is the engine's."""
    v = {**DEFAULT_INPUTS, **inputs}
    defaults = Settings()
    s = {name: type(getattr(defaults, name))(v[name]) for name in CLICK_SETTINGS}
    if v["mode"] == "speculative" and v["gamma_auto"]:
        s.update(gamma="auto", adaptive_gamma=False)
    if v["mode"] == "schedule":
        text = (v["schedule"] or "").strip().upper().replace(" ", "")
        if text:
            s["schedule"] = text
        else:
            s["entry_num"] = int(v["entry_num"])
    return s


def settings_of(trace: Trace) -> Settings:
    """The `Settings` a trace was made with (fields missing from older traces take their defaults)."""
    return Settings(**{f.name: trace.settings[f.name] for f in fields(Settings) if f.name in trace.settings})


def class_index(pair: Pair, class_name, class_id) -> int:
    """The class id from the name picker (pairs with names) or the number box (ImageNet ids)."""
    if pair.class_names:
        if class_name not in pair.class_names:
            raise ValueError(f"unknown class {class_name!r}; choose one of {', '.join(pair.class_names)}")
        return pair.class_names.index(class_name)
    if class_id is None or float(class_id) != int(class_id) or not 0 <= int(class_id) < pair.num_classes:
        raise ValueError(f"class id must be an integer in 0..{pair.num_classes - 1}, got {class_id}")
    return int(class_id)


def run_click(pair: Pair, mode: str, class_id: int, seed: int, settings: dict, on_progress=None) -> dict:
    """The runs behind one click: the chosen mode, then target only and draft only with the same seed.

    The chosen run decodes its picture after every scale; the comparisons decode only the final picture.
    A comparison equal to the chosen mode reuses that run. Returns {"main", "target", "draft": Trace}.
    """
    if seed is None or isinstance(seed, float) and not seed.is_integer():
        raise ValueError(f"seed must be an integer, got {seed}")
    seed = int(seed)
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in 0..2^63-1, got {seed}")
    jobs = [("main", mode, settings, True)] + [(m, m, settings, False) for m in ("target", "draft") if m != mode]
    K = pair.layout.num_scales
    runs = {}
    for i, (key, m, s, progressive) in enumerate(jobs):
        def on_scale(done, total, i=i, m=m):
            if on_progress is not None:
                on_progress(i * K + done, len(jobs) * K, f"{m}: scale {done}/{total}")
        runs[key] = generate(pair, m, [class_id], seed=seed, on_scale=on_scale, progressive=progressive, **s).trace
    runs.setdefault("target", runs["main"])
    runs.setdefault("draft", runs["main"])
    return runs


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
           "verified_tokens": int(sum(s.status.size for s in drafted)),
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
    if isinstance(entry_num, bool) or entry_num is None or int(entry_num) != entry_num or not 1 <= entry_num < K:
        raise ValueError(f"entry_num must be an integer in 1..{K - 1} (a hand-off needs both models), got {entry_num}")
    if isinstance(seed, bool) or seed is None or int(seed) != seed or not 0 <= int(seed) < 2**63:
        raise ValueError(f"seed must be an integer in 0..2^63-1, got {seed}")
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
    """The runs of a sweep: target-only and draft-only baselines first, then one entry per setting."""
    configs = [dict(kind="baseline", series="target only", mode="target"),
               dict(kind="baseline", series="draft only", mode="draft")]
    if kind == "schedule":
        if not entry_nums or not directions or not sd_masks:
            raise ValueError("a schedule sweep needs at least one entry_num, one direction and one sd_mask")
        for d in directions:
            if d not in DIRECTIONS:
                raise ValueError(f"direction must be one of {list(DIRECTIONS)}, got {d!r}")
            first, second = ("D", "T") if d == "D→T" else ("T", "D")
            for m in sd_masks:
                for e in sorted(int(e) for e in entry_nums):
                    if not 0 <= e <= num_scales:
                        raise ValueError(f"entry_num must be in 0..{num_scales}, got {e}")
                    schedule = first * e + second * (num_scales - e)
                    if len(set(schedule)) == 1:   # no hand-off: that is a baseline
                        continue
                    configs.append(dict(kind="schedule", series=f"{d}, sd_mask {int(m)}", mode="schedule",
                                        schedule=schedule, sd_mask=int(m), entry_num=e, direction=d))
    elif kind == "speculative":
        if not gammas or not taus:
            raise ValueError("a speculative sweep needs at least one γ and one τ")
        for t in sorted((float(t) for t in taus), reverse=True):
            for g in sorted(int(g) for g in gammas):
                configs.append(dict(kind="speculative", series=f"τ = {t:g}", mode="speculative", gamma=g, tau=t))
    else:
        raise ValueError(f"sweep kind must be 'schedule' or 'speculative', got {kind!r}")
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
    """'0, 1, 5' or '0-3' → [0, 1, 5] / [0, 1, 2, 3]."""
    seeds = []
    for part in str(text).replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            lo, _, hi = part.partition("-") if "-" in part[1:] else (part, "", part)
            lo, hi = int(lo), int(hi)
        except ValueError:
            raise ValueError(f"seeds must be integers like '0, 1, 2' or '0-3', got {part!r}") from None
        if hi - lo >= MAX_SWEEP_SEEDS:
            raise ValueError(f"at most {MAX_SWEEP_SEEDS} seeds per sweep, got the range {part}")
        seeds += range(lo, hi + 1)
    if not seeds:
        raise ValueError("give at least one seed, e.g. '0, 1'")
    if min(seeds) < 0:
        raise ValueError("seeds must be >= 0")
    if len(seeds) > MAX_SWEEP_SEEDS:
        raise ValueError(f"at most {MAX_SWEEP_SEEDS} seeds per sweep, got {len(seeds)}")
    return list(dict.fromkeys(seeds))


def run_config(pair: Pair, config: dict, seeds: list[int], class_ids: list[int], base: dict) -> list[Trace]:
    """One sweep entry: a batch of `class_ids` for every seed (final pictures only)."""
    s = {**base, **{k: config[k] for k in ("schedule", "sd_mask", "gamma", "tau") if k in config}}
    return [generate(pair, config["mode"], class_ids, seed=seed, progressive=False, **s).trace for seed in seeds]


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


def load_quality_classifier(pair: Pair):
    """(classifier or None, note): the embedded pair's classifier when assets/classifier is present."""
    if list(pair.class_names or []) != list(CLASS_NAMES):
        return None, "Class accuracy is measured for the embedded pair only (its classifier knows its 10 classes)."
    files = [CLASSIFIER_STEM.with_name(CLASSIFIER_STEM.name + ext) for ext in (".json", ".safetensors")]
    if not all(f.is_file() for f in files):
        return None, "Class accuracy unavailable: the classifier (assets/classifier.*) is not in this checkout."
    try:
        clf = load_classifier(CLASSIFIER_STEM)
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
    """(runs, inputs, title) of a bundle written by save_bundle."""
    with np.load(path, allow_pickle=False) as z:
        runs = {k: Trace.load(io.BytesIO(z[k].tobytes())) for k in ("main", "target", "draft")}
        meta = json.loads(z["meta"].tobytes().decode())
    return runs, meta["inputs"], meta["title"]


def list_bundles(folder) -> list[tuple[str, str]]:
    """[(title, path)] of the bundles in `folder`, sorted by file name; unreadable files are skipped."""
    out = []
    for p in sorted(Path(folder).glob("*.npz")) if folder and Path(folder).is_dir() else []:
        try:
            with np.load(p, allow_pickle=False) as z:
                out.append((json.loads(z["meta"].tobytes().decode())["title"], str(p)))
        except (OSError, KeyError, ValueError):
            continue
    return out
