"""The serving client against a scripted HTTP server on a real socket: what it sends, what
it retries, and what it refuses at once. (tests/models/test_vllm.py runs it against vLLM.)"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from models.serving import Sampling, ServerUnavailable, ServingClient, ServingError, chat_messages
from tests.factories import png_bytes


class Script:
    """Answers to give, in order (the last one repeats), and the requests seen."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, Any]] = [(200, {})]
        self.seen: list[tuple[str, str, Any]] = []


@pytest.fixture
def scripted() -> Iterator[tuple[Script, str]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            script.seen.append((self.command, self.path, body))
            status, payload = script.answers.pop(0) if len(script.answers) > 1 else script.answers[0]
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield script, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def completion(*texts: str) -> dict[str, Any]:
    return {
        "model": "base",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
            for i, t in enumerate(texts)
        ],
        "usage": {"prompt_tokens": 40, "completion_tokens": 7 * len(texts)},
    }


def test_chat_sends_the_image_in_the_first_user_turn_and_the_sampling(scripted: tuple[Script, str]) -> None:
    script, url = scripted
    script.answers = [(200, completion("A red ball.", "A blue box."))]
    image = png_bytes()
    with ServingClient(url) as client:
        result = client.chat(
            model="round-1",
            prompt="And now?",
            image=image,
            context=[{"role": "user", "content": "Describe."}, {"role": "assistant", "content": "A ball."}],
            sampling=Sampling(n=2, temperature=0.7, top_p=0.9, max_tokens=32, seed=5),
        )
    assert result.texts == ["A red ball.", "A blue box."] and result.completion_tokens == 14
    method, path, body = script.seen[0]
    assert (method, path) == ("POST", "/v1/chat/completions")
    assert {k: body[k] for k in ("model", "n", "temperature", "top_p", "max_tokens", "seed")} == {
        "model": "round-1",
        "n": 2,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 32,
        "seed": 5,
    }
    first, reply, last = body["messages"]
    assert first["content"][0]["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(image).decode()
    assert first["content"][1] == {"type": "text", "text": "Describe."}
    assert reply == {"role": "assistant", "content": "A ball."} and last == {"role": "user", "content": "And now?"}


def test_5xx_and_dropped_connections_are_retried_with_backoff(scripted: tuple[Script, str]) -> None:
    script, url = scripted
    script.answers = [(503, {"error": "loading"}), (500, {}), (200, completion("ok"))]
    pauses: list[float] = []
    client = ServingClient(url, retries=3, backoff=0.25, sleep=pauses.append)
    assert client.chat(model="base", prompt="hi").texts == ["ok"]
    assert pauses == [0.25, 0.5] and len(script.seen) == 3


def test_a_server_that_stays_down_raises_server_unavailable() -> None:
    pauses: list[float] = []
    dead = ServingClient("http://127.0.0.1:9", retries=2, backoff=0.1, timeout=2, sleep=pauses.append)
    with pytest.raises(ServerUnavailable, match="failed after 3 attempts"):
        dead.models()
    assert pauses == [0.1, 0.2]
    assert dead.health() is False


def test_a_4xx_is_not_retried_and_says_why(scripted: tuple[Script, str]) -> None:
    script, url = scripted
    script.answers = [(404, {"error": {"message": "The model `round-9` does not exist."}})]
    with pytest.raises(ServingError, match="round-9` does not exist") as caught:
        ServingClient(url, sleep=lambda _: None).chat(model="round-9", prompt="hi")
    assert caught.value.status == 404 and len(script.seen) == 1


def test_adapters_and_models(scripted: tuple[Script, str]) -> None:
    script, url = scripted
    script.answers = [(200, {}), (200, {}), (200, {"data": [{"id": "base"}, {"id": "round-1"}]})]
    client = ServingClient(url)
    client.load_adapter("round-1", "/models/round-1/adapter")
    client.unload_adapter("round-1")
    assert client.models() == ["base", "round-1"]
    assert script.seen[0][1:] == (
        "/v1/load_lora_adapter",
        {"lora_name": "round-1", "lora_path": "/models/round-1/adapter", "load_inplace": True},
    )
    assert script.seen[1][1:] == ("/v1/unload_lora_adapter", {"lora_name": "round-1"})


def test_bad_sampling_and_images_are_refused() -> None:
    with pytest.raises(ValueError, match="n must be"):
        Sampling(n=0)
    with pytest.raises(ValueError, match="top_p"):
        Sampling(top_p=0)
    with pytest.raises(ValueError, match="unsupported image"):
        chat_messages("hi", b"not an image")
