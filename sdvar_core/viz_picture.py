"""Figures of your own picture (plotly, pure functions): its token pyramid, and a picture beside a result
with the painted region outlined. Data in (`picture.Pyramid`, uint8 images, a mask), figure out."""
from __future__ import annotations

import base64
import io

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots  # the curves' second axis
from PIL import Image

from .viz import _layout, scale_label

ROWS = ("tokens", "rebuilt 1..k", "added by k", "residual")   # the long story is in pyramid_figure's subtitle
TOKEN_SCALE = "Viridis"
RESIDUAL_SCALE = "Magma"


def png_uri(image: np.ndarray) -> str:
    """A uint8 (H, W, 3) image as a PNG data URI (compact in a figure's JSON)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def scale_caption(pyr, k: int) -> str:
    """'3 · 3×3<br>22.1 dB · 0.71<br>4% energy' (PSNR, SSIM, energy share): a column's heading."""
    return (f"<b>{scale_label(pyr.patch_nums, k)}</b><br>{pyr.psnr_db[k]:.1f} dB · {pyr.ssim[k]:.2f}"
            f"<br>{pyr.energy_share[k]:.0%} energy")


def pyramid_figure(pyr) -> go.Figure:
    """The picture's K scales side by side (columns) in four rows: the token map (hover: codebook id), the
    picture rebuilt from scales 1..k, what scale k added, and the residual that scale k quantised (the norm
    over latent channels of f − f_hat before k; hover: its value). Column headings: scale, PSNR and SSIM
    of the rebuilt picture against the input, the share of the latent's energy that scale k took."""
    K, R = len(pyr.tokens), len(ROWS)
    vmax_res = float(pyr.residual.max()) or 1.0
    V = max(int(max(t.max() for t in pyr.tokens)), 1)
    S = pyr.rebuilt.shape[1]
    gap_x, gap_y = 0.008, 0.03
    w, h = (1 - gap_x * (K - 1)) / K, (1 - gap_y * (R - 1)) / R
    traces, axes, notes = [], {}, []   # the grid built directly: make_subplots takes half a second for 40 cells
    for k in range(K):
        pn, res = pyr.patch_nums[k], pyr.residual[k]
        cells = [go.Heatmap(z=pyr.tokens[k], zmin=0, zmax=V, colorscale=TOKEN_SCALE, showscale=False,
                            hovertemplate=f"scale {k + 1}: row %{{y}}, col %{{x}}<br>codebook id %{{z}}<extra></extra>",
                            name=f"tokens {k + 1}"),
                 go.Image(source=png_uri(pyr.rebuilt[k]), hoverinfo="skip", name=ROWS[1]),
                 go.Image(source=png_uri(pyr.added[k]), hoverinfo="skip", name=ROWS[2]),
                 go.Heatmap(z=res, zmin=0, zmax=vmax_res, colorscale=RESIDUAL_SCALE, showscale=False,
                            hovertemplate=f"before scale {k + 1}: |f − f̂| = %{{z:.3f}}<extra></extra>",
                            name=f"residual {k + 1}")]
        x0 = k * (w + gap_x)
        for row, (trace, side) in enumerate(zip(cells, (pn, S, S, res.shape[0]))):
            i = row * K + k + 1
            suffix = "" if i == 1 else str(i)
            y1 = 1 - row * (h + gap_y)
            traces.append(trace.update(xaxis=f"x{suffix}", yaxis=f"y{suffix}"))
            axes[f"xaxis{suffix}"] = dict(domain=[x0, x0 + w], range=[-0.5, side - 0.5], anchor=f"y{suffix}",
                                          showticklabels=False, showgrid=False, zeroline=False, constrain="domain")
            axes[f"yaxis{suffix}"] = dict(domain=[y1 - h, y1], range=[side - 0.5, -0.5], anchor=f"x{suffix}",
                                          showticklabels=False, showgrid=False, zeroline=False,
                                          scaleanchor=f"x{suffix}")   # square cells
        notes.append(dict(text=scale_caption(pyr, k), xref="paper", yref="paper", x=x0 + w / 2, y=1.0,
                          xanchor="center", yanchor="bottom", showarrow=False))
    for r, text in enumerate(ROWS):   # row names, vertical, left of the first column
        notes.append(dict(text=text, xref="paper", yref="paper", x=0, y=1 - r * (h + gap_y) - h / 2, xanchor="right",
                          yanchor="middle", textangle=-90, showarrow=False, font=dict(size=11, color="#555")))
    fig = go.Figure(traces, layout=dict(axes, annotations=notes))
    fig.update_annotations(font_size=9)
    title = ("Your picture through the pair's scales<br><sup>rows: token ids · rebuilt from 1..k · added by k (×2 "
             "around grey) · residual before k; heads: PSNR dB · SSIM · share of the energy</sup>")
    return _layout(fig, title, height=540, margin=dict(l=30, r=10, t=120, b=10), showlegend=False)


def pyramid_curves_figure(pyr) -> go.Figure:
    """Per scale: PSNR (dB, left axis) and SSIM (right axis) of the picture rebuilt from scales 1..k, and
    bars of the share of the latent's energy each scale took."""
    labels = [scale_label(pyr.patch_nums, k) for k in range(len(pyr.tokens))]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Bar(x=labels, y=pyr.energy_share, name="share of the energy taken", marker_color="#CCCCCC",
                         hovertemplate="%{x}: %{y:.1%} of ‖f‖²<extra></extra>"), secondary_y=True)
    fig.add_trace(go.Scatter(x=labels, y=pyr.psnr_db, name="PSNR vs your picture (dB)", mode="lines+markers",
                             line=dict(color="#0072B2", width=2), hovertemplate="%{x}: %{y:.2f} dB<extra></extra>"),
                  secondary_y=False)
    fig.add_trace(go.Scatter(x=labels, y=pyr.ssim, name="SSIM", mode="lines+markers",
                             line=dict(color="#009E73", width=2, dash="dot"),
                             hovertemplate="%{x}: SSIM %{y:.3f}<extra></extra>"), secondary_y=True)
    fig.update_yaxes(title="PSNR (dB)", gridcolor="#e5e5e5", secondary_y=False)
    fig.update_yaxes(title="SSIM · energy share", range=[0, 1.02], secondary_y=True)
    fig.update_xaxes(title="scale · token grid", type="category")
    return _layout(fig, "How close the rebuilt picture gets, scale by scale", height=320,
                   legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"))


def outlined(image: np.ndarray, keep_mask: np.ndarray | None, color=(213, 94, 0)) -> np.ndarray:
    """A uint8 (S, S, 3) image with the border of the painted region (where keep_mask is False) drawn in
    `color`; the image itself when there is no mask. keep_mask: (S, S) bool."""
    img = np.array(image, dtype=np.uint8)
    if keep_mask is None:
        return img
    paint = ~np.asarray(keep_mask, dtype=bool)
    edge = np.zeros_like(paint)
    edge[1:] |= paint[1:] != paint[:-1]
    edge[:-1] |= paint[1:] != paint[:-1]
    edge[:, 1:] |= paint[:, 1:] != paint[:, :-1]
    edge[:, :-1] |= paint[:, 1:] != paint[:, :-1]
    img[edge & paint] = color
    return img
