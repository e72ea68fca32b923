"""Putting a registered version in front of annotators: hot-load it into the vLLM server
and make it the registry's `serving` version. Going back to an earlier version is the same
act, recorded as a rollback; both go into the audit log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings

from annotation import audit
from annotation.models import AuditEvent
from models.registry import Registry, RegistryError
from models.server import serve_version
from models.serving import ServingClient, ServingError


class DeployRefused(Exception):
    """The version cannot be deployed (the message says why); nothing changed."""


@dataclass(frozen=True)
class Deployment:
    version: str
    previous: str | None
    rollback: bool
    served_as: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "previous": self.previous,
            "rollback": self.rollback,
            "served_as": self.served_as,
        }


def serving_version(registry: Registry) -> str | None:
    """The newest version marked `serving` (one at a time after any deployment)."""
    serving = [v.name for v in registry if v.kind == "policy" and registry.status(v.name) == "serving"]
    return serving[-1] if serving else None


def deploy_version(name: str, *, by: Any = None, registry: Registry | None = None, reason: str = "") -> Deployment:
    """Load `name` on the server at FACTLOOP_VLLM_URL (if it is an adapter the server lacks)
    and mark it the serving version; the one serving before goes back to `ready`. A rollback
    is a deployment of a version older than the one serving (an ancestor or a sibling)."""
    registry = registry or Registry(settings.FACTLOOP_MODEL_DIR)
    try:
        version = registry.get(name)
    except RegistryError as error:
        raise DeployRefused(str(error)) from None
    if version.kind != "policy":
        raise DeployRefused(f"version {name!r} is a {version.kind} model, not a policy to serve")
    if registry.status(name) == "rejected":
        raise DeployRefused(f"version {name!r} was rejected by its gate; register it again to serve it")
    try:
        with ServingClient(settings.FACTLOOP_VLLM_URL) as client:
            served_as = serve_version(client, registry, name)
    except (ServingError, RegistryError) as error:
        raise DeployRefused(f"the server at {settings.FACTLOOP_VLLM_URL} did not take {name!r}: {error}") from None
    previous = serving_version(registry)
    rollback = previous is not None and previous != name and version.created_at < registry.get(previous).created_at
    for other in registry:
        if other.name != name and other.kind == "policy" and registry.status(other.name) == "serving":
            registry.set_status(other.name, "ready")
    registry.set_status(name, "serving")
    deployment = Deployment(name, previous, rollback, served_as)
    action = AuditEvent.Action.ROLLBACK if rollback else AuditEvent.Action.DEPLOY
    audit.record(action, name, by=by, previous=previous, server=settings.FACTLOOP_VLLM_URL, reason=reason)
    return deployment
