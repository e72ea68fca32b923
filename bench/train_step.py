"""FactLoop's DPO and DDPO against trl's DPO: the same batches, side by side.

Each step = collate (DDPO adds span-to-token weights) + forward/backward of the loss
(DDPO adds a forward hook that scales the per-token log-probs; FactLoop runs each pair's
prompt and image once, rlhf/prefix.py, where trl runs them for every row) + optimizer
step. The methods alternate step by step so that drift in the machine's speed hits all
alike. Prints the median step time and pairs per second of each, with the ratios.

    OMP_NUM_THREADS=1 .venv/bin/python bench/train_step.py --model models/tiny-base

`--model` takes any image-text-to-text checkpoint; the pairs come from the toy world, so
a real checkpoint is timed on toy images and descriptions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/tiny-base")
    parser.add_argument("--pairs", type=int, default=160, help="oracle pairs to build")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per method")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", type=Path, default=results.default_path("train_step"), help="raw timings (JSON)")
    args = parser.parse_args()

    import torch

    from models.tiny import image_size_of
    from rlhf import toy_pairs
    from rlhf.common import load_policy
    from rlhf.config import load_config
    from rlhf.train_dpo import build_trainer

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="factloop-train-step-"))
    model, processor = load_policy(args.model)
    responses = toy_pairs.sample_responses(
        model, processor, toy_pairs.training_scenes(args.pairs * 2), questions=False, temperature=0.7, seed=2
    )
    pairs = toy_pairs.oracle_pairs(responses)[: args.pairs]
    toy_pairs.write_export(pairs, work / "pairs", image_size=image_size_of(processor))
    del model

    def trainer_for(method: str) -> Any:
        config = load_config(
            None,
            [f"method={method}", f"batch_size={args.batch_size}", "threads=1", *args.set],
            model=args.model,
            data=[str(work / "pairs")],
            output_dir=str(work / method),
        )
        trainer = build_trainer(config, report_to=[])
        trainer.create_optimizer_and_scheduler(num_training_steps=args.steps + 5)
        return trainer

    # trl's DPO as it ships (its own collator, no token weights), then FactLoop's.
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    plain = trainer_for("dpo")
    plain.data_collator = DataCollatorForVisionPreference(plain.processing_class)
    plain.share_prefix = False  # trl's own path: every row runs its prompt (rlhf/prefix.py)
    trainers = {"trl-dpo": plain, "dpo": trainer_for("dpo"), "ddpo": trainer_for("ddpo")}
    # The same rows for both, batch by batch.
    dataset = trainers["ddpo"].train_dataset
    order = [
        [dataset[(step * args.batch_size + i) % len(dataset)] for i in range(args.batch_size)]
        for step in range(args.steps + 3)
    ]
    times: dict[str, dict[str, list[float]]] = {m: {"collate": [], "step": []} for m in trainers}
    for step, rows in enumerate(order):
        for method, trainer in trainers.items():
            began = time.perf_counter()
            keep = ("prompt", "chosen", "rejected", "images", "chosen_spans", "rejected_spans")
            batch = trainer.data_collator(
                [{k: r[k] for k in keep if method != "trl-dpo" or "spans" not in k} for r in rows]
            )
            collated = time.perf_counter()
            trainer.model.train()
            loss = trainer.compute_loss(trainer.model, batch)
            loss.backward()
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            done = time.perf_counter()
            if step >= 3:  # warm-up steps are not timed
                times[method]["collate"].append(collated - began)
                times[method]["step"].append(done - collated)
    print(f"{len(pairs)} oracle pairs, batch {args.batch_size}, {args.steps} timed steps per method (median ms)")
    print(f"{'method':<8} {'collate':>8} {'loss+backward+update':>21} {'total':>8}")
    totals: dict[str, float] = {}
    for method, parts in times.items():
        collate = statistics.median(parts["collate"]) * 1000
        update = statistics.median(parts["step"]) * 1000
        totals[method] = statistics.median([a + b for a, b in zip(parts["collate"], parts["step"], strict=True)])
        print(f"{method:<8} {collate:>8.1f} {update:>21.1f} {totals[method] * 1000:>8.1f}")
    print(f"DDPO / trl DPO step time: {totals['ddpo'] / totals['trl-dpo']:.3f}")
    print(f"FactLoop DPO (gamma 1) / trl DPO: {totals['dpo'] / totals['trl-dpo']:.3f}")
    pairs_per_second = {method: args.batch_size / total for method, total in totals.items()}
    print(
        "pairs/s: "
        + ", ".join(f"{method} {rate:.1f}" for method, rate in pairs_per_second.items())
        + f"; FactLoop DPO / trl DPO {pairs_per_second['dpo'] / pairs_per_second['trl-dpo']:.2f}x"
        + f", DDPO / trl DPO {pairs_per_second['ddpo'] / pairs_per_second['trl-dpo']:.2f}x"
    )
    payload = {
        "pairs": len(pairs),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "median_ms": {m: round(t * 1000, 2) for m, t in totals.items()},
        "ddpo_over_trl_dpo": totals["ddpo"] / totals["trl-dpo"],
        "dpo_over_trl_dpo": totals["dpo"] / totals["trl-dpo"],
        "pairs_per_second": pairs_per_second,
        "seconds": {m: parts for m, parts in times.items()},
    }
    results.write(args.json, payload, model=args.model)


if __name__ == "__main__":
    main()
