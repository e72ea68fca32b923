"""Rollouts through the vLLM server: online RL (PPO, GRPO, RLOO) samples its responses from
the server FactLoop already runs instead of transformers' `generate`.

The server serves the policy's base model (the same checkpoint the trainer loaded). Before
the first rollout and after every policy update the trainer saves its LoRA adapter and the
server loads it in place under one name (vLLM's `/v1/load_lora_adapter` with
`load_inplace`), as trl's GRPO syncs its weights to a vLLM server in server mode
(trl 1.16 `GRPOTrainer._generate_single_turn`, `vllm_mode="server"`; trl moves full
weights over NCCL to its own `trl vllm-serve`, where FactLoop moves the adapter alone
through the OpenAI-compatible server's runtime LoRA API). The trainer then samples with
the adapter by name, each request answering its token ids (`return_token_ids`) and the
log-probability of each sampled token.

Sampling is temperature alone (top-p 1, top-k off), as the trainer's own sampling is, so
the distribution the trainer scores is the one the server sampled from. Two checks keep
the two sides honest:
- the prompt's tokens the server built (chat template, image placeholders expanded) must
  equal the trainer's own, or `RolloutMismatch` says where they part;
- the trainer compares the server's log-probability of each sampled token with its own
  (`logprob_gap`: mean absolute difference per token); a gap beyond the run's
  `rollout_max_gap` means the server is not serving the trainer's policy (another base
  model, an adapter that did not load) and stops the run.

vLLM reports log-probabilities before temperature scaling by default (its `logprobs_mode`
"raw_logprobs", vLLM 0.32 `ModelConfig`): the trainer's comparison divides nothing.

Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf.config import ConfigError


class RolloutMismatch(ConfigError):
    """The server's side of a rollout does not match the trainer's."""


@dataclass(frozen=True)
class Served:
    """One sampled response as the server gave it."""

    prompt_ids: list[int]  # the prompt's tokens as the server built them
    token_ids: list[int]  # the response's tokens, the stop token included when one ended it
    logprobs: list[float]  # the server's log-probability of each response token (before temperature)


def png_bytes(image: Any) -> bytes:
    """A PIL image as PNG bytes (lossless: the server sees the pixels the trainer sees)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def openai_messages(prompt: Sequence[dict[str, Any]], images: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """A conversation in trl's format as OpenAI chat messages. An image part (`{"type":
    "image"}`) takes its own `image` when it carries one (trl's prepared messages), else the
    next of `images` in order; text parts and plain-string contents pass through."""
    from models.serving import image_data_url

    pending = list(images)
    out: list[dict[str, Any]] = []
    for message in prompt:
        content = message["content"]
        if isinstance(content, str):
            out.append({"role": message["role"], "content": content})
            continue
        parts: list[dict[str, Any]] = []
        for part in content:
            if part.get("type") == "image":
                image = part.get("image")
                if image is None:
                    if not pending:
                        raise RolloutMismatch("a prompt names more images than it carries")
                    image = pending.pop(0)
                parts.append({"type": "image_url", "image_url": {"url": image_data_url(png_bytes(image))}})
            elif part.get("type") == "text":
                parts.append({"type": "text", "text": part["text"]})
            else:
                raise RolloutMismatch(f"a prompt part of type {part.get('type')!r} cannot be sent to the server")
        out.append({"role": message["role"], "content": parts})
    return out


def first_difference(a: Sequence[int], b: Sequence[int]) -> str:
    """Where two token sequences part, in words."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"token {i}: server {x}, trainer {y}"
    return f"lengths: server {len(a)} tokens, trainer {len(b)}"


def check_prompt(served: Sequence[int], own: Sequence[int]) -> None:
    if list(served) != list(own):
        raise RolloutMismatch(
            "the server built the prompt's tokens differently from the trainer "
            f"({first_difference(served, own)}): it must serve the policy's base model, "
            "with the same chat template and image processing"
        )


class ServerRollouts:
    """Samples from the vLLM server(s) at `urls` (one URL or several, models/replicas.py)
    with the trainer's adapter, loaded under `name`; `folder` holds the adapter the servers
    read (it must be a path they can read: the same machine, or a shared volume)."""

    def __init__(self, urls: str, *, name: str, folder: Path, timeout: float = 600.0, concurrency: int = 32) -> None:
        from models.replicas import connect

        self.serving = connect(urls, timeout=timeout)
        self.name = name
        self.folder = Path(folder)
        self.concurrency = concurrency
        self.loaded: Path | None = None
        self.syncs = 0

    def sync(
        self,
        save: Callable[[Path], None],
        version: int,
        *,
        leader: bool = True,
        wait: Callable[[], None] = lambda: None,
    ) -> None:
        """Save the adapter (`save(folder)`) as `version` and load it in place on the servers;
        the previous version's folder is removed once the new one is in. Of several
        processes, the `leader` saves and loads and the others `wait` for it."""
        folder = self.folder / f"v{version}"
        if leader:
            shutil.rmtree(folder, ignore_errors=True)
            save(folder)
            self.serving.load_adapter(self.name, str(folder), replace=True)
            if self.loaded is not None and self.loaded != folder:
                shutil.rmtree(self.loaded, ignore_errors=True)
        wait()
        self.loaded = folder
        self.syncs += 1

    def sample(
        self,
        conversations: Sequence[list[dict[str, Any]]],
        *,
        temperature: float,
        max_tokens: int,
        seed: int | None = None,
        suppress: Sequence[int] = (),
    ) -> list[Served]:
        """One response per conversation (OpenAI messages), sampled with the loaded adapter
        at `temperature`, never one of the `suppress` token ids; requests run concurrently and
        the server batches them. Seeds are `seed + i` for the i-th conversation when a seed is
        given."""
        from models.serving import Sampling

        if self.loaded is None:
            raise RolloutMismatch("no adapter is loaded on the server yet: sync() before sampling")

        def ask(i: int) -> Served:
            sampling = Sampling(
                n=1,
                temperature=temperature,
                top_p=1.0,
                top_k=0,
                max_tokens=max_tokens,
                seed=None if seed is None else seed + i,
                logprobs=0,
                token_ids=True,
                return_token_ids=True,
                suppress=tuple(suppress),
            )
            completion = self.serving.chat(model=self.name, messages=conversations[i], sampling=sampling)
            choice = completion.choices[0]
            if completion.prompt_token_ids is None or choice.token_ids is None or choice.logprobs is None:
                raise RolloutMismatch("the server answered no token ids or log-probabilities (vLLM 0.10 or newer)")
            if len(choice.logprobs) != len(choice.token_ids):
                raise RolloutMismatch(
                    f"the server answered {len(choice.token_ids)} tokens with {len(choice.logprobs)} log-probabilities"
                )
            return Served(
                prompt_ids=list(completion.prompt_token_ids),
                token_ids=list(choice.token_ids),
                logprobs=[logprob for _, logprob, _ in choice.logprobs],
            )

        if not conversations:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(conversations))) as pool:
            return list(pool.map(ask, range(len(conversations))))

    def close(self, *, leader: bool = True) -> None:
        """Unload the adapter from the servers and remove its folder (the leader's part)."""
        from models.serving import ServingError

        if self.loaded is not None and leader:
            with contextlib.suppress(ServingError):  # a server that went away has nothing loaded
                self.serving.unload_adapter(self.name)
            shutil.rmtree(self.folder, ignore_errors=True)
            self.loaded = None
        self.serving.close()
