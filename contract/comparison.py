"""The statistics of a held-out evaluation (contract.heldout.Evaluation), from its per-item
records: the metrics, their bootstrap intervals, and the gate's paired comparison of two
policies. Pure Python: the evaluator (rlhf/hallucination.py) and the web app's gate
(annotation/loop/training.py) call the same code, the gate without a child process.

Records: `describe` rows [objects mentioned, of them hallucinated, words], `qa` 0/1 per
question, `pope` per split [label is yes, answer says yes] per probe, `reward` scores.

- CHAIR_i and CHAIR_s (Rohrbach et al., 2018, "Object Hallucination in Image Captioning"):
  hallucinated mentions over all mentions, and the share of descriptions with any;
  Object HalBench's response rate (Yu et al., 2024, RLHF-V): that share among descriptions
  that mention an object at all.
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
    CHAIR_I,
    CHAIR_S,
    EMPTY_SHARE,
    GATE_METRICS,
    MEAN_WORDS,
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
    return out


def interval(values: list[float]) -> tuple[float, float]:
    if not values:
        return (float("nan"), float("nan"))
    ordered = sorted(values)
    tail = (1 - CONFIDENCE) / 2
    low = ordered[round(tail * (len(ordered) - 1))]
    high = ordered[round((1 - tail) * (len(ordered) - 1))]
    return (low, high)


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
    if new.heldout_digest != current.heldout_digest:
        raise HeldoutError("the two evaluations answered different held-out sets; evaluate both on the same one")
    probes = ("pope_per_image", "seed")
    if any(new.settings.get(k) != current.settings.get(k) for k in probes) or indices(new.records) != indices(
        current.records
    ):
        raise HeldoutError("the two evaluations asked different POPE probes (pope_per_image, seed); use the same")
    if metric not in new.metrics or metric not in current.metrics:
        raise HeldoutError(f"the held-out set gives no {metric} (it needs describe items)")
    sign = 1.0 if GATE_METRICS[metric] == "lower" else -1.0
    deltas = [
        sign * (statistics(new.records, draw)[metric] - statistics(current.records, draw)[metric])
        for draw in draws(new.records, samples, seed)
    ]
    low, high = interval(deltas)
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
        "samples": samples,
    }
