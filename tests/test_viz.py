"""viz.py: every figure carries the data of the trace or mask it was drawn from."""
import base64
import io

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from PIL import Image

from sdvar_core import masks, viz
from sdvar_core.config import ScaleLayout
from sdvar_core.engine import generate
from sdvar_core.trace import DRAFT, INPUT, STATUS_NAMES, TARGET, TENSOR_MEANINGS

LAYOUT = ScaleLayout()


@pytest.fixture(scope="module")
def runs(three_runs):
    return three_runs


def decode_mask_png(uri: str) -> np.ndarray:
    """Inverse of viz.mask_png: the bool matrix from a PNG data URI."""
    data = base64.b64decode(uri.split(",", 1)[1])
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return rgb.astype(int).sum(axis=-1) < 3 * 160


def heatmaps(fig):
    return [t for t in fig.data if isinstance(t, go.Heatmap)]


def test_status_grid_and_token_grid_figure_carry_the_status(runs):
    trace = runs["spec"]
    for k in (0, 4, 9):
        for b in (0, 1):
            fig = viz.token_grid_figure(trace, k, sample=b)
            (hm,) = heatmaps(fig)
            pn = trace.patch_nums[k]
            expected = trace.scales[k].status[b].reshape(pn, pn)
            assert np.array_equal(np.asarray(hm.z), expected)
            assert np.array_equal(viz.status_grid(trace, k, b), expected)
            # the picture panel shows that scale's decoded image
            (img,) = [t for t in fig.data if isinstance(t, go.Image)]
            assert np.array_equal(np.asarray(img.z), trace.scales[k].image[b])
            # hover data: final token, draft token, p, q of every cell
            custom = np.asarray(hm.customdata)
            assert custom.shape == (pn, pn, 5)
            assert np.array_equal(custom[..., 0].astype(int), trace.scales[k].tokens[b].reshape(pn, pn))
            assert np.allclose(custom[..., 2].astype(float), trace.scales[k].p_draft[b].reshape(pn, pn))
            # legend counts equal the status counts
            names = [t.name for t in fig.data if isinstance(t, go.Scatter)]
            for code, name in STATUS_NAMES.items():   # a picture's status only where the run has one
                if code == INPUT and not (expected == code).any():
                    assert not any(n.startswith(name) for n in names)
                    continue
                assert f"{name} ({int((expected == code).sum())})" in names


def test_token_grid_of_a_schedule_run_has_draft_and_target_scales(runs):
    trace = runs["schedule"]
    assert set(np.unique(np.asarray(heatmaps(viz.token_grid_figure(trace, 2))[0].z))) == {DRAFT}
    assert set(np.unique(np.asarray(heatmaps(viz.token_grid_figure(trace, 7))[0].z))) == {TARGET}
    assert "made by the draft alone" in viz.scale_summary(trace, 2)
    assert "Scale 8 · 10×10" in viz.scale_summary(trace, 7)


@pytest.mark.parametrize("bad", [-1, 10, 2.5, True])
def test_bad_scale_raises(runs, bad):
    with pytest.raises(ValueError, match="scale"):
        viz.token_grid_figure(runs["spec"], bad)


def test_bad_sample_raises(runs):
    with pytest.raises(ValueError, match="sample"):
        viz.status_grid(runs["spec"], 0, sample=2)


def test_acceptance_figure_matches_the_trace(runs):
    trace = runs["spec"]
    fig = viz.acceptance_figure(trace)
    bars = {t.name: np.asarray(t.y, dtype=float) for t in fig.data if isinstance(t, go.Bar)}
    for code, name in STATUS_NAMES.items():
        share = np.array([(s.status == code).mean() for s in trace.scales])
        if share.sum():
            assert np.allclose(bars[name], share)
        else:
            assert name not in bars
    assert np.allclose(sum(bars.values()), 1.0)   # stacked shares fill each scale
    (line,) = [t for t in fig.data if isinstance(t, go.Scatter)]
    expected = [np.nan if r is None else r for r in trace.acceptance_per_scale()]
    assert np.allclose(np.asarray(line.y, dtype=float), expected, equal_nan=True)


def test_acceptance_figure_without_verification_has_no_rate_line(runs):
    fig = viz.acceptance_figure(runs["target"])
    assert not [t for t in fig.data if isinstance(t, go.Scatter)]
    assert [t.name for t in fig.data] == [STATUS_NAMES[TARGET]]


def test_timeline_has_one_bar_per_call(runs):
    trace = runs["spec"]
    fig = viz.timeline_figure(trace)
    bars = [t for t in fig.data if isinstance(t, go.Bar)]
    assert sum(len(b.x) for b in bars) == len(trace.calls)
    starts = sorted(float(x) for b in bars for x in b.base)
    assert np.allclose(starts, sorted(c.t_start * 1e3 for c in trace.calls))
    ends = sorted(float(s) + float(d) for b in bars for s, d in zip(b.base, b.x))
    assert np.allclose(ends, sorted(c.t_end * 1e3 for c in trace.calls))
    lanes = {lane for b in bars for lane in b.y}
    assert lanes == {"draft", "target"}
    hover = " ".join(h for b in bars for h in b.hovertext)
    assert "KV cache" in hover and "query length" in hover and "mask rule" in hover
    verify = [c for c in trace.calls if c.kind == "verify"][0]
    assert f"KV cache {verify.kv_before} → {verify.kv_after}" in hover


def test_timeline_planner_lane_shows_every_planned_round(random_pair):
    from sdvar_core.planner import Costs, PassEstimator, Planner

    never_then_always = PassEstimator(10, prior_weight=0.0, sums=[0.0] * 5 + [1.0] * 5, counts=[1.0] * 10)
    planner = Planner(Costs.flat(10, target=0.02, draft=0.002), never_then_always)
    trace = generate(random_pair, "speculative", [1], seed=2, gamma="auto", planner=planner, progressive=False).trace
    assert {r.gamma > 0 for r in trace.rounds} == {True, False}
    fig = viz.timeline_figure(trace)
    zero, drafts = [t for t in fig.data if isinstance(t, go.Scatter)]
    assert list(zero.y) + list(drafts.y) == ["planner"] * len(trace.rounds)
    assert list(drafts.text) == [f"γ={r.gamma}" for r in trace.rounds if r.gamma > 0]
    assert np.allclose(sorted(zero.x + drafts.x), [r.plan.t * 1e3 for r in trace.rounds])
    hover = " ".join(zero.hovertext + drafts.hovertext)
    assert hover.count("γ=0:") == len(trace.rounds) and hover.count("◀") == len(trace.rounds)
    assert sum(len(b.x) for b in fig.data if isinstance(b, go.Bar)) == len(trace.calls)
    text = viz.plan_summary(trace)
    assert " ".join(str(r.gamma) for r in trace.rounds) in text
    assert viz.plan_summary(generate(random_pair, "speculative", [1], seed=2, gamma=2).trace) is None


def test_timeline_with_reference_lane(runs):
    fig = viz.timeline_figure(runs["spec"], runs["target"])
    bars = [t for t in fig.data if isinstance(t, go.Bar)]
    assert sum(len(b.x) for b in bars) == len(runs["spec"].calls) + len(runs["target"].calls)
    assert sum(len(b.x) for b in bars if b.y[0] == "target only") == len(runs["target"].calls) == 10


@pytest.mark.parametrize("rule", range(6))
@pytest.mark.parametrize("current,full", [(4, False), (4, True), (9, False), (0, True)])
def test_mask_heatmap_equals_mask_matrix(rule, current, full):
    fig = viz.mask_heatmap_figure(rule, current, LAYOUT, full=full)
    (hm,) = heatmaps(fig)
    end = LAYOUT.total if full else LAYOUT.ends[current]
    expected = masks.mask_matrix(rule, current, LAYOUT, q_end=end).numpy()
    assert np.asarray(hm.z).shape == (end, end)
    assert np.array_equal(np.asarray(hm.z).astype(bool), expected)
    counts = masks.pair_counts(rule, current, LAYOUT, q_end=end)
    assert f"{counts['allowed']:,} of {counts['total']:,}" in fig.layout.title.text
    # a line at every scale boundary inside the window, and a box around the prefill window
    (grid,) = [t for t in fig.data if isinstance(t, go.Scatter)]
    boundaries = {s - 0.5 for s in LAYOUT.starts[1:] if s < end}
    assert {x for x in grid.x if x is not None and x > -0.5 and x < end - 0.5} == boundaries
    (box,) = fig.layout.shapes
    assert box.x1 == box.y1 == LAYOUT.ends[current] - 0.5


def test_mask_png_round_trip():
    m = masks.mask_matrix(2, 5, LAYOUT).numpy()
    assert np.array_equal(decode_mask_png(viz.mask_png(m)), m)


@pytest.mark.parametrize("full", [False, True])
def test_small_multiples_show_all_six_rules(full):
    fig = viz.mask_small_multiples_figure(6, LAYOUT, full=full)
    images = [t for t in fig.data if isinstance(t, go.Image)]
    assert len(images) == 6
    end = LAYOUT.total if full else LAYOUT.ends[6]
    for rule, img in enumerate(images):
        assert np.array_equal(decode_mask_png(img.source), masks.mask_matrix(rule, 6, LAYOUT, q_end=end).numpy())
        sparsity = masks.pair_counts(rule, 6, LAYOUT, q_end=end)["sparsity"]
        assert f"{sparsity:.0%} blocked" in fig.layout.annotations[rule].text


@pytest.mark.parametrize("rule,current,scale,row,col", [(1, 4, 4, 2, 3), (0, 4, 2, 1, 1), (5, 6, 9, 15, 0)])
def test_attended_keys_figure(rule, current, scale, row, col):
    fig = viz.attended_keys_figure(rule, current, scale, row, col, LAYOUT)
    hms = heatmaps(fig)
    expected = masks.attended_keys(rule, current, scale, row, col, LAYOUT)
    assert len(hms) == LAYOUT.num_scales
    for hm, keys in zip(hms, expected):
        assert np.array_equal(np.asarray(hm.z).astype(bool), keys.numpy())
    (marker,) = [t for t in fig.data if isinstance(t, go.Scatter)]
    assert (marker.x[0], marker.y[0]) == (col, row)
    assert f"attends to {sum(int(k.sum()) for k in expected)} of 680" in fig.layout.title.text


def test_attended_keys_bad_token_raises():
    with pytest.raises(ValueError, match="row"):
        viz.attended_keys_figure(1, 4, 2, 3, 0, LAYOUT)   # scale 2 is 3×3


def test_pair_count_table():
    df = viz.pair_count_table(2, 4, LAYOUT, full=False)
    counts = masks.pair_counts(2, 4, LAYOUT)
    assert list(df["role"][:5]) == ["prefix"] * 4 + ["current"]
    assert df["allowed"].iloc[-1] == counts["allowed"] and df["of"].iloc[-1] == counts["total"]
    assert df["allowed"].iloc[:-1].sum() == counts["allowed"]
    full = viz.pair_count_table(2, 4, LAYOUT, full=True)
    assert len(full) == 11 and (full["role"] == "after").sum() == 5


def test_shape_table(runs):
    trace = runs["spec"]
    df = viz.shape_table(trace)
    assert len(df) == len(trace.shapes)
    recorded = {(r.scale + 1, r.model, r.tensor, "(" + ", ".join(map(str, r.shape)) + ")") for r in trace.shapes}
    assert set(zip(df["scale"], df["model"], df["tensor"], df["shape"])) == recorded
    assert list(df["scale"]) == sorted(df["scale"])
    assert all(df["meaning"] == df["tensor"].map(TENSOR_MEANINGS))
    # B = 2 images: 2B = 4 CFG rows into the transformer, B rows after guidance
    logits = df[(df["tensor"] == "logits") & (df["model"] == "target")]
    assert all(s.startswith("(4, ") for s in logits["shape"])
    assert all(s.startswith("(2, ") for s in df[df["tensor"] == "cfg_logits"]["shape"])


def test_upscale():
    img = np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3)
    big = viz.upscale(img, 256)
    assert big.shape == (256, 256, 3)
    assert np.array_equal(big[::4, ::4], img)
    with pytest.raises(ValueError):
        viz.upscale(img.astype(float))


def test_sweep_figure():
    df = pd.DataFrame([
        dict(kind="baseline", series="target only", entry_num=None, gamma=None, speedup=1.0, target_calls=10.0,
             token_agreement=1.0, class_accuracy=np.nan),
        dict(kind="schedule", series="D→T, sd_mask 1", entry_num=2, gamma=None, speedup=1.2, target_calls=8.0,
             token_agreement=0.5, class_accuracy=np.nan),
        dict(kind="schedule", series="D→T, sd_mask 1", entry_num=6, gamma=None, speedup=1.9, target_calls=4.0,
             token_agreement=0.3, class_accuracy=np.nan),
        dict(kind="schedule", series="D→T, sd_mask 3", entry_num=4, gamma=None, speedup=1.5, target_calls=6.0,
             token_agreement=0.4, class_accuracy=np.nan),
    ])
    fig = viz.sweep_figure(df)
    lines = [t for t in fig.data if isinstance(t, go.Scatter)]
    assert len(lines) == 2 * 3   # two series × three metrics (no class accuracy measured)
    first = [t for t in lines if t.name == "D→T, sd_mask 1"]
    assert list(first[0].x) == [2, 6] and list(first[0].y) == [1.2, 1.9]
    assert list(first[1].y) == [8.0, 4.0]
    df["class_accuracy"] = [0.9, 0.8, 0.7, 0.6]
    assert len([t for t in viz.sweep_figure(df).data if isinstance(t, go.Scatter)]) == 2 * 4
