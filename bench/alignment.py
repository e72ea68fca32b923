"""Alignment on the test bed: every method FactLoop trains, from the same oracle labels,
measured on the same held-out scenes.

Labels (the oracle is the simulated annotator; testbed/toyworld/oracle.py):
- corrections (RLHF-V's protocol): the base policy answers a description and a question per
  training scene (temperature 0.7, as LLaVA-RLHF sampled candidates); the oracle corrects the
  hallucinated segments; a response with nothing wrong gives no pair. DDPO, DPO, SFT, mDPO,
  HSA-DPO and HALVA train on these pairs, and the synthetic rows add their own generated
  pairs (rlhf/synthetic.py) at `--synthetic-ratio` per human pair. The plain rows' oracle
  deletes a sentence about an absent object (correction style "delete"); the `+replace`
  rows' oracle rewrites it into one about an object the answer does not name yet, deleting
  only where none is left ("replace", RLHF-V's minimal editing), on the same sampled answers.
- ratings (Silkie's, VLFeedback's shape): four sampled answers per prompt, each rated by the
  oracle on faithfulness and helpfulness (rlhf/toy_pairs.py, `oracle_rating`); any two with
  unequal mean ratings are a pair (rlhf/ratings.py); plain DPO.
- rankings (LLaVA-RLHF's protocol): two sampled answers per prompt (temperature 1.0), ranked
  by the oracle; a fact-augmented reward model learns them (bench/reward_model.py's
  settings), and PPO, GRPO and RLOO train against it (testbed/demo/configs/toy-ppo.yaml).

The label budget is about the same for each kind (`--scenes`, `--rating-scenes` and
`--rm-scenes` set it): about 430 corrections, 500 rated responses, 500 rankings. A row's
`labels` is the number of human-style labels it used; `generated` the pairs the method made
itself. Rows named in `--seeded` train once per seed of `--seeds` (data order, adapter
initialisation, sampling); the table shows the mean and, with several seeds, the standard
deviation, so the noise shows. Each row: CHAIR_i, CHAIR_s, POPE F1 (mean of the random,
popular and adversarial splits), mean response length in words, coverage (AMBER's "Cover",
arXiv:2311.07397: the share of a scene's object classes its description names; a shorter
answer that drops only the hallucinated objects keeps it), share of empty responses,
training seconds.

    OMP_NUM_THREADS=1 .venv/bin/python bench/alignment.py

Rows (`--methods`): ddpo, dpo, sft, mdpo, hsa_dpo, halva, silkie, ddpo+ld (DDPO with LD-DPO's
length desensitisation, `ld_alpha` 0.5), ddpo+inject (POVID/BPO
error injection), ddpo+noised_image (POVID/BPO/STIC answers to noised images), ppo,
halva+inject (HALVA on its own kind of data: substituted hallucinated phrases), ppo+debias
(PPO with the length trend regressed out of the reward model's scores,
`length_debias`), ppo+released (PPO and its reward model with `released: true`: LLaVA-RLHF's
released code's rules and reward input), grpo, rloo.

Figures are measured side by side in one run; nothing here is asserted. The raw rows go to
bench/results/alignment.json (--json), which docs/training.md's table and the base-figure test
(tests/testbed/test_tiny.py) read.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import results
from rlhf.config import RLTrainConfig, load_config, load_run_config
from testbed.demo import TOY_DDPO, TOY_PPO
from testbed.toyworld.oracle import CorrectionStyle

# What this bench measures: its result is stale once any of these changes (bench/status.py).
MEASURES = (
    "rlhf",
    "testbed",
    "contract",
    "bench/alignment.py",
    "bench/reward_model.py",
)


@dataclass(frozen=True)
class Row:
    """A row of the table: which trainer, on which labels, with which settings."""

    labels: str  # corrections (deleted absent objects), replacements (rewritten), ratings or rankings
    settings: tuple[str, ...]
    ties: str = "drop"  # rankings: the reward model's `ties` (use: learn the helpfulness order after a tie)
    reward: str = "own"  # rankings: the reward model's input, FactLoop's own or LLaVA-RLHF's released one

    @property
    def reward_model(self) -> tuple[str, str]:
        return (self.ties, self.reward)


SYNTHETIC = ("synthetic_vocabulary=toyworld",)
ROWS: dict[str, Row] = {
    "ddpo": Row("corrections", ("method=ddpo",)),
    "dpo": Row("corrections", ("method=dpo",)),
    "sft": Row("corrections", ("method=sft",)),
    "mdpo": Row("corrections", ("method=mdpo",)),
    "hsa_dpo": Row("corrections", ("method=hsa_dpo",)),
    "halva": Row("corrections", ("method=halva",)),
    "halva+inject": Row("corrections", ("method=halva", "synthetic=inject", *SYNTHETIC)),
    "silkie": Row("ratings", ("method=dpo",)),
    "ddpo+ld": Row("corrections", ("method=ddpo", "ld_alpha=0.5")),
    "ddpo+inject": Row("corrections", ("method=ddpo", "synthetic=inject", *SYNTHETIC)),
    "ddpo+noised_image": Row("corrections", ("method=ddpo", "synthetic=noised_image", *SYNTHETIC)),
    "ppo": Row("rankings", ("method=ppo",)),
    "ppo+debias": Row("rankings", ("method=ppo", "length_debias=true")),
    "ppo+helpful": Row("rankings", ("method=ppo",), ties="use"),
    "ppo+anchor": Row("rankings", ("method=ppo", "length_anchor=2.0")),
    # PPO and the reward model as LLaVA-RLHF released them (`released: true` on both).
    "ppo+released": Row("rankings", ("method=ppo", "released=true"), reward="released"),
    "grpo": Row("rankings", ("method=grpo",)),
    "rloo": Row("rankings", ("method=rloo",)),
}
# The correction rows again, on corrections that replace rather than delete.
CORRECTION_STYLE: dict[str, CorrectionStyle] = {"corrections": "delete", "replacements": "replace"}
for _name in ("ddpo", "dpo", "sft", "mdpo", "hsa_dpo", "halva", "ddpo+inject"):
    ROWS[f"{_name}+replace"] = Row("replacements", ROWS[_name].settings)
METRICS = ("chair_i", "chair_s", "pope_f1", "mean_words", "coverage", "empty_share", "seconds")


def evaluate(model_path: str, adapter: Path | None, scenes: int) -> dict[str, Any]:
    from rlhf.common import load_policy
    from rlhf.scene_eval import evaluate_toyworld, heldout_scenes

    model, processor = load_policy(model_path, adapter=adapter)
    return evaluate_toyworld(model, processor, heldout_scenes(scenes))


def summarise(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row from a method's runs (one per seed): means, and standard deviations
    where there are several."""
    row: dict[str, Any] = {"method": name, "labels": runs[0]["labels"], "generated": runs[0].get("generated", 0)}
    row["seeds"] = [run["seed"] for run in runs]
    for key in METRICS:
        values = [float(run[key]) for run in runs]
        row[key] = statistics.fmean(values)
        if len(values) > 1:
            row[f"{key}_sd"] = statistics.stdev(values)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="testbed/tiny-base", help="the base policy (folder or hub id)")
    parser.add_argument(
        "--scenes", type=int, default=390, help="training scenes for corrections (default 390: ~430 corrections)"
    )
    parser.add_argument(
        "--rating-scenes", type=int, default=63, help="scenes whose 2 prompts x 4 answers are rated (default 63: 504)"
    )
    parser.add_argument("--rm-scenes", type=int, default=420, help="scenes whose answers are ranked (~500 rankings)")
    parser.add_argument("--heldout", type=int, default=200, help="held-out scenes to evaluate on")
    parser.add_argument("--methods", default=",".join(ROWS), help=f"rows, of {', '.join(ROWS)}")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds of the --seeded rows")
    parser.add_argument("--seeded", default="ddpo,mdpo,hsa_dpo,halva,ddpo+inject", help="rows trained once per seed")
    parser.add_argument("--synthetic-ratio", type=float, default=0.5, help="synthetic pairs per human pair")
    parser.add_argument("--config", type=Path, default=TOY_DDPO, help="settings of the pair methods")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a pair setting")
    parser.add_argument("--rl-config", type=Path, default=TOY_PPO, help="PPO/GRPO/RLOO settings")
    parser.add_argument("--rl-set", action="append", default=[], metavar="KEY=VALUE", help="override an RL setting")
    parser.add_argument("--json", type=Path, default=results.default_path("alignment"), help="raw rows (JSON)")
    parser.add_argument("--keep", type=Path, help="keep the labels and adapters in this folder (and reuse them)")
    results.add_arguments(parser)
    args = parser.parse_args()
    results.begin(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in ROWS]
    if unknown:
        parser.error(f"unknown rows {', '.join(unknown)}; known: {', '.join(ROWS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    seeded = {m.strip() for m in args.seeded.split(",")}

    import torch

    torch.set_num_threads(1)
    work = args.keep or Path(tempfile.mkdtemp(prefix="factloop-alignment-"))
    work.mkdir(parents=True, exist_ok=True)
    needed = {ROWS[m].labels for m in methods}
    kinds = {ROWS[m].reward_model for m in methods if ROWS[m].labels == "rankings"}
    data, counts, reward_models, reused = make_labels(args, work, needed, kinds)

    rows, runs = [], []
    base = evaluate(args.model, None, args.heldout)
    rows.append({"method": "base", "labels": 0, "generated": 0, "seconds": 0.0, "seeds": [], **base})
    for name in methods:
        spec = ROWS[name]
        per_seed = []
        for seed in seeds if name in seeded else seeds[:1]:
            run = train_row(args, work, name, spec, seed, data[spec.labels], reward_models.get(spec.reward_model))
            run.update(method=name, labels=counts[spec.labels], seed=seed)
            run.update(evaluate(args.model, run.pop("adapter"), args.heldout))
            runs.append({k: v for k, v in run.items() if k != "examples"})
            per_seed.append(run)
            print(f"{name} seed {seed}: CHAIR_i {run['chair_i']:.3f}, {run['mean_words']:.1f} words", file=sys.stderr)
        rows.append(summarise(name, per_seed))

    print_table(args, rows)
    slim = [{k: v for k, v in row.items() if k not in ("examples",)} for row in rows]
    payload = {"heldout": args.heldout, "labels": counts, "rows": slim, "runs": runs}
    if reward_models:
        payload["reward_models"] = {
            f"ties {mode}" + (", released" if reward == "released" else ""): {
                "rankings": counts["rankings"],
                "heldout_accuracy": accuracy,
            }
            for (mode, reward), (_, accuracy) in reward_models.items()
        }
    results.write(args.json, payload, model=args.model, reused=reused)


def reward_folder(kind: tuple[str, str]) -> str:
    mode, reward = kind
    return f"reward-model-ties-{mode}" + ("-released" if reward == "released" else "")


def make_labels(
    args: argparse.Namespace, work: Path, needed: set[str], kinds: set[tuple[str, str]]
) -> tuple[dict[str, Path], dict[str, int], dict[tuple[str, str], tuple[Path, float]], dict[str, Any]]:
    """The oracle's labels of each kind the rows need, as `trl` exports under `work` (reused
    when --keep names a folder that has them), their counts, a reward model (folder,
    held-out accuracy) per (`ties` mode, input) the rows need, and the provenance of what was reused
    (the run that made it, as `bench.results.stamp` recorded it in the folder)."""
    import json

    from bench.reward_model import ranking_export, reward_config
    from rlhf import toy_pairs
    from rlhf.common import load_policy
    from rlhf.ratings import write_rating_export
    from rlhf.reward import train_reward_model
    from testbed.tiny import image_size_of

    model, processor = load_policy(args.model)
    size = image_size_of(processor)
    data = {kind: work / kind for kind in ("corrections", "replacements", "ratings", "rankings")}
    record = work / "labels.json"
    stored = json.loads(record.read_text()) if record.is_file() else {}
    # {"counts", "made"}; a folder from before provenance was kept holds the counts alone.
    counts: dict[str, int] = stored.get("counts", stored)
    made: dict[str, Any] = stored.get("made", {})
    fresh: set[str] = set()
    began = time.perf_counter()
    styles = [kind for kind in CORRECTION_STYLE if kind in needed and kind not in counts]
    if styles:
        responses = toy_pairs.sample_responses(
            model, processor, toy_pairs.training_scenes(args.scenes), temperature=0.7, seed=1
        )
        for kind in styles:
            pairs = toy_pairs.oracle_pairs(responses, style=CORRECTION_STYLE[kind])
            shutil.rmtree(data[kind], ignore_errors=True)
            toy_pairs.write_export(pairs, data[kind], image_size=size)
            counts[kind] = len(pairs)
            fresh.add(kind)
            print(f"{len(responses)} responses, {len(pairs)} corrected ({CORRECTION_STYLE[kind]})", file=sys.stderr)
    if "ratings" in needed and "ratings" not in counts:
        # Other scenes than the corrections' (the training scenes' tail), four answers per prompt.
        scenes = toy_pairs.training_scenes(args.scenes + args.rating_scenes)[args.scenes :]
        responses = toy_pairs.sample_responses(model, processor, scenes, per_prompt=4, temperature=1.0, seed=2)
        shutil.rmtree(data["ratings"], ignore_errors=True)
        rated = write_rating_export(toy_pairs.oracle_rated_prompts(responses, image_size=size), data["ratings"])
        counts["ratings"] = len(responses)
        fresh.add("ratings")
        print(f"{len(responses)} rated responses, {rated['pairs']} pairs", file=sys.stderr)
    reward_models: dict[tuple[str, str], tuple[Path, float]] = {}
    if kinds:
        if "rankings" not in counts:
            counts["rankings"], counts["ranking_ties"] = ranking_export(
                model, processor, args.rm_scenes, data["rankings"]
            )
            fresh.add("rankings")
        for ties, reward in sorted(kinds):
            out = work / reward_folder((ties, reward))
            if not (out / "result.json").is_file():
                config = reward_config(args.model, data["rankings"], out, ties=ties, released=reward == "released")
                accuracy = train_reward_model(config).heldout_accuracy
                fresh.add(out.name)
            else:
                accuracy = json.loads((out / "result.json").read_text())["heldout_accuracy"]
            reward_models[(ties, reward)] = (out, float(accuracy))
            print(f"reward model ({out.name}): {counts['rankings']} rankings, accuracy {accuracy:.3f}", file=sys.stderr)
    used = {kind for kind in ("corrections", "replacements", "ratings") if kind in needed}
    if kinds:
        used |= {"rankings", *(reward_folder(pair) for pair in kinds)}
    made.update({kind: results.stamp() for kind in fresh})
    record.write_text(json.dumps({"counts": counts, "made": made}))
    unknown = "made before --keep folders recorded their provenance"
    reused = {kind: made.get(kind, unknown) for kind in sorted(used - fresh)}
    print(f"labels ready in {time.perf_counter() - began:.0f} s", file=sys.stderr)
    return data, counts, reward_models, reused


def train_row(
    args: argparse.Namespace,
    work: Path,
    name: str,
    spec: Row,
    seed: int,
    data: Path,
    reward_model: tuple[Path, float] | None,
) -> dict[str, Any]:
    """Train one row with one seed: its adapter, training seconds and generated pairs."""
    from rlhf.train_dpo import train
    from rlhf.train_rl import train as train_rl

    out = work / "runs" / f"{name}-seed{seed}"
    if out.exists():
        shutil.rmtree(out)
    if spec.labels == "rankings":
        assert reward_model is not None
        config = load_run_config(
            RLTrainConfig,
            args.rl_config,
            [*spec.settings, f"seed={seed}", *args.rl_set],
            model=args.model,
            reward_model=str(reward_model[0]),
            data=[str(data)],
            output_dir=str(out),
        )
        rl = train_rl(config, report_to=[])
        return {"adapter": Path(rl.adapter_dir) if rl.adapter_dir else None, "seconds": rl.seconds, "generated": 0}
    overrides = [*spec.settings, f"seed={seed}", f"synthetic_ratio={args.synthetic_ratio}", *args.set]
    config = load_config(args.config, overrides, model=args.model, data=[str(data)], output_dir=str(out))
    result = train(config, report_to=[])
    return {
        "adapter": Path(result.adapter_dir) if result.adapter_dir else None,
        "seconds": result.seconds,
        "generated": result.synthetic_pairs or 0,
    }


def print_table(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    base = rows[0]
    print(
        f"held-out scenes: {args.heldout}; base model: {args.model}; "
        f"the scenes' true descriptions average {base['truth_words']:.1f} words"
    )
    print(
        f"{'method':<18} {'labels':>6} {'gen':>4} {'seeds':>5} {'CHAIR_i':>13} {'CHAIR_s':>8} {'POPE F1':>8} "
        f"{'words':>6} {'cover':>6} {'empty':>6} {'train s':>8} {'CHAIR_i vs base':>16} {'words vs base':>14}"
    )
    for row in rows:
        chair = f"{row['chair_i']:.3f}" + (f" ±{row['chair_i_sd']:.3f}" if "chair_i_sd" in row else "")
        change = (row["chair_i"] - base["chair_i"]) / base["chair_i"] if base["chair_i"] else 0.0
        words = (row["mean_words"] - base["mean_words"]) / base["mean_words"] if base["mean_words"] else 0.0
        print(
            f"{row['method']:<18} {row['labels']:>6} {row['generated']:>4} {len(row['seeds']):>5} {chair:>13} "
            f"{row['chair_s']:>8.3f} {row['pope_f1']:>8.3f} {row['mean_words']:>6.1f} {row['coverage']:>6.3f} "
            f"{row['empty_share']:>6.2f} "
            f"{row['seconds']:>8.0f} {change:>+15.1%} {words:>+13.1%}"
        )


if __name__ == "__main__":
    main()
