"""Several vLLM servers serving one policy: requests spread over the healthy replicas, and a
replica that dies leaves its requests to the others.

`ReplicaPool` answers the same calls as `ServingClient` (chat, models, load_adapter,
unload_adapter, health), so generation, deployment and evaluation take either:
`connect(urls)` gives a plain client for one URL and a pool for several
(FACTLOOP_VLLM_URLS). One URL may also be a router in front of replicas (vLLM's production
stack), which then does the spreading itself.

- Spreading: each request goes to the healthy replica with the fewest requests in flight
  (ties in turn), which keeps a fast replica busier than a slow one.
- Failing over: a replica that cannot be reached, or keeps answering 5xx, after its own
  short retries (`ServerUnavailable`) is marked down for `cooldown` seconds and the request
  is sent to another. A request lost with a dead replica is asked again elsewhere, once per
  replica at most; its answer is stored by the caller as for any other request (the
  generation job's unique (round, prompt, index) key), so nothing is lost or stored twice.
  A replica is tried again after its cooldown, once its /health answers.
- Adapters: `load_adapter` loads a round's adapter on every healthy replica. vLLM keeps
  runtime-loaded adapters in memory only, so a replica restarted (or added) later lacks
  them: a replica that answers 404 for an adapter the pool loaded gets it loaded and the
  request is sent again. (vLLM's LoRA resolver plugins are the other way: each replica
  loads an adapter named in a request from a shared folder; see docs/deploy.md.)
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from models.serving import Completion, Sampling, ServerUnavailable, ServingClient, ServingError

ONE_SAMPLE = Sampling()  # the client's default
DEFAULT_COOLDOWN = 10.0  # seconds a failed replica is left alone before it is probed again


@dataclass
class Replica:
    client: ServingClient
    down_until: float = 0.0
    in_flight: int = 0
    served: int = 0  # requests answered
    failures: int = 0  # requests lost to it (then sent elsewhere)
    last_error: str = ""
    probing: bool = False  # a thread is checking whether it is back

    @property
    def url(self) -> str:
        return self.client.base_url


@dataclass
class ReplicaPool:
    urls: Sequence[str]
    timeout: float = 120.0
    retries: int = 1  # per replica, before the request moves to another
    cooldown: float = DEFAULT_COOLDOWN
    api_key: str | None = None
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("a replica pool needs at least one URL")
        self.replicas = [
            Replica(ServingClient(url, timeout=self.timeout, retries=self.retries, api_key=self.api_key))
            for url in self.urls
        ]
        self.adapters: dict[str, str] = {}  # name -> path, loaded through the pool
        self._lock = threading.Lock()
        self._turn = itertools.count()

    def close(self) -> None:
        for replica in self.replicas:
            replica.client.close()

    def __enter__(self) -> ReplicaPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- choosing a replica ------------------------------------------------------------

    def healthy(self) -> list[Replica]:
        """The replicas in service now: up, or past their cooldown and answering /health
        again (an adapter the pool loaded is loaded on such a replica first). The probes run
        outside the pool's lock, one thread per replica at a time: a replica slow to answer
        holds up no request bound for the others."""
        now = self.clock()
        with self._lock:
            ready = [r for r in self.replicas if r.down_until <= 0]
            due = [r for r in self.replicas if 0 < r.down_until <= now and not r.probing]
            for replica in due:
                replica.probing = True
        for replica in due:
            back = replica.client.health() and self._restore_adapters(replica)
            with self._lock:
                replica.probing = False
                replica.down_until = 0.0 if back else self.clock() + self.cooldown
            if back:
                ready.append(replica)
        return ready

    def _mark_down(self, replica: Replica, error: Exception) -> None:
        with self._lock:
            replica.down_until = self.clock() + self.cooldown
            replica.failures += 1
            replica.last_error = str(error)[:500]

    def _restore_adapters(self, replica: Replica) -> bool:
        try:
            served = set(replica.client.models())
            for name, path in list(self.adapters.items()):  # another thread may add one meanwhile
                if name not in served:
                    replica.client.load_adapter(name, path, replace=False)
        except ServingError:
            return False
        return True

    @contextmanager
    def _borrow(self, exclude: set[int]) -> Iterator[Replica]:
        candidates = self.healthy()
        with self._lock:
            ready = [r for r in candidates if id(r) not in exclude and r.down_until <= 0]
            if not ready:
                raise ServerUnavailable(self._all_down())
            turn = next(self._turn)
            # Fewest in flight first; among equals, in turn.
            replica = min(ready, key=lambda r: (r.in_flight, (self.replicas.index(r) - turn) % len(self.replicas)))
            replica.in_flight += 1
        try:
            yield replica
        finally:
            with self._lock:
                replica.in_flight -= 1

    def _all_down(self) -> str:
        errors = "; ".join(f"{r.url}: {r.last_error or 'down'}" for r in self.replicas)
        return f"none of the {len(self.replicas)} vLLM replicas is in service ({errors})"

    # -- the ServingClient calls -------------------------------------------------------

    def chat(
        self,
        *,
        model: str,
        prompt: str = "",
        image: bytes | None = None,
        context: Sequence[dict[str, str]] = (),
        sampling: Sampling = ONE_SAMPLE,
        messages: Sequence[dict[str, Any]] | None = None,
    ) -> Completion:
        tried: set[int] = set()
        while True:
            with self._borrow(tried) as replica:
                tried.add(id(replica))
                try:
                    completion = self._chat_on(replica, model, prompt, image, context, sampling, messages)
                except ServerUnavailable as error:
                    self._mark_down(replica, error)
                    continue  # the next replica takes the request
                with self._lock:
                    replica.served += 1
                return completion

    def _chat_on(
        self,
        replica: Replica,
        model: str,
        prompt: str,
        image: bytes | None,
        context: Sequence[dict[str, str]],
        sampling: Sampling,
        messages: Sequence[dict[str, Any]] | None,
    ) -> Completion:
        def ask() -> Completion:
            return replica.client.chat(
                model=model, prompt=prompt, image=image, context=context, sampling=sampling, messages=messages
            )

        try:
            return ask()
        except ServingError as error:
            # A replica started after the adapter was loaded does not have it: load, ask again.
            if isinstance(error, ServerUnavailable) or error.status != 404 or model not in self.adapters:
                raise
        try:
            replica.client.load_adapter(model, self.adapters[model], replace=False)
        except ServerUnavailable:
            raise
        except ServingError:
            pass  # another request loaded it meanwhile (vLLM refuses a second load of a name)
        return ask()

    def models(self) -> list[str]:
        """The names every replica in service answers to (a name some lack is missing)."""
        first, *others = [replica.client.models() for replica in self._ready_or_raise()]
        return [name for name in first if all(name in names for names in others)]

    def served_root(self, name: str) -> str | None:
        """The model every replica in service answers as `name` (ServingClient.served_root);
        replicas that disagree are an error: a round would mix two models' answers."""
        roots = {replica.url: replica.client.served_root(name) for replica in self._ready_or_raise()}
        if len(set(roots.values())) > 1:
            found = ", ".join(f"{url}: {root}" for url, root in roots.items())
            raise ServingError(f"the replicas serve different models as {name!r} ({found})")
        return next(iter(roots.values()))

    def health(self) -> bool:
        """True when at least one replica is in service."""
        return bool(self.healthy())

    def load_adapter(self, name: str, path: str, *, replace: bool = True) -> None:
        """Load (or with `replace`, swap in place) an adapter on every replica in service;
        a replica down now gets it when it is back."""
        self.adapters[name] = str(path)
        for replica in self._ready_or_raise():
            try:
                if replace or name not in replica.client.models():
                    replica.client.load_adapter(name, str(path), replace=replace)
            except ServerUnavailable as error:
                self._mark_down(replica, error)

    def unload_adapter(self, name: str) -> None:
        self.adapters.pop(name, None)
        for replica in self._ready_or_raise():
            try:
                if name in replica.client.models():
                    replica.client.unload_adapter(name)
            except ServerUnavailable as error:
                self._mark_down(replica, error)

    def _ready_or_raise(self) -> list[Replica]:
        ready = self.healthy()
        if not ready:
            raise ServerUnavailable(self._all_down())
        return ready

    def stats(self) -> list[dict[str, Any]]:
        """Per replica: requests served, lost and in flight, and whether it is in service now."""
        now = self.clock()
        with self._lock:
            return [
                {
                    "url": r.url,
                    "served": r.served,
                    "failures": r.failures,
                    "in_flight": r.in_flight,
                    "up": r.down_until <= now,
                }
                for r in self.replicas
            ]


Serving = ServingClient | ReplicaPool  # what generation, deployment and evaluation talk to


def connect(urls: str | Sequence[str], *, timeout: float = 120.0) -> Serving:
    """A client for one server, or a pool for several (a comma-separated string or a list)."""
    found = [u.strip() for u in (urls.split(",") if isinstance(urls, str) else urls) if u.strip()]
    if not found:
        raise ValueError("no vLLM server URL given")
    if len(found) == 1:
        return ServingClient(found[0], timeout=timeout)
    return ReplicaPool(found, timeout=timeout)
