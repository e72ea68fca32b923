"""What every trainer shares: the policy loader, the torch set-up of a run, the trl
arguments set the same way everywhere, and the git revision recorded beside a checkpoint.
torch, transformers and peft are imported only when a function runs."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

REFERENCE_ADAPTER = "ref"


def load_policy(
    model: str,
    *,
    adapter: str | Path | None = None,
    dtype: str = "float32",
    trainable: bool = False,
    reference: bool = True,
) -> tuple[Any, Any]:
    """A policy and its processor, from a local checkpoint or a hub id through transformers'
    auto classes (any image-text-to-text family), with an optional LoRA adapter.

    For use (`trainable` false) the adapter is merged in and the model is in eval mode. For
    training it stays a trainable adapter, and a frozen copy named "ref" is loaded beside
    it: the reference of a round that continues the previous round's policy (docs/methods.md 2:
    pi_ref is the policy at the start of the round). `reference` false leaves that copy to
    the trainer: trl's DPOTrainer makes it itself from a PEFT model's "default" adapter, under
    the same name, and refuses a model that has one already."""
    import torch
    from transformers import AutoModelForImageTextToText

    processor = load_processor(model)
    policy: Any = AutoModelForImageTextToText.from_pretrained(model, dtype=getattr(torch, dtype))
    if adapter is not None:
        from peft import PeftModel

        policy = PeftModel.from_pretrained(policy, str(adapter), is_trainable=trainable)
        if not trainable:
            policy = policy.merge_and_unload()
        elif reference:
            policy.load_adapter(str(adapter), adapter_name=REFERENCE_ADAPTER)  # frozen
    if not trainable:
        policy.eval()
    return policy, processor


def load_processor(model: str | Path) -> Any:
    """A checkpoint's processor through transformers' auto class, with a chat template.

    FactLoop's prompts are conversations. Some processor classes (BLIP-2, InstructBLIP,
    Fuyu, Chameleon, Kosmos-2 in transformers 5.19) drop a `chat_template` given to them;
    the template then comes from the tokenizer. A checkpoint with neither is refused."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(model))
    if not getattr(processor, "chat_template", None):
        template = getattr(getattr(processor, "tokenizer", None), "chat_template", None)
        if not template:
            raise ValueError(
                f"{model}: its processor and tokenizer have no chat template; FactLoop's prompts are "
                "conversations (add chat_template.jinja to the checkpoint, or set the tokenizer's chat_template)"
            )
        processor.chat_template = template
    return processor


def model_type_of(model: str | Path) -> str:
    """The transformers model type of a checkpoint (folder or hub id)."""
    from transformers import AutoConfig

    return str(AutoConfig.from_pretrained(str(model)).model_type)


def documented_gap(model_type: str, capability: str) -> str | None:
    """Why `capability` (a trainer's method, "reward", "vllm"...) is a known gap of the
    family `model_type` (contract/family_gaps.py), as the user reads it; None when it is not."""
    from contract.family_gaps import gap

    return gap(model_type, capability)


def require(model: str | Path, capability: str) -> None:
    """Raise ConfigError with the documented reason when `capability` is a known gap of the
    checkpoint's family (`documented_gap`)."""
    from rlhf.config import ConfigError

    if (gap := documented_gap(model_type_of(model), capability)) is not None:
        raise ConfigError(gap)


def carried_on(value: Any, length: int) -> Any:
    """A sequence-aligned input (batch x tokens x ...) extended by `length` tokens that get
    what its last token has: in a left-padded prompt, a real text token (not an image
    token, attending to what the prompt's text attends to), as transformers' generate()
    carries Mllama's cross-attention mask on and Kosmos-2's image position mask holds 0."""
    import torch

    last = value[:, -1:]
    return torch.cat([value, last.expand(value.shape[0], length, *value.shape[2:])], dim=1)


def last_checkpoint(output_dir: Path) -> str | None:
    """The newest complete `checkpoint-N` folder a Trainer left in output_dir, if any. The
    Trainer writes trainer_state.json last: a process killed while saving leaves a folder
    without it, which is passed over."""
    checkpoints = sorted(
        (p for p in output_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    complete = [p for p in checkpoints if (p / "trainer_state.json").is_file()]
    return str(complete[-1]) if complete else None


def write_log(path: Path, history: list[dict[str, Any]]) -> None:
    """A trainer's log history, one JSON object a line (its training curve), written whole."""
    import json

    partial = path.with_suffix(".partial")
    with open(partial, "w") as log:
        for entry in history:
            log.write(json.dumps(entry) + "\n")
    partial.replace(path)


def mean_over_ranks(accelerator: Any, values: list[float]) -> list[float]:
    """Per-step values measured on each process, averaged over the processes (the same
    list when there is one): every process must call it with as many values."""
    if accelerator.num_processes == 1 or not values:
        return values
    import torch

    gathered = accelerator.gather(torch.tensor(values, dtype=torch.float32, device=accelerator.device))
    return [float(v) for v in gathered.view(accelerator.num_processes, -1).mean(0)]


def prepare_torch(config: Any) -> None:
    """A run's torch set-up: its CPU thread count (when set) and its seed."""
    import torch

    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)


def common_trainer_arguments(config: Any, report_to: list[str] | None, **extra: Any) -> dict[str, Any]:
    """The trl trainer arguments every run sets the same way (DPO here, GRPO/RLOO in
    rlhf/train_rl.py): output, learning rate, logging, precision, seeds, data loading."""
    return {
        "output_dir": config.output_dir,
        "learning_rate": config.learning_rate,
        "logging_steps": config.logging_steps,
        "report_to": ["tensorboard"] if report_to is None else report_to,
        "remove_unused_columns": False,
        "bf16": config.dtype == "bfloat16",
        "fp16": config.dtype == "float16",
        "seed": config.seed,
        "data_seed": config.seed,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": _has_accelerator(),
        # Without a GPU, say so: transformers refuses bf16 on an "unsupported GPU" otherwise.
        "use_cpu": not _has_accelerator(),
        **extra,
    }


def _has_accelerator() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def git_revision() -> str:
    """The checkout's commit (with "-dirty" when it has changes), or "unknown"."""
    here = Path(__file__).resolve().parent
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return revision + ("-dirty" if dirty else "")
