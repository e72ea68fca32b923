"""What a trainer hands back: typed records written as `result.json` beside its outputs,
read back by `train_round` (and anyone else) as the same types, never as loose dicts."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from contract.methods import KL, REWARD

RESULT_FILE = "result.json"

T = TypeVar("T", bound="_Record")


class _Record:
    def as_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def write(self, folder: str | Path) -> None:
        """`folder/result.json`, written whole (a temporary file renamed): it is also the
        marker that the run finished."""
        path = Path(folder) / RESULT_FILE
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(self.as_dict(), indent=2) + "\n")
        partial.replace(path)

    @classmethod
    def read(cls: type[T], folder: str | Path) -> T:
        """The record in `folder/result.json`; keys it does not know are ignored (a newer
        writer), missing optional ones take their defaults."""
        data = json.loads((Path(folder) / RESULT_FILE).read_text())
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def exists(cls, folder: str | Path) -> bool:
        return (Path(folder) / RESULT_FILE).is_file()


@dataclass(frozen=True)
class RunResult(_Record):
    """A policy trainer's run (rlhf.cli dpo: DDPO/DPO; rlhf.cli rl: PPO/GRPO/RLOO)."""

    method: str
    output_dir: str
    adapter_dir: str | None
    steps: int
    seconds: float
    git_revision: str
    pairs: int | None = None  # preference pairs trained on (DDPO/DPO and the other pair methods)
    synthetic_pairs: int | None = None  # of which made by rlhf/synthetic.py (source "synthetic")
    prompts: int | None = None  # rollout prompts (PPO/GRPO/RLOO)
    train_loss: float | None = None
    first_loss: float | None = None
    last_loss: float | None = None
    first_reward: float | None = None  # mean reward of the first steps' rollouts
    last_reward: float | None = None  # ... and of the last steps'
    last_kl: float | None = None  # KL to the reference at the last step, nats per response
    config: dict[str, Any] = field(default_factory=dict)
    resumed_at: int = 0  # the checkpoint's step this run resumed from (0: a fresh run)

    def registry_metrics(self) -> dict[str, float]:
        """The training figures a registered version carries, under the keys the per-round
        plots read."""
        found = {REWARD: self.last_reward, KL: self.last_kl}
        return {key: value for key, value in found.items() if value is not None}


@dataclass(frozen=True)
class RewardResult(_Record):
    """A reward model's run (rlhf.cli reward)."""

    output_dir: str
    train_pairs: int
    heldout_pairs: int
    heldout_accuracy: float
    first_loss: float
    last_loss: float
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)
    # Pairwise accuracy on (up to 256 of) its training pairs before and after training: the
    # model learned what it was shown (None before, on a resumed run).
    train_accuracy_before: float | None = None
    train_accuracy: float | None = None
    steps: int = 0  # optimiser updates in all
    resumed_at: int = 0  # the checkpoint's step this run resumed from (0: a fresh run)
