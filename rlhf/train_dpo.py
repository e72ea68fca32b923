"""DDPO (RLHF-V's token-weighted DPO) and DPO for image-text-to-text models, on trl.

RLHF-V (arXiv:2312.00849, eq. 3-4; docs/methods.md 2c) replaces DPO's
sequence log-likelihood with a weighted one, s(y|x) = sum_U log p + gamma sum_C log p
(optionally over |U| + gamma |C|), in both the policy's and the reference's terms. trl's
DPOTrainer sums per-token log-probabilities inside its private `_compute_loss`
(trl, `DPOTrainer._compute_loss`): `DDPOTrainer` weights them on their way out of the model, with a
forward hook on the policy (and a separate reference, if any) that multiplies the fused
LM head's `log_probs` by the collator's `token_scale` for the duration of one loss
computation. trl's own loss code then runs unchanged; with every weight 1 it is exactly
trl's DPO. trl is pinned to the minor version this hook was checked against
(tests/rlhf/test_ddpo.py).

The reference is the policy at the start of the round: the base model when the adapter is
new, or, when `init_adapter` continues the previous round's adapter, a frozen copy of that
adapter loaded under the name trl looks for ("ref").
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from contract.results import RunResult
from contract.run import ADAPTER
from rlhf.common import (
    REFERENCE_ADAPTER,
    common_trainer_arguments,
    git_revision,
    last_checkpoint,
    load_policy,
    prepare_torch,
    require,
    write_log,
)
from rlhf.config import DPOTrainConfig, dump
from rlhf.distributed import is_main
from rlhf.training_data import DataError, load_pairs, make_collator, pair_severity, weigh_source

ADAPTER_DIR = ADAPTER  # contract/run.py: where a trainer leaves its adapter
# Methods whose loss is rlhf/objectives.py's (objective_loss), not trl's.
OBJECTIVE_METHODS = ("sft", "mdpo", "hsa_dpo", "halva")
CONFIG_FILE = "config.yaml"
LOG_FILE = "log.jsonl"


@contextmanager
def weighted_log_probs(modules: list[Any], scale: Any):  # type: ignore[no-untyped-def]
    """While active, every fused-head forward of `modules` returns per-token log-probs
    multiplied by `scale[:, 1:]` (`scale` is aligned with input_ids; log-probs with the
    shifted labels). Extra leading positions (virtual tokens of prompt-learning PEFT) are
    left as they are."""

    def hook(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> Any:
        if not kwargs.get("fused_lm_head") or getattr(output, "log_probs", None) is None:
            return output
        shifted = scale[:, 1:].to(device=output.log_probs.device, dtype=output.log_probs.dtype)
        width = shifted.size(1)
        log_probs = output.log_probs
        weighted = log_probs[:, -width:] * shifted
        output.log_probs = weighted if log_probs.size(1) == width else _cat(log_probs[:, :-width], weighted)
        return output

    handles = [module.register_forward_hook(hook, with_kwargs=True) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _cat(left: Any, right: Any) -> Any:
    import torch

    return torch.cat((left, right), dim=1)


def trainer_class() -> type:
    """DPOTrainer with DDPO's token weights (built on first use: trl loads torch)."""
    from trl import DPOTrainer

    class DDPOTrainer(DPOTrainer):
        share_prefix = True  # one prompt pass per pair where rlhf/prefix.py applies
        # The run's config when its method is one of rlhf/objectives.py's (sft, mdpo,
        # hsa_dpo, halva); None for DDPO and DPO, which are trl's loss with token weights.
        objective: DPOTrainConfig | None = None
        mean_severity = 1.0  # HSA-DPO: the training pairs' mean severity (rlhf/training_data.py)

        def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
            from rlhf.prefix import wrap_forward

            scale = inputs.pop("token_scale", None)
            extras = {key: inputs.pop(key, None) for key in ("changed_mask", "severity", "corrupted")}
            modules = {id(m): m for m in (self.accelerator.unwrap_model(model), self.ref_model) if m is not None}
            undo = [wrap_forward(m) for m in modules.values()] if self.share_prefix else []
            try:
                if self.objective is not None:
                    return objective_loss(self, model, inputs, extras)
                if scale is None:
                    return super()._compute_loss(model, inputs, return_outputs)
                with weighted_log_probs(list(modules.values()), scale):
                    return super()._compute_loss(model, inputs, return_outputs)
            finally:
                for step in undo:
                    step()

    return DDPOTrainer


def _token_logps(trainer: Any, model: Any, inputs: dict[str, Any], *, reference: bool, logits: bool = False) -> Any:
    """Per-token log-probabilities of the response tokens (batch, tokens - 1), 0 elsewhere, of
    the policy or (no gradients) the reference, as trl's `_compute_loss` gets them: trl's
    fused LM head, and for the reference the frozen model, or the adapter "ref", or the
    adapters off. With `logits`, a plain forward instead, also returning the logits aligned
    with the log-probabilities (what a full-distribution KL needs)."""
    import contextlib

    import torch
    from accelerate.utils import is_peft_model  # type: ignore[import-untyped]
    from trl.models.utils import disable_gradient_checkpointing
    from trl.trainer.utils import use_adapter

    mask = inputs["completion_mask"]
    kwargs = {k: v for k, v in inputs.items() if k not in ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")}
    kwargs["use_cache"] = False
    labels = inputs["input_ids"].masked_fill(mask == 0, -100)
    width = mask.size(1) - 1
    call: Any = model
    context: Any = contextlib.nullcontext()
    grad: Any = contextlib.nullcontext()
    checkpointing: Any = contextlib.nullcontext()
    if reference:
        if trainer.ref_model is None and is_peft_model(trainer.model):
            unwrapped = trainer.accelerator.unwrap_model(trainer.model)
            call = trainer.model
            context = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        elif trainer.ref_model is not None:
            call = trainer.ref_model
        grad = torch.no_grad()
        checkpointing = disable_gradient_checkpointing(trainer.model, trainer.args.gradient_checkpointing_kwargs)
    with grad, checkpointing, context:
        if not logits:
            return call(**kwargs, labels=labels, fused_lm_head=True).log_probs[:, -width:]
        out = call(**kwargs).logits[:, -(width + 1) : -1]
    targets = labels[:, 1:]
    picked = torch.log_softmax(out.float(), dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * (targets != -100), out


def objective_loss(trainer: Any, model: Any, inputs: dict[str, Any], extras: dict[str, Any]) -> Any:
    """The loss of a method of rlhf/objectives.py on one collated batch ([chosen; rejected]
    rows), with its parts logged under `objective/`."""
    import torch

    from rlhf import objectives

    config = trainer.objective
    mask = inputs["completion_mask"][:, 1:].to(dtype=extras["changed_mask"].dtype)
    n = mask.size(0) // 2
    parts: dict[str, Any] = {}
    if config.method == "halva":
        policy, policy_logits = _token_logps(trainer, model, inputs, reference=False, logits=True)
        _, ref_logits = _token_logps(trainer, model, inputs, reference=True, logits=True)
        phrase = extras["changed_mask"][:, 1:] * mask
        # HALVA contrasts a correct phrase with the hallucinated one that replaced it, in the
        # same context. A correction that only deleted (or only inserted) has an empty phrase
        # on one side: its log-probability 0 against a whole sentence's saturates the
        # contrast (loss ~1e-27, no gradient), and a ranking's pair has no phrases. Such a
        # pair contrasts the two tokens where its responses part instead: after a deletion,
        # the corrected response's next token (often its end) against the first token of
        # the deleted text.
        one_sided = (phrase[:n].sum(dim=1) == 0) | (phrase[n:].sum(dim=1) == 0)
        parting = objectives.parting_tokens(inputs["input_ids"][:, 1:], mask)
        phrase = torch.where(torch.cat([one_sided, one_sided])[:, None], parting, phrase)
        sums = (policy * phrase).sum(dim=1)
        kl = objectives.token_kl(policy_logits[:n], ref_logits[:n], mask[:n])
        loss, parts = objectives.halva_loss(sums[:n], sums[n:], kl, alpha=config.halva_alpha)
    elif config.method == "sft":
        policy = _token_logps(trainer, model, inputs, reference=False)
        loss = objectives.sft_loss(policy[:n], mask[:n])
    else:
        policy = (_token_logps(trainer, model, inputs, reference=False) * mask).sum(dim=1)
        ref = (_token_logps(trainer, model, inputs, reference=True) * mask).sum(dim=1)
        chosen, rejected, ref_chosen, ref_rejected = policy[:n], policy[n:], ref[:n], ref[n:]
        if config.method == "mdpo":
            corrupted = extras["corrupted"]
            corrupted_mask = corrupted["completion_mask"][:n, 1:].to(dtype=mask.dtype)
            policy_c = _token_logps(trainer, model, corrupted, reference=False)[:n]
            ref_c = _token_logps(trainer, model, corrupted, reference=True)[:n]
            loss, parts = objectives.mdpo_loss(
                chosen,
                rejected,
                ref_chosen,
                ref_rejected,
                (policy_c * corrupted_mask).sum(dim=1),
                (ref_c * corrupted_mask).sum(dim=1),
                beta=config.beta,
                delta=config.mdpo_delta,
                conditional_weight=config.mdpo_conditional_weight,
                anchor_weight=config.mdpo_anchor_weight,
            )
        else:  # hsa_dpo
            weights = objectives.severity_weights(extras["severity"].to(chosen.device), trainer.mean_severity)
            loss = objectives.hsa_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, weights, beta=config.beta)
        margins = config.beta * ((chosen - ref_chosen) - (rejected - ref_rejected)).detach()
        parts["rewards/margins"] = margins.mean()
        parts["rewards/accuracies"] = (margins > 0).float().mean()
    mode = "train" if trainer.model.training else "eval"
    for key, value in parts.items():
        name = key if "/" in key else f"objective/{key}"
        trainer._metrics[mode][name].append(trainer.accelerator.gather_for_metrics(value.detach()).mean().item())
    return loss


def training_arguments(config: DPOTrainConfig, *, report_to: list[str] | None = None, **extra: Any) -> Any:
    from trl import DPOConfig

    return DPOConfig(
        beta=config.beta,
        loss_type=["sigmoid"],
        ld_alpha=config.ld_alpha,
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_length,
        # transformers 5: a float below 1 is a share of the steps.
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        gradient_checkpointing=config.gradient_checkpointing,
        # remove_unused_columns is off (common_trainer_arguments): the collator needs the spans.
        **common_trainer_arguments(config, report_to, **extra),
    )


def build_trainer(config: DPOTrainConfig, *, report_to: list[str] | None = None, **extra: Any) -> Any:
    """The trainer of a run, ready to `.train()` (also used by the tests and benchmarks)."""

    require(config.model, config.method)  # a documented gap of the family stops here
    prepare_torch(config)
    dataset = load_pairs([*config.data, *config.extra_data], sources=config.sources, max_pairs=config.max_pairs)
    dataset = weigh_source(dataset, "ai", config.ai_weight, seed=config.seed)
    # trl's DPOTrainer copies a continued adapter into its frozen "ref" itself (pinned trl).
    model, processor = load_policy(
        config.model, adapter=config.init_adapter, dtype=config.dtype, trainable=True, reference=False
    )
    assert config.gamma is not None and config.normalize is not None
    if config.synthetic is not None:
        dataset = with_synthetic(config, dataset, model, processor)
    collator = make_collator(
        processor,
        gamma=config.gamma,
        normalize=config.normalize,
        released_weighting=config.released_weighting,
        max_length=config.max_length,
        corrupt_keep=config.mdpo_crop if config.method == "mdpo" else None,
    )
    peft_config = None
    if config.lora is not None and config.init_adapter is None:  # a new adapter
        peft_config = config.lora.peft_config("CAUSAL_LM", model)
    trainer = trainer_class()(
        model=model,
        args=training_arguments(config, report_to=report_to, **extra),
        train_dataset=dataset,
        processing_class=processor,
        data_collator=collator,
        peft_config=peft_config,
    )
    trainer.share_prefix = config.share_prefix
    if config.method in OBJECTIVE_METHODS:
        trainer.objective = config
    if config.method == "hsa_dpo":
        spans = dataset.select_columns(["rejected_spans"])
        trainer.mean_severity = sum(pair_severity(row) for row in spans) / len(spans)
    return trainer


def with_synthetic(config: DPOTrainConfig, dataset: Any, model: Any, processor: Any) -> Any:
    """The human pairs plus synthetic ones (rlhf/synthetic.py), which rank 0 also writes as a
    `trl` export under output_dir/synthetic (its `source` column says "synthetic"): what the
    run trained on stays on record. Every rank makes the same pairs (seeded, greedy)."""
    from datasets import Dataset, concatenate_datasets  # type: ignore[import-untyped]

    from contract.export import pair_features
    from rlhf.synthetic import synthesize, write_synthetic

    assert config.synthetic is not None
    human = dataset.filter(lambda source: source != "synthetic", input_columns="source")
    rows = synthesize(
        human,
        kind=config.synthetic,
        ratio=config.synthetic_ratio,
        seed=config.seed,
        vocabulary=config.synthetic_vocabulary,
        noise=config.synthetic_noise,
        model=model,
        processor=processor,
    )
    if not rows:
        raise DataError(f"synthetic {config.synthetic}: no pair could be made from the {len(human)} human pairs")
    out = Path(config.output_dir) / "synthetic"
    if is_main() and not out.exists():
        write_synthetic(rows, out, kind=config.synthetic, made_from=len(human))
    made = Dataset.from_list(rows, features=pair_features())
    return concatenate_datasets([dataset, made.cast(dataset.features)])


def train(config: DPOTrainConfig, *, resume: bool = False, report_to: list[str] | None = None) -> RunResult:
    """Run DDPO/DPO and write, under output_dir: `adapter/` (the trained adapter, or the
    full model), `config.yaml` (the resolved config), `result.json` (metrics, git revision).
    With `resume`, training continues from the newest checkpoint in output_dir.

    Under `accelerate launch` every process trains and only rank 0 writes (rlhf/distributed.py);
    the others return the same result without writing it."""
    require(config.model, config.method)  # a documented gap stops here, before anything is written
    output = Path(config.output_dir)
    if is_main():
        output.mkdir(parents=True, exist_ok=True)
        (output / CONFIG_FILE).write_text(dump(config))
    began = time.perf_counter()
    trainer = build_trainer(config, report_to=report_to)
    checkpoint = last_checkpoint(output) if resume else None
    outcome = trainer.train(resume_from_checkpoint=checkpoint)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    adapter = output / ADAPTER_DIR
    save_trained(trainer, adapter)
    if trainer.is_world_process_zero():
        write_log(output / LOG_FILE, trainer.state.log_history)
    result = RunResult(
        method=config.method,
        output_dir=str(output),
        adapter_dir=str(adapter) if adapter is not None else None,
        pairs=len(trainer.train_dataset),
        synthetic_pairs=trainer.train_dataset["source"].count("synthetic"),
        steps=trainer.state.global_step,
        train_loss=float(outcome.training_loss) if outcome.training_loss is not None else None,
        first_loss=losses[0] if losses else None,
        last_loss=losses[-1] if losses else None,
        seconds=time.perf_counter() - began,
        git_revision=git_revision(),
        config=config.to_dict(),
        resumed_at=int(checkpoint.rsplit("-", 1)[-1]) if checkpoint else 0,
    )
    if trainer.is_world_process_zero():
        result.write(output)
    return result


def save_trained(trainer: Any, adapter: Path) -> None:
    """The trained policy (its "default" adapter, or the whole model) and its processor,
    through the Trainer's `save_model`: called on every rank, since under FSDP or DeepSpeed
    ZeRO-3 gathering the sharded weights takes all of them; only rank 0 writes. The frozen
    reference adapter ("ref", when a round continues the previous one) is not kept."""
    import shutil

    trainer.save_model(str(adapter))
    if trainer.is_world_process_zero():
        shutil.rmtree(adapter / REFERENCE_ADAPTER, ignore_errors=True)
        (adapter / "training_args.bin").unlink(missing_ok=True)
        trainer.processing_class.save_pretrained(str(adapter))
