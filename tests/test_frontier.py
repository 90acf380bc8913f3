"""The speed–quality frontier (issue 21): its rows, the resumable quality run, the verdict against the
plain-models curve, the figures, the report and the Compare tab's precomputed view."""
import json
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import Names
from sdvar_core import frontier as fr
from sdvar_core import sample, viz_static, viz_teach
from sdvar_core.bench import frontier as job
from sdvar_core.bench.cli import main as bench_main
from sdvar_core.bench.harness import Row, measure
from sdvar_core.checkpoints import load_classifier, save_var
from sdvar_core.config import CLASSIFIER_STEM
from sdvar_core.engine import Pair
from sdvar_core.figures import render

# ---- the rows ------------------------------------------------------------------------------------------


def test_rows_cover_the_issue():
    rows = job.frontier_rows()
    names = [r.name for r in rows]
    assert len(set(names)) == len(rows) and len({r.slug for r in rows}) == len(rows)
    assert names[:2] == ["target only", "draft only"]                     # the partial report starts here
    plain = {r.name: r for r in rows if r.family == "plain"}
    assert set(plain) == {"target only", "draft only", fr.MID_NAME} and plain[fr.MID_NAME].model == "mid"
    points_of_mask = {m: set() for m in range(6)}   # sd_mask → {(direction, entry)}
    for direction in ("D→T", "T→D"):
        for k in (r.kwargs for r in rows if r.family == direction):
            first = k["schedule"][0]
            assert first == direction[0] and len(k["schedule"]) == 10
            points_of_mask[k["sd_mask"]].add((direction, k["schedule"].index(direction[-1])))
        assert len({e for d, e in points_of_mask[3] if d == direction}) == 3     # VAR's own mask over entry_num
    assert all(len(points) >= 2 for points in points_of_mask.values()), points_of_mask   # every mask at 2–3 entries
    exact = [r.kwargs for r in rows if r.family == "exact"]
    assert sorted(map(str, (k["gamma"] for k in exact))) == ["1", "2", "3", "auto"]
    assert all((k["accept"], k["tau"], k["lenience"]) == ("prob", 1.0, 1.0) for k in exact)
    relaxed = [r.kwargs for r in rows if r.family == "relaxed"]
    assert len({k["tau"] for k in relaxed if k["tau"] < 1}) >= 3 and len({k["lenience"] for k in relaxed
                                                                          if k["lenience"] > 1}) >= 2
    assert all(r.batch == job.SPEC_BATCH for r in rows if r.mode == "speculative")
    assert all(r.batch == job.QUALITY_BATCH for r in rows if r.mode != "speculative")
    # every row's command line parses, with the row's own settings
    for r in rows:
        args = sample.build_parser().parse_args(job.sample_argv(r, "tiny", "x", per_class=1, seed=0, precision="fp32",
                                                                device="cpu", threads=1, max_minutes=None))
        assert args.mode == r.mode and args.batch_size == r.batch
        for key, value in r.settings:
            assert getattr(args, key) == value


def test_select_rows_by_family_name_and_slug():
    rows = job.frontier_rows()
    got = job.select_rows(rows, "plain,spec γ=2 exact,TtoD-e-8-sd-mask-3")
    assert [r.name for r in got] == ["target only", "draft only", fr.MID_NAME, "spec γ=2 exact", "T→D e=8 sd_mask 3"]
    with pytest.raises(ValueError, match="'nope'"):
        job.select_rows(rows, "plain,nope")


# ---- the resumable quality run -----------------------------------------------------------------------


@pytest.fixture()
def frontier_pair(tmp_path, pair_dir, random_pair):
    """The random small pair's folder, and a 'mid' model beside it (the draft's weights)."""
    save_var(random_pair.draft, tmp_path / "mid")
    return str(pair_dir), tmp_path / "mid"


ROWS = "target only,plain mid model,spec γ=2 exact"


def quality(out, pair, mid, **kw):
    rows = job.select_rows(job.frontier_rows(), ROWS)
    return job.run_quality(out, rows, pair=pair, mid=mid, per_class=1, threads=1, log=lambda s: None, **kw)


def arrays(out, row):
    with np.load(job.row_dir(out, row) / "samples.npz") as z, np.load(job.row_dir(out, row) / "tokens.npz") as t:
        return z["arr_0"], t["tokens"]


def test_stopped_and_killed_runs_resume_to_the_uninterrupted_result(tmp_path, frontier_pair, monkeypatch):
    pair, mid = frontier_pair
    whole = quality(tmp_path / "whole", pair, mid)
    assert whole == {"made": ["target only", fr.MID_NAME, "spec γ=2 exact"], "skipped": [], "stopped": False}

    # --max-minutes: a fake clock moves 100 s per chunk; the deadline (5 min) falls inside the γ=2 row (10 chunks)
    clock = {"t": 0.0}
    made = sample.make_chunk

    def slow_chunk(*a, **kw):
        clock["t"] += 100.0
        return made(*a, **kw)

    monkeypatch.setattr(time, "perf_counter", lambda: clock["t"])
    monkeypatch.setattr(sample, "make_chunk", slow_chunk)
    out = tmp_path / "stopped"
    first = quality(out, pair, mid, deadline=300.0)
    monkeypatch.undo()
    assert first["stopped"] and first["made"] == ["target only", fr.MID_NAME]
    spec = job.select_rows(job.frontier_rows(), "spec γ=2 exact")[0]
    folder = job.row_dir(out, spec)
    chunks = sorted(folder.glob("chunks/*.npz"))
    assert len(chunks) == 2 and not (folder / "samples.npz").exists()   # stopped between chunks, the row unfinished
    assert all(sample.image_path(folder, j).is_file() for j in range(len(chunks)))
    assert not list(folder.rglob(".*.tmp"))

    # a killed run: the last chunk and a picture of another are lost, a half-written temporary file is left
    second = quality(out, pair, mid)
    assert second == {"made": ["spec γ=2 exact"], "skipped": [], "stopped": False}
    (folder / "samples.npz").unlink()
    sorted(folder.glob("chunks/*.npz"))[-1].unlink()
    sample.image_path(folder, 3).unlink()
    (folder / "images" / ".000004.png.999.tmp").write_bytes(b"half")
    assert quality(out, pair, mid)["made"] == ["spec γ=2 exact"]
    for row in job.select_rows(job.frontier_rows(), ROWS):
        for a, b in zip(arrays(tmp_path / "whole", row), arrays(out, row)):
            np.testing.assert_array_equal(a, b)


def test_mid_row_waits_for_its_weights_and_runs_once_they_appear(tmp_path, frontier_pair, monkeypatch, random_pair):
    pair, _ = frontier_pair
    messages = []
    by = {r.name: r for r in job.frontier_rows()}
    rows = [by[fr.MID_NAME], by["target only"], by["draft only"]]
    mid = tmp_path / "later" / "mid"
    got = job.run_quality(tmp_path / "a", rows[:1], pair=pair, mid=mid, per_class=1, log=messages.append)
    assert got == {"made": [], "skipped": [fr.MID_NAME], "stopped": False}
    assert any("plain mid model waits" in m and "later" in m for m in messages)
    # the weights appear while the target row runs (training finished): the waiting mid row runs next
    made = sample.main

    def main_then_finish_training(argv):
        made(argv)
        if not mid.with_suffix(".json").is_file():
            mid.parent.mkdir()
            save_var(random_pair.draft, mid)

    monkeypatch.setattr(sample, "main", main_then_finish_training)
    got = job.run_quality(tmp_path / "b", rows, pair=pair, mid=mid, per_class=1, log=messages.append)
    assert got == {"made": ["target only", fr.MID_NAME, "draft only"], "skipped": [], "stopped": False}


def test_mid_row_runs_the_mid_model_as_a_plain_model(tmp_path, frontier_pair, random_pair):
    """In the speed harness the mid row runs its own pair's target: with the draft's weights as 'mid',
    its images are the draft alone's."""
    pair, mid = frontier_pair
    seen = {}
    mid_pair = Pair(random_pair.vqvae, random_pair.draft, random_pair.draft, name="mid")
    rows = [Row("draft only", "draft"), Row("mid", "target", (), "mid")]
    res = measure(random_pair, rows, [[([1, 4], 7)]], pairs={"mid": mid_pair}, log=lambda s: None,
                  on_images=lambda row, images, ids: seen.setdefault(row.name, images))
    np.testing.assert_array_equal(seen["draft only"], seen["mid"])
    assert res["mid"].mean("target_calls") == 10 and res["mid"].mean("draft_calls") == 0
    with pytest.raises(ValueError, match="mid"):
        measure(random_pair, rows, [[([1], 0)]], log=lambda s: None)


# ---- the report from a run folder ---------------------------------------------------------------------


def test_report_only_writes_section_picture_and_json(tmp_path, frontier_pair, monkeypatch):
    pair, mid = frontier_pair
    run = tmp_path / "run"
    quality(run, pair, mid)
    (run / "speed.json").write_text(json.dumps({   # a speed run's file (its numbers made up for the test)
        "machine": "test machine", "load": "load 1", "repeats": 2, "seeds": 1, "precision": "fp32", "seconds": 1.0,
        "date": "2026-01-01", "rows": {"target only": {"speedups": [1.0, 1.0], "target_calls": 10, "draft_calls": 0},
                                       fr.MID_NAME: {"speedups": [1.4, 1.6], "target_calls": 10, "draft_calls": 0},
                                       "spec γ=2 exact": {"speedups": [0.4, 0.5], "target_calls": 9, "draft_calls": 17}}}))
    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\n\nhand-written\n")
    bench_main(["frontier", "--out", str(run), "--pair", pair, "--mid", str(mid), "--report-only", "--n-boot", "8", "--real", "60",
                "--md", str(md), "--png", str(tmp_path / "docs" / "f.png"), "--json", str(tmp_path / "f.json")])
    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nhand-written") and "<!-- bench:frontier-tiny -->" in text
    assert "](docs/f.png)" in text and "**Rows with quality: 3 of 29**" in text
    pts, meta = fr.load_points(tmp_path / "f.json")
    by = {p.name: p for p in pts}
    assert meta["rows_with_quality"] == 3 and by["spec γ=2 exact"].speedup == pytest.approx(0.45)
    assert by["target only"].images == 10 and by["draft only"].fid_tiny is None
    assert by["spec γ=2 exact"].target_calls == pytest.approx(np.mean([json.loads(x)["target_calls"] for x in
                                                                       (job.row_dir(run, job.spec_row(2)) /
                                                                        "stats.jsonl").read_text().splitlines()]))
    q = json.loads((job.row_dir(run, job.spec_row(2)) / "quality.json").read_text())["quality"]
    t = json.loads((job.row_dir(run, job.frontier_rows()[0]) / "quality.json").read_text())["quality"]
    assert by["spec γ=2 exact"].dfid == pytest.approx(q["fid_tiny"] - t["fid_tiny"])
    d = np.asarray(q["fid_boot"]) - np.asarray(t["fid_boot"])
    assert by["spec γ=2 exact"].dfid_ci == pytest.approx((np.percentile(d, 2.5), np.percentile(d, 97.5)))
    assert Image.open(tmp_path / "docs" / "f.png").size[0] > 500
    # the cached quality is reused: a second report gives the same numbers without recomputing
    monkeypatch.setattr(job, "row_quality", lambda *a: pytest.fail("recomputed a cached row"))
    again = job.report(run, job.frontier_rows(), load_classifier(CLASSIFIER_STEM),
                       meta=job.job_meta(pair, 1, 0, "fp32", 10, 60), n_boot=8, log=lambda s: None)
    assert {p.name: p.fid_tiny for p in again} == {p.name: p.fid_tiny for p in pts}


def test_paired_dfid_uses_the_same_resamples():
    row = {"fid_tiny": 5.0, "fid_boot": [5.5, 6.0, 7.0], "images": 10}
    target = {"fid_tiny": 3.0, "fid_boot": [3.5, 3.0, 4.5], "images": 10}
    d, ci = job.paired_dfid(row, target)
    assert d == 2.0 and ci == pytest.approx([np.percentile([2.0, 3.0, 2.5], 2.5), np.percentile([2.0, 3.0, 2.5], 97.5)])
    assert job.paired_dfid({**row, "images": 9}, target) is None


# ---- the verdict on synthetic points ------------------------------------------------------------------


def P(name, family, x, fid, half=0.3, **kw):
    return fr.Point(name, family, speedup=x, speedup_range=(x * 0.9, x * 1.1), fid_tiny=fid,
                    fid_ci=(fid - half, fid + half), class_accuracy=0.9, accuracy_ci=(0.88, 0.92), **kw)


PLAIN = [P("target only", "plain", 1.0, 3.5, dfid=0.0, dfid_ci=(0.0, 0.0), target_calls=10.0, images=1000),
         P(fr.MID_NAME, "plain", 1.6, 8.0), P("draft only", "plain", 2.5, 15.0)]


def test_curve_interpolates_and_inverts():
    curve = fr.plain_curve(PLAIN)
    assert [p.name for p in curve] == ["target only", fr.MID_NAME, "draft only"]
    assert fr.curve_at(curve, 1.3)[0] == pytest.approx(3.5 + 0.5 * 4.5)
    assert fr.curve_at(curve, 0.5) == (3.5, 3.2, 3.8)          # slower than the target: the target's values
    assert fr.curve_at(curve, 3.0) is None                     # faster than every plain model
    assert fr.curve_speed_at(curve, 11.5) == pytest.approx(1.6 + 0.5 * 0.9)
    assert fr.curve_speed_at(curve, 2.0) is None


def test_verdict_names_settings_above_and_below_the_curve():
    above = P("T→D e=8 sd_mask 3", "T→D", 1.3, 4.0, dfid=0.5, dfid_ci=(0.1, 0.9), target_calls=8.0)   # curve 5.75
    on = P("D→T e=5 sd_mask 3", "D→T", 1.3, 5.6)
    below = P("spec γ=3 prob τ=0.5 λ=1", "relaxed", 0.6, 6.0)     # slower than the target and worse
    exact = P("spec γ=2 exact", "exact", 0.45, 3.6, dfid=0.1, dfid_ci=(-0.2, 0.4), target_calls=9.0)
    pts = PLAIN + [above, on, below, exact, fr.Point("spec γ=1 exact", "exact")]
    curve = fr.plain_curve(pts)
    a = fr.against(above, curve)
    assert a.side == "above" and a.gain == pytest.approx(1.75) and a.gain_ci == pytest.approx((1.75 - 0.6, 1.75 + 0.6))
    assert a.speed_gain == pytest.approx(1.3 / (1.0 + 0.5 / 4.5 * 0.6))
    assert fr.against(on, curve).side == "on" and fr.against(below, curve).side == "below"
    text = fr.verdict(pts)
    assert "7 of 8 rows have their quality measured and 7 their speed; 7 have both" in text
    assert "half-width 0.30 (goal ≤ 0.5: met)" in text
    assert "half-width 0.60 (goal ≤ 0.5: not met)" in fr.verdict([P("target only", "plain", 1.0, 3.5, half=0.6,
                                                                    images=100)])
    assert "**Above the curve (1):** **T→D e=8 sd_mask 3**" in text and "1.75 [1.15, 2.35]" in text
    assert "Provisional" not in text                                          # the mid model is in the curve
    assert "**Provisional:** without the plain mid model" in fr.verdict([PLAIN[0], PLAIN[2], above])
    assert "**On the curve (within the noise): 2**; the closest to above is **D→T e=5 sd_mask 3**" in text
    assert "**Below the curve: 1**" in text
    assert "1 of 1 inside the target's interval, 1 of 1 with a ΔFID interval that holds 0" in text
    # at equal FID: T→D (1.3× where the curve reaches 4.0 at 1.07×) and D→T are faster; γ=2 (FID 3.6, at 0.45×)
    # and the relaxed row (FID 6.0 at 0.6×) are slower than plain models of their FID
    assert "2 of 4 settings whose FID-tiny the curve reaches are faster than a plain model of that FID: " \
           "T→D e=8 sd_mask 3 1.22×, D→T e=5 sd_mask 3 1.02×." in text
    assert fr.pareto(pts) == ["target only", "T→D e=8 sd_mask 3", fr.MID_NAME, "draft only"]
    # nothing above: the verdict says so; without the mid model the curve says it is missing
    text = fr.verdict([PLAIN[0], PLAIN[2], on, exact])
    assert "**Above the curve: none**" in text and "plain mid model is not in it yet" in text
    assert "needs at least two plain models" in fr.verdict([PLAIN[0], exact])
    text = fr.verdict([PLAIN[0], PLAIN[2], fr.Point("spec γ=1 exact", "exact")])
    assert "none has both its speed and its quality measured yet" in text and "Above the curve" not in text


def test_claims_read_calls_speed_and_the_dfid_interval():
    fast = P("T→D e=4 sd_mask 3", "T→D", 1.5, 4.0, dfid=0.03, dfid_ci=(-0.1, 0.06), target_calls=4.0)
    assert fr.claims(fast) == {"calls": "✓", "speed": "✓", "fid": "✓", "all": "hold"}
    open_ = P("x", "T→D", 1.9, 4.0, dfid=0.3, dfid_ci=(-0.1, 0.6), target_calls=4.0)
    assert fr.claims(open_) == {"calls": "✓", "speed": "✓ (above 1.7)", "fid": "?", "all": "not excluded"}
    worse = P("y", "exact", 0.4, 5.0, dfid=1.0, dfid_ci=(0.5, 1.5), target_calls=9.0)
    assert fr.claims(worse) == {"calls": "✗", "speed": "✗", "fid": "✗", "all": "no"}
    assert fr.claims(fr.Point("z", "exact"))["all"] == "—"
    assert "hold for T→D e=4 sd_mask 3; not excluded (ΔFID interval holds +0.07) for x" in fr.verdict(
        PLAIN + [fast, open_])


def test_points_round_trip_through_json(tmp_path):
    pts = PLAIN + [fr.Point("spec γ=1 exact", "exact")]
    (tmp_path / "f.json").write_text(fr.dump(pts, {"rows": 4}))
    assert fr.load_points(tmp_path / "f.json") == (pts, {"rows": 4})
    (tmp_path / "bad.json").write_text('{"points": [{"name": 1}]}')
    with pytest.raises(ValueError, match="bad.json is not a frontier file"):
        fr.load_points(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="family"):
        fr.Point("x", "speculative")


# ---- the figures ----------------------------------------------------------------------------------------


def test_figures_draw_curve_bars_front_and_the_sweep():
    pts = PLAIN + [P("T→D e=8 sd_mask 3", "T→D", 1.3, 4.0), P("spec γ=2 exact", "exact", 0.45, 3.6),
                   fr.Point("spec γ=1 exact", "exact", fid_tiny=3.0, fid_ci=(2.9, 3.1))]   # no speed: not drawn
    fig = viz_teach.plain_frontier_figure(pts)
    by = {t.name: t for t in fig.data if t.name}
    assert list(by["plain-models curve"].x) == [1.0, 1.6, 2.5] and list(by["plain-models curve"].y) == [3.5, 8.0, 15.0]
    assert list(by[fr.FAMILIES["exact"]].x) == [0.45]                       # the unmeasured row is left out
    bars = [t for t in fig.data if not t.showlegend and t.legendgroup == "T→D"][0]
    assert list(bars.y) == [3.7, 4.3, None]                                 # the interval itself
    assert list(by["Pareto front"].x)[::2] == [1.0, 1.3, 1.6, 2.5] and fig.layout.yaxis.autorange == "reversed"
    sweep = pd.DataFrame({"config": ["target only", "γ=2"], "speedup": [1.0, 0.5], "class_accuracy": [0.9, 0.8]})
    acc = viz_teach.plain_frontier_figure(pts, "class_accuracy", sweep=sweep)
    overlay = [t for t in acc.data if t.name == viz_teach.SWEEP_STYLE[0]][0]
    assert list(overlay.x) == [1.0, 0.5] and list(overlay.y) == [0.9, 0.8]
    assert not any(t.name == viz_teach.SWEEP_STYLE[0] for t in viz_teach.plain_frontier_figure(pts, sweep=sweep).data)
    static = viz_static.plain_frontier(pts)
    ax = static.axes[0]
    assert [tuple(line.get_xdata()) for line in ax.lines if line.get_label() == "plain-models curve"] == [(1.0, 1.6, 2.5)]
    assert ax.yaxis_inverted() and render(static, "png")[:4] == b"\x89PNG"
    labels = {t.get_text() for t in ax.texts}
    assert "T→D e=8 sd_mask 3" in labels and "spec γ=2 exact" not in labels   # front SDVAR points are named
    empty = viz_teach.plain_frontier_figure([fr.Point("target only", "plain")])
    assert "no row has both" in empty.layout.annotations[0].text
    with pytest.raises(ValueError, match="metric"):
        fr.series(pts, "psnr")


# ---- the Compare tab -----------------------------------------------------------------------------------


def test_compare_tab_loads_the_precomputed_frontier(tmp_path):
    from ui import compare_tab

    pre, problem = compare_tab.load_precomputed()            # the shipped file
    assert problem is None and len(pre["points"]) == len(job.frontier_rows())
    assert pre["meta"]["pair"] == "tiny" and pre["meta"]["per_class"] >= 100
    assert "Measured by `python -m sdvar_core.bench frontier`" in compare_tab.precomputed_text(pre)
    view = Names()
    out = compare_tab.plain_frontier_view(view, pre, last_sweep=None, plain_metric="fid_tiny")
    assert out["plain_plot"].layout.yaxis.autorange == "reversed"
    sweep = pd.DataFrame({"config": ["target only"], "speedup": [1.0], "class_accuracy": [0.7]})
    out = compare_tab.plain_frontier_view(view, pre, last_sweep=sweep, plain_metric="class_accuracy")
    assert any(t.name == viz_teach.SWEEP_STYLE[0] for t in out["plain_plot"].data)
    with pytest.raises(ValueError, match="plain_metric"):
        compare_tab.plain_frontier_view(view, pre, last_sweep=None, plain_metric="psnr")
    (tmp_path / "frontier.json").write_text("{")
    pre, problem = compare_tab.load_precomputed(tmp_path / "frontier.json")
    assert pre is None and "frontier.json is not a frontier file" in problem and "left out" in problem
