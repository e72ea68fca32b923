"""The reward model on the test bed: held-out pairwise accuracy with and without facts.

The base policy answers a description and a question per training scene twice (sampled at
temperature 1.0); the oracle ranks each two answers as a LLaVA-RLHF annotator would (fewer
hallucinations, then more helpful). The same pairs, split by image, train a reward model
with fact augmentation (the scene's caption in its input, Fact-RLHF) and one without.

    OMP_NUM_THREADS=1 .venv/bin/python bench/reward_model.py --model var/models/tiny-base
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="var/models/tiny-base")
    parser.add_argument("--scenes", type=int, default=1500, help="training scenes (2 prompts, 2 answers each)")
    parser.add_argument("--epochs", type=float, default=6.0)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument(
        "--ties", choices=("use", "drop"), default="drop", help="rankings ordered by helpfulness after a tie"
    )
    parser.add_argument("--keep", type=Path, help="keep the pairs and models in this folder")
    args = parser.parse_args()

    import torch

    from models.tiny import image_size_of
    from rlhf import toy_pairs
    from rlhf.evaluate import load_policy
    from rlhf.reward import RewardConfig, train_reward_model

    torch.set_num_threads(1)
    work = args.keep or Path(tempfile.mkdtemp(prefix="factloop-reward-"))
    work.mkdir(parents=True, exist_ok=True)
    model, processor = load_policy(args.model)
    responses = toy_pairs.sample_responses(
        model, processor, toy_pairs.training_scenes(args.scenes), per_prompt=2, temperature=1.0, seed=3
    )
    pairs = toy_pairs.oracle_rankings(
        [(a[0], a[1], a[2], b[2]) for a, b in zip(responses[::2], responses[1::2], strict=True)]
    )
    data = work / "rankings"
    if data.exists():
        shutil.rmtree(data)
    toy_pairs.write_export(pairs, data, image_size=image_size_of(processor))
    ties = sum(p.tie for p in pairs)
    print(f"{len(pairs)} oracle rankings ({ties} ordered by helpfulness after a tie)", file=sys.stderr)
    del model
    rows = []
    for augment in (True, False):
        out = work / ("facts" if augment else "no-facts")
        config = RewardConfig(
            model=args.model,
            data=[str(data)],
            output_dir=str(out),
            fact_augmentation=augment,
            ties=args.ties,
            lora={  # type: ignore[arg-type]
                "r": 16,
                "alpha": 32,
                "dropout": 0.0,
                "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            },
            learning_rate=args.learning_rate,
            epochs=args.epochs,
            batch_size=8,
            threads=1,
        )
        result = train_reward_model(config)
        rows.append((augment, result))
    print(f"{'facts':<6} {'train pairs':>11} {'held-out':>9} {'accuracy':>9} {'loss first->last':>17} {'seconds':>8}")
    for augment, result in rows:
        print(
            f"{'yes' if augment else 'no':<6} {result.train_pairs:>11} {result.heldout_pairs:>9} "
            f"{result.heldout_accuracy:>9.3f} {result.first_loss:>8.3f}->{result.last_loss:<8.3f}"
            f" {result.seconds:>8.0f}"
        )


if __name__ == "__main__":
    main()
