"""Tab 1, Generate & inspect: one click runs the chosen mode plus target-only and draft-only with the
same seed; headline numbers, the three pictures, a scale scrubber, acceptance and a timeline.
The chosen run streams to the page scale by scale (token grid, counters, the picture when a preview
was decoded); the comparisons follow, reused from an earlier click when nothing they depend on
changed. Stop (or a new click) ends a running click within one scale.
Also the page header's model picker and precomputed examples, which set this tab's inputs."""
from __future__ import annotations

import time

import gradio as gr
import torch

from sdvar_core import masks, viz
from sdvar_core.data import CLASS_NAMES
from sdvar_core.click import ClickStopped, stream_click
from sdvar_core.explore import (DEFAULT_INPUTS, MODELS, class_index, click_settings, headline, load_bundle,
                                settings_of, view_click, view_trace)
from sdvar_core.validate import check

from sdvar_core.runtime import PRECISIONS, precision_supported

from . import teach_panel
from .common import View, bind, listen, pair_info
from .gpu import generate_budget, gpu_callback
from .hosting import Host, admission, safe
from .shapes_tab import shape_frame

MODES = [("speculative (draft proposes, target verifies)", "speculative"),
         ("schedule (hand-off at entry_num)", "schedule"),
         ("target only", "target"), ("draft only", "draft")]
# What render_run fills: the session's last run (and its teaching part), this tab's outputs and the Shapes tab's table.
RUN_OUTPUTS = ("last_run", "last_click", "showing", "target_calls", "draft_calls", "wall", "speedup", "final_image",
               "target_image", "draft_image", "summary", "scale", "token_grid", "scale_md", "acceptance", "timeline",
               "shape_table")
INPUTS = tuple(DEFAULT_INPUTS)   # the tab's inputs, named as in DEFAULT_INPUTS


# ---- layout -------------------------------------------------------------------------------------

def build(view: View, pair, on_cuda: bool) -> None:
    """The tab's components (inside an open gr.Tab), on `view`; `pair` gives the scales and class names."""
    K = pair.layout.num_scales
    D = DEFAULT_INPUTS
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=280):
            names = list(pair.class_names or [])
            view.class_name = gr.Dropdown(names, value=D["class_name"] if D["class_name"] in names
                                          else (names or [None])[0], label="Class", visible=bool(names),
                                          elem_id="class-name", allow_custom_value=True)  # class_index checks it
            view.class_id = gr.Number(value=D["class_id"], precision=0, label="ImageNet class id (0–999)",
                                      visible=not pair.class_names, elem_id="class-id")
            view.seed = gr.Number(value=D["seed"], precision=0, label="Seed", elem_id="seed")
            view.mode = gr.Radio(MODES, value=D["mode"], label="Mode", elem_id="mode")
            with gr.Row():
                view.generate_btn = gr.Button("Generate", variant="primary", elem_id="generate", scale=3)
                view.generate_stop = gr.Button("Stop", variant="stop", elem_id="generate-stop", scale=1,
                                               min_width=60)
            with gr.Accordion("Advanced settings", open=False):
                with gr.Group(visible=False) as view.schedule_group:
                    view.entry_num = gr.Slider(0, K, value=D["entry_num"], step=1, elem_id="gen-entry-num",
                                               label="entry_num: scales made by the draft before the target takes over")
                    view.schedule = gr.Textbox(value=D["schedule"], label=f"or a schedule string ({K} letters D/T)",
                                               placeholder="e.g. DDDDTTTTTT", elem_id="gen-schedule")
                    view.sd_mask = gr.Dropdown([(f"{r} · {masks.rule_name(r)}", r) for r in range(6)],
                                               value=D["sd_mask"], label="sd_mask at the hand-off", elem_id="gen-sd-mask")
                with gr.Group(visible=True) as view.spec_group:
                    view.gamma_auto = gr.Checkbox(D["gamma_auto"], elem_id="gamma-auto",
                                                  label="γ auto: before each round a planner picks γ (0 = the target "
                                                        "alone) from this machine's measured costs and past acceptance")
                    view.gamma = gr.Slider(1, K, value=D["gamma"], step=1, elem_id="gamma",
                                           label="γ: scales drafted per round (when not auto)")
                    view.accept = gr.Radio([("probability min(1, λp/q)", "prob"), ("top-1 match", "top1")],
                                           value=D["accept"], label="Acceptance rule", elem_id="accept")
                    view.tau = gr.Slider(0.05, 1.0, value=D["tau"], step=0.05, elem_id="tau",
                                         label="τ: a scale passes when this share of its tokens is accepted")
                    view.lenience = gr.Slider(1.0, 10.0, value=D["lenience"], step=0.5, label="λ (lenience ≥ 1)",
                                              elem_id="lenience")
                    view.adaptive_gamma = gr.Checkbox(D["adaptive_gamma"], elem_id="adaptive-gamma", label="adaptive γ "
                                                      "(not auto: +1 after a clean round, −1 after a failed first scale)")
                    view.keep_draft_rejected = gr.Checkbox(D["keep_draft_rejected"], elem_id="keep-draft-rejected",
                                                           label="relaxed: keep the draft's rejected tokens in "
                                                                 "passing scales")
                    gr.Markdown("τ = 1, λ = 1 with the probability rule is exact: the output has the target's "
                                "distribution.")
                view.cfg = gr.Slider(0.0, 8.0, value=D["cfg"], step=0.1, label="CFG scale", elem_id="cfg")
                view.top_k = gr.Slider(0, 1000, value=D["top_k"], step=1, label="top-k (0 = off)", elem_id="top-k")
                view.top_p = gr.Slider(0.05, 1.0, value=D["top_p"], step=0.05, label="top-p (1 = off)", elem_id="top-p")
                offered = [p for p in PRECISIONS if precision_supported(torch.device("cuda" if on_cuda else "cpu"), p)]
                view.precision = gr.Radio(offered, value=D["precision"], visible=len(offered) > 1, elem_id="precision",
                                          label="Precision (autocast of the model calls and the decode)")
                view.more_smooth = gr.Checkbox(D["more_smooth"], elem_id="more-smooth",
                                               label="more_smooth: soft codebook mixture in f_hat "
                                                     "(VAR's visual option; not in speculative mode)")
        with gr.Column(scale=3):
            view.showing = gr.Markdown("", elem_id="showing")
            with gr.Row(elem_id="headline"):
                view.target_calls = gr.Number(label="target calls", interactive=False, elem_id="target-calls")
                view.draft_calls = gr.Number(label="draft calls", interactive=False, elem_id="draft-calls")
                view.wall = gr.Textbox(label="wall time", interactive=False, elem_id="wall-time")
                view.speedup = gr.Textbox(label="speed-up vs target only", interactive=False, elem_id="speedup")
            with gr.Row():
                image = dict(type="numpy", format="png", interactive=False, height=256)
                view.final_image = gr.Image(label="this run", elem_id="final-image", **image)
                view.target_image = gr.Image(label="target only (same seed)", elem_id="target-image", **image)
                view.draft_image = gr.Image(label="draft only (same seed)", elem_id="draft-image", **image)
            view.summary = gr.Markdown(elem_id="summary")
    with gr.Row():
        view.scale = gr.Slider(1, K, value=K, step=1, label="Scale (scrub through the generation)",
                               elem_id="scale-slider", scale=5)
        view.play = gr.Button("▶ play scales", scale=1, elem_id="play")
    view.scale_md = gr.Markdown(elem_id="scale-summary")
    view.token_grid = gr.Plot(label="picture and token grid at this scale", elem_id="token-grid")
    view.acceptance = gr.Plot(label="acceptance per scale", elem_id="acceptance")
    view.timeline = gr.Plot(label="timeline", elem_id="timeline")
    teach_panel.build(view, K)


def wire(view: View, demo: gr.Blocks, bank, bundles: list[tuple[str, str]], host: Host) -> None:
    """This tab's events, the model picker's and the precomputed examples'. Generate runs in its own
    lane ('generate', limits.generate_concurrency at a time), apart from sweeps; a session may have
    limits.generates_per_session clicks queued or running. A click in the page first stops the
    session's running click; so does Stop."""
    limits = host.limits
    listen(view, view.model.change, on_model, bank, view, public="select_model",
           outputs=("model", "model_md", "class_name", "class_id", "precision"))
    listen(view, view.mode.change, on_mode, view, outputs=("schedule_group", "spec_group"))
    generate = gpu_callback(on_generate, generate_budget, limits.gpu_max_seconds)   # a GPU request on ZeroGPU
    generated = listen(view, view.generate_btn.click, generate, bank, host, view,
                       public="generate", outputs=RUN_OUTPUTS, also=INPUTS, concurrency_id="generate",
                       concurrency_limit=limits.generate_concurrency,
                       validator=new_click(host, admission(demo, "generate", limits.generates_per_session,
                                                           "Generate click")),
                       show_progress_on=[view.showing])
    listen(view, view.generate_stop.click, on_stop_generate, host, view, public="stop_generate",
           outputs=("showing",), concurrency_id="stop", concurrency_limit=None, show_progress="hidden")
    listen(view, view.scale.input, scale_view, view, public="scale_view", outputs=("token_grid", "scale_md"),
           trigger_mode="always_last", show_progress="hidden")
    listen(view, view.play.click, on_play, view, outputs=("scale", "token_grid", "scale_md"), show_progress="hidden")
    example = listen(view, view.example.input, show_bundle, view, bundles, public="load_example",
                     outputs=RUN_OUTPUTS + INPUTS)
    first = bundles[0][0] if bundles else None

    def first_run() -> dict:   # every new page opens on the first precomputed run
        return show_bundle(view, bundles, example=first)
    loaded = demo.load(bind(first_run), None, view.outputs(*RUN_OUTPUTS, *INPUTS), api_visibility="private")
    teach_panel.wire(view, demo, (generated, example, loaded))   # the teaching views follow every run shown


# ---- callbacks ----------------------------------------------------------------------------------

def on_model(bank, view: View, *, model, progress=gr.Progress()) -> dict:
    """Load the chosen pair; on failure warn and fall back to the embedded pair. The picker itself is
    every event's record of the pair in use, so it outlives an expired session."""
    model = check("model", model, choices=tuple(MODELS))
    progress(0, desc=f"loading {MODELS[model]} (official weights: several GB)")
    try:
        pair = bank.get(model)
    except ValueError as e:
        gr.Warning(safe(f"{e} — using the embedded pair instead."), duration=15)
        model, pair = "tiny", bank.get("tiny")
    names = pair.class_names or []
    return {view.model: gr.Dropdown(value=model),
            view.model_md: pair_info(pair, bank.notes.get(model, "")),
            view.class_name: gr.Dropdown(choices=names, value=names[0] if names else None, visible=bool(names)),
            view.class_id: gr.Number(visible=not names),
            view.precision: DEFAULT_INPUTS["precision"] if pair.precision == "fp32" else pair.precision}


def on_mode(view: View, *, mode) -> dict:
    mode = check("mode", mode)
    return {view.schedule_group: gr.Group(visible=mode == "schedule"),
            view.spec_group: gr.Group(visible=mode == "speculative")}


def on_stop_generate(host: Host, view: View, request: gr.Request) -> dict:
    """Stop this session's running click within one scale (what it showed so far stays)."""
    host.clicks.stop(request.session_hash or "anonymous")
    return {view.showing: gr.skip()}   # the stopped click itself says where it stopped


def new_click(host: Host, admit):
    """The Generate validator: `admit` (the per-session limit), then stop the session's running click, so
    a new click replaces it (runs before the new click is queued: it can never stop itself)."""
    def validate(request: gr.Request, **inputs):
        verdict = admit(request, **inputs)
        host.clicks.stop(request.session_hash or "anonymous")
        return verdict
    return validate


def on_generate(bank, host: Host, view: View, request: gr.Request, *, model, progress=gr.Progress(), **inputs):
    """Stream the chosen mode scale by scale, then the target-only and draft-only comparisons (reused when an
    earlier click made them with the same pair, class, seed and sampling settings); render everything when
    the chosen run ends and again when the comparisons arrive. Every input is checked (`validate`) before
    anything runs. An official pair is held in the chosen precision (another one reloads it)."""
    cls_inputs = (inputs["class_name"], inputs["class_id"])
    seed, mode = check("seed", inputs["seed"]), check("mode", inputs["mode"])
    precision = check("precision", inputs["precision"])
    pair = bank.get(model, precision)
    cls = class_index(pair, *cls_inputs)
    settings = click_settings(inputs, pair.layout.num_scales)
    label = pair.class_names[cls] if pair.class_names else f"class {cls}"
    title = f"your run — {mode}, {label}, seed {seed}"
    session = request.session_hash or "anonymous"
    flag = host.clicks.start(session)
    progress(0, desc="starting")
    yield {view.showing: f"Running: {title} …", view.final_image: None, view.target_image: None,
           view.draft_image: None, view.speedup: "…", view.token_grid: None, view.scale_md: "",
           view.summary: "", view.target_calls: 0, view.draft_calls: 0, view.acceptance: None, view.timeline: None}
    runs = {}
    try:
        for update in stream_click(pair, mode, cls, seed, settings, stop=flag):
            progress((update.done, update.total), desc=update.text)
            runs = update.runs or runs
            if update.stage == "calibrating":
                yield {view.showing: f"Running: {title} — {update.text} (first γ auto run of this pair here) …"}
            elif update.stage == "scale":
                yield streamed_scale(view, update, title)
            elif update.stage == "main":
                yield {**render_run(view, {"main": runs["main"]}, title, pair.class_names),
                       view.showing: f"Showing: {title} — running the comparisons (target alone, draft alone) …"}
            elif update.stage == "comparison":
                main = runs["main"]
                full = {"main": main, "target": runs.get("target", main if mode == "target" else None),
                        "draft": runs.get("draft", main if mode == "draft" else None)}
                yield render_run(view, full, title, pair.class_names, reused=update.cached)
    except ClickStopped:
        kept = "the finished runs stay" if runs else "nothing was kept"
        yield {view.showing: f"Stopped: {title} ({kept})."}
    finally:
        host.clicks.finish(session, flag)


def streamed_scale(view: View, update, title: str) -> dict:
    """What changes on the page after one scale of the chosen run: its token grid (and picture, when a
    preview was decoded), the counters and the scrubber's position."""
    ev, partial = update.event, update.partial
    k = ev.done - 1
    out = {view.showing: f"Running: {title} — {update.text}",
           view.target_calls: ev.target_calls, view.draft_calls: ev.draft_calls,
           view.wall: f"{ev.seconds:.2f} s so far", view.token_grid: viz.token_grid_figure(partial, k),
           view.scale_md: viz.scale_summary(partial, k),
           view.scale: gr.Slider(minimum=1, maximum=ev.total, value=ev.done, step=1)}
    if update.picture is not None:
        out[view.final_image] = viz.upscale(update.picture[0])
    return out


def render_run(view: View, runs: dict, title: str, class_names=None, reused=frozenset()) -> dict:
    """Every output of RUN_OUTPUTS for a click's runs; the scale view at the last scale. The session
    keeps only what the scrubber and the Shapes tab need of the chosen run (`view_trace`).
    runs: "main", and "target"/"draft" (missing or None: not run yet); reused: the comparisons that
    came from an earlier click."""
    main = runs["main"]
    target, draft = runs.get("target"), runs.get("draft")
    K = len(main.scales)
    h = headline(main, target, draft)
    img = lambda t: None if t is None else viz.upscale(t.images[0])  # noqa: E731
    kept = view_trace(main)
    return {view.last_run: kept, view.last_click: view_click({"main": main, "target": target, "draft": draft}),
            view.showing: f"Showing: {title}",
            view.target_calls: h["target_calls"], view.draft_calls: h["draft_calls"],
            view.wall: f"{h['wall_s']:.2f} s", view.speedup: "…" if h["speedup"] is None else f"{h['speedup']:.2f}×",
            view.final_image: img(main), view.target_image: img(target), view.draft_image: img(draft),
            view.summary: summary_markdown({"main": main, "target": target, "draft": draft}, h, class_names, reused),
            view.scale: gr.Slider(minimum=1, maximum=K, value=K, step=1),
            **scale_view(view, last_run=kept, scale=K),
            view.acceptance: viz.acceptance_figure(main),
            view.timeline: viz.timeline_figure(main, target if target is not None and target is not main else None),
            view.shape_table: shape_frame(kept, "all", "all")}


def summary_markdown(runs: dict, h: dict, class_names=None, reused=frozenset()) -> str:
    """The paragraph under the pictures: what ran, calls, times, acceptance, agreement (headline h);
    comparisons not run yet are said to be running, reused ones are named."""
    st = runs["main"].settings
    cls = st["class_ids"][0]
    label = class_names[cls] if class_names and cls < len(class_names) else f"class {cls}"
    head = (f"**{st['mode']}** run of **{st.get('pair', '')}** ({label}, seed {st['seed']}): "
            f"**{h['target_calls']} target calls**")
    if h["speedup"] is None:
        return (head + f", {h['draft_calls']} draft calls, **{h['wall_s']:.2f} s**. The target-alone and "
                "draft-alone runs of the same seed are running; the comparison follows.")
    lines = [head + f" instead of {h['target_only_calls']}, "
             f"{h['draft_calls']} draft calls. Generation took **{h['wall_s']:.2f} s** against "
             f"**{h['target_only_wall_s']:.2f} s** for target only → **{h['speedup']:.2f}×** "
             f"{'faster' if h['speedup'] >= 1 else '(slower)'}"
             + ("; the draft-alone run is running." if h["draft_only_wall_s"] is None
                else f"; draft only took {h['draft_only_wall_s']:.2f} s.")]
    if reused:
        lines.append(f"The {' and '.join(sorted(f'{m}-alone' for m in reused))} run came from an earlier click "
                     "with the same pair, class, seed and sampling settings (its time was measured then).")
    if h["verified_tokens"]:
        lines.append(f"The target accepted **{h['accepted_tokens']} of {h['verified_tokens']}** drafted tokens "
                     f"({h['accepted_tokens'] / h['verified_tokens']:.0%}).")
    agree = f"{h['token_agreement']:.0%} of the final tokens equal the target-only run's."
    if st["mode"] == "speculative" and settings_of(runs["main"]).exact:
        agree += " (The exact rule keeps the target's distribution, not its individual samples.)"
    lines.append(agree)
    plans = viz.plan_summary(runs["main"])
    if plans:
        lines.append(plans)
    lines.append("All numbers come from the three runs of this click; wall time leaves out the per-scale preview "
                 "decodes. With small models much of the time goes to sampling, decoding and Python rather than "
                 "the transformer, so wall-clock speed-ups are small and noisy; target calls saved is the robust "
                 "number.")
    return "\n\n".join(lines)


NO_RUN = ("No run in this session yet, or it expired: generate one (or pick a precomputed run) to scrub "
          "through its scales.")


def scale_view(view: View, *, last_run, scale) -> dict:
    """The token-grid figure and the scale summary for the 1-based scale slider (last_run: the
    session's `view_trace`, None when there is none)."""
    if last_run is None:
        return {view.token_grid: None, view.scale_md: NO_RUN}
    k = check("scale", scale, num_scales=len(last_run.scales)) - 1
    return {view.token_grid: viz.token_grid_figure(last_run, k), view.scale_md: viz.scale_summary(last_run, k)}


def on_play(view: View, *, last_run):
    """Step the scale view from the first to the last scale."""
    if last_run is None:
        raise ValueError(NO_RUN)
    for k in range(1, len(last_run.scales) + 1):
        yield {view.scale: k, **scale_view(view, last_run=last_run, scale=k)}
        time.sleep(0.45)


def show_bundle(view: View, bundles, *, example) -> dict:
    """A precomputed run: its outputs and the inputs it was made with (no bundles: nothing changes)."""
    if not bundles and example is None:
        return gr.skip()
    if not bundles:
        raise ValueError("there are no precomputed runs here (assets/examples is empty or unreadable)")
    example = check("example", example, choices=tuple(t for t, _ in bundles))
    runs, inputs, title = load_bundle(dict(bundles)[example])
    names = list(CLASS_NAMES) if runs["main"].settings.get("pair", "").startswith("tiny") else None
    return {**render_run(view, runs, f"precomputed — {title}", names),
            **{getattr(view, k): inputs[k] for k in INPUTS if k in inputs}}
