"""The teaching views in the app: their callbacks as plain functions (outputs read by name), then through the API."""
import io
import json
import os
import zipfile

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pandas as pd
import plotly.graph_objects as go
import pytest

from conftest import Names
from sdvar_core import economics, explore, story
from ui import compare_tab, mask_gallery, teach_panel
from ui.common import named_outputs

NAMES = Names()
SWEEP = pd.DataFrame({"config": ["target only", "draft only", "τ = 1, γ = 2"], "images": [1, 1, 1],
                      "speedup": [1.0, 2.0, 0.6], "token_agreement": [1.0, 0.3, 0.5],
                      "class_accuracy": [None, None, None]})


@pytest.fixture(scope="module")
def click(random_pair):
    return explore.run_click(random_pair, "speculative", 4, 9,
                             explore.click_settings({"mode": "speculative", "gamma_auto": False, "gamma": 3}))


class Bank:
    def __init__(self, pair):
        self.pair = pair

    def get(self, key):
        return self.pair


# ---- plain callbacks ---------------------------------------------------------------------------

def test_teach_view_fills_the_panel(click):
    out = teach_panel.teach_view(NAMES, runs=click)
    assert set(out) == set(teach_panel.TEACH_OUTPUTS)
    main = click["main"]
    assert out["round_pick"].maximum == len(main.rounds) and out["round_pick"].value == 1
    assert story.round_story(main, 0) in out["round_story"] and story.rounds_overview(main) in out["round_story"]
    (shade,) = out["timeline"].layout.shapes
    assert shade.x0 == pytest.approx(story.round_span(main, 0)[0] * 1e3)
    assert out["why_md"] == story.why_text(main)
    w = economics.cost_whatif(click)
    assert out["whatif_ratio"] == round(w.measured_ratio, 2)
    assert (out["whatif_overhead"], out["whatif_rejection"], out["whatif_batch"], out["whatif_regime"]) == (0, 1, 1, "cpu")
    bars = {x: y for t in out["cost_whatif"].data if isinstance(t, go.Bar) for x, y in zip(t.x, t.y)}
    assert bars == pytest.approx({p.label: p.speedup for p in w.predictions})
    assert out["whatif_md"] == story.whatif_text(w)
    assert teach_panel.teach_view(NAMES, runs=None)["round_story"] == teach_panel.NO_RUN


def test_teach_view_of_runs_without_rounds(examples_dir):
    runs = explore.load_bundle(next(examples_dir.glob("*.npz")))[0]   # a schedule hand-off
    out = teach_panel.teach_view(NAMES, runs=runs)
    assert "no speculative rounds" in out["round_story"] and not out["round_pick"].interactive
    assert "verified no drafted tokens" in out["why_md"]
    assert "assumes a per-token acceptance" in out["whatif_md"]
    target = {"main": runs["target"], "target": runs["target"], "draft": runs["target"]}   # no draft call at all
    out = teach_panel.teach_view(NAMES, runs=target)
    assert out["cost_whatif"] is None and "No cost what-if for this run: no draft call was measured" in out["whatif_md"]


def test_round_view(click, three_runs):
    out = teach_panel.round_view(NAMES, runs=click, round_pick=2)
    assert "### Round 2 of" in out["round_story"]
    assert out["timeline"].layout.shapes[0].x1 == pytest.approx(story.round_span(click["main"], 1)[1] * 1e3)
    with pytest.raises(ValueError, match="round must be in 1.."):
        teach_panel.round_view(NAMES, runs=click, round_pick=99)
    sched = {"main": three_runs["schedule"], "target": three_runs["target"], "draft": three_runs["target"]}
    assert "no speculative rounds" in teach_panel.round_view(NAMES, runs=sched, round_pick=1)["round_story"]


def test_whatif_and_regime_views(click):
    out = teach_panel.whatif_view(NAMES, runs=click, whatif_ratio=0.5, whatif_overhead=20, whatif_rejection=0.0,
                                  whatif_batch=1)
    assert "fixed cost per call 20× a target step, rejections ×0" in out["cost_whatif"].layout.title.text
    with pytest.raises(ValueError, match="draft/target cost ratio must be a number in"):
        teach_panel.whatif_view(NAMES, runs=click, whatif_ratio=0, whatif_overhead=0, whatif_rejection=1,
                                whatif_batch=1)
    with pytest.raises(ValueError, match="rejection multiplier must be a number"):
        teach_panel.whatif_view(NAMES, runs=click, whatif_ratio=0.5, whatif_overhead=0, whatif_rejection="x",
                                whatif_batch=1)
    gpu = economics.REGIME_BY_KEY["gpu1"]
    out = teach_panel.regime_view(NAMES, runs=click, whatif_regime="gpu1", whatif_rejection=1.0)
    assert (out["whatif_ratio"], out["whatif_overhead"], out["whatif_batch"]) == (gpu.ratio, gpu.overhead, gpu.batch)
    assert "batch 1" in out["cost_whatif"].layout.title.text
    with pytest.raises(ValueError, match="hardware regime must be one of"):
        teach_panel.regime_view(NAMES, runs=click, whatif_regime="tpu", whatif_rejection=1.0)
    with pytest.raises(ValueError, match="Run a generation"):
        teach_panel.whatif_view(NAMES, runs=None, whatif_ratio=0.5, whatif_overhead=0, whatif_rejection=1,
                                whatif_batch=1)


def test_export_view_writes_a_zip(click):
    out = teach_panel.export_view(NAMES, runs=click, scale=4, round_pick=2, export_formats=["png"], whatif_ratio=0.3,
                                  whatif_overhead=0, whatif_rejection=1.0, whatif_batch=1, sweep_table=SWEEP,
                                  gallery=None, mask_rule=2, mask_entry=3)
    with zipfile.ZipFile(out["export_figures"]) as z:
        names = set(z.namelist())
        assert {"token-grid-scale4.png", "timeline.png", "why-chart.png", "cost-whatif.png", "mask-raster.png",
                "six-masks.png", "frontier.png", "round-story.md"} <= names
        assert z.read("round-story.md").decode() == story.round_story(click["main"], 1)
    with pytest.raises(ValueError, match="formats must be one or more of png, svg, pdf"):
        teach_panel.export_view(NAMES, runs=click, scale=4, round_pick=1, export_formats=[], whatif_ratio=0.3,
                                whatif_overhead=0, whatif_rejection=1.0, whatif_batch=1)


def test_frontier_view():
    out = compare_tab.frontier_view(NAMES, sweep_table=SWEEP, frontier_metric="auto")
    assert "token agreement" in out["pareto_plot"].layout.title.text   # class accuracy not measured
    assert "**target only** 1.00×" in out["frontier_md"] and "**draft only** 2.00×" in out["frontier_md"]
    assert "γ = 2" not in out["frontier_md"]
    with pytest.raises(ValueError, match="quality: this sweep did not measure class accuracy"):
        compare_tab.frontier_view(NAMES, sweep_table=SWEEP, frontier_metric="class_accuracy")
    assert compare_tab.frontier_view(NAMES, sweep_table=None, frontier_metric="auto")["pareto_plot"] is None


def test_mask_gallery_callback(random_pair):
    out = mask_gallery.on_gallery(Bank(random_pair), NAMES, model_state="tiny", mask_entry=3, gallery_seed=2,
                                  class_name="circle", class_id=None, cfg=1.5, top_k=0, top_p=1.0, precision="fp32",
                                  progress=lambda *a, **k: None)
    g = out["gallery"]
    assert (g["entry_num"], g["seed"], g["class_id"]) == (3, 2, random_pair.class_names.index("circle"))
    assert "hand-off at scale 4" in out["gallery_md"] and "sd_mask 5" in out["gallery_md"]
    assert len([t for t in out["mask_gallery"].data if isinstance(t, go.Image)]) == 13
    with pytest.raises(ValueError, match="entry_num must be an integer in 1..9"):
        mask_gallery.on_gallery(Bank(random_pair), NAMES, model_state="tiny", mask_entry=0, gallery_seed=2,
                                class_name="circle", class_id=None, cfg=1.5, top_k=0, top_p=1.0, precision="fp32",
                                progress=lambda *a, **k: None)


# ---- the served app ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(app_server):
    from gradio_client import Client

    return Client(app_server, verbose=False)


def call(client, api_name: str, **kwargs) -> dict:
    return named_outputs(client.config, api_name, client.predict(api_name=api_name, **kwargs))


def test_api_teaching_views_follow_the_sessions_run(client):
    from gradio_client.exceptions import AppError

    call(client, "/generate", **{**explore.DEFAULT_INPUTS, "class_name": "circle", "seed": 31, "gamma_auto": False,
                                 "gamma": 2})
    out = call(client, "/teach")
    assert "### Round 1 of" in out["round-story"]
    assert "target calls" in out["why-text"]
    layout = json.loads(out["why-chart"]["plot"])["layout"]
    assert "Why exact speculation stalls" in layout["title"]["text"]
    assert "γ planner's own cost model" in out["whatif-text"]
    assert "γ = 2" in out["whatif-text"]   # this click's own setting
    out = call(client, "/round_story", round_pick=2)
    assert "### Round 2 of" in out["round-story"]
    out = call(client, "/cost_whatif", whatif_ratio=0.6, whatif_overhead=20, whatif_rejection=0.0, whatif_batch=1)
    assert "fixed cost per call 20×" in json.loads(out["cost-whatif"]["plot"])["layout"]["title"]["text"]
    with pytest.raises(AppError, match="less than minimum"):   # gradio's own slider bounds check
        call(client, "/cost_whatif", whatif_ratio=0.6, whatif_overhead=-1, whatif_rejection=0.0, whatif_batch=1)
    out = call(client, "/export_figures", scale=10, round_pick=1, export_formats=["svg"], whatif_ratio=0.6,
               whatif_overhead=20, whatif_rejection=0.0, whatif_batch=1)
    with zipfile.ZipFile(out["export-figures"]) as z:
        assert "why-chart.svg" in z.namelist() and "frontier.svg" not in z.namelist()   # no sweep yet
        assert z.read("cost-whatif.svg").startswith(b"<?xml")


def test_api_mask_gallery(client):
    out = call(client, "/mask_gallery", mask_entry=4, gallery_seed=1, class_name="star", class_id=0, cfg=1.5, top_k=0,
               top_p=1.0, precision="fp32")
    assert "hand-off at scale 5" in out["gallery-text"]
    images = [t for t in json.loads(out["mask-gallery"]["plot"])["data"] if t["type"] == "image"]
    assert len(images) == 13
