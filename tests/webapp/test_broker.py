"""The embedded filesystem broker: a message appears in the queue folder whole (written
aside, then renamed), so a worker polling the folder never reads a half-written file."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

import webapp.celery  # noqa: F401  (registers the transport, as every FactLoop process does)
from webapp import broker


def connect(folder: Path) -> Connection:
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "control_folder": str(folder)}
    return Connection("filesystem://", transport_options=options | {"polling_interval": 0.01})


def test_filesystem_urls_mean_the_atomic_transport(tmp_path: Path) -> None:
    with connect(tmp_path) as connection:
        assert type(connection.transport) is broker.Transport


def test_nothing_of_a_message_is_visible_before_it_is_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[list[str], bytes]] = []
    rename = os.replace

    def watching(source: str, target: str) -> None:
        # Just before the rename: the queue folder holds no message of the queue yet, and
        # the staged file already holds all of it.
        seen.append((sorted(n for n in os.listdir(tmp_path) if n.endswith(".whole.msg")), Path(source).read_bytes()))
        rename(source, target)

    monkeypatch.setattr(broker.os, "replace", watching)
    with connect(tmp_path) as connection:
        queue = connection.SimpleQueue("whole")
        queue.put({"n": 1, "text": "x" * 10_000})
        [(listed, staged)] = seen
        assert listed == [] and json.loads(staged)["properties"]["delivery_info"]["routing_key"] == "whole"
        assert queue.get(timeout=5).payload == {"n": 1, "text": "x" * 10_000}
        queue.close()
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".part")]


def test_a_consumer_polling_while_a_producer_writes_reads_every_message(tmp_path: Path) -> None:
    # Queues of their own per test: kombu's virtual transports keep declared exchanges in
    # process-wide state, so a name another test declared on another folder would not bind here.
    # Messages of 4 MB take long enough to write that kombu's own transport let the consumer
    # read a half-written one (JSONDecodeError) in about one run of two on the 2-core machine.
    count = 40
    received: list[Any] = []
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            with connect(tmp_path) as connection:
                queue = connection.SimpleQueue("polled")
                while len(received) < count:
                    message = queue.get(timeout=20)
                    received.append(message.payload["n"])
                    message.ack()
                queue.close()
        except Exception as error:  # noqa: BLE001  (a decode error in the consumer fails the test)
            errors.append(error)

    reader = threading.Thread(target=consume)
    reader.start()
    with connect(tmp_path) as connection:
        queue = connection.SimpleQueue("polled")
        for n in range(count):
            queue.put({"n": n, "text": "y" * 4_000_000})
        queue.close()
    reader.join(timeout=120)
    assert errors == [] and sorted(received) == list(range(count))
