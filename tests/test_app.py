"""app.py: the callbacks as plain functions, then the served app through gradio_client."""
import json
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np
import pandas as pd
import pytest

import app
from conftest import EXAMPLE_INPUTS, EXAMPLE_TITLE, build_random_pair
from sdvar_core import explore
from sdvar_core.trace import Trace

def settings(mode="speculative", **kw):
    return app.click_settings({"mode": mode, **kw})


@pytest.fixture(scope="module")
def click(random_pair):
    calls = []
    runs = explore.run_click(random_pair, "speculative", 4, 9, settings(), lambda *a: calls.append(a))
    return runs, calls


# ---- plain callbacks ---------------------------------------------------------------------------

def test_click_settings():
    s = settings("schedule", entry_num=6, schedule="")
    assert s["entry_num"] == 6 and "schedule" not in s
    s = settings("schedule", schedule=" dddt tttttt ")
    assert s["schedule"] == "DDDTTTTTTT" and "entry_num" not in s
    assert "entry_num" not in settings("speculative") and "schedule" not in settings("speculative")
    assert settings(precision="bf16", gamma=3.0) == {**settings(), "precision": "bf16", "gamma": 3}


def test_run_click_runs_three_modes_with_one_seed(click, random_pair):
    runs, calls = click
    assert [runs[k].settings["mode"] for k in ("main", "target", "draft")] == ["speculative", "target", "draft"]
    assert {runs[k].settings["seed"] for k in runs} == {9}
    assert {tuple(runs[k].settings["class_ids"]) for k in runs} == {(4,)}
    assert runs["main"].scales[0].image is not None and runs["target"].scales[0].image is None
    assert runs["target"].target_calls == 10 and runs["draft"].draft_calls == 10
    # progress covers 3 runs × 10 scales, monotonically
    assert calls[-1][:2] == (30, 30) and [c[0] for c in calls] == sorted(c[0] for c in calls)
    assert calls[0][2] == "speculative: scale 1/10"
    # the same seed reproduces the same target-only run
    again = explore.run_click(random_pair, "target", 4, 9, settings())
    assert again["target"] is again["main"] and again["draft"] is not again["main"]
    assert all(np.array_equal(a.tokens, b.tokens) for a, b in zip(again["main"].scales, runs["target"].scales))


@pytest.mark.parametrize("kw,match", [(dict(gamma=0), "gamma"), (dict(tau=0.0), "tau"), (dict(lenience=0.5), "lenience"),
                                      (dict(top_p=0.0), "top_p")])
def test_run_click_bad_settings_raise_value_error(random_pair, kw, match):
    with pytest.raises(ValueError, match=match):
        explore.run_click(random_pair, "speculative", 0, 0, settings(**kw))


@pytest.mark.parametrize("seed", [-1, 2.5, None])
def test_run_click_bad_seed(random_pair, seed):
    with pytest.raises(ValueError, match="seed"):
        explore.run_click(random_pair, "target", 0, seed, settings())


def test_class_index(random_pair):
    assert app.class_index(random_pair, "star", None) == app.CLASS_NAMES.index("star")
    with pytest.raises(ValueError, match="unknown class"):
        app.class_index(random_pair, "dog", None)
    unnamed = build_random_pair()
    unnamed.class_names = None
    assert app.class_index(unnamed, None, 7) == 7
    for bad in (10, -1, 2.5, None):
        with pytest.raises(ValueError, match="class id"):
            app.class_index(unnamed, None, bad)


def test_render_run_and_stats(click):
    runs, _ = click
    out = app.render_run(runs, "title")
    assert out[0] is runs and out[1] == "Showing: title"
    assert [o.shape for o in out[2:5]] == [(256, 256, 3)] * 3
    assert np.array_equal(out[2][::4, ::4], runs["main"].images[0])
    assert np.array_equal(out[3][::4, ::4], runs["target"].images[0])
    assert out[5] == runs["main"].target_calls and out[6] == runs["main"].draft_calls
    speed = runs["target"].timings["total"] / runs["main"].timings["total"]
    assert out[8] == f"{speed:.2f}×"
    assert f"{runs['main'].target_calls} target calls" in out[9]
    assert isinstance(out[15], pd.DataFrame) and len(out[15]) == len(runs["main"].shapes)


def test_scale_view(click):
    runs, _ = click
    fig, text = app.scale_view(runs, 3)
    hm = [t for t in fig.data if t.type == "heatmap"][0]
    assert np.array_equal(np.asarray(hm.z), runs["main"].scales[2].status[0].reshape(3, 3))
    assert text.startswith("**Scale 3 · 3×3**")
    assert app.scale_view(None, 3)[0] is None


def test_shapes_view_filters(click):
    runs, _ = click
    assert len(app.shapes_view(runs, "all", "all")) == len(runs["main"].shapes)
    draft = app.shapes_view(runs, "draft", "all")
    assert set(draft["model"]) == {"draft"}
    one = app.shapes_view(runs, "target", "5")
    assert set(one["scale"]) == {5} and set(one["model"]) == {"target"}
    assert app.shapes_view(None, "all", "all").empty


def test_bundle_round_trip(tmp_path, click):
    runs, _ = click
    explore.save_bundle(tmp_path / "a.npz", runs, {"seed": 9, "mode": "speculative"}, "my example")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert explore.list_bundles(tmp_path) == [("my example", str(tmp_path / "a.npz"))]
    loaded, inputs, title = explore.load_bundle(tmp_path / "a.npz")
    assert title == "my example" and inputs == {"seed": 9, "mode": "speculative"}
    for k in ("main", "target", "draft"):
        assert isinstance(loaded[k], Trace)
        assert len(loaded[k].calls) == len(runs[k].calls)
        assert np.array_equal(loaded[k].images, runs[k].images)
    assert explore.list_bundles(tmp_path / "missing") == []


def test_sweep_configs():
    cfgs = explore.sweep_configs("schedule", ["0", "4", "10"], ["D→T", "T→D"], ["1", "3"], [], [])
    assert [c["series"] for c in cfgs[:2]] == ["target only", "draft only"]
    scheds = [c["schedule"] for c in cfgs[2:]]
    assert scheds == ["DDDDTTTTTT", "DDDDTTTTTT", "TTTTDDDDDD", "TTTTDDDDDD"]   # 0 and 10 are baselines
    assert [c["sd_mask"] for c in cfgs[2:]] == [1, 3, 1, 3]
    spec = explore.sweep_configs("speculative", [], [], [], ["2", "1"], ["0.8", "1.0"])
    assert [(c["gamma"], c["tau"]) for c in spec[2:]] == [(1, 1.0), (2, 1.0), (1, 0.8), (2, 0.8)]
    with pytest.raises(ValueError, match="at least one"):
        explore.sweep_configs("schedule", [], ["D→T"], ["1"], [], [])
    with pytest.raises(ValueError, match="baseline"):
        explore.sweep_configs("schedule", ["10"], ["D→T"], ["1"], [], [])
    with pytest.raises(ValueError, match="too many"):
        explore.sweep_configs("speculative", [], [], [], [str(g) for g in range(1, 11)], [str(t / 10) for t in range(1, 11)])
    with pytest.raises(ValueError, match="kind"):
        explore.sweep_configs("other", [], [], [], [], [])


def test_parse_seeds():
    assert explore.parse_seeds("0, 1,5") == [0, 1, 5]
    assert explore.parse_seeds("2-4; 7") == [2, 3, 4, 7]
    for bad, match in (("", "at least one"), ("a", "integers"), ("0-20", "at most"), ("-3", "integers|>= 0")):
        with pytest.raises(ValueError, match=match):
            explore.parse_seeds(bad)


def test_run_config_and_sweep_row(random_pair):
    base = dict(cfg=1.5, top_k=0, top_p=1.0, accept="prob", lenience=1.0)
    cfgs = explore.sweep_configs("schedule", ["4"], ["D→T"], ["3"], [], [])
    ref = explore.run_config(random_pair, cfgs[0], [0, 1], [0, 1, 2], base)
    assert len(ref) == 2 and ref[0].images.shape[0] == 3
    row = explore.sweep_row(cfgs[0], ref, ref, [0, 1, 2], None)
    assert row["speedup"] == pytest.approx(1.0) and row["token_agreement"] == 1.0 and row["images"] == 6
    sched = explore.run_config(random_pair, cfgs[2], [0, 1], [0, 1, 2], base)
    row = explore.sweep_row(cfgs[2], sched, ref, [0, 1, 2], None)
    assert row["target_calls"] == 6 and row["draft_calls"] == 4
    assert row["token_agreement"] == pytest.approx(np.mean([explore.agreement(s, r) for s, r in zip(sched, ref)]))
    assert row["config"] == "D→T, sd_mask 3, entry_num 4 (DDDDTTTTTT)"


def test_pair_bank_fallbacks(pair_loader):
    bank = app.PairBank(pair_loader)
    assert bank.get("tiny").name == "random-test" and "tiny" not in bank.notes
    with pytest.raises(ValueError, match="could not be loaded.*official weights not found"):
        bank.get("d16-d30")
    with pytest.raises(ValueError, match="unknown model"):
        bank.get("d99")

    def broken(key):
        raise ValueError("the tiny pair is incomplete")
    bank = app.PairBank(broken)
    pair = bank.get("tiny")
    assert "random weights" in pair.name and "incomplete" in bank.notes["tiny"]


def test_quality_classifier_only_for_the_embedded_classes(random_pair):
    other = build_random_pair()
    other.class_names = None
    clf, note = app.load_quality_classifier(other)
    assert clf is None and "embedded pair only" in note
    clf, note = app.load_quality_classifier(random_pair)
    assert (clf is None) == bool(note)


# ---- the served app ----------------------------------------------------------------------------

GEN_ARGS = {**app.DEFAULT_INPUTS, "class_name": "circle", "seed": 3, "mode": "speculative"}


@pytest.fixture(scope="module")
def client(app_server):
    from gradio_client import Client

    return Client(app_server, verbose=False)


def gen(client, **kw):
    v = {**GEN_ARGS, **kw}
    return client.predict(*(v[k] for k in app.INPUT_KEYS), api_name="/generate")


def plot_json(value):
    return json.loads(value["plot"])


def test_api_generate_then_scrub_and_shapes(client):
    out = gen(client, seed=21)
    assert out[0] == "Showing: your run — speculative, circle, seed 21"
    assert all(os.path.isfile(p) for p in out[1:4])
    target_calls, draft_calls = out[4], out[5]
    assert 1 <= target_calls <= 10 and draft_calls >= 10
    assert out[7].endswith("×")
    assert "seed 21" in out[8]
    grid = plot_json(out[10])
    assert "picture after scale 10 · 16×16" in [a["text"] for a in grid["layout"]["annotations"]]
    assert len([t for t in plot_json(out[13])["data"] if t["type"] == "bar"]) >= 3
    # state carries the run to the scrubber and the shapes endpoint of the same session
    fig, text = client.predict(3, api_name="/scale_view")
    assert text.startswith("**Scale 3 · 3×3**")
    table = client.predict("target", "all", api_name="/shapes")
    assert set(r[2] for r in table["data"]) == {"target"}
    assert any(r[4] == "(2, 5, 64)" for r in table["data"])   # the verify call of scales 1–2


def test_api_bad_input_is_a_clear_error_and_server_survives(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="schedule must be 10 letters"):
        gen(client, mode="schedule", schedule="DDX")
    with pytest.raises(AppError, match="less than minimum"):   # gradio's own slider bounds check
        gen(client, tau=0.0)
    with pytest.raises(AppError, match="seed must be in"):
        gen(client, seed=-1)
    with pytest.raises(AppError, match="unknown class"):
        gen(client, class_name="dog")
    out = gen(client, mode="target", seed=4)
    assert out[4] == 10 and out[5] == 0 and out[7] == "1.00×"
    lanes = {t["y"][0] for t in plot_json(out[13])["data"]}
    assert lanes == {"target"}   # target only is this run: no separate reference lane


def test_api_sessions_are_isolated(app_server, client):
    from gradio_client import Client

    gen(client, seed=33)
    other = Client(app_server, verbose=False)
    # a fresh session has no run yet (API clients skip the page-load example)
    fig, text = other.predict(3, api_name="/scale_view")
    assert fig is None and "Run a generation" in text
    assert other.predict("all", "all", api_name="/shapes")["data"] in ([], [[""] * 6], [[None] * 6])


def test_api_example_and_model_fallback(client):
    out = client.predict(EXAMPLE_TITLE, api_name="/load_example")
    assert out[0] == f"Showing: precomputed — {EXAMPLE_TITLE}"
    assert out[-len(app.INPUT_KEYS):][app.INPUT_KEYS.index("seed")] == EXAMPLE_INPUTS["seed"]
    model, info, *_ = client.predict("d16-d30", api_name="/select_model")   # weights missing → embedded pair
    assert model["value"] == "tiny" and "random-test" in info


def test_api_masks(client):
    heat, counts, text, multiples = client.predict(2, 4, False, api_name="/mask_view")
    assert "sd_mask 2" in plot_json(heat)["layout"]["title"]["text"]
    assert counts["data"][-1][0] == "all"
    assert "excluding current" in text
    assert len(plot_json(multiples)["data"]) == 6
    keys, row, col = client.predict(1, 4, 3, 5, 5, api_name="/keys_view")   # row/col clamp to the 3×3 grid
    assert (row["value"], row["maximum"], col["value"]) == (2, 2, 2)
    assert "row 2, col 2" in plot_json(keys)["layout"]["title"]["text"]


def test_api_sweep_and_csv(client):
    status, plot, table, csv = client.predict(
        "speculative", "0", "chosen", [], [], [], ["1", "2"], ["1.0"], "circle", 0, 1.5, 0, 1.0, "prob", 1.0, "fp32",
        api_name="/sweep")
    assert "4 of 4 runs done" in status
    df = pd.read_csv(csv)
    assert list(df["config"]) == ["target only", "draft only", "τ = 1, γ = 1", "τ = 1, γ = 2"]
    assert df.loc[0, "speedup"] == pytest.approx(1.0) and df.loc[0, "token_agreement"] == 1.0
    assert (df["target_calls"] == [10, 0, df.loc[2, "target_calls"], df.loc[3, "target_calls"]]).all()
    assert [t["name"] for t in plot_json(plot)["data"]][:1] == ["τ = 1"]
    assert [r[0] for r in table["data"]] == list(df["config"])


def test_mask_view_and_keys_view():
    from sdvar_core import masks
    from sdvar_core.config import ScaleLayout

    layout = ScaleLayout()
    heat, counts, text, multiples = app.mask_view(layout, 5, 3, False)
    hm = [t for t in heat.data if t.type == "heatmap"][0]
    assert np.array_equal(np.asarray(hm.z).astype(bool), masks.mask_matrix(5, 3, layout).numpy())
    assert counts["allowed"].iloc[-1] == masks.pair_counts(5, 3, layout)["allowed"]
    assert masks.rule_explanation(5) in text
    assert len([t for t in multiples.data if t.type == "image"]) == 6
    fig, row, col = app.keys_view(layout, 2, 3, 2, 15, 1)    # scale 2 is 2×2: row clamps to 1
    assert (row.value, row.maximum, col.value) == (1, 1, 1)
    hms = [t for t in fig.data if t.type == "heatmap"]
    assert np.array_equal(np.asarray(hms[0].z).astype(bool), masks.attended_keys(2, 3, 1, 1, 1, layout)[0].numpy())
    with pytest.raises(ValueError, match="scale must be in 1..10"):
        app.keys_view(layout, 2, 3, 0, 0, 0)


def test_build_demo_without_examples_or_embedded_weights():
    def broken(key):
        raise ValueError("the tiny pair is incomplete (test)")
    demo = app.build_demo(pair_loader=broken, examples_dir=None)
    config = demo.get_config_file()
    ids = {c["props"].get("elem_id") for c in config["components"]}
    for elem_id in ("generate", "final-image", "scale-slider", "token-grid", "timeline", "target-calls", "speedup",
                    "mask-heatmap", "mask-rule", "entry-num", "shape-table", "sweep-run", "sweep-plot"):
        assert elem_id in ids
    texts = " ".join(str(c["props"].get("value", "")) for c in config["components"])
    assert "untrained pair with random weights" in texts


def test_more_smooth_reaches_the_engine(random_pair):
    s = app.click_settings({"mode": "target", "more_smooth": True})
    runs = explore.run_click(random_pair, "target", 0, 1, s)
    assert s["more_smooth"] is True and runs["main"].settings["more_smooth"] is True
    with pytest.raises(ValueError, match="more_smooth"):
        explore.run_click(random_pair, "speculative", 0, 1, app.click_settings({"more_smooth": True}))
