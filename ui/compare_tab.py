"""Tab 4, Compare: the embedded pair's precomputed frontier against plain models (instant, from
assets/frontier.json), and sweeps over entry_num × sd_mask or γ × τ for a set of seeds, with a plot, a
table and a CSV; the last sweep is drawn over the precomputed frontier."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from sdvar_core import economics, viz, viz_teach
from sdvar_core import frontier as fr
from sdvar_core.config import FRONTIER_JSON
from sdvar_core.engine import Settings
from sdvar_core.explore import (DIRECTIONS, check_sweep_size, class_index, config_label, load_quality_classifier,
                                parse_seeds, run_config, sweep_configs, sweep_row)
from sdvar_core.validate import check

from .common import View, listen
from .gpu import gpu_callback, in_gpu_worker, sweep_budget
from .hosting import Host, SweepStopped, admission, check_stop

SWEEP_COLUMNS = ["config", "images", "target_calls", "draft_calls", "wall_s", "speedup", "token_agreement",
                 "pixel_psnr_db", "class_accuracy"]   # shown in the app; the CSV has every column
SWEEP_OUTPUTS = ("sweep_md", "sweep_plot", "sweep_table", "sweep_csv", "last_sweep")
FRONTIER_METRICS = [("class accuracy if measured, else token agreement", "auto"),
                    ("class accuracy", "class_accuracy"), ("token agreement", "token_agreement"),
                    ("pixel PSNR", "pixel_psnr_db")]
PLAIN_METRICS = [("FID-tiny", "fid_tiny"), ("class accuracy (your last sweep drawn over it)", "class_accuracy")]


def load_precomputed(path=FRONTIER_JSON) -> tuple[dict | None, str | None]:
    """({'points': [frontier.Point], 'meta': {...}}, None) from the shipped frontier file, or (None, the
    problem naming the file) when it is missing or damaged: the app then starts without that view."""
    try:
        points, meta = fr.load_points(path)
    except ValueError as e:
        return None, f"{e} The Compare tab's precomputed frontier is left out; sweeps and everything else work."
    return {"points": points, "meta": meta}, None


def precomputed_text(pre: dict) -> str:
    """Where the precomputed points come from, then the verdict they support."""
    meta, pts = pre["meta"], pre["points"]
    speed = meta.get("speed") or {}
    where = (f"Measured by `python -m sdvar_core.bench frontier` ({meta.get('per_class', '?')} images per class per "
             f"row for quality; speed-ups from interleaved batch-1 runs"
             + (f" on {speed['machine']}, {speed['date']}" if speed.get("machine") else ", not measured yet") + "). "
             f"{meta.get('rows_with_quality', 0)} of {meta.get('rows', len(pts))} rows finished when this file was "
             "written; BENCHMARKS.md has the table.")
    return where + "\n\n" + fr.verdict(pts, meta.get("rows"))


def build(view: View, num_scales: int, precomputed: dict | None = None) -> None:
    """The tab's components (inside an open gr.Tab), on `view`; precomputed: `load_precomputed`'s points."""
    gr.Markdown("### The embedded pair against plain models (precomputed)\nEvery setting measured once with many "
                "images: speed-up against the target alone →, FID-tiny or class accuracy with 95 % intervals. The "
                "black line joins the plain models (draft, plain mid model, target alone): a setting is worth it "
                "only above that line. Drawn instantly; run a sweep below to see yours over it (class accuracy).")
    view.plain_metric = gr.Radio(PLAIN_METRICS, value="fid_tiny", label="Quality", elem_id="plain-metric",
                                 interactive=precomputed is not None)
    view.plain_plot = gr.Plot(None if precomputed is None else viz_teach.plain_frontier_figure(precomputed["points"]),
                              label="the pair against plain models", elem_id="plain-frontier-plot")
    view.plain_md = gr.Markdown("The precomputed frontier is not available (see the notice at the top)."
                                if precomputed is None else precomputed_text(precomputed), elem_id="plain-frontier-text")
    gr.Markdown("Sweep settings over several seeds. Every sweep first runs target only and draft only with the "
                "same seeds; speed-ups and agreements are against that target-only run. Sampling settings (CFG, "
                "top-k, top-p, acceptance rule, λ, precision) come from the Generate tab.")
    with gr.Row():
        view.sweep_kind = gr.Radio([("schedules: entry_num × sd_mask", "schedule"), ("speculative: γ × τ", "speculative")],
                                   value="schedule", label="Sweep", elem_id="sweep-kind")
        view.sweep_seeds = gr.Textbox("0, 1", label="Seeds (e.g. '0, 1' or '0-3')", elem_id="sweep-seeds")
        view.sweep_classes = gr.Radio([("every class (embedded pair)", "all"),
                                       ("the class chosen on the Generate tab", "chosen")],
                                      value="all", label="Images per seed", elem_id="sweep-classes")
    with gr.Group(visible=True) as view.sched_sweep:
        with gr.Row():
            view.sweep_entries = gr.CheckboxGroup([str(e) for e in range(1, num_scales)], value=["2", "4", "6", "8"],
                                                  label="entry_num", elem_id="sweep-entries")
            view.sweep_dirs = gr.CheckboxGroup([(text, key) for key, text in DIRECTIONS.items()], value=["D→T"],
                                               label="direction", elem_id="sweep-dirs")
            view.sweep_masks = gr.CheckboxGroup([(str(r), str(r)) for r in range(6)], value=["1", "3"],
                                                label="sd_mask", elem_id="sweep-masks")
    with gr.Group(visible=False) as view.spec_sweep:
        with gr.Row():
            view.sweep_gammas = gr.CheckboxGroup([str(g) for g in range(1, 7)], value=["1", "2", "3"], label="γ",
                                                 elem_id="sweep-gammas")
            view.sweep_taus = gr.CheckboxGroup(["1.0", "0.9", "0.8", "0.7", "0.5"], value=["1.0", "0.8"], label="τ",
                                               elem_id="sweep-taus")
    with gr.Row():
        view.sweep_btn = gr.Button("Run sweep", variant="primary", elem_id="sweep-run")
        view.stop_btn = gr.Button("Stop", variant="stop", elem_id="sweep-stop")
        view.sweep_csv = gr.DownloadButton("Download CSV", value=None, elem_id="sweep-csv")
    view.sweep_md = gr.Markdown(elem_id="sweep-status")
    view.sweep_plot = gr.Plot(label="sweep", elem_id="sweep-plot")
    view.sweep_table = gr.Dataframe(interactive=False, elem_id="sweep-table")
    gr.Markdown("### Speed–quality frontier\nEvery mode of the sweep as a point: speed-up against the target alone "
                "→, quality ↑. Target only and draft only are the anchors; the dotted staircase is the Pareto front "
                "(no other mode is both faster and better). Published VAR accelerations compare against the honest "
                "baseline of simply running a smaller model — here, the draft alone.")
    view.frontier_metric = gr.Radio(FRONTIER_METRICS, value="auto", label="Quality", elem_id="frontier-metric")
    view.pareto_plot = gr.Plot(label="speed–quality frontier", elem_id="pareto-plot")
    view.frontier_md = gr.Markdown(elem_id="frontier-text")


def wire(view: View, demo: gr.Blocks, bank, host: Host, precomputed: dict | None = None) -> None:
    """Sweeps run in their own lane ('sweep', host.limits.sweep_concurrency at a time), so a sweep never
    holds up anyone's Generate; a session may have host.limits.sweeps_per_session sweeps queued or
    running (checked when one is queued). Stop ends this session's sweep within one scale. The
    precomputed frontier redraws with its metric and with each new sweep table."""
    listen(view, view.sweep_kind.change, on_sweep_kind, view, outputs=("sched_sweep", "spec_sweep"))
    run = gpu_callback(on_sweep, sweep_budget, host.limits.gpu_max_seconds)   # a GPU request on ZeroGPU
    sweep = listen(view, view.sweep_btn.click, run, bank, view, host, public="sweep",
                   outputs=SWEEP_OUTPUTS, concurrency_id="sweep", concurrency_limit=host.limits.sweep_concurrency,
                   validator=admission(demo, "sweep", host.limits.sweeps_per_session, "sweep"),
                   show_progress_on=[view.sweep_plot])
    listen(view, view.stop_btn.click, on_stop, host, view, public="stop_sweep", outputs=("sweep_md",),
           cancels=[sweep], concurrency_id="stop", concurrency_limit=None)
    # the frontier follows the table live, from the sweep the session keeps (every column, not only those shown)
    listen(view, view.sweep_table.change, frontier_view, view, outputs=("pareto_plot", "frontier_md"),
           show_progress="hidden", trigger_mode="always_last")
    listen(view, view.frontier_metric.input, frontier_view, view, outputs=("pareto_plot", "frontier_md"),
           show_progress="hidden", public="frontier", trigger_mode="always_last")
    if precomputed is not None:
        for event, public in ((view.plain_metric.input, "plain_frontier"), (view.sweep_table.change, None)):
            listen(view, event, plain_frontier_view, view, precomputed, outputs=("plain_plot",), public=public,
                   show_progress="hidden", trigger_mode="always_last")


def on_sweep_kind(view: View, *, sweep_kind) -> dict:
    sweep_kind = check("sweep_kind", sweep_kind)
    return {view.sched_sweep: gr.Group(visible=sweep_kind == "schedule"),
            view.spec_sweep: gr.Group(visible=sweep_kind == "speculative")}


def on_stop(host: Host, view: View, request: gr.Request) -> dict:
    """Stop this session's running sweep (its table and CSV keep the finished runs)."""
    host.lane.stop(request.session_hash)
    return {view.sweep_md: "Sweep stopped; the plot, table and CSV keep the runs finished so far."}


def on_sweep(bank, view: View, host: Host, request: gr.Request, *, model, sweep_kind, sweep_seeds, sweep_classes,
             sweep_entries, sweep_dirs, sweep_masks, sweep_gammas, sweep_taus, class_name, class_id, cfg, top_k,
             top_p, accept, lenience, precision, progress=gr.Progress()):
    """Run the sweep entry by entry, yielding the status, plot, table and CSV after each one. Every
    input is checked before the first run; a sweep over host.limits.sweep_max_runs runs is refused."""
    pair = bank.get(model)
    K = pair.layout.num_scales
    seeds = parse_seeds(sweep_seeds)
    configs = sweep_configs(sweep_kind, sweep_entries, sweep_dirs, sweep_masks, sweep_gammas, sweep_taus, K)
    check_sweep_size(configs, seeds, host.limits.sweep_max_runs)
    if check("sweep_classes", sweep_classes) == "all":
        if pair.num_classes > 16:
            raise ValueError(f"{pair.name} has {pair.num_classes} classes; choose 'the class chosen "
                             "on the Generate tab' for it")
        class_ids = list(range(pair.num_classes))
    else:
        class_ids = [class_index(pair, class_name, class_id)]
    base = dict(cfg=cfg, top_k=top_k, top_p=top_p, accept=accept, lenience=lenience, precision=precision)
    checked = Settings(**base)
    checked.validate("target", K, pair.target.device)
    base = {name: getattr(checked, name) for name in base}

    classifier, note = load_quality_classifier(pair)
    session = request.session_hash or "anonymous"
    flag = host.lane.start(session)
    csv_path = host.files.new(f"sweep-{check('sweep_kind', sweep_kind)}")
    rows, reference = [], None
    try:
        for i, config in enumerate(configs):
            progress((i, len(configs)), desc=config_label(config))
            try:
                traces = run_config(pair, config, seeds, class_ids, base, on_scale=check_stop(flag))
            except SweepStopped:
                yield {view.sweep_md: f"Stopped after {i} of {len(configs)} runs; the plot, table and CSV keep "
                                      "the finished ones."}
                return
            except ValueError as e:
                raise ValueError(f"{config['series']}: {e}") from None
            reference = reference or traces   # the first entry is target only
            rows.append(sweep_row(config, traces, reference, class_ids, classifier))
            df = pd.DataFrame(rows)
            df.to_csv(csv_path, index=False)
            yield {view.sweep_md: f"{i + 1} of {len(configs)} runs done ({len(seeds)} seed(s) × {len(class_ids)} "
                                  f"image(s) each) with **{pair.name}**. " + note,
                   view.sweep_plot: viz.sweep_figure(df), view.sweep_table: df[SWEEP_COLUMNS].round(4),
                   view.sweep_csv: str(csv_path), view.last_sweep: df}
    finally:   # Gradio has copied each CSV it sent into its cache
        host.lane.finish(session, flag)
        if not in_gpu_worker():   # a ZeroGPU worker runs ahead of what was sent: the TTL removes its file
            host.files.discard(csv_path)


def frontier_view(view: View, *, last_sweep, frontier_metric) -> dict:
    """The frontier of the session's last sweep (the quality 'auto': class accuracy where measured)."""
    metric = check("frontier_metric", frontier_metric)
    df = last_sweep
    if df is None or not len(df):
        return {view.pareto_plot: None, view.frontier_md: "Run a sweep to see its modes on the frontier."}
    metric = None if metric == "auto" else metric
    if metric is not None and metric not in economics.quality_choices(df):
        raise ValueError(f"frontier_metric: this sweep did not measure {economics.QUALITY_METRICS[metric][0]}")
    pts, metric = economics.frontier(df, metric)
    front = pts[pts["on_front"]].sort_values("speedup")
    label = economics.QUALITY_METRICS[metric][0]
    text = (f"On the front ({label}): " + "; ".join(f"**{r['config']}** {r['speedup']:.2f}×, {r['quality']:.3g}"
                                                    for _, r in front.iterrows()) + ".")
    return {view.pareto_plot: viz_teach.frontier_figure(df, metric), view.frontier_md: text}


def plain_frontier_view(view: View, precomputed: dict, *, last_sweep, plain_metric) -> dict:
    """The precomputed frontier in the chosen metric, with the session's last sweep over it (where the sweep
    measured that metric: class accuracy)."""
    metric = check("plain_metric", plain_metric)
    return {view.plain_plot: viz_teach.plain_frontier_figure(precomputed["points"], metric, sweep=last_sweep)}
