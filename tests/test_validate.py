"""validate: one rule table for every input; each bad value is a ValueError naming the field, the
value (cut short) and what is allowed. The engine, explore and the app all go through it."""
import math

import numpy as np
import pytest
import torch

from sdvar_core import explore, validate
from sdvar_core.engine import Settings, generate
from sdvar_core.validate import SEED_MAX, check, check_list, check_settings, shown


@pytest.mark.parametrize("name,value,expected", [
    ("seed", 0, 0), ("seed", SEED_MAX, SEED_MAX), ("seed", 7.0, 7), ("seed", np.int64(3), 3),
    ("gamma", 3, 3), ("gamma", "auto", "auto"), ("gamma", 10**30, 10**30),
    ("top_k", 0, 0), ("top_k", 900.0, 900), ("cfg", 0, 0.0), ("cfg", 1.5, 1.5), ("cfg", np.float32(2), 2.0),
    ("tau", 1, 1.0), ("lenience", 1, 1.0), ("keep_draft_rejected", False, False), ("more_smooth", np.bool_(True), True),
    ("accept", "top1", "top1"), ("precision", "bf16", "bf16"), ("sd_mask", 5, 5), ("mode", "draft", "draft"),
])
def test_good_values_are_coerced(name, value, expected):
    got = check(name, value)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("name,value,allowed", [
    ("seed", None, r"an integer in 0..2\^63-1"), ("seed", -1, "0..2\\^63-1"), ("seed", 2**63, "0..2\\^63-1"),
    ("seed", 2**64, "0..2\\^63-1"), ("seed", 4.5, "not a whole number"), ("seed", float("nan"), "integer"),
    ("seed", float("inf"), "integer"), ("seed", "5", "integer"), ("seed", True, "integer"), ("seed", [1], "integer"),
    ("gamma", 0, r"an integer >= 1 or 'auto'"), ("gamma", 4.5, "not a whole number"), ("gamma", "fast", "'auto'"),
    ("top_k", -1, ">= 0"), ("top_k", 4.5, "not a whole number"), ("cfg", -0.1, r"\[0, 100\]"),
    ("cfg", float("inf"), "a number"), ("cfg", 1e300, r"\[0, 100\]"), ("cfg", "1.5", "a number"),
    ("top_p", 0, r"\(0, 1\]"), ("tau", 1.5, r"\(0, 1\]"), ("lenience", 0.5, r"\[1, 1000\]"),
    ("lenience", float("nan"), "a number"), ("keep_draft_rejected", "no", "True or False"),
    ("keep_draft_rejected", 1, "True or False"), ("more_smooth", None, "True or False"),
    ("accept", "kl", "one of 'prob', 'top1'"), ("accept", None, "one of"), ("sd_mask", 6, "0..5"),
    ("sd_mask", None, "0..5"), ("verify_mask", 0, "1..5"), ("precision", "fp64", "one of 'fp32', 'bf16', 'fp16'"),
    ("mode", 1, "one of 'target'"), ("mask_rule", True, "0..5"),
])
def test_bad_values_name_the_field_the_value_and_the_range(name, value, allowed):
    with pytest.raises(ValueError, match=f"^{name} must be .*{allowed}") as e:
        check(name, value)
    assert f"got {shown(value)}" in str(e.value)


def test_context_ranges_and_labels():
    assert check("entry_num", 10, num_scales=10) == 10
    with pytest.raises(ValueError, match="entry_num must be an integer in 0..10, got 11"):
        check("entry_num", 11, num_scales=10)
    with pytest.raises(ValueError, match="mask_entry must be an integer in 0..9"):
        check("mask_entry", 10, num_scales=10)
    with pytest.raises(ValueError, match="class_id must be an integer in 0..999, got 1000"):
        check("class_id", 1000, num_classes=1000)
    with pytest.raises(ValueError, match="^the class must be one of 'a', 'b', got 'c'$"):
        check("class_name", "c", label="the class", choices=("a", "b"))
    assert check("class_name", "b", choices=("a", "b")) == "b"


def test_choices_keep_types_apart():
    assert check("mask_rule", 1) == 1
    with pytest.raises(ValueError):
        check("shape_scale", 3, choices=("all", "3"))      # a number is not the text '3'
    with pytest.raises(ValueError):
        check("model", ["tiny"], choices=("tiny",))        # unhashable values are simply not choices
    with pytest.raises(ValueError):
        check("model", True, choices=(1, 2))


def test_long_and_html_values_are_cut_in_messages():
    text = "<img src=x onerror=alert(1)>" + "x" * 100_000
    with pytest.raises(ValueError) as e:
        check("class_name", text, choices=("a",))
    message = str(e.value)
    assert len(message) < 300 and "… (100030 characters)" in message
    with pytest.raises(ValueError, match="at most 200 characters, got '<img.*… \\(100030 characters\\)$"):
        check("seeds_text", text)
    assert shown("a" * 10) == "'aaaaaaaaaa'" and shown(object.__new__(BadRepr)) == "<BadRepr>"


class BadRepr:
    def __repr__(self):
        raise RuntimeError("no repr")


def test_lists_of_check_box_values():
    assert check_list("sweep_entries", ["4", 2, "4"], label="entry_num", num_scales=10) == [4, 2]
    assert check_list("sweep_taus", ["1.0", 0.8], label="τ") == [1.0, 0.8]
    with pytest.raises(ValueError, match="each entry_num item must be an integer in 0..10, got '4.5'"):
        check_list("sweep_entries", ["4.5"], label="entry_num", num_scales=10)
    with pytest.raises(ValueError, match="each τ item must be a number in \\(0, 1\\], got 'nan'"):
        check_list("sweep_taus", ["nan"], label="τ")
    with pytest.raises(ValueError, match="sd_mask must be a list, got '1'"):
        check_list("sweep_masks", "1", label="sd_mask")
    with pytest.raises(ValueError, match="at most 64 items"):
        check_list("sweep_masks", ["1"] * 65, label="sd_mask")


def test_settings_validate_coerces_in_place_and_checks_the_device():
    s = Settings(gamma=3.0, top_k=5.0, cfg=2, entry_num=4.0)
    s.validate("schedule", 10)
    assert (s.gamma, s.top_k, s.cfg, s.entry_num) == (3, 5, 2.0, 4)
    assert type(s.gamma) is int and type(s.cfg) is float
    Settings(gamma="auto").validate("speculative", 10)   # the planner's γ
    Settings(gamma="auto", adaptive_gamma=True).validate("target", 10)   # neither applies outside speculative
    with pytest.raises(ValueError, match="keep_draft_rejected must be True or False, got 'no'"):
        Settings(keep_draft_rejected="no").validate("speculative", 10)
    with pytest.raises(ValueError, match="schedule must be 10 letters"):
        Settings(schedule="D" * 11).validate("schedule", 10)
    with pytest.raises(ValueError, match="precision 'fp16' is not available on cpu"):
        check_settings(Settings(precision="fp16"), "target", 10, torch.device("cpu"))
    check_settings(Settings(precision="fp16"), "target", 10)   # no device: only the name is checked


def test_generate_checks_seed_and_class_ids(random_pair):
    with pytest.raises(ValueError, match=r"seed must be an integer in 0..2\^63-1, got 9223372036854775808"):
        generate(random_pair, "target", [0], seed=2**63)
    with pytest.raises(ValueError, match="class_id must be an integer in 0..9, got 2.5"):
        generate(random_pair, "target", [2.5], seed=0)
    with pytest.raises(ValueError, match="gamma must be an integer >= 1 or 'auto', got 4.5"):
        generate(random_pair, "speculative", [0], seed=0, gamma=4.5)
    tr = generate(random_pair, "target", torch.tensor([1, 2]), seed=np.int64(4), progressive=False).trace
    assert tr.settings["class_ids"] == [1, 2] and tr.settings["seed"] == 4


def test_explore_uses_the_same_rules():
    """The same seed bound for a click and a sweep; sweep lists checked item by item."""
    with pytest.raises(ValueError, match=r"each seed must be an integer in 0..2\^63-1, got 9223372036854775808"):
        explore.parse_seeds(str(2**63))
    assert explore.parse_seeds(str(SEED_MAX)) == [SEED_MAX]
    with pytest.raises(ValueError, match="seeds must be text of at most 200 characters, got None"):
        explore.parse_seeds(None)
    with pytest.raises(ValueError, match="each direction item must be one of 'D→T', 'T→D', got '<b>'"):
        explore.sweep_configs("schedule", ["4"], ["<b>"], ["1"], [], [])
    with pytest.raises(ValueError, match="sweep_kind must be one of 'schedule', 'speculative'"):
        explore.sweep_configs(None, [], [], [], [], [])
    with pytest.raises(ValueError, match="= 80 engine runs; at most 64 per sweep"):
        explore.check_sweep_size([{}] * 10, list(range(8)), 64)
    explore.check_sweep_size([{}] * 8, list(range(8)), 64)
    s = explore.click_settings({"mode": "schedule", "entry_num": 6.0, "schedule": None, "gamma": 2.0})
    assert s["entry_num"] == 6 and s["gamma"] == 2
    for bad, match in ((dict(entry_num=-3), "entry_num"), (dict(schedule="D" * 300), "schedule must be text"),
                       (dict(mode="<i>"), "mode must be one of"), (dict(top_k=float("nan")), "top_k")):
        with pytest.raises(ValueError, match=match):
            explore.click_settings({"mode": "target", **bad})


def test_rules_cover_every_setting():
    names = {f for f in Settings.__dataclass_fields__ if f != "schedule"}
    assert names <= set(validate.RULES)
    assert math.isinf(float("inf"))   # (the float rules reject it: see the parametrized cases)
