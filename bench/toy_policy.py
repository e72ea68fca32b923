"""Hallucination of the tiny base policy against untrained references, side by side.

    .venv/bin/python bench/toy_policy.py [--model testbed/tiny-base] [--scenes 200]

Rows: the base policy; "blind" (the base policy with its projector re-initialised: it
speaks the grammar but never learnt to look); "random init" (every weight untrained).
Columns: CHAIR_i, CHAIR_s, POPE F1 (mean of the three splits), POPE yes-ratio (random
split), MMHal-style score, mean words. Ratios are against the blind reference. The raw
rows go to bench/results/toy_policy.json (--json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import results

# What this bench measures: its result is stale once any of these changes (bench/status.py).
MEASURES = (
    "testbed",
    "rlhf/scene_eval.py",
    "rlhf/metrics.py",
    "bench/toy_policy.py",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="testbed/tiny-base")
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--json", type=Path, default=results.default_path("toy_policy"), help="raw rows (JSON)")
    results.add_arguments(parser)
    args = parser.parse_args()
    results.begin(args)

    import torch

    from rlhf.common import load_policy
    from rlhf.scene_eval import evaluate_toyworld, heldout_scenes
    from testbed.tiny import TinySpec, build_model, reset_projector

    torch.set_num_threads(2)
    scenes = heldout_scenes(args.scenes)
    model, processor = load_policy(args.model)
    rows = {"base policy": evaluate_toyworld(model, processor, scenes)}
    reset_projector(model)
    rows["blind"] = evaluate_toyworld(model, processor, scenes)
    rows["random init"] = evaluate_toyworld(build_model(TinySpec(), processor).eval(), processor, scenes)

    print(f"{args.scenes} held-out scenes")
    header = ("model", "CHAIR_i", "CHAIR_s", "POPE F1", "yes", "MMHal", "words", "mentions")
    print("{:<12} {:>8} {:>8} {:>8} {:>5} {:>6} {:>6} {:>9}".format(*header))
    for name, r in rows.items():
        mentions = int(r["object_halbench"]["responses_with_objects"])
        print(
            f"{name:<12} {r['chair_i']:>8.3f} {r['chair_s']:>8.3f} {r['pope_f1']:>8.3f} "
            f"{r['pope']['random']['yes_ratio']:>5.2f} {r['mmhal']['score']:>6.2f} "
            f"{r['mean_words']:>6.1f} {mentions:>9}"
        )
    base, blind = rows["base policy"], rows["blind"]
    ratio = base["chair_i"] / blind["chair_i"] if blind["chair_i"] else None
    if ratio is not None:
        print(f"CHAIR_i base / blind = {ratio:.2f}")
    slim = {name: {k: v for k, v in r.items() if k != "examples"} for name, r in rows.items()}
    results.write(args.json, {"scenes": args.scenes, "rows": slim, "chair_i_base_over_blind": ratio}, model=args.model)


if __name__ == "__main__":
    main()
