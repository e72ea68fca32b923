"""Oracle-labelled data and a small reward model of the tiny policy, once per session."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from rlhf.config import load_config
from tests.conftest import PYTHON, REPO, clean_env


@pytest.fixture(scope="session")
def rankings(base_policy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `trl` export of oracle rankings of two sampled answers to a description and a
    question about each of 60 training scenes."""
    import torch

    from rlhf import toy_pairs
    from rlhf.common import load_policy
    from testbed.tiny import image_size_of

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


@pytest.fixture(scope="session")
def oracle_export(base_policy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Oracle corrections and rankings of the tiny base policy's descriptions, as a `trl` export."""
    import torch

    from rlhf import toy_pairs
    from rlhf.common import load_policy
    from testbed.tiny import image_size_of

    torch.set_num_threads(1)
    model, processor = load_policy(str(base_policy))
    scenes = toy_pairs.training_scenes(24)
    responses = toy_pairs.sample_responses(model, processor, scenes, per_prompt=2, questions=False, temperature=0.7)
    pairs = toy_pairs.oracle_pairs(responses)
    rankings = toy_pairs.oracle_rankings(
        [(a[0], a[1], a[2], b[2]) for a, b in zip(responses[::2], responses[1::2], strict=True)]
    )
    assert len(pairs) >= 8 and rankings
    out = tmp_path_factory.mktemp("oracle") / "export"
    toy_pairs.write_export(pairs[:16] + rankings[:4], out, image_size=image_size_of(processor))
    return out


def dpo_config(base_policy: Path, data: Path, out: Path, *overrides: str) -> Any:
    """The tests' DDPO/DPO-family config: LoRA r 8 without dropout, 4 pairs a step, one thread."""
    return load_config(
        None,
        ["lora.r=8", "lora.dropout=0", "batch_size=4", "threads=1", "logging_steps=1", *overrides],
        model=str(base_policy),
        data=[str(data)],
        output_dir=str(out),
    )


def randomise_adapter(model: Any, seed: int = 0) -> None:
    """peft starts B at zero (policy = reference); random factors make them differ."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)


def pair_batch(trainer: Any, n: int = 4) -> dict[str, Any]:
    """A collated batch of the trainer's pairs."""
    # Two corrections whose corrected side changed something (a pure deletion changes only
    # the original), then a ranking from the end (the export puts them last).
    data = trainer.train_dataset
    edited = [
        i
        for i in range(len(data))
        if data[i]["source"] == "correction" and any(end > start for start, end in data[i]["chosen_spans"])
    ][:2]
    rows = [data[i] for i in edited] + [data[len(data) - 1]]
    return dict(trainer.data_collator(rows[:n]))


def hand_sequence_scores(model: Any, batch: dict[str, Any], *, weighted: bool = True) -> Any:
    """s(y|x) by hand: logits -> log-softmax -> the next token's log-prob, times the weights
    (`token_scale`; 1 without `weighted`), summed over the response."""
    import torch

    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"]
        ).logits
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = batch["input_ids"][:, 1:]
    token = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    scale = batch["token_scale"][:, 1:] if weighted else 1.0
    return (token * scale * batch["completion_mask"][:, 1:]).sum(dim=1)


def rlhf_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """`python -m rlhf.cli ARGS` in a clean environment, one thread."""
    return subprocess.run(
        [PYTHON, "-m", "rlhf.cli", *args],
        cwd=REPO,
        env=clean_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
