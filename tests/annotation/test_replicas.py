"""Two vLLM replicas behind FACTLOOP_VLLM_URLS (models/replicas.py): a round's generation
spreads over both, the round's adapter is loaded on each, and a replica killed mid-round
leaves its prompts to the other with nothing lost or stored twice."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from annotation.models import Candidate, Job, RoundPrompt
from annotation.worker.tasks import generate_candidates
from models.registry import Registry
from models.replicas import ReplicaPool, connect
from models.server import VLLMServer
from models.serving import Sampling, ServerUnavailable, ServingClient
from tests.annotation.test_generation import registry  # noqa: F401 - the fixture
from tests.conftest import free_port, tiny_vllm_server
from tests.factories import make_generation_round, make_job

pytestmark = [pytest.mark.slow, pytest.mark.serving, pytest.mark.django_db]


@pytest.fixture(scope="module")
def second_replica(base_policy: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    """Another vLLM server of the tiny model beside the session's, warmed up (one for the
    module: the test that kills it comes after the one that needs it alive)."""
    from testbed.toyworld import sample_scenes
    from testbed.toyworld.render import png_of_scene

    with tiny_vllm_server(base_policy, tmp_path_factory.mktemp("replica-b")) as server:
        # A fresh server is slow on its first batches: warm it up with requests in parallel.
        images = [png_of_scene(scene, 96) for scene in sample_scenes(1, 4)]
        with ServingClient(server.url) as client, ThreadPoolExecutor(4) as threads:
            list(threads.map(lambda image: client.chat(model="base", prompt="Describe it.", image=image), images))
        yield server


def _without_adapter(url: str, name: str) -> None:
    with ServingClient(url) as client:
        if name in client.models():
            client.unload_adapter(name)


def test_the_generation_job_reads_the_replicas_from_the_settings(
    settings: Any,
    vllm_server: Any,
    second_replica: VLLMServer,
    registry: Registry,  # noqa: F811
) -> None:
    settings.FACTLOOP_VLLM_URLS = [vllm_server.url, second_replica.url]
    _without_adapter(vllm_server.url, "round-1")
    round_ = make_generation_round("round-1", prompts=6, k=2)
    job = make_job(kind=Job.Kind.GENERATE, queue="generate", params={"round_id": round_.pk})
    generate_candidates.apply(args=(job.pk,))
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert Candidate.objects.filter(round=round_).count() == 12
    replicas = job.result["replicas"]
    assert [r["url"] for r in replicas] == [vllm_server.url, second_replica.url]
    assert all(r["served"] >= 1 for r in replicas)  # both took a share
    for url in (vllm_server.url, second_replica.url):  # the adapter is on each
        with ServingClient(url) as client:
            assert "round-1" in client.models()


def test_a_replica_killed_mid_round_leaves_its_prompts_to_the_other(
    settings: Any,
    vllm_server: Any,
    second_replica: VLLMServer,
    registry: Registry,  # noqa: F811
) -> None:
    from annotation.loop.generation import generate_round

    _without_adapter(vllm_server.url, "round-1")
    prompts, k = 48, 2
    round_ = make_generation_round("round-1", prompts=prompts, k=k, sampling={"temperature": 1.0, "max_tokens": 64})
    pool = ReplicaPool([vllm_server.url, second_replica.url], cooldown=600)
    killed: dict[str, Any] = {}

    def progress(done: int, total: int) -> None:
        replica = pool.stats()[1]
        if done and replica["in_flight"] and not killed:  # it holds requests: kill it outright
            killed.update(at=done, in_flight=replica["in_flight"], served=replica["served"])
            second_replica.kill()

    with pool:
        report = generate_round(round_.pk, client=pool, registry=registry, concurrency=4, progress=progress)
        stats = pool.stats()
    # Killed mid-round with requests in flight (least in flight: each replica had its share).
    assert killed and killed["at"] < prompts, f"the round finished before the kill ({killed}): make it longer"
    assert report.failed == 0 and report.done == prompts, report.errors
    assert stats[1]["failures"] >= 1 and not stats[1]["up"]  # it lost requests in flight...
    assert stats[0]["served"] + stats[1]["served"] == prompts  # ...which the other answered
    assert set(round_.round_prompts.values_list("status", flat=True)) == {RoundPrompt.Status.DONE}
    for round_prompt in round_.round_prompts.all():
        indices = Candidate.objects.filter(round=round_, prompt=round_prompt.prompt).values_list("index", flat=True)
        assert sorted(indices) == list(range(k))  # none lost, none twice
    assert {p["model"] for p in Candidate.objects.filter(round=round_).values_list("params", flat=True)} == {"round-1"}

    # A replica that lacks the adapter (restarted, or added later) gets it on first use.
    _without_adapter(vllm_server.url, "round-1")
    with ReplicaPool([vllm_server.url, second_replica.url], cooldown=600) as again:
        again.adapters["round-1"] = str(registry.adapter_path("round-1"))
        answer = again.chat(model="round-1", prompt="Describe the image.", sampling=Sampling(max_tokens=8))
    with ServingClient(vllm_server.url) as client:
        assert answer.choices and "round-1" in client.models()


def test_a_replica_past_its_cooldown_is_probed_and_gets_the_pools_adapters_back(
    vllm_server: Any,
    registry: Registry,  # noqa: F811
) -> None:
    """A replica marked down is left alone for its cooldown; then /health decides, and one
    that answers gets the adapters the pool serves before any request (a restarted vLLM
    has none of them). One that does not answer starts a new cooldown."""
    _without_adapter(vllm_server.url, "round-1")
    with ReplicaPool([vllm_server.url], cooldown=30) as pool:
        pool.load_adapter("round-1", str(registry.adapter_path("round-1")), replace=False)
        _without_adapter(vllm_server.url, "round-1")  # as if the server had restarted
        replica = pool.replicas[0]
        replica.down_until = pool.clock() + 30  # marked down: left alone meanwhile
        assert not pool.health()
        replica.down_until = pool.clock() - 1  # its cooldown is over
        assert pool.health() and replica.down_until == 0
    with ServingClient(vllm_server.url) as client:
        assert "round-1" in client.models()
    with ReplicaPool([f"http://127.0.0.1:{free_port()}"], cooldown=30) as dead:
        dead.replicas[0].down_until = dead.clock() - 1
        assert not dead.health() and dead.replicas[0].down_until > dead.clock() + 20


def test_with_every_replica_down_a_request_fails_at_once_with_each_replicas_error() -> None:
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    assert isinstance(connect(",".join(dead)), ReplicaPool)
    with ReplicaPool(dead, retries=0) as pool:
        with pytest.raises(ServerUnavailable, match="none of the 2 vLLM replicas is in service") as caught:
            pool.chat(model="base", prompt="hello")
        assert all(url in str(caught.value) for url in dead)
        assert [r["failures"] for r in pool.stats()] == [1, 1]
    assert isinstance(connect(dead[0]), ServingClient)
    with pytest.raises(ValueError):
        connect(" , ")
