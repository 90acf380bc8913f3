"""Tab 2, Masks: each sd_mask rule as a heatmap, all six side by side, pair counts, and which keys one
token attends to on the multi-scale grids."""
from __future__ import annotations

import gradio as gr

from sdvar_core import masks, viz
from sdvar_core.config import ScaleLayout
from sdvar_core.validate import check

from . import mask_gallery
from .common import View, listen
from .hosting import Limits

INCLUDING_EXCLUDING = (
    "**Including / excluding the current scale.** At a hand-off the incoming model prefills the earlier "
    "scales (already fixed) and the *current* scale (the first one it must produce). Rules 1 and 4 apply their "
    "restriction to the current scale too (*including*); rules 2 and 5 exempt it, so the current scale attends "
    "like normal VAR (*excluding*). Scales after the current one always attend natively, from the KV cache.")
MASK_OUTPUTS = ("mask_heatmap", "mask_counts", "rules_md", "mask_multiples")
KEY_OUTPUTS = ("keys_plot", "pick_row", "pick_col")


def rule_markdown(rule: int) -> str:
    """The selected rule's plain explanation (with the including/excluding note for rules 1, 2, 4, 5)."""
    text = f"### {rule} · {masks.rule_name(rule)}\n{masks.rule_explanation(rule)}"
    return text + (f"\n\n{INCLUDING_EXCLUDING}" if rule in (1, 2, 4, 5) else "")


def all_rules_markdown() -> str:
    """Every rule's explanation, after the note on including / excluding the current scale."""
    return "\n\n".join([INCLUDING_EXCLUDING] + [f"**{r} · {masks.rule_name(r)}.** {masks.rule_explanation(r)}"
                                                for r in range(6)])


# ---- layout -------------------------------------------------------------------------------------

def build(view: View, layout: ScaleLayout) -> None:
    """The tab's components (inside an open gr.Tab), on `view`."""
    K = layout.num_scales
    gr.Markdown("At a hand-off the incoming model must produce scale *entry_num + 1*. It prefills the earlier "
                "scales and the current one in a single call; the **sd_mask** rule decides which keys each of "
                "those queries may attend to. Scales after that are generated one at a time on the KV cache "
                "(native VAR attention).")
    with gr.Row():
        view.mask_rule = gr.Radio([(f"{r} · {masks.rule_name(r)}", r) for r in range(6)], value=1,
                                  label="sd_mask", elem_id="mask-rule", scale=3)
        with gr.Column(scale=2):
            view.mask_entry = gr.Slider(0, K - 1, value=4, step=1, elem_id="entry-num",
                                        label="entry_num (the incoming model starts at scale entry_num + 1)")
            view.mask_full = gr.Checkbox(False, elem_id="mask-full", label=f"show the whole sequence "
                                         f"({layout.total}×{layout.total}) instead of the prefill window")
    with gr.Row(equal_height=False):
        view.mask_heatmap = gr.Plot(label="attention mask (dark = allowed; box = prefill window)",
                                    elem_id="mask-heatmap", scale=3)
        with gr.Column(scale=2):
            view.rules_md = gr.Markdown(rule_markdown(1), elem_id="rules")
            view.mask_counts = gr.Dataframe(label="allowed query–key pairs per query scale", interactive=False,
                                            elem_id="mask-counts")
    gr.Markdown("### Which keys does one token see?")
    with gr.Row():
        view.pick_scale = gr.Slider(1, K, value=6, step=1, label="query scale", elem_id="pick-scale")
        view.pick_row = gr.Slider(0, layout.patch_nums[5] - 1, value=2, step=1, label="row", elem_id="pick-row")
        view.pick_col = gr.Slider(0, layout.patch_nums[5] - 1, value=3, step=1, label="col", elem_id="pick-col")
    view.keys_plot = gr.Plot(label="attended keys on every scale's grid", elem_id="keys-plot")
    view.mask_multiples = gr.Plot(label="all six rules", elem_id="mask-multiples")
    with gr.Accordion("Every rule explained", open=False):
        gr.Markdown(all_rules_markdown(), elem_id="all-rules")
    mask_gallery.build(view)


def wire(view: View, demo: gr.Blocks, bank, limits: Limits) -> None:
    """Any change of rule, hand-off or window redraws the masks; rule, hand-off or token the attended keys.
    The six masks' generations run in the Generate lane (`mask_gallery`)."""
    for widget in (view.mask_rule, view.mask_entry, view.mask_full):
        listen(view, widget.input, on_mask, bank, view, outputs=MASK_OUTPUTS, trigger_mode="always_last",
               public="mask_view" if widget is view.mask_rule else None)
    for widget in (view.pick_scale, view.pick_row, view.pick_col, view.mask_rule, view.mask_entry):
        listen(view, widget.input, on_keys, bank, view, outputs=KEY_OUTPUTS, trigger_mode="always_last",
               public="keys_view" if widget is view.pick_scale else None)   # the public endpoint first
    opened = listen(view, view.masks_tab.select, on_mask, bank, view, outputs=MASK_OUTPUTS)
    listen(view, opened.then, on_keys, bank, view, outputs=KEY_OUTPUTS)
    mask_gallery.wire(view, demo, bank, limits)


# ---- callbacks ----------------------------------------------------------------------------------

def on_mask(bank, view: View, *, model, mask_rule, mask_entry, mask_full) -> dict:
    return mask_view(view, bank.get(model).layout, mask_rule, mask_entry, mask_full)


def on_keys(bank, view: View, *, model, mask_rule, mask_entry, pick_scale, pick_row, pick_col) -> dict:
    return keys_view(view, bank.get(model).layout, mask_rule, mask_entry, pick_scale, pick_row, pick_col)


def mask_view(view: View, layout: ScaleLayout, rule, current, full) -> dict:
    """The heatmap, the pair-count table, the rule's explanation and the six small multiples."""
    rule = check("mask_rule", rule)
    current = check("mask_entry", current, num_scales=layout.num_scales)
    full = check("mask_full", full)
    return {view.mask_heatmap: viz.mask_heatmap_figure(rule, current, layout, full),
            view.mask_counts: viz.pair_count_table(rule, current, layout, full),
            view.rules_md: rule_markdown(rule),
            view.mask_multiples: viz.mask_small_multiples_figure(current, layout, full)}


def keys_view(view: View, layout: ScaleLayout, rule, current, scale, row, col) -> dict:
    """The attended-keys figure of token (scale, row, col), scale 1-based; row and col are clamped to
    the scale's grid (their sliders too), so moving to a smaller scale keeps a valid token. On the
    1×1 scale the row and column sliders hold 0 and are locked."""
    rule = check("mask_rule", rule)
    current = check("mask_entry", current, num_scales=layout.num_scales)
    k = check("pick_scale", scale, num_scales=layout.num_scales) - 1
    pn = layout.patch_nums[k]
    row = min(check("pick_row", row), pn - 1)
    col = min(check("pick_col", col), pn - 1)
    # a slider needs minimum < maximum: the 1×1 grid keeps 0..1 and locks the slider at 0
    grid = dict(maximum=max(pn - 1, 1), interactive=pn > 1)
    return {view.keys_plot: viz.attended_keys_figure(rule, current, k, row, col, layout),
            view.pick_row: gr.Slider(value=row, **grid), view.pick_col: gr.Slider(value=col, **grid)}
