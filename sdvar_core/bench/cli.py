"""Benchmarks: single-model speed, the mode table, the quality report, the cost model, GPU floors.

Every ratio is taken between rows of one run whose repeats are interleaved: repeat r runs
every row once, in an order rotated by r, so a slow phase of a shared machine hits all rows
alike. Times are wall-clock medians over repeats with their [min–max]; outputs name the
machine and the load average (os.getloadavg, 1 minute) seen during the run.

Sub-commands (`python -m sdvar_core.bench <cmd> --help` lists every flag):

  generate  a random-weight official-size VAR (--preset var-d16) with the official VQ-VAE makes
            CFG images end to end; transformer loop and 256x256 decode timed apart
            (Trace.timings, progressive=False); median of --repeats; CPU goals checked for d16.
  modes     the mode table of a pair (--pair tiny|random): target only, draft only, hand-off
            schedules 'D'*e+'T'*(10-e) and 'T'*e+'D'*(10-e) for e = 0..10, sd_masks at e = 5,
            speculative exact (γ 1..4) and relaxed; target/draft calls, wall time, speed-up over
            the target-only row of the same run, mean acceptance, engine overhead.
  report    the mode table with quality (class accuracy, FID-tiny against real procedural
            images, --images-per-class per row), whether the original SDVAR code's claims
            hold, and the cost model's predicted speed-up against the measured one; markdown,
            optionally written into a marked section of a file (--out FILE --section NAME).
  profile   cProfile of one row: where the engine's own overhead goes.
  floor     weight-read and FLOP floors against measured per-image times of random official
            VARs (bandwidth from a large device copy, rate from a large matrix product).
  patterns  official-size random d16→d30: the engine runs every mode's call pattern and the
            table sums its transformer calls. Random weights accept nothing meaningful, so
            speculative rows force acceptance: each drafted scale passes with probability
            --accept (exact rule) through generate(accept_override=…), and the calls are the
            engine's own for that outcome. Sampling, acceptance tests and VQ-VAE work are not
            in these times.
  gpu       floor + patterns + the embedded pair's modes table under one deadline
            (scripts/gpu_bench.sh runs it once on a lent GPU; --small shrinks it for a CPU try).
  planner   target only vs exact speculative with fixed γ (--gammas) vs gamma="auto", interleaved at
            each batch size (--batches), with the goals of issue 12 (auto ≥ 0.95× target only,
            ≤ 5 % slower than the best fixed γ).
  predict   the γ planner on call patterns already measured: reads `patterns` tables (marked
            sections of a file, e.g. the GPU sections of BENCHMARKS.md) and prints what auto would
            choose and the speed-up it predicts per forced acceptance, beside the fixed-γ rows.
  frontier  issue 21: every setting of the pair against plain models of its speed. Quality
            (≥ 1000 images per row through `sample`, resumable, --max-minutes) by default; --speed
            measures interleaved batch-1 speed-ups apart; every call ends with the report (verdict,
            table, picture, JSON) from what has finished; --report-only writes only that.
  official  ours vs the official VAR code's own loop (`autoregressive_infer_cfg`, from a checkout
            given by --var-repo) on the same random official-size weights, fp32 and bf16.

On a shared 2-core CPU give small models --threads 1: two intra-op threads wait for each other
when other processes hold the cores.

Examples:
  python -m sdvar_core.bench generate --preset var-d16 --repeats 3
  python -m sdvar_core.bench modes --pair tiny --threads 1 --seeds 2 --repeats 5 --out BENCHMARKS.md --section modes-cpu
  python -m sdvar_core.bench report --images-per-class 100 --max-minutes 50 --out BENCHMARKS.md --section report-cpu
  bash scripts/gpu_bench.sh    # the device checks, once, on a lent GPU (results under $OUT)
  python -m sdvar_core.bench planner --pair tiny --threads 1 --cfg 2.5 --top-k 3 --batches 1,8,32 --repeats 5
  python -m sdvar_core.bench predict --from BENCHMARKS.md --sections gpu-patterns-b1,gpu-patterns-b16
  python -m sdvar_core.bench official --var-repo ../VAR --preset var-d16 --repeats 3
  python -m sdvar_core.bench frontier --out runs/frontier --threads 1 --max-minutes 600
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ..checkpoints import load_classifier
from ..config import CLASSIFIER_STEM, MID_STEM, preset
from ..runtime import PRECISIONS, check_precision, machine_name, resolve_device
from .floors import run_floor, run_generate, run_profile
from .harness import TARGET_ROW, table_rows
from .pairs import get_pair, random_official_pair
from .official import run_official
from .patterns import run_patterns
from .plans import predict_patterns, run_planner
from .report import build_report, run_modes
from .tables import emit


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _int_list(text: str) -> list[int]:
    """'1,8' → [1, 8]: a comma-separated list of positive integers."""
    values = [_positive_int(t) for t in text.split(",") if t.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _prob_list(text: str) -> list[float]:
    out = []
    for t in text.split(","):
        try:
            v = float(t)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected probabilities in [0, 1], got {t!r}") from None
        if not 0 <= v <= 1:
            raise argparse.ArgumentTypeError(f"expected probabilities in [0, 1], got {t!r}")
        out.append(v)
    return out


def _preset_list(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    for n in names:
        try:
            preset(n)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    if not names:
        raise argparse.ArgumentTypeError("expected at least one preset name")
    return names


def _common(p: argparse.ArgumentParser, out: bool = True) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    p.add_argument("--threads", type=_positive_int, help="CPU intra-op threads (default: torch's)")
    if out:
        p.add_argument("--out", help="also write the markdown into this file (a marked section; created if absent)")
        p.add_argument("--section", help="name of the marked section in --out (default: the sub-command)")


def _precision(args, device: torch.device) -> str:
    check_precision(device, args.precision)   # bf16: CUDA or a CPU with native bf16; fp16: CUDA
    return args.precision


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sdvar_core.bench", description=__doc__.split("\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("generate", help="one official-size model end to end (issue 2)")
    p.add_argument("--preset", default="var-d16", help="var-d16, var-d20, var-d24, var-d30 or any var-dN")
    p.add_argument("--batch", type=_positive_int, default=1)
    p.add_argument("--repeats", type=_positive_int, default=3)
    p.add_argument("--warmup", type=int, help="untimed runs first (default: 1 on CUDA, 0 on CPU)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    _common(p)

    for name, helptext in (("modes", "the mode table of a pair (issue 3)"), ("report", "mode table with quality and the cost model (issue 6)")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--pair", default="tiny", help="tiny (assets/tiny) or random (random weights, embedded shapes)")
        p.add_argument("--precision", choices=PRECISIONS, default="fp32")
        _common(p)
    sub.choices["modes"].add_argument("--batch", type=_positive_int, default=1, help="images per generate call")
    sub.choices["modes"].add_argument("--seeds", type=_positive_int, default=2, help="generate calls per row and repeat")
    sub.choices["modes"].add_argument("--repeats", type=_positive_int, default=3)
    rp = sub.choices["report"]
    rp.add_argument("--images-per-class", type=_positive_int, default=100,
                    help="images per class per row (≥ 100 for the final report: 1000 per row)")
    rp.add_argument("--batch", type=_positive_int, default=10, help="images per generate call (one chunk = one repeat)")
    rp.add_argument("--classifier", default=str(CLASSIFIER_STEM), help="path stem of the FID-tiny classifier")
    rp.add_argument("--n-boot", type=_positive_int, default=50, help="bootstrap resamples for δ")
    rp.add_argument("--max-minutes", type=float, help="start no new chunk after this many minutes (the report "
                    "then covers the chunks done)")

    p = sub.add_parser("profile", help="cProfile of one row")
    p.add_argument("--pair", default="tiny", help="tiny or random")
    p.add_argument("--row", default=TARGET_ROW, help="a row name of the modes table")
    p.add_argument("--batch", type=_positive_int, default=1)
    p.add_argument("--top", type=_positive_int, default=25)
    _common(p, out=False)

    p = sub.add_parser("floor", help="per-image times against the weight-read and FLOP floors")
    p.add_argument("--presets", type=_preset_list, default=["var-d16", "var-d30"])
    p.add_argument("--batches", type=_int_list, default=[1, 8])
    p.add_argument("--repeats", type=_positive_int, default=3)
    p.add_argument("--precision", choices=PRECISIONS, default="bf16")
    p.add_argument("--small", action="store_true", help="tiny VQ-VAE and its codebook (a quick CPU try)")
    _common(p)

    p = sub.add_parser("patterns", help="official-size call patterns of every mode, forced acceptance")
    p.add_argument("--draft", default="var-d16")
    p.add_argument("--target", default="var-d30")
    p.add_argument("--batches", type=_int_list, default=[1, 16])
    p.add_argument("--repeats", type=_positive_int, default=3)
    p.add_argument("--gammas", type=_int_list, default=[1, 2, 3, 4])
    p.add_argument("--accept", type=_prob_list, default=[0.0, 0.5, 0.8, 1.0], help="forced per-scale pass probabilities")
    p.add_argument("--precision", choices=PRECISIONS, default="bf16")
    p.add_argument("--small", action="store_true", help="tiny codebook (a quick CPU try, with --precision fp32)")
    _common(p)

    p = sub.add_parser("planner", help="target only vs fixed γ vs gamma='auto' at several batch sizes (issue 12)")
    p.add_argument("--pair", default="tiny", help="tiny (assets/tiny) or random (random weights, embedded shapes)")
    p.add_argument("--batches", type=_int_list, default=[1, 8, 32])
    p.add_argument("--gammas", type=_int_list, default=[1, 2, 3, 4], help="fixed γ rows")
    p.add_argument("--repeats", type=_positive_int, default=5)
    p.add_argument("--seeds", type=_positive_int, default=1, help="generate calls per row and repeat")
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--max-minutes", type=float, help="start no new repeat after this many minutes (split over the batches)")
    _common(p)

    p = sub.add_parser("predict", help="the γ planner's prediction for measured call patterns (issue 12)")
    p.add_argument("--from", dest="source", default="BENCHMARKS.md", help="a markdown file with `patterns` sections")
    p.add_argument("--sections", default="gpu-patterns-b1,gpu-patterns-b16", help="marked sections to read")
    _common(p)

    p = sub.add_parser("official", help="ours vs the official VAR loop, end to end, fp32 and bf16 (issue 12)")
    p.add_argument("--var-repo", required=True, help="a checkout of github.com/FoundationVision/VAR")
    p.add_argument("--preset", default="var-d16")
    p.add_argument("--batch", type=_positive_int, default=1)
    p.add_argument("--repeats", type=_positive_int, default=3)
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated")
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--top-k", type=int, default=900)
    p.add_argument("--top-p", type=float, default=0.96)
    _common(p)

    p = sub.add_parser("frontier", help="the pair against plain models: quality (default) or --speed (issue 21)")
    p.add_argument("--out", required=True, help="the run folder (rows/, speed.json, report.md; rerun to resume)")
    p.add_argument("--pair", default="tiny", help="tiny (assets/tiny) or a folder with vqvae/draft/target")
    p.add_argument("--mid", default=str(MID_STEM), help="path stem of the plain mid model (.json + .safetensors); "
                   "its row is skipped with a message while they are missing")
    p.add_argument("--rows", help="comma-separated row names, slugs or families (plain, D→T, T→D, exact, relaxed)")
    p.add_argument("--per-class", type=_positive_int, default=100, help="images per class per row (quality)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--max-minutes", type=float, help="start no new chunk (quality) or repeat (speed) after this long")
    p.add_argument("--speed", action="store_true", help="measure the speed-ups (interleaved batch-1 runs) instead")
    p.add_argument("--repeats", type=_positive_int, default=5, help="--speed: interleaved repeats")
    p.add_argument("--seeds", type=_positive_int, default=2, help="--speed: batch-1 images per row and repeat")
    p.add_argument("--report-only", action="store_true", help="only write the report from what has finished")
    p.add_argument("--classifier", default=str(CLASSIFIER_STEM), help="path stem of the FID-tiny classifier")
    p.add_argument("--n-boot", type=_positive_int, default=200, help="bootstrap resamples for the intervals")
    p.add_argument("--real", type=_positive_int, default=1000, help="real held-out images for FID-tiny (the card's: 1000)")
    p.add_argument("--md", help="also write the report into this markdown file (a marked section)")
    p.add_argument("--section", default="frontier-tiny", help="name of the marked section in --md")
    p.add_argument("--png", help="also write the picture here (e.g. docs/frontier.png)")
    p.add_argument("--json", help="also write the points here (e.g. assets/frontier.json, the Compare tab's)")
    _common(p, out=False)

    p = sub.add_parser("gpu", help="floor + patterns + the embedded pair's modes under one deadline (gpu_bench.sh)")
    p.add_argument("--deadline-s", type=float, default=180.0, help="seconds for everything (sections get 30/45/25 %%)")
    p.add_argument("--small", action="store_true", help="shrink every size (a CPU try of the script)")
    _common(p)
    return parser


# ---- the sub-commands: each takes (args, device, out, section) --------------------------------------


def cmd_generate(args, device, out, section) -> None:
    preset(args.preset)
    warmup = args.warmup if args.warmup is not None else (1 if device.type == "cuda" else 0)
    if warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {warmup}")
    emit(run_generate(args.preset, device, batch=args.batch, repeats=args.repeats,
                      precision=_precision(args, device), warmup=warmup), out, section)


def cmd_modes(args, device, out, section) -> None:
    pair = get_pair(args.pair, device)
    emit(run_modes(pair, device, batch=args.batch, seeds=args.seeds, repeats=args.repeats,
                   settings={"precision": _precision(args, device)}), out, section)


def cmd_report(args, device, out, section) -> None:
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise ValueError(f"--max-minutes must be > 0, got {args.max_minutes}")
    stem = Path(args.classifier)
    if not stem.with_name(stem.name + ".json").is_file():
        raise ValueError(f"classifier not found: {stem}.json / .safetensors "
                         f"(train it: python -m sdvar_core.metrics train --out {stem})")
    pair = get_pair(args.pair, device)
    clf = load_classifier(stem, device=str(device))
    deadline = time.perf_counter() + 60 * args.max_minutes if args.max_minutes else None
    emit(build_report(pair, clf, device, images_per_class=args.images_per_class, batch=args.batch,
                      n_boot=args.n_boot, deadline=deadline, settings={"precision": _precision(args, device)}),
         out, section)


def cmd_profile(args, device, out, section) -> None:
    pair = get_pair(args.pair, device)
    rows = {r.name: r for r in table_rows("modes", pair.layout.num_scales)}
    if args.row not in rows:
        raise ValueError(f"unknown row {args.row!r}; rows: {', '.join(rows)}")
    print(run_profile(pair, rows[args.row], args.batch, args.top))


def cmd_floor(args, device, out, section) -> None:
    emit(run_floor(args.presets, args.batches, device, precision=_precision(args, device), repeats=args.repeats,
                   small=args.small), out, section)


def cmd_patterns(args, device, out, section) -> None:
    for n in (args.draft, args.target):
        preset(n)
    precision = _precision(args, device)
    pair = random_official_pair(args.draft, args.target, device, args.small)
    for b in args.batches:
        emit(run_patterns(pair, device, batch=b, repeats=args.repeats, precision=precision, gammas=args.gammas,
                          accepts=args.accept, auto=True), out, f"{section}-b{b}")


def cmd_gpu(args, device, out, section) -> None:
    """The three device checks of scripts/gpu_bench.sh, each under its share of the deadline."""
    if args.deadline_s <= 0:
        raise ValueError(f"--deadline-s must be > 0, got {args.deadline_s}")
    small = args.small
    t0 = time.perf_counter()
    ends = [t0 + f * args.deadline_s for f in (0.30, 0.75, 1.0)]
    prec = "bf16" if device.type == "cuda" else "fp32"
    presets = ["var-d1", "var-d2"] if small else ["var-d16", "var-d30"]
    print(f"[gpu] floors ({time.perf_counter() - t0:.0f} s)", flush=True)
    emit(run_floor(presets, [1, 2] if small else [1, 8], device, precision=prec, repeats=1 if small else 3,
                   small=small, deadline=ends[0]), out, "gpu-floor")
    pair = random_official_pair(presets[0], presets[1], device, small)
    batches = [1, 2] if small else [1, 16]
    for i, b in enumerate(batches):
        print(f"[gpu] call patterns, batch {b} ({time.perf_counter() - t0:.0f} s)", flush=True)
        end = time.perf_counter() + (ends[1] - time.perf_counter()) / (len(batches) - i)
        emit(run_patterns(pair, device, batch=b, repeats=1 if small else 5, precision=prec,
                          gammas=[1, 2, 3, 4], accepts=[0.0, 0.5, 0.8, 1.0], deadline=end, auto=True), out,
             f"gpu-patterns-b{b}")
    del pair
    if device.type == "cuda":
        torch.cuda.empty_cache()
    print(f"[gpu] embedded pair modes ({time.perf_counter() - t0:.0f} s)", flush=True)
    try:
        pair = get_pair("random" if small else "tiny", device)
    except ValueError as e:
        emit(f"## Mode table on {machine_name(device)}\n\nskipped: {e}\n", out, "gpu-modes")
        return
    emit(run_modes(pair, device, batch=1, seeds=1 if small else 2, repeats=1 if small else 5, deadline=ends[2],
                   settings={"precision": "fp32"}, title="Mode table (GPU, fp32)"), out, "gpu-modes")
    print(f"[gpu] done in {time.perf_counter() - t0:.0f} s", flush=True)


def cmd_planner(args, device, out, section) -> None:
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise ValueError(f"--max-minutes must be > 0, got {args.max_minutes}")
    pair = get_pair(args.pair, device)
    settings = {"cfg": args.cfg, "top_k": args.top_k, "top_p": args.top_p, "precision": _precision(args, device)}
    deadline = time.perf_counter() + 60 * args.max_minutes if args.max_minutes else None
    emit(run_planner(pair, device, batches=args.batches, repeats=args.repeats, seeds=args.seeds, gammas=args.gammas,
                     settings=settings, deadline=deadline), out, section)


def cmd_predict(args, device, out, section) -> None:
    path = Path(args.source)
    if not path.is_file():
        raise ValueError(f"--from {path}: no such file")
    text = path.read_text()
    parts = []
    for name in [s.strip() for s in args.sections.split(",") if s.strip()]:
        begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
        if begin not in text or end not in text:
            raise ValueError(f"--from {path}: no section {name!r}")
        body = text.split(begin, 1)[1].split(end, 1)[0]
        title = next((ln.lstrip("# ").strip() for ln in body.splitlines() if ln.startswith("#")), name)
        parts.append(predict_patterns(body, title))
    emit("### γ planner on the measured call patterns\n\n" + "\n".join(parts), out, section)


def cmd_official(args, device, out, section) -> None:
    preset(args.preset)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    emit(run_official(args.var_repo, args.preset, device, batch=args.batch, repeats=args.repeats,
                      precisions=precisions, cfg=args.cfg, top_k=args.top_k, top_p=args.top_p), out, section)


def cmd_frontier(args, device, out, section) -> None:
    """Quality rows (default) or the speed run, then the report from whatever has finished."""
    from . import frontier as job
    from ..sample import pair_num_classes

    if args.max_minutes is not None and not args.max_minutes > 0:
        raise ValueError(f"--max-minutes must be > 0, got {args.max_minutes}")
    if args.speed and args.report_only:
        raise ValueError("--speed and --report-only exclude each other")
    stem = Path(args.classifier)
    if not stem.with_name(stem.name + ".json").is_file():
        raise ValueError(f"classifier not found: {stem}.json (train it: python -m sdvar_core.metrics train --out {stem})")
    num_classes = pair_num_classes(args.pair)
    rows = job.select_rows(job.frontier_rows(), args.rows)
    deadline = time.perf_counter() + 60 * args.max_minutes if args.max_minutes else None
    run = Path(args.out)
    precision = _precision(args, device)
    if args.speed:
        job.run_speed(run, rows, pair=args.pair, mid=args.mid, device=device, repeats=args.repeats, seeds=args.seeds,
                      precision=precision, deadline=deadline)
    elif not args.report_only:
        job.run_quality(run, rows, pair=args.pair, mid=args.mid, per_class=args.per_class, seed=args.seed,
                        precision=precision, device=device.type, threads=args.threads, deadline=deadline)
    job.report(run, job.frontier_rows(), load_classifier(stem, device=str(device)),
               meta=job.job_meta(args.pair, args.per_class, args.seed, precision, num_classes, args.real), n_boot=args.n_boot,
               md=args.md, section_name=args.section, png=args.png, json_path=args.json)


COMMANDS = {"generate": cmd_generate, "modes": cmd_modes, "report": cmd_report, "profile": cmd_profile,
            "floor": cmd_floor, "patterns": cmd_patterns, "gpu": cmd_gpu, "planner": cmd_planner,
            "predict": cmd_predict, "official": cmd_official, "frontier": cmd_frontier}


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        device = resolve_device(args.device)
        if args.threads:
            torch.set_num_threads(args.threads)
        with torch.no_grad():
            COMMANDS[args.cmd](args, device, getattr(args, "out", None), getattr(args, "section", None) or args.cmd)
    except ValueError as e:
        sys.exit(f"error: {e}")
