"""The teaching views in the app: their callbacks as plain functions (outputs read by name) on what a session
keeps of a click (`view_trace` + `view_click`), then through the API."""
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
NONE = dict(last_run=None, last_click=None)   # no run in the session, or it expired
KNOBS = dict(whatif_ratio=0.3, whatif_overhead=0, whatif_rejection=1.0, whatif_batch=1)


@pytest.fixture(scope="module")
def click(random_pair):
    return explore.run_click(random_pair, "speculative", 4, 9,
                             explore.click_settings({"mode": "speculative", "gamma_auto": False, "gamma": 3}))


def kept(runs) -> dict:
    """What a session keeps of a click: the callbacks' last_run and last_click."""
    return dict(last_run=explore.view_trace(runs["main"]), last_click=explore.view_click(runs))


class Bank:
    def __init__(self, pair):
        self.pair = pair

    def get(self, key):
        return self.pair


def export(**kwargs):
    """export_view's zip, read while the generator still holds it (it removes the file when closed)."""
    args = dict(scale=4, round_pick=1, export_formats=["png"], last_sweep=None, gallery=None, mask_rule=1,
                mask_entry=4, **KNOBS)
    gen = teach_panel.export_view(NAMES, **{**args, **kwargs})
    path = next(gen)["export_figures"]
    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    gen.close()
    assert not os.path.exists(path)   # the zip's folder goes once Gradio has its copy
    return files


# ---- what a session keeps ----------------------------------------------------------------------

def test_what_a_session_keeps_gives_the_click_back(click):
    runs = explore.click_runs(**{"kept": explore.view_trace(click["main"]), "click": explore.view_click(click)})
    main = runs["main"]
    assert main.calls == click["main"].calls and main.rounds == click["main"].rounds
    assert runs["target"].calls == click["target"].calls and runs["target"].timings == click["target"].timings
    assert runs["draft"].calls == click["draft"].calls and not runs["target"].scales   # calls and timings only
    assert [p.speedup for p in economics.cost_whatif(runs).predictions] == \
        pytest.approx([p.speedup for p in economics.cost_whatif(click).predictions])
    assert story.round_story(main, 1) == story.round_story(click["main"], 1)
    assert story.why_text(main) == story.why_text(click["main"])
    assert explore.click_runs(None, explore.view_click(click)) is None
    alone = {"main": click["target"], "target": click["target"], "draft": click["draft"]}
    assert explore.view_click(alone)["target"] is None   # a comparison that is the chosen run is not kept twice


# ---- plain callbacks ---------------------------------------------------------------------------

def test_teach_view_fills_the_panel(click):
    out = teach_panel.teach_view(NAMES, **kept(click))
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
    assert teach_panel.teach_view(NAMES, **NONE)["round_story"] == teach_panel.NO_RUN


def test_teach_view_of_runs_without_rounds(examples_dir):
    runs = explore.load_bundle(next(examples_dir.glob("*.npz")))[0]   # a schedule hand-off
    out = teach_panel.teach_view(NAMES, **kept(runs))
    assert "no speculative rounds" in out["round_story"] and not out["round_pick"].interactive
    assert "verified no drafted tokens" in out["why_md"]
    assert "assumes a per-token acceptance" in out["whatif_md"]
    target = {"main": runs["target"], "target": runs["target"], "draft": runs["target"]}   # no draft call at all
    out = teach_panel.teach_view(NAMES, **kept(target))
    assert out["cost_whatif"] is None and "No cost what-if for this run: no draft call was measured" in out["whatif_md"]


def test_round_view(click, three_runs):
    out = teach_panel.round_view(NAMES, **kept(click), round_pick=2)
    assert "### Round 2 of" in out["round_story"]
    assert out["timeline"].layout.shapes[0].x1 == pytest.approx(story.round_span(click["main"], 1)[1] * 1e3)
    with pytest.raises(ValueError, match=r"round_pick must be an integer in 1..\d, got 99"):
        teach_panel.round_view(NAMES, **kept(click), round_pick=99)
    sched = {"main": three_runs["schedule"], "target": three_runs["target"], "draft": three_runs["target"]}
    assert "no speculative rounds" in teach_panel.round_view(NAMES, **kept(sched), round_pick=1)["round_story"]
    assert teach_panel.round_view(NAMES, **NONE, round_pick=1)["round_story"] == teach_panel.NO_RUN
    with pytest.raises(ValueError, match="round_pick must be an integer"):   # checked without a run too
        teach_panel.round_view(NAMES, **NONE, round_pick="x")


def test_whatif_and_regime_views(click):
    out = teach_panel.whatif_view(NAMES, **kept(click), whatif_ratio=0.5, whatif_overhead=20, whatif_rejection=0.0,
                                  whatif_batch=1)
    assert "fixed cost per call 20× a target step, rejections ×0" in out["cost_whatif"].layout.title.text
    with pytest.raises(ValueError, match=r"whatif_ratio must be a number in \[0.05, 1\], got 0"):
        teach_panel.whatif_view(NAMES, **kept(click), **{**KNOBS, "whatif_ratio": 0})
    with pytest.raises(ValueError, match="whatif_rejection must be a number in"):
        teach_panel.whatif_view(NAMES, **kept(click), **{**KNOBS, "whatif_rejection": "x"})
    with pytest.raises(ValueError, match="whatif_batch must be an integer in 1..64, got 2.5"):
        teach_panel.whatif_view(NAMES, **kept(click), **{**KNOBS, "whatif_batch": 2.5})
    gpu = economics.REGIME_BY_KEY["gpu1"]
    out = teach_panel.regime_view(NAMES, **kept(click), whatif_regime="gpu1", whatif_rejection=1.0)
    assert (out["whatif_ratio"], out["whatif_overhead"], out["whatif_batch"]) == (gpu.ratio, gpu.overhead, gpu.batch)
    assert "batch 1" in out["cost_whatif"].layout.title.text
    with pytest.raises(ValueError, match="whatif_regime must be one of 'cpu', 'gpu1', 'gpuN', got 'tpu'"):
        teach_panel.regime_view(NAMES, **kept(click), whatif_regime="tpu", whatif_rejection=1.0)
    assert teach_panel.whatif_view(NAMES, **NONE, **KNOBS)["whatif_md"] == teach_panel.NO_RUN


def test_export_view_writes_a_zip(click):
    files = export(**kept(click), round_pick=2, last_sweep=SWEEP, mask_rule=2, mask_entry=3)
    assert {"token-grid-scale4.png", "timeline.png", "why-chart.png", "cost-whatif.png", "mask-raster.png",
            "six-masks.png", "frontier.png", "round-story.md"} <= set(files)
    assert files["round-story.md"].decode() == story.round_story(click["main"], 1)
    assert files["why-chart.png"].startswith(b"\x89PNG\r\n\x1a\n")
    # without a run in the session: what the page shows besides the run
    assert set(export(**NONE, export_formats=["svg"])) == {"mask-raster.svg", "six-masks.svg"}
    with pytest.raises(ValueError, match="export_formats must hold one or more of png, svg, pdf"):
        export(**kept(click), export_formats=[])
    with pytest.raises(ValueError, match="each export_formats item must be one of 'png', 'svg', 'pdf', got 'gif'"):
        export(**kept(click), export_formats=["gif"])
    with pytest.raises(ValueError, match="scale must be an integer in 1..10, got 11"):
        export(**kept(click), scale=11)


def test_frontier_view():
    out = compare_tab.frontier_view(NAMES, last_sweep=SWEEP, frontier_metric="auto")
    assert "token agreement" in out["pareto_plot"].layout.title.text   # class accuracy not measured
    assert "**target only** 1.00×" in out["frontier_md"] and "**draft only** 2.00×" in out["frontier_md"]
    assert "γ = 2" not in out["frontier_md"]
    with pytest.raises(ValueError, match="frontier_metric: this sweep did not measure class accuracy"):
        compare_tab.frontier_view(NAMES, last_sweep=SWEEP, frontier_metric="class_accuracy")
    with pytest.raises(ValueError, match="frontier_metric must be one of"):
        compare_tab.frontier_view(NAMES, last_sweep=SWEEP, frontier_metric="speed")
    assert compare_tab.frontier_view(NAMES, last_sweep=None, frontier_metric="auto")["pareto_plot"] is None


def test_mask_gallery_callback(random_pair):
    args = dict(model="tiny", mask_entry=3, gallery_seed=2, class_name="circle", class_id=None, cfg=1.5, top_k=0,
                top_p=1.0, precision="fp32", progress=lambda *a, **k: None)
    out = mask_gallery.on_gallery(Bank(random_pair), NAMES, **args)
    g = out["gallery"]
    assert (g["entry_num"], g["seed"], g["class_id"]) == (3, 2, random_pair.class_names.index("circle"))
    assert "hand-off at scale 4" in out["gallery_md"] and "sd_mask 5" in out["gallery_md"]
    assert len([t for t in out["mask_gallery"].data if isinstance(t, go.Image)]) == 13
    with pytest.raises(ValueError, match="mask_entry must be in 1..9 for the six masks"):
        mask_gallery.on_gallery(Bank(random_pair), NAMES, **{**args, "mask_entry": 0})
    with pytest.raises(ValueError, match="gallery_seed must be an integer in 0..2"):
        mask_gallery.on_gallery(Bank(random_pair), NAMES, **{**args, "gallery_seed": -1})
    with pytest.raises(ValueError, match="top_p must be a number in"):
        mask_gallery.on_gallery(Bank(random_pair), NAMES, **{**args, "top_p": 2.5})


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
    with pytest.raises(AppError, match="whatif_overhead must be a number in"):   # validate's message, by name
        call(client, "/cost_whatif", whatif_ratio=0.6, whatif_overhead=-1, whatif_rejection=0.0, whatif_batch=1)
    out = call(client, "/export_figures", scale=10, round_pick=1, export_formats=["svg"], whatif_ratio=0.6,
               whatif_overhead=20, whatif_rejection=0.0, whatif_batch=1, mask_rule=1, mask_entry=4)
    with zipfile.ZipFile(out["export-figures"]) as z:
        assert "why-chart.svg" in z.namelist() and "frontier.svg" not in z.namelist()   # no sweep yet
        assert z.read("cost-whatif.svg").startswith(b"<?xml")


def test_api_mask_gallery(client):
    out = call(client, "/mask_gallery", model="tiny", mask_entry=4, gallery_seed=1, class_name="star", class_id=0,
               cfg=1.5, top_k=0, top_p=1.0, precision="fp32")
    assert "hand-off at scale 5" in out["gallery-text"]
    images = [t for t in json.loads(out["mask-gallery"]["plot"])["data"] if t["type"] == "image"]
    assert len(images) == 13
