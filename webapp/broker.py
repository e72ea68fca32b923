"""The embedded broker (`filesystem://`): kombu's filesystem transport, with messages that
appear in the queue folder whole.

kombu's filesystem transport (kombu/transport/filesystem.py, `Channel._put`) creates a
message's file under its final name and then writes it. A consumer that lists the folder in
between moves that file away and reads it empty, and the worker stops with "JSONDecodeError:
Expecting value" (the symptom of kombu issue #1551; `make demo`'s worker met it when its beat
queued the job sweeper while it polled). Here a message is written under a name no consumer
matches (`~NAME.part`: the transport takes a file only if its name after the first dot is
`QUEUE.msg`) and renamed into place; `os.replace` is atomic within one file system, so a
reader sees the whole message or none of it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.json import dumps

ALIAS = "filesystem"


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: dict[str, Any], **kwargs: Any) -> None:  # type: ignore[override]
        """Put a message on `queue`: written aside, then renamed into the queue folder."""
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"  # the transport's own naming
        final = os.path.join(self.data_folder_out, name)
        staging = os.path.join(self.data_folder_out, f"~{name}.part")
        try:
            with open(staging, "wb") as out:
                out.write(dumps(payload).encode())
            os.replace(staging, final)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.unlink(staging)
            raise ChannelError(f"Cannot add file {final!r} to directory") from error


class Transport(filesystem.Transport):
    Channel = Channel


def register() -> None:
    """Make `filesystem://` mean this transport in this process (kombu resolves a broker URL's
    scheme through TRANSPORT_ALIASES)."""
    TRANSPORT_ALIASES[ALIAS] = f"{__name__}:Transport"
