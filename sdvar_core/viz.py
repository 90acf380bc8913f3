"""Figures and tables for the explorer: pure functions from traces and masks to plotly / numpy / pandas.

Nothing here runs a model. Every function takes a `Trace` (or an sd_mask rule and a scale layout)
and returns a plotly Figure, a uint8 image, a pandas DataFrame or a plain dict, so each one can be
tested without a server. Scales are 0-based in code and shown 1-based ("scale 3 · 3×3") in figures.
"""
from __future__ import annotations

import base64
import io
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from PIL import Image

from . import masks
from .config import ScaleLayout
from .trace import ACCEPTED, CORRECTED, DRAFT, INPUT, STATUS_NAMES, TARGET, TENSOR_MEANINGS, Trace

# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
STATUS_COLORS = {ACCEPTED: "#009E73", CORRECTED: "#D55E00", TARGET: "#0072B2", DRAFT: "#E69F00", INPUT: "#BBBBBB"}
STATUS_MAX = max(STATUS_COLORS) + 0.5   # heatmaps of status codes span [-0.5, STATUS_MAX]
MODEL_COLORS = {"draft": "#E69F00", "target": "#0072B2"}
PLAN_COLOR = "#CC79A7"
KIND_COLORS = {"step": None, "verify": "#004466", "prefill": "#8E44AD"}   # None = the model's colour
MASK_COLORS = [[0.0, "#f4f4f4"], [1.0, "#1f3b73"]]                    # blocked, allowed
_FONT = dict(family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size=12)


def scale_label(patch_nums, k: int) -> str:
    """Scale k (0-based) as shown to people: '3 · 3×3'."""
    pn = patch_nums[k]
    return f"{k + 1} · {pn}×{pn}"


def upscale(image: np.ndarray, size: int = 256) -> np.ndarray:
    """A uint8 (H, W, 3) image enlarged with nearest-neighbour to at least `size` px (integer factor)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    factor = max(1, math.ceil(size / max(image.shape[:2])))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def _layout(fig: go.Figure, title: str | None = None, height: int = 360, **kw) -> go.Figure:
    kw.setdefault("margin", dict(l=50, r=20, t=60 if title else 30, b=40))
    fig.update_layout(title=dict(text=title, x=0.01, xanchor="left") if title else None, height=height, font=_FONT,
                      plot_bgcolor="white", paper_bgcolor="white", **kw)
    return fig


def _grid_lines(at: list[float], lo: float, hi: float, color: str) -> go.Scatter:
    """Vertical and horizontal lines at each value of `at`, spanning [lo, hi], as one line trace
    (one trace renders and serialises much faster than one layout shape per line)."""
    xs, ys = [], []
    for v in at:
        xs += [v, v, None, lo, hi, None]
        ys += [lo, hi, None, v, v, None]
    return go.Scatter(x=xs, y=ys, mode="lines", line=dict(color=color, width=1), hoverinfo="skip",
                      showlegend=False, name="grid")


def _check_scale(trace: Trace, scale: int) -> int:
    n = len(trace.scales)
    if isinstance(scale, bool) or int(scale) != scale or not 0 <= int(scale) < n:
        raise ValueError(f"scale must be an integer in 0..{n - 1}, got {scale!r}")
    return int(scale)


def _check_sample(trace: Trace, sample: int) -> int:
    batch = trace.scales[0].status.shape[0]
    if isinstance(sample, bool) or int(sample) != sample or not 0 <= int(sample) < batch:
        raise ValueError(f"sample must be an integer in 0..{batch - 1}, got {sample!r}")
    return int(sample)


# ---- one run: scale view, acceptance, timeline ------------------------------------------------

def status_grid(trace: Trace, scale: int, sample: int = 0) -> np.ndarray:
    """The (pn, pn) int8 status codes of one sample at one scale (row-major token order)."""
    k, b = _check_scale(trace, scale), _check_sample(trace, sample)
    rec = trace.scales[k]
    return rec.status[b].reshape(rec.pn, rec.pn)


def _status_colorscale() -> list:
    """Discrete colourscale for the status codes 0..n-1 with zmin=-0.5, zmax=STATUS_MAX."""
    out, n = [], len(STATUS_COLORS)
    for code in sorted(STATUS_COLORS):
        out += [[code / n, STATUS_COLORS[code]], [(code + 1) / n, STATUS_COLORS[code]]]
    return out


def _object_stack(arrays: list[np.ndarray]) -> np.ndarray:
    """Stack same-shaped arrays of mixed dtypes on a last axis without casting them to strings."""
    out = np.empty(arrays[0].shape + (len(arrays),), dtype=object)
    for i, a in enumerate(arrays):
        out[..., i] = a.tolist() if a.dtype.kind in "iuf" else a
    return out


def token_grid_figure(trace: Trace, scale: int, sample: int = 0) -> go.Figure:
    """Scale k of one sample: the picture after that scale (left) and its pn×pn tokens by status (right).

    The right panel's heatmap z is exactly `status_grid(trace, scale, sample)`; hovering a cell shows
    the final token, and for verified scales the draft's token with p (target) and q (draft).
    """
    k, b = _check_scale(trace, scale), _check_sample(trace, sample)
    rec = trace.scales[k]
    pn = rec.pn
    z = status_grid(trace, k, b)
    counts = {name: int((z == code).sum()) for code, name in STATUS_NAMES.items()}
    tokens = rec.tokens[b].reshape(pn, pn)
    names = np.vectorize(STATUS_NAMES.get)(z)
    if rec.draft_tokens is not None:
        custom = _object_stack([tokens, rec.draft_tokens[b].reshape(pn, pn), rec.p_draft[b].reshape(pn, pn),
                                rec.q_draft[b].reshape(pn, pn), names])
        hover = ("row %{y}, col %{x}<br><b>%{customdata[4]}</b><br>final token %{customdata[0]}"
                 "<br>draft proposed %{customdata[1]}<br>p target = %{customdata[2]:.3f}"
                 "<br>q draft = %{customdata[3]:.3f}<extra></extra>")
    else:
        custom = _object_stack([tokens, names])
        hover = "row %{y}, col %{x}<br><b>%{customdata[1]}</b><br>token %{customdata[0]}<extra></extra>"

    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.06,
                        subplot_titles=(f"picture after scale {scale_label(trace.patch_nums, k)}",
                                        f"the {pn}×{pn} = {pn * pn} tokens of this scale"))
    if rec.image is not None:
        img = np.asarray(rec.image[b])
        h, w = img.shape[:2]
        # the image spans the same [-0.5, pn-0.5] box as the token cells, so grid lines line up
        fig.add_trace(go.Image(z=img, x0=-0.5 + pn / w / 2, dx=pn / w, y0=-0.5 + pn / h / 2, dy=pn / h,
                               hoverinfo="skip"), row=1, col=1)
        if pn > 1:   # the token cell borders over the picture
            fig.add_trace(_grid_lines([i - 0.5 for i in range(1, pn)], -0.5, pn - 0.5,
                                      "rgba(255,255,255,0.45)"), row=1, col=1)
    fig.add_trace(go.Heatmap(z=z, zmin=-0.5, zmax=STATUS_MAX, colorscale=_status_colorscale(), showscale=False,
                             customdata=custom, hovertemplate=hover, xgap=1 if pn <= 16 else 0,
                             ygap=1 if pn <= 16 else 0, name="status"), row=1, col=2)
    for code, name in STATUS_NAMES.items():   # legend entries (no data): the four colours, and a picture's
        if code == INPUT and not counts[name]:
            continue
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"{name} ({counts[name]})",
                                 marker=dict(size=12, symbol="square", color=STATUS_COLORS[code]),
                                 showlegend=True), row=1, col=2)
    for col in (1, 2):
        fig.update_xaxes(range=[-0.5, pn - 0.5], showgrid=False, zeroline=False, constrain="domain",
                         showticklabels=False, row=1, col=col)
        fig.update_yaxes(range=[pn - 0.5, -0.5], showgrid=False, zeroline=False, scaleanchor=f"x{col}",
                         showticklabels=False, row=1, col=col)
    title = None
    if rec.stale:
        title = "judged against a condition built from the draft's uncorrected tokens (relaxed mode)"
    return _layout(fig, title, height=460, legend=dict(orientation="h", y=-0.06, x=0.5, xanchor="center"))


def scale_summary(trace: Trace, scale: int, sample: int = 0) -> str:
    """One Markdown line: who made scale k and how many tokens have each status."""
    k = _check_scale(trace, scale)
    z = status_grid(trace, k, sample)
    rec = trace.scales[k]
    parts = [f"{int((z == code).sum())} {name}" for code, name in STATUS_NAMES.items() if (z == code).any()]
    who = {"draft": "the draft alone", "target": "the target alone", "draft+target": "the draft, verified by the "
           "target", "input": "your picture (its prefix)"}.get(rec.producer, rec.producer)
    line = f"**Scale {scale_label(trace.patch_nums, k)}** ({z.size} tokens), made by {who}: " + ", ".join(parts) + "."
    if rec.stale:
        line += " Judged against a stale condition (relaxed mode)."
    return line


def status_counts(trace: Trace) -> dict[int, np.ndarray]:
    """Per status code that occurs in the run: tokens with that status at each scale (whole batch)."""
    out = {}
    for code in STATUS_NAMES:
        counts = np.array([int((s.status == code).sum()) for s in trace.scales])
        if counts.sum():
            out[code] = counts
    return out


def acceptance_figure(trace: Trace) -> go.Figure:
    """Per scale: the share of tokens with each status (stacked bars, whole batch) and,
    where the target verified a draft, the acceptance rate as a line."""
    labels = [scale_label(trace.patch_nums, k) for k in range(len(trace.scales))]
    fig = go.Figure()
    totals = np.array([s.status.size for s in trace.scales])
    for code, counts in status_counts(trace).items():
        name = STATUS_NAMES[code]
        fig.add_trace(go.Bar(x=labels, y=counts / totals, name=name, marker_color=STATUS_COLORS[code],
                             customdata=np.stack([counts, totals], axis=-1),
                             hovertemplate="%{x}: %{customdata[0]} of %{customdata[1]} tokens " + name
                                           + "<extra></extra>"))
    rate = trace.acceptance_per_scale()
    if any(r is not None for r in rate):
        fig.add_trace(go.Scatter(x=labels, y=[np.nan if r is None else r for r in rate], mode="lines+markers",
                                 name="acceptance rate", line=dict(color="black", width=2),
                                 hovertemplate="%{x}: %{y:.1%} of drafted tokens accepted<extra></extra>"))
    fig.update_layout(barmode="stack")
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", title="share of the scale's tokens", gridcolor="#e5e5e5")
    fig.update_xaxes(title="scale · token grid", type="category")
    return _layout(fig, "Who made each scale's tokens", height=340,
                   legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"))


def _call_hover(c) -> str:
    scales = ", ".join(str(s + 1) for s in c.scales)
    rule = "none (all cached keys)" if c.mask_rule is None else f"{c.mask_rule} · {masks.rule_name(c.mask_rule)}"
    return (f"<b>{c.model} {c.kind}</b><br>scales {scales}<br>query length {c.query_len}"
            f"<br>KV cache {c.kv_before} → {c.kv_after}<br>mask rule: {rule}"
            f"<br>{c.t_start * 1e3:.1f} → {c.t_end * 1e3:.1f} ms ({c.seconds * 1e3:.1f} ms)")


def _plan_hover(plan) -> str:
    head = (f"<b>round at scale {plan.start + 1}: γ = {plan.chosen}</b>"
            + (" (the target alone)" if plan.chosen == 0 else "")
            + f"<br>pass probability used, scale {plan.start + 1} on: "
            + " ".join(f"{p:.2f}" for p in plan.pass_prob[plan.start:]))
    rows = [f"γ={c.gamma}: {c.gain:.2f} scales, round {c.cost * 1e3:.1f} ms, finish {c.value * 1e3:.1f} ms "
            f"({c.speedup:.2f}×)" + (" ◀" if c.gamma == plan.chosen else "") for c in plan.candidates]
    return head + "<br>" + "<br>".join(rows)


def plan_summary(trace: Trace) -> str | None:
    """One Markdown line on the planned rounds of a gamma="auto" run (None for other runs)."""
    plans = [r.plan for r in trace.rounds if r.plan is not None]
    if not plans:
        return None
    first = next(c for c in plans[0].candidates if c.gamma == plans[0].chosen)
    gammas = " ".join(str(p.chosen) for p in plans)
    return (f"**γ planned before each round** (auto): {gammas} — γ = 0 means the target made the scale alone. "
            f"At the first round the planner expected {first.speedup:.2f}× the target alone for the whole image, "
            f"from this machine's measured call costs and the acceptance seen so far (hover the planner lane "
            f"of the timeline for every candidate).")


def timeline_figure(trace: Trace, reference: Trace | None = None, reference_label: str = "target only",
                    highlight: tuple[float, float, str] | None = None) -> go.Figure:
    """Model calls on a wall-clock axis: one lane per model, one bar per call from t_start to t_end.

    Bars are grouped in one trace per (lane, kind); the total number of bars is len(trace.calls)
    (+ len(reference.calls) when a reference run, e.g. target only, is drawn in its own lane).
    A gamma="auto" run adds a 'planner' lane: one marker per round at the moment it was planned
    (open: γ = 0; filled and labelled: the γ drafted), its candidates in the hover.
    highlight: (start s, end s, label) shades that span, e.g. one round (`story.round_span`).
    """
    fig = go.Figure()
    plans = [r.plan for r in trace.rounds if r.plan is not None]
    for drafts, name in ((False, "planner: γ = 0, target alone"), (True, "planner: drafts γ scales")):
        group = [p for p in plans if (p.chosen > 0) == drafts]
        if group:
            fig.add_trace(go.Scatter(
                x=[p.t * 1e3 for p in group], y=["planner"] * len(group), mode="markers+text" if drafts else "markers",
                marker=dict(symbol="diamond" if drafts else "diamond-open", size=10, color=PLAN_COLOR),
                text=[f"γ={p.chosen}" for p in group] if drafts else None, textposition="top center",
                hovertext=[_plan_hover(p) for p in group], hoverinfo="text", name=name))
    lanes = [("draft", trace.calls, "draft"), ("target", trace.calls, "target")]
    if reference is not None:
        lanes.append((reference_label, reference.calls, None))
    for lane, calls, model in lanes:
        chosen = [c for c in calls if model is None or c.model == model]
        for kind in ("step", "prefill", "verify"):
            group = [c for c in chosen if c.kind == kind]
            if not group:
                continue
            base = MODEL_COLORS.get(group[0].model, "#888888")
            fig.add_trace(go.Bar(
                y=[lane] * len(group), x=[c.seconds * 1e3 for c in group], base=[c.t_start * 1e3 for c in group],
                orientation="h", name=f"{lane}: {kind}", marker=dict(color=KIND_COLORS[kind] or base,
                                                                     line=dict(color="white", width=1)),
                opacity=0.55 if model is None else 1.0,
                text=["s" + "–".join(str(s + 1) for s in sorted({c.scales[0], c.scales[-1]})) for c in group],
                textposition="inside", insidetextanchor="middle",
                hovertext=[_call_hover(c) for c in group], hoverinfo="text"))
    end = max([c.t_end for c in trace.calls] + ([c.t_end for c in reference.calls] if reference else []) + [0])
    if highlight is not None:
        t0, t1, label = highlight
        fig.add_vrect(x0=t0 * 1e3, x1=t1 * 1e3, fillcolor=PLAN_COLOR, opacity=0.18, line=dict(color=PLAN_COLOR, width=1),
                      layer="below", annotation_text=label, annotation_position="top left",
                      annotation_font=dict(size=11, color="#7a2a5c"), name="highlight")
    fig.update_xaxes(title="wall clock since the run started (ms)", range=[0, end * 1e3 * 1.02], gridcolor="#e5e5e5")
    order = (["planner"] if plans else []) + ["draft", "target"] + ([reference_label] if reference is not None else [])
    fig.update_yaxes(categoryorder="array", categoryarray=order[::-1],
                     range=[-0.5, len(order) - 0.5 + 0.5 * bool(plans)])   # room for the γ labels on top
    return _layout(fig, "Timeline of model calls (hover a bar: scales, query length, KV cache, mask)",
                   height=240 + 40 * (reference is not None) + 40 * bool(plans), barmode="overlay", bargap=0.35,
                   uniformtext=dict(mode="hide", minsize=9),
                   legend=dict(orientation="h", y=-0.35, x=0))


# ---- masks ---------------------------------------------------------------------------------------

def _scale_ticks(layout: ScaleLayout, end: int) -> tuple[list[float], list[str]]:
    vals, text = [], []
    for k, (s, e) in enumerate(zip(layout.starts, layout.ends)):
        if s < end and layout.sizes[k] >= 9:   # label scales big enough to hold a tick
            vals.append((s + min(e, end) - 1) / 2)
            text.append(f"{k + 1}")
    return vals, text


def mask_window_end(current: int, layout: ScaleLayout, full: bool) -> int:
    """Rows/keys shown: the whole sequence (full) or the prefill window up to the end of scale `current`."""
    return layout.total if full else layout.ends[current]


def mask_heatmap_figure(rule: int, current: int, layout: ScaleLayout = ScaleLayout(), full: bool = True) -> go.Figure:
    """The sd_mask as a raster: z[q, k] = 1 where query q may attend to key k.

    z equals masks.mask_matrix(rule, current, layout, q_end=end) with end = 680 (full) or the end of
    the current scale (prefill window). Scale boundaries are drawn as lines and labelled 1..10;
    the prefill window is outlined.
    """
    end = mask_window_end(current, layout, full)
    m = masks.mask_matrix(rule, current, layout, q_end=end).numpy().astype(np.uint8)
    fig = go.Figure(go.Heatmap(z=m, zmin=0, zmax=1, colorscale=MASK_COLORS, showscale=False,
                               hovertemplate="query %{y} → key %{x}: %{z}<extra>1 = allowed</extra>"))
    fig.add_trace(_grid_lines([s - 0.5 for s in layout.starts[1:] if s < end], -0.5, end - 0.5,
                              "rgba(213,94,0,0.35)"))
    pe = layout.ends[current]   # the prefill window
    fig.add_shape(type="rect", x0=-0.5, y0=-0.5, x1=pe - 0.5, y1=pe - 0.5, line=dict(color="#D55E00", width=2))
    vals, text = _scale_ticks(layout, end)
    fig.update_xaxes(tickvals=vals, ticktext=text, title="key position (ticks: scale)", range=[-0.5, end - 0.5],
                     showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(tickvals=vals, ticktext=text, title="query position (ticks: scale)", range=[end - 0.5, -0.5],
                     showgrid=False, zeroline=False, scaleanchor="x")
    counts = masks.pair_counts(rule, current, layout, q_end=end)
    title = (f"sd_mask {rule} · {masks.rule_name(rule)}, hand-off at scale {current + 1}<br>"
             f"<sup>{counts['allowed']:,} of {counts['total']:,} query–key pairs allowed "
             f"({counts['sparsity']:.1%} blocked)</sup>")
    return _layout(fig, title, height=620, margin=dict(l=60, r=20, t=80, b=50))


def mask_png(mask: np.ndarray) -> str:
    """A bool matrix as a PNG data URI (allowed = dark), for compact small multiples."""
    mask = np.asarray(mask, dtype=bool)
    lo, hi = (np.array(Image.new("RGB", (1, 1), c).getpixel((0, 0))) for c in (MASK_COLORS[0][1], MASK_COLORS[1][1]))
    rgb = np.where(mask[..., None], hi, lo).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def mask_small_multiples_figure(current: int, layout: ScaleLayout = ScaleLayout(), full: bool = True) -> go.Figure:
    """All six sd_mask rules side by side at one hand-off scale, each as a raster image with its sparsity."""
    end = mask_window_end(current, layout, full)
    titles = []
    for r in range(6):
        c = masks.pair_counts(r, current, layout, q_end=end)
        titles.append(f"<b>{r}</b> · {masks.rule_name(r)}<br>{c['sparsity']:.0%} blocked")
    fig = make_subplots(rows=2, cols=3, subplot_titles=titles, horizontal_spacing=0.04, vertical_spacing=0.12)
    for r in range(6):
        m = masks.mask_matrix(r, current, layout, q_end=end).numpy()
        row, col = r // 3 + 1, r % 3 + 1
        fig.add_trace(go.Image(source=mask_png(m), name=f"rule {r}", hoverinfo="skip"), row=row, col=col)
        fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, range=[-0.5, end - 0.5], row=row, col=col)
        fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, range=[end - 0.5, -0.5],
                         scaleanchor=f"x{r + 1 if r else ''}", row=row, col=col)
    fig.update_annotations(font=dict(size=11))
    return _layout(fig, f"All six rules, hand-off at scale {current + 1} (dark = allowed)", height=560,
                   margin=dict(l=10, r=10, t=90, b=10))


def attended_keys_figure(rule: int, current: int, scale: int, row: int, col: int,
                         layout: ScaleLayout = ScaleLayout()) -> go.Figure:
    """Which keys the token (scale, row, col) attends to, drawn on every scale's pn×pn grid.

    Subplot j's heatmap z is masks.attended_keys(...)[j] as 0/1; the query token is ringed.
    """
    keys = masks.attended_keys(rule, current, scale, row, col, layout)
    n = layout.num_scales
    cols = min(n, 5)
    rows = math.ceil(n / cols)
    titles = [f"scale {scale_label(layout.patch_nums, j)}: {int(keys[j].sum())}/{keys[j].numel()}" for j in range(n)]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.03, vertical_spacing=0.14)
    for j, grid in enumerate(keys):
        r, c = j // cols + 1, j % cols + 1
        pn = layout.patch_nums[j]
        fig.add_trace(go.Heatmap(z=grid.numpy().astype(np.uint8), zmin=0, zmax=1, colorscale=MASK_COLORS,
                                 showscale=False, xgap=1 if pn <= 16 else 0, ygap=1 if pn <= 16 else 0,
                                 hovertemplate=f"scale {j + 1}, row %{{y}}, col %{{x}}: %{{z}}<extra>1 = attended</extra>"),
                      row=r, col=c)
        fig.update_xaxes(range=[-0.5, pn - 0.5], showticklabels=False, showgrid=False, zeroline=False,
                         constrain="domain", row=r, col=c)
        fig.update_yaxes(range=[pn - 0.5, -0.5], showticklabels=False, showgrid=False, zeroline=False,
                         scaleanchor=f"x{j + 1 if j else ''}", row=r, col=c)
        if j == scale:
            fig.add_trace(go.Scatter(x=[col], y=[row], mode="markers", showlegend=False, hoverinfo="skip",
                                     marker=dict(symbol="square-open", size=max(6, 110 // pn), color="#D55E00",
                                                 line=dict(width=3))), row=r, col=c)
    total = sum(int(k.sum()) for k in keys)
    fig.update_annotations(font=dict(size=11))
    return _layout(fig, f"Token (scale {scale + 1}, row {row}, col {col}) attends to {total} of "
                        f"{layout.total} keys under rule {rule} (ringed: the token itself)",
                   height=150 * rows + 140, margin=dict(l=10, r=10, t=90, b=10))


def pair_count_table(rule: int, current: int, layout: ScaleLayout = ScaleLayout(), full: bool = True) -> pd.DataFrame:
    """Allowed query-key pairs per query scale, plus a total row (from masks.pair_counts)."""
    end = mask_window_end(current, layout, full)
    counts = masks.pair_counts(rule, current, layout, q_end=end)
    rows = []
    for k, c in counts["per_scale"].items():
        role = "prefix" if k < current else "current" if k == current else "after"
        rows.append({"query scale": scale_label(layout.patch_nums, k), "role": role,
                     "allowed": c["allowed"], "of": c["total"], "blocked": f"{c['sparsity']:.1%}"})
    rows.append({"query scale": "all", "role": "", "allowed": counts["allowed"],
                 "of": counts["total"], "blocked": f"{counts['sparsity']:.1%}"})
    return pd.DataFrame(rows)


# ---- shapes --------------------------------------------------------------------------------------

_MODEL_ORDER = {"draft": 0, "target": 1, "vqvae": 2}
_TENSOR_ORDER = {t: i for i, t in enumerate(["input", "kv_len", "logits", "cfg_logits", "indices", "h_up", "f_hat",
                                             "next_input"])}


def shape_table(trace: Trace) -> pd.DataFrame:
    """Every tensor shape the run recorded: one row per (scale, model, tensor), with its meaning."""
    rows = []
    for r in trace.shapes:
        rows.append({"scale": r.scale + 1, "grid": f"{trace.patch_nums[r.scale]}×{trace.patch_nums[r.scale]}",
                     "model": r.model, "tensor": r.tensor, "shape": "(" + ", ".join(map(str, r.shape)) + ")",
                     "meaning": TENSOR_MEANINGS.get(r.tensor, "")})
    df = pd.DataFrame(rows, columns=["scale", "grid", "model", "tensor", "shape", "meaning"])
    if len(df):
        key = list(zip(df["scale"], df["model"].map(lambda m: _MODEL_ORDER.get(m, 9)),
                       df["tensor"].map(lambda t: _TENSOR_ORDER.get(t, 99))))
        df = df.iloc[sorted(range(len(df)), key=key.__getitem__)].reset_index(drop=True)
    return df


# ---- sweeps --------------------------------------------------------------------------------------

SWEEP_METRICS = [("speedup", "speed-up vs target only (×)"), ("target_calls", "target calls per run"),
                 ("token_agreement", "token agreement with target only")]


def sweep_figure(df: pd.DataFrame) -> go.Figure:
    """Sweep results: speed-up, target calls and agreement (class accuracy too when measured) against the
    swept parameter, one line per series (schedule: direction × sd_mask; speculative: τ)."""
    metrics = list(SWEEP_METRICS)
    if "class_accuracy" in df and df["class_accuracy"].notna().any():
        metrics.append(("class_accuracy", "class accuracy (classifier)"))
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[m[1] for m in metrics], horizontal_spacing=0.07)
    runs = df[df["kind"] != "baseline"] if len(df) else df
    x_name = "gamma" if len(runs) and (runs["kind"] == "speculative").all() else "entry_num"
    palette = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]
    for i, (series, group) in enumerate(runs.groupby("series", sort=False) if len(runs) else []):
        group = group.sort_values(x_name)
        for j, (metric, _) in enumerate(metrics):
            fig.add_trace(go.Scatter(x=group[x_name], y=group[metric], mode="lines+markers", name=series,
                                     legendgroup=series, showlegend=j == 0,
                                     line=dict(color=palette[i % len(palette)]),
                                     hovertemplate=f"{series}<br>{x_name} %{{x}}: %{{y:.3f}}<extra></extra>"),
                          row=1, col=j + 1)
    for _, base in (df[df["kind"] == "baseline"].iterrows() if len(df) else []):
        for j, (metric, _) in enumerate(metrics):
            if pd.notna(base[metric]):
                fig.add_hline(y=float(base[metric]), line=dict(dash="dot", color="#777777", width=1),
                              annotation_text=base["series"], annotation_font_size=10, row=1, col=j + 1)
    fig.update_xaxes(title="γ" if x_name == "gamma" else "entry_num", gridcolor="#e5e5e5", dtick=1)
    fig.update_yaxes(gridcolor="#e5e5e5")
    return _layout(fig, "Sweep (dotted: target-only and draft-only baselines of the same sweep)", height=400,
                   legend=dict(orientation="h", y=-0.25, x=0))
