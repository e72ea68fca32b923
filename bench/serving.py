"""A vLLM server for a benchmark: the one at `url` if given, else one started here from the
serving venv (`make serving`) on the model, stopped when the benchmark is done."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@contextmanager
def served(
    model: str, url: str | None, *, python: Path, max_num_seqs: int, port: int | None = None, cpus: str | None = None
) -> Iterator[str]:
    """Yield the server's URL."""
    if url is not None:
        yield url
        return
    from models.server import ServerConfig, VLLMServer

    config = ServerConfig(
        model=model,
        python=str(python),
        port=port or 8100 + os.getpid() % 500,
        max_num_seqs=max_num_seqs,
        cpus=cpus,
        log_path=REPO / f"var/bench-vllm-{port or 0}.log",
    )
    server = VLLMServer(config)
    server.start()
    try:
        server.wait_healthy(600)
        yield server.url
    finally:
        server.stop()
