"""One click streamed: scales as they finalize, previews on a budget, comparisons cached, stop within a scale."""
import threading
import time

import numpy as np
import pytest

from sdvar_core import click, explore
from sdvar_core.click import ClickStopped, ComparisonCache, eta_seconds, stream_click
from sdvar_core.engine import generate

SETTINGS = dict(cfg=1.5, top_k=0, top_p=1.0, precision="fp32")


def slow_engine(monkeypatch, seconds: float, finalized: list):
    """Each finalized scale takes `seconds` more in the worker (a slow model); `finalized` records them."""
    real = click.generate

    def slow(*args, on_scale=None, **kwargs):
        def wrapped(ev):
            time.sleep(seconds)
            finalized.append(ev.done)
            on_scale(ev)
        return real(*args, on_scale=wrapped, **kwargs)
    monkeypatch.setattr(click, "generate", slow)


def test_stream_gives_each_scale_then_the_runs(random_pair, monkeypatch):
    slow_engine(monkeypatch, 0.05, [])
    cache = ComparisonCache()
    updates = list(stream_click(random_pair, "speculative", 3, 5, {**SETTINGS, "gamma": 2}, cache=cache,
                                previews="all"))
    scales = [u for u in updates if u.stage == "scale"]
    assert [u.done for u in scales] == sorted({u.done for u in scales}) and scales[-1].done == 10
    # each streamed scale is the final one: the finished run has the same tokens and status
    main = next(u for u in updates if u.stage == "main").runs["main"]
    for u in scales:
        k = u.done - 1
        assert len(u.partial.scales) == u.done
        assert np.array_equal(u.event.record.tokens, main.scales[k].tokens)
        assert all(np.array_equal(a.status, b.status) for a, b in zip(u.partial.scales, main.scales))
        assert np.array_equal(u.event.image, main.scales[k].image)     # the preview is the scrubber's picture
    # the counters only grow and end at the run's own
    assert [u.event.target_calls for u in scales] == sorted(u.event.target_calls for u in scales)
    assert scales[-1].event.target_calls == main.target_calls and scales[-1].event.draft_calls == main.draft_calls
    last = updates[-1]
    assert last.stage == "comparison" and set(last.runs) == {"main", "target", "draft"} and not last.cached
    assert [u.done for u in updates] == sorted(u.done for u in updates) and last.done == last.total == 30


def test_a_slow_consumer_sees_the_newest_scale(random_pair):
    """Updates that pile up while the consumer is busy come as one: the newest scale, with every record."""
    updates = []
    for u in stream_click(random_pair, "target", 0, 1, SETTINGS, cache=None, previews="none"):
        updates.append(u)
        if u.stage == "scale":
            time.sleep(0.3)
    scales = [u for u in updates if u.stage == "scale"]
    assert len(scales) < 10 and scales[-1].done == 10 and len(scales[-1].partial.scales) == 10


def test_streamed_run_equals_the_plain_run(random_pair):
    """Streaming and previews change nothing in what the engine samples, nor in its timings' meaning."""
    streamed = list(stream_click(random_pair, "schedule", 1, 8, {**SETTINGS, "entry_num": 4, "sd_mask": 1},
                                 cache=None, previews="budget"))[-1].runs["main"]
    plain = generate(random_pair, "schedule", [1], seed=8, entry_num=4, sd_mask=1, progressive=False,
                     **SETTINGS).trace
    assert np.array_equal(streamed.tokens, plain.tokens) and np.array_equal(streamed.images, plain.images)
    # previews were decoded with the run's clock stopped: they are not in its total
    assert streamed.timings["progressive"] > 0
    assert streamed.timings["total"] == pytest.approx(streamed.timings["transformer"] + streamed.timings["overhead"]
                                                      + streamed.timings["decode"])


def test_comparisons_are_cached_by_what_they_depend_on(random_pair, monkeypatch):
    cache = ComparisonCache()
    made = []
    real = click.generate
    monkeypatch.setattr(click, "generate", lambda pair, mode, *a, **k: made.append(mode) or real(pair, mode, *a, **k))

    def once(mode, **extra):
        made.clear()
        out = list(stream_click(random_pair, mode, 2, 4, {**SETTINGS, **extra}, cache=cache, previews="none"))
        return out[-1]

    first = once("speculative", gamma=2)
    assert made == ["speculative", "target", "draft"] and first.cached == set()
    second = once("speculative", gamma=1, tau=0.5)      # only the speculative settings changed
    assert made == ["speculative"] and second.cached == {"target", "draft"}
    assert second.runs["target"] is first.runs["target"]
    third = once("schedule", entry_num=3, sd_mask=0)    # a hand-off reuses them too
    assert made == ["schedule"]
    fourth = once("speculative", gamma=2, cfg=2.5)      # another CFG: new comparisons
    assert made == ["speculative", "target", "draft"] and fourth.cached == set()
    once("target")                                      # the chosen run is the target alone: only the draft
    assert made == ["target"]
    assert third.runs["draft"] is first.runs["draft"]


def test_stop_ends_a_stream_within_one_scale(random_pair, monkeypatch):
    finalized = []
    slow_engine(monkeypatch, 0.3, finalized)
    stop = threading.Event()
    seen = []
    with pytest.raises(ClickStopped):
        for update in stream_click(random_pair, "target", 0, 0, SETTINGS, cache=None, stop=stop, previews="none"):
            seen.append(update.done)
            stop.set()
    assert seen == [1] and len(finalized) <= 2, finalized   # the engine stopped at its next scale
    # closing the generator early stops its worker too
    finalized.clear()
    stream = stream_click(random_pair, "target", 0, 0, SETTINGS, cache=None, previews="none")
    next(stream)
    stream.close()
    time.sleep(0.5)
    assert len(finalized) <= 2, finalized


def test_eta_from_the_scales_done():
    flops = [1.0, 2.0, 4.0, 8.0, 16.0]
    # each scale costs 0.1 s + 0.01 s per FLOP → exact after three scales
    clock = np.cumsum([0.1 + 0.01 * f for f in flops])
    assert eta_seconds(flops, list(clock[:2])) is None
    assert eta_seconds(flops, list(clock[:3])) == pytest.approx(clock[-1] - clock[2])
    assert eta_seconds(flops, list(clock)) is None


def test_run_click_keeps_its_contract(random_pair):
    runs = explore.run_click(random_pair, "draft", 1, 2, SETTINGS, cache=None)
    assert runs["draft"] is runs["main"] and runs["target"].settings["mode"] == "target"
    assert all(s.image is not None for s in runs["main"].scales)


def test_a_first_auto_click_says_it_calibrates_and_the_next_does_not(random_pair):
    from sdvar_core import calibration

    calibration.forget()
    auto = {**SETTINGS, "gamma": "auto"}
    first = [u.stage for u in stream_click(random_pair, "speculative", 1, 0, auto, cache=None, previews="none")]
    assert first[0] == "calibrating" and first.count("calibrating") == 1
    again = [u.stage for u in stream_click(random_pair, "speculative", 1, 1, auto, cache=None, previews="none")]
    assert "calibrating" not in again   # the planner and its costs are kept
    assert calibration.timings_for(random_pair, 1, "fp32") is not None
    calibration.forget()


def test_budget_previews_follow_their_scale(random_pair, monkeypatch):
    """A scale is announced before its preview is decoded; the picture arrives in a later update."""
    slow_engine(monkeypatch, 0.2, [])
    updates = [u for u in stream_click(random_pair, "target", 2, 3, SETTINGS, cache=None, previews="budget")
               if u.stage == "scale"]
    assert updates[0].done == 1 and updates[0].picture is None
    with_picture = [u for u in updates if u.picture is not None]
    assert with_picture and with_picture[0].picture.shape == (1, 64, 64, 3)
