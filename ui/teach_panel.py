"""The Generate tab's teaching views, under the run: the round-by-round story (highlighted on the timeline),
why exact speculation stalls, the cost what-if, and every figure as PNG/SVG/PDF for slides.

Filled after each run is shown (chained on the Generate tab's events); every callback reads the run
through `common.runs_of` (the session's `last_run` and `last_click`, which expire together) and checks
its other inputs with `sdvar_core.validate` (errors name the field). The numbers and words come from
`sdvar_core.economics` / `story`, the figures from `viz_teach` (plotly) and `figures` (matplotlib, for
the export, in a lane of its own: one export at a time, one per session).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import gradio as gr

from sdvar_core import economics, story, viz, viz_teach
from sdvar_core.config import ScaleLayout
from sdvar_core.figures import FORMATS, export_zip, static_figures
from sdvar_core.validate import check, check_list

from .common import View, listen, runs_of
from .hosting import admission

TEACH_OUTPUTS = ("round_pick", "round_story", "timeline", "why_chart", "why_md", "whatif_regime", "whatif_ratio",
                 "whatif_overhead", "whatif_rejection", "whatif_batch", "cost_whatif", "whatif_md")
NO_RUN = "No run in this session yet, or it expired: generate one (or pick a precomputed run) first."


# ---- layout -------------------------------------------------------------------------------------

def build(view: View, num_scales: int) -> None:
    """The panel's components (inside the Generate tab, after the timeline), on `view`."""
    gr.Markdown("### Round by round\nPick a round: what the draft proposed, the target's single call, what was "
                "kept, corrected, discarded and rolled back. The round is shaded on the timeline above.")
    view.round_pick = gr.Slider(1, num_scales, value=1, step=1, label="Round", elem_id="round-pick")
    view.round_story = gr.Markdown(elem_id="round-story")
    gr.Markdown("### Why exact speculation stalls")
    view.why_chart = gr.Plot(label="why it stalls", elem_id="why-chart")
    view.why_md = gr.Markdown(elem_id="why-text")
    gr.Markdown("### Cost what-if: which setting would make it pay, on which hardware\nThe bars are predictions "
                "from this click's measured call costs (the γ planner's own cost model); the diamond is what this "
                "click measured. Pick a regime or move the knobs.")
    with gr.Row():
        view.whatif_regime = gr.Radio([(r.label, r.key) for r in economics.REGIMES], value="cpu",
                                      label="Hardware regime (sets the knobs)", elem_id="whatif-regime", scale=2)
        view.whatif_rejection = gr.Dropdown([(label, value) for value, label in economics.REJECTION_CHOICES],
                                            value=1.0, label="Draft quality (each drafted token's rejection chance)",
                                            elem_id="whatif-rejection", scale=1)
    with gr.Row():
        view.whatif_ratio = gr.Slider(0.05, 1.0, value=0.25, step=0.01, elem_id="whatif-ratio",
                                      label="draft/target cost per call (default: as measured)")
        view.whatif_overhead = gr.Slider(0, 40, value=0, step=0.5, elem_id="whatif-overhead",
                                         label="fixed cost per call (× a measured target step; GPU launch-bound: large)")
        view.whatif_batch = gr.Slider(1, 64, value=1, step=1, elem_id="whatif-batch",
                                      label="images per batch (every one must pass a drafted scale)")
    view.cost_whatif = gr.Plot(label="predicted speed-ups", elem_id="cost-whatif")
    view.whatif_md = gr.Markdown(elem_id="whatif-text")
    gr.Markdown("### Figures for slides\nEvery figure of this run as PNG, SVG and PDF (matplotlib) in one zip: "
                "token grid (at the scale shown), acceptance, timeline (with the round picked), why-chart, cost "
                "what-if, the Masks tab's mask raster and six masks (with pictures once you ran them there), and the "
                "frontier of your last sweep on the Compare tab.")
    with gr.Row():
        view.export_formats = gr.CheckboxGroup(list(FORMATS), value=list(FORMATS), label="formats",
                                               elem_id="export-formats", scale=2)
        view.export_btn = gr.Button("Export figures", elem_id="export-run", scale=1)
    view.export_figures = gr.File(label="figures (zip)", elem_id="export-figures", interactive=False)


def wire(view: View, demo: gr.Blocks, shown_events) -> None:
    """Fill the panel after every event that shows a run (`shown_events`); the knobs and the round redraw it.
    The export draws in a lane of its own ('figures': one at a time, one per session)."""
    for i, event in enumerate(shown_events):
        listen(view, event.success, teach_view, view, outputs=TEACH_OUTPUTS, public="teach" if i == 0 else None,
               show_progress="hidden")
    listen(view, view.round_pick.input, round_view, view, outputs=("round_story", "timeline"), public="round_story",
           trigger_mode="always_last", show_progress="hidden")
    for widget in (view.whatif_ratio, view.whatif_overhead, view.whatif_rejection, view.whatif_batch):
        listen(view, widget.input, whatif_view, view, outputs=("cost_whatif", "whatif_md"), trigger_mode="always_last",
               public="cost_whatif" if widget is view.whatif_ratio else None, show_progress="hidden")
    listen(view, view.whatif_regime.input, regime_view, view, public="whatif_regime", show_progress="hidden",
           outputs=("whatif_ratio", "whatif_overhead", "whatif_batch", "cost_whatif", "whatif_md"))
    listen(view, view.export_btn.click, export_view, view, public="export_figures", outputs=("export_figures",),
           concurrency_id="figures", concurrency_limit=1, validator=admission(demo, "figures", 1, "figure export"))


# ---- callbacks ----------------------------------------------------------------------------------

def teach_view(view: View, *, last_run, last_click) -> dict:
    """Everything the panel shows for a newly shown run; the knobs back to 'as measured'."""
    runs = runs_of(last_run, last_click)
    if not runs:
        return {view.round_story: NO_RUN, view.why_md: NO_RUN, view.whatif_md: NO_RUN}
    main = runs["main"]
    out, w = whatif_outputs(view, runs, None, 0.0, 1.0, 1)
    rounds = len(main.rounds)   # a slider needs minimum < maximum: a run of 0 or 1 round gets a fixed one
    return {view.round_pick: gr.Slider(minimum=1, maximum=max(rounds, 2), value=1, step=1, interactive=rounds > 1),
            **round_outputs(view, runs, 1),
            view.why_chart: viz_teach.why_figure(main), view.why_md: story.why_text(main),
            view.whatif_regime: "cpu", view.whatif_ratio: _slider_ratio(w), view.whatif_overhead: 0.0,
            view.whatif_rejection: 1.0, view.whatif_batch: 1, **out}


def _slider_ratio(w) -> float:
    """The measured draft/target ratio as the slider shows it (0.25 when the run has no what-if)."""
    return round(min(max(w.measured_ratio, 0.05), 1.0), 2) if w is not None else 0.25


def _scales(runs) -> int:
    """The run's number of scales (without a run: the default layout's, which every pair here shares)."""
    return len(runs["main"].scales) if runs else ScaleLayout().num_scales


def _round(round_pick, runs) -> int:
    """The 1-based round, checked against the run's rounds (a run without rounds: 1; without a run: at
    most one round per scale)."""
    return check("round_pick", round_pick, num_rounds=max(len(runs["main"].rounds), 1) if runs else _scales(runs))


def round_view(view: View, *, last_run, last_click, round_pick) -> dict:
    """The story of the picked round (1-based) and the timeline with that round shaded."""
    runs = runs_of(last_run, last_click)
    i = _round(round_pick, runs)
    if not runs:
        return {view.round_story: NO_RUN, view.timeline: None}
    return round_outputs(view, runs, i)


def round_outputs(view: View, runs: dict, round_pick: int) -> dict:
    main = runs["main"]
    reference = runs["target"] if runs.get("target") is not main else None
    if not main.rounds:
        return {view.round_story: story.run_story(main), view.timeline: viz.timeline_figure(main, reference)}
    i = round_pick - 1
    span = (*story.round_span(main, i), f"round {i + 1}")
    return {view.round_story: story.rounds_overview(main) + "\n\n" + story.round_story(main, i),
            view.timeline: viz.timeline_figure(main, reference, highlight=span)}


def whatif_outputs(view: View, runs: dict, ratio, overhead, rejection, batch):
    """(the what-if figure and text for these knobs, the WhatIf or None when the run has no what-if)."""
    try:
        w = economics.cost_whatif(runs, ratio, overhead, rejection, batch)
    except ValueError as e:
        if "was measured" not in str(e):
            raise
        return {view.cost_whatif: None, view.whatif_md: f"No cost what-if for this run: {e}."}, None
    return {view.cost_whatif: viz_teach.whatif_figure(w), view.whatif_md: story.whatif_text(w)}, w


def knobs(whatif_ratio, whatif_overhead, whatif_rejection, whatif_batch) -> dict:
    """The what-if's knobs, checked (`validate`): keyword arguments of `economics.cost_whatif`."""
    return dict(ratio=check("whatif_ratio", whatif_ratio), overhead=check("whatif_overhead", whatif_overhead),
                rejection=check("whatif_rejection", whatif_rejection), batch=check("whatif_batch", whatif_batch))


def whatif_view(view: View, *, last_run, last_click, whatif_ratio, whatif_overhead, whatif_rejection,
                whatif_batch) -> dict:
    k = knobs(whatif_ratio, whatif_overhead, whatif_rejection, whatif_batch)
    runs = runs_of(last_run, last_click)
    if not runs:
        return {view.cost_whatif: None, view.whatif_md: NO_RUN}
    return whatif_outputs(view, runs, *k.values())[0]


def regime_view(view: View, *, last_run, last_click, whatif_regime, whatif_rejection) -> dict:
    """A regime's knobs (the CPU one keeps the measured ratio) and the what-if under them."""
    r = economics.REGIME_BY_KEY[check("whatif_regime", whatif_regime, choices=tuple(economics.REGIME_BY_KEY))]
    rejection = check("whatif_rejection", whatif_rejection)
    runs = runs_of(last_run, last_click)
    if not runs:
        return {view.whatif_ratio: r.ratio if r.ratio is not None else gr.skip(), view.whatif_overhead: r.overhead,
                view.whatif_batch: r.batch, view.cost_whatif: None, view.whatif_md: NO_RUN}
    out, w = whatif_outputs(view, runs, r.ratio, r.overhead, rejection, r.batch)
    return {view.whatif_ratio: r.ratio if r.ratio is not None else _slider_ratio(w),
            view.whatif_overhead: r.overhead, view.whatif_batch: r.batch, **out}


def export_view(view: View, *, last_run, last_click, scale, round_pick, export_formats, whatif_ratio,
                whatif_overhead, whatif_rejection, whatif_batch, last_sweep, gallery, mask_rule, mask_entry,
                picture_pyramid=None, progress=gr.Progress()):
    """A zip of every figure in the chosen formats (see figures.static_figures): the run's (when the
    session has one), the Masks tab's mask raster and six masks, the last sweep's frontier, the pyramid of
    the picture shown in the "Your picture" tab. A generator:
    the zip's folder is removed once Gradio has taken its copy."""
    runs = runs_of(last_run, last_click)
    K = _scales(runs)
    k = check("scale", scale, num_scales=K) - 1
    i = _round(round_pick, runs) - 1
    formats = check_list("export_formats", export_formats)
    if not formats:
        raise ValueError(f"export_formats must hold one or more of {', '.join(FORMATS)}, got none")
    whatif = knobs(whatif_ratio, whatif_overhead, whatif_rejection, whatif_batch)
    mask = (check("mask_rule", mask_rule), check("mask_entry", mask_entry, num_scales=K))
    progress(0, desc="drawing the figures")
    figs, texts = static_figures(runs, scale=k, round_index=i if runs and runs["main"].rounds else None, mask=mask,
                                 gallery=gallery, sweep=last_sweep, whatif=whatif, pyramid=picture_pyramid)
    data = export_zip(figs, formats, texts, on_file=lambda j, n, name: progress((j, n), desc=f"writing {name}"))
    folder = Path(tempfile.mkdtemp(prefix="sdvar-figures-"))
    try:
        path = folder / "sdvar-figures.zip"
        path.write_bytes(data)
        yield {view.export_figures: str(path)}
    finally:   # Gradio has copied the zip into its cache (deleted after cache_ttl)
        shutil.rmtree(folder, ignore_errors=True)
