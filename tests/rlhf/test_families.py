"""The family matrix on the tiny checkpoints (testbed/family_checkpoints.py, rlhf/family_matrix.py): every
cell of every family passes, or is refused with its documented reason, and each documented
refusal is still needed (with it lifted, the library really fails). A cell passes only when
its step did what it exists for (`family_matrix.learned`): every pair method's loss falls,
the reward model's loss falls and its accuracy on its pairs rises, every RL method's
sampled reward rises. vLLM's cell is tested apart (tests/models/test_vllm_families.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from contract.family_gaps import REFUSALS
from rlhf import family_matrix as families
from rlhf import prefix
from testbed.family_checkpoints import FAMILIES

CELLS = [cell for cell in families.CELLS if cell != "vllm"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The oracle pairs and the held-out scenes every row uses."""
    import torch

    from testbed.toyworld.render import write_heldout_set

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("families")
    return families.write_pairs(root / "pairs"), write_heldout_set(root / "heldout", 3)


@pytest.mark.parametrize("name", [f.model_type for f in FAMILIES])
def test_every_cell_passes_or_is_a_documented_refusal(
    name: str, shared: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pairs, heldout = shared
    row = families.run_row(name, tmp_path / "row", pairs=pairs, heldout=heldout, cells=CELLS)
    assert list(row.cells) == CELLS
    refused = []
    for cell, value in row.cells.items():
        documented = REFUSALS.get((name, cell))
        if documented is None:
            assert value.status == "ok", f"{name} {cell}: {value.status} {value.detail}"
        else:
            assert value.status == "refused" and documented in value.detail, f"{name} {cell}: {value.detail}"
            refused.append(cell)
    for cell, value in row.cells.items():
        if value.status == "ok" and cell not in ("loads", "evaluation"):
            assert families.learned(cell, value.figures) is None, (name, cell, value.figures)
    # Each refusal is still needed: lifted, the library fails (a crash the refusal spares the user).
    for cell in refused:
        monkeypatch.delitem(REFUSALS, (name, cell))
        bench = families.Bench(
            model=tmp_path / "row" / "checkpoint",
            pairs=pairs,
            heldout=heldout,
            work=tmp_path / f"lifted-{cell}",
            reward_model=tmp_path / "row" / "reward",
        )
        lifted = families.run_cell(cell, bench, name)
        assert lifted.status == "failed", f"{name} {cell} works without its refusal: lift it ({lifted.detail})"


def test_a_trainer_refuses_a_documented_gap_before_loading_anything(tmp_path: Path) -> None:
    """What the user meets: `rlhf.cli dpo` on a BLIP-2 checkpoint says why, with exit code 2."""
    import json
    import subprocess
    import sys

    from testbed.family_checkpoints import build

    checkpoint = build("blip-2", tmp_path / "blip2")
    config = tmp_path / "run.yaml"
    config.write_text(
        json.dumps({"model": str(checkpoint), "data": [str(tmp_path / "none")], "output_dir": str(tmp_path / "out")})
    )
    done = subprocess.run(
        [sys.executable, "-m", "rlhf.cli", "dpo", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert not (tmp_path / "out").exists()  # nothing written
    assert "ddpo is not available for blip-2 models: trl 1.16's DPO, GRPO and RLOO (and FactLoop's" in done.stderr


def test_the_table_names_every_refusal_once_and_every_uncovered_family() -> None:
    no_way = "is not available for a models: no way"
    rows = [
        families.Row(
            "A",
            "a",
            {
                "loads": families.Cell("ok"),
                "ddpo": families.Cell("refused", f"ddpo {no_way}"),
                "dpo": families.Cell("refused", f"dpo {no_way}"),
            },
        ),
        families.Row(
            "B",
            "b",
            {"loads": families.Cell("failed", "boom"), "ddpo": families.Cell("skipped"), "dpo": families.Cell("ok")},
        ),
    ]
    table = families.markdown(rows, ["loads", "ddpo", "dpo"])
    assert "| A | `a` | yes | refused [1] | refused [1] |" in table
    assert "| B | `b` | FAILS [2] | - | yes |" in table
    assert "- [1] A: no way" in table and "- [2] B: boom" in table and "[3]" not in table
    assert "Not covered: Fuyu." in table  # with its reason


@pytest.mark.parametrize("name", [f.model_type for f in FAMILIES])
def test_rollouts_carry_every_processor_output_and_score_what_was_sampled(
    name: str, shared: tuple[Path, Path], tmp_path: Path
) -> None:
    """PPO's rollouts keep what the family's forward needs (image sizes, grids, patch masks,
    token types, the Q-Former's text), so the log-probs of the forward pass PPO learns from
    are those generate() sampled from; and a row picked out of the batch (Qwen's flat patch
    list included) scores as it did in the batch."""
    import torch

    from rlhf.config import RLTrainConfig
    from rlhf.train_rl import gather_logprobs, load_trainable_policy, response_logits, sample, stop_ids
    from rlhf.training_data import load_prompts
    from testbed.family_checkpoints import build

    pairs, _ = shared
    config = RLTrainConfig(
        model=str(build(name, tmp_path / "checkpoint")),
        reward_model="unused",
        data=[str(pairs)],
        output_dir=str(tmp_path / "run"),
        temperature=0.7,
        max_new_tokens=6,
    )
    model, processor = load_trainable_policy(config)
    rows = [load_prompts(config.data)[i] for i in range(3)]
    rollout = sample(model, processor, rows, config, stop_ids(model, processor), "cpu", keep_scores=True)
    with torch.no_grad():
        logits = response_logits(model, rollout.inputs, rollout.prompt_width, config.temperature, rollout.suppressed)
        forward = gather_logprobs(logits, rollout.response_ids) * rollout.mask
        picked = rollout.rows(torch.tensor([2, 0]))
        alone = gather_logprobs(
            response_logits(model, picked, rollout.prompt_width, config.temperature, rollout.suppressed),
            rollout.response_ids[[2, 0]],
        )
    assert torch.allclose(forward, rollout.sampled_logprobs, atol=1e-4), (
        (forward - rollout.sampled_logprobs).abs().max()
    )
    assert torch.allclose(alone * rollout.mask[[2, 0]], forward[[2, 0]], atol=1e-4)


def test_sampling_never_emits_the_processors_placeholders(shared: tuple[Path, Path], tmp_path: Path) -> None:
    """A policy that would say `<|image_pad|>` (its logit raised by a hook) never samples it:
    the processor's special tokens in the prompt, bar the stop tokens, are suppressed in
    generate() and scored as suppressed, so the next forward pass finds as many image tokens
    as features and PPO's log-probs are those sampled from. Without the suppression the
    hooked policy says it at once (the control)."""
    import torch

    from rlhf.config import RLTrainConfig
    from rlhf.train_rl import gather_logprobs, load_trainable_policy, response_logits, sample, stop_ids
    from rlhf.training_data import load_prompts
    from testbed.family_checkpoints import build

    pairs, _ = shared
    config = RLTrainConfig(
        model=str(build("qwen2_vl", tmp_path / "checkpoint")),
        reward_model="unused",
        data=[str(pairs)],
        output_dir=str(tmp_path / "run"),
        max_new_tokens=6,
    )
    model, processor = load_trainable_policy(config)
    tokenizer = processor.tokenizer
    image = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    head = model.get_output_embeddings()

    def favour_the_placeholder(module: Any, args: Any, output: Any) -> Any:
        output[..., image] += 50.0
        return output

    rows = [load_prompts(config.data)[i] for i in range(3)]
    stops = stop_ids(model, processor)
    handle = head.register_forward_hook(favour_the_placeholder)
    try:
        rollout = sample(model, processor, rows, config, stops, "cpu", keep_scores=True)
        prompt = {k: v for k, v in rollout.inputs.items() if k not in ("input_ids", "attention_mask")}
        control = model.generate(
            input_ids=rollout.inputs["input_ids"][:, : rollout.prompt_width],
            attention_mask=rollout.inputs["attention_mask"][:, : rollout.prompt_width],
            **{k: v for k, v in prompt.items() if k in ("pixel_values", "image_grid_thw")},
            max_new_tokens=2,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        with torch.no_grad():
            logits = response_logits(model, rollout.inputs, rollout.prompt_width, 1.0, rollout.suppressed)
    finally:
        handle.remove()
    assert image in rollout.suppressed and tokenizer.pad_token_id in rollout.suppressed
    assert tokenizer.convert_tokens_to_ids("<|vision_start|>") in rollout.suppressed
    assert not set(stops) & set(rollout.suppressed)
    assert (control[:, rollout.prompt_width :] == image).all()  # the hook works: unsuppressed, it says it
    assert not (rollout.response_ids == image).any()
    forward = gather_logprobs(logits, rollout.response_ids) * rollout.mask
    assert torch.allclose(forward, rollout.sampled_logprobs, atol=1e-4)


def _paths_agree(build_trainer: Any, batch_of: Any, run: Any, entry: str) -> tuple[bool, float, float, float]:
    """Build the trainer with share_prefix off, then on, with the same random adapter, run
    one batch through each and answer: whether the shared path ran (only when on), the
    largest difference of the outputs, of the gradients, and the gradients' scale."""
    import torch

    import rlhf.prefix as prefix

    results = {}
    for share in (False, True):
        trainer = build_trainer(share)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():  # peft starts B at zero: random factors exercise LoRA's path
            for name, parameter in trainer.model.named_parameters():
                if "lora_" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
        trainer.model.train()
        batch = batch_of(trainer)
        used: list[bool] = []
        real = getattr(prefix, entry)

        def counting(*args: Any, real: Any = real, used: list[bool] = used, **kwargs: Any) -> Any:
            answer = real(*args, **kwargs)
            used.append(answer is not None)
            return answer

        setattr(prefix, entry, counting)
        try:
            output = run(trainer, batch)
        finally:
            setattr(prefix, entry, real)
        output.sum().backward() if output.dim() else output.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        results[share] = (output.detach(), grads, used)
    (plain, plain_grads, plain_used), (shared, shared_grads, shared_used) = results[False], results[True]
    assert not plain_used and plain_grads.keys() == shared_grads.keys() and plain_grads
    ran = bool(shared_used) and all(shared_used)
    scale = max(g.abs().max().item() for g in plain_grads.values())
    worst = max((plain_grads[n] - shared_grads[n]).abs().max().item() for n in plain_grads)
    return ran, float((plain - shared).abs().max()), worst, scale


@pytest.mark.parametrize("name", sorted(prefix.SUPPORTED | prefix.REWARD_SUPPORTED))
def test_one_prefix_pass_per_pair_equals_the_plain_path(name: str, shared: tuple[Path, Path], tmp_path: Path) -> None:
    """rlhf/prefix.py on each family it claims: DPO's loss and gradients equal trl's own
    path, and the reward model's rewards and gradients the plain forward's, to float
    rounding, with the shared path taken (LLaVA's DDPO, and its tower run once, in
    tests/rlhf/test_ddpo.py)."""
    from rlhf.config import load_config
    from rlhf.reward import RewardConfig
    from rlhf.reward import build_trainer as reward_trainer
    from rlhf.train_dpo import build_trainer as dpo_trainer
    from testbed.family_checkpoints import build

    pairs, _ = shared
    checkpoint = build(name, tmp_path / "checkpoint")
    if name in prefix.SUPPORTED:

        def dpo(share: bool) -> Any:
            settings = ["lora.r=8", "lora.dropout=0", "batch_size=4", "threads=1", "method=dpo"]
            config = load_config(
                None,
                [*settings, f"share_prefix={str(share).lower()}"],
                model=str(checkpoint),
                data=[str(pairs)],
                output_dir=str(tmp_path / f"dpo-{share}"),
            )
            return dpo_trainer(config, report_to=[])

        ran, loss_gap, worst, scale = _paths_agree(
            dpo,
            lambda trainer: dict(trainer.data_collator([trainer.train_dataset[i] for i in range(3)])),
            lambda trainer, batch: trainer._compute_loss(trainer.model, batch, return_outputs=False),
            "shared_prefix_hidden",
        )
        assert ran and loss_gap < 1e-5 and worst <= 1e-4 * scale, (name, ran, loss_gap, worst, scale)
    if name in prefix.REWARD_SUPPORTED:

        def reward(share: bool) -> Any:
            config = RewardConfig(
                model=str(checkpoint),
                data=[str(pairs)],
                output_dir=str(tmp_path / f"rm-{share}"),
                lora={"r": 8, "alpha": 16, "dropout": 0.0},  # type: ignore[arg-type]
                heldout_share=0.25,
                threads=1,
                share_prefix=share,
            )
            return reward_trainer(config)[0]

        ran, reward_gap, worst, scale = _paths_agree(
            reward,
            lambda trainer: trainer.data_collator([trainer.train_dataset[i] for i in range(4)]),
            lambda trainer, batch: trainer.model(**batch).logits.squeeze(-1),
            "shared_prefix_last_hidden",
        )
        assert ran and reward_gap < 1e-5 and worst <= 1e-4 * scale, (name, ran, reward_gap, worst, scale)
