"""The teaching figures carry the numbers they were drawn from: plotly (viz_teach, the timeline's highlight),
matplotlib (viz_static) and the export of PNG / SVG / PDF files (figures, its CLI)."""
import io
import xml.etree.ElementTree as ET
import zipfile

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from matplotlib.figure import Figure
from PIL import Image

from sdvar_core import economics, explore, figures, masks, story, viz, viz_static, viz_teach
from sdvar_core.config import ScaleLayout
from sdvar_core.engine import generate
from sdvar_core.trace import Trace
from test_viz import decode_mask_png

LAYOUT = ScaleLayout()
SWEEP = pd.DataFrame({"config": ["target only", "draft only", "D→T, sd_mask 3, entry_num 4 (DDDDTTTTTT)",
                                 "τ = 1, γ = 2"],
                      "speedup": [1.0, 2.5, 1.1, 0.5], "token_agreement": [1.0, 0.2, 0.6, 0.4],
                      "class_accuracy": [0.6, 0.3, 0.62, 0.55], "target_calls": [10, 0, 6, 9]})


@pytest.fixture(scope="module")
def click(three_runs, random_pair):
    draft = generate(random_pair, "draft", [2, 7], seed=3, progressive=False).trace
    return {"main": three_runs["spec"], "target": three_runs["target"], "draft": draft}


@pytest.fixture(scope="module")
def gallery(random_pair):
    runs = explore.run_mask_gallery(random_pair, 3, 5, 4, dict(cfg=1.5))
    return runs, explore.gallery_summary(runs, 4)


def by_name(fig) -> dict:
    return {t.name: t for t in fig.data}


# ---- plotly ----------------------------------------------------------------------------------------

def test_why_figure_shows_the_odds(click):
    trace = click["main"]
    odds = economics.scale_odds(trace)
    fig = viz_teach.why_figure(trace)
    traces = by_name(fig)
    tokens = next(t for n, t in traces.items() if n.startswith("tokens per scale"))
    assert list(tokens.y) == [p * p for p in trace.patch_nums]
    passes = traces["P(whole scale passes) = ∏ min(1, p/q)"]
    assert np.allclose(np.asarray(passes.y, float), [o.pass_prob for o in odds])
    assert list(passes.text) == [economics.format_prob(o.pass_prob) for o in odds]
    alpha = traces["α_k: drafted tokens accepted (measured)"]
    assert np.allclose(np.asarray(alpha.y, float), trace.acceptance_per_scale())
    ref = economics.mean_alpha(odds)
    assert np.allclose(np.asarray(traces[f"α^(pn²) at α = {ref:.2f}"].y, float), [ref ** o.tokens for o in odds])


def test_why_figure_without_verification(three_runs):
    fig = viz_teach.why_figure(three_runs["schedule"])
    assert not [t for t in fig.data if t.name.startswith("P(whole")]
    assert "verified no drafted tokens" in fig.layout.annotations[0].text


def test_whatif_figure_carries_the_predictions(click):
    w = economics.cost_whatif(click)
    fig = viz_teach.whatif_figure(w)
    bars = {x: y for t in fig.data if isinstance(t, go.Bar) for x, y in zip(t.x, t.y)}
    assert bars == pytest.approx({p.label: p.speedup for p in w.predictions})
    (measured,) = [t for t in fig.data if t.name == "measured in this click"]
    assert list(measured.x) == [w.click_label] and measured.y[0] == pytest.approx(w.measured_speedup)
    assert list(fig.layout.xaxis.categoryarray) == [p.label for p in w.predictions]


def test_frontier_figure_draws_the_front():
    fig = viz_teach.frontier_figure(SWEEP)
    traces = by_name(fig)
    assert list(traces["target / draft alone"].text) == ["target only", "draft only"]
    front = traces["Pareto front"]
    pts, _ = economics.frontier(SWEEP)
    on = pts[pts["on_front"]].sort_values("speedup")
    assert set(zip(front.x, front.y)) >= set(zip(on["speedup"], on["quality"]))
    assert "class accuracy" in fig.layout.title.text
    assert "run a sweep" in viz_teach.frontier_figure(pd.DataFrame()).layout.annotations[0].text


def test_timeline_highlight_shades_the_round(click):
    trace = click["main"]
    t0, t1 = story.round_span(trace, 1)
    fig = viz.timeline_figure(trace, highlight=(t0, t1, "round 2"))
    (shade,) = fig.layout.shapes
    assert (shade.x0, shade.x1) == pytest.approx((t0 * 1e3, t1 * 1e3))
    assert fig.layout.annotations[0].text == "round 2"


def test_mask_gallery_runs_and_figure(gallery, random_pair):
    runs, g = gallery
    assert [runs[r].settings["sd_mask"] for r in range(6)] == list(range(6))
    assert {runs[r].settings["schedule_resolved"] for r in range(6)} == {"DDDDTTTTTT"}
    target = generate(random_pair, "target", [3], seed=5, progressive=False, cfg=1.5).trace
    assert np.array_equal(runs["target"].tokens, target.tokens)
    assert g["agreement"] == {r: explore.agreement(runs[r], runs["target"]) for r in range(6)}
    fig = viz_teach.mask_gallery_figure(g)
    images = [t for t in fig.data if isinstance(t, go.Image)]
    patterns = [t for t in images if t.source is not None]
    assert len(patterns) == 6 and len(images) == 13
    end = LAYOUT.ends[4]
    for r, img in enumerate(patterns):
        assert np.array_equal(decode_mask_png(img.source), masks.mask_matrix(r, 4, LAYOUT, q_end=end).numpy())
    pictures = [t for t in images if t.source is None]
    assert np.array_equal(np.asarray(pictures[1].z)[::2, ::2], g["images"][0])
    texts = [a.text for a in fig.layout.annotations]
    assert f"{g['agreement'][5]:.0%} tokens = target" in texts
    with pytest.raises(ValueError, match="entry_num must be an integer in 1..9"):
        explore.run_mask_gallery(random_pair, 3, 5, 0)


# ---- matplotlib -------------------------------------------------------------------------------------

def test_static_figures_draw_the_same_numbers(click, gallery):
    trace = click["main"]
    fig = viz_static.token_grid(trace, 4)
    assert np.array_equal(fig.axes[1].images[0].get_array(), viz.status_grid(trace, 4))
    fig = viz_static.acceptance(trace)
    heights = np.array([p.get_height() for p in fig.axes[0].patches]).reshape(-1, 10)
    totals = np.array([s.status.size for s in trace.scales])
    assert np.allclose(heights, [c / totals for c in viz.status_counts(trace).values()])
    fig = viz_static.why(trace)
    (line,) = [ln for ln in fig.axes[0].lines if ln.get_label().startswith("P(whole")]
    assert np.allclose(line.get_ydata(), [o.pass_prob for o in economics.scale_odds(trace)])
    fig = viz_static.mask_raster(2, 5, LAYOUT)
    assert np.array_equal(fig.axes[0].images[0].get_array(), masks.mask_matrix(2, 5, LAYOUT, q_end=LAYOUT.ends[5]))
    w = economics.cost_whatif(click)
    fig = viz_static.whatif(w)
    assert [p.get_height() for p in fig.axes[0].patches] == pytest.approx([p.speedup for p in w.predictions])
    fig = viz_static.frontier(SWEEP)
    pts, _ = economics.frontier(SWEEP)
    (step,) = [ln for ln in fig.axes[0].lines if ln.get_label() == "Pareto front"]
    assert set(step.get_xdata()) == set(pts[pts["on_front"]]["speedup"])
    fig = viz_static.six_masks(4, LAYOUT, gallery[1])
    assert np.array_equal(fig.axes[8].images[0].get_array(), gallery[1]["images"][0])
    assert len(viz_static.six_masks(4, LAYOUT).axes) == 6
    fig = viz_static.timeline(trace, click["target"], (0.0, 0.001, "round 1"))
    assert len([p for p in fig.axes[0].patches if p.get_width() > 0]) >= len(trace.calls) + 10


# ---- export ------------------------------------------------------------------------------------------

def check_file(name: str, data: bytes) -> None:
    if name.endswith(".png"):
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert Image.open(io.BytesIO(data)).size[0] >= 1000   # 200 dpi
    elif name.endswith(".svg"):
        assert ET.fromstring(data).tag.endswith("svg")
    elif name.endswith(".pdf"):
        assert data.startswith(b"%PDF-") and b"%%EOF" in data[-64:]


def test_export_zip_holds_valid_files(click, gallery):
    figs, texts = figures.static_figures(click, scale=3, round_index=0, gallery=gallery[1], sweep=SWEEP)
    assert set(figs) == {"token-grid-scale4", "acceptance", "timeline", "why-chart", "cost-whatif", "mask-raster",
                         "six-masks", "frontier"}
    assert all(isinstance(f, Figure) for f in figs.values())
    assert texts["round-story.md"] == story.round_story(click["main"], 0)
    small = {k: figs[k] for k in ("why-chart", "frontier")}
    data = figures.export_zip(small, figures.FORMATS, {"why.md": texts["why.md"]})
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = sorted(z.namelist())
        assert names == sorted([f"{n}.{f}" for n in small for f in figures.FORMATS] + ["why.md"])
        for name in names:
            check_file(name, z.read(name))
    with pytest.raises(ValueError, match="formats must be one or more of png, svg, pdf, got gif"):
        figures.export_zip(small, ["png", "gif"])
    with pytest.raises(ValueError, match="formats must be"):
        figures.check_formats([])


def test_cli_on_a_saved_trace_and_a_bundle(tmp_path, three_runs, examples_dir, capsys):
    trace_path = tmp_path / "run.npz"
    three_runs["spec"].save(trace_path)
    figures.main(["--trace", str(trace_path), "--out", str(tmp_path / "a"), "--formats", "png", "--round", "2"])
    files = {p.name for p in (tmp_path / "a").iterdir()}
    assert {"why-chart.png", "timeline.png", "token-grid-scale10.png", "cost-whatif.png", "round-story.md"} <= files
    for p in (tmp_path / "a").glob("*.png"):
        check_file(p.name, p.read_bytes())
    SWEEP.to_csv(tmp_path / "sweep.csv", index=False)
    bundle = next(examples_dir.glob("*.npz"))
    figures.main(["--trace", str(bundle), "--out", str(tmp_path / "b"), "--formats", "svg,pdf",
                  "--sweep", str(tmp_path / "sweep.csv"), "--scale", "3"])
    files = {p.name for p in (tmp_path / "b").iterdir()}
    assert {"frontier.svg", "frontier.pdf", "token-grid-scale3.pdf", "mask-raster.svg"} <= files
    assert "files in" in capsys.readouterr().out
    # the bundle's run is a schedule hand-off under sd_mask 1 at scale 5: the raster shows it
    assert figures.handoff_of(Trace.load(trace_path)) is None
    with pytest.raises(SystemExit, match="--scale must be in 1..10"):
        figures.main(["--trace", str(trace_path), "--out", str(tmp_path / "c"), "--scale", "11"])
    with pytest.raises(SystemExit, match="trace file not found"):
        figures.main(["--trace", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "c")])


# ---- saved traces --------------------------------------------------------------------------------------

def test_figures_of_a_saved_known_trace(tmp_path):
    """The known trace of test_story, saved and loaded: the figures carry the numbers worked out by hand
    (scale 1: 1 of 1 accepted, min(1, 0.5/0.4) = 1; scale 2: 3 of 4 accepted, only 0.1/0.4 = 0.25 below 1)."""
    from test_story import known_trace

    path = tmp_path / "known.npz"
    known_trace().save(path)
    runs = figures.load_runs(path)
    trace = runs["main"]
    d = viz_teach.why_data(trace)
    assert d["tokens"] == [1, 4, 9]
    assert d["alpha"][:2] == pytest.approx([1.0, 0.75]) and d["alpha"][2] is None
    assert d["pass_prob"][:2] == pytest.approx([1.0, 0.25]) and d["pass_prob"][2] is None
    assert d["ref_alpha"] == pytest.approx((1 + 4 * 0.8125) / 5)   # the mean min(1, p/q) of the 5 verified tokens
    traces = by_name(viz_teach.why_figure(trace))
    assert np.allclose(np.asarray(traces["P(whole scale passes) = ∏ min(1, p/q)"].y, float), [1.0, 0.25, np.nan],
                       equal_nan=True)
    (line,) = [ln for ln in viz_static.why(trace).axes[0].lines if ln.get_label().startswith("P(whole")]
    assert np.allclose(np.asarray(line.get_ydata(), float)[:2], [1.0, 0.25])
    # the timeline shades round 2 from its plan (30 ms) to the end of its target step (35 ms)
    fig = viz.timeline_figure(trace, highlight=(*story.round_span(trace, 1), "round 2"))
    assert (fig.layout.shapes[0].x0, fig.layout.shapes[0].x1) == pytest.approx((30.0, 35.0))
    figs, texts = figures.static_figures(runs, round_index=0)   # three scales: the default mask fits the layout
    assert set(figs) == {"token-grid-scale3", "acceptance", "timeline", "why-chart", "cost-whatif", "mask-raster",
                         "six-masks"}
    assert texts["round-story.md"] == story.round_story(known_trace(), 0)
    assert texts["why.md"] == story.why_text(known_trace())
    assert figures.default_mask(3) == (1, 1) and figures.default_mask(10) == figures.DEFAULT_MASK


def test_teaching_figures_of_a_shipped_example():
    """The first shipped example (a saved exact speculative click, loaded from disk): the why-chart's odds
    are the products of min(1, p/q) over every verified token, recomputed here from the raw arrays."""
    from sdvar_core.config import EXAMPLES_DIR

    path = EXAMPLES_DIR / "01-speculative-exact.npz"
    if not path.is_file():
        pytest.skip("no shipped example")
    runs = figures.load_runs(path)
    trace = runs["main"]
    d = viz_teach.why_data(trace)
    for k, rec in enumerate(trace.scales):
        if rec.p_draft is None:
            assert d["pass_prob"][k] is None
            continue
        keep = np.minimum(1.0, rec.p_draft.astype(float) / rec.q_draft.astype(float)).reshape(rec.status.shape[0], -1)
        assert d["pass_prob"][k] == pytest.approx(np.prod(keep, axis=1).mean(), rel=1e-4)
    verify = [c for c in trace.calls if c.model == "target"]
    assert f"**{len(verify)} target calls**" in story.why_text(trace)
    w = economics.cost_whatif(runs)
    bars = [p for p in w.predictions if p.kind == "speculative"]
    assert [p.label for p in bars] == ["γ = 1", "γ = 2", "γ = 3", "γ = 4"] and all(p.speedup > 0 for p in bars)
    assert w.measured_speedup == pytest.approx(runs["target"].timings["total"] / trace.timings["total"])
