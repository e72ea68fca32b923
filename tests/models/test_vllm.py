"""The serving client against a real vLLM server (the CPU build here) serving the tiny
LLaVA: images reach the model, samples differ, LoRA adapters load, route and swap."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from models.server import BASE_NAME
from models.serving import Sampling, ServingClient, ServingError
from testbed.toyworld import render, sample_scenes

pytestmark = [pytest.mark.slow, pytest.mark.serving]

GREEDY = Sampling(temperature=0.0, max_tokens=48)
PROMPT = "Describe the image."


def png(scene: Any) -> bytes:
    buffer = io.BytesIO()
    render(scene).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def scenes() -> list[Any]:
    return sample_scenes(4242, 3, prefix="serve")


@pytest.fixture
def client(vllm_server: Any) -> Any:
    with ServingClient(vllm_server.url, timeout=60) as client:
        yield client


def answers(client: ServingClient, model: str, scenes: list[Any]) -> list[str]:
    return [client.chat(model=model, prompt=PROMPT, image=png(scene), sampling=GREEDY).texts[0] for scene in scenes]


def test_greedy_answers_match_transformers_so_the_image_got_through(
    client: ServingClient, base_policy: Path, scenes: list[Any]
) -> None:
    import torch

    from rlhf.common import load_policy
    from testbed.tiny import generate

    torch.set_num_threads(1)
    served = answers(client, BASE_NAME, scenes)
    model, processor = load_policy(str(base_policy))
    local = generate(model, processor, [render(s) for s in scenes], [PROMPT] * len(scenes), max_new_tokens=48)
    assert [text.strip() for text in served] == [text.strip() for text in local]
    assert len(set(served)) == len(scenes)  # different images, different descriptions


def test_k_sampled_candidates_differ(client: ServingClient, scenes: list[Any]) -> None:
    result = client.chat(
        model=BASE_NAME, prompt=PROMPT, image=png(scenes[0]), sampling=Sampling(n=4, temperature=1.0, seed=3)
    )
    assert len(result.texts) == 4 and len(set(result.texts)) >= 2
    assert result.completion_tokens > 0
    with_logprobs = client.chat(model=BASE_NAME, prompt=PROMPT, image=png(scenes[0]), sampling=Sampling(logprobs=2))
    assert with_logprobs.choices[0].logprobs and all(lp <= 0 for _, lp, _ in with_logprobs.choices[0].logprobs)


def test_an_adapter_changes_the_output_routes_by_name_and_swaps_in_place(
    client: ServingClient, adapters: dict[str, Path], scenes: list[Any]
) -> None:
    base = answers(client, BASE_NAME, scenes)
    client.load_adapter("a", str(adapters["a"]), replace=False)
    client.load_adapter("b", str(adapters["b"]), replace=False)
    assert {"a", "b", BASE_NAME} <= set(client.models())
    with_a, with_b = answers(client, "a", scenes), answers(client, "b", scenes)
    assert with_a != base and with_b != base and with_a != with_b
    assert answers(client, BASE_NAME, scenes) == base  # the base model is untouched

    with pytest.raises(ServingError):
        client.load_adapter("a", str(adapters["b"]), replace=False)  # a name is loaded once...
    client.load_adapter("a", str(adapters["b"]), replace=True)  # ...unless replaced in place
    assert answers(client, "a", scenes) == with_b

    client.unload_adapter("a")
    assert "a" not in client.models()
    with pytest.raises(ServingError) as refused:
        client.chat(model="a", prompt=PROMPT, image=png(scenes[0]), sampling=GREEDY)
    assert refused.value.status == 404
    client.unload_adapter("b")
