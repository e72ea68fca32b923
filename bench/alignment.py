"""Alignment on the test bed: one round of each method from oracle labels.

DDPO and DPO: the base policy answers prompts about training scenes, a description and a
question per scene (sampled at temperature 0.7, as LLaVA-RLHF sampled its candidates); the
oracle corrects the hallucinated segments (RLHF-V's protocol); each trains a LoRA adapter
from the same pairs.

PPO, GRPO, RLOO: the base policy answers each prompt twice (temperature 1.0) and the oracle
ranks the two (LLaVA-RLHF's protocol); a fact-augmented reward model learns the rankings
(bench/reward_model.py's settings), and each method trains a LoRA adapter against it, the
rankings' prompts as rollout prompts (annotation/demo/configs/toy-ppo.yaml).

Every policy is then measured on the same held-out scenes. Prints one row per method:
labels used, CHAIR_i, CHAIR_s, POPE F1 (mean of the random, popular and adversarial
splits), mean response length in words, share of empty responses, training wall time.

    OMP_NUM_THREADS=1 .venv/bin/python bench/alignment.py

Figures are measured side by side in one run; nothing here is asserted. The raw rows go to
bench/results/alignment.json (--json), which the README's table and the base-figure test
(tests/models/test_tiny.py) read.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from annotation.demo import TOY_DDPO, TOY_PPO
from bench import results
from contract.methods import RL_METHODS
from rlhf.config import RLTrainConfig, load_config, load_run_config

CONFIG = TOY_DDPO
RL_CONFIG = TOY_PPO


def evaluate(model_path: str, adapter: Path | None, scenes: int) -> dict[str, Any]:
    from rlhf.common import load_policy
    from rlhf.evaluate import evaluate_toyworld, heldout_scenes

    model, processor = load_policy(model_path, adapter=adapter)
    return evaluate_toyworld(model, processor, heldout_scenes(scenes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/tiny-base", help="the base policy (folder or hub id)")
    parser.add_argument(
        "--scenes",
        type=int,
        default=390,
        help="training scenes; each gets a description and a question (default 390: ~760 responses, ~500 corrected)",
    )
    parser.add_argument("--heldout", type=int, default=200, help="held-out scenes to evaluate on")
    parser.add_argument("--methods", default="ddpo,dpo,ppo,grpo,rloo")
    parser.add_argument("--config", type=Path, default=CONFIG, help="DDPO/DPO settings")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a DDPO/DPO setting")
    parser.add_argument("--rl-config", type=Path, default=RL_CONFIG, help="PPO/GRPO/RLOO settings")
    parser.add_argument(
        "--rl-set", action="append", default=[], metavar="KEY=VALUE", help="override a PPO/GRPO/RLOO setting"
    )
    parser.add_argument(
        "--rm-scenes", type=int, default=750, help="scenes whose answers the oracle ranks for the reward model"
    )
    parser.add_argument("--reward-model", type=Path, help="reuse this reward model (with --rankings)")
    parser.add_argument("--rankings", type=Path, help="the rankings export the reward model was trained on")
    parser.add_argument("--json", type=Path, default=results.default_path("alignment"), help="raw rows (JSON)")
    parser.add_argument("--keep", type=Path, help="keep the pairs and adapters in this folder")
    args = parser.parse_args()

    import torch

    from bench.reward_model import ranking_export, reward_config
    from models.tiny import image_size_of
    from rlhf import toy_pairs
    from rlhf.common import load_policy
    from rlhf.reward import train_reward_model
    from rlhf.train_dpo import train
    from rlhf.train_rl import train as train_rl

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    torch.set_num_threads(1)
    work = args.keep or Path(tempfile.mkdtemp(prefix="factloop-alignment-"))
    work.mkdir(parents=True, exist_ok=True)
    model, processor = load_policy(args.model)
    began = time.perf_counter()
    # Half descriptions, half questions, as synthetic rounds ask.
    responses = toy_pairs.sample_responses(
        model, processor, toy_pairs.training_scenes(args.scenes), temperature=0.7, seed=1
    )
    pairs = toy_pairs.oracle_pairs(responses)
    data = work / "pairs"
    if data.exists():
        shutil.rmtree(data)
    toy_pairs.write_export(pairs, data, image_size=image_size_of(processor))
    print(
        f"{len(responses)} responses, {len(pairs)} corrected "
        f"({toy_pairs.hallucination_rate(responses):.0%} hallucinate) in {time.perf_counter() - began:.0f} s",
        file=sys.stderr,
    )
    rankings, reward_model, ranking_count = args.rankings, args.reward_model, 0
    reward_accuracy: float | None = None
    if any(m in RL_METHODS for m in methods) and reward_model is None:
        rankings = work / "rankings"
        ranking_count, _ = ranking_export(model, processor, args.rm_scenes, rankings)
        scorer = train_reward_model(reward_config(args.model, rankings, work / "reward-model"))
        reward_model = Path(scorer.output_dir)
        reward_accuracy = scorer.heldout_accuracy
        print(
            f"reward model: {ranking_count} rankings, held-out accuracy {scorer.heldout_accuracy:.3f}", file=sys.stderr
        )
    del model

    rows = []
    base = evaluate(args.model, None, args.heldout)
    rows.append({"method": "base", "labels": 0, "seconds": 0.0, **base})
    for method in methods:
        out = work / method
        if out.exists():
            shutil.rmtree(out)
        if method in RL_METHODS:
            rl_config = load_run_config(
                RLTrainConfig,
                args.rl_config,
                [f"method={method}", *args.rl_set],
                model=args.model,
                reward_model=str(reward_model),
                data=[str(rankings)],
                output_dir=str(out),
            )
            rl = train_rl(rl_config, report_to=[])
            metrics = evaluate(args.model, Path(rl.adapter_dir) if rl.adapter_dir else None, args.heldout)
            rows.append({"method": method, "labels": ranking_count, "seconds": rl.seconds, **metrics})
            print(f"{method}: reward {rl.first_reward:.3f} -> {rl.last_reward:.3f}", file=sys.stderr)
            continue
        overrides = [f"method={method}", *args.set]
        config = load_config(args.config, overrides, model=args.model, data=[str(data)], output_dir=str(out))
        result = train(config, report_to=[])
        metrics = evaluate(args.model, Path(result.adapter_dir) if result.adapter_dir else None, args.heldout)
        rows.append({"method": method, "labels": result.pairs, "seconds": result.seconds, **metrics})
        print(f"{method}: loss {result.first_loss:.3f} -> {result.last_loss:.3f}", file=sys.stderr)

    print(f"held-out scenes: {args.heldout}; base model: {args.model}")
    print(
        f"{'method':<8} {'labels':>6} {'CHAIR_i':>8} {'CHAIR_s':>8} {'POPE F1':>8} {'words':>6} {'empty':>6} "
        f"{'train s':>8} {'CHAIR_i vs base':>16}"
    )
    for row in rows:
        change = (row["chair_i"] - base["chair_i"]) / base["chair_i"] if base["chair_i"] else 0.0
        print(
            f"{row['method']:<8} {row['labels']:>6} {row['chair_i']:>8.3f} {row['chair_s']:>8.3f} "
            f"{row['pope_f1']:>8.3f} {row['mean_words']:>6.1f} {row['empty_share']:>6.2f} {row['seconds']:>8.0f} "
            f"{change:>+15.1%}"
        )
    slim = [{k: v for k, v in row.items() if k not in ("examples",)} for row in rows]
    payload = {"heldout": args.heldout, "responses": len(responses), "corrected": len(pairs), "rows": slim}
    if reward_accuracy is not None:
        payload["reward_model"] = {"rankings": ranking_count, "heldout_accuracy": reward_accuracy}
    results.write(args.json, payload, model=args.model)


if __name__ == "__main__":
    main()
