"""The app: the ui callbacks as plain functions (outputs read by name), then the served app through gradio_client."""
import json
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np
import pandas as pd
import pytest

import app
from conftest import EXAMPLE_INPUTS, EXAMPLE_TITLE, Names
from sdvar_core import explore, masks
from sdvar_core.config import ScaleLayout
from ui import generate_tab, masks_tab, shapes_tab
from ui.common import named_outputs

NAMES = Names()


@pytest.fixture(scope="module")
def click(random_pair):
    # a fixed γ: the calibrated planner's choices follow measured times, and these tests look at draft calls
    return explore.run_click(random_pair, "speculative", 4, 9,
                             explore.click_settings({"mode": "speculative", "gamma_auto": False}))


# ---- plain callbacks ---------------------------------------------------------------------------

def test_render_run_and_stats(click):
    runs = click
    out = generate_tab.render_run(NAMES, runs, "title")
    assert set(out) == set(generate_tab.RUN_OUTPUTS)
    assert out["showing"] == "Showing: title"
    kept = out["last_run"]   # the session keeps only what the views need, for one sample
    assert kept.calls == [] and kept.rounds == [] and kept.images is None and kept.shapes == runs["main"].shapes
    assert np.array_equal(kept.scales[3].image, runs["main"].scales[3].image[:1])
    assert np.array_equal(kept.tokens, runs["main"].tokens[:1])
    assert [out[k].shape for k in ("final_image", "target_image", "draft_image")] == [(256, 256, 3)] * 3
    assert np.array_equal(out["final_image"][::4, ::4], runs["main"].images[0])
    assert np.array_equal(out["target_image"][::4, ::4], runs["target"].images[0])
    assert out["target_calls"] == runs["main"].target_calls and out["draft_calls"] == runs["main"].draft_calls
    speed = runs["target"].timings["total"] / runs["main"].timings["total"]
    assert out["speedup"] == f"{speed:.2f}×"
    assert f"{runs['main'].target_calls} target calls" in out["summary"]
    assert "exact rule keeps the target's distribution" in out["summary"]
    assert isinstance(out["shape_table"], pd.DataFrame) and len(out["shape_table"]) == len(runs["main"].shapes)


def test_scale_view(click):
    runs = click
    out = generate_tab.scale_view(NAMES, last_run=explore.view_trace(runs["main"]), scale=3)
    hm = [t for t in out["token_grid"].data if t.type == "heatmap"][0]
    assert np.array_equal(np.asarray(hm.z), runs["main"].scales[2].status[0].reshape(3, 3))
    assert out["scale_md"].startswith("**Scale 3 · 3×3**")
    assert generate_tab.scale_view(NAMES, last_run=None, scale=3)["token_grid"] is None
    for bad in (0, 11, None, 2.5, "3", float("nan")):
        with pytest.raises(ValueError, match="scale must be an integer in 1..10"):
            generate_tab.scale_view(NAMES, last_run=explore.view_trace(runs["main"]), scale=bad)


def test_shape_frame_filters(click):
    run = explore.view_trace(click["main"])
    assert len(shapes_tab.shape_frame(run, "all", "all")) == len(run.shapes)
    draft = shapes_tab.shape_frame(run, "draft", "all")
    assert set(draft["model"]) == {"draft"}
    one = shapes_tab.shape_frame(run, "target", "5")
    assert set(one["scale"]) == {5} and set(one["model"]) == {"target"}
    assert shapes_tab.shape_frame(None, "all", "all").empty
    assert shapes_tab.shapes_view(NAMES, last_run=run, shape_model="draft", shape_scale="all")["shape_table"].equals(draft)
    with pytest.raises(ValueError, match="shape_model must be one of 'all', 'draft'"):
        shapes_tab.shape_frame(run, "<b>x</b>", "all")
    with pytest.raises(ValueError, match="shape_scale must be one of"):
        shapes_tab.shape_frame(run, "all", "11")


def test_show_bundle_sets_outputs_and_inputs(examples_dir):
    bundles = explore.list_bundles(examples_dir)
    out = generate_tab.show_bundle(NAMES, bundles, example=EXAMPLE_TITLE)
    assert out["showing"] == f"Showing: precomputed — {EXAMPLE_TITLE}"
    for key, value in EXAMPLE_INPUTS.items():
        assert out[key] == value
    assert set(out) == set(generate_tab.RUN_OUTPUTS) | set(explore.DEFAULT_INPUTS)


def test_mask_view_and_keys_view():
    layout = ScaleLayout()
    out = masks_tab.mask_view(NAMES, layout, 5, 3, False)
    hm = [t for t in out["mask_heatmap"].data if t.type == "heatmap"][0]
    assert np.array_equal(np.asarray(hm.z).astype(bool), masks.mask_matrix(5, 3, layout).numpy())
    assert out["mask_counts"]["allowed"].iloc[-1] == masks.pair_counts(5, 3, layout)["allowed"]
    assert masks.rule_explanation(5) in out["rules_md"]
    assert len([t for t in out["mask_multiples"].data if t.type == "image"]) == 6
    out = masks_tab.keys_view(NAMES, layout, 2, 3, 2, 15, 1)    # scale 2 is 2×2: row clamps to 1
    row, col = out["pick_row"], out["pick_col"]
    assert (row.value, row.maximum, col.value) == (1, 1, 1)
    out = masks_tab.keys_view(NAMES, layout, 2, 3, 1, 4, 4)     # scale 1 is 1×1: a valid slider, locked at 0
    row = out["pick_row"]
    assert (row.value, row.minimum, row.maximum, row.interactive) == (0, 0, 1, False)
    hms = [t for t in out["keys_plot"].data if t.type == "heatmap"]
    assert np.array_equal(np.asarray(hms[0].z).astype(bool), masks.attended_keys(2, 3, 1, 1, 1, layout)[0].numpy())
    with pytest.raises(ValueError, match="pick_scale must be an integer in 1..10, got 0"):
        masks_tab.keys_view(NAMES, layout, 2, 3, 0, 0, 0)
    with pytest.raises(ValueError, match="mask_rule must be an integer in 0..5, got None"):
        masks_tab.mask_view(NAMES, layout, None, 3, False)
    with pytest.raises(ValueError, match="mask_full must be True or False, got 'no'"):
        masks_tab.mask_view(NAMES, layout, 1, 3, "no")


def test_build_demo_without_examples_or_embedded_weights():
    def broken(key, precision="fp32"):
        raise ValueError("the tiny pair is incomplete (test)")
    demo = app.build_demo(pair_loader=broken, examples_dir=None)
    config = demo.get_config_file()
    ids = {c["props"].get("elem_id") for c in config["components"]}
    for elem_id in ("generate", "final-image", "scale-slider", "token-grid", "timeline", "target-calls", "speedup",
                    "mask-heatmap", "mask-rule", "entry-num", "shape-table", "sweep-run", "sweep-plot",
                    "plain-frontier-plot", "plain-metric", "plain-frontier-text"):
        assert elem_id in ids
    plain = next(c for c in config["components"] if c["props"].get("elem_id") == "plain-frontier-plot")
    assert plain["props"]["value"] is not None      # the precomputed frontier is drawn at start, no click needed
    texts = " ".join(str(c["props"].get("value", "")) for c in config["components"])
    assert "untrained pair with random weights" in texts


# ---- the served app ----------------------------------------------------------------------------

GEN_ARGS = {**explore.DEFAULT_INPUTS, "class_name": "circle", "seed": 3, "mode": "speculative", "gamma_auto": False}


@pytest.fixture(scope="module")
def client(app_server):
    from gradio_client import Client

    return Client(app_server, verbose=False)


def call(client, api_name: str, **kwargs) -> dict:
    """An endpoint called with named inputs; its outputs by elem_id."""
    return named_outputs(client.config, api_name, client.predict(api_name=api_name, **kwargs))


def gen(client, **kw):
    return call(client, "/generate", **{**GEN_ARGS, **kw})


def plot_json(value):
    return json.loads(value["plot"])


def test_api_generate_then_scrub_and_shapes(client):
    out = gen(client, seed=21)
    assert out["showing"] == "Showing: your run — speculative, circle, seed 21"
    assert all(os.path.isfile(out[k]) for k in ("final-image", "target-image", "draft-image"))
    assert 1 <= out["target-calls"] <= 10 and out["draft-calls"] >= 10
    assert out["speedup"].endswith("×")
    assert "seed 21" in out["summary"]
    grid = plot_json(out["token-grid"])
    assert "picture after scale 10 · 16×16" in [a["text"] for a in grid["layout"]["annotations"]]
    assert len([t for t in plot_json(out["timeline"])["data"] if t["type"] == "bar"]) >= 3   # call kinds and lanes
    # state carries the run to the scrubber and the shapes endpoint of the same session
    text = call(client, "/scale_view", scale=3)["scale-summary"]
    assert text.startswith("**Scale 3 · 3×3**")
    table = call(client, "/shapes", shape_model="target", shape_scale="all")["shape-table"]
    assert set(r[2] for r in table["data"]) == {"target"}
    assert any(r[4] == "(2, 5, 64)" for r in table["data"])   # the verify call of scales 1–2


def test_api_generate_auto_gamma_shows_the_plan(client):
    out = gen(client, seed=22, gamma_auto=True)
    assert "γ planned before each round" in out["summary"]
    lanes = {t["y"][0] for t in plot_json(out["timeline"])["data"]}
    assert {"planner", "target"} <= lanes


def test_api_bad_input_is_a_clear_error_and_server_survives(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="schedule must be 10 letters"):
        gen(client, mode="schedule", schedule="DDX")
    with pytest.raises(AppError, match=r"tau must be a number in \(0, 1\], got 0.0"):
        gen(client, tau=0.0)
    with pytest.raises(AppError, match=r"seed must be an integer in 0..2\^63-1, got -1"):
        gen(client, seed=-1)
    with pytest.raises(AppError, match="class_name must be one of 'circle'"):
        gen(client, class_name="dog")
    out = gen(client, mode="target", seed=4)
    assert out["target-calls"] == 10 and out["draft-calls"] == 0 and out["speedup"] == "1.00×"
    lanes = {t["y"][0] for t in plot_json(out["timeline"])["data"]}
    assert lanes == {"target"}   # target only is this run: no separate reference lane


def test_api_sessions_are_isolated(app_server, client):
    from gradio_client import Client

    gen(client, seed=33)
    other = Client(app_server, verbose=False)
    # a fresh session has no run yet (API clients skip the page-load example)
    out = call(other, "/scale_view", scale=3)
    assert out["token-grid"] is None and "No run in this session yet" in out["scale-summary"]
    table = call(other, "/shapes", shape_model="all", shape_scale="all")["shape-table"]
    assert table["data"] in ([], [[""] * 6], [[None] * 6])


def test_api_example_and_model_fallback(client):
    out = call(client, "/load_example", example=EXAMPLE_TITLE)
    assert out["showing"] == f"Showing: precomputed — {EXAMPLE_TITLE}"
    assert out["seed"] == EXAMPLE_INPUTS["seed"]
    out = call(client, "/select_model", model="d16-d30")   # weights missing → embedded pair
    assert out["model"]["value"] == "tiny" and "random-test" in out["model-info"]


def test_api_masks(client):
    out = call(client, "/mask_view", mask_rule=2, mask_entry=4, mask_full=False)
    assert "sd_mask 2" in plot_json(out["mask-heatmap"])["layout"]["title"]["text"]
    assert out["mask-counts"]["data"][-1][0] == "all"
    assert "excluding current" in out["rules"]
    assert len(plot_json(out["mask-multiples"])["data"]) == 6
    out = call(client, "/keys_view", mask_rule=1, mask_entry=4, pick_scale=3, pick_row=5, pick_col=5)  # clamp to 3×3
    assert (out["pick-row"]["value"], out["pick-row"]["maximum"], out["pick-col"]["value"]) == (2, 2, 2)
    assert "row 2, col 2" in plot_json(out["keys-plot"])["layout"]["title"]["text"]


def test_api_sweep_and_csv(client):
    out = call(client, "/sweep", sweep_kind="speculative", sweep_seeds="0", sweep_classes="chosen", sweep_entries=[],
               sweep_dirs=[], sweep_masks=[], sweep_gammas=["1", "2"], sweep_taus=["1.0"], class_name="circle",
               class_id=0, cfg=1.5, top_k=0, top_p=1.0, accept="prob", lenience=1.0, precision="fp32")
    assert "4 of 4 runs done" in out["sweep-status"]
    df = pd.read_csv(out["sweep-csv"])
    assert list(df["config"]) == ["target only", "draft only", "τ = 1, γ = 1", "τ = 1, γ = 2"]
    assert df.loc[0, "speedup"] == pytest.approx(1.0) and df.loc[0, "token_agreement"] == 1.0
    assert (df["target_calls"] == [10, 0, df.loc[2, "target_calls"], df.loc[3, "target_calls"]]).all()
    assert [t["name"] for t in plot_json(out["sweep-plot"])["data"]][:1] == ["τ = 1"]
    assert [r[0] for r in out["sweep-table"]["data"]] == list(df["config"])


def test_api_precomputed_frontier_in_either_metric(client):
    out = call(client, "/plain_frontier", plain_metric="class_accuracy")
    layout = plot_json(out["plain-frontier-plot"])["layout"]
    assert "class accuracy" in layout["title"]["text"] and layout["yaxis"]["autorange"] is True
    out = call(client, "/plain_frontier", plain_metric="fid_tiny")
    assert plot_json(out["plain-frontier-plot"])["layout"]["yaxis"]["autorange"] == "reversed"
