"""Tab 3, Shapes: every tensor shape recorded while the run on the Generate tab ran, with its meaning."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from sdvar_core import viz
from sdvar_core.trace import Trace
from sdvar_core.validate import check

from .common import View, listen

COLUMNS = ["scale", "grid", "model", "tensor", "shape", "meaning"]


def build(view: View, num_scales: int) -> None:
    """The tab's components (inside an open gr.Tab), on `view`."""
    gr.Markdown("Every shape below was recorded while the run shown on the Generate tab ran. **B** = images in "
                "the batch (1 here); the transformer runs **2B** rows with classifier-free guidance (conditional "
                "and unconditional); `kv_len` is the KV cache length after the call; pn×pn is the scale's token grid.")
    with gr.Row():
        view.shape_model = gr.Dropdown(["all", "draft", "target", "vqvae"], value="all", label="model",
                                       elem_id="shape-model")
        view.shape_scale = gr.Dropdown(["all"] + [str(k + 1) for k in range(num_scales)], value="all", label="scale",
                                       elem_id="shape-scale")
    view.shape_table = gr.Dataframe(interactive=False, wrap=True, elem_id="shape-table",
                                    column_widths=["7%", "7%", "9%", "11%", "14%", "52%"])


def wire(view: View) -> None:
    for widget in (view.shape_model, view.shape_scale):
        listen(view, widget.input, shapes_view, view, outputs=("shape_table",),
               public="shapes" if widget is view.shape_model else None)


def shapes_view(view: View, *, last_run, shape_model, shape_scale) -> dict:
    return {view.shape_table: shape_frame(last_run, shape_model, shape_scale)}


def shape_frame(run: Trace | None, model, scale) -> pd.DataFrame:
    """The shape table of a run (a Trace, or None: an empty table), filtered by model and 1-based scale
    ('all' keeps everything); both filters are checked (`validate`)."""
    model = check("shape_model", model)
    scale = check("shape_scale", "all" if scale is None else scale,
                  choices=("all", *(str(k + 1) for k in range(len(run.scales) if run is not None else 10))))
    if run is None:
        return pd.DataFrame(columns=COLUMNS)
    df = viz.shape_table(run)
    if model != "all":
        df = df[df["model"] == model]
    if scale != "all":
        df = df[df["scale"] == int(scale)]
    return df.reset_index(drop=True)
