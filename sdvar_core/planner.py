"""The γ planner of speculative decoding: before each round, how many scales to draft.

γ = 0 means the target makes the next scale alone, as in a target-only run; γ ≥ 1 drafts scales
s..s+γ−1 and verifies them in one target call. The plan minimises the expected seconds to finish
the image, given

- per-call costs (`Costs`): seconds of a draft or target call feeding scales s..e, and of the work
  between calls (making a scale: distribution, sampling, canvas; judging a drafted scale), measured
  on the current device (`sdvar_core.calibration`);
- per-scale pass probabilities π_k: the probability that drafted scale k passes for the whole batch
  (every token of every sample accepted), learned from finished rounds (`PassEstimator`).

Exact decoding stays exact because γ is chosen before the round's draft exists, from finished
rounds only: whatever γ is, the round's finalized scales follow the target's distribution.

The expected cost of finishing from scale s, with the draft's KV cache holding scales < d (d ≤ s:
the draft falls behind while the target works alone and catches up in one call), is

    V(s, d) = min( V₀ = T(s, s) + M(s) + V(s+1, d),                                  γ = 0
                   V_γ = D(d, s) + Σ_{k=s+1..e} D(k, k) + Σ_{k=s..e} M(k) + T(s, e)
                         + Σ_{k=s..e} r_k J(k) + Σ_{k=s..e} r_k (1 − π_k) V(k+1, k+1)
                         + r_{e+1} V(e+1, e+1) )                                        γ ≥ 1, e = s+γ−1

with r_s = 1, r_{k+1} = r_k π_k (scale k is judged when every earlier drafted scale passed; the
first failing scale is finalized with its corrections and ends the round). A draft is chosen only
when it beats γ = 0 by `margin` (a relative hysteresis towards the target alone: estimates are
noisy, and a wrong draft costs more than a wrong γ = 0). Everything here is plain Python (numpy
for one product).

Minimising the expected time to finish is "most finalized scales per unit of expected cost" with
each scale weighted by what it costs the target alone, and looking past the current round: a
per-round ratio of scales per second would count a 1×1 scale like a 16×16 one, and would not see
that a round's outcome decides where the next one starts.
"""
from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass, field

import numpy as np

from .trace import Candidate, PlanRecord

MARGIN = 0.03          # a draft must be predicted ≥ 3 % faster than γ = 0
PRIOR_MEAN, PRIOR_WEIGHT = 0.5, 0.2   # pass probability before any observation, worth 0.2 observations
DECAY = 0.95           # each new observation of a scale discounts the older ones by this factor


@dataclass
class Costs:
    """Expected seconds of each piece of a round at one batch size on one device.

    draft[s][e], target[s][e] (e ≥ s; entries with e < s are unused): a call feeding scales s..e on
    a KV cache that holds scales < s. make[k]: the work after a call that made scale k (its CFG
    distribution, sampling, adding it to the canvas, the next scale's input). judge[k]: the work
    after a verification, per judged scale k (the target's distribution, the acceptance test, the
    record, re-adding a corrected scale).
    """

    draft: list[list[float]]
    target: list[list[float]]
    make: list[float]
    judge: list[float]

    def __post_init__(self):
        K = len(self.make)
        if not (len(self.draft) == len(self.target) == len(self.judge) == K) or K == 0:
            raise ValueError("draft, target, make and judge must cover the same scales")
        for name in ("draft", "target"):
            table = getattr(self, name)
            for s in range(K):
                if len(table[s]) != K or any(not math.isfinite(table[s][e]) or table[s][e] < 0 for e in range(s, K)):
                    raise ValueError(f"{name}[{s}] must hold K = {K} entries, finite and ≥ 0 from e = s on")
        if any(not math.isfinite(v) or v < 0 for v in self.make + self.judge):
            raise ValueError("make and judge must be finite and ≥ 0")

    @property
    def num_scales(self) -> int:
        return len(self.make)

    def target_only(self, start: int = 0) -> float:
        """Seconds for the target alone to make scales start..K−1."""
        return sum(self.target[k][k] + self.make[k] for k in range(start, self.num_scales))

    @classmethod
    def flat(cls, K: int, target: float, draft: float, per_scale_target: float = 0.0, make: float = 0.0,
             judge: float = 0.0) -> "Costs":
        """Costs that do not depend on the window: target/draft seconds per call (+ per scale fed)."""
        t = [[target + per_scale_target * (e - s + 1) for e in range(K)] for s in range(K)]
        return cls(draft=[[draft] * K for _ in range(K)], target=t, make=[make] * K, judge=[judge] * K)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Solution:
    """The planned policy for given costs and pass probabilities (see the module docstring)."""

    costs: Costs
    pass_prob: list[float]
    margin: float
    allow_zero: bool                    # False: every round drafts (a fixed-γ policy)
    value: list[list[float]]            # value[s][d] = V(s, d); value[K][*] = 0
    drafting: list[list[Candidate]]     # drafting[s][γ−1]: the γ ≥ 1 candidates at s, caught-up draft

    def candidates(self, s: int, d: int) -> list[Candidate]:
        """Every γ in 0..K−s at scale s with the draft's cache holding scales < d."""
        c, K = self.costs, self.costs.num_scales
        rest = c.target_only(s)
        zero_cost = c.target[s][s] + c.make[s]
        zero_value = zero_cost + self.value[s + 1][d]
        out = [Candidate(0, 1.0, zero_cost, zero_value, rest / zero_value if zero_value > 0 else 1.0)]
        catch_up = c.draft[d][s] - c.draft[s][s]   # the draft feeds d..s in one call instead of s alone
        for cand in self.drafting[s]:
            value = cand.value + catch_up
            out.append(Candidate(cand.gamma, cand.gain, cand.cost + catch_up, value,
                                 rest / value if value > 0 else 1.0))
        return out

    def choose(self, s: int, d: int) -> Candidate:
        return pick(self.candidates(s, d), self.margin, self.allow_zero)


def pick(candidates: list[Candidate], margin: float, allow_zero: bool = True) -> Candidate:
    """γ = 0 unless the best draft (least value; ties → smaller γ) is faster by the relative margin."""
    zero = candidates[0]
    best = min(candidates[1:], key=lambda c: (c.value, c.gamma), default=None)
    if best is not None and (not allow_zero or best.value < zero.value * (1 - margin)):
        return best
    return zero


def solve(costs: Costs, pass_prob: list[float], margin: float = MARGIN, gammas: list[int] | None = None,
          allow_zero: bool = True) -> Solution:
    """The planned policy: V(s, d) for every scale s and draft position d ≤ s (module docstring).

    gammas: the drafting γ allowed (default 1..K; clipped to the scales left); allow_zero=False
    drafts in every round (with gammas=[g]: the fixed-γ engine, see `policy_value`).
    """
    K = costs.num_scales
    if len(pass_prob) != K or any(not 0 <= p <= 1 for p in pass_prob):
        raise ValueError(f"pass_prob must be {K} probabilities in [0, 1], got {pass_prob}")
    allowed = sorted(set(range(1, K + 1) if gammas is None else gammas))
    c = costs
    value = [[0.0] * (K + 1) for _ in range(K + 1)]
    drafting: list[list[Candidate]] = [[] for _ in range(K)]
    sol = Solution(costs, list(pass_prob), margin, allow_zero, value, drafting)
    for s in reversed(range(K)):
        seen = set()
        for g in allowed:
            g = min(g, K - s)
            if g < 1 or g in seen:
                continue
            seen.add(g)
            e = s + g - 1
            reach, gain, judge, after = 1.0, 0.0, 0.0, 0.0
            for k in range(s, e + 1):
                gain += reach
                judge += reach * c.judge[k]
                after += reach * (1 - pass_prob[k]) * value[k + 1][k + 1]
                reach *= pass_prob[k]
            after += reach * value[e + 1][e + 1]
            cost = (c.draft[s][s] + sum(c.draft[k][k] for k in range(s + 1, e + 1)) + sum(c.make[s:e + 1])
                    + c.target[s][e] + judge)
            drafting[s].append(Candidate(g, gain, cost, cost + after, 0.0))
        for d in range(s + 1):
            value[s][d] = sol.choose(s, d).value
    return sol


def policy_value(costs: Costs, pass_prob: list[float], gamma: int) -> float:
    """Expected seconds of a run that drafts a fixed γ ≥ 1 every round (the draft never lags)."""
    if int(gamma) != gamma or gamma < 1:
        raise ValueError(f"gamma must be an integer >= 1, got {gamma}")
    return solve(costs, pass_prob, gammas=[int(gamma)], allow_zero=False).value[0][0]


def schedule_value(costs: Costs, schedule: str, sd_mask: int = 3) -> float:
    """Seconds of a hand-off schedule (one letter per scale, 'D' or 'T') from the same per-call costs.

    Each call feeds every scale its model's cache lacks, up to the scale it makes (at a switch the
    incoming model prefills the prefix in one call), then the work that makes the scale. sd_mask 0
    drops the prefix: its prefill feeds the current scale alone. No verification, so no chance.
    """
    K = costs.num_scales
    if len(schedule) != K or set(schedule) - {"D", "T"}:
        raise ValueError(f"schedule must be {K} letters of 'D'/'T', got {schedule!r}")
    fed = {"D": 0, "T": 0}   # first scale each model's cache lacks
    total, previous = 0.0, None
    for k, letter in enumerate(schedule):
        table = costs.draft if letter == "D" else costs.target
        first = k if (sd_mask == 0 and previous not in (None, letter)) else fed[letter]
        total += table[first][k] + costs.make[k]
        fed[letter], previous = k + 1, letter
    return total


def batch_pass_probability(p_draft: np.ndarray, q_draft: np.ndarray, lenience: float = 1.0) -> float:
    """P(every drafted token of a scale is accepted, for every sample), given the drafted tokens.

    p_draft, q_draft (B, n): target and draft probabilities of the drafted tokens. Token t is kept
    with probability min(1, λ p/q), independently, so the product is the conditional probability;
    its expectation over the drafts is the scale's batch pass probability (an unbiased estimate
    with less variance than the 0/1 outcome).
    """
    ratio = np.minimum(1.0, lenience * np.asarray(p_draft, np.float64) / np.asarray(q_draft, np.float64))
    with np.errstate(divide="ignore"):
        return float(np.exp(np.log(ratio).sum()))


@dataclass
class PassEstimator:
    """Per scale, the discounted mean of observed batch pass probabilities, shrunk towards a prior."""

    num_scales: int
    prior_mean: float = PRIOR_MEAN
    prior_weight: float = PRIOR_WEIGHT
    decay: float = DECAY
    sums: list[float] = field(default_factory=list)
    counts: list[float] = field(default_factory=list)

    def __post_init__(self):
        self.sums = list(self.sums) or [0.0] * self.num_scales
        self.counts = list(self.counts) or [0.0] * self.num_scales

    def observe(self, k: int, p_pass: float) -> None:
        """One finished round's observation of scale k: a probability (or a 0/1 outcome)."""
        if not 0 <= p_pass <= 1:
            raise ValueError(f"a pass probability must be in [0, 1], got {p_pass}")
        self.sums[k] = self.decay * self.sums[k] + p_pass
        self.counts[k] = self.decay * self.counts[k] + 1

    def estimate(self) -> list[float]:
        w, m = self.prior_weight, self.prior_mean
        return [(s + w * m) / (n + w) if n + w > 0 else m for s, n in zip(self.sums, self.counts)]

    @property
    def observations(self) -> float:
        return float(sum(self.counts))

    @classmethod
    def fixed(cls, num_scales: int, p: float) -> "PassEstimator":
        """A known pass probability at every scale (forced verdicts, tests): a heavy prior at p."""
        return cls(num_scales, prior_mean=p, prior_weight=1e9)

    def to_dict(self) -> dict:
        return asdict(self)


class Planner:
    """Plans the rounds of speculative runs for one pair, batch size and set of settings.

    Holds the costs and a pass estimator shared by the runs it plans (a run learns from the rounds
    of earlier runs); thread-safe. `plan` is called before a round, `observe` after it.
    """

    def __init__(self, costs: Costs, estimator: PassEstimator | None = None, margin: float = MARGIN,
                 source: str = "", learn=None):
        self.costs, self.margin, self.source = costs, margin, source
        self.learn = learn   # learn(trace) after each run it planned (the engine calls it), or None
        self.estimator = estimator or PassEstimator(costs.num_scales)
        if self.estimator.num_scales != costs.num_scales:
            raise ValueError("costs and estimator cover different numbers of scales")
        self._solution: Solution | None = None
        self._lock = threading.Lock()

    def set_costs(self, costs: Costs) -> None:
        with self._lock:
            self.costs, self._solution = costs, None

    def plan(self, start: int, draft_next: int, t: float = 0.0) -> PlanRecord:
        """The plan of the round starting at scale `start`, the draft's cache holding scales < draft_next."""
        K = self.costs.num_scales
        if not 0 <= draft_next <= start < K:
            raise ValueError(f"need 0 <= draft_next <= start < {K}, got {draft_next}, {start}")
        with self._lock:
            if self._solution is None:
                self._solution = solve(self.costs, self.estimator.estimate(), self.margin)
            sol = self._solution
            cands = sol.candidates(start, draft_next)
            return PlanRecord(start=start, draft_next=draft_next, chosen=sol.choose(start, draft_next).gamma,
                              candidates=cands, pass_prob=list(sol.pass_prob),
                              observations=self.estimator.observations, t=t)

    def observe(self, k: int, p_pass: float) -> None:
        with self._lock:
            self.estimator.observe(k, p_pass)
            self._solution = None
