"""The speed–quality frontier job (issue 21): every setting of a pair against plain models of its speed.

    python -m sdvar_core.bench frontier --out RUN [--per-class 100] [--max-minutes M] [--threads 1] [--rows ...]
    python -m sdvar_core.bench frontier --out RUN --speed [--repeats 5 --seeds 2]   # on a quiet machine
    python -m sdvar_core.bench frontier --out RUN --report-only --md BENCHMARKS.md --section frontier-tiny \\
        --png docs/frontier.png --json assets/frontier.json

Two measurements, kept apart:
- **Quality** (the default): each row's images are made by `python -m sdvar_core.sample` into
  RUN/rows/<slug>/ (resumable chunk by chunk: a killed run loses at most a chunk; --max-minutes stops
  between chunks), PER_CLASS per class; then class accuracy and FID-tiny against the card's real set
  (1000 held-out procedural images), each with a 95 % bootstrap interval, and ΔFID against the target
  alone from a paired bootstrap (the same resample indices for every row; image j of every row has the
  same class). Cached per row in RUN/rows/<slug>/quality.json.
- **Speed** (--speed): interleaved batch-1 runs of every row (`harness.measure`: repeat r runs every
  row once, rotated by r), speed-up = target-only wall ÷ row wall per repeat, median and range;
  RUN/speed.json (one run: rerun it whole, e.g. once the mid model exists).

Every invocation ends by writing the report from whatever has finished: RUN/report.md, RUN/frontier.json,
RUN/frontier.png (and --md/--section, --png, --json when given). --report-only does only that.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import frontier as fr
from .. import sample
from ..classifier import HELDOUT_SEED, features, predict
from ..config import TINY_DIR
from ..evaluate import load_folder, real_features
from ..metrics import bootstrap_fids, bootstrap_indices, fid_from_features
from ..runtime import machine_name
from ..zoo import load_pair, load_pair_folder, plain_model_folder
from .harness import Row, measure
from .tables import LoadMeter, fmt, markdown_table, write_section

QUALITY_BATCH = 100   # images per generate call of the plain and hand-off rows' quality runs
SPEC_BATCH = 1        # speculative rows: their calls (and a relaxed rule's output) depend on the batch
HANDOFF_ENTRIES = {"D→T": (3, 5, 7), "T→D": (4, 6, 8)}   # sd_mask 3 (VAR's own) at each; T→D e = 8: CoDe's TTTTTTTTDD
MASK_ENTRY = {"D→T": 5, "T→D": 8}   # every sd_mask 0–5 at this entry: with sd_mask 3's, each mask at 2 entry points
EXACT_GAMMAS = (1, 2, 3, "auto")
RELAXED_GAMMA = 3
RELAXED = (("prob", 0.9, 1.0), ("prob", 0.7, 1.0), ("prob", 0.5, 1.0), ("prob", 1.0, 2.0), ("prob", 1.0, 4.0),
           ("top1", 0.5, 1.0))   # (accept, τ, λ): τ alone, λ alone, and the original SDVAR code's top-1 rule
N_REAL = 1000         # the card's real set: N_REAL held-out images (classifier.HELDOUT_SEED)


@dataclass(frozen=True)
class FrontierRow:
    """One setting of the frontier: a generate() mode with its settings, on whose weights, in which batch.

    model: 'pair' (the pair's draft / target) or 'mid' (the plain mid model, run as the target alone);
    batch: images per generate call of the quality run.
    """

    name: str
    family: str
    mode: str
    settings: tuple = ()   # sorted (key, value) pairs of generate() settings
    model: str = "pair"
    batch: int = QUALITY_BATCH

    @property
    def kwargs(self) -> dict:
        return dict(self.settings)

    @property
    def slug(self) -> str:
        """A folder name: ASCII, unique per row."""
        text = self.name.replace("→", "to").replace("γ", "g").replace("τ", "tau").replace("λ", "lam")
        text = "".join(c if c.isalnum() or c in ".-" else "-" for c in text)
        return "-".join(t for t in text.split("-") if t)

    def describe(self) -> str:
        s = self.kwargs
        if "schedule" in s:
            return f"schedule {s['schedule']}, sd_mask {s['sd_mask']}"
        if self.mode == "speculative":
            return f"γ {s['gamma']}, accept {s['accept']}, τ {s['tau']:g}, λ {s['lenience']:g}"
        return {"mid": "the plain mid model alone"}.get(self.model, f"{self.mode} alone")

    def harness_row(self) -> Row:
        return Row(self.name, self.mode, self.settings, self.model)


def _row(name: str, family: str, mode: str, model: str = "pair", batch: int = QUALITY_BATCH, **settings) -> FrontierRow:
    return FrontierRow(name, family, mode, tuple(sorted(settings.items())), model, batch)


def handoff_row(direction: str, e: int, sd_mask: int, K: int = 10) -> FrontierRow:
    """'D→T': 'D'×e + 'T'×(K−e) (the original SDVAR code's entry_num); 'T→D': 'T'×e + 'D'×(K−e)."""
    a, b = direction.split("→")
    return _row(f"{direction} e={e} sd_mask {sd_mask}", direction, "schedule", schedule=a * e + b * (K - e),
                sd_mask=sd_mask)


def spec_row(gamma, accept: str = "prob", tau: float = 1.0, lam: float = 1.0) -> FrontierRow:
    exact = accept == "prob" and tau == 1.0 and lam == 1.0
    name = f"spec γ={gamma} exact" if exact else f"spec γ={gamma} {accept} τ={tau:g} λ={lam:g}"
    return _row(name, "exact" if exact else "relaxed", "speculative", batch=SPEC_BATCH, gamma=gamma, accept=accept,
                tau=tau, lenience=lam)


def frontier_rows(K: int = 10) -> list[FrontierRow]:
    """Every row of issue 21, in the order the quality run makes them (the most useful partial report
    first): the target, the draft and the plain mid model alone; exact γ 2; a T→D and a D→T hand-off
    (sd_mask 3, VAR's own); the relaxed rows (γ 3: τ 0.9/0.7/0.5 at λ 1, λ 2/4 at τ 1, top-1 at τ 0.5);
    exact γ 1, 3 and auto; every other sd_mask at D→T e = 5 and T→D e = 8 (so each mask at two entry
    points, one per direction); then sd_mask 3 at the other entries (D→T e = 3, 7; T→D e = 4, 6)."""
    first = [_row(fr.TARGET_NAME, "plain", "target"), _row("draft only", "plain", "draft"),
             _row(fr.MID_NAME, "plain", "target", model="mid"), spec_row(2),
             handoff_row("T→D", MASK_ENTRY["T→D"], 3, K), handoff_row("D→T", MASK_ENTRY["D→T"], 3, K)]
    first += [spec_row(RELAXED_GAMMA, a, t, lam) for a, t, lam in RELAXED]
    first += [spec_row(g) for g in EXACT_GAMMAS if g != 2]
    masks = [handoff_row(d, e, m, K) for m in range(6) for d, e in MASK_ENTRY.items()]
    entries = [handoff_row(d, e, 3, K) for d, es in HANDOFF_ENTRIES.items() for e in es]
    return first + [r for r in masks + entries if r not in first]


def select_rows(rows: list[FrontierRow], spec: str | None) -> list[FrontierRow]:
    """Rows named in `spec` (comma-separated row names, slugs or families such as 'plain,exact'), in the
    rows' own order; all rows for None. ValueError naming what is unknown."""
    if not spec:
        return list(rows)
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    unknown = [w for w in wanted if not any(w in (r.name, r.slug, r.family) for r in rows)]
    if unknown:
        raise ValueError(f"--rows: unknown {', '.join(map(repr, unknown))}; families: {', '.join(fr.FAMILIES)}; "
                         f"rows: {', '.join(r.name for r in rows)}")
    return [r for r in rows if any(w in (r.name, r.slug, r.family) for w in wanted)]


# ---- quality: the images ------------------------------------------------------------------------------

def row_dir(out: Path, row: FrontierRow) -> Path:
    return Path(out) / "rows" / row.slug


def row_done(out: Path, row: FrontierRow) -> bool:
    """The row's sample folder is complete (sample writes samples.npz once every chunk is done)."""
    return (row_dir(out, row) / "samples.npz").is_file()


def pair_folder(pair: str) -> Path:
    """The folder of the pair named by --pair ('tiny': assets/tiny)."""
    return TINY_DIR if pair == "tiny" else Path(pair)


def row_pair(row: FrontierRow, pair: str, mid, out: Path) -> str:
    """What `sample --pair` gets for the row: the pair itself, or for the mid row a pair folder under
    RUN/pairs/mid whose target is the plain mid model."""
    if row.model == "pair":
        return pair
    return str(plain_model_folder(pair_folder(pair), mid, Path(out) / "pairs" / "mid"))


def mid_available(mid) -> bool:
    return mid is not None and Path(f"{mid}.json").is_file() and Path(f"{mid}.safetensors").is_file()


def sample_argv(row: FrontierRow, pair_arg: str, folder: Path, *, per_class: int, seed: int, precision: str,
                device: str, threads: int | None, max_minutes: float | None) -> list[str]:
    """The `python -m sdvar_core.sample` command line of a row's quality run."""
    argv = ["--pair", pair_arg, "--mode", row.mode, "--per-class", str(per_class), "--batch-size", str(row.batch),
            "--seed", str(seed), "--out", str(folder), "--device", device, "--precision", precision]
    for key, value in row.settings:
        argv += ["--" + key.replace("_", "-"), str(value)]
    if threads:
        argv += ["--threads", str(threads)]
    if max_minutes is not None:
        argv += ["--max-minutes", f"{max_minutes:.4f}"]
    return argv


def run_quality(out: Path, rows: list[FrontierRow], *, pair: str = "tiny", mid=None, per_class: int = 100,
                seed: int = 0, precision: str = "fp32", device: str = "cpu", threads: int | None = None,
                deadline: float | None = None, log: Callable[[str], None] = print) -> dict:
    """Make the images of every row not done yet, in order, until `deadline` (time.perf_counter()).

    The mid row waits while its weights are missing and runs as soon as they appear (checked before every
    row), so a run started before the mid model finished training picks it up. Returns {'made': rows
    finished now, 'skipped': rows left for want of the mid model's weights, 'stopped': True when the
    deadline ended the run with rows left}."""
    out = Path(out)
    made, told = [], set()
    pending = [r for r in rows if not row_done(out, r)]
    log(f"quality: {len(rows) - len(pending)} of {len(rows)} rows done, {len(pending)} to make "
        f"({per_class} images per class, seed {seed}, {precision})")
    while pending:
        ready = [r for r in pending if r.model != "mid" or mid_available(mid)]
        for r in pending:
            if r not in ready and r.name not in told:
                log(f"  {r.name} waits: no weights at {mid}.json / .safetensors yet (the recipe's mid stage makes "
                    f"them); it runs once they exist")
                told.add(r.name)
        if not ready:
            break
        row = ready[0]
        left = None if deadline is None else (deadline - time.perf_counter()) / 60
        if left is not None and left <= 0:
            log(f"  --max-minutes reached: {len(pending)} row(s) left; rerun the same command to go on")
            return {"made": made, "skipped": [r.name for r in pending if r.model == "mid"], "stopped": True}
        log(f"  row {len(rows) - len(pending) + 1}/{len(rows)}: {row.name} ({row.describe()}, batch {row.batch})")
        sample.main(sample_argv(row, row_pair(row, pair, mid, out), row_dir(out, row), per_class=per_class, seed=seed,
                                precision=precision, device=device, threads=threads, max_minutes=left))
        if not row_done(out, row):
            log("  --max-minutes reached inside the row; rerun the same command to go on")
            return {"made": made, "skipped": [r.name for r in pending if r.model == "mid" and r is not row],
                    "stopped": True}
        made.append(row.name)
        pending.remove(row)
    return {"made": made, "skipped": [r.name for r in pending], "stopped": False}


# ---- quality: the numbers -----------------------------------------------------------------------------

def _percentiles(values) -> list[float]:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def row_quality(folder: Path, classifier, real_feats: np.ndarray, indices: np.ndarray) -> dict:
    """Quality of one finished row folder: images, class accuracy and FID-tiny with 95 % intervals over the
    resamples `indices` (n_boot, N) of its images (real set fixed), the FID of every resample (for the
    paired ΔFID), and the mean target / draft calls per image of its generate calls."""
    run = load_folder(folder)
    images, labels = run["images"], run["labels"]
    if indices.shape[1] != len(images):
        raise ValueError(f"{folder}: {len(images)} images, but the resamples are of {indices.shape[1]}")
    feats = features(classifier, images)
    correct = (predict(classifier, images) == labels).astype(np.float64)
    boot = bootstrap_fids(real_feats, feats, indices)
    lines = [json.loads(line) for line in (folder / "stats.jsonl").read_text().splitlines() if line.strip()]
    return {"images": int(len(images)), "fid_tiny": fid_from_features(real_feats, feats), "fid_ci": _percentiles(boot),
            "fid_boot": boot.tolist(), "class_accuracy": float(correct.mean()),
            "accuracy_ci": _percentiles(correct[indices].mean(1)),
            "target_calls": float(np.mean([x["target_calls"] for x in lines])),
            "draft_calls": float(np.mean([x["draft_calls"] for x in lines])),
            "seconds_per_image": float(np.mean([x["seconds"] for x in lines]))}


def evaluate_rows(out: Path, rows: list[FrontierRow], classifier, *, n_boot: int = 200, n_real: int = N_REAL,
                  real_seed: int = HELDOUT_SEED, boot_seed: int = 0) -> dict[str, dict]:
    """Quality of every finished row, cached in its folder's quality.json (recomputed when the samples,
    the resamples or the real set change)."""
    out = Path(out)
    done = [r for r in rows if row_done(out, r)]
    if not done:
        return {}
    real_feats = idx = None
    result = {}
    for row in done:
        folder = row_dir(out, row)
        npz = folder / "samples.npz"
        key = {"samples_bytes": npz.stat().st_size, "samples_mtime": npz.stat().st_mtime_ns, "n_boot": n_boot,
               "n_real": n_real, "real_seed": real_seed, "boot_seed": boot_seed}
        cache = folder / "quality.json"
        if cache.is_file():
            saved = json.loads(cache.read_text())
            if saved.get("key") == key:
                result[row.name] = saved["quality"]
                continue
        if real_feats is None:
            with np.load(npz) as z:
                labels, size = z["labels"], z["arr_0"].shape[1]
            real_feats = real_features(classifier, np.unique(labels), n_real, real_seed, size)
            idx = bootstrap_indices(len(labels), n_boot, boot_seed)
        result[row.name] = row_quality(folder, classifier, real_feats, idx)
        cache.write_text(json.dumps({"key": key, "quality": result[row.name]}) + "\n")
    return result


def paired_dfid(row: dict, target: dict) -> tuple[float, list[float]] | None:
    """(FID-tiny(row) − FID-tiny(target), its 95 % interval from the per-resample differences): the two
    sets were resampled with the same indices. None when their resample counts differ."""
    a, b = np.asarray(row["fid_boot"]), np.asarray(target["fid_boot"])
    if a.shape != b.shape or row["images"] != target["images"]:
        return None
    return row["fid_tiny"] - target["fid_tiny"], _percentiles(a - b)


# ---- speed ------------------------------------------------------------------------------------------------

def speed_plan(num_classes: int, repeats: int, seeds: int) -> list[list[tuple[list[int], int]]]:
    """Repeat r runs `seeds` batch-1 images: class (r·seeds + i) mod num_classes, seed 5000 + r·seeds + i."""
    return [[([(r * seeds + i) % num_classes], 5000 + r * seeds + i) for i in range(seeds)] for r in range(repeats)]


def run_speed(out: Path, rows: list[FrontierRow], *, pair: str = "tiny", mid=None, device: torch.device,
              repeats: int = 5, seeds: int = 2, precision: str = "fp32", deadline: float | None = None,
              log: Callable[[str], None] = print) -> dict:
    """Interleaved batch-1 runs of `rows` (the mid row left out, with a message, when its weights are
    missing); writes RUN/speed.json and returns it: per row the per-repeat speed-ups against the
    target-only row of the same run, the wall median, the calls."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = {r.name for r in rows}
    if fr.TARGET_NAME not in names:
        raise ValueError(f"--speed needs the row {fr.TARGET_NAME!r} (speed-ups are against it)")
    base = load_pair("tiny", device=device) if pair == "tiny" else load_pair_folder(pair, device)
    pairs = {}
    if any(r.model == "mid" for r in rows):
        if mid_available(mid):
            pairs["mid"] = load_pair_folder(row_pair(next(r for r in rows if r.model == "mid"), pair, mid, out), device)
        else:
            log(f"speed: skipped {fr.MID_NAME}: no weights at {mid}.json / .safetensors")
            rows = [r for r in rows if r.model != "mid"]
    meter = LoadMeter()
    t0 = time.perf_counter()
    log(f"speed: {len(rows)} rows × {repeats} repeats × {seeds} batch-1 image(s), interleaved")
    results = measure(base, [r.harness_row() for r in rows], speed_plan(base.num_classes, repeats, seeds),
                      deadline=deadline, settings={"precision": precision}, log=log, meter=meter, pairs=pairs)
    target = results[fr.TARGET_NAME]
    record = {"machine": machine_name(device), "load": str(meter), "repeats": len(target.walls), "seeds": seeds,
              "precision": precision, "seconds": round(time.perf_counter() - t0, 1),
              "date": time.strftime("%Y-%m-%d", time.gmtime()), "rows": {}}
    for name, res in results.items():
        bw, rw = target.walls, res.walls
        record["rows"][name] = {"speedups": [bw[r] / rw[r] for r in sorted(rw) if r in bw and rw[r] > 0],
                                "wall_median_s": statistics.median(rw.values()),
                                "target_calls": res.mean("target_calls"), "draft_calls": res.mean("draft_calls")}
    (out / "speed.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return record


# ---- the report -------------------------------------------------------------------------------------------

def points(rows: list[FrontierRow], quality: dict[str, dict], speed: dict | None) -> list[fr.Point]:
    """One frontier.Point per row from the cached quality and the speed run (None where not measured)."""
    target = quality.get(fr.TARGET_NAME)
    out = []
    for row in rows:
        q = quality.get(row.name)
        s = (speed or {}).get("rows", {}).get(row.name)
        sp = s["speedups"] if s and s["speedups"] else None
        d = paired_dfid(q, target) if q and target else None
        out.append(fr.Point(
            name=row.name, family=row.family, settings=row.describe(),
            speedup=statistics.median(sp) if sp else None, speedup_range=(min(sp), max(sp)) if sp else None,
            fid_tiny=q["fid_tiny"] if q else None, fid_ci=tuple(q["fid_ci"]) if q else None,
            class_accuracy=q["class_accuracy"] if q else None, accuracy_ci=tuple(q["accuracy_ci"]) if q else None,
            dfid=d[0] if d else None, dfid_ci=tuple(d[1]) if d else None,
            target_calls=q["target_calls"] if q else (s["target_calls"] if s else None),
            draft_calls=q["draft_calls"] if q else (s["draft_calls"] if s else None),
            images=q["images"] if q else None))
    return out


def _ci_cell(value, ci, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def table(pts: list[fr.Point], rows: list[FrontierRow]) -> str:
    """The markdown table of every row (— where not measured yet)."""
    curve = fr.plain_curve(pts)
    batch = {r.name: r.batch for r in rows}
    lines = []
    for p in pts:
        a = fr.against(p, curve) if p.family != "plain" else None
        c = fr.claims(p)
        speed = "—" if p.speedup is None else (f"{p.speedup:.2f}" + (f" [{p.speedup_range[0]:.2f}–"
                                                                     f"{p.speedup_range[1]:.2f}]" if p.speedup_range else ""))
        side = "plain" if p.family == "plain" else "—" if a is None else (
            a.side if a.gain is None else f"{a.side} ({a.gain:+.2f} [{a.gain_ci[0]:+.2f}, {a.gain_ci[1]:+.2f}])")
        lines.append([p.name, p.settings, batch[p.name], fmt(p.target_calls, 2), fmt(p.draft_calls, 2), speed,
                      _ci_cell(p.class_accuracy, p.accuracy_ci), _ci_cell(p.fid_tiny, p.fid_ci),
                      "0 (reference)" if p.name == fr.TARGET_NAME and p.fid_tiny is not None else _ci_cell(p.dfid, p.dfid_ci),
                      side, c["calls"], c["speed"], c["fid"], c["all"]])
    return markdown_table(["row", "settings", "quality batch", "target calls / image", "draft calls / image",
                           "speed-up vs target only, median [min–max]", "class accuracy [95 %]", "FID-tiny [95 %]",
                           "ΔFID vs target only [95 %, paired]", "vs plain-models curve (FID gain [95 %])",
                           "target calls ≤ 5", "speed-up 1.3–1.7×", "ΔFID ≤ +0.07", "seed's claims"], lines)


def _names(names: list[str], most: int = 8) -> str:
    return ", ".join(names) if len(names) <= most else f"{len(names)} rows (— in the table)"


def section(pts: list[fr.Point], rows: list[FrontierRow], meta: dict, png: str | None = None) -> str:
    """The report's markdown: verdict first, then the picture, the status, how it was measured, the table."""
    done = [p.name for p in pts if p.fid_tiny is not None]
    left = [p.name for p in pts if p.fid_tiny is None]
    no_speed = [p.name for p in pts if p.speedup is None]
    sp = meta.get("speed")
    head = [f"### Frontier run: {meta['pair']} pair, {meta['per_class']} images per class per row", "",
            "**Verdict** (generated from the rows finished so far by `sdvar_core.frontier.verdict`):", "",
            fr.verdict(pts, len(rows))]
    if png:
        head += [f"![speed-up vs FID-tiny of every row, the plain-models curve and the Pareto front]({png})", ""]
    head += [f"- **Rows with quality: {len(done)} of {len(pts)}**" + (f"; still to make: {_names(left)}" if left else "")
             + ".",
             ("- speed: " + (f"measured on {sp['date']}, {sp['machine']}; {sp['load']}; {sp['repeats']} interleaved "
                             f"repeats × {sp['seeds']} batch-1 image(s) per row, rotated per repeat ({sp['seconds']:.0f} s, "
                             f"{sp['precision']}); speed-up = target-only wall ÷ row wall per repeat, median [min–max]"
                             if sp else "not measured yet (`--speed`)")
              + (f"; no speed yet for: {_names(no_speed)}" if sp and no_speed else "") + "."),
             f"- quality: {meta['per_class']} images per class ({meta['classes']} classes) per row, seed {meta['seed']}, "
             f"the app's default sampling (CFG {meta['cfg']}, top-k {meta['top_k']}, top-p {meta['top_p']}), "
             f"{meta['precision']}; made in batches of {QUALITY_BATCH} (plain models, hand-offs) and {SPEC_BATCH} "
             f"(speculative rows: a round ends at the first scale some image of the batch fails, so their calls — and "
             f"a relaxed rule's output — depend on the batch; the speed runs are batch 1).",
             f"- FID-tiny against {meta['n_real']} real held-out procedural images (the card's real set, seed "
             f"{meta['real_seed']}); 95 % intervals: 2.5 / 97.5 percentiles over {meta['n_boot']} bootstrap resamples of "
             f"the row's images (real set fixed; resamples repeat images, so intervals lean above the point value). "
             f"ΔFID: **paired** bootstrap — every row is resampled with the same indices (image j has the same class "
             f"in every row), and the interval is the percentiles of the per-resample differences. Class accuracy: "
             f"the same resamples.",
             "- vs plain-models curve: the curve joins the plain models (draft, mid, target) at their speed-up and "
             "FID-tiny; gain = curve FID − row FID at the row's speed-up (> 0: better than a plain model as fast), "
             "its interval from the row's and the curve's intervals; 'above' / 'below' when that interval excludes 0.",
             "- the seed's claims (the original SDVAR code's goals, sdvar-seed-analysis.md §7.1): target calls ≤ 5 of "
             "10; speed-up 1.3–1.7× (✓ from 1.3); FID ≤ +0.07 against the target alone, read on FID-tiny: ✓ when the "
             "whole ΔFID interval is ≤ 0.07, ✗ when all of it is above, ? when it holds 0.07. 'hold' only when all "
             "three are ✓.",
             f"- {meta['precision_note']}", ""]
    return "\n".join(head) + "\n" + table(pts, rows) + "\n"


PRECISION_NOTE = ("fp32 throughout. tests/test_precision.py shows bf16 ≡ fp32 in distribution only for the target "
                  "alone and exact γ 2 at scales 0–1 (a small random pair) and, for the embedded pair, per-token "
                  "distributions that bf16 moves by < 10 % of the draft–target gap; it does not cover hand-offs, "
                  "relaxed rules or whole images, so no row here uses bf16.")


def report(out: Path, rows: list[FrontierRow], classifier, *, meta: dict, n_boot: int = 200,
           md: str | None = None, section_name: str = "frontier", png: str | None = None, json_path: str | None = None,
           log: Callable[[str], None] = print) -> list[fr.Point]:
    """Evaluate the finished rows and write the report: RUN/report.md, RUN/frontier.json, RUN/frontier.png,
    and the --md section, --png and --json copies when given. Returns the points."""
    from ..figures import render
    from ..viz_static import plain_frontier

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    quality = evaluate_rows(out, rows, classifier, n_boot=n_boot, n_real=meta["n_real"], real_seed=meta["real_seed"])
    speed_file = out / "speed.json"
    speed = json.loads(speed_file.read_text()) if speed_file.is_file() else None
    meta = {**meta, "n_boot": n_boot, "speed": speed}
    pts = points(rows, quality, speed)
    png_rel = None
    if png and md:
        png_rel = str(Path(png).resolve().relative_to(Path(md).resolve().parent)) \
            if Path(png).resolve().is_relative_to(Path(md).resolve().parent) else png
    text = section(pts, rows, meta, png_rel)
    (out / "report.md").write_text(text)
    asset_meta = {k: v for k, v in meta.items() if k not in ("speed", "precision_note")}
    asset_meta["speed"] = {k: v for k, v in (speed or {}).items() if k != "rows"}
    asset_meta["rows_with_quality"] = sum(p.fid_tiny is not None for p in pts)
    asset_meta["rows"] = len(pts)
    blob = fr.dump(pts, asset_meta)
    (out / "frontier.json").write_text(blob)
    image = render(plain_frontier(pts), "png")
    (out / "frontier.png").write_bytes(image)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(blob)
    if png:
        Path(png).parent.mkdir(parents=True, exist_ok=True)
        Path(png).write_bytes(image)
    if md:
        write_section(md, section_name, text)
    log(f"report: {asset_meta['rows_with_quality']} of {len(pts)} rows with quality, "
        f"{sum(p.speedup is not None for p in pts)} with speed → {out / 'report.md'}")
    return pts


def job_meta(pair: str, per_class: int, seed: int, precision: str, num_classes: int, n_real: int = N_REAL) -> dict:
    """What the report says about how the rows were made (the app's default sampling: `Settings()`)."""
    from ..engine import Settings

    s = Settings()
    return {"pair": "tiny" if pair == "tiny" else Path(pair).name, "per_class": per_class, "classes": num_classes,
            "seed": seed, "precision": precision, "cfg": s.cfg, "top_k": s.top_k, "top_p": s.top_p,
            "n_real": n_real, "real_seed": HELDOUT_SEED, "precision_note": PRECISION_NOTE
            if precision == "fp32" else f"{precision}: see tests/test_precision.py for what it is known to preserve."}
