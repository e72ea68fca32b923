"""Active selection: which of a round's prompts go to the humans.

A fixed human budget buys most where the policy is unsure: a prompt whose K sampled answers
agree teaches little (they are all right, or all wrong in the same way the annotator would
correct in every round), one whose answers disagree holds a hallucination the policy could
go either way on. Query-by-committee (Seung et al., 1992) reads disagreement among
committee members; here the committee is the policy's own K samples, and two answers
disagree by the claims they make (rlhf/ai_feedback.py's splitter: which objects, counts,
colours, relations), measured as 1 - Jaccard similarity of their claim sets, averaged over
the sample pairs. `random` is the baseline it is measured against (bench/label_efficiency.py).
The web app selects from the claims its AI labeller stored (annotation/loop/ai_labels.py), the
benches from rlhf/ai_feedback.py's splitter: both pass claim sets here.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Mapping, Sequence
from itertools import combinations
from typing import Any, TypeVar

STRATEGIES = ("random", "disagreement")
Key = TypeVar("Key", bound=Hashable)


def jaccard_distance(a: set[Any], b: set[Any]) -> float:
    if not a and not b:
        return 0.0
    return 1.0 - len(a & b) / len(a | b)


def disagreement(claims: Sequence[set[Any]]) -> float:
    """Mean pairwise claim-set distance of one prompt's sampled answers, each given by the
    set of its claims' keys (0: all make the same claims; 1: no two share a claim)."""
    pairs = list(combinations(claims, 2))
    if not pairs:
        return 0.0
    return sum(jaccard_distance(a, b) for a, b in pairs) / len(pairs)


def select(
    samples: Mapping[Key, Sequence[set[Any]]],
    budget: int,
    *,
    strategy: str,
    seed: int = 0,
) -> list[Key]:
    """`budget` prompt keys of `samples` (key -> the claim-key sets of the prompt's sampled
    answers): at random, or the most disagreeing first (ties in random order), in the order
    chosen."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown selection strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if budget < 0:
        raise ValueError(f"budget must be 0 or more, got {budget}")
    rng = random.Random(seed)
    keys = list(samples)
    rng.shuffle(keys)
    if strategy == "random":
        return keys[:budget]
    scores = {key: disagreement(samples[key]) for key in keys}
    return sorted(keys, key=lambda key: -scores[key])[:budget]  # stable: shuffled order breaks ties
