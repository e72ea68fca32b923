"""The reward model on the test bed: held-out pairwise accuracy with and without facts.

The base policy answers a description and a question per training scene twice (sampled at
temperature 1.0); the oracle ranks each two answers as a LLaVA-RLHF annotator would (fewer
hallucinations, then more helpful). The same pairs, split by image, train a reward model
with fact augmentation (the scene's caption in its input, Fact-RLHF) and one without.

    OMP_NUM_THREADS=1 .venv/bin/python bench/reward_model.py

The raw rows go to bench/results/reward_model.json (--json).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import results

# LoRA on attention and MLP: on the 4-layer test-bed model, attention alone reached 0.73-0.81.
# What this bench measures: its result is stale once any of these changes (bench/status.py).
MEASURES = (
    "rlhf",
    "testbed",
    "contract",
    "bench/reward_model.py",
)

BENCH_LORA = {
    "r": 16,
    "alpha": 32,
    "dropout": 0.0,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def ranking_export(model: Any, processor: Any, scenes: int, out: Path, *, seed: int = 3) -> tuple[int, int]:
    """Oracle rankings of two sampled answers per prompt (a description and a question per
    training scene) as a `trl` export; returns (pairs, pairs ordered by helpfulness after a tie)."""
    from rlhf import toy_pairs
    from testbed.tiny import image_size_of

    responses = toy_pairs.sample_responses(
        model, processor, toy_pairs.training_scenes(scenes), per_prompt=2, temperature=1.0, seed=seed
    )
    pairs = toy_pairs.oracle_rankings(
        [(a[0], a[1], a[2], b[2]) for a, b in zip(responses[::2], responses[1::2], strict=True)]
    )
    if out.exists():
        shutil.rmtree(out)
    toy_pairs.write_export(pairs, out, image_size=image_size_of(processor))
    return len(pairs), sum(p.tie for p in pairs)


def reward_config(
    model: str,
    data: Path,
    out: Path,
    *,
    augment: bool = True,
    fact_format: str = "captions",
    ties: str = "drop",
    epochs: float = 6.0,
    lr: float = 1e-3,
    released: bool = False,
) -> Any:
    from rlhf.reward import RewardConfig

    return RewardConfig(
        model=model,
        data=[str(data)],
        output_dir=str(out),
        fact_augmentation=augment,
        fact_format=fact_format,
        ties=ties,
        released=released,
        lora=dict(BENCH_LORA),  # type: ignore[arg-type]
        learning_rate=lr,
        epochs=epochs,
        batch_size=8,
        threads=1,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="testbed/tiny-base")
    parser.add_argument("--scenes", type=int, default=1500, help="training scenes (2 prompts, 2 answers each)")
    parser.add_argument("--epochs", type=float, default=6.0)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument(
        "--ties", choices=("use", "drop"), default="drop", help="rankings ordered by helpfulness after a tie"
    )
    parser.add_argument("--fact-format", choices=("captions", "objects"), default="captions", help="what the facts say")
    parser.add_argument("--keep", type=Path, help="keep the pairs and models in this folder")
    parser.add_argument("--json", type=Path, default=results.default_path("reward_model"), help="raw rows (JSON)")
    results.add_arguments(parser)
    args = parser.parse_args()
    results.begin(args)

    import torch

    from rlhf.common import load_policy
    from rlhf.reward import train_reward_model

    torch.set_num_threads(1)
    work = args.keep or Path(tempfile.mkdtemp(prefix="factloop-reward-"))
    work.mkdir(parents=True, exist_ok=True)
    model, processor = load_policy(args.model)
    data = work / "rankings"
    count, ties = ranking_export(model, processor, args.scenes, data)
    print(f"{count} oracle rankings ({ties} ordered by helpfulness after a tie)", file=sys.stderr)
    del model
    rows = []
    for augment in (True, False):
        out = work / ("facts" if augment else "no-facts")
        config = reward_config(
            args.model,
            data,
            out,
            augment=augment,
            fact_format=args.fact_format,
            ties=args.ties,
            epochs=args.epochs,
            lr=args.learning_rate,
        )
        rows.append((augment, train_reward_model(config)))
    print(f"{'facts':<6} {'train pairs':>11} {'held-out':>9} {'accuracy':>9} {'loss first->last':>17} {'seconds':>8}")
    for augment, result in rows:
        print(
            f"{'yes' if augment else 'no':<6} {result.train_pairs:>11} {result.heldout_pairs:>9} "
            f"{result.heldout_accuracy:>9.3f} {result.first_loss:>8.3f}->{result.last_loss:<8.3f}"
            f" {result.seconds:>8.0f}"
        )
    payload = {
        "scenes": args.scenes,
        "rankings": count,
        "tie_then_helpfulness": ties,
        "settings": {"epochs": args.epochs, "learning_rate": args.learning_rate, "ties": args.ties},
        "fact_format": args.fact_format,
        "rows": [
            {
                "facts": augment,
                "train_pairs": result.train_pairs,
                "heldout_pairs": result.heldout_pairs,
                "heldout_accuracy": result.heldout_accuracy,
                "first_loss": result.first_loss,
                "last_loss": result.last_loss,
                "seconds": result.seconds,
            }
            for augment, result in rows
        ],
    }
    results.write(args.json, payload, model=args.model)


if __name__ == "__main__":
    main()
