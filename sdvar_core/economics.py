"""The economics of speculation over VAR's scales, computed from Traces: why exact speculation stalls,
what the same click would cost on other hardware, and which mode sits on the speed–quality frontier.

Numbers only: the plotly figures are in `viz_teach`, the static (matplotlib) ones in `viz_static`,
the plain-language round story in `story`. Nothing here runs a model.

- **Why it stalls** (`scale_odds`): per scale, the measured per-token acceptance α_k, the
  probability that every token of the scale passes (∏ min(1, p/q) over its tokens, the exact rule),
  and the tokens per scale. A round keeps a drafted scale only if all of its tokens pass, so the
  odds fall like α^(pn²): 1×1 passes often, 16×16 essentially never.
- **Cost what-if** (`cost_whatif`): the click's traces give per-call costs through the planner's own
  cost model (`calibration.Timings` → `planner.Costs`); knobs rescale the draft's calls, add a fixed
  cost per call (the launch-bound GPU regime), make the draft better, or raise the batch. Exact
  speculative rounds are priced by `planner.policy_value` / `planner.solve` (auto), hand-offs by
  `planner.schedule_value`: one cost model for the planner, the what-if and the benchmarks.
- **Frontier** (`frontier`): the sweep's rows as (speed-up, quality) points with the Pareto front.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .calibration import Timings
from .config import ScaleLayout
from .planner import MARGIN, Costs, policy_value, schedule_value, solve
from .trace import ACCEPTED, Trace

ASSUMED_ALPHA = 0.8   # per-token acceptance assumed where a run verified nothing and no plan says more


# ---- why exact speculation stalls ---------------------------------------------------------------

@dataclass
class ScaleOdds:
    """One scale's odds under the exact rule; None where this run verified no draft of the scale."""

    scale: int
    pn: int
    tokens: int                  # pn² tokens per image
    alpha: float | None          # measured: fraction of drafted tokens accepted
    expected_alpha: float | None  # mean of min(1, p/q): the per-token acceptance probability
    pass_prob: float | None      # P(every token of the scale accepted), per image, averaged over the batch
    batch_pass: float | None     # P(every token of every image accepted): what a round needs to go on
    planned: float | None = None  # the γ planner's pass probability for the scale (gamma="auto" runs)


def keep_probabilities(p_draft: np.ndarray, q_draft: np.ndarray) -> np.ndarray:
    """min(1, p/q) per drafted token (float64), the exact rule's chance of keeping it."""
    p, q = np.asarray(p_draft, np.float64), np.asarray(q_draft, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(q > 0, np.minimum(1.0, p / np.where(q > 0, q, 1.0)), 1.0)


def _log_pass(keep: np.ndarray) -> np.ndarray:
    """log P(all tokens pass) per row of (B, n) keep probabilities (−inf where one is 0)."""
    with np.errstate(divide="ignore"):
        return np.log(keep).sum(axis=1)


def scale_odds(trace: Trace) -> list[ScaleOdds]:
    """Per scale: tokens, measured α_k, expected α_k, P(scale passes) per image and for the batch."""
    plans = [r.plan for r in trace.rounds if r.plan is not None]
    planned = plans[-1].pass_prob if plans else None
    out = []
    for k, rec in enumerate(trace.scales):
        verified = rec.producer == "draft+target" and rec.p_draft is not None and rec.q_draft is not None
        odds = ScaleOdds(k, rec.pn, rec.pn * rec.pn, None, None, None, None,
                         None if planned is None else float(planned[k]))
        if verified:
            keep = keep_probabilities(rec.p_draft, rec.q_draft)
            logs = _log_pass(keep)
            odds.alpha = float((rec.status == ACCEPTED).mean())
            odds.expected_alpha = float(keep.mean())
            odds.pass_prob = float(np.exp(logs).mean())
            odds.batch_pass = float(np.exp(logs.sum()))
        out.append(odds)
    return out


def mean_alpha(odds: list[ScaleOdds]) -> float | None:
    """The per-token acceptance probability over every verified token (None: nothing verified)."""
    pairs = [(o.expected_alpha, o.tokens) for o in odds if o.expected_alpha is not None]
    return sum(a * n for a, n in pairs) / sum(n for _, n in pairs) if pairs else None


def format_prob(p: float | None) -> str:
    """0.49, 0.02, 6e-09, 2e-115, 0 — probabilities readable from 1 down to underflow."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "–"
    if p == 0:
        return "0"
    return f"{p:.2f}" if p >= 0.01 else f"{p:.0e}".replace("e-0", "e-")


# ---- the cost what-if ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Regime:
    """A preset of the what-if: the draft/target cost ratio (None: as measured), the fixed cost per call
    (× the mean measured target step), the batch, and one sentence on why it behaves so."""

    key: str
    label: str
    ratio: float | None
    overhead: float
    batch: int
    sentence: str


REGIMES = (
    Regime("cpu", "CPU, compute-bound (as measured on a CPU)", None, 0.0, 1,
           "On a CPU a call costs what its tokens cost: verifying two drafted scales in one target call costs "
           "about as much as making them one by one, so the calls speculation saves are worth almost nothing."),
    Regime("gpu1", "GPU, batch 1 (launch-bound)", 0.6, 20.0, 1,
           "On a GPU at batch 1 a call costs about the same whatever it feeds (kernel launches and weight reads "
           "dominate), so one verify call can replace several target steps — it pays only if whole drafted scales "
           "pass nearly every time."),
    Regime("gpuN", "GPU, large batch (compute-bound again)", 0.35, 1.0, 16,
           "At a large batch the GPU is compute-bound again, so verifying costs like generating, and a drafted "
           "scale must pass for every image of the batch at once: exact speculation loses, hand-offs still pay."),
)
REGIME_BY_KEY = {r.key: r for r in REGIMES}
REJECTION_CHOICES = ((1.0, "as measured"), (0.5, "2× fewer rejections"), (0.1, "10× fewer"),
                     (0.01, "100× fewer"), (0.001, "1000× fewer"), (0.0, "a perfect draft (all accepted)"))
GAMMAS = (1, 2, 3, 4)
# (label, schedule over the official 10 scales, hover) — CoDe's direction gives the big scales to the draft
HANDOFFS = (("T×8 + D×2", "TTTTTTTTDD", "target makes scales 1–8, the draft 9–10 (CoDe's direction, N = 8)"),
            ("T×6 + D×4", "TTTTTTDDDD", "target makes scales 1–6, the draft 7–10 (CoDe's direction, N = 6)"),
            ("D×4 + T×6", "DDDDTTTTTT", "the draft makes scales 1–4, the target 5–10 (the SDVAR code's entry_num 4)"))


@dataclass
class Prediction:
    label: str
    kind: str          # "speculative" | "auto" | "handoff" | "draft" | "click"
    seconds: float | None
    speedup: float | None
    lossless: bool
    detail: str = ""


@dataclass
class WhatIf:
    """The predicted speed-ups for one setting of the knobs, and the click's measured one."""

    predictions: list[Prediction]
    click_label: str                # which prediction is the click's own setting
    measured_speedup: float | None
    pass_prob: list[float]          # π_k used (whole batch)
    sources: list[str]              # per scale: "measured", "planner" or "assumed"
    ratio: float
    measured_ratio: float
    overhead: float
    rejection: float
    batch: int
    target_seconds: float           # target alone, predicted (with the shared decode)
    notes: list[str] = field(default_factory=list)


def check_knobs(ratio=None, overhead=0.0, rejection=1.0, batch=None) -> tuple[float | None, float, float, int | None]:
    """The what-if's inputs, validated: ValueErrors name the field."""
    if ratio is not None and not (isinstance(ratio, (int, float)) and 0 < float(ratio) <= 2):
        raise ValueError(f"draft/target cost ratio must be a number in (0, 2], got {ratio!r}")
    if not (isinstance(overhead, (int, float)) and 0 <= float(overhead) <= 100):
        raise ValueError(f"fixed cost per call must be a number in 0..100 (× the mean target step), got {overhead!r}")
    if not (isinstance(rejection, (int, float)) and 0 <= float(rejection) <= 1):
        raise ValueError(f"rejection multiplier must be a number in 0..1, got {rejection!r}")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, (int, float)) or int(batch) != batch
                              or not 1 <= batch <= 256):
        raise ValueError(f"batch must be an integer in 1..256, got {batch!r}")
    return (None if ratio is None else float(ratio), float(overhead), float(rejection),
            None if batch is None else int(batch))


def click_costs(traces: list[Trace]) -> Costs:
    """Per-call costs from the traces of one click, by the planner's calibration model: measured windows
    where a trace ran them, the least-squares fit elsewhere. ValueError if a model made no call."""
    traces = [t for t in traces if t is not None]
    layout = ScaleLayout(tuple(traces[0].patch_nums))
    timings = Timings(layout.num_scales)
    for t in {id(t): t for t in traces}.values():
        timings.add(t)
    return timings.costs(layout)


def measured_ratio(costs: Costs) -> float:
    """Σ draft step ÷ Σ target step: the draft's cost per call relative to the target's."""
    K = costs.num_scales
    return sum(costs.draft[k][k] for k in range(K)) / max(sum(costs.target[k][k] for k in range(K)), 1e-12)


def mean_target_step(costs: Costs) -> float:
    return sum(costs.target[k][k] for k in range(costs.num_scales)) / costs.num_scales


def whatif_costs(costs: Costs, ratio: float | None = None, overhead: float = 0.0) -> Costs:
    """The measured costs under other hardware: every draft call rescaled to `ratio` × the target's
    (as a whole: Σ draft steps ÷ Σ target steps; None keeps it), then a fixed cost of `overhead` × the mean
    target step added to every target call and `ratio` × that to every draft call (kernel launches and
    weight reads scale with the model). The work between calls stays as measured."""
    r0 = measured_ratio(costs)
    r = r0 if ratio is None else ratio
    fixed = overhead * mean_target_step(costs)
    K = costs.num_scales
    draft = [[costs.draft[s][e] * r / max(r0, 1e-12) + r * fixed if e >= s else costs.draft[s][e] for e in range(K)]
             for s in range(K)]
    target = [[costs.target[s][e] + fixed if e >= s else costs.target[s][e] for e in range(K)] for s in range(K)]
    return Costs(draft=draft, target=target, make=list(costs.make), judge=list(costs.judge))


def pass_probabilities(trace: Trace, rejection: float = 1.0, batch: int | None = None
                       ) -> tuple[list[float], list[str]]:
    """Whole-batch pass probability π_k of every scale for the what-if, and where each comes from.

    Verified scales ("measured"): ∏ over the batch's tokens of 1 − m(1 − min(1, p/q)), m = `rejection`
    (each token's rejection chance scaled; m = 1 is the run). Other scales take the γ planner's
    estimate of this run ("planner"), else the mean per-token acceptance of the verified tokens, else
    ASSUMED_ALPHA ("assumed"), per token. `batch`: images that must all pass (default: the run's);
    a batch other than the run's raises the per-image odds to that power.
    """
    odds = scale_odds(trace)
    run_batch = trace.scales[0].status.shape[0]
    b = run_batch if batch is None else batch
    alpha = mean_alpha(odds)
    probs, sources = [], []
    for o, rec in zip(odds, trace.scales):
        if o.pass_prob is not None:
            keep = 1 - rejection * (1 - keep_probabilities(rec.p_draft, rec.q_draft))
            per_image = np.exp(_log_pass(keep))
            logp = np.log(np.clip(per_image, 0, None)).mean() if per_image.min() > 0 else -np.inf
            probs.append(float(np.exp(logp * b)))
            sources.append("measured")
            continue
        if o.planned is not None:   # a whole-batch probability at the run's batch → per token
            a, source = (o.planned ** (1 / (o.tokens * run_batch)) if o.planned > 0 else 0.0), "planner"
        else:
            a, source = (alpha if alpha is not None else ASSUMED_ALPHA), ("measured mean" if alpha else "assumed")
        a = 1 - rejection * (1 - a)
        probs.append(float(a ** (o.tokens * b)))
        sources.append(source)
    return probs, sources


def predictions(costs: Costs, pass_prob: list[float], shared: float = 0.0) -> list[Prediction]:
    """Exact speculative γ = 1..4 and auto (the planner's policy), the hand-offs and the draft alone,
    each as seconds (+ `shared`: the final decode every mode pays) and speed-up vs the target alone."""
    K = costs.num_scales
    base = costs.target_only() + shared
    out = []

    def add(label, kind, seconds, lossless, detail):
        out.append(Prediction(label, kind, seconds + shared, base / (seconds + shared), lossless, detail))

    for g in GAMMAS:
        if g <= K:
            add(f"γ = {g}", "speculative", policy_value(costs, pass_prob, g), True,
                f"exact speculative, {g} scale(s) drafted per round")
    add("γ auto", "auto", solve(costs, pass_prob, MARGIN).value[0][0], True,
        "exact speculative, γ planned before each round (0 = the target alone)")
    if K == 10:
        for label, schedule, detail in HANDOFFS:
            add(label, "handoff", schedule_value(costs, schedule), False, f"hand-off {schedule}: {detail}")
    add("draft only", "draft", schedule_value(costs, "D" * K), False, "the draft alone: the fastest, the worst")
    return out


def click_setting(trace: Trace) -> tuple[str, str]:
    """(label, how to predict it) of the setting a trace was run with: a label of `predictions` where it is
    one of them; ('…', 'schedule:<string>'/'gamma:<g>') when it must be added; ('…', '') when not predictable."""
    st = trace.settings
    mode, K = st["mode"], len(trace.patch_nums)
    if mode == "target":
        return "target alone", "target"
    if mode == "draft":
        return "draft only", ""
    if mode == "schedule":
        schedule = st.get("schedule_resolved") or ""
        for label, s, _ in HANDOFFS:
            if s == schedule and K == 10 and st.get("sd_mask", 3) == 3:
                return label, ""
        return f"this click: {schedule}, sd_mask {st.get('sd_mask', 3)}", f"schedule:{schedule}"
    exact = st.get("accept") == "prob" and st.get("tau") == 1 and st.get("lenience") == 1 \
        and not st.get("keep_draft_rejected")
    if not exact:
        return f"this click: relaxed (τ {st.get('tau')}, λ {st.get('lenience')}, {st.get('accept')})", "relaxed"
    if st.get("gamma") == "auto":
        return "γ auto", ""
    if st.get("adaptive_gamma"):
        return f"this click: adaptive γ from {st.get('gamma')}", "adaptive"
    g = int(st.get("gamma", 2))
    return (f"γ = {g}", "") if g in GAMMAS else (f"γ = {g}", f"gamma:{g}")


def cost_whatif(runs: dict, ratio: float | None = None, overhead: float = 0.0, rejection: float = 1.0,
                batch: int | None = None) -> WhatIf:
    """The predicted speed-ups of every mode for one click ({"main", "target", "draft"}: Traces) under the
    knobs (see `whatif_costs`, `pass_probabilities`), beside the click's measured speed-up."""
    ratio, overhead, rejection, batch = check_knobs(ratio, overhead, rejection, batch)
    main, target = runs["main"], runs.get("target") or runs["main"]
    measured = click_costs([main, target, runs.get("draft")])
    costs = whatif_costs(measured, ratio, overhead)
    pass_prob, sources = pass_probabilities(main, rejection, batch)
    shared = float(target.timings.get("decode", 0.0))
    preds = predictions(costs, pass_prob, shared)
    label, how = click_setting(main)
    notes = []
    if how.startswith("schedule:"):
        schedule = how.split(":", 1)[1]
        seconds = schedule_value(costs, schedule, main.settings.get("sd_mask", 3)) + shared
        preds.append(Prediction(label, "click", seconds, (costs.target_only() + shared) / seconds, False,
                                f"hand-off {schedule}"))
    elif how.startswith("gamma:"):
        g = int(how.split(":", 1)[1])
        seconds = policy_value(costs, pass_prob, g) + shared
        preds.append(Prediction(label, "click", seconds, (costs.target_only() + shared) / seconds, True,
                                f"exact speculative, γ = {g}"))
    elif how in ("relaxed", "adaptive"):
        preds.append(Prediction(label, "click", None, None, how == "adaptive", "measured only"))
        notes.append("This click's rule is not the exact fixed-γ rule, so it has no prediction here: "
                     "only its measured speed-up is shown." if how == "relaxed" else
                     "Adaptive γ changes γ from round to round: only its measured speed-up is shown.")
    elif how == "target":
        preds.append(Prediction(label, "click", costs.target_only() + shared, 1.0, True, "the reference"))
    h_measured = None
    if runs.get("target") is not None and main.timings.get("total"):
        h_measured = float(target.timings["total"]) / max(float(main.timings["total"]), 1e-12)
    if "assumed" in sources:
        notes.append(f"This run verified no drafted tokens, so every scale assumes a per-token acceptance of "
                     f"{ASSUMED_ALPHA} (generate in speculative mode with a fixed γ to measure it).")
    elif "planner" in sources:
        notes.append("Scales the target made alone (γ = 0 rounds) use the γ planner's pass probabilities.")
    run_batch = main.scales[0].status.shape[0]
    return WhatIf(preds, label, h_measured, pass_prob, sources, measured_ratio(costs) if ratio is None else ratio,
                  measured_ratio(measured), overhead, rejection, run_batch if batch is None else batch,
                  costs.target_only() + shared, notes)


def regime_text() -> str:
    """One sentence per regime, as Markdown bullets."""
    return "\n".join(f"- **{r.label}.** {r.sentence}" for r in REGIMES)


# ---- the speed–quality frontier -----------------------------------------------------------------

# column → (label, higher is better)
QUALITY_METRICS = {"class_accuracy": ("class accuracy (classifier)", True),
                   "fid_tiny": ("FID-tiny (lower is better)", False),
                   "token_agreement": ("token agreement with target only", True),
                   "pixel_psnr_db": ("pixel PSNR vs target only (dB)", True)}
ANCHORS = ("target only", "draft only")


def quality_choices(df: pd.DataFrame) -> list[str]:
    """The quality columns of a sweep table that hold a finite value for some non-reference row."""
    out = []
    for col in QUALITY_METRICS:
        if col in df:
            values = pd.to_numeric(df[col], errors="coerce").replace([np.inf, -np.inf], np.nan)
            if values.notna().any():
                out.append(col)
    return out


def default_quality(df: pd.DataFrame) -> str:
    """Class accuracy (then FID-tiny) where the sweep measured it, token agreement otherwise."""
    choices = quality_choices(df)
    return choices[0] if choices else "token_agreement"


def pareto_front(x, y, higher_y: bool = True) -> list[int]:
    """Indices of the points no other point beats on both axes (higher x; higher or lower y), by x.
    NaN points are never on the front; among exact duplicates the first is kept."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if not higher_y:
        y = -y
    order = sorted((i for i in range(len(x)) if np.isfinite(x[i]) and np.isfinite(y[i])),
                   key=lambda i: (-x[i], -y[i], i))
    front, best = [], -np.inf
    for i in order:
        if y[i] > best:
            front.append(i)
            best = y[i]
    return sorted(front, key=lambda i: (x[i], i))


def frontier(df: pd.DataFrame, metric: str | None = None) -> tuple[pd.DataFrame, str]:
    """(points, metric): one row per sweep entry — config, speedup, quality, anchor, on_front, hover —
    for a sweep table (the Compare tab's columns). The anchors are target only and draft only."""
    if df is None or len(df) == 0 or "config" not in df or "speedup" not in df:
        return pd.DataFrame(columns=["config", "speedup", "quality", "anchor", "on_front", "hover"]), \
            metric or "token_agreement"
    metric = metric or default_quality(df)
    if metric not in QUALITY_METRICS:
        raise ValueError(f"quality must be one of {', '.join(QUALITY_METRICS)}, got {metric!r}")
    label, higher = QUALITY_METRICS[metric]
    pts = pd.DataFrame({"config": df["config"].astype(str),
                        "speedup": pd.to_numeric(df["speedup"], errors="coerce"),
                        "quality": pd.to_numeric(df[metric], errors="coerce") if metric in df else np.nan})
    pts["quality"] = pts["quality"].replace([np.inf, -np.inf], np.nan)
    pts["anchor"] = pts["config"].isin(ANCHORS)
    front = set(pareto_front(pts["speedup"], pts["quality"], higher))
    pts["on_front"] = [i in front for i in range(len(pts))]
    extra = [c for c in ("target_calls", "draft_calls", "wall_s", "images") if c in df]
    pts["hover"] = [f"<b>{r['config']}</b><br>speed-up {r['speedup']:.2f}×<br>{label}: {r['quality']:.3f}"
                    + "".join(f"<br>{c.replace('_', ' ')}: {df[c].iloc[i]:.3g}" for c in extra
                              if pd.notna(df[c].iloc[i]))
                    + ("<br><i>on the Pareto front</i>" if i in front else "")
                    for i, r in pts.iterrows()]
    return pts, metric
