"""The Masks tab's six-masks view: one seed under each sd_mask 0–5 at the tab's hand-off, the pictures
and their token agreement with the target alone beside the six mask patterns — a pattern and its effect
in one view. Runs 7 generations at batch 1 (the target alone, then the six hand-offs)."""
from __future__ import annotations

import gradio as gr

from sdvar_core import viz_teach
from sdvar_core.explore import class_index, gallery_summary, run_mask_gallery

from .common import View, gpu, listen

GALLERY_OUTPUTS = ("gallery", "mask_gallery", "gallery_md")


def build(view: View) -> None:
    """The view's components (at the end of the Masks tab), on `view`."""
    gr.Markdown("### Six masks, one seed\nThe draft makes scales 1…entry_num (the slider above), then the target "
                "takes over under each sd_mask 0–5 — same class (from the Generate tab), same seed, same sampling "
                "settings. Below each mask: the picture it gave and how many of its tokens equal the target alone's.")
    view.gallery = gr.State(None)
    with gr.Row():
        view.gallery_seed = gr.Number(value=0, precision=0, label="Seed", elem_id="gallery-seed", scale=1)
        view.gallery_btn = gr.Button("Run the six masks", variant="primary", elem_id="gallery-run", scale=1)
    view.mask_gallery = gr.Plot(label="six masks, one seed", elem_id="mask-gallery")
    view.gallery_md = gr.Markdown(elem_id="gallery-text")


def wire(view: View, bank) -> None:
    listen(view, view.gallery_btn.click, gpu(duration=60)(on_gallery), bank, view, public="mask_gallery",
           outputs=GALLERY_OUTPUTS, concurrency_id="model", concurrency_limit=1, show_progress_on=[view.mask_gallery])


def on_gallery(bank, view: View, *, model_state, mask_entry, gallery_seed, class_name, class_id, cfg, top_k, top_p,
               precision, progress=gr.Progress()) -> dict:
    """Run the seven generations and draw the gallery."""
    pair = bank.get(model_state)
    cls = class_index(pair, class_name, class_id)
    if gallery_seed is None:
        raise ValueError("seed must be an integer, got nothing")
    settings = dict(cfg=float(cfg), top_k=int(top_k), top_p=float(top_p), precision=str(precision))
    runs = run_mask_gallery(pair, cls, gallery_seed, mask_entry, settings,
                            lambda i, n, desc: progress((i, n), desc=desc))
    g = gallery_summary(runs, int(mask_entry))
    label = pair.class_names[cls] if pair.class_names else f"class {cls}"
    best = max(range(6), key=lambda r: (g["agreement"][r], -r))
    return {view.gallery: g, view.mask_gallery: viz_teach.mask_gallery_figure(g),
            view.gallery_md: f"{label}, seed {int(gallery_seed)}, hand-off at scale {int(mask_entry) + 1}: "
                             + ", ".join(f"sd_mask {r} {g['agreement'][r]:.0%}" for r in range(6))
                             + f" of the tokens equal the target alone's (closest: sd_mask {best})."}
