"""A preflight: what a round will do to a model, done once on one batch of the round's own
data, so that a family FactLoop never saw is refused in seconds, with the step, the
library and the input named, before the round spends hours.

Steps, in order (a step that fails or is refused stops the ones after it):

- family: the checkpoint's config is read (its model type and architectures) and the
  documented gaps of contract/family_gaps.py are applied (for the method, the reward model
  an RL method needs, and serving);
- vllm: the pinned vLLM serves the architecture: by a model of its own (its model
  registry), or through its Transformers backend, which needs the processor to count an
  image's tokens (`_get_num_multimodal_tokens`). Probed in the serving venv's interpreter,
  never assumed from the model type; skipped without a serving venv;
- serve: where a vLLM server is named and answers (`--server`), the current policy's
  adapter is loaded there under a name of the preflight's own and one request with an image
  of the export is answered through it (the base model's, without an adapter); the
  adapter is unloaded afterwards. Skipped when no server answers;
- train (DDPO, DPO, SFT, mDPO, HSA-DPO, HALVA): one optimiser step of the method on one
  batch of the export: its collator, forward and backward;
- reward, rollout (PPO, GRPO, RLOO): one step of the fact-augmented reward model on one
  batch of ranking pairs (its forward and backward), then one rollout of the policy scored
  by that reward model and one policy update.

Each step's settings come from the run's own config file and overrides, with only what
makes it one batch changed (how many pairs or prompts, one epoch or step, no checkpoints);
every file goes to a temporary folder, removed afterwards. What a preflight cannot know:
the memory and the speed of the full run (its batch is the run's, but one), and whether the
loss falls over many steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from contract.methods import DPO_METHODS, METHODS, RL_METHODS
from models.server import probe_architecture, served_how, unserved_reason
from rlhf.common import documented_gap
from rlhf.config import ConfigError


@dataclass
class Step:
    name: str
    status: str  # ok, refused, failed, skipped
    seconds: float = 0.0
    detail: str = ""
    library: str = ""  # where a failure happened: transformers, trl, peft, torch, vllm, FactLoop
    input: str = ""  # what the step was given


@dataclass
class Report:
    model: str
    method: str
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(step.status in ("ok", "skipped") for step in self.steps)

    @property
    def failed(self) -> Step | None:
        return next((step for step in self.steps if step.status in ("refused", "failed")), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "method": self.method,
            "ok": self.ok,
            "seconds": round(sum(step.seconds for step in self.steps), 3),
            "steps": [asdict(step) for step in self.steps],
        }

    def summary(self) -> str:
        failed = self.failed
        if failed is None:
            took = sum(step.seconds for step in self.steps)
            return f"preflight of {self.method} on {self.model}: passed in {took:.1f} s"
        where = f" in {failed.library}" if failed.library else ""
        return (
            f"preflight of {self.method} on {self.model}: step {failed.name} {failed.status}{where}: "
            f"{failed.detail} (input: {failed.input})"
        )


class Refused(Exception):
    """A step that cannot work, known before it runs (the reason is the message)."""


def library_of(error: BaseException) -> str:
    """The library in which `error` was raised: the package of the deepest frame of its
    traceback that lies in an installed package, else FactLoop (with its file)."""
    frames = traceback.extract_tb(error.__traceback__)
    for frame in reversed(frames):
        parts = Path(frame.filename).parts
        if "site-packages" in parts:
            return parts[parts.index("site-packages") + 1].removesuffix(".py")
    if frames:
        return f"FactLoop ({Path(frames[-1].filename).name}:{frames[-1].lineno})"
    return "FactLoop"


def _run(report: Report, name: str, action: Callable[[], str], given: str) -> None:
    if report.failed is not None:
        report.steps.append(Step(name, "skipped", detail=f"step {report.failed.name} did not pass", input=given))
        return
    began = time.perf_counter()
    try:
        detail = action()
    except Skipped as skipped:
        report.steps.append(Step(name, "skipped", time.perf_counter() - began, str(skipped), input=given))
        return
    except Refused as refused:
        report.steps.append(Step(name, "refused", time.perf_counter() - began, str(refused), input=given))
        return
    except ConfigError as bad:  # the run's own settings refuse this (a trainer would too)
        seconds = time.perf_counter() - began
        report.steps.append(Step(name, "refused", seconds, f"settings: {bad}", "FactLoop", given))
        return
    except Exception as error:  # noqa: BLE001 - the step's failure is its result
        text = f"{type(error).__name__}: {str(error).strip()[:500]}"
        report.steps.append(Step(name, "failed", time.perf_counter() - began, text, library_of(error), given))
        return
    report.steps.append(Step(name, "ok", time.perf_counter() - began, detail, input=given))


# ---------------------------------------------------------------------------------------
# family and vllm


def read_config(model: str) -> dict[str, Any]:
    """The checkpoint's config.json as transformers reads it (a folder or a hub id)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model)
    return {"model_type": str(config.model_type), "architectures": list(getattr(config, "architectures", None) or [])}


def family_step(config: dict[str, Any], method: str) -> str:
    """The family's documented gaps for the method (and the reward model an RL method needs)."""
    for capability in [method, "reward"] if method in RL_METHODS else [method]:
        if (gap := documented_gap(config["model_type"], capability)) is not None:
            raise Refused(gap)
    return f"{config['model_type']} ({', '.join(config['architectures']) or 'no architectures listed'})"


def vllm_step(model: str, config: dict[str, Any], python: str | None) -> str:
    if (gap := documented_gap(config["model_type"], "vllm")) is not None:
        raise Refused(gap)
    if python is None or not Path(python).exists():
        raise Skipped("no serving venv to probe (make serving)")
    if not Path(model).is_dir():
        raise Skipped("a hub id: the server that loads it checks it")
    found = probe_architecture(model, python)
    if reason := unserved_reason(found):
        raise Refused(reason)
    return served_how(found)


def serve_step(server: str | None, adapter: str | None, data: Path) -> str:
    """One request with an image of the export through the server, with the adapter loaded."""
    import os

    from models.server import BASE_NAME
    from models.serving import Sampling, ServingClient, ServingError
    from rlhf.rollouts import openai_messages
    from rlhf.training_data import load_prompts

    if not server:
        raise Skipped("no server named (--server)")
    row = load_prompts([str(data)], max_prompts=1)[0]
    messages = openai_messages(row["prompt"], row["images"][:1])
    name = f"factloop-preflight-{os.getpid()}"
    with ServingClient(server, timeout=120.0) as client:
        if not client.health():
            raise Skipped(f"no server answers at {server}")
        try:
            if adapter:
                client.load_adapter(name, str(Path(adapter).resolve()))
            try:
                sampling = Sampling(temperature=0.0, max_tokens=4)
                answer = client.chat(model=name if adapter else BASE_NAME, messages=messages, sampling=sampling)
            finally:
                if adapter:
                    with contextlib.suppress(ServingError):
                        client.unload_adapter(name)
        except ServingError as error:
            what = f"with the adapter {adapter}" if adapter else "on its base model"
            raise Refused(f"the vLLM server at {server} could not answer {what}: {error}") from None
    with_what = "through the adapter" if adapter else "on its base model"
    return f"{server} answered one request with an image {with_what} ({answer.completion_tokens} tokens)"


class Skipped(Exception):
    """A step this preflight cannot take here (the reason is the message)."""


# ---------------------------------------------------------------------------------------
# One batch of each trainer


def _one_batch_of_pairs(
    model: str, method: str, data: Path, work: Path, config: Path | None, overrides: Sequence[str], adapter: str | None
) -> str:
    from rlhf.config import load_config
    from rlhf.train_dpo import train

    settings = load_config(config, overrides, model=model, data=[str(data)], output_dir=str(work), method=method)
    settings = dataclasses.replace(
        settings,
        model=model,
        data=[str(data)],
        method=method,
        output_dir=str(work / "train"),
        max_pairs=settings.batch_size * settings.gradient_accumulation_steps,
        epochs=1.0,
        save_steps=0,
        logging_steps=1,
        init_adapter=adapter or settings.init_adapter,
    )
    result = train(settings, report_to=[])
    return f"{result.steps} step on {result.pairs} pairs, loss {result.first_loss:.4f}"


def _one_batch_of_rankings(model: str, data: Path, work: Path, config: Path | None) -> str:
    from rlhf.config import load_run_config
    from rlhf.reward import RewardConfig, train_reward_model

    settings = load_run_config(RewardConfig, config, (), model=model, data=[str(data)], output_dir=str(work))
    settings = dataclasses.replace(
        settings,
        model=model,
        data=[str(data)],
        output_dir=str(work / "reward"),
        epochs=1.0,
        save_steps=0,
        max_pairs=settings.batch_size * settings.gradient_accumulation_steps,
    )
    result = train_reward_model(settings, progress=False)
    return f"{result.train_pairs} ranking pairs, loss {result.first_loss:.4f}"


def _one_rollout(
    model: str, method: str, data: Path, work: Path, config: Path | None, overrides: Sequence[str], adapter: str | None
) -> str:
    from rlhf.config import RLTrainConfig, load_run_config
    from rlhf.train_rl import train

    reward = str(work / "reward")
    base = {"model": model, "data": [str(data)], "output_dir": str(work), "method": method, "reward_model": reward}
    settings = load_run_config(RLTrainConfig, config, overrides, **base)
    batch = settings.num_generations if method != "ppo" else min(settings.rollout_batch_size, 2)
    settings = dataclasses.replace(
        settings,
        model=model,
        data=[str(data)],
        method=method,
        reward_model=reward,
        output_dir=str(work / "rl"),
        steps=1,
        rollout_batch_size=batch,
        minibatch_size=min(settings.minibatch_size, batch),
        max_prompts=batch,
        ppo_epochs=1,
        init_adapter=adapter or settings.init_adapter,
    )
    result = train(settings, report_to=[], progress=False)
    first = f", reward {result.first_reward:.3f}" if result.first_reward is not None else ""
    return f"1 rollout of {batch} prompts scored and 1 update{first}"


def preflight(
    model: str,
    method: str,
    data: Path,
    *,
    adapter: str | None = None,
    config: Path | None = None,
    overrides: Sequence[str] = (),
    reward_config: Path | None = None,
    serving_python: str | None = None,
    server: str | None = None,
    work: Path | None = None,
) -> Report:
    """Every step of `method` on `model` (continuing `adapter`, the current policy's, when
    given), once, on one batch of the export `data`."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    report = Report(model, method)
    folder = Path(tempfile.mkdtemp(prefix="factloop-preflight-", dir=work))
    try:
        checkpoint = f"{model}'s config"
        batch = f"one batch of {data}" + (f", continuing {adapter}" if adapter else "")
        checkpoint_config: dict[str, Any] = {}  # read once, by the family step; the vllm step runs only after it

        def family() -> str:
            checkpoint_config.update(read_config(model))
            return family_step(checkpoint_config, method)

        _run(report, "family", family, checkpoint)
        _run(report, "vllm", lambda: vllm_step(model, checkpoint_config, serving_python), checkpoint)
        served = f"one request with an image of {data}" + (f" through {adapter}" if adapter else "")
        _run(report, "serve", lambda: serve_step(server, adapter, data), served)
        if method in DPO_METHODS:
            train = lambda: _one_batch_of_pairs(model, method, data, folder, config, overrides, adapter)  # noqa: E731
            _run(report, "train", train, f"{method} on {batch}")
        else:
            _run(report, "reward", lambda: _one_batch_of_rankings(model, data, folder, reward_config), batch)
            roll = lambda: _one_rollout(model, method, data, folder, config, overrides, adapter)  # noqa: E731
            _run(report, "rollout", roll, f"{method} rollouts of {batch} scored by that reward model")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return report
