"""The family matrix: every trainer, the server and the evaluator, run on a tiny checkpoint
of every image-text-to-text family FactLoop covers (testbed/family_checkpoints.py).

A row is a family; a cell is one capability, run for real for a step or two:

- loads: the policy loads through transformers' auto classes and answers one prompt;
- ddpo, dpo, mdpo, halva: DDPO, DPO, mDPO (corrupted images through the family's processor) and HALVA
  (full next-token distributions) steps on oracle pairs (rlhf/train_dpo.py);
- reward: the fact-augmented Bradley-Terry reward model (rlhf/reward.py);
- ppo, grpo, rloo: one online step against that reward model (rlhf/train_rl.py);
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

CELLS = ("loads", "ddpo", "dpo", "mdpo", "halva", "reward", "ppo", "grpo", "rloo", "vllm", "evaluation")


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
    return result, (f"{result.steps} steps, loss {result.first_loss:.3f} -> {result.last_loss:.3f}", figures)


def cell_ddpo(bench: Bench) -> Outcome:
    result, outcome = _dpo(bench, "ddpo", epochs=4)
    bench.adapter = Path(result.adapter_dir)
    return outcome


def cell_dpo(bench: Bench) -> Outcome:
    return _dpo(bench, "dpo", epochs=2)[1]


def cell_mdpo(bench: Bench) -> Outcome:
    """mDPO: its corrupted images go through the family's own processor."""
    return _dpo(bench, "mdpo", epochs=2)[1]


def cell_halva(bench: Bench) -> Outcome:
    """HALVA: full next-token distributions (the logits) for its KL term."""
    return _dpo(bench, "halva", epochs=2)[1]


def cell_reward(bench: Bench) -> str:
    from rlhf.reward import RewardConfig, train_reward_model

    out = bench.work / "reward"
    config = RewardConfig(
        model=str(bench.model),
        data=[str(bench.pairs)],
        output_dir=str(out),
        lora=_lora(),  # type: ignore[arg-type]
        learning_rate=1e-3,
        batch_size=4,
        heldout_share=0.25,
        logging_steps=1,
        threads=1,
    )
    result = train_reward_model(config, progress=False)
    bench.reward_model = out
    return f"{result.train_pairs} pairs, loss {result.first_loss:.3f} -> {result.last_loss:.3f}"


def _rl(bench: Bench, method: str) -> str:
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
        lora=_lora(),  # type: ignore[arg-type]
        steps=1,
        rollout_batch_size=2,
        minibatch_size=2,
        ppo_epochs=1,
        num_generations=2,
        max_new_tokens=6,
        max_prompts=4,
        threads=1,
    )
    result = train(config, report_to=[], progress=False)
    return f"reward {result.first_reward:.3f}" if result.first_reward is not None else "stepped"


def cell_ppo(bench: Bench) -> str:
    return _rl(bench, "ppo")


def cell_grpo(bench: Bench) -> str:
    return _rl(bench, "grpo")


def cell_rloo(bench: Bench) -> str:
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
    # The DDPO cell's adapter; where DDPO is refused or did not run, a random one.
    adapter = bench.adapter or random_adapter(bench.model, bench.work / "random-adapter", seed=0)
    return served_matches_transformers(bench.model, adapter, bench.heldout, python=bench.serving_python)


class SkipCell(Exception):
    """A cell this run does not attempt (the reason is the message)."""


CELL_RUNNERS: dict[str, Callable[[Bench], Outcome]] = {
    "loads": cell_loads,
    "ddpo": cell_ddpo,
    "dpo": cell_dpo,
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
    return Cell("ok", detail, time.perf_counter() - began, figures)


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
