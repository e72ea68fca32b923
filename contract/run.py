"""The folder one training run works in (`train_round`'s FACTLOOP_TRAIN_DIR/round-N-run-M),
named once: the web app writes and reads it (annotation/loop/training.py), the trainers write
into it (rlhf/), and neither spells a file's name on its own.

    export/            the round's labels (contract/export.py's layout)
    reward/            the reward model (PPO, GRPO, RLOO): result.json, ADAPTER/
    train/             the trainer's output: result.json (contract/results.py), ADAPTER/
    heldout/           the held-out set evaluated on (contract/heldout.py's layout)
    eval-new.json      the new policy's evaluation (contract.heldout.Evaluation)
    eval-current.json  the current policy's
    gate.json          the gate's decision (contract.comparison.compare)
    evaluate.log       the evaluator's output
    train.log          the trainers'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

ADAPTER: Final = "adapter"  # a trainer's output folder holds its LoRA adapter here (policy or reward model)

Policy = Literal["new", "current"]
POLICIES: Final[tuple[Policy, ...]] = ("new", "current")  # the two a run evaluates and compares


@dataclass(frozen=True)
class RunFolder:
    root: Path

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def preflight(self) -> Path:
        """The preflight's report (rlhf.cli preflight --out)."""
        return self.root / "preflight.json"

    @property
    def reward(self) -> Path:
        return self.root / "reward"

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def adapter(self) -> Path:
        """The trained policy's LoRA adapter."""
        return self.train / ADAPTER

    @property
    def heldout(self) -> Path:
        return self.root / "heldout"

    def evaluation(self, policy: Policy) -> Path:
        return self.root / f"eval-{policy}.json"

    @property
    def gate(self) -> Path:
        return self.root / "gate.json"

    @property
    def evaluate_log(self) -> Path:
        return self.root / "evaluate.log"

    @property
    def train_log(self) -> Path:
        """The trainers' output (reward model and policy)."""
        return self.root / "train.log"
