"""Static figures for slides (matplotlib, no pyplot: each function returns a `matplotlib.figure.Figure`
that renders with the Agg backend, whatever backend the process uses).

One function per main figure of the app, drawing the same numbers as its plotly twin: the data
come from the functions the interactive figures use (`viz.status_grid`, `viz.status_counts`,
`masks.mask_matrix`, `viz_teach.why_data`, `economics.cost_whatif` / `frontier`), never from a
second copy of the logic. `figures` saves them as PNG, SVG and PDF.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from . import economics, masks, viz, viz_teach
from . import frontier as fr
from .config import ScaleLayout
from .trace import ACCEPTED, INPUT, STATUS_NAMES, Trace

SIZE = (10, 5.2)       # inches: a 16:9 slide's content area
STATUS_CMAP = ListedColormap([viz.STATUS_COLORS[c] for c in sorted(viz.STATUS_COLORS)])
MASK_CMAP = ListedColormap([viz.MASK_COLORS[0][1], viz.MASK_COLORS[1][1]])


def _figure(size=SIZE) -> Figure:
    return Figure(figsize=size, layout="constrained")


def _clean(ax, keep_spines: bool = True) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    if not keep_spines:
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ("left", "bottom"):
            ax.spines[side].set_visible(False)


def _labels(trace: Trace) -> list[str]:
    return [viz.scale_label(trace.patch_nums, k) for k in range(len(trace.scales))]


# ---- one run --------------------------------------------------------------------------------------

def token_grid(trace: Trace, scale: int, sample: int = 0) -> Figure:
    """The picture after scale k and its pn×pn tokens coloured by status (`viz.status_grid`)."""
    z = viz.status_grid(trace, scale, sample)
    rec = trace.scales[scale]
    fig = _figure((10, 5.4))
    ax_img, ax_grid = fig.subplots(1, 2)
    if rec.image is not None:
        ax_img.imshow(rec.image[sample], extent=(-0.5, rec.pn - 0.5, rec.pn - 0.5, -0.5), interpolation="nearest")
    ax_img.set_title(f"picture after scale {viz.scale_label(trace.patch_nums, scale)}")
    ax_grid.imshow(z, cmap=STATUS_CMAP, vmin=-0.5, vmax=viz.STATUS_MAX, interpolation="nearest")
    if rec.pn <= 16:
        ax_grid.set_xticks(np.arange(-0.5, rec.pn, 1), minor=True)
        ax_grid.set_yticks(np.arange(-0.5, rec.pn, 1), minor=True)
        ax_grid.grid(which="minor", color="white", linewidth=1)
    ax_grid.set_title(f"the {rec.pn}×{rec.pn} = {rec.pn * rec.pn} tokens of this scale")
    for ax in (ax_img, ax_grid):
        _clean(ax, keep_spines=False)
        ax.tick_params(which="both", length=0)
    handles = [Patch(color=viz.STATUS_COLORS[c], label=f"{n} ({int((z == c).sum())})") for c, n in STATUS_NAMES.items()
               if c != INPUT or (z == c).any()]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, frameon=False)
    return fig


def acceptance(trace: Trace) -> Figure:
    """Share of each scale's tokens by status (stacked) and the acceptance rate (`viz.status_counts`)."""
    labels = _labels(trace)
    totals = np.array([s.status.size for s in trace.scales])
    fig = _figure()
    ax = fig.subplots()
    bottom = np.zeros(len(labels))
    for code, counts in viz.status_counts(trace).items():
        share = counts / totals
        ax.bar(labels, share, bottom=bottom, color=viz.STATUS_COLORS[code], label=STATUS_NAMES[code])
        bottom += share
    rate = trace.acceptance_per_scale()
    if any(r is not None for r in rate):
        ax.plot(labels, [np.nan if r is None else r for r in rate], "o-", color="black", label="acceptance rate")
    ax.set_ylim(0, 1.02)
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.set_ylabel("share of the scale's tokens")
    ax.set_xlabel("scale · token grid")
    ax.set_title("Who made each scale's tokens")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    _clean(ax)
    return fig


def timeline(trace: Trace, reference: Trace | None = None, highlight: tuple[float, float, str] | None = None,
             reference_label: str = "target only") -> Figure:
    """Model calls on a wall-clock axis, one lane per model (and the reference run), as in `viz.timeline_figure`."""
    lanes = [("draft", [c for c in trace.calls if c.model == "draft"], 1.0),
             ("target", [c for c in trace.calls if c.model == "target"], 1.0)]
    if reference is not None:
        lanes.append((reference_label, reference.calls, 0.55))
    fig = _figure((10, 2.2 + 0.5 * len(lanes)))
    ax = fig.subplots()
    for y, (lane, calls, alpha) in enumerate(reversed(lanes)):
        for c in calls:
            color = viz.KIND_COLORS[c.kind] or viz.MODEL_COLORS[c.model]
            ax.barh(y, c.seconds * 1e3, left=c.t_start * 1e3, height=0.6, color=color, alpha=alpha,
                    edgecolor="white", linewidth=0.8)
            if c.seconds * 1e3 > 0.04 * max(c2.t_end for c2 in trace.calls) * 1e3:
                ax.text((c.t_start + c.seconds / 2) * 1e3, y, "s" + "–".join(str(s + 1) for s in sorted(
                    {c.scales[0], c.scales[-1]})), ha="center", va="center", fontsize=8, color="white")
    plans = [r.plan for r in trace.rounds if r.plan is not None]
    if plans:
        y = len(lanes)
        for p in plans:
            ax.plot(p.t * 1e3, y, "D", color=viz.PLAN_COLOR, fillstyle="full" if p.chosen else "none")
            if p.chosen:
                ax.text(p.t * 1e3, y + 0.25, f"γ={p.chosen}", ha="center", fontsize=8)
    names = [lane for lane, _, _ in reversed(lanes)] + (["planner"] if plans else [])
    ax.set_yticks(range(len(names)), names)
    if highlight is not None:
        ax.axvspan(highlight[0] * 1e3, highlight[1] * 1e3, color=viz.PLAN_COLOR, alpha=0.18, zorder=0)
        ax.text(highlight[0] * 1e3, len(names) - 0.45, highlight[2], fontsize=9, color="#7a2a5c")
    ax.set_xlabel("wall clock since the run started (ms)")
    ax.set_title("Timeline of model calls")
    handles = [Patch(color=viz.MODEL_COLORS["draft"], label="draft step"),
               Patch(color=viz.MODEL_COLORS["target"], label="target step"),
               Patch(color=viz.KIND_COLORS["verify"], label="verify"), Patch(color=viz.KIND_COLORS["prefill"],
                                                                              label="hand-off prefill")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=9)
    _clean(ax)
    return fig


# ---- masks ---------------------------------------------------------------------------------------

def _mask_image(ax, rule: int, current: int, layout: ScaleLayout, end: int, boundaries: bool = True) -> None:
    m = masks.mask_matrix(rule, current, layout, q_end=end).numpy().astype(np.uint8)
    ax.imshow(m, cmap=MASK_CMAP, vmin=0, vmax=1, interpolation="nearest")
    if boundaries:
        for s in layout.starts[1:]:
            if s < end:
                ax.axhline(s - 0.5, color="#D55E00", alpha=0.35, linewidth=0.6)
                ax.axvline(s - 0.5, color="#D55E00", alpha=0.35, linewidth=0.6)
    _clean(ax, keep_spines=False)


def mask_raster(rule: int, current: int, layout: ScaleLayout = ScaleLayout(), full: bool = False) -> Figure:
    """The sd_mask as a raster (`masks.mask_matrix`), scale boundaries and the prefill window, as in
    `viz.mask_heatmap_figure`."""
    end = viz.mask_window_end(current, layout, full)
    fig = _figure((7, 7.4))
    ax = fig.subplots()
    _mask_image(ax, rule, current, layout, end)
    pe = layout.ends[current]
    ax.add_patch(Rectangle((-0.5, -0.5), pe, pe, fill=False, edgecolor="#D55E00", linewidth=2))
    vals, text = viz._scale_ticks(layout, end)
    ax.set_xticks(vals, text)
    ax.set_yticks(vals, text)
    ax.set_xlabel("key position (ticks: scale)")
    ax.set_ylabel("query position (ticks: scale)")
    c = masks.pair_counts(rule, current, layout, q_end=end)
    ax.set_title(f"sd_mask {rule} · {masks.rule_name(rule)}, hand-off at scale {current + 1}\n"
                 f"{c['allowed']:,} of {c['total']:,} query–key pairs allowed ({c['sparsity']:.1%} blocked)")
    return fig


def six_masks(current: int, layout: ScaleLayout = ScaleLayout(), gallery: dict | None = None) -> Figure:
    """The six rules side by side at one hand-off; with a gallery (`explore.gallery_summary`) the
    pictures each rule gave on one seed under them, with their token agreement with the target alone."""
    end = layout.ends[current]
    if gallery is None:
        fig = _figure((10, 6.6))
        axes = fig.subplots(2, 3).ravel()
        for r, ax in enumerate(axes):
            _mask_image(ax, r, current, layout, end, boundaries=False)
            c = masks.pair_counts(r, current, layout, q_end=end)
            ax.set_title(f"{r} · {masks.rule_name(r)}\n{c['sparsity']:.0%} blocked", fontsize=10)
        fig.suptitle(f"All six sd_mask rules, hand-off at scale {current + 1} (dark = allowed)")
        return fig
    current = gallery["entry_num"]
    layout = ScaleLayout(tuple(gallery["patch_nums"]))
    end = layout.ends[current]
    tops, bottoms = viz_teach.gallery_titles(gallery)
    fig = _figure((14, 4.8))
    axes = fig.subplots(2, 7)
    for c in range(7):
        if c:
            _mask_image(axes[0, c], c - 1, current, layout, end, boundaries=False)
        else:
            _clean(axes[0, c], keep_spines=False)
        axes[0, c].set_title(tops[c].replace("<b>", "").replace("</b>", ""), fontsize=8)
        axes[1, c].imshow(gallery["target"] if c == 0 else gallery["images"][c - 1], interpolation="nearest")
        axes[1, c].set_title(bottoms[c], fontsize=9)
        _clean(axes[1, c], keep_spines=False)
    fig.suptitle(f"Six masks, one seed ({gallery['seed']}): the draft makes scales 1–{current}, the target prefills "
                 "under each sd_mask and finishes")
    return fig


# ---- the economics -------------------------------------------------------------------------------

def why(trace: Trace) -> Figure:
    """The why-chart (`viz_teach.why_data`): tokens per scale, α_k, P(whole scale passes), α^(pn²)."""
    d = viz_teach.why_data(trace)
    x = np.arange(len(d["labels"]))
    fig = _figure()
    ax = fig.subplots()
    ax2 = ax.twinx()
    ax2.bar(x, d["tokens"], color=viz_teach.TOKENS_COLOR, alpha=0.45, label="tokens per scale (pn², right axis)")
    for xi, n in zip(x, d["tokens"]):
        ax2.text(xi, n, str(n), ha="center", va="bottom", fontsize=8, color="#666666")
    ax2.set_ylim(0, max(d["tokens"]) * 1.25)
    ax2.set_ylabel("tokens per scale")
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.plot(x, d["reference"], ":", color="#777777", label=f"α^(pn²) at α = {d['ref_alpha']:.2f}")
    series = [("alpha", "α_k: drafted tokens accepted (measured)", viz.STATUS_COLORS[ACCEPTED], False),
              ("pass_prob", "P(whole scale passes) = ∏ min(1, p/q)", viz_teach.PASS_COLOR, True)]
    if not d["measured"]:
        series = [("planned", "P(whole scale passes): the γ planner's estimate", viz.PLAN_COLOR, True)]
    for key, label, color, labelled in series:
        ys = np.array(viz_teach._nan(d[key]), dtype=float)
        if np.isnan(ys).all():
            continue
        ax.plot(x, ys, "o-", color=color, label=label, linewidth=2.5 if labelled else 1.8)
        if labelled:
            for xi, v in zip(x, d[key]):
                if v is not None:
                    ax.annotate(economics.format_prob(v), (xi, v), textcoords="offset points", xytext=(4, 6),
                                fontsize=8, color=color)
    ax.set_xticks(x, d["labels"], rotation=0, fontsize=9)
    ax.set_ylim(0, 1.12)
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.set_ylabel("probability")
    ax.set_xlabel("scale · token grid")
    ax.set_title("Why exact speculation stalls: a drafted scale is kept only if all of its tokens are accepted")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    fig.legend(h1 + h2, l1 + l2, loc="outside lower center", ncols=2, frameon=False, fontsize=9)
    return fig


def whatif(w: economics.WhatIf) -> Figure:
    """Predicted speed-ups of every mode, the click's measured one and the target alone (`viz_teach.whatif_figure`)."""
    fig = _figure()
    ax = fig.subplots()
    preds = list(w.predictions)
    x = np.arange(len(preds))
    seen = set()
    for xi, p in zip(x, preds):
        if p.speedup is None:
            continue
        name = viz_teach.KIND_NAMES[p.kind]
        ax.bar(xi, p.speedup, color=viz_teach.KIND_COLORS[p.kind], label=None if name in seen else name)
        seen.add(name)
        ax.text(xi, p.speedup, f"{p.speedup:.2f}×", ha="center", va="bottom", fontsize=9)
    labels = [p.label for p in preds]
    if w.measured_speedup is not None and w.click_label in labels:
        xi = labels.index(w.click_label)
        ax.plot(xi, w.measured_speedup, "D", color="black", markersize=9, label="measured in this click")
        ax.annotate(f"measured\n{w.measured_speedup:.2f}×", (xi, w.measured_speedup), textcoords="offset points",
                    xytext=(0, -10), ha="center", va="top", fontsize=9,   # under the diamond, inside its own bar
                    bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none", alpha=0.85))
    ax.axhline(1.0, color="#333333", linestyle="--", linewidth=1)
    ax.text(-0.4, 1.02, "target alone", fontsize=8, va="bottom")
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=9)
    ax.set_ylabel("speed-up vs the target alone (×)")
    ax.set_title(f"Predicted speed-up — draft/target cost {w.ratio:.2f}, fixed cost per call {w.overhead:g}× a "
                 f"target step, rejections ×{w.rejection:g}, batch {w.batch}", fontsize=11)
    ax.legend(loc="upper left", frameon=False, fontsize=9)
    _clean(ax)
    return fig


def frontier(df: pd.DataFrame, metric: str | None = None) -> Figure:
    """Sweep entries as (speed-up, quality) points, the anchors labelled, the Pareto front (`economics.frontier`)."""
    pts, metric = economics.frontier(df, metric)
    label, higher = economics.QUALITY_METRICS[metric]
    fig = _figure()
    ax = fig.subplots()
    markers = {"square": "s", "circle": "o", "triangle-up": "^"}
    kinds = pts["config"].map(viz_teach._config_kind) if len(pts) else pd.Series(dtype=str)
    for kind, (name, symbol, color) in viz_teach.FRONTIER_STYLE.items():
        group = pts[kinds == kind] if len(pts) else pts
        if not len(group):
            continue
        ax.scatter(group["speedup"], group["quality"], marker=markers[symbol], color=color, label=name,
                   s=[90 if f else 40 for f in group["on_front"]], edgecolors="white", zorder=3)
        if kind == "anchor":
            for _, r in group.iterrows():
                ax.annotate(r["config"], (r["speedup"], r["quality"]), textcoords="offset points", xytext=(0, 8),
                            ha="center", fontsize=9)
    front = pts[pts["on_front"]].sort_values("speedup") if len(pts) else pts
    if len(front):
        ax.step(front["speedup"], front["quality"], where="pre", color=viz.PLAN_COLOR, linestyle=":",
                linewidth=2, label="Pareto front")
    ax.axvline(1.0, color="#999999", linestyle="--", linewidth=1)
    if not higher:
        ax.invert_yaxis()
    ax.set_xlabel("speed-up vs the target alone (×) →")
    ax.set_ylabel(label)
    ax.set_title(f"Speed–quality frontier: {label} against speed-up")
    ax.legend(loc="best", frameon=False, fontsize=9)
    _clean(ax)
    return fig


def plain_frontier(points: list, metric: str = "fid_tiny") -> Figure:
    """The pair against plain models (`viz_teach.plain_frontier_figure`'s twin): every measured row at
    (speed-up, quality) with its 95 % interval bar, the plain-models curve, the Pareto front."""
    d = fr.series(points, metric)
    fig = _figure((10, 6))
    ax = fig.subplots()
    markers = {"square": "s", "circle": "o", "diamond": "D", "triangle-up": "^", "triangle-down": "v"}
    if len(d["plain"]["x"]) >= 2:
        ax.plot(d["plain"]["x"], d["plain"]["y"], color="#000000", linewidth=1.5, label="plain-models curve", zorder=2)
    for fam, (name, symbol, color) in viz_teach.PLAIN_FRONTIER_STYLE.items():
        g = d["families"].get(fam)
        if not g:
            continue
        ax.vlines(g["x"], g["lo"], g["hi"], color=color, linewidth=1, zorder=2)   # the interval itself
        ax.plot(g["x"], g["y"], linestyle="none", marker=markers[symbol], color=color,
                markersize=9 if fam == "plain" else 6, label=name, zorder=3, markeredgecolor="white")
        if fam == "plain":
            for x, y, n in zip(g["x"], g["y"], g["names"]):
                ax.annotate(n, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
    if d["front"]["x"]:
        ax.step(d["front"]["x"], d["front"]["y"], where="pre", color=viz.PLAN_COLOR, linestyle=":", linewidth=2,
                label="Pareto front")
        for x, y, n, plain in zip(d["front"]["x"], d["front"]["y"], d["front"]["names"], d["front"]["plain"]):
            if not plain and x > 1:   # SDVAR settings faster than the target that no row beats on both axes
                ax.annotate(n, (x, y), textcoords="offset points", xytext=(6, -12), fontsize=8, color="#333333")
    if not d["families"]:
        ax.text(0.5, 0.5, "no row has both its speed and its quality measured yet", transform=ax.transAxes,
                ha="center", color="#555555")
    ax.axvline(1.0, color="#999999", linestyle="--", linewidth=1)
    if not d["higher"]:
        ax.invert_yaxis()
    ax.set_xlabel("speed-up vs the target alone (×) →")
    ax.set_ylabel(d["label"] + (" ↑" if d["higher"] else " (axis reversed: better is up)"))
    ax.set_title(f"The pair against plain models: {d['label']} against speed-up (bars: 95 % intervals)", fontsize=11)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", frameon=False, fontsize=8)
    _clean(ax)
    return fig


# ---- your own picture -----------------------------------------------------------------------------

def pyramid(pyr) -> Figure:
    """A picture's token pyramid (`picture.Pyramid`), the twin of `viz_picture.pyramid_figure`: per scale
    (columns) the token map, the picture rebuilt from scales 1..k, what scale k added and the residual it
    quantised; headings give PSNR, SSIM and the share of the energy."""
    from .viz_picture import ROWS, RESIDUAL_SCALE, TOKEN_SCALE

    K = len(pyr.tokens)
    fig = _figure((max(10, 1.3 * K), 6.2))
    axes = fig.subplots(len(ROWS), K, squeeze=False)
    V = max(int(max(t.max() for t in pyr.tokens)), 1)
    vmax = float(pyr.residual.max()) or 1.0
    for k in range(K):
        axes[0, k].imshow(pyr.tokens[k], cmap=TOKEN_SCALE.lower(), vmin=0, vmax=V, interpolation="nearest")
        axes[1, k].imshow(pyr.rebuilt[k], interpolation="nearest")
        axes[2, k].imshow(pyr.added[k], interpolation="nearest")
        axes[3, k].imshow(pyr.residual[k], cmap=RESIDUAL_SCALE.lower(), vmin=0, vmax=vmax, interpolation="nearest")
        axes[0, k].set_title(f"{viz.scale_label(pyr.patch_nums, k)}\n{pyr.psnr_db[k]:.1f} dB · SSIM {pyr.ssim[k]:.2f}"
                             f"\n{pyr.energy_share[k]:.0%} energy", fontsize=7)
        for r in range(len(ROWS)):
            _clean(axes[r, k], keep_spines=False)
    for r, text in enumerate(ROWS):
        axes[r, 0].set_ylabel(text, fontsize=8)
    fig.suptitle("Your picture through the pair's scales" + (f" ({pyr.resize})" if pyr.resize else ""), fontsize=10)
    return fig
