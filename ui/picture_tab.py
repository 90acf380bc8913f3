"""Tab "Your picture": upload, draw or pick a picture; see its token pyramid; let the models continue it from
scale k or in-paint a painted region, with the run's views (token grid, acceptance, timeline).

The picture travels as the image editor's files in Gradio's own upload cache (nothing is written anywhere
else); `sdvar_core.picture` checks and encodes it, `engine.generate(prefix=, prefix_scales=, keep_mask=)`
runs the models on it, `viz` / `viz_picture` draw it."""
from __future__ import annotations

import hashlib
from pathlib import Path

import gradio as gr
import numpy as np
from gradio.components.image_editor import EditorData

from sdvar_core import data, viz, viz_picture
from sdvar_core.engine import generate
from sdvar_core.explore import MODELS, headline, view_trace
from sdvar_core.picture import BACKGROUND, MAX_PIXELS, encode_image, fit, fit_mask, load_image, load_painted, pyramid
from sdvar_core.validate import check

from .common import View, listen
from .gpu import gpu_callback, picture_budget
from .hosting import Limits, admission

EXAMPLE_SEED = 12345   # the held-out seed of the data set (`classifier.HELDOUT_SEED`): images no model trained on
PICTURE_MODES = [("target alone", "target"), ("draft alone", "draft"), ("speculative, exact (γ 2)", "speculative"),
                 ("speculative, relaxed (γ 3, τ 0.8, λ 2)", "relaxed"), ("hand-off: draft, then target", "schedule")]
MODE_RUNS = {"target": ("target", {}), "draft": ("draft", {}), "speculative": ("speculative", dict(gamma=2)),
             "relaxed": ("speculative", dict(gamma=3, tau=0.8, lenience=2.0)),
             "schedule": ("schedule", dict(sd_mask=1))}
PYRAMID_OUTPUTS = ("pyramid", "pyramid_curves", "picture_md", "picture_input", "picture_pyramid", "picture_source")
RUN_OUTPUTS = ("picture_run", "picture_input", "picture_result", "picture_summary", "picture_scale", "picture_grid",
               "picture_scale_md", "picture_acceptance", "picture_timeline")
NO_PICTURE = "own_image (your picture) holds no picture: upload one, draw one, or pick an example"
NO_RUN = "No run on a picture in this session yet, or it expired: press Run first."


class EditorPayload(EditorData):
    """The image editor's payload as Gradio checks it before any callback (its data model), with messages
    that name the input and never repeat the value sent (pydantic's hide_input_in_errors)."""

    model_config = {**EditorData.model_config, "hide_input_in_errors": True}

    @classmethod
    def model_validate(cls, obj, *args, **kwargs):
        if not isinstance(obj, dict):
            raise ValueError(f"own_image must be the image editor's value (background, layers, composite), "
                             f"got {type(obj).__name__}")
        return super().model_validate(obj, *args, **kwargs)


def example_images() -> dict[str, np.ndarray]:
    """One held-out image of the embedded data set per class, {class name: (64, 64, 3) uint8}."""
    images = data.make_images(np.arange(data.NUM_CLASSES), EXAMPLE_SEED)
    return {name: img for name, img in zip(data.CLASS_NAMES, images)}


EXAMPLES = example_images()


def editor_value(image: np.ndarray) -> dict:
    """The image editor's value for a picture with nothing painted on it."""
    return {"background": image, "layers": [], "composite": image}


# ---- layout -------------------------------------------------------------------------------------

def build(view: View, pair, session_ttl: int) -> None:
    """The tab's components (inside an open gr.Tab), on `view`."""
    K = pair.layout.num_scales
    view.picture_pyramid = gr.State(None, time_to_live=session_ttl)   # the shown pyramid, for the figure export
    view.picture_run = gr.State(None, time_to_live=session_ttl)       # the last run on a picture (`view_trace`)
    # the pixels of the last picture whose pyramid was asked for
    view.picture_source = gr.State(None, time_to_live=session_ttl)
    # (the editor starts empty: with an initial value, Gradio 6.31's editor kept sending that value after an upload)
    gr.Markdown(
        "A picture *is* a pyramid of token maps to VAR. Bring one (upload, draw, or pick an example from the "
        "embedded data set) and press **Show the pyramid** to see what each of the 10 scales adds (an example or an "
        "upload shows it by itself), then let the models take over: **continue "
        f"from scale k** keeps your picture's first k scales (fed to both models as their prefix) and makes the "
        "rest; **in-paint** keeps your picture outside the region you paint with the brush, at every scale, "
        "and generates inside it; speculative decoding then judges only the generated tokens. "
        f"Pictures are centre-cropped and resized to the pair's {pair.vqvae.cfg.image_size} px; at most "
        f"{MAX_PIXELS:,} pixels; animated pictures use their first frame; transparency is flattened on white "
        f"{BACKGROUND}.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=300):
            view.own_image = gr.ImageEditor(
                label="Your picture (paint a region with the brush to in-paint it)", elem_id="own-image",
                type="filepath", sources=["upload", "clipboard"], layers=False, transforms=(), height=380,
                brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed", default_size=6), canvas_size=(256, 256))
            view.own_image.data_model = EditorPayload   # named errors for malformed payloads (API callers)
            view.picture_example = gr.Dropdown(list(EXAMPLES), value=None, elem_id="picture-example",
                                               label="or an example: a held-out image of the embedded data set")
            view.pyramid_btn = gr.Button("Show the pyramid", elem_id="pyramid-btn")
            view.picture_task = gr.Radio([("continue from scale k", "continue"), ("in-paint the painted region", "inpaint")],
                                         value="continue", label="What the models do", elem_id="picture-task")
            view.prefix_scales = gr.Slider(0, K, value=4, step=1, elem_id="prefix-scales",
                                           label="k: keep your picture's first k scales (0 = a new picture, "
                                                 f"{K} = its reconstruction)")
            view.picture_mode = gr.Radio(PICTURE_MODES, value="speculative", label="Mode", elem_id="picture-mode")
            view.picture_entry = gr.Slider(0, K, value=6, step=1, elem_id="picture-entry",
                                           label="hand-off: the draft makes the scales up to this one (sd_mask 1)")
            names = list(pair.class_names or [])
            view.picture_class = gr.Dropdown(names, value=names[0] if names else None, label="Class to continue as",
                                             visible=bool(names), elem_id="picture-class", allow_custom_value=True)
            view.picture_class_id = gr.Number(value=207, precision=0, label="ImageNet class id (0–999)",
                                              visible=not names, elem_id="picture-class-id")
            view.picture_seed = gr.Number(value=0, precision=0, label="Seed", elem_id="picture-seed")
            view.picture_btn = gr.Button("Run on my picture", variant="primary", elem_id="picture-run")
        with gr.Column(scale=5):
            view.picture_md = gr.Markdown(elem_id="picture-md")
            view.pyramid = gr.Plot(label="the token pyramid", elem_id="pyramid")
            view.pyramid_curves = gr.Plot(label="PSNR, SSIM and energy per scale", elem_id="pyramid-curves")
            with gr.Row():
                image = dict(type="numpy", format="png", interactive=False, height=256)
                view.picture_input = gr.Image(label="your picture as the pair sees it", elem_id="picture-input", **image)
                view.picture_result = gr.Image(label="the models' result", elem_id="picture-result", **image)
            view.picture_summary = gr.Markdown(elem_id="picture-summary")
    view.picture_scale = gr.Slider(1, K, value=K, step=1, label="Scale", elem_id="picture-scale")
    view.picture_scale_md = gr.Markdown(elem_id="picture-scale-md")
    view.picture_grid = gr.Plot(label="picture and token grid at this scale", elem_id="picture-grid")
    view.picture_acceptance = gr.Plot(label="acceptance per scale (in-painting: inside the region)",
                                      elem_id="picture-acceptance")
    view.picture_timeline = gr.Plot(label="timeline", elem_id="picture-timeline")
    gr.Markdown("The teaching-figure export (Generate & inspect → Export figures) includes the pyramid shown here.")


def wire(view: View, demo: gr.Blocks, bank, limits: Limits) -> None:
    """The tab's events. Runs share the Generate lane and its per-session limit."""
    cache = Path(gr.utils.get_upload_folder())
    listen(view, view.pyramid_btn.click, gpu_callback(on_pyramid, picture_budget, limits.gpu_max_seconds), bank, view, cache, public="picture_pyramid",
           outputs=PYRAMID_OUTPUTS)
    # an uploaded or chosen picture shows its pyramid. The editor fires .upload several times per upload, the
    # first with its previous picture, and .change not at all (only for strokes): so every upload event is
    # answered (multiple), and one whose picture was already asked for costs a hash, not a pyramid.
    listen(view, view.own_image.upload, gpu_callback(on_picture_change, picture_budget, limits.gpu_max_seconds), bank, view, cache,
           outputs=PYRAMID_OUTPUTS, trigger_mode="multiple")
    example = listen(view, view.picture_example.input, on_example, view, public="picture_example",
                     outputs=("own_image",))
    listen(view, example.success, gpu_callback(on_picture_change, picture_budget, limits.gpu_max_seconds), bank, view, cache, outputs=PYRAMID_OUTPUTS)
    listen(view, view.picture_btn.click, gpu_callback(on_picture_run, picture_budget, limits.gpu_max_seconds), bank, view, cache, public="picture_run",
           outputs=RUN_OUTPUTS, concurrency_id="generate", concurrency_limit=limits.generate_concurrency,
           validator=admission(demo, "generate", limits.generates_per_session, "Run on a picture"),
           show_progress_on=[view.picture_result, view.picture_grid])
    listen(view, view.picture_scale.input, picture_scale_view, view, outputs=("picture_grid", "picture_scale_md"),
           trigger_mode="always_last", show_progress="hidden")
    listen(view, view.model.change, on_picture_model, bank, view, outputs=("picture_class", "picture_class_id"))


# ---- the editor's value -------------------------------------------------------------------------

def cached_file(item, cache: Path) -> Path:
    """The file of one image of the editor's value (a FileData dict), which must lie in Gradio's upload cache."""
    path = item.get("path") if isinstance(item, dict) else None
    if not isinstance(path, str) or not path:
        raise ValueError(NO_PICTURE)
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(Path(cache).resolve()):
        raise ValueError("own_image (your picture) must come through the page's upload (Gradio's cache)")
    return resolved


def editor_picture(value, cache: Path) -> tuple[Path, np.ndarray | None]:
    """(the picture's file, the painted pixels (H, W) bool or None) from the image editor's raw value
    {"background", "layers", "composite"}: an uploaded background with brush layers on it, or a drawing
    (no background: the composite is the picture, and nothing is painted)."""
    if not isinstance(value, dict):
        raise ValueError(NO_PICTURE)
    background, composite = value.get("background"), value.get("composite")
    if background is None:
        return cached_file(composite, cache), None
    picture, painted = cached_file(background, cache), None
    for layer in value.get("layers") or []:
        m = load_painted(cached_file(layer, cache))
        if painted is not None and m.shape != painted.shape:
            raise ValueError("own_image: the painted layers do not have the picture's size")
        painted = m if painted is None else painted | m
    return picture, painted if painted is not None and painted.any() else None


# ---- callbacks ----------------------------------------------------------------------------------

def pyramid_outputs(view: View, pair, source) -> dict:
    """Everything PYRAMID_OUTPUTS shows for a picture (a file or an array)."""
    enc = encode_image(pair, source)
    pyr = pyramid(pair, enc)
    text = (f"**Your picture:** {enc.resize}. Rebuilt from all {len(enc.tokens)} scales: "
            f"**{pyr.psnr_db[-1]:.1f} dB** PSNR, SSIM {pyr.ssim[-1]:.3f} (the VQ-VAE's limit). Scale 1 alone "
            f"gives {pyr.psnr_db[0]:.1f} dB; half of the latent's energy is taken by scale "
            f"{int(np.searchsorted(np.cumsum(pyr.energy_share), 0.5)) + 1}.")
    return {view.pyramid: viz_picture.pyramid_figure(pyr), view.pyramid_curves: viz_picture.pyramid_curves_figure(pyr),
            view.picture_md: text, view.picture_input: viz.upscale(enc.image), view.picture_pyramid: pyr,
            view.picture_source: picture_key(enc.image, pair.vqvae.cfg.image_size)}


def on_pyramid(bank, view: View, cache: Path, *, model, own_image) -> dict:
    """The pyramid of the editor's picture."""
    pair = bank.get(check("model", model, choices=tuple(MODELS)))
    picture, _ = editor_picture(own_image, cache)
    return pyramid_outputs(view, pair, picture)


def on_picture_change(bank, view: View, cache: Path, *, model, own_image, picture_source) -> dict:
    """The pyramid of a new picture in the editor; nothing when only the brush layer changed (same picture
    file as the pyramid shown) or the editor was cleared."""
    if not isinstance(own_image, dict) or not (own_image.get("background") or own_image.get("composite")):
        return gr.skip()
    pair = bank.get(check("model", model, choices=tuple(MODELS)))
    picture, _ = editor_picture(own_image, cache)
    size = pair.vqvae.cfg.image_size
    if picture_key(load_image(picture).image, size) == picture_source:
        return gr.skip()
    return pyramid_outputs(view, pair, picture)


def picture_key(image: np.ndarray, size: int) -> str:
    """A fitted picture's identity: a hash of its pixels at the pair's size (the editor re-exports a picture
    as a new file, so files cannot tell whether it changed)."""
    return f"{size}:{hashlib.sha256(np.ascontiguousarray(fit(image, size)[0]).tobytes()).hexdigest()}"


def on_example(view: View, *, picture_example) -> dict:
    """An example picture into the editor (its pyramid follows the editor's change)."""
    img = EXAMPLES[check("picture_example", picture_example, choices=tuple(EXAMPLES))]
    return {view.own_image: editor_value(img)}


def run_settings(picture_mode, picture_entry, num_scales: int) -> tuple[str, dict]:
    """(engine mode, settings) of a picture mode (`MODE_RUNS`); the hand-off's entry_num from its slider."""
    mode, settings = MODE_RUNS[check("picture_mode", picture_mode)]
    settings = dict(settings)
    entry = check("entry_num", picture_entry, num_scales=num_scales, label="picture_entry")
    if mode == "schedule":
        settings["entry_num"] = entry
    return mode, settings


def on_picture_run(bank, view: View, cache: Path, *, model, own_image, picture_task, prefix_scales, picture_mode,
                   picture_entry, picture_class, picture_class_id, picture_seed, progress=gr.Progress()) -> dict:
    """Continue the picture from scale k, or in-paint its painted region, in the chosen mode; also target alone
    on the same picture (the timeline's reference and the speed-up). Every input is checked first."""
    pair = bank.get(check("model", model, choices=tuple(MODELS)))
    K = pair.layout.num_scales
    task = check("picture_task", picture_task)
    k = check("prefix_scales", prefix_scales, num_scales=K)
    mode, settings = run_settings(picture_mode, picture_entry, K)
    cls = picture_class_index(pair, picture_class, picture_class_id)
    seed = check("seed", picture_seed, label="picture_seed")
    picture, painted = editor_picture(own_image, cache)
    enc = encode_image(pair, picture)
    keep = None
    if task == "inpaint":
        if painted is None:
            raise ValueError("nothing is painted: paint the region to in-paint with the brush first")
        keep = ~fit_mask(painted, pair.vqvae.cfg.image_size)
    progress(0, desc=f"{mode} on your picture")
    args = dict(prefix=enc, prefix_scales=k, keep_mask=keep)
    main = generate(pair, mode, [cls], seed=seed, **args, **settings).trace
    target = main if mode == "target" else generate(pair, "target", [cls], seed=seed, progressive=False, **args).trace
    kept = view_trace(main)
    label = pair.class_names[cls] if pair.class_names else f"class {cls}"
    return {view.picture_run: kept, view.picture_input: viz.upscale(viz_picture.outlined(enc.image, keep)),
            view.picture_result: viz.upscale(viz_picture.outlined(main.images[0], keep)),
            view.picture_summary: run_summary(main, target, task, k, label),
            view.picture_scale: gr.Slider(minimum=1, maximum=K, value=K, step=1),
            **picture_scale_view(view, picture_run=kept, picture_scale=K),
            view.picture_acceptance: viz.acceptance_figure(main),
            view.picture_timeline: viz.timeline_figure(main, target if target is not main else None)}


def picture_class_index(pair, picture_class, picture_class_id) -> int:
    """The class to continue as: from the name picker (pairs with names) or the ImageNet id box."""
    if pair.class_names:
        names = tuple(pair.class_names)
        return names.index(check("class_name", picture_class, choices=names, label="picture_class"))
    return check("class_id", picture_class_id, num_classes=pair.num_classes, label="picture_class_id")


def run_summary(main, target, task: str, k: int, label: str) -> str:
    """The paragraph under the pictures: what ran on the picture, its calls, times and acceptance."""
    h = headline(main, target)
    K = len(main.scales)
    what = (f"kept your picture's first **{k}** of {K} scales" if task == "continue" else
            "kept your picture outside the painted region at every scale"
            + (f" (and its first {k} scales whole)" if k else ""))
    lines = [f"**{main.settings['mode']}** as **{label}**, seed {main.settings['seed']}: {what}."]
    if not main.calls:
        lines.append("Nothing was left to generate: the result is your picture's reconstruction.")
        return "\n\n".join(lines)
    lines.append(f"**{h['target_calls']} target calls** (target alone on the same picture: {h['target_only_calls']}), "
                 f"{h['draft_calls']} draft calls; {h['wall_s']:.2f} s against {h['target_only_wall_s']:.2f} s.")
    if h["verified_tokens"]:
        where = " inside the region" if task == "inpaint" else ""
        lines.append(f"The target accepted **{h['accepted_tokens']} of {h['verified_tokens']}** drafted tokens{where} "
                     f"({h['accepted_tokens'] / h['verified_tokens']:.0%}).")
    return "\n\n".join(lines)


def picture_scale_view(view: View, *, picture_run, picture_scale) -> dict:
    """The token grid and the scale line of the last run on a picture, at the 1-based scale slider."""
    if picture_run is None:
        return {view.picture_grid: None, view.picture_scale_md: NO_RUN}
    k = check("scale", picture_scale, num_scales=len(picture_run.scales), label="picture_scale") - 1
    return {view.picture_grid: viz.token_grid_figure(picture_run, k),
            view.picture_scale_md: viz.scale_summary(picture_run, k)}


def on_picture_model(bank, view: View, *, model) -> dict:
    """The class picker of the chosen pair (names for the embedded pair, ImageNet ids for the official ones)."""
    model = check("model", model, choices=tuple(MODELS))
    try:
        names = bank.get(model).class_names or []
    except ValueError:   # the Generate tab's picker warns and falls back to the embedded pair
        names = list(data.CLASS_NAMES)
    return {view.picture_class: gr.Dropdown(choices=names, value=names[0] if names else None, visible=bool(names)),
            view.picture_class_id: gr.Number(visible=not names)}
