"""The statistics of a held-out evaluation (contract.heldout.Evaluation), from its per-item
records: the metrics, their bootstrap intervals, and the gate's paired comparison of two
policies. Pure Python: the evaluator (rlhf/hallucination.py) and the web app's gate
(annotation/loop/training.py) call the same code, the gate without a child process.

Records: `describe` rows [objects mentioned, of them hallucinated, words, the image's
annotated object classes, of them named] (evaluations before coverage have the first three),
`qa` 0/1 per question, `pope` per split [label is yes, answer says yes] per probe, `reward` scores,
`amber` (the AMBER protocol) rows of rlhf.amber.Row per description.

- CHAIR_i and CHAIR_s (Rohrbach et al., 2018, "Object Hallucination in Image Captioning"):
  hallucinated mentions over all mentions, and the share of descriptions with any;
  Object HalBench's response rate (Yu et al., 2024, RLHF-V): that share among descriptions
  that mention an object at all.
- Coverage: AMBER's "Cover" (Wang et al., 2023, arXiv:2311.07397), the mean over
  descriptions of images with annotated objects of the share of those object classes the
  description names; reported beside CHAIR because a policy can cut CHAIR by saying less.
- AMBER's CHAIR, Cover, Hal and Cog (Wang et al., 2023, arXiv:2311.07397, its
  inference.py): hallucinated object words over object words, truth objects covered over
  truth objects, the share of descriptions with any hallucinated word, and likely
  hallucinations named over those annotated; each pooled over the descriptions.
- POPE (Li et al., 2023, "Evaluating Object Hallucination in Large Vision-Language
  Models"): F1, accuracy and yes-ratio per split; `pope_f1` is the splits' mean F1.
- Intervals: 95% percentile bootstrap (Efron and Tibshirani, 1993, "An Introduction to the
  Bootstrap", ch. 13): describe items, each POPE split's probes and question items are
  resampled with replacement, each group on its own. `compare` resamples two evaluations
  of the same set with the same draws (a paired bootstrap), so its interval is that of the
  difference itself.
"""

from __future__ import annotations

import random
from typing import Any

from contract.heldout import Evaluation, HeldoutError
from contract.methods import (
    AMBER_CHAIR,
    AMBER_COG,
    AMBER_COVER,
    AMBER_HAL,
    CHAIR_I,
    CHAIR_S,
    COVERAGE,
    EMPTY_SHARE,
    GATE_METRICS,
    MEAN_WORDS,
    METRIC_NAMES,
    OBJECT_HALBENCH,
    POPE_F1,
    QA_ACCURACY,
    REWARD_MEAN,
)

POPE_SPLITS = ("random", "popular", "adversarial")
CONFIDENCE = 0.95

Indices = dict[str, list[int]]


def indices(records: dict[str, Any]) -> Indices:
    found = {
        "describe": list(range(len(records["describe"]))),
        "qa": list(range(len(records["qa"]))),
        "reward": list(range(len(records.get("reward", [])))),
    }
    for split in POPE_SPLITS:
        found[f"pope:{split}"] = list(range(len(records["pope"].get(split, []))))
    found["amber"] = list(range(len(records.get("amber", []))))  # last: other groups' draws stay as they were
    return found


def draws(records: dict[str, Any], samples: int, seed: int) -> list[Indices]:
    """`samples` resamplings of every unit group; the same seed gives the same draws for any
    records of the same shape (what makes a comparison paired)."""
    rng = random.Random(seed)
    groups = indices(records)
    return [{key: rng.choices(ids, k=len(ids)) if ids else [] for key, ids in groups.items()} for _ in range(samples)]


def _f1(pairs: list[list[int]]) -> tuple[float, float, float]:
    tp = sum(1 for label, said in pairs if label and said)
    fp = sum(1 for label, said in pairs if not label and said)
    fn = sum(1 for label, said in pairs if label and not said)
    tn = len(pairs) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return f1, (tp + tn) / len(pairs) if pairs else 0.0, (tp + fp) / len(pairs) if pairs else 0.0


def statistics(records: dict[str, Any], draw: Indices) -> dict[str, float]:
    """Every metric of `records` over the items `draw` picks (all of them: `_indices`)."""
    rows = [records["describe"][i] for i in draw["describe"]]
    mentions = sum(r[0] for r in rows)
    answering = [r for r in rows if r[0]]
    out: dict[str, float] = {}
    if rows:
        out[CHAIR_I] = sum(r[1] for r in rows) / mentions if mentions else 0.0
        out[CHAIR_S] = sum(r[1] > 0 for r in rows) / len(rows)
        out[OBJECT_HALBENCH] = sum(r[1] > 0 for r in answering) / len(answering) if answering else 0.0
        out[MEAN_WORDS] = sum(r[2] for r in rows) / len(rows)
        out[EMPTY_SHARE] = sum(r[2] == 0 for r in rows) / len(rows)
        annotated = [r for r in rows if len(r) >= 5 and r[3]]
        if annotated:
            out[COVERAGE] = sum(r[4] / r[3] for r in annotated) / len(annotated)
    f1s = []
    for split in POPE_SPLITS:
        pairs = [records["pope"][split][i] for i in draw.get(f"pope:{split}", [])]
        if pairs:
            f1, accuracy, yes_ratio = _f1(pairs)
            out.update(
                {f"pope_{split}_f1": f1, f"pope_{split}_accuracy": accuracy, f"pope_{split}_yes_ratio": yes_ratio}
            )
            f1s.append(f1)
    if f1s:
        out[POPE_F1] = sum(f1s) / len(f1s)
    if draw["qa"]:
        out[QA_ACCURACY] = sum(records["qa"][i] for i in draw["qa"]) / len(draw["qa"])
    if draw.get("reward"):
        out[REWARD_MEAN] = sum(records["reward"][i] for i in draw["reward"]) / len(draw["reward"])
    if draw.get("amber"):
        out.update(_amber([records["amber"][i] for i in draw["amber"]]))
    return out


def _amber(rows: list[list[int]]) -> dict[str, float]:
    def share(part: int, whole: int) -> float:
        return part / whole if whole else 0.0

    sums = [sum(column) for column in zip(*rows, strict=True)]
    return {
        AMBER_CHAIR: share(sums[1], sums[0]),
        AMBER_COVER: share(sums[3], sums[2]),
        AMBER_HAL: sum(row[1] > 0 for row in rows) / len(rows),
        AMBER_COG: share(sums[5], sums[4]),
    }


def interval(values: list[float]) -> tuple[float, float]:
    if not values:
        return (float("nan"), float("nan"))
    ordered = sorted(values)
    tail = (1 - CONFIDENCE) / 2
    low = ordered[round(tail * (len(ordered) - 1))]
    high = ordered[round((1 - tail) * (len(ordered) - 1))]
    return (low, high)


def _comparable(new: Evaluation, current: Evaluation) -> None:
    if new.heldout_digest != current.heldout_digest:
        raise HeldoutError("the two evaluations answered different held-out sets; evaluate both on the same one")
    protocols = [evaluation.settings.get("protocol", "factloop") for evaluation in (new, current)]
    if protocols[0] != protocols[1]:  # an evaluation from before protocols was FactLoop's
        raise HeldoutError(f"the two evaluations followed different protocols ({' and '.join(protocols)}); use one")
    probes = ("pope_per_image", "seed")
    if any(new.settings.get(k) != current.settings.get(k) for k in probes) or indices(new.records) != indices(
        current.records
    ):
        raise HeldoutError("the two evaluations asked different POPE probes (pope_per_image, seed); use the same")


Paired = list[tuple[dict[str, float], dict[str, float]]]


def _paired(new: Evaluation, current: Evaluation, samples: int, seed: int) -> Paired:
    """Both evaluations' statistics over the same `samples` draws (a paired bootstrap)."""
    return [(statistics(new.records, d), statistics(current.records, d)) for d in draws(new.records, samples, seed)]


def _decide(new: Evaluation, current: Evaluation, metric: str, margin: float, paired: Paired) -> dict[str, Any]:
    if metric not in new.metrics or metric not in current.metrics:
        raise HeldoutError(f"the held-out set gives no {metric} (it needs describe items)")
    sign = 1.0 if GATE_METRICS[metric] == "lower" else -1.0
    low, high = interval([sign * (ours[metric] - theirs[metric]) for ours, theirs in paired])
    worse = sign * (new.metrics[metric] - current.metrics[metric])
    return {
        "metric": metric,
        "direction": GATE_METRICS[metric],
        "new": new.metrics[metric],
        "current": current.metrics[metric],
        "new_interval": list(new.intervals.get(metric, ())),
        "current_interval": list(current.intervals.get(metric, ())),
        "worse_by": worse,
        "worse_by_interval": [low, high],
        "margin": margin,
        "passed": low <= margin,
        "samples": len(paired),
    }


def compare(
    new: Evaluation, current: Evaluation, metric: str, *, margin: float = 0.0, samples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Whether `new` is not worse than `current` on `metric` beyond the paired bootstrap
    interval: `worse` is how much worse new is (new - current for a lower-is-better metric,
    current - new otherwise); the gate fails only when the interval's lower end exceeds
    `margin` (so new is worse by more than the margin with 95% confidence). A negative
    margin demands an improvement of at least its size."""
    if metric not in GATE_METRICS:
        raise ValueError(f"gate metric must be one of {', '.join(GATE_METRICS)}")
    _comparable(new, current)
    return _decide(new, current, metric, margin, _paired(new, current, samples, seed))


Criteria = list[tuple[str, float]]


def parse_gate(spec: str, *, margin: float = 0.0) -> Criteria:
    """The gate's criteria from "metric[:margin],...": each metric a GATE_METRICS key, each
    margin how much worse the new policy may be on it (`margin` where none is given)."""
    criteria: Criteria = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        metric, _, given = part.partition(":")
        metric = metric.strip()
        if metric not in GATE_METRICS:
            raise ValueError(f"gate metric {metric!r}: expected one of {', '.join(GATE_METRICS)}")
        if any(metric == known for known, _ in criteria):
            raise ValueError(f"gate metric {metric!r} is named twice")
        try:
            criteria.append((metric, float(given) if given.strip() else margin))
        except ValueError:
            raise ValueError(f"gate margin {given!r} of {metric}: expected a number") from None
    if not criteria:
        raise ValueError(f"the gate needs at least one metric, of {', '.join(GATE_METRICS)}")
    return criteria


def gate(
    new: Evaluation, current: Evaluation, criteria: Criteria, *, samples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The gate over several metrics: `compare`'s test on each, from one set of paired draws; passed only
    when new is not measurably worse than its margin on every one; `summary` says it in words."""
    _comparable(new, current)
    missing = [metric for metric, _ in criteria if metric not in new.metrics or metric not in current.metrics]
    if missing:
        protocol = new.settings.get("protocol", "factloop")
        raise HeldoutError(f"the evaluations ({protocol} protocol) do not measure {', '.join(missing)}")
    paired = _paired(new, current, samples, seed)  # one set of draws, every metric read from it
    checks = [_decide(new, current, metric, margin, paired) for metric, margin in criteria]
    decision = {"criteria": checks, "passed": all(check["passed"] for check in checks)}
    return {**decision, "summary": summary(decision)}


def criteria_of(decision: dict[str, Any]) -> list[dict[str, Any]]:
    """A decision's per-metric comparisons (one made before the gate took several metrics
    is its own single comparison)."""
    if "criteria" in decision:
        return list(decision["criteria"])
    return [decision] if "metric" in decision else []


def verdict(check: dict[str, Any]) -> str:
    """One metric's comparison as a person says it: "better on CHAIR_i by 0.060 (95% 0.042
    to 0.080)", "coverage not measurably worse (...)", "worse on coverage by ..."."""
    metric = check["metric"]
    name = METRIC_NAMES.get(metric, metric)
    worse, margin = float(check["worse_by"]), float(check.get("margin", 0.0))
    low, high = (float(value) for value in check["worse_by_interval"])
    if not check["passed"]:
        if margin < 0:
            return (
                f"not better on {name} by the required {-margin:.3f} (better by {-worse:.3f}, "
                f"95% {-high:.3f} to {-low:.3f})"
            )
        beyond = f", beyond the margin {margin:.3f}" if margin else ""
        return f"worse on {name} by {worse:.3f} (95% {low:.3f} to {high:.3f}){beyond}"
    if high < 0:
        return f"better on {name} by {-worse:.3f} (95% {-high:.3f} to {-low:.3f})"
    if low > 0:  # measurably worse, but by no more than the margin allows
        return f"worse on {name} by {worse:.3f} (95% {low:.3f} to {high:.3f}), within the margin {margin:.3f}"
    sign = 1.0 if check.get("direction", GATE_METRICS.get(metric)) == "lower" else -1.0
    change = sorted((sign * low, sign * high))
    return (
        f"{name} not measurably worse ({float(check['current']):.3f} to {float(check['new']):.3f}; "
        f"change 95% {change[0]:+.3f} to {change[1]:+.3f})"
    )


def summary(decision: dict[str, Any]) -> str:
    """ "passed: ..." or "refused: ..." with every metric's verdict."""
    checks = criteria_of(decision)
    verdicts = "; ".join(verdict(check) for check in checks) or "no comparison"
    return f"{'passed' if decision.get('passed') else 'refused'}: {verdicts}"
