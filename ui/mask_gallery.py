"""The Masks tab's six-masks view: one seed under each sd_mask 0–5 at the tab's hand-off, the pictures
and their token agreement with the target alone beside the six mask patterns — a pattern and its effect
in one view. Runs 7 generations at batch 1 (the target alone, then the six hand-offs)."""
from __future__ import annotations

import gradio as gr

from sdvar_core import viz_teach
from sdvar_core.engine import Settings
from sdvar_core.explore import class_index, gallery_summary, run_mask_gallery
from sdvar_core.validate import check

from .common import View, listen
from .gpu import gallery_budget, gpu_callback
from .hosting import Limits, admission

GALLERY_OUTPUTS = ("gallery", "mask_gallery", "gallery_md")


def build(view: View) -> None:
    """The view's components (at the end of the Masks tab), on `view`; its session state `view.gallery`
    is made with the page's others (app.py)."""
    gr.Markdown("### Six masks, one seed\nThe draft makes scales 1…entry_num (the slider above), then the target "
                "takes over under each sd_mask 0–5 — same class (from the Generate tab), same seed, same sampling "
                "settings. Below each mask: the picture it gave and how many of its tokens equal the target alone's.")
    with gr.Row():
        view.gallery_seed = gr.Number(value=0, precision=0, label="Seed", elem_id="gallery-seed", scale=1)
        view.gallery_btn = gr.Button("Run the six masks", variant="primary", elem_id="gallery-run", scale=1)
    view.mask_gallery = gr.Plot(label="six masks, one seed", elem_id="mask-gallery")
    view.gallery_md = gr.Markdown(elem_id="gallery-text")


def wire(view: View, demo: gr.Blocks, bank, limits: Limits) -> None:
    """Seven generations: in the Generate lane, counted in a session's Generate clicks."""
    run = gpu_callback(on_gallery, gallery_budget, limits.gpu_max_seconds)   # a GPU request on ZeroGPU
    listen(view, view.gallery_btn.click, run, bank, view, public="mask_gallery",
           outputs=GALLERY_OUTPUTS, concurrency_id="generate", concurrency_limit=limits.generate_concurrency,
           validator=admission(demo, "generate", limits.generates_per_session, "generation"),
           show_progress_on=[view.mask_gallery])


def on_gallery(bank, view: View, *, model, mask_entry, gallery_seed, class_name, class_id, cfg, top_k, top_p,
               precision, progress=gr.Progress()) -> dict:
    """Run the seven generations and draw the gallery. Every input is checked before anything runs."""
    pair = bank.get(model)
    K = pair.layout.num_scales
    cls = class_index(pair, class_name, class_id)
    entry = check("mask_entry", mask_entry, num_scales=K)
    if entry == 0:
        raise ValueError(f"mask_entry must be in 1..{K - 1} for the six masks (at 0 the draft makes no scale, so "
                         "there is no hand-off), got 0")
    seed = check("seed", gallery_seed, label="gallery_seed")
    base = dict(cfg=cfg, top_k=top_k, top_p=top_p, precision=precision)
    checked = Settings(**base)
    checked.validate("target", K, pair.target.device)
    settings = {name: getattr(checked, name) for name in base}
    runs = run_mask_gallery(pair, cls, seed, entry, settings, lambda i, n, desc: progress((i, n), desc=desc))
    g = gallery_summary(runs, entry)
    label = pair.class_names[cls] if pair.class_names else f"class {cls}"
    best = max(range(6), key=lambda r: (g["agreement"][r], -r))
    return {view.gallery: g, view.mask_gallery: viz_teach.mask_gallery_figure(g),
            view.gallery_md: f"{label}, seed {seed}, hand-off at scale {entry + 1}: "
                             + ", ".join(f"sd_mask {r} {g['agreement'][r]:.0%}" for r in range(6))
                             + f" of the tokens equal the target alone's (closest: sd_mask {best})."}
