"""A client for an OpenAI-compatible server (vLLM) serving the policy and its LoRA adapters.

- `chat(...)`: one image-grounded conversation, `n` sampled candidates, with temperature,
  top_p, max_tokens, seed and optional top-k logprobs. The image travels as a base64 data
  URL inside the first user turn, where LLaVA's chat template expects it.
- Adapters: `load_adapter(name, path)` (replacing one of the same name in place),
  `unload_adapter(name)`; `models()` lists what `model=` can name; `health()`.
- Errors: connection failures, timeouts and 5xx answers are retried with exponential
  backoff, then raise `ServerUnavailable`; any other refusal raises `ServingError` at once
  with the server's message. Nothing else is retried: a 4xx will not get better.

vLLM's endpoints used here: `/v1/chat/completions`, `/v1/models`, `/health`,
`/v1/load_lora_adapter` and `/v1/unload_lora_adapter` (runtime LoRA updating must be enabled
on the server: `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`; models/server.py sets it).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx


class ServingError(Exception):
    """The server refused a request; `status` is its HTTP status (0 when none came)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class ServerUnavailable(ServingError):
    """No usable answer after the retries: the server is down, unreachable or failing."""


@dataclass(frozen=True)
class Sampling:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 128
    seed: int | None = None
    logprobs: int | None = None  # top-k log-probabilities per generated token
    # With logprobs: name each token "token_id:N" (vLLM's extension) instead of its text, so
    # that a token that is not valid text on its own (a partial UTF-8 byte) is identified.
    token_ids: bool = False
    ignore_eos: bool = False  # generate max_tokens tokens whatever they are (vLLM's extension)
    # vLLM's extensions for sampling exactly as a trainer scores it: top_k 0 turns top-k off
    # (the model's generation_config may set a default); return_token_ids answers the
    # prompt's token ids (image placeholders expanded) and each choice's.
    top_k: int | None = None
    return_token_ids: bool = False
    # Token ids never to sample (image placeholders): OpenAI's logit_bias at its floor, -100,
    # which vLLM adds to their logits.
    suppress: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("n must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_tokens < 1:
            raise ValueError("need temperature >= 0, 0 < top_p <= 1 and max_tokens >= 1")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise ValueError("logprobs must be within 0..20")


@dataclass(frozen=True)
class Choice:
    text: str
    finish_reason: str
    # Per generated token: (token, logprob, {alternative: logprob}) when logprobs were asked for.
    logprobs: list[tuple[str, float, dict[str, float]]] | None = None
    token_ids: list[int] | None = None  # with Sampling.return_token_ids


@dataclass(frozen=True)
class Completion:
    model: str
    choices: list[Choice]
    prompt_tokens: int
    completion_tokens: int
    prompt_token_ids: list[int] | None = None  # with Sampling.return_token_ids

    @property
    def texts(self) -> list[str]:
        return [choice.text for choice in self.choices]


def image_data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def sniff_mime(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] == b"GIF8":
        return "image/gif"
    raise ValueError("unsupported image bytes: expected PNG, JPEG, WebP or GIF")


def chat_messages(prompt: str, image: bytes | None, context: Sequence[dict[str, str]] = ()) -> list[dict[str, Any]]:
    """OpenAI chat messages: the conversation so far, then the prompt; the image is attached
    to the first user turn."""
    turns = [*context, {"role": "user", "content": prompt}]
    messages: list[dict[str, Any]] = []
    attached = image is None
    for turn in turns:
        if not attached and turn["role"] == "user":
            url = image_data_url(image, sniff_mime(image))  # type: ignore[arg-type]
            content: Any = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": turn["content"]}]
            attached = True
        else:
            content = turn["content"]
        messages.append({"role": turn["role"], "content": content})
    return messages


@dataclass
class ServingClient:
    base_url: str
    timeout: float = 120.0
    retries: int = 3
    backoff: float = 0.5  # seconds before the first retry; doubles each time
    api_key: str | None = None
    transport: httpx.BaseTransport | None = None
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def __post_init__(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._http = httpx.Client(
            base_url=self.base_url.rstrip("/"), timeout=self.timeout, headers=headers, transport=self.transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport with retries --------------------------------------------------------

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        last: str = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self._http.request(method, path, json=body)
            except (httpx.TransportError, httpx.TimeoutException) as error:
                last = f"{type(error).__name__}: {error}"
                continue
            if response.status_code >= 500:
                last = f"HTTP {response.status_code}: {response.text[:500]}"
                continue
            if response.status_code >= 400:
                raise ServingError(
                    f"{method} {path} refused: HTTP {response.status_code}: {_message(response)}", response.status_code
                )
            return response
        raise ServerUnavailable(f"{method} {self.base_url}{path} failed after {self.retries + 1} attempts: {last}")

    # -- API ---------------------------------------------------------------------------

    def health(self) -> bool:
        """True when the server answers /health with 200 (no retries)."""
        try:
            return self._http.get("/health", timeout=min(self.timeout, 5.0)).status_code == 200
        except httpx.HTTPError:
            return False

    def listing(self) -> dict[str, str | None]:
        """Every name the server answers to (the base and the adapters loaded), in its order,
        with the model behind it: vLLM lists the checkpoint it was started with (`--model`)
        as an entry's `root` in /v1/models (None when it does not say). One request."""
        entries = self._request("GET", "/v1/models").json()["data"]
        return {str(entry["id"]): (str(entry["root"]) if entry.get("root") else None) for entry in entries}

    def models(self) -> list[str]:
        return list(self.listing())

    def served_root(self, name: str) -> str | None:
        """The model the server answers as `name` (`listing`); None when it does not say."""
        return self.listing().get(name)

    def chat(
        self,
        *,
        model: str,
        prompt: str = "",
        image: bytes | None = None,
        context: Sequence[dict[str, str]] = (),
        sampling: Sampling = Sampling(),
        messages: Sequence[dict[str, Any]] | None = None,
    ) -> Completion:
        """`prompt` (with `image` and `context`), or `messages` whole: OpenAI chat messages as
        they are sent (a conversation with several images, say)."""
        body: dict[str, Any] = {
            "model": model,
            "messages": list(messages) if messages is not None else chat_messages(prompt, image, context),
            "n": sampling.n,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.logprobs is not None:
            body["logprobs"] = True
            body["top_logprobs"] = sampling.logprobs
            if sampling.token_ids:
                body["return_tokens_as_token_ids"] = True
        if sampling.ignore_eos:
            body["ignore_eos"] = True
        if sampling.top_k is not None:
            body["top_k"] = sampling.top_k
        if sampling.return_token_ids:
            body["return_token_ids"] = True
        if sampling.suppress:
            body["logit_bias"] = {str(token): -100 for token in sampling.suppress}
        data = self._request("POST", "/v1/chat/completions", body).json()
        choices = [
            Choice(
                text=choice["message"]["content"] or "",
                finish_reason=choice.get("finish_reason") or "",
                logprobs=_logprobs(choice.get("logprobs")),
                token_ids=choice.get("token_ids"),
            )
            for choice in sorted(data["choices"], key=lambda c: c["index"])
        ]
        usage = data.get("usage") or {}
        return Completion(
            model=data.get("model", model),
            choices=choices,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            prompt_token_ids=data.get("prompt_token_ids"),
        )

    def load_adapter(self, name: str, path: str, *, replace: bool = True) -> None:
        """Load a LoRA adapter under `name`; with `replace`, an adapter of that name already
        loaded is swapped in place (vLLM refuses a second load of a name otherwise)."""
        body: dict[str, Any] = {"lora_name": name, "lora_path": str(path)}
        if replace:
            body["load_inplace"] = True
        self._request("POST", "/v1/load_lora_adapter", body)

    def unload_adapter(self, name: str) -> None:
        self._request("POST", "/v1/unload_lora_adapter", {"lora_name": name})


def _message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            return str(error.get("message") or error.get("detail") or error)[:500]
        return str(data.get("message") or error)[:500]
    return str(data)[:500]


def _logprobs(raw: Any) -> list[tuple[str, float, dict[str, float]]] | None:
    if not raw or not raw.get("content"):
        return None
    return [
        (
            entry["token"],
            float(entry["logprob"]),
            {alt["token"]: float(alt["logprob"]) for alt in entry["top_logprobs"]},
        )
        for entry in raw["content"]
    ]
