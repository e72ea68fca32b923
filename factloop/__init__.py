"""FactLoop's Python client: drive the loop from a script or a notebook (`factloop.client`)."""

from factloop.client import Client, FactLoopError

__all__ = ["Client", "FactLoopError"]
