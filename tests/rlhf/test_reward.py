"""The fact-augmented reward model: its input holds the facts only when augmenting, the
Bradley-Terry loss against a hand computation, and a tiny training run."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

from rlhf.config import ConfigError
from rlhf.reward import FACT_INSTRUCTION, RewardConfig, facts_text, reward_input
from tests.rlhf.conftest import small_reward_config


def test_bradley_terry_loss_matches_a_hand_computation() -> None:
    import torch

    from rlhf.reward import bradley_terry_loss

    chosen, rejected = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.5])
    # -log sigma(1) and -log sigma(-1), averaged.
    expected = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(1.0))) / 2
    assert math.isclose(float(bradley_terry_loss(chosen, rejected)), expected, rel_tol=1e-6)


def test_facts_text_and_config_checks() -> None:
    assert facts_text({"captions": ["A red ball.", " "], "objects": [{"cls": "ball"}]}) == "A red ball."
    assert facts_text({"objects": [{"cls": "ball"}, {"cls": "kite"}]}) == "Objects: ball, kite."
    assert facts_text({}) == ""
    assert facts_text({"captions": ["A red ball."], "classes": ["ball"]}, "objects") == "Objects: ball."
    with pytest.raises(ConfigError, match="ties"):
        RewardConfig(model="m", data=["d"], output_dir="o", ties="maybe")
    with pytest.raises(ConfigError, match="heldout_share"):
        RewardConfig(model="m", data=["d"], output_dir="o", heldout_share=1.0)


def test_the_reward_models_input_has_the_facts_only_when_augmenting(base_policy: Path, rankings: Path) -> None:
    from datasets import load_from_disk  # type: ignore[import-untyped]

    from rlhf.reward import encode, load_backbone

    _, processor = load_backbone(str(base_policy))
    row: dict[str, Any] = load_from_disk(str(rankings))[0]
    caption = json.loads(row["image_facts"])["captions"][0]
    on = processor.tokenizer.decode(encode(processor, [row], "chosen", "captions")["input_ids"][0])
    off = processor.tokenizer.decode(encode(processor, [row], "chosen", None)["input_ids"][0])
    # The response may itself repeat the caption (a policy that describes the scene well
    # does): what the facts add is one more copy of it, after the instruction.
    assert FACT_INSTRUCTION in on and FACT_INSTRUCTION not in off
    assert on.count(caption) == off.count(caption) + 1
    assert on.split(FACT_INSTRUCTION, 1)[1].count(caption) >= 1
    objects = processor.tokenizer.decode(encode(processor, [row], "chosen", "objects")["input_ids"][0])
    names = json.loads(row["image_facts"])["classes"]
    assert f"{FACT_INSTRUCTION} Objects: {', '.join(names)}." in objects
    assert objects.count(caption) == off.count(caption)
    assert reward_input(row["prompt"], {}, "captions") == row["prompt"]  # no facts: nothing added


def test_a_tiny_reward_model_learns_the_rankings(base_policy: Path, rankings: Path, tmp_path: Path) -> None:
    from rlhf.reward import train_reward_model

    config = small_reward_config(base_policy, rankings, tmp_path / "rm", epochs=8)
    result = train_reward_model(config, progress=False)
    assert result.last_loss < result.first_loss - 0.1, (result.first_loss, result.last_loss)
    assert 0.0 <= result.heldout_accuracy <= 1.0 and result.heldout_pairs > 0
    assert (tmp_path / "rm/adapter/adapter_config.json").is_file()
    saved = json.loads((tmp_path / "rm/result.json").read_text())
    assert saved["heldout_accuracy"] == result.heldout_accuracy


def test_a_released_reward_model_trains_on_the_released_input_and_scores_with_it(
    base_policy: Path, rankings: Path, tmp_path: Path
) -> None:
    """`released: true`: trained and read with LLaVA-RLHF's evaluation turn after the
    response; the saved model says so, and scoring builds the same input."""
    import dataclasses

    from PIL import Image

    from rlhf.reward import RELEASED, train_reward_model
    from rlhf.scoring import RewardModel

    # A few pairs suffice: the released input is long on the toy tokenizer (about 780 tokens).
    small = small_reward_config(base_policy, rankings, tmp_path / "rm", epochs=1)
    config = dataclasses.replace(small, released=True, max_pairs=16)
    result = train_reward_model(config, progress=False)
    assert result.first_loss == result.first_loss and result.heldout_pairs > 0  # trained, not NaN
    info = json.loads((tmp_path / "rm/adapter/factloop_reward.json").read_text())
    assert info["facts"] == RELEASED
    model = RewardModel(tmp_path / "rm")
    assert model.files.facts == RELEASED
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    image = Image.new("RGB", (32, 32))
    facts = {"captions": ["A red ball."], "classes": ["ball"]}
    scores = model.score([prompt, prompt], ["A red ball.", "A blue cube."], [image, image], [facts, facts])
    assert len(scores) == 2 and all(score == score for score in scores)


def test_the_reward_command_trains_and_registers_a_reward_version(
    base_policy: Path, rankings: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from models.registry import Registry
    from rlhf import cli
    from rlhf.scoring import locate_reward_model

    settings = {
        "model": base_policy,
        "data": rankings,
        "output_dir": tmp_path / "rm",
        "epochs": 0.2,
        "lora.r": 4,
        "fact_format": "objects",
        "threads": 1,
    }
    args = ["reward", *[x for k, v in settings.items() for x in ("--set", f"{k}={v}")]]
    assert cli.main([*args, "--register", "rm-1"]) == 2  # a name needs a registry
    assert "go together" in capsys.readouterr().err and not (tmp_path / "rm").exists()
    assert cli.main([*args, "--register", "rm-1", "--registry", str(tmp_path / "registry")]) == 0
    output = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    registry = Registry(tmp_path / "registry")
    version = registry.get("rm-1")
    assert output["registered"] == "rm-1" and version.kind == "reward"
    assert version.metrics["heldout_accuracy"] == output["heldout_accuracy"]
    files = locate_reward_model(registry.path_of("rm-1"))  # what PPO reads
    assert files.base_model == str(base_policy) and files.facts == "objects"
    assert cli.main([*args, "--register", "rm-1", "--registry", str(tmp_path / "registry")]) == 2
    assert "already registered" in capsys.readouterr().err


def test_the_reward_model_trains_in_bf16_with_checkpointing_and_resumes_a_killed_run(
    base_policy: Path, rankings: Path, tmp_path: Path
) -> None:
    """The reward model trains on transformers' Trainer: bf16 mixed precision, gradient
    checkpointing, a checkpoint every 2 updates, and a run stopped after 2 updates resumes
    from its checkpoint and finishes the schedule (the steps before it are not run again)."""
    from transformers import TrainerCallback

    from rlhf.reward import build_trainer, train_reward_model

    out = tmp_path / "rm"
    config = dataclasses.replace(
        small_reward_config(base_policy, rankings, out, epochs=1),
        dtype="bfloat16",
        gradient_checkpointing=True,
        save_steps=2,
        batch_size=4,
    )

    class StopAfterTwo(TrainerCallback):  # what a killed worker leaves: checkpoint-2
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step == 2:
                control.should_training_stop = True
            return control

    trainer, _, _ = build_trainer(config)
    assert trainer.args.bf16 and trainer.args.gradient_checkpointing
    trainer.add_callback(StopAfterTwo())
    trainer.train()
    total = trainer.state.max_steps
    assert (out / "checkpoint-2").is_dir() and total > 3 and not (out / "adapter").exists()
    del trainer

    result = train_reward_model(config, resume=True, progress=False)
    assert result.resumed_at == 2 and result.steps == total
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert 0.0 <= result.heldout_accuracy <= 1.0
