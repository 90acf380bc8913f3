"""The speed–quality frontier of a pair against plain models (pure numbers, no model runs).

A point is one setting measured twice apart: its speed-up against the target alone (interleaved
batch-1 runs, median and range) and its quality (class accuracy and FID-tiny of ≥ 1000 images, each
with a 95 % bootstrap interval; ΔFID against the target alone from a paired bootstrap). The plain
models (draft alone, the plain mid model, the target alone) joined by straight lines are the
**plain-models curve**: what simply running a smaller or larger model buys. A setting lies *above*
the curve when its FID-tiny is better than the curve's at its speed-up by more than the noise (its
interval and the curve's apart), *below* when worse by more than the noise, *on* it otherwise.
Here lower FID is better, so "above" means a lower FID.

`verdict` turns points into the words at the top of the report; `series` gives the figures
(`viz_teach.plain_frontier_figure`, `viz_static.plain_frontier`) their lines; `load_points` /
`dump` read and write the JSON asset the Compare tab draws (`config.FRONTIER_JSON`).
The job that measures the points is `python -m sdvar_core.bench frontier` (`bench/frontier.py`).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from .economics import pareto_front

TARGET_NAME = "target only"
MID_NAME = "plain mid model"
FAMILIES = {"plain": "plain models", "D→T": "hand-off D→T (draft first)", "T→D": "hand-off T→D (target first)",
            "exact": "exact speculative (lossless)", "relaxed": "relaxed speculative (lossy)"}
# The original SDVAR code's three goals (PROJECT_STATUS_SUMMARY.md; sdvar-seed-analysis.md §7.1)
CLAIM_CALLS = 5.0          # target calls ≤ 5 of 10
CLAIM_SPEEDUP = (1.3, 1.7)  # speed-up 1.3–1.7×
CLAIM_DFID = 0.07          # FID ≤ +0.07 against the target alone
GOAL_HALF_WIDTH = 0.5     # issue 21: the target's FID-tiny 95 % interval at most ±0.5
METRICS = {"fid_tiny": ("FID-tiny (lower is better)", False), "class_accuracy": ("class accuracy", True)}


@dataclass(frozen=True)
class Point:
    """One row of the frontier. None where that half of the measurement has not finished yet.

    speedup: median of per-repeat (target wall ÷ row wall), speedup_range its [min, max];
    fid_tiny / class_accuracy with their 95 % bootstrap intervals (fid_ci, accuracy_ci);
    dfid = FID-tiny(row) − FID-tiny(target only) and its paired-bootstrap interval dfid_ci;
    target_calls / draft_calls: mean model calls per image of the quality run.
    """

    name: str
    family: str
    settings: str = ""
    speedup: float | None = None
    speedup_range: tuple[float, float] | None = None
    fid_tiny: float | None = None
    fid_ci: tuple[float, float] | None = None
    class_accuracy: float | None = None
    accuracy_ci: tuple[float, float] | None = None
    dfid: float | None = None
    dfid_ci: tuple[float, float] | None = None
    target_calls: float | None = None
    draft_calls: float | None = None
    images: int | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")

    @property
    def placed(self) -> bool:
        """Both halves measured: the point can be drawn on the FID axis."""
        return self.speedup is not None and self.fid_tiny is not None and self.fid_ci is not None


# ---- the plain-models curve -----------------------------------------------------------------------

@dataclass(frozen=True)
class Against:
    """Where one point lies against the plain-models curve at its speed-up.

    curve_fid [curve_lo, curve_hi]: the curve's FID-tiny and interval at the point's speed-up (linear
    between neighbouring plain models; at a speed-up below the slowest plain model, that model's
    value, since it is faster and as good). gain = curve_fid − fid (> 0: better than a plain model of
    the same speed), gain_ci from the two intervals (lower = curve_lo − fid_hi, upper = curve_hi − fid_lo).
    side: 'above' (gain_ci above 0), 'below' (under 0), 'on' (the intervals overlap) or 'beyond'
    (faster than every plain model: no plain model to compare with). speed_gain: the point's speed-up ÷
    the speed-up the curve reaches at the point's FID-tiny (> 1: faster at equal FID), None where the
    curve never reaches that FID.
    """

    name: str
    side: str
    curve_fid: float | None
    curve_ci: tuple[float, float] | None
    gain: float | None
    gain_ci: tuple[float, float] | None
    speed_gain: float | None


def plain_curve(points: list[Point]) -> list[Point]:
    """The placed plain models, by speed-up (fastest last)."""
    return sorted((p for p in points if p.family == "plain" and p.placed), key=lambda p: p.speedup)


def curve_at(curve: list[Point], x: float) -> tuple[float, float, float] | None:
    """(FID-tiny, lo, hi) of the plain-models curve at speed-up x; None past the fastest plain model
    or without plain models. Below the slowest, that model's values (it is faster and as good)."""
    if not curve or x > curve[-1].speedup + 1e-12:
        return None
    xs = [p.speedup for p in curve]
    if x <= xs[0]:
        p = curve[0]
        return p.fid_tiny, p.fid_ci[0], p.fid_ci[1]
    return (float(np.interp(x, xs, [p.fid_tiny for p in curve])), float(np.interp(x, xs, [p.fid_ci[0] for p in curve])),
            float(np.interp(x, xs, [p.fid_ci[1] for p in curve])))


def curve_speed_at(curve: list[Point], fid: float) -> float | None:
    """The speed-up at which the plain-models curve has FID-tiny `fid` (the fastest such, walking the
    segments); None if the curve never reaches it."""
    best = None
    for a, b in zip(curve, curve[1:]):
        lo, hi = sorted((a.fid_tiny, b.fid_tiny))
        if lo <= fid <= hi:
            x = a.speedup if a.fid_tiny == b.fid_tiny else \
                a.speedup + (fid - a.fid_tiny) / (b.fid_tiny - a.fid_tiny) * (b.speedup - a.speedup)
            best = x if best is None else max(best, x)
    if len(curve) == 1 and math.isclose(curve[0].fid_tiny, fid):
        best = curve[0].speedup
    return best


def against(point: Point, curve: list[Point]) -> Against | None:
    """Where a placed point lies against the curve (None for an unplaced point or without a curve)."""
    if not point.placed or not curve:
        return None
    at = curve_at(curve, point.speedup)
    speed = curve_speed_at(curve, point.fid_tiny)
    speed_gain = point.speedup / speed if speed else None
    if at is None:
        return Against(point.name, "beyond", None, None, None, None, speed_gain)
    fid, lo, hi = at
    gain_ci = (lo - point.fid_ci[1], hi - point.fid_ci[0])
    side = "above" if gain_ci[0] > 0 else "below" if gain_ci[1] < 0 else "on"
    return Against(point.name, side, fid, (lo, hi), fid - point.fid_tiny, gain_ci, speed_gain)


def pareto(points: list[Point]) -> list[str]:
    """Names of the placed points no other placed point beats on both speed-up (higher) and FID-tiny
    (lower), by speed-up."""
    placed = [p for p in points if p.placed]
    return [placed[i].name for i in pareto_front([p.speedup for p in placed], [p.fid_tiny for p in placed],
                                                 higher_y=False)]


# ---- the seed's claims ----------------------------------------------------------------------------

def claims(p: Point) -> dict[str, str]:
    """The original SDVAR code's three goals judged for one point: 'calls' (target calls ≤ 5), 'speed'
    (speed-up ≥ 1.3: '✓' from 1.3, '✓ (above 1.7)' past the range), 'fid' (ΔFID ≤ +0.07: '✓' when the
    whole ΔFID interval is ≤ 0.07, '?' when the interval holds 0.07 — not excluded, not shown —, '✗' when
    all of it is above), and 'all' ('hold', 'not excluded', 'no'). '—' where not measured."""
    calls = "—" if p.target_calls is None else "✓" if p.target_calls <= CLAIM_CALLS else "✗"
    if p.speedup is None:
        speed = "—"
    else:
        speed = "✗" if p.speedup < CLAIM_SPEEDUP[0] else "✓" if p.speedup <= CLAIM_SPEEDUP[1] else "✓ (above 1.7)"
    if p.name == TARGET_NAME:
        fid = "✓"
    elif p.dfid_ci is None:
        fid = "—"
    else:
        fid = "✓" if p.dfid_ci[1] <= CLAIM_DFID else "✗" if p.dfid_ci[0] > CLAIM_DFID else "?"
    marks = [calls, speed[0], fid]
    overall = ("—" if "—" in marks else "hold" if all(m == "✓" for m in marks)
               else "not excluded" if all(m in "✓?" for m in marks) else "no")
    return {"calls": calls, "speed": speed, "fid": fid, "all": overall}


# ---- the verdict in words ---------------------------------------------------------------------------

def _ci(ci, digits: int = 2) -> str:
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _fid(p: Point) -> str:
    return f"FID-tiny {p.fid_tiny:.2f} {_ci(p.fid_ci)}"


def verdict(points: list[Point], total_rows: int | None = None) -> str:
    """The verdict at the top of the report, in Markdown, from the points alone (re-run it as rows finish):
    which settings lie above the plain-models curve (by how much, with intervals), how many on or below
    it, whether the exact rows' FID-tiny lies inside the target's interval, and which rows meet all three
    of the seed's claims."""
    placed = [p for p in points if p.placed]
    quality = [p for p in points if p.fid_tiny is not None]
    total = total_rows if total_rows is not None else len(points)
    timed = sum(p.speedup is not None for p in points)
    lines = [f"- **Status:** {len(quality)} of {total} rows have their quality measured and {timed} their speed; "
             f"{len(placed)} have both (only those are drawn and judged against the curve)."]
    curve = plain_curve(points)
    target = next((p for p in points if p.name == TARGET_NAME and p.fid_tiny is not None), None)
    if target is not None:
        half = (target.fid_ci[1] - target.fid_ci[0]) / 2
        lines.append(f"- **Noise:** the target alone's {_fid(target)} from {target.images} images: half-width "
                     f"{half:.2f} (goal ≤ {GOAL_HALF_WIDTH}: {'met' if half <= GOAL_HALF_WIDTH else 'not met'}).")
    if len(curve) < 2:
        lines.append("- **Plain-models curve:** not yet — it needs at least two plain models with speed and quality "
                     "(the target alone and the draft alone first).")
    else:
        lines.append("- **Plain-models curve:** " + " → ".join(f"{p.name} {p.speedup:.2f}×, {_fid(p)}" for p in curve)
                     + ("" if any(p.name == MID_NAME for p in curve)
                        else " (the plain mid model is not in it yet: its weights or runs are missing)") + ".")
        sides = {p.name: against(p, curve) for p in placed if p.family != "plain"}
        if not sides:
            lines.append("- **SDVAR settings:** none has both its speed and its quality measured yet.")
    if len(curve) >= 2 and sides:
        above = sorted((a for a in sides.values() if a and a.side == "above"), key=lambda a: -a.gain)
        by_name = {p.name: p for p in points}
        if above:
            lines.append(f"- **Above the curve ({len(above)}):** " + "; ".join(
                f"**{a.name}** ({by_name[a.name].speedup:.2f}×, {_fid(by_name[a.name])}) is {a.gain:.2f} "
                f"{_ci(a.gain_ci)} FID-tiny better than a plain model of its speed (curve {a.curve_fid:.2f} "
                f"{_ci(a.curve_ci)})" + (f", {a.speed_gain:.2f}× as fast as a plain model of its FID"
                                         if a.speed_gain else "") for a in above) + "."
                         + ("" if any(p.name == MID_NAME for p in curve) else
                            " **Provisional:** without the plain mid model the curve is a straight line from the "
                            "target to the draft, and a plain model between them may well lie below that line "
                            "(better), which would shrink or remove this gain."))
        else:
            lines.append("- **Above the curve: none** — no SDVAR setting measured so far is better than a plain "
                         "model of the same speed by more than the noise.")
        on = sorted((a for a in sides.values() if a and a.side == "on"), key=lambda a: -a.gain)
        below = [a for a in sides.values() if a and a.side == "below"]
        beyond = [a for a in sides.values() if a and a.side == "beyond"]
        if on:
            best = on[0]
            lines.append(f"- **On the curve (within the noise): {len(on)}**; the closest to above is **{best.name}** "
                         f"({by_name[best.name].speedup:.2f}×, gain {best.gain:+.2f} {_ci(best.gain_ci)}).")
        lines.append(f"- **Below the curve: {len(below)}** (worse FID-tiny than a plain model of the same speed, "
                     f"intervals apart)." + (f" Faster than every plain model: {', '.join(a.name for a in beyond)}."
                                             if beyond else ""))
        faster = sorted((a for a in sides.values() if a and a.speed_gain and a.speed_gain > 1),
                        key=lambda a: -a.speed_gain)
        reach = [a for a in sides.values() if a and a.speed_gain]
        lines.append(f"- **At equal FID-tiny** (medians, no intervals): {len(faster)} of {len(reach)} settings whose "
                     f"FID-tiny the curve reaches are faster than a plain model of that FID"
                     + (": " + ", ".join(f"{a.name} {a.speed_gain:.2f}×" for a in faster[:5])
                        + (" …" if len(faster) > 5 else "") if faster else "")
                     + (f"; {len(sides) - len(reach)} lie better than every plain model's FID-tiny or outside the "
                        f"curve's range" if len(sides) > len(reach) else "") + ".")
    exact = [p for p in points if p.family == "exact" and p.fid_tiny is not None]
    if target is not None and exact:
        lo, hi = target.fid_ci
        inside = [p for p in exact if lo <= p.fid_tiny <= hi]
        parts = [f"{p.name} {p.fid_tiny:.2f}" + (f" (ΔFID {p.dfid:+.2f} {_ci(p.dfid_ci)})" if p.dfid_ci else "")
                 for p in exact]
        zero = [p for p in exact if p.dfid_ci and p.dfid_ci[0] <= 0 <= p.dfid_ci[1]]
        lines.append(f"- **Exact rows against the target alone** ({_fid(target)}): {len(inside)} of {len(exact)} "
                     f"inside the target's interval, {len(zero)} of {len(exact)} with a ΔFID interval that holds 0 — "
                     + "; ".join(parts) + ".")
    held = [p.name for p in points if claims(p)["all"] == "hold"]
    open_ = [p.name for p in points if claims(p)["all"] == "not excluded"]
    lines.append("- **The seed's three claims** (target calls ≤ 5, speed-up 1.3–1.7×, FID ≤ +0.07): "
                 + (f"hold for {', '.join(held)}" if held else "shown for no row")
                 + (f"; not excluded (ΔFID interval holds +0.07) for {', '.join(open_)}" if open_ else "") + ".")
    return "\n".join(lines) + "\n"


# ---- figure data ------------------------------------------------------------------------------------

def series(points: list[Point], metric: str = "fid_tiny") -> dict:
    """What both frontier figures draw, for metric 'fid_tiny' or 'class_accuracy':
    families: {family: {'x', 'y', 'lo', 'hi', 'names', 'hover', 'bars_x', 'bars_y'}} (placed points with that
    metric; bars_*: one vertical segment from lo to hi per point, None between segments — a percentile
    interval need not contain its point value, so the bars are drawn from the interval itself),
    plain: {'x', 'y', 'names'} the plain-models curve, front: {'x', 'y', 'names', 'plain'} the Pareto
    front (by speed-up; 'plain': is that point a plain model),
    label, higher (is a higher value better)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    label, higher = METRICS[metric]
    ci = "fid_ci" if metric == "fid_tiny" else "accuracy_ci"
    usable = [p for p in points if p.speedup is not None and getattr(p, metric) is not None
              and getattr(p, ci) is not None]
    fams = {}
    for fam in FAMILIES:
        group = [p for p in usable if p.family == fam]
        if group:
            fams[fam] = {"x": [p.speedup for p in group], "y": [getattr(p, metric) for p in group],
                         "lo": [getattr(p, ci)[0] for p in group], "hi": [getattr(p, ci)[1] for p in group],
                         "names": [p.name for p in group],
                         "bars_x": [v for p in group for v in (p.speedup, p.speedup, None)],
                         "bars_y": [v for p in group for v in (*getattr(p, ci), None)],
                         "hover": [f"<b>{p.name}</b><br>{p.settings}<br>speed-up {p.speedup:.2f}×"
                                   + (f" [{p.speedup_range[0]:.2f}–{p.speedup_range[1]:.2f}]" if p.speedup_range else "")
                                   + f"<br>{label}: {getattr(p, metric):.3f} {_ci(getattr(p, ci), 3)}"
                                   + "".join(f"<br>{what} calls per image {v:.2f}" for what, v in
                                             (("target", p.target_calls), ("draft", p.draft_calls)) if v is not None)
                                   for p in group]}
    plain = sorted((p for p in usable if p.family == "plain"), key=lambda p: p.speedup)
    front_idx = pareto_front([p.speedup for p in usable], [getattr(p, metric) for p in usable], higher)
    front = [usable[i] for i in front_idx]
    return {"families": fams, "plain": {"x": [p.speedup for p in plain], "y": [getattr(p, metric) for p in plain],
                                        "names": [p.name for p in plain]},
            "front": {"x": [p.speedup for p in front], "y": [getattr(p, metric) for p in front],
                      "names": [p.name for p in front], "plain": [p.family == "plain" for p in front]},
            "label": label, "higher": higher}


# ---- the JSON asset ---------------------------------------------------------------------------------

def dump(points: list[Point], meta: dict) -> str:
    """The frontier as JSON text: {'meta': ..., 'points': [Point fields]}."""
    return json.dumps({"meta": meta, "points": [asdict(p) for p in points]}, indent=1, ensure_ascii=False) + "\n"


def load_points(path) -> tuple[list[Point], dict]:
    """(points, meta) from a file written by `dump`; ValueError naming the file when it is not one."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
        names = {f.name for f in fields(Point)}
        points = []
        for d in raw["points"]:
            d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
            points.append(Point(**d))
        return points, dict(raw.get("meta", {}))
    except (OSError, KeyError, TypeError, json.JSONDecodeError, ValueError) as e:
        raise ValueError(f"{path} is not a frontier file ({type(e).__name__}: {e})") from None
