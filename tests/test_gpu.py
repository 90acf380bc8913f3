"""GPU requests (issue 22, issue 19 item 6): the seconds each model-running callback asks ZeroGPU for, the
callbacks under the real `spaces` package, and the views that must never ask for a GPU."""
import inspect
import json
import math
import os
import subprocess
import sys
import typing
from pathlib import Path

import gradio as gr
import pytest

import app
from conftest import build_random_pair
from sdvar_core import gpu_budget as gb
from sdvar_core.explore import DEFAULT_INPUTS, PairBank, click_settings, default_pair_loader, sweep_configs
from ui import compare_tab, generate_tab, gpu, mask_gallery
from ui.common import View
from ui.hosting import Host, Limits, limits_from_env

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = {"d16-d20": (16, 20), "d16-d24": (16, 24), "d16-d30": (16, 30)}


@pytest.fixture(scope="module")
def bank():
    """The app's bank with the embedded pair (official pairs are priced from their presets, never loaded)."""
    return PairBank(default_pair_loader())


@pytest.fixture(scope="module")
def tiny(bank):
    return gb.PairShapes.of(bank.get("tiny"))


def call_seconds(shapes, device, mode, batch, gamma=2):
    cfgs = {"draft": shapes.draft, "target": shapes.target}
    return sum(device.call_seconds(cfgs[m], 2 * batch, n, kv) for m, n, kv in gb.run_calls(shapes, mode, batch, gamma))


# ---- the prior against the measurements ---------------------------------------------------------------

def test_worst_case_calls_are_the_engines_rejected_patterns():
    """BENCHMARKS.md 'Call patterns' (forced acceptance 0): γ 2/3/4 make 10 target and 19/27/34 draft calls."""
    shapes = gb.PairShapes.official(16, 30)
    for gamma, drafts in ((1, 10), (2, 19), (3, 27), (4, 34)):
        calls = gb.run_calls(shapes, "speculative", gamma=gamma)
        assert [m for m, _, _ in calls].count("target") == 10
        assert [m for m, _, _ in calls].count("draft") == drafts
    sizes = [p * p for p in shapes.patch_nums]
    handoff = gb.run_calls(shapes, "schedule", schedule="DDDDDTTTTT")
    assert [m for m, _, _ in handoff] == ["draft"] * 5 + ["target"] * 5
    assert handoff[5] == ("target", sum(sizes[:6]), sum(sizes[:6]))   # the target catches up on scales 1–6
    assert gb.run_calls(shapes, "target") == [("target", n, sum(sizes[:k + 1])) for k, n in enumerate(sizes)]
    with pytest.raises(ValueError, match="schedule must be 10 letters"):
        gb.run_calls(shapes, "schedule", schedule="DT")


# Medians of the transformer calls, ms, H200, d16 → d30, bf16 (BENCHMARKS.md "Call patterns", batch 1 / 16):
H200_MEASURED = [("target", 1, 2, 226.5), ("draft", 1, 2, 134.1), ("target", 16, 2, 399.2), ("draft", 16, 2, 133.9),
                 ("speculative", 1, 1, 385.6), ("speculative", 1, 2, 471.3), ("speculative", 1, 3, 572.6),
                 ("speculative", 1, 4, 784.1), ("speculative", 16, 2, 997.6), ("speculative", 16, 4, 1506.7)]


@pytest.mark.parametrize("mode,batch,gamma,measured_ms", H200_MEASURED)
def test_h200_class_reproduces_the_measured_call_patterns(mode, batch, gamma, measured_ms):
    shapes = gb.PairShapes.official(16, 30)
    predicted = call_seconds(shapes, gb.H200, mode, batch, gamma) * 1e3
    assert 0.95 * measured_ms <= predicted <= 1.35 * measured_ms
    # a GPU not yet measured is priced above the H200 (ZeroGPU's slice is not measured here)
    assert call_seconds(shapes, gb.GPU_PRIOR, mode, batch, gamma) * 1e3 > 1.5 * predicted


def test_cpu_class_covers_the_cpu_tables(tiny):
    """BENCHMARKS.md 'Mode table' (embedded pair, CPU, 1 thread, 2 seeds a row): target alone 0.368 s, draft
    alone 0.143 s; 'Single model: VAR-d16 on the CPU': 5.37 s end to end."""
    assert 0.368 / 2 <= gb.run_seconds(tiny, gb.CPU, "target") <= 3 * 0.368 / 2
    assert 0.143 / 2 <= gb.run_seconds(tiny, gb.CPU, "draft") <= 3 * 0.143 / 2
    d16 = gb.PairShapes.official(16, 16)
    assert 5.37 <= gb.run_seconds(d16, gb.CPU, "target") <= 2 * 5.37


# ---- the goals of issue 22 --------------------------------------------------------------------------------

def default_click(shapes):
    return gb.generate_click(shapes, "speculative", click_settings({}, len(shapes.patch_nums)))


def test_goals_embedded_pair_and_official_click(tiny):
    b = default_click(tiny)
    assert b.seconds <= 10                                    # an embedded-pair click asks ≤ 10 s
    assert gb.clicks_per_quota(b.seconds)["anonymous"] >= 10  # and 2 anonymous minutes buy ≥ 10 of them
    for depths in OFFICIAL.values():
        o = default_click(gb.PairShapes.official(*depths))
        assert o.seconds == max(gb.FLOOR_S, math.ceil(o.predicted_s * gb.MARGIN)) <= 30
        assert o.seconds > b.seconds


def test_requests_follow_their_inputs(tiny):
    K = len(tiny.patch_nums)
    auto = gb.generate_click(tiny, "speculative", click_settings({}, K))
    fixed = gb.generate_click(tiny, "speculative", click_settings({"gamma_auto": False, "gamma": 1}, K))
    assert auto.predicted_s > fixed.predicted_s            # γ auto pays the planner's calibration
    assert gb.generate_click(tiny, "target", {}).predicted_s < fixed.predicted_s
    one = gb.generate_click(tiny, "target", {}).predicted_s
    assert gb.generate_click(tiny, "target", {}, batch=8).predicted_s > one
    late, early = (gb.generate_click(tiny, "schedule", click_settings({"mode": "schedule", "entry_num": e}, K))
                   for e in (8, 1))   # the draft makes 8 scales / 1 scale
    assert late.predicted_s < early.predicted_s
    configs = sweep_configs("schedule", [2, 4], ["D→T"], [1], [], [], K)
    one, two = (gb.sweep(tiny, configs, seeds, 10).predicted_s for seeds in (1, 2))
    assert two > one
    for b in (auto, fixed, gb.mask_gallery(tiny, 4), gb.sweep(tiny, configs, 1, 1)):
        assert gb.FLOOR_S <= b.seconds <= gb.CAP_S and b.seconds >= b.predicted_s


def test_default_sweep_fits_and_the_largest_is_refused_with_a_way_out(tiny):
    K = 10
    default = sweep_configs("schedule", [2, 4, 6, 8], ["D→T"], [1, 3], [], [], K)
    largest = sweep_configs("speculative", [], [], [], [1, 2, 3, 4, 5, 6], [1.0, 0.9, 0.8, 0.7, 0.5], K)
    assert gb.sweep(tiny, default, 2, 10).seconds <= gb.CAP_S
    for depths in OFFICIAL.values():
        shapes = gb.PairShapes.official(*depths)
        assert gb.sweep(shapes, default, 2, 1).seconds <= gb.CAP_S
        with pytest.raises(gb.TooLong, match=r"more than the 120 s one request may ask for here; choose fewer seeds "
                                             r"or settings \(32 settings × 2 seed\(s\) = 64 runs of 1 image\(s\)\), "
                                             r"or split it into \d+ sweeps"):
            gb.sweep(shapes, largest, 2, 1)
    assert issubclass(gb.TooLong, ValueError)


def test_readme_states_the_table_the_module_prints(tiny):
    pairs = {"embedded (tiny)": tiny, **{f"VAR d16 → d{t}": gb.PairShapes.official(16, t) for t in (20, 24, 30)}}
    assert gb.table(pairs) in (ROOT / "README.md").read_text()


# ---- the app's callbacks --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo(random_pair):
    return app.build_demo(pair_loader=lambda key, precision="fp32": random_pair, examples_dir=None)


def underlying(block_fn):
    """The function `listen` bound for an event (the gpu wrapper for GPU callbacks)."""
    fn = block_fn.fn
    partial = getattr(fn, "__wrapped__", None)
    return getattr(partial, "func", fn)


def test_only_the_model_runs_ask_for_a_gpu(demo):
    decorated = {underlying(f).__name__: f.api_name for f in demo.fns.values() if hasattr(underlying(f), "gpu_budget")}
    assert "on_picture_change" in decorated   # a new picture's pyramid (a private event)
    assert {k: v for k, v in decorated.items() if k != "on_picture_change"} == {
        "on_generate": "generate", "on_gallery": "mask_gallery", "on_sweep": "sweep",
        "on_pyramid": "picture_pyramid", "on_picture_run": "picture_run"}
    plain = {f.api_name for f in demo.fns.values() if f.api_name and not hasattr(underlying(f), "gpu_budget")}
    # precomputed runs, scrubbing, Masks, Shapes and the teaching views of a stored run: never a GPU request
    assert {"load_example", "scale_view", "mask_view", "keys_view", "teach", "round_story", "cost_whatif",
            "frontier", "select_model", "export_figures", "picture_example"} <= plain
    # precomputed runs are a dropdown of stored traces, no gr.Examples (whose Dataset could cache by running)
    assert not any(isinstance(b, gr.Dataset) for b in demo.blocks.values())


def test_gpu_callbacks_keep_what_gradio_reads(demo):
    fns = {f.api_name: f for f in demo.fns.values() if f.api_name in ("generate", "mask_gallery", "sweep")}
    raw = {"generate": generate_tab.on_generate, "mask_gallery": mask_gallery.on_gallery, "sweep": compare_tab.on_sweep}
    for name, f in fns.items():
        wrapped = underlying(f)
        assert inspect.signature(wrapped) == inspect.signature(raw[name])
        assert inspect.isgeneratorfunction(f.fn) == inspect.isgeneratorfunction(raw[name])
        assert wrapped.__name__ == raw[name].__name__
    assert typing.get_type_hints(fns["sweep"].fn)["request"] is gr.Request   # Gradio finds gr.Request by its hint
    assert isinstance(inspect.signature(raw["generate"]).parameters["progress"].default, gr.Progress)


def test_budgets_for_every_endpoint(bank, tiny):
    """Each endpoint's budget callable, with the callback's own arguments, for the tiny and official pairs."""
    inputs = dict(DEFAULT_INPUTS)
    sweep = dict(sweep_kind="schedule", sweep_seeds="0", sweep_classes="chosen", sweep_entries=["4"],
                 sweep_dirs=["D→T"], sweep_masks=["1"], sweep_gammas=["1"], sweep_taus=["1.0"])
    seen = {}
    for model in ("tiny", *OFFICIAL):
        for mode in ("speculative", "schedule", "target", "draft"):
            p = gpu.generate_budget(bank, None, None, model=model, **{**inputs, "mode": mode})
            assert gb.FLOOR_S <= p.budget.seconds <= gb.CAP_S
            seen[(model, mode)] = p.budget.seconds
        assert seen[(model, "speculative")] > seen[(model, "target")]
        g = gpu.gallery_budget(bank, None, model=model, mask_entry=4)
        small = gpu.sweep_budget(bank, None, None, None, model=model, **sweep)
        big = gpu.sweep_budget(bank, None, None, None, model=model, **{**sweep, "sweep_seeds": "0-7",
                                                                        "sweep_entries": [str(e) for e in range(1, 10)],
                                                                        "sweep_masks": ["0", "1"], "cap": 300})
        assert gb.FLOOR_S <= g.budget.seconds and small.budget.seconds < big.budget.seconds <= 300
        assert "one seed asks for" in big.smaller
    assert "embedded pair asks for" in gpu.generate_budget(bank, None, None, model="d16-d30", **inputs).smaller
    assert seen[("tiny", "speculative")] < seen[("d16-d30", "speculative")]
    assert "d16-d30" not in bank.pairs   # priced from the presets: nothing loaded
    with pytest.raises(ValueError, match="seed"):
        gpu.generate_budget(bank, None, None, model="tiny", **{**inputs, "seed": -1})
    huge = {**sweep, "sweep_seeds": "0-7", "sweep_entries": [str(e) for e in range(1, 10)],
            "sweep_masks": [str(m) for m in range(6)]}
    with pytest.raises(gb.TooLong, match="split it into"):
        gpu.sweep_budget(bank, None, None, None, model="d16-d30", **huge)
    host = Host.create(Limits())   # the app's own run limit comes first, before any GPU is asked for
    try:
        with pytest.raises(ValueError, match="at most 64 per sweep"):
            gpu.sweep_budget(bank, None, host, None, model="tiny", **huge)
    finally:
        host.files.remove()


def test_zerogpu_refusals_become_a_plain_message():
    from spaces.zero.gradio import error

    priced = gpu.Priced(gb.Budget("a click", 4.0, 7), "A smaller request: 'target only' asks for 5 s.")
    cases = {("ZeroGPU quota exceeded", "You have exceeded your ZeroGPU quota (7s requested vs. 3s left)."): "quota",
             ("ZeroGPU illegal duration", "The requested GPU duration (400s) is larger than the maximum allowed"):
                 "larger than this Space allows",
             ("ZeroGPU queue timeout", "No GPU was available after 60s"): "No GPU became free",
             ("ZeroGPU worker error", "GPU task aborted"): "stopped before it finished"}
    for (title, text), what in cases.items():
        message = gpu.refused(error(title, text), priced).message
        assert what in message and text.rstrip(".") in message
        assert "asked for 7 s" in message and "'target only' asks for 5 s" in message
        assert "logging in raises it" in message and "Masks and Shapes" in message
    mine = gr.Error("seed must be an integer")
    assert gpu.refused(mine, priced) is mine


def test_gpu_cap_from_the_environment():
    assert limits_from_env({}).gpu_max_seconds == gb.CAP_S
    assert limits_from_env({"SDVAR_GPU_MAX_SECONDS": "200"}).gpu_max_seconds == 200
    with pytest.raises(ValueError, match="SDVAR_GPU_MAX_SECONDS"):
        limits_from_env({"SDVAR_GPU_MAX_SECONDS": "301"})


def test_decorated_generate_runs_on_a_cpu_outside_spaces():
    """Issue 19 item 6: with `spaces` installed and no ZeroGPU, the decorated Generate callback imports and runs."""
    import spaces

    assert gpu.spaces is spaces and not gpu.on_zerogpu()
    demo = app.build_demo(examples_dir=None)   # the embedded pair from assets/
    f = next(f for f in demo.fns.values() if f.api_name == "generate")
    view = next(a for a in f.fn.__wrapped__.args if isinstance(a, View))
    *_, out = f.fn(gr.Request(session_hash="cpu"), model="tiny", **{**DEFAULT_INPUTS, "mode": "schedule"})
    assert out[view.final_image].shape[:2] == out[view.target_image].shape[:2] == (256, 256)
    assert out[view.target_calls] == 6 and out[view.draft_calls] == 4   # entry_num 4: 4 draft + 6 target scales


def test_callbacks_under_the_real_zerogpu_wrappers(random_pair, demo):
    """tests/zerogpu_sim.py: spaces' own wrappers fork a worker and pickle the jobs both ways; only the
    scheduler (and torch's CUDA hooks) are stand-ins. The seconds asked are the budgets; a refusal is plain."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SDVAR_TEST_THREADS": "1"}
    env.pop("SPACES_ZERO_GPU", None)
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "zerogpu_sim.py")], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["generate_ran_in_pid"] != out["this_pid"]              # in a forked worker, results pickled back
    assert out["generate_keys_are_the_views_components"] and out["generate_image_shape"] == [256, 256, 3]
    shapes = gb.PairShapes.of(random_pair)
    settings = click_settings(dict(DEFAULT_INPUTS, mode="speculative"), 10)
    expected = gb.generate_click(shapes, "speculative", settings, gpu.DEVICE).seconds
    assert out["asked_generate"] == expected
    configs = sweep_configs("schedule", ["4"], ["D→T"], ["1"], [], [], 10)
    assert out["asked_sweep"] == gb.sweep(shapes, configs, 1, 1, gpu.DEVICE).seconds
    assert out["sweep_yields"] == out["sweep_rows"] == 3
    assert f"asked for {expected} s" in out["refusal"] and "exceeded your ZeroGPU quota" in out["refusal"]
    assert out["mask_view_after_refusal"] and not out["mask_view_asked_gpu"]
    assert "schedule must be 10 letters D/T, got 'DDXTTTTTTT'" in out["worker_error"]   # raised in the worker
    # served through Gradio's queue (its own gr.Request and gr.Progress cross into the worker): same inputs
    # as off ZeroGPU, every output back, and the sweep asked for its own budget
    assert out["inputs"] == {f.api_name: [c.elem_id for c in f.inputs] for f in demo.fns.values()
                             if f.api_name in ("generate", "mask_gallery", "sweep")}
    assert out["served_generate_outputs"] == len(generate_tab.RUN_OUTPUTS) - 2   # the two States stay behind
    assert out["served_sweep_status"].startswith("4 of 4 runs done (2 seed(s) × 10 image(s) each)")
    spec = sweep_configs("speculative", [], [], [], ["1", "2"], ["1.0"], 10)
    assert out["asked_served"] == [expected, gb.sweep(shapes, spec, 2, 10, gpu.DEVICE).seconds]
    # Stop, served here, stops the sweep in the worker (its own message: it saw the mark within a scale)
    assert out["stopped_status"].startswith("Stopped after") and out["stop_s"] < 10


def test_stop_reaches_a_sweep_in_a_forked_worker(tmp_path):
    """On ZeroGPU a sweep runs in a forked worker with its own copy of the lane; Stop's mark reaches it."""
    import multiprocessing
    import time

    from ui.hosting import SweepLane

    lane = SweepLane(tmp_path)
    ctx = multiprocessing.get_context("fork")
    started, seen = ctx.Event(), ctx.SimpleQueue()

    def sweep():   # what on_sweep does with the lane, in the worker
        flag = lane.start("session-1")
        started.set()
        deadline = time.time() + 20
        while not flag.is_set() and time.time() < deadline:
            time.sleep(0.01)
        seen.put(flag.is_set())
        lane.finish("session-1", flag)

    worker = ctx.Process(target=sweep)
    worker.start()
    try:
        assert started.wait(20)
        assert lane.count("session-1") == 0     # this process does not know the worker's sweep
        lane.stop("session-1")
        assert seen.get() is True
    finally:
        worker.join(20)
    assert not list(tmp_path.glob("*.stop"))   # the sweep's end removed the mark
    again = lane.start("session-1")             # and a new sweep is not stopped by an old Stop
    assert not again.is_set()


def test_generate_stop_and_sweep_stop_leave_separate_marks():
    host = Host.create(Limits())
    try:
        assert host.lane.marks != host.clicks.marks
        assert {host.lane.marks.parent, host.clicks.marks.parent} == {host.files.root}
        sweep = host.lane.start("session-1")
        host.clicks.stop("session-1")          # Stop of a Generate click
        assert not sweep.is_set()              # leaves the session's sweep running
        host.lane.stop("session-1")
        assert sweep.is_set()
    finally:
        host.files.remove()


def test_your_picture_asks_for_its_pyramid_and_its_run():
    """The picture tab's requests: a pyramid is cheap, a run on the picture costs more, both within the goals'
    scale (≤ a Generate click's order), for the embedded and an official pair."""
    tiny = gb.PairShapes.of(build_random_pair())
    official = gb.PairShapes.official(16, 30)
    for shapes, most in ((tiny, 10), (official, 60)):
        pyramid, run = gb.picture(shapes), gb.picture(shapes, run=True)
        assert gb.FLOOR_S <= pyramid.seconds <= run.seconds <= most, (shapes.name, pyramid, run)
        assert run.predicted_s > pyramid.predicted_s
