"""Label efficiency on the test bed: the same human budget a round, four (five) ways, four rounds.

Each round, every arm's current policy (the shipped tiny base, then its own DDPO adapter,
continued round after round, as `train_round` continues the previous round's adapter)
samples K answers (temperature 0.7) to each prompt of the round's pool: a description and a
question per fresh training scene, the same scenes for every arm. Then:

- (a) `random`: `--labels` prompts at random go to the humans (simulated: the world's
  oracle, testbed/toyworld/oracle.py, missing each hallucinated segment with probability
  `--noise`); each corrects the first sampled answer (RLHF-V's protocol; a right answer
  gives no pair but costs a label).
- (b) `active`: the `--labels` prompts whose K answers disagree most (contract/selection.py).
- (c) `active+suggest`: as (b), and the annotator sees the AI labeller's suggestions
  (rlhf/ai_feedback.py; the labeller is the arm's current policy, self-feedback, asked its
  yes/no, count and colour questions greedily). The annotator model: a suggestion that
  overlaps a hallucinated claim is accepted (its fix applied, nothing missed), any other
  is rejected; the hallucinations left are then corrected by hand with the usual misses.
  Time: reading a response 8 s, a hand fix 12 s a segment, accepting 2 s, rejecting 3 s
  (a stated model, not a measurement).
- (d) `ai`: no humans; the labeller scores all K answers of every pool prompt and RLAIF-V's
  pairs (score gap >= 1) train the policy.
- (e) `active+suggest+ai` (with --arms): (c), plus (d)'s pairs of the prompts the humans
  did not see, at `--ai-weight`.

Each round trains DDPO (testbed/demo/configs/toy-ddpo.yaml) on that round's pairs only,
from the previous round's adapter, and is measured on the same held-out scenes: CHAIR_i,
POPE F1 (mean of its three splits), mean words. The last table gives, per arm, the human
labels it had used when its CHAIR_i first reached arm (a)'s final CHAIR_i.

    OMP_NUM_THREADS=1 .venv/bin/python bench/label_efficiency.py

Figures are measured side by side in one run; nothing here is asserted. Raw rows go to
bench/results/label_efficiency.json.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import results
from testbed.demo import TOY_DDPO
from testbed.toyworld.oracle import CORRECTION_STYLES, CorrectionStyle

# What this bench measures: its result is stale once any of these changes (bench/status.py).
MEASURES = (
    "rlhf",
    "testbed",
    "contract",
    "bench/label_efficiency.py",
)

ARMS = ("random", "active", "active+suggest", "ai", "active+suggest+ai")
SECONDS = {"read": 8.0, "fix": 12.0, "accept": 2.0, "reject": 3.0}  # the annotator time model


@dataclass
class Arm:
    name: str
    seed: int = 0
    style: CorrectionStyle = "replace"  # how the humans (and the suggestions) correct an absent object
    adapter: Path | None = None
    human_labels: int = 0
    seconds: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The arm and, where humans correct, its correction style: "active+suggest:replace"."""
        return f"{self.name}:{self.style}" if self.humans else self.name

    @property
    def selection(self) -> str:
        return "random" if self.name == "random" else "disagreement"

    @property
    def humans(self) -> bool:
        return self.name != "ai"

    @property
    def suggestions(self) -> bool:
        return "suggest" in self.name

    @property
    def ai_pairs(self) -> bool:
        return self.name == "ai" or self.name.endswith("+ai")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="testbed/tiny-base", help="the base policy (folder or hub id)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--labels", type=int, default=80, help="human labels a round (default 80)")
    parser.add_argument("--pool", type=int, default=150, help="fresh training scenes a round (2 prompts each)")
    parser.add_argument("--samples", type=int, default=4, help="answers sampled per prompt, K (default 4)")
    parser.add_argument("--noise", type=float, default=0.2, help="share of hallucinated segments a human misses")
    parser.add_argument(
        "--correction-styles",
        default="replace",
        help="how the humans' arms correct an absent object, comma-separated: replace (rewrite it into an "
        "unnamed object of the scene, delete where none is left), delete; each human arm runs once per style",
    )
    parser.add_argument("--ai-weight", type=float, default=0.5, help="arm active+suggest+ai: AI pairs' weight")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"of {', '.join(ARMS)}")
    parser.add_argument("--heldout", type=int, default=200, help="held-out scenes to evaluate on")
    parser.add_argument(
        "--seeds", default="0,1", help="seeds (sampling, selection, noise, training); the table shows means"
    )
    parser.add_argument("--config", type=Path, default=TOY_DDPO, help="DDPO settings")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    parser.add_argument("--json", type=Path, default=results.default_path("label_efficiency"))
    results.add_arguments(parser)
    args = parser.parse_args()
    results.begin(args)
    names = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in names if a not in ARMS]
    if unknown or not names:
        parser.error(f"unknown arms {', '.join(unknown)}; known: {', '.join(ARMS)}")
    styles = [s.strip() for s in args.correction_styles.split(",") if s.strip()]
    if not styles or any(s not in CORRECTION_STYLES for s in styles):
        parser.error("--correction-styles: replace, delete or both")
    if args.rounds < 1 or args.labels < 1 or args.pool < 1 or args.samples < 2:
        parser.error("--rounds, --labels and --pool must be at least 1, --samples at least 2")

    import torch

    from rlhf.scene_eval import heldout_scenes
    from rlhf.toy_pairs import training_scenes

    torch.set_num_threads(1)
    seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    work = Path(tempfile.mkdtemp(prefix="factloop-label-efficiency-"))
    heldout = heldout_scenes(args.heldout)
    base = measure(args.model, None, heldout)
    pools = training_scenes(args.pool * args.rounds)
    began = time.perf_counter()
    runs: dict[str, list[Arm]] = {}
    for seed in seeds:
        arms = [Arm(name, seed, style) for name in names for style in (styles if Arm(name).humans else styles[:1])]
        for number in range(1, args.rounds + 1):
            pool = pools[(number - 1) * args.pool : number * args.pool]
            for arm in arms:
                row = run_round(args, work / f"seed-{seed}", arm, number, pool)
                row.update(measure(args.model, arm.adapter, heldout))
                arm.rows.append(row)
                print(
                    f"seed {seed} round {number} {arm.label}: {row['pairs']} pairs ({row['human_labels']} human "
                    f"labels), CHAIR_i {row['chair_i']:.3f}, {row['mean_words']:.1f} words "
                    f"[{time.perf_counter() - began:.0f} s]",
                    file=sys.stderr,
                )
        for arm in arms:
            runs.setdefault(arm.label, []).append(arm)
    shutil.rmtree(work, ignore_errors=True)
    means = {name: mean_rows(found) for name, found in runs.items()}
    summary = print_tables(args, base, means, len(seeds))
    payload = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "annotator_seconds": SECONDS,
        "base": base,
        "arms": means,
        "runs": {label: {str(arm.seed): arm.rows for arm in found} for label, found in runs.items()},
        "summary": summary,
    }
    results.write(args.json, payload, model=args.model)


MEANS = ("chair_i", "chair_s", "pope_f1", "mean_words", "coverage", "pairs", "human_pairs", "ai_pairs")


def mean_rows(arms: list[Arm]) -> list[dict[str, Any]]:
    """Per round, the seeds' mean of each measure (and its standard deviation, with several)."""
    rows = []
    for per_seed in zip(*(arm.rows for arm in arms), strict=True):
        row = dict(per_seed[0])
        for key in (*MEANS, "annotator_minutes", "suggestions_accepted", "suggestions_rejected"):
            values = [float(r[key]) for r in per_seed]
            row[key] = statistics.fmean(values)
            if key in MEANS and len(values) > 1:
                row[f"{key}_sd"] = statistics.stdev(values)
        rows.append(row)
    return rows


def measure(model_path: str, adapter: Path | None, scenes: Sequence[Any]) -> dict[str, Any]:
    from rlhf.common import load_policy
    from rlhf.scene_eval import evaluate_toyworld

    model, processor = load_policy(model_path, adapter=adapter)
    found = evaluate_toyworld(model, processor, scenes)
    return {key: found[key] for key in ("chair_i", "chair_s", "pope_f1", "mean_words", "coverage")}


def run_round(args: argparse.Namespace, work: Path, arm: Arm, number: int, pool: Sequence[Any]) -> dict[str, Any]:
    """One round of one arm: sample, select, label, train. Returns the round's label counts."""
    from contract.feedback import ai_pairs
    from contract.selection import select
    from rlhf import toy_pairs
    from rlhf.ai_feedback import labeller_for, local_answerer
    from rlhf.common import load_policy
    from testbed.tiny import image_size_of
    from testbed.toyworld import render

    model, processor = load_policy(args.model, adapter=arm.adapter)
    size = image_size_of(processor)
    sampled = toy_pairs.sample_responses(
        model, processor, pool, per_prompt=args.samples, temperature=0.7, seed=arm.seed * 1000 + number
    )
    groups: dict[tuple[str, str], list[str]] = {}
    scenes = {}
    for scene, prompt, text in sampled:
        groups.setdefault((scene.scene_id, prompt), []).append(text)
        scenes[scene.scene_id] = scene
    labeller = labeller_for("toyworld", local_answerer(model, processor), f"ai:{arm.name}-round-{number - 1}")
    labeller.rewrite = arm.style == "replace"  # its suggestions correct as the humans do
    images = {scene_id: render(scene, size) for scene_id, scene in scenes.items()}
    rng = random.Random(f"{arm.seed}-{arm.name}-{number}")

    claims = {key: [{claim.key for claim in labeller.split(text)} for text in texts] for key, texts in groups.items()}
    chosen = select(claims, args.labels, strategy=arm.selection, seed=rng.randrange(2**31))
    human: list[Any] = []
    seconds = 0.0
    accepted = rejected = 0
    if arm.humans:
        shown = [(key, groups[key][0]) for key in chosen]
        feedback: list[Any] = [None] * len(shown)
        if arm.suggestions:
            feedback = labeller.label([(str(i), key[0], images[key[0]], text) for i, (key, text) in enumerate(shown)])
        for (key, text), item in zip(shown, feedback, strict=True):
            pair, spent, took, turned = annotate(
                scenes[key[0]], key[1], text, item, noise=args.noise, rng=rng, style=arm.style
            )
            seconds += spent
            accepted += took
            rejected += turned
            if pair is not None:
                human.append(pair)
        arm.human_labels += len(shown)
        arm.seconds += seconds

    machine: list[Any] = []
    if arm.ai_pairs:
        seen = set(chosen) if arm.humans else set()
        flat = [(key, text) for key in groups if key not in seen for text in groups[key]]
        items = [(str(i), key[0], images[key[0]], text) for i, (key, text) in enumerate(flat)]
        scores: dict[tuple[str, str], list[tuple[str, int]]] = {}
        for (key, text), judged in zip(flat, labeller.label(items), strict=True):
            scores.setdefault(key, []).append((text, judged.score))
        for key, scored in scores.items():
            for better, worse in ai_pairs(scored):
                machine.append(toy_pairs.OraclePair(scenes[key[0]], key[1], worse, better, [], [], source="ai"))

    data = []
    if human:
        data.append(work / arm.label / f"round-{number}-human")
        toy_pairs.write_export(human, data[-1], image_size=size)
    if machine:
        data.append(work / arm.label / f"round-{number}-ai")
        toy_pairs.write_export(machine, data[-1], image_size=size, annotator=labeller.name)
    if data:
        arm.adapter = train(args, work / arm.label / f"round-{number}", data, arm, seed=arm.seed * 100 + number)
    return {
        "round": number,
        "pool_prompts": len(groups),
        "pairs": len(human) + len(machine),
        "human_pairs": len(human),
        "ai_pairs": len(machine),
        "round_labels": len(chosen) if arm.humans else 0,
        "human_labels": arm.human_labels,
        "annotator_minutes": arm.seconds / 60,
        "suggestions_accepted": accepted,
        "suggestions_rejected": rejected,
    }


def annotate(
    scene: Any,
    prompt: str,
    text: str,
    feedback: Any,
    *,
    noise: float,
    rng: random.Random,
    style: CorrectionStyle = "replace",
) -> Any:
    """A simulated annotator's correction of `text`: (pair or None, seconds, suggestions
    accepted, rejected). With `feedback`, suggestions overlapping a hallucinated claim are
    accepted and the rest rejected, before the annotator fixes what is left by hand."""
    from contract.feedback import apply_fixes
    from rlhf.toy_pairs import correction_pair
    from testbed.toyworld.oracle import check, correct

    wrong = [(c.start, c.end) for c in check(scene, text).claims if c.hallucinated]
    seconds = SECONDS["read"]
    start_from, took, turned = text, 0, 0
    if feedback is not None:
        fixes = []
        for claim in feedback.suspected:
            if claim.fix is not None and any(s < claim.end and claim.start < e for s, e in wrong):
                fixes.append(claim.fix)
                took += 1
            else:
                turned += 1
        start_from = apply_fixes(text, fixes)
        seconds += took * SECONDS["accept"] + turned * SECONDS["reject"]
    fixed = correct(scene, start_from, noise=noise, rng=rng, style=style)
    seconds += SECONDS["fix"] * max(0, check(scene, start_from).hallucinations - check(scene, fixed).hallucinations)
    return correction_pair(scene, prompt, text, fixed), seconds, took, turned


def train(args: argparse.Namespace, out: Path, data: list[Path], arm: Arm, *, seed: int) -> Path | None:
    from rlhf.config import load_config
    from rlhf.train_dpo import train as train_dpo

    overrides = [f"seed={seed}", f"ai_weight={args.ai_weight if arm.humans else 1.0}", *args.set]
    if arm.adapter is not None:
        overrides.append(f"init_adapter={arm.adapter}")
    config = load_config(args.config, overrides, model=args.model, data=[str(d) for d in data], output_dir=str(out))
    result = train_dpo(config, report_to=[])
    return Path(result.adapter_dir) if result.adapter_dir else arm.adapter


def print_tables(
    args: argparse.Namespace, base: dict[str, Any], arms: dict[str, list[dict[str, Any]]], seeds: int
) -> dict[str, Any]:
    print(
        f"{args.labels} human labels a round, pool {args.pool} scenes x 2 prompts x {args.samples} samples, "
        f"noise {args.noise}; held-out scenes {args.heldout}; means of {seeds} seed(s); base CHAIR_i "
        f"{base['chair_i']:.3f}, POPE F1 {base['pope_f1']:.3f}, {base['mean_words']:.1f} words"
    )
    print(
        f"{'arm':<24} {'round':>5} {'human':>6} {'pairs':>6} {'CHAIR_i':>13} {'vs base':>8} {'POPE F1':>8} "
        f"{'words':>6} {'cover':>13} {'minutes':>8}"
    )
    for name, rows in arms.items():
        for row in rows:
            change = (row["chair_i"] - base["chair_i"]) / base["chair_i"] if base["chair_i"] else 0.0
            chair = f"{row['chair_i']:.3f}" + (f" ±{row['chair_i_sd']:.3f}" if "chair_i_sd" in row else "")
            cover = f"{row['coverage']:.3f}" + (f" ±{row['coverage_sd']:.3f}" if "coverage_sd" in row else "")
            print(
                f"{name:<24} {row['round']:>5} {row['human_labels']:>6} {row['pairs']:>6.0f} {chair:>13} "
                f"{change:>+8.1%} {row['pope_f1']:>8.3f} {row['mean_words']:>6.1f} {cover:>13} "
                f"{row['annotator_minutes']:>8.1f}"
            )
    summary: dict[str, Any] = {}
    random_arms = [name for name in arms if name.split(":")[0] == "random"]
    if random_arms:
        target = arms[random_arms[0]][-1]["chair_i"]
        print(f"human labels to reach arm {random_arms[0]}'s final CHAIR_i ({target:.3f}):")
        for name, rows in arms.items():
            reached = next((row for row in rows if row["chair_i"] <= target), None)
            labels = reached["human_labels"] if reached else None
            summary[name] = {"labels_to_target": labels, "round": reached["round"] if reached else None}
            said = f"{labels} (round {reached['round']})" if reached else "not reached"
            print(f"  {name:<24} {said}")
        summary["target_chair_i"] = target

    def best_of(names: list[str]) -> dict[str, Any]:
        best = min(names, key=lambda name: arms[name][-1]["chair_i"])
        last = arms[best][-1]
        drop = (base["chair_i"] - last["chair_i"]) / base["chair_i"] if base["chair_i"] else 0.0
        return {"name": best, "chair_i_drop": drop, "coverage": last["coverage"], "pope_f1": last["pope_f1"]}

    summary["best_arm"] = best_of(list(arms))
    human = [name for name in arms if ":" in name]  # the arms with humans (named with their style)
    if human:
        summary["best_human_arm"] = best_of(human)
    for key in ("best_arm", "best_human_arm"):
        if key in summary:
            found = summary[key]
            print(
                f"{key.replace('_', ' ')}: {found['name']}, CHAIR_i {found['chair_i_drop']:.1%} below the base after "
                f"{args.rounds} rounds, coverage {found['coverage']:.3f} (base {base['coverage']:.3f})"
            )
    return summary


if __name__ == "__main__":
    main()
