"""Figures for slides: every main figure of the explorer as PNG, SVG and PDF (matplotlib, `viz_static`),
from the app (a zip) or the command line:

    python -m sdvar_core.figures --trace run.npz --out figs/ [--formats png,svg,pdf] [--sweep sweep.csv]
                                 [--scale K] [--round R] [--mask-rule R] [--entry-num E]

--trace takes a trace saved with `Trace.save` or a precomputed example bundle (`assets/examples/*.npz`:
the run with its target-only and draft-only twins, which the cost what-if needs); --sweep a sweep CSV
downloaded from the Compare tab (the frontier). Also installed as `sdvar-figures`.
"""
from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from . import viz_static
from .config import ScaleLayout
from .trace import Trace

FORMATS = ("png", "svg", "pdf")
DPI = 200
DEFAULT_MASK = (1, 4)   # the Masks tab's defaults: sd_mask 1, hand-off at scale 5


def check_formats(formats) -> tuple[str, ...]:
    """('png', 'svg', …) from a list or a 'png,svg' string; ValueError naming the field."""
    items = [f.strip().lower() for f in (formats.split(",") if isinstance(formats, str) else formats or [])]
    items = [f for f in items if f]
    bad = [f for f in items if f not in FORMATS]
    if not items or bad:
        raise ValueError(f"formats must be one or more of {', '.join(FORMATS)}, got {', '.join(bad) or 'none'}")
    return tuple(dict.fromkeys(items))


def load_runs(path) -> dict:
    """{"main": Trace, "target"?, "draft"?} from a Trace .npz or an example bundle .npz."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"trace file not found: {path}")
    with np.load(path, allow_pickle=False) as z:
        bundle = "main" in z.files
    if bundle:
        from .explore import load_bundle

        return load_bundle(path)[0]
    return {"main": Trace.load(path)}


def default_mask(num_scales: int) -> tuple[int, int]:
    """DEFAULT_MASK on a layout of `num_scales` scales: the hand-off scale clamped to the last but one."""
    return DEFAULT_MASK[0], max(0, min(DEFAULT_MASK[1], num_scales - 2))


def handoff_of(trace: Trace) -> tuple[int, int] | None:
    """(sd_mask, current scale) of a run's first hand-off prefill, if it has one."""
    for c in trace.calls:
        if c.kind == "prefill":
            return (c.mask_rule if c.mask_rule is not None else 3), c.scales[-1]
    return None


def static_figures(runs: dict | None = None, *, scale: int | None = None, round_index: int | None = None,
                   mask: tuple[int, int] | None = None, gallery: dict | None = None, sweep: pd.DataFrame | None = None,
                   quality: str | None = None, whatif: dict | None = None, pyramid=None, log=None) -> tuple[dict, dict]:
    """({name: matplotlib Figure}, {name: text}) of everything the inputs allow.

    runs: a click ({"main"[, "target", "draft"]}); scale (0-based, default the last) for the token grid;
    round_index (0-based) highlights a round on the timeline and adds its story; mask (rule, current) for
    the mask raster (default: the run's hand-off, else sd_mask 1 at scale 5); gallery: the six-masks runs
    (`explore.gallery_summary`); sweep: a sweep table (the frontier, `quality` its y); whatif: the cost
    what-if's knobs (`economics.cost_whatif`); pyramid: a picture's token pyramid (`picture.Pyramid`, the
    "Your picture" tab). Figures a run cannot give (the what-if of a run without
    both models' calls) are left out, with a line in texts["notes"].
    """
    from . import economics, story

    figs, texts, notes = {}, {}, []
    main = runs["main"] if runs else None
    layout = ScaleLayout(tuple(main.patch_nums)) if main is not None else ScaleLayout()
    if main is not None:
        k = len(main.scales) - 1 if scale is None else int(scale)
        figs[f"token-grid-scale{k + 1}"] = viz_static.token_grid(main, k)
        figs["acceptance"] = viz_static.acceptance(main)
        highlight = None
        if round_index is not None and main.rounds:
            highlight = (*story.round_span(main, round_index), f"round {round_index + 1}")
            texts["round-story.md"] = story.round_story(main, round_index)
        reference = runs.get("target")
        figs["timeline"] = viz_static.timeline(main, reference if reference is not main else None, highlight)
        figs["why-chart"] = viz_static.why(main)
        texts["why.md"] = story.why_text(main)
        try:
            figs["cost-whatif"] = viz_static.whatif(economics.cost_whatif(runs, **(whatif or {})))
        except ValueError as e:
            notes.append(f"cost what-if left out: {e}")
    rule, current = mask or (handoff_of(main) if main is not None else None) or default_mask(layout.num_scales)
    figs["mask-raster"] = viz_static.mask_raster(rule, current, layout)
    figs["six-masks"] = viz_static.six_masks(gallery["entry_num"] if gallery else current, layout, gallery)
    if pyramid is not None:
        figs["pyramid"] = viz_static.pyramid(pyramid)
    if sweep is not None and len(sweep):
        figs["frontier"] = viz_static.frontier(sweep, quality)
    if notes:
        texts["notes.txt"] = "\n".join(notes)
        if log:
            for n in notes:
                log(n)
    return figs, texts


def render(fig, fmt: str) -> bytes:
    """One figure as the bytes of a PNG (at DPI), SVG or PDF file."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=DPI if fmt == "png" else None, facecolor="white",
                metadata={"Date": None} if fmt in ("svg", "pdf") else None)
    return buf.getvalue()


def export_zip(figs: dict, formats=FORMATS, texts: dict | None = None, on_file=None) -> bytes:
    """A zip holding every figure in every format (name.png, name.svg, name.pdf) and the texts."""
    formats = check_formats(formats)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        total = len(figs) * len(formats)
        for i, (name, fig) in enumerate(figs.items()):
            for j, fmt in enumerate(formats):
                if on_file is not None:
                    on_file(i * len(formats) + j, total, f"{name}.{fmt}")
                z.writestr(f"{name}.{fmt}", render(fig, fmt))
        for name, text in (texts or {}).items():
            z.writestr(name, text)
    return buf.getvalue()


def write_files(figs: dict, out, formats=FORMATS, texts: dict | None = None) -> list[Path]:
    """Every figure in every format, and the texts, into the folder `out` (created)."""
    formats = check_formats(formats)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figs.items():
        for fmt in formats:
            path = out / f"{name}.{fmt}"
            path.write_bytes(render(fig, fmt))
            written.append(path)
    for name, text in (texts or {}).items():
        (out / name).write_text(text)
        written.append(out / name)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sdvar_core.figures",
                                description="Save the explorer's figures of a run as PNG, SVG and PDF for slides.")
    p.add_argument("--trace", required=True, help="a Trace .npz (Trace.save) or an example bundle .npz")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--formats", default=",".join(FORMATS), help="comma-separated: png,svg,pdf (default all)")
    p.add_argument("--sweep", default=None, help="a sweep CSV from the Compare tab: adds the speed–quality frontier")
    p.add_argument("--quality", default=None, help="the frontier's quality column (default: class accuracy if "
                                                   "measured, else token agreement)")
    p.add_argument("--scale", type=int, default=None, help="1-based scale of the token grid (default the last)")
    p.add_argument("--round", type=int, default=None, help="1-based round to highlight on the timeline and tell")
    p.add_argument("--mask-rule", type=int, default=None, help="sd_mask of the mask raster (default: the run's)")
    p.add_argument("--entry-num", type=int, default=None, help="hand-off of the mask raster and six masks: the "
                                                               "incoming model starts at scale entry_num + 1")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        formats = check_formats(args.formats)
        runs = load_runs(args.trace)
        K = len(runs["main"].scales)
        if args.scale is not None and not 1 <= args.scale <= K:
            raise ValueError(f"--scale must be in 1..{K}, got {args.scale}")
        if args.round is not None and not 1 <= args.round <= max(len(runs["main"].rounds), 1):
            raise ValueError(f"--round must be in 1..{len(runs['main'].rounds)} (the run's rounds), got {args.round}")
        if args.mask_rule is not None and args.mask_rule not in range(6):
            raise ValueError(f"--mask-rule must be in 0..5, got {args.mask_rule}")
        if args.entry_num is not None and not 0 <= args.entry_num < K:
            raise ValueError(f"--entry-num must be in 0..{K - 1}, got {args.entry_num}")
        mask = None
        if args.mask_rule is not None or args.entry_num is not None:
            run_mask = handoff_of(runs["main"]) or default_mask(K)
            mask = (run_mask[0] if args.mask_rule is None else args.mask_rule,
                    run_mask[1] if args.entry_num is None else args.entry_num)
        sweep = pd.read_csv(args.sweep) if args.sweep else None
        figs, texts = static_figures(runs, scale=None if args.scale is None else args.scale - 1,
                                     round_index=None if args.round is None else args.round - 1, mask=mask,
                                     sweep=sweep, quality=args.quality, log=print)
        written = write_files(figs, args.out, formats, texts)
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{len(written)} files in {args.out}: " + ", ".join(sorted({p.stem for p in written})))


if __name__ == "__main__":
    main()
