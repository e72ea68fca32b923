"""The family matrix: every trainer, the server and the evaluator, run on a tiny checkpoint
of every image-text-to-text family FactLoop covers (testbed/family_checkpoints.py).

A row is a family; a cell is one capability, run for real for a step or two:

- loads: the policy loads through transformers' auto classes and answers one prompt;
- ddpo, dpo, sft, mdpo, halva: DDPO, DPO, SFT, mDPO (corrupted images through the family's
  processor) and HALVA (full next-token distributions) over the same two oracle pairs for a few
  steps (rlhf/train_dpo.py): the training loss falls;
- reward: the fact-augmented Bradley-Terry reward model (rlhf/reward.py) for a few epochs on eight
  pairs: its loss falls and its accuracy on those pairs rises;
- ppo, grpo, rloo: a few online steps (rlhf/train_rl.py) scored by a reward a tiny random policy
  can learn in that time (`OpensWithALetter`; the reward model's score of random text carries too
  little signal to learn from in a few steps), with PPO's critic started from the reward cell's
  model: the mean reward of responses sampled with a fixed seed rises;
- vllm: vLLM serves the checkpoint, hot-loads the DDPO adapter (a random one where DDPO is
  refused), and its greedy token ids equal transformers' with the adapter merged
  (rlhf/serving_check.py; only with a serving venv: `--vllm`);
- evaluation: the held-out evaluator on a few synthetic scenes (rlhf/hallucination.py).

A cell passes, or is refused with its documented reason (contract/family_gaps.py: a gap in a
library FactLoop builds on, stated where the user meets it: `rlhf.common.require` raises it
before any model loads), or fails (a crash: what the tests catch). `python -m rlhf.cli families` prints the table
docs/families.md shows.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlhf.common import require
from rlhf.config import ConfigError

CELLS = ("loads", "ddpo", "dpo", "sft", "mdpo", "halva", "reward", "ppo", "grpo", "rloo", "vllm", "evaluation")

# What each cell asserts of its figures (tests/rlhf/test_families.py checks them on every row;
# docs/families.md prints them): a pair method's loss falls, the reward model's loss falls and
# its accuracy on its training pairs rises, an RL method's yardstick reward rises.
PAIR_CELLS = ("ddpo", "dpo", "sft", "mdpo", "halva")
RL_CELLS = ("ppo", "grpo", "rloo")


def learned(cell: str, figures: dict[str, float]) -> str | None:
    """Why a passing cell's figures show no learning, or None when they show it."""
    needed = {"steps", "first_loss", "last_loss"} if cell in PAIR_CELLS else set()
    needed |= {"first_loss", "last_loss", "accuracy_before", "accuracy"} if cell == "reward" else set()
    needed |= {"reward_before", "reward"} if cell in RL_CELLS else set()
    if missing := sorted(needed - set(figures)):
        return f"no figures to show it learned ({', '.join(missing)})"
    if cell in PAIR_CELLS and not (figures["steps"] >= 3 and figures["last_loss"] < figures["first_loss"]):
        return f"the loss did not fall over its steps: {figures}"
    if cell == "reward" and not (
        figures["last_loss"] < figures["first_loss"] and figures["accuracy"] > figures["accuracy_before"]
    ):
        return f"the reward model did not learn its pairs: {figures}"
    if cell in RL_CELLS and not figures["reward"] > figures["reward_before"]:
        return f"the sampled reward did not rise: {figures}"
    return None


@dataclass
class Cell:
    status: str  # ok, refused, failed, skipped
    detail: str = ""
    seconds: float = 0.0
    figures: dict[str, float] = field(default_factory=dict)


@dataclass
class Row:
    family: str
    model_type: str
    cells: dict[str, Cell]

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "model_type": self.model_type,
            "cells": {k: asdict(v) for k, v in self.cells.items()},
        }


# ---------------------------------------------------------------------------------------
# The data every row trains on


def write_pairs(out: Path, *, scenes: int = 12, seed: int = 0) -> Path:
    """A `trl` export of oracle corrections and rankings of the synthetic world's responses
    to a description and a question per scene (no model needed: the world's own response
    sampler, with a known error rate)."""
    import random

    from rlhf.toy_pairs import oracle_pairs, oracle_rankings, training_scenes, write_export
    from testbed.toyworld.world import make_question, sampled_responses

    rng = random.Random(seed)
    corrections, rankings = [], []
    for scene in training_scenes(scenes):
        for kind in ("describe", "exist"):
            question = make_question(rng, scene, kind)
            if question is None:
                continue
            first, second = sampled_responses(rng, scene, question, 2, error_rate=0.7)
            corrections.append((scene, question.text, first))
            rankings.append((scene, question.text, first, second))
    pairs = oracle_pairs(corrections, seed=seed) + oracle_rankings(rankings, seed=seed)
    write_export(pairs, out, image_size=96)
    return out


# ---------------------------------------------------------------------------------------
# The cells


@dataclass
class Bench:
    """What a row's cells share: the checkpoint, the data, a work folder, and what earlier
    cells produced (the DDPO adapter, the reward model)."""

    model: Path
    pairs: Path
    heldout: Path
    work: Path
    serving_python: str | None = None
    adapter: Path | None = None
    reward_model: Path | None = None


def _lora() -> dict[str, Any]:
    return {"r": 8, "alpha": 16, "dropout": 0.0}


def cell_loads(bench: Bench) -> str:
    from contract.heldout import read_heldout
    from rlhf.common import load_policy
    from rlhf.hallucination import LocalResponder, Request

    model, processor = load_policy(str(bench.model))
    heldout = read_heldout(bench.heldout)
    request = Request(heldout.image_bytes(heldout.items[0]), heldout.items[0].prompt)
    answer = LocalResponder(model, processor, max_tokens=4).answer([request])
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; answered {len(answer[0])} chars"


Outcome = str | tuple[str, dict[str, Any]]  # what a cell says, and its figures


def _dpo(bench: Bench, method: str, epochs: float) -> tuple[Any, tuple[str, dict[str, Any]]]:
    from rlhf.config import DPOTrainConfig
    from rlhf.train_dpo import train

    config = DPOTrainConfig(
        model=str(bench.model),
        data=[str(bench.pairs)],
        output_dir=str(bench.work / method),
        method=method,
        lora=_lora(),  # type: ignore[arg-type]
        learning_rate=1e-2,
        epochs=epochs,
        batch_size=2,
        max_pairs=2,  # every step on the same two pairs: the loss must fall
        logging_steps=1,
        threads=1,
    )
    result = train(config, report_to=[])
    figures = {"steps": result.steps, "first_loss": result.first_loss, "last_loss": result.last_loss}
    return result, (f"{result.steps} steps, loss {result.first_loss:.3g} -> {result.last_loss:.3g}", figures)


def cell_ddpo(bench: Bench) -> Outcome:
    result, outcome = _dpo(bench, "ddpo", epochs=4)
    bench.adapter = Path(result.adapter_dir)
    return outcome


def cell_dpo(bench: Bench) -> Outcome:
    return _dpo(bench, "dpo", epochs=3)[1]


def cell_sft(bench: Bench) -> Outcome:
    """SFT on the corrected responses (trl's fused head, as DPO)."""
    return _dpo(bench, "sft", epochs=3)[1]


def cell_mdpo(bench: Bench) -> Outcome:
    """mDPO: its corrupted images go through the family's own processor."""
    return _dpo(bench, "mdpo", epochs=3)[1]


def cell_halva(bench: Bench) -> Outcome:
    """HALVA: full next-token distributions (the logits) for its KL term."""
    return _dpo(bench, "halva", epochs=3)[1]


def cell_reward(bench: Bench) -> Outcome:
    from rlhf.reward import RewardConfig, train_reward_model

    out = bench.work / "reward"
    config = RewardConfig(
        model=str(bench.model),
        data=[str(bench.pairs)],
        output_dir=str(out),
        lora=_lora(),  # type: ignore[arg-type]
        learning_rate=1e-2,
        epochs=8,
        batch_size=4,
        max_pairs=8,  # the same eight pairs every epoch: the model must learn them
        heldout_share=0.25,
        logging_steps=1,
        threads=1,
    )
    result = train_reward_model(config, progress=False)
    bench.reward_model = out
    figures = {
        "steps": result.steps,
        "first_loss": result.first_loss,
        "last_loss": result.last_loss,
        "accuracy_before": result.train_accuracy_before or 0.0,
        "accuracy": result.train_accuracy or 0.0,
    }
    detail = (
        f"{result.train_pairs} pairs, {result.steps} steps, loss {result.first_loss:.3f} -> {result.last_loss:.3f}, "
        f"accuracy {figures['accuracy_before']:.2f} -> {figures['accuracy']:.2f}"
    )
    return detail, figures


class OpensWithALetter:
    """A reward a tiny random policy can learn in a few steps: 1 when a response opens with
    an ASCII letter (a word), else 0. A tiny random model's vocabulary is mostly single bytes
    that decode to no letter, and every response's first token follows the same context
    ("ASSISTANT:"), so a few policy-gradient steps move its first token's distribution
    consistently; the reward model's score of a random policy's text, or a share over all
    its tokens, gives too noisy a signal for a dozen steps."""

    processor: Any = None  # the policy's (RewardFunction's interface); the text is enough

    def score(
        self,
        prompts: Sequence[list[dict[str, Any]]],
        responses: Sequence[str],
        images: Sequence[Any],
        facts: Sequence[dict[str, Any]],
    ) -> list[float]:
        return [float(bool(text) and text[0].isascii() and text[0].isalpha()) for text in responses]


def learnable_reward(processor: Any) -> Any:
    from rlhf.scoring import RewardFunction, SymbolicTerms

    scorer = OpensWithALetter()
    scorer.processor = processor
    # Scaled well above the noise of PPO's critic, which starts from an unrelated reward model.
    return RewardFunction(scorer, SymbolicTerms(0.0, 0, 0.0, 0.0, 0.0), reward_scale=RL_REWARD_SCALE)


def yardstick(bench: Bench, config: Any, adapter: Path | None) -> float:
    """The mean OpensWithALetter reward of the policy (with `adapter`) on the run's prompts,
    sixteen responses each, sampled with a fixed seed: the same draw before and after."""
    import torch

    from rlhf.common import load_policy
    from rlhf.train_rl import sample, stop_ids
    from rlhf.training_data import load_prompts

    model, processor = load_policy(str(bench.model), adapter=adapter)
    rows = load_prompts(config.data, max_prompts=config.max_prompts)
    rows = [row for row in rows for _ in range(16)]
    torch.manual_seed(0)
    rollout = sample(model, processor, rows, config, stop_ids(model, processor), "cpu")
    scores = OpensWithALetter().score([], rollout.texts, [], [])
    return sum(scores) / len(scores)


def _rl(bench: Bench, method: str) -> Outcome:
    from rlhf.common import load_processor
    from rlhf.config import RLTrainConfig
    from rlhf.train_rl import train

    if bench.reward_model is None:
        raise SkipCell("no reward model (its cell did not pass)")
    config = RLTrainConfig(
        model=str(bench.model),
        reward_model=str(bench.reward_model),
        data=[str(bench.pairs)],
        output_dir=str(bench.work / method),
        method=method,
        # A tiny random model's LM head (initialised at std 0.02) keeps its outputs near
        # uniform whatever its adapters do to its features: it trains too, as a user may
        # ask (`lora.modules_to_save`), so the policy can move what it says.
        lora=_lora() | {"modules_to_save": ["lm_head"]},  # type: ignore[arg-type]
        learning_rate=RL_LEARNING_RATE,
        # No KL term: once a group's samples all earn the same reward their advantages vanish,
        # and Adam would scale the KL term's small gradient up to full steps back to the
        # reference (the cell checks the reward's signal reaches the policy).
        kl_coef=0.0,
        steps=RL_STEPS,
        rollout_batch_size=16,
        minibatch_size=16,
        ppo_epochs=2,
        num_generations=RL_GENERATIONS,
        # A tiny random model's next-token distribution is near uniform over its vocabulary:
        # sampled cooler, a few tokens lead in each context, so a dozen steps' samples cover
        # them and learn which to prefer.
        temperature=RL_TEMPERATURE,
        max_new_tokens=8,
        max_prompts=4,
        threads=1,
    )
    before = yardstick(bench, config, None)
    result = train(config, report_to=[], progress=False, reward=learnable_reward(load_processor(str(bench.model))))
    after = yardstick(bench, config, Path(result.adapter_dir or ""))
    figures = {"steps": float(result.steps), "reward_before": before, "reward": after}
    return f"{result.steps} steps, reward {before:.3f} -> {after:.3f}", figures


RL_STEPS = 12
RL_TEMPERATURE = 0.25
RL_REWARD_SCALE = 5.0
RL_GENERATIONS = 4
RL_LEARNING_RATE = 1e-2


def cell_ppo(bench: Bench) -> Outcome:
    return _rl(bench, "ppo")


def cell_grpo(bench: Bench) -> Outcome:
    return _rl(bench, "grpo")


def cell_rloo(bench: Bench) -> Outcome:
    return _rl(bench, "rloo")


def cell_evaluation(bench: Bench) -> str:
    from contract.heldout import read_heldout
    from rlhf.common import load_policy
    from rlhf.hallucination import LocalResponder, evaluate

    model, processor = load_policy(str(bench.model))
    evaluation = evaluate(read_heldout(bench.heldout), LocalResponder(model, processor, max_tokens=8), bootstrap=20)
    return f"CHAIR_i {evaluation.metrics['chair_i']:.2f}, POPE F1 {evaluation.metrics['pope_f1']:.2f}"


def cell_vllm(bench: Bench) -> str:
    from rlhf.serving_check import random_adapter, served_matches_transformers

    if bench.serving_python is None:
        raise SkipCell("no serving venv (--vllm)")
    # A family the gaps table does not list is probed, never assumed to be served (as the
    # preflight and register_model do).
    from models.server import probe_architecture, unserved_reason
    from rlhf.common import model_type_of

    reason = unserved_reason(probe_architecture(bench.model, bench.serving_python))
    if reason is not None:
        raise ConfigError(f"vllm is not available for {model_type_of(bench.model)} models: {reason}")
    # The DDPO cell's adapter; where DDPO is refused or did not run, a random one.
    adapter = bench.adapter or random_adapter(bench.model, bench.work / "random-adapter", seed=0)
    return served_matches_transformers(bench.model, adapter, bench.heldout, python=bench.serving_python)


class SkipCell(Exception):
    """A cell this run does not attempt (the reason is the message)."""


CELL_RUNNERS: dict[str, Callable[[Bench], Outcome]] = {
    "loads": cell_loads,
    "ddpo": cell_ddpo,
    "dpo": cell_dpo,
    "sft": cell_sft,
    "mdpo": cell_mdpo,
    "halva": cell_halva,
    "reward": cell_reward,
    "ppo": cell_ppo,
    "grpo": cell_grpo,
    "rloo": cell_rloo,
    "vllm": cell_vllm,
    "evaluation": cell_evaluation,
}


def run_cell(name: str, bench: Bench, model_type: str) -> Cell:
    began = time.perf_counter()
    try:
        require(bench.model, name)  # a documented gap is refused before anything loads
        outcome = CELL_RUNNERS[name](bench)
    except SkipCell as skipped:
        return Cell("skipped", str(skipped))
    except ConfigError as refused:
        return Cell("refused", str(refused), time.perf_counter() - began)
    except Exception as error:  # noqa: BLE001 - a crash is the cell's result; the row goes on
        last = traceback.extract_tb(error.__traceback__)[-1]
        where = f"{Path(last.filename).name}:{last.lineno}"
        return Cell("failed", f"{type(error).__name__}: {str(error)[:300]} ({where})", time.perf_counter() - began)
    detail, figures = outcome if isinstance(outcome, tuple) else (outcome, {})
    seconds = time.perf_counter() - began
    # A "yes" means the step did what it exists for, not only that it ran.
    unlearned = learned(name, figures)
    if unlearned is not None:
        return Cell("failed", f"{detail}; {unlearned}", seconds, figures)
    return Cell("ok", detail, seconds, figures)


def run_row(
    name: str,
    work: Path,
    *,
    pairs: Path,
    heldout: Path,
    cells: Sequence[str] = CELLS,
    serving_python: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Row:
    """Build family `name`'s tiny checkpoint under `work` and run `cells` on it in order."""
    from testbed.family_checkpoints import build, family

    item = family(name)
    bench = Bench(
        model=build(item.model_type, work / "checkpoint"),
        pairs=pairs,
        heldout=heldout,
        work=work,
        serving_python=serving_python,
    )
    row = Row(item.name, item.model_type, {})
    for cell in cells:
        row.cells[cell] = run_cell(cell, bench, item.model_type)
        if progress:
            progress(f"{item.name} {cell}: {row.cells[cell].status} {row.cells[cell].detail}")
    return row


def markdown(rows: Sequence[Row], cells: Sequence[str] = CELLS) -> str:
    """The matrix as a Markdown table: a mark per cell, each refusal's or failure's reason
    once below it (cells with the same reason share its number)."""
    marks = {"ok": "yes", "refused": "refused", "failed": "FAILS", "skipped": "-"}
    lines = [
        "| Family | model type | " + " | ".join(cells) + " |",
        "|---|---|" + "---|" * len(cells),
    ]
    notes: dict[str, int] = {}
    for row in rows:
        marked = []
        for cell in cells:
            value = row.cells.get(cell)
            mark = marks[value.status] if value else "-"
            if value and value.status in ("refused", "failed"):
                reason = value.detail.split(" models: ", 1)[-1] if value.status == "refused" else value.detail
                number = notes.setdefault(f"{row.family}: {reason}", len(notes) + 1)
                mark += f" [{number}]"
            marked.append(mark)
        lines.append(f"| {row.family} | `{row.model_type}` | " + " | ".join(marked) + " |")
    if notes:
        lines += ["", *[f"- [{number}] {note}" for note, number in notes.items()]]
    from testbed.family_checkpoints import UNCOVERED

    lines += ["", *[f"- Not covered: {name}. {reason}" for name, reason in UNCOVERED.items()]]
    return "\n".join(lines)
