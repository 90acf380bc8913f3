"""Every input's rules in one place: the engine's settings, the explorer's click and sweep inputs and
the app's widgets are checked here, the same way for the library, the API and the UI.

`RULES` maps a field to its rule (type, range, choices). `check(name, value, **context)` returns the
value coerced to its type (4.0 → 4 for an integer field) or raises ValueError naming the field, the
value (cut to a few dozen characters) and what is allowed:

    seed must be an integer in 0..2^63-1, got 18446744073709551616
    gamma must be an integer >= 1 or 'auto', got 4.5
    keep_draft_rejected must be True or False, got 'no'

Ranges that depend on the pair name a context key (`num_scales`, `num_classes`, `choices`) that the
caller passes: check("entry_num", 4, num_scales=10). Nothing here imports torch models or Gradio.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

SEED_MAX = 2**63 - 1             # torch generators take seeds below 2^63
SHOWN_CHARS = 60                 # how much of a bad value an error message repeats
TEXT_CHARS = 200                 # the longest free text any input accepts (schedules, seed lists)
LIST_ITEMS = 64                  # the most items a multiple-choice input may hold

MODES = ("target", "draft", "schedule", "speculative")
ACCEPT_RULES = ("prob", "top1")
GAMMA_WORDS = ("auto",)          # γ may be chosen by the engine's planner instead of a number


def shown(value, limit: int = SHOWN_CHARS) -> str:
    """repr(value) cut to `limit` characters, saying how long it was when cut."""
    try:
        text = repr(value)
    except Exception:  # a repr that fails must not hide the real error
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = f"{text[:limit]}… ({len(text)} characters)"
    return text


def _number_text(x) -> str:
    return "2^63-1" if x == SEED_MAX else f"{x:g}" if isinstance(x, float) else str(x)


@dataclass(frozen=True)
class Rule:
    """How one field is checked. lo / hi / choices may name a context key instead of a value.

    kind: 'int', 'float' (finite), 'bool' (True/False only), 'choice' (one of `choices`), 'text'
    (a string of at most `max_len` characters). For 'int' and 'float', `lo_open` excludes lo;
    `words` are strings accepted besides numbers (γ's 'auto'); `text_ok` also reads numbers written
    as text ('4', as check boxes send them).
    """

    kind: str
    lo: float | str | None = None
    hi: float | str | None = None
    lo_open: bool = False
    choices: tuple | str = ()
    words: tuple = ()
    text_ok: bool = False
    max_len: int = TEXT_CHARS

    def resolved(self, context: dict) -> tuple:
        def get(v):
            if isinstance(v, str):
                if v not in context:
                    raise TypeError(f"rule needs the context value {v!r}")
                return context[v]
            return v
        return get(self.lo), get(self.hi), tuple(get(self.choices))

    def allowed(self, context: dict) -> str:
        """What the rule accepts, in words."""
        lo, hi, choices = self.resolved(context)
        if self.kind == "bool":
            return "True or False"
        if self.kind == "choice":
            listing = ", ".join(map(repr, choices))
            return "one of " + (listing if len(listing) <= 200 else listing[:200] + "…")
        if self.kind == "text":
            return f"text of at most {self.max_len} characters"
        noun = "an integer" if self.kind == "int" else "a number"
        if lo is not None and hi is not None:
            span = (f"in ({_number_text(lo)}, {_number_text(hi)}]" if self.lo_open
                    else f"in {_number_text(lo)}..{_number_text(hi)}" if self.kind == "int"
                    else f"in [{_number_text(lo)}, {_number_text(hi)}]")
        elif lo is not None:
            span = f"{'>' if self.lo_open else '>='} {_number_text(lo)}"
        elif hi is not None:
            span = f"<= {_number_text(hi)}"
        else:
            span = ""
        text = f"{noun} {span}".strip()
        return text + "".join(f" or {w!r}" for w in self.words)


RULES: dict[str, Rule] = {
    # engine.Settings and generate()
    "mode": Rule("choice", choices=MODES),
    "cfg": Rule("float", 0, 100),
    "top_k": Rule("int", 0),
    "top_p": Rule("float", 0, 1, lo_open=True),
    "entry_num": Rule("int", 0, "num_scales"),
    "sd_mask": Rule("int", 0, 5),
    "gamma": Rule("int", 1, words=GAMMA_WORDS),
    "adaptive_gamma": Rule("bool"),
    "gamma_auto": Rule("bool"),
    "accept": Rule("choice", choices=ACCEPT_RULES),
    "tau": Rule("float", 0, 1, lo_open=True),
    "lenience": Rule("float", 1, 1000),
    "keep_draft_rejected": Rule("bool"),
    "verify_mask": Rule("int", 1, 5),
    "precision": Rule("choice", choices="precisions"),
    "progressive": Rule("bool"),
    "more_smooth": Rule("bool"),
    "seed": Rule("int", 0, SEED_MAX),
    "class_id": Rule("int", 0, "last_class"),
    # a picture (generate's prefix / keep_mask; the "Your picture" tab)
    "prefix_scales": Rule("int", 0, "num_scales"),
    "picture_mode": Rule("choice", choices=("target", "draft", "speculative", "relaxed", "schedule")),
    "picture_task": Rule("choice", choices=("continue", "inpaint")),
    "picture_example": Rule("choice", choices="choices"),
    # the explorer's inputs
    "class_name": Rule("choice", choices="choices"),
    "model": Rule("choice", choices="choices"),
    "example": Rule("choice", choices="choices"),
    "schedule_text": Rule("text", max_len=TEXT_CHARS),
    "seeds_text": Rule("text", max_len=TEXT_CHARS),
    "scale": Rule("int", 1, "num_scales"),
    "mask_rule": Rule("int", 0, 5),
    "mask_entry": Rule("int", 0, "last_scale"),
    "mask_full": Rule("bool"),
    "pick_scale": Rule("int", 1, "num_scales"),
    "pick_row": Rule("int", 0),
    "pick_col": Rule("int", 0),
    "shape_model": Rule("choice", choices=("all", "draft", "target", "vqvae")),
    "shape_scale": Rule("choice", choices="choices"),
    "sweep_kind": Rule("choice", choices=("schedule", "speculative")),
    "sweep_classes": Rule("choice", choices=("all", "chosen")),
    "sweep_entries": Rule("int", 0, "num_scales", text_ok=True),
    "sweep_dirs": Rule("choice", choices="choices"),
    "sweep_masks": Rule("int", 0, 5, text_ok=True),
    "sweep_gammas": Rule("int", 1, "num_scales", text_ok=True),
    "sweep_taus": Rule("float", 0, 1, lo_open=True, text_ok=True),
    # the teaching views (economics, story, figures)
    "round_pick": Rule("int", 1, "num_rounds"),
    "whatif_regime": Rule("choice", choices="choices"),
    "whatif_ratio": Rule("float", 0.05, 1),        # draft/target cost per call
    "whatif_overhead": Rule("float", 0, 40),       # fixed cost per call, × a measured target step
    "whatif_rejection": Rule("float", 0, 1),       # each drafted token's rejection chance, × this
    "whatif_batch": Rule("int", 1, 64),
    "export_formats": Rule("choice", choices=("png", "svg", "pdf")),
    "frontier_metric": Rule("choice", choices=("auto", "class_accuracy", "fid_tiny", "token_agreement",
                                               "pixel_psnr_db")),
    "plain_metric": Rule("choice", choices=("fid_tiny", "class_accuracy")),   # the precomputed frontier's y
}


def _context(context: dict) -> dict:
    ctx = dict(context)
    if "num_scales" in ctx:
        ctx.setdefault("last_scale", ctx["num_scales"] - 1)
    if "num_classes" in ctx:
        ctx.setdefault("last_class", ctx["num_classes"] - 1)
    if "precisions" not in ctx:
        from .runtime import PRECISIONS

        ctx["precisions"] = PRECISIONS
    return ctx


def _same(value, choice) -> bool:
    """value == choice without Python's loose equalities (1 == True == 1.0 and '1' != 1 stay apart)."""
    if isinstance(value, str) or isinstance(choice, str):
        return isinstance(value, str) and isinstance(choice, str) and value == choice
    if isinstance(value, bool) or isinstance(choice, bool):
        return value is choice
    if isinstance(value, numbers.Number) and isinstance(choice, numbers.Number):
        return value == choice
    return False


def check(name: str, value, rule: Rule | None = None, label: str | None = None, **context):
    """`value` coerced to the type of field `name`'s rule, or ValueError naming the field, the value
    and what is allowed. `rule` overrides RULES[name]; `label` is the name shown (default `name`)."""
    rule = rule or RULES[name]
    ctx = _context(context)
    lo, hi, choices = rule.resolved(ctx)
    label = label or name

    def bad(note: str = ""):
        return ValueError(f"{label} must be {rule.allowed(ctx)}, got {shown(value)}{note}")

    if rule.kind == "bool":
        if type(value).__name__ in ("bool", "bool_"):   # Python's and numpy's booleans, nothing else
            return bool(value)
        raise bad()
    if rule.kind == "choice":
        for choice in choices:
            if _same(value, choice):
                return choice
        raise bad()
    if rule.kind == "text":
        if not isinstance(value, str):
            raise bad()
        if len(value) > rule.max_len:
            raise bad()
        return value
    if rule.kind not in ("int", "float"):
        raise TypeError(f"unknown rule kind {rule.kind!r}")

    if isinstance(value, str) and value in rule.words:
        return value
    number = value
    if isinstance(value, str) and rule.text_ok:
        try:
            number = float(value.strip()) if rule.kind == "float" else int(value.strip())
        except ValueError:
            raise bad() from None
    if isinstance(number, bool) or not isinstance(number, numbers.Real):
        raise bad()
    if isinstance(number, numbers.Integral):
        number = int(number)
    else:
        number = float(number)
        if not math.isfinite(number):
            raise bad()
        if rule.kind == "int":
            if not number.is_integer():
                raise bad(" (not a whole number)")
            number = int(number)
    if lo is not None and (number <= lo if rule.lo_open else number < lo):
        raise bad()
    if hi is not None and number > hi:
        raise bad()
    return float(number) if rule.kind == "float" else number


def check_list(name: str, values, label: str | None = None, **context) -> list:
    """Each item of a multiple-choice input checked by field `name`'s rule (duplicates kept once, in order)."""
    label = label or name
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise ValueError(f"{label} must be a list, got {shown(values)}")
    if len(values) > LIST_ITEMS:
        raise ValueError(f"{label} must have at most {LIST_ITEMS} items, got {len(values)}")
    return list(dict.fromkeys(check(name, v, label=f"each {label} item", **context) for v in values))


def check_schedule(value, num_scales: int, label: str = "schedule") -> str:
    """A schedule string: `num_scales` letters 'D' (draft) or 'T' (target)."""
    if isinstance(value, str) and len(value) == num_scales and not set(value) - {"D", "T"}:
        return value
    raise ValueError(f"{label} must be {num_scales} letters of 'D'/'T', got {shown(value)}")


def check_settings(s, mode: str, num_scales: int, device=None) -> None:
    """Check an engine `Settings` for `mode` in place: each field coerced by its rule (4.0 → 4), then
    the rules between fields; precision also against `device` (runtime.check_precision) when given."""
    check("mode", mode)
    for name in ("cfg", "top_k", "top_p", "sd_mask", "gamma", "adaptive_gamma", "accept", "tau", "lenience",
                 "keep_draft_rejected", "verify_mask", "precision", "progressive", "more_smooth"):
        setattr(s, name, check(name, getattr(s, name)))
    if s.entry_num is not None:
        s.entry_num = check("entry_num", s.entry_num, num_scales=num_scales)
    if s.schedule is not None:
        s.schedule = check_schedule(s.schedule, num_scales)
    if mode == "speculative" and s.gamma == "auto" and s.adaptive_gamma:
        raise ValueError("adaptive_gamma and gamma='auto' both choose γ: use one of them")
    if s.more_smooth and mode == "speculative":
        raise ValueError("more_smooth is not available in speculative mode: its f_hat depends on the "
                         "probabilities, not only the tokens, so verification would compare different inputs")
    if device is not None:
        from .runtime import check_precision

        check_precision(device, s.precision)
