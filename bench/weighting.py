"""How often FactLoop's token weighting differs from RLHF-V's released rules, and which rule
makes the difference (contract/spans.py, docs/training.md).

Corrections come from the synthetic world: a description of each scene, sampled with
hallucinations (testbed/toyworld, `sampled_responses` at error rate 1), corrected by the
oracle (RLHF-V's protocol). `--sentences N` joins N scenes' corrected descriptions into
one response, so that long responses (200+ tokens, where difflib's autojunk starts) are
measured too. Both weightings then mark the changed tokens of the shipped tiny model's
tokenizer:
- FactLoop: the word-level spans (contract/spans.changed_spans) mapped onto the tokens;
- released: contract/spans.released_changes on the two responses' token ids;
and, to isolate each rule, the released rules with autojunk off.

    .venv/bin/python bench/weighting.py [--pairs 500] [--sentences 1]

Prints, per length band: the share of pairs whose weighted tokens differ (and among the
pairs with at least one replaced word), the share the released rules weight nothing in (the
oracle's corrections are mostly deleted sentences, which they ignore), the share where
autojunk alone changes the released weights, and the mean number of weighted tokens of
each. The raw figures go to bench/results/weighting.json. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import results
from contract.spans import changed_spans, released_changes
from rlhf.training_data import token_weights, usable_spans
from testbed.toyworld import oracle
from testbed.toyworld.world import make_question, sample_scenes, sampled_responses

# What this bench measures: its result is stale once any of these changes (bench/status.py).
MEASURES = (
    "contract/spans.py",
    "rlhf/losses.py",
    "testbed/toyworld",
    "bench/weighting.py",
)

TINY = Path(__file__).resolve().parent.parent / "testbed" / "tiny-base"


def _factloop_tokens(tokenizer: Any, text: str, spans: list[tuple[int, int]]) -> set[int]:
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    weights = token_weights(encoded["offset_mapping"], usable_spans(text, spans), 2.0)
    return {i for i, w in enumerate(weights) if w == 2.0}


def corrections(n: int, sentences: int, seed: int) -> list[tuple[str, str]]:
    """`n` (original, corrected) pairs that differ, each `sentences` scenes long."""
    rng = random.Random(seed)
    pairs: list[tuple[str, str]] = []
    scenes = iter(sample_scenes(seed, n * sentences * 4, prefix="weighting"))
    while len(pairs) < n:
        originals, fixed = [], []
        for scene in (next(scenes) for _ in range(sentences)):
            question = make_question(rng, scene, "describe")
            assert question is not None
            [response] = sampled_responses(rng, scene, question, 1, 1.0)
            originals.append(response)
            fixed.append(oracle.correct(scene, response))
        original, corrected = " ".join(originals), " ".join(fixed)
        if original != corrected:
            pairs.append((original, corrected))
    return pairs


def measure(tokenizer: Any, original: str, corrected: str) -> dict[str, Any]:
    spans = changed_spans(original, corrected)
    ours = (
        _factloop_tokens(tokenizer, original, [(s.original_start, s.original_end) for s in spans]),
        _factloop_tokens(tokenizer, corrected, [(s.corrected_start, s.corrected_end) for s in spans]),
    )
    a = tokenizer(original, add_special_tokens=False)["input_ids"]
    b = tokenizer(corrected, add_special_tokens=False)["input_ids"]
    released = released_changes(a, b)
    without_autojunk = released_changes(a, b, autojunk=False)
    return {
        "tokens": max(len(a), len(b)),
        "differs": ours != released,
        "autojunk_matters": released != without_autojunk,
        "only_insertions_or_deletions": all(s.kind != "replace" for s in spans),
        "released_weights_nothing": not released[0] and not released[1],
        "factloop_changed": len(ours[0]) + len(ours[1]),
        "released_changed": len(released[0]) + len(released[1]),
    }


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--sentences", type=int, nargs="+", default=[1, 8], help="scenes per response (one run each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=results.default_path("weighting"))
    results.add_arguments(parser)
    args = parser.parse_args()
    results.begin(args)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(TINY))
    bands = []
    print(
        f"{'scenes':>6} {'pairs':>6} {'tokens':>7} {'differ':>7} {'differ|repl':>11} {'rel. none':>9} "
        f"{'autojunk':>9} {'ours':>6} {'released':>9}"
    )
    for sentences in args.sentences:
        rows = [measure(tokenizer, o, c) for o, c in corrections(args.pairs, sentences, args.seed)]
        n = len(rows)
        replaced = [r for r in rows if not r["only_insertions_or_deletions"]]
        band = {
            "scenes_per_response": sentences,
            "pairs": n,
            "mean_tokens": sum(r["tokens"] for r in rows) / n,
            "share_200_tokens_or_more": sum(r["tokens"] >= 200 for r in rows) / n,
            "share_differing": sum(r["differs"] for r in rows) / n,
            "share_autojunk_matters": sum(r["autojunk_matters"] for r in rows) / n,
            "share_only_insertions_or_deletions": sum(r["only_insertions_or_deletions"] for r in rows) / n,
            "share_released_weights_nothing": sum(r["released_weights_nothing"] for r in rows) / n,
            "share_differing_with_a_replacement": sum(r["differs"] for r in replaced) / len(replaced)
            if replaced
            else None,
            "pairs_with_a_replacement": len(replaced),
            "mean_changed_tokens_factloop": sum(r["factloop_changed"] for r in rows) / n,
            "mean_changed_tokens_released": sum(r["released_changed"] for r in rows) / n,
        }
        bands.append(band)
        print(
            f"{sentences:>6} {n:>6} {band['mean_tokens']:>7.1f} {band['share_differing']:>7.1%} "
            f"{_share(band['share_differing_with_a_replacement']):>11} {band['share_released_weights_nothing']:>9.1%} "
            f"{band['share_autojunk_matters']:>9.1%} {band['mean_changed_tokens_factloop']:>6.1f} "
            f"{band['mean_changed_tokens_released']:>9.1f}"
        )
    results.write(args.out, {"seed": args.seed, "bands": bands}, model=str(TINY))
    return 0


if __name__ == "__main__":
    sys.exit(main())
