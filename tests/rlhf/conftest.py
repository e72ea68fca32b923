"""Oracle-labelled data and a small reward model of the tiny policy, once per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def rankings(base_policy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `trl` export of oracle rankings of two sampled answers to a description and a
    question about each of 60 training scenes."""
    import torch

    from models.tiny import image_size_of
    from rlhf import toy_pairs
    from rlhf.common import load_policy

    torch.set_num_threads(1)
    model, processor = load_policy(str(base_policy))
    responses = toy_pairs.sample_responses(
        model, processor, toy_pairs.training_scenes(60), per_prompt=2, questions=True, temperature=1.0
    )
    pairs = toy_pairs.oracle_rankings(
        [(a[0], a[1], a[2], b[2]) for a, b in zip(responses[::2], responses[1::2], strict=True)]
    )
    assert len(pairs) >= 30
    out = tmp_path_factory.mktemp("rankings") / "export"
    toy_pairs.write_export(pairs, out, image_size=image_size_of(processor))
    return out


@pytest.fixture(scope="session")
def reward_model(base_policy: Path, rankings: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reward model trained briefly on the rankings (fact-augmented): enough to score."""
    from rlhf.reward import train_reward_model

    out = tmp_path_factory.mktemp("reward") / "rm"
    config = small_reward_config(base_policy, rankings, out, epochs=2)
    train_reward_model(config, progress=False)
    return out


def small_reward_config(base_policy: Path, rankings: Path, out: Path, *, epochs: int) -> Any:
    """The tests' reward model: LoRA r 8, learning rate 1e-3, a quarter of the pairs held out."""
    from rlhf.reward import RewardConfig

    return RewardConfig(
        model=str(base_policy),
        data=[str(rankings)],
        output_dir=str(out),
        lora={"r": 8, "alpha": 16, "dropout": 0.0},  # type: ignore[arg-type]
        learning_rate=1e-3,
        epochs=epochs,
        batch_size=8,
        heldout_share=0.25,
        threads=1,
    )
