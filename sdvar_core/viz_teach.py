"""The teaching figures (plotly): why exact speculation stalls, the cost what-if, the speed–quality
frontier and the six masks on one seed. Pure functions over the numbers of `economics` (and the
gallery summary of `explore`); their static twins for slides are in `viz_static`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import economics, masks
from . import frontier as fr
from .config import ScaleLayout
from .trace import ACCEPTED, Trace
from .viz import MODEL_COLORS, PLAN_COLOR, STATUS_COLORS, _layout, mask_png, scale_label, upscale

PASS_COLOR = "#D55E00"
TOKENS_COLOR = "#BBBBBB"
KIND_COLORS = {"speculative": MODEL_COLORS["target"], "auto": "#56B4E9", "handoff": MODEL_COLORS["draft"],
               "draft": "#999999", "click": PLAN_COLOR}
KIND_NAMES = {"speculative": "exact speculative (lossless)", "auto": "exact speculative, γ planned (lossless)",
              "handoff": "hand-off (lossy)", "draft": "draft alone (lossy)", "click": "this click's own setting"}


# ---- why it stalls ------------------------------------------------------------------------------

def why_data(trace: Trace) -> dict:
    """The why-chart's series, one value per scale (None where not measured): labels, tokens, alpha,
    pass_prob, planned, and reference = ᾱ^(pn²) with ᾱ the run's mean per-token acceptance (or the
    assumed one), ref_alpha."""
    odds = economics.scale_odds(trace)
    ref = economics.mean_alpha(odds)
    ref = economics.ASSUMED_ALPHA if ref is None else ref
    return {"labels": [scale_label(trace.patch_nums, o.scale) for o in odds],
            "tokens": [o.tokens for o in odds], "alpha": [o.alpha for o in odds],
            "pass_prob": [o.pass_prob for o in odds], "planned": [o.planned for o in odds],
            "reference": [ref ** o.tokens for o in odds], "ref_alpha": ref,
            "measured": any(o.pass_prob is not None for o in odds)}


def _nan(values) -> list[float]:
    return [np.nan if v is None else v for v in values]


def why_figure(trace: Trace) -> go.Figure:
    """Per scale: tokens (grey bars, right axis), measured per-token acceptance α_k, and the probability
    that the whole scale passes (∏ min(1, p/q), labelled), with the α^(pn²) curve of independent tokens."""
    d = why_data(trace)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Bar(x=d["labels"], y=d["tokens"], name="tokens per scale (pn², right axis)",
                         marker_color=TOKENS_COLOR, opacity=0.45, text=d["tokens"], textposition="outside",
                         hovertemplate="%{x}: %{y} tokens<extra></extra>"), secondary_y=True)
    fig.add_trace(go.Scatter(x=d["labels"], y=d["reference"], mode="lines", name=f"α^(pn²) at α = {d['ref_alpha']:.2f}",
                             line=dict(color="#777777", dash="dot", width=1.5),
                             hovertemplate="%{x}: %{y:.2g} if every token passed with α<extra></extra>"))
    if d["measured"]:
        fig.add_trace(go.Scatter(x=d["labels"], y=_nan(d["alpha"]), mode="lines+markers",
                                 name="α_k: drafted tokens accepted (measured)",
                                 line=dict(color=STATUS_COLORS[ACCEPTED], width=2),
                                 hovertemplate="%{x}: %{y:.1%} of drafted tokens accepted<extra></extra>"))
        fig.add_trace(go.Scatter(x=d["labels"], y=_nan(d["pass_prob"]), mode="lines+markers+text",
                                 name="P(whole scale passes) = ∏ min(1, p/q)", line=dict(color=PASS_COLOR, width=3),
                                 marker=dict(size=9), text=[economics.format_prob(p) for p in d["pass_prob"]],
                                 textposition="top right", textfont=dict(color=PASS_COLOR, size=11),
                                 hovertemplate="%{x}: every token passes with probability %{y:.3g}<extra></extra>"))
    elif any(p is not None for p in d["planned"]):
        fig.add_trace(go.Scatter(x=d["labels"], y=_nan(d["planned"]), mode="lines+markers+text",
                                 name="P(whole scale passes): the γ planner's estimate", line=dict(color=PLAN_COLOR),
                                 text=[economics.format_prob(p) for p in d["planned"]], textposition="top right",
                                 hovertemplate="%{x}: %{y:.3g}<extra>planner</extra>"))
    else:
        fig.add_annotation(text="this run verified no drafted tokens — generate in speculative mode",
                           x=0.5, y=0.6, xref="paper", yref="paper", showarrow=False, font=dict(size=13, color="#555"))
    fig.update_yaxes(range=[0, 1.12], tickformat=".0%", title="probability", gridcolor="#e5e5e5", secondary_y=False)
    fig.update_yaxes(range=[0, max(d["tokens"]) * 1.25], title="tokens per scale", showgrid=False, secondary_y=True)
    fig.update_xaxes(title="scale · token grid", type="category")
    return _layout(fig, "Why exact speculation stalls: a drafted scale is kept only if all of its tokens are accepted",
                   height=380, legend=dict(orientation="h", y=-0.3, x=0))


# ---- the cost what-if ---------------------------------------------------------------------------

def whatif_figure(w: economics.WhatIf) -> go.Figure:
    """Predicted speed-up vs the target alone of every mode (bars, coloured by kind), the click's measured
    speed-up (a diamond on its own setting) and the target alone (a line at 1)."""
    fig = go.Figure()
    for kind, name in KIND_NAMES.items():
        group = [p for p in w.predictions if p.kind == kind and p.speedup is not None]
        if not group:
            continue
        fig.add_trace(go.Bar(x=[p.label for p in group], y=[p.speedup for p in group], name=name,
                             marker_color=KIND_COLORS[kind], text=[f"{p.speedup:.2f}×" for p in group],
                             textposition="outside", hovertext=[f"<b>{p.label}</b><br>{p.detail}<br>predicted "
                                                                f"{p.speedup:.2f}× ({p.seconds * 1e3:.0f} ms)"
                                                                for p in group], hoverinfo="text"))
    labels = [p.label for p in w.predictions]
    if w.measured_speedup is not None and w.click_label in labels:
        fig.add_trace(go.Scatter(x=[w.click_label], y=[w.measured_speedup], mode="markers+text",
                                 marker=dict(symbol="diamond", size=14, color="black"), name="measured in this click",
                                 text=[f"measured {w.measured_speedup:.2f}×"], textposition="middle right",
                                 hovertemplate="measured in this click: %{y:.2f}×<extra></extra>"))
    fig.add_hline(y=1.0, line=dict(color="#333333", dash="dash", width=1), annotation_text="target alone",
                  annotation_position="top left", annotation_font_size=10)
    top = max([p.speedup for p in w.predictions if p.speedup is not None] + [w.measured_speedup or 0, 1.0])
    fig.update_yaxes(range=[0, top * 1.2], title="speed-up vs the target alone (×)", gridcolor="#e5e5e5")
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=labels)
    title = (f"Predicted speed-up — draft/target cost {w.ratio:.2f}, fixed cost per call {w.overhead:g}× a target "
             f"step, rejections ×{w.rejection:g}, batch {w.batch}")
    return _layout(fig, title, height=400, barmode="group", legend=dict(orientation="h", y=-0.22, x=0))


# ---- the speed–quality frontier ------------------------------------------------------------------

def _config_kind(config: str) -> str:
    if config in economics.ANCHORS:
        return "anchor"
    return "speculative" if "γ" in config else "handoff"


FRONTIER_STYLE = {"anchor": ("target / draft alone", "square", "#000000"),
                  "handoff": ("hand-off", "circle", MODEL_COLORS["draft"]),
                  "speculative": ("speculative", "triangle-up", MODEL_COLORS["target"])}


def _front_staircase(xs, ys) -> go.Scatter:
    """The Pareto front through points sorted by speed-up, as a dotted staircase: the edge of what it dominates."""
    sx, sy = [], []
    for x, y in zip(xs, ys):
        if sx:
            sx.append(sx[-1])
            sy.append(y)
        sx.append(x)
        sy.append(y)
    return go.Scatter(x=sx, y=sy, mode="lines", name="Pareto front", hoverinfo="skip",
                      line=dict(color=PLAN_COLOR, width=2, dash="dot"))


def frontier_figure(df: pd.DataFrame, metric: str | None = None) -> go.Figure:
    """Every sweep entry as a point (speed-up vs the target alone, quality), the two anchors labelled, the
    Pareto front as a step line; hover: the settings and calls. df: the Compare tab's sweep table."""
    pts, metric = economics.frontier(df, metric)
    label, higher = economics.QUALITY_METRICS[metric]
    fig = go.Figure()
    kinds = pts["config"].map(_config_kind) if len(pts) else pd.Series(dtype=str)
    for kind, (name, symbol, color) in FRONTIER_STYLE.items():
        group = pts[kinds == kind] if len(pts) else pts
        if not len(group):
            continue
        fig.add_trace(go.Scatter(
            x=group["speedup"], y=group["quality"], mode="markers+text" if kind == "anchor" else "markers", name=name,
            text=group["config"] if kind == "anchor" else None, textposition="top center",
            marker=dict(symbol=symbol, size=[13 if f else 9 for f in group["on_front"]], color=color,
                        line=dict(color="white", width=1)),
            hovertext=group["hover"], hoverinfo="text"))
    front = pts[pts["on_front"]].sort_values("speedup") if len(pts) else pts
    if len(front):
        fig.add_trace(_front_staircase(front["speedup"], front["quality"]))
    if not len(pts):
        fig.add_annotation(text="run a sweep to see its modes here", x=0.5, y=0.5, xref="paper", yref="paper",
                           showarrow=False, font=dict(size=13, color="#555"))
    fig.add_vline(x=1.0, line=dict(color="#999999", dash="dash", width=1))
    fig.update_xaxes(title="speed-up vs the target alone (×) →", gridcolor="#e5e5e5")
    fig.update_yaxes(title=label + (" ↑" if higher else " ↓ (lower is better)"), gridcolor="#e5e5e5",
                     autorange=True if higher else "reversed")
    return _layout(fig, f"Speed–quality frontier: {label} against speed-up (larger markers: on the front)",
                   height=420, legend=dict(orientation="h", y=-0.2, x=0))


# ---- the pair's precomputed frontier against plain models ---------------------------------------

# family → (legend name, plotly symbol, colour); the static twin maps the symbols to matplotlib markers
PLAIN_FRONTIER_STYLE = {"plain": ("plain models", "square", "#000000"),
                        "D→T": (fr.FAMILIES["D→T"], "circle", MODEL_COLORS["draft"]),
                        "T→D": (fr.FAMILIES["T→D"], "diamond", "#009E73"),
                        "exact": (fr.FAMILIES["exact"], "triangle-up", MODEL_COLORS["target"]),
                        "relaxed": (fr.FAMILIES["relaxed"], "triangle-down", "#D55E00")}
SWEEP_STYLE = ("your sweep (its own target-alone run; few images)", "x", "#555555")


def plain_frontier_figure(points: list, metric: str = "fid_tiny", sweep: pd.DataFrame | None = None,
                          title: str | None = None) -> go.Figure:
    """Every measured row as a point (speed-up vs the target alone →, quality with its 95 % interval bars),
    the plain models joined as the plain-models curve, the Pareto front as a dotted staircase; a sweep
    table of the Compare tab (`speedup` and the metric's column) drawn over it. points: `frontier.Point`s."""
    d = fr.series(points, metric)
    fig = go.Figure()
    if len(d["plain"]["x"]) >= 2:
        fig.add_trace(go.Scatter(x=d["plain"]["x"], y=d["plain"]["y"], mode="lines", name="plain-models curve",
                                 hoverinfo="skip", line=dict(color="#000000", width=1.5)))
    for fam, (name, symbol, color) in PLAIN_FRONTIER_STYLE.items():
        g = d["families"].get(fam)
        if not g:
            continue
        fig.add_trace(go.Scatter(x=g["bars_x"], y=g["bars_y"], mode="lines", line=dict(color=color, width=1),
                                 hoverinfo="skip", showlegend=False, legendgroup=fam))
        fig.add_trace(go.Scatter(
            x=g["x"], y=g["y"], mode="markers+text" if fam == "plain" else "markers", name=name, legendgroup=fam,
            text=g["names"] if fam == "plain" else None, textposition="top center",
            marker=dict(symbol=symbol, size=11 if fam == "plain" else 8, color=color, line=dict(color="white", width=1)),
            hovertext=g["hover"], hoverinfo="text"))
    if d["front"]["x"]:
        fig.add_trace(_front_staircase(d["front"]["x"], d["front"]["y"]))
    if sweep is not None and len(sweep) and metric in sweep and "speedup" in sweep:
        q = pd.to_numeric(sweep[metric], errors="coerce")
        ok = q.notna() & pd.to_numeric(sweep["speedup"], errors="coerce").notna()
        if ok.any():
            name, symbol, color = SWEEP_STYLE
            fig.add_trace(go.Scatter(x=sweep["speedup"][ok], y=q[ok], mode="markers", name=name,
                                     marker=dict(symbol=symbol, size=9, color=color),
                                     hovertext=sweep["config"][ok].astype(str) if "config" in sweep else None,
                                     hoverinfo="text+x+y"))
    if not d["families"]:
        fig.add_annotation(text="no row has both its speed and its quality measured yet", x=0.5, y=0.5,
                           xref="paper", yref="paper", showarrow=False, font=dict(size=13, color="#555"))
    fig.add_vline(x=1.0, line=dict(color="#999999", dash="dash", width=1))
    fig.update_xaxes(title="speed-up vs the target alone (×) →", gridcolor="#e5e5e5")
    fig.update_yaxes(title=d["label"] + (" ↑" if d["higher"] else " ↓"), gridcolor="#e5e5e5",
                     autorange=True if d["higher"] else "reversed")
    return _layout(fig, title or f"The pair against plain models: {d['label']} against speed-up (bars: 95 % intervals)",
                   height=480, legend=dict(orientation="h", y=-0.2, x=0))


# ---- six masks on one seed -----------------------------------------------------------------------

def gallery_titles(g: dict) -> tuple[list[str], list[str]]:
    """(mask titles, picture titles) of the gallery's seven columns: the target alone, then rules 0–5."""
    tops = ["target alone (no hand-off)"] + [f"<b>{r}</b> · {masks.rule_name(r)}" for r in range(6)]
    bottoms = ["reference"] + [f"{g['agreement'][r]:.0%} tokens = target" for r in range(6)]
    return tops, bottoms


def mask_gallery_figure(g: dict) -> go.Figure:
    """The six masks and their effect in one view: top row the prefill masks at the gallery's hand-off
    (dark = allowed), bottom row the final pictures with each one's token agreement with the target alone.
    g: `explore.gallery_summary`."""
    layout = ScaleLayout(tuple(g["patch_nums"]))
    e = g["entry_num"]
    end = layout.ends[e]
    tops, bottoms = gallery_titles(g)
    fig = make_subplots(rows=2, cols=7, subplot_titles=tops + bottoms, horizontal_spacing=0.015,
                        vertical_spacing=0.1)
    for c in range(7):
        if c:
            m = masks.mask_matrix(c - 1, e, layout, q_end=end).numpy()
            fig.add_trace(go.Image(source=mask_png(m), hoverinfo="skip", name=f"mask {c - 1}"), row=1, col=c + 1)
        img = g["target"] if c == 0 else g["images"][c - 1]
        fig.add_trace(go.Image(z=upscale(np.asarray(img), 128), hoverinfo="skip",
                               name="target alone" if c == 0 else f"picture {c - 1}"), row=2, col=c + 1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_annotations(font=dict(size=10))
    return _layout(fig, f"Six masks, one seed ({g['seed']}): the draft makes scales 1–{e}, the target prefills under "
                        f"each sd_mask and finishes", height=430, margin=dict(l=10, r=10, t=80, b=10))
