"""Putting a registered version in front of annotators: hot-load it into the vLLM server
and make it the registry's `serving` version. Going back to an earlier version is the same
act, recorded as a rollback; both go into the audit log."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from annotation.models import AuditEvent
from annotation.rules import audit
from contract.family_gaps import REFUSALS
from models.registry import ModelVersion, Registry, RegistryError
from models.replicas import ReplicaPool, connect
from models.server import ServerError, probe_architecture, serve_version, unserved_reason
from models.serving import ServingClient, ServingError


def vllm_urls() -> list[str]:
    """The vLLM servers FactLoop talks to: FACTLOOP_VLLM_URLS, else FACTLOOP_VLLM_URL."""
    return list(settings.FACTLOOP_VLLM_URLS) or [settings.FACTLOOP_VLLM_URL]


def serving_client(timeout: float = 120.0) -> ServingClient | ReplicaPool:
    """A client of the server, or a pool of the replicas (models/replicas.py)."""
    return connect(vllm_urls(), timeout=timeout)


class DeployRefused(Exception):
    """The version cannot be deployed (the message says why); nothing changed."""


class RegisterRefused(Exception):
    """The model cannot be registered (the message says why); nothing was written."""


# A hub id as transformers takes it: an organisation (or user) and a name.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json", "tokenizer.json")


def check_base_model(model: str) -> str:
    """Why `model` cannot be a base model, or "" when it can: a local folder holding a
    transformers checkpoint (config.json naming its model_type, and a processor or
    tokenizer), or a hub id (org/name), fetched by whoever loads it."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            return f"{model} is a file, not a checkpoint folder"
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            return f"{model} holds no readable config.json: not a transformers checkpoint"
        if not isinstance(config, dict) or not config.get("model_type"):
            return f"{model}/config.json names no model_type"
        if reason := REFUSALS.get((config["model_type"], "vllm")):
            return f"{model} cannot be served: {reason}"
        if not any((path / name).is_file() for name in PROCESSOR_FILES):
            return f"{model} holds no processor or tokenizer ({', '.join(PROCESSOR_FILES)})"
        return _unservable(path)
    if model.startswith((".", "/", "~")) or not _HUB_ID.match(model):
        return f"{model} is neither a checkpoint folder here nor a hub id (organisation/name)"
    return ""


def _unservable(path: Path) -> str:
    """Why the pinned vLLM cannot serve the checkpoint, asked of the serving venv itself (a
    family the table of documented gaps does not list is probed, never assumed to work);
    "" when it can, or when this machine has no serving venv to ask."""
    python = Path(settings.FACTLOOP_SERVING_PYTHON)
    if not python.exists():
        return ""
    try:
        found = probe_architecture(path, python)
    except (ServerError, subprocess.TimeoutExpired) as error:
        return f"{path}: the serving venv could not say whether vLLM serves it: {error}"
    reason = unserved_reason(found)
    return f"{path} cannot be served: {reason}" if reason else ""


def register_model(
    name: str, model: str, *, adapter: Path | None = None, by: Any = None, registry: Registry | None = None
) -> ModelVersion:
    """Record a base version (or a base plus a LoRA adapter) a round can start from. A local
    folder is checked and recorded by its absolute path; a hub id as given."""
    registry = registry or Registry(settings.FACTLOOP_MODEL_DIR)
    if problem := check_base_model(model):
        raise RegisterRefused(problem)
    path = Path(model).expanduser()
    base = str(path.resolve()) if path.exists() else model
    try:
        version = registry.register(name, base_model=base, adapter_dir=adapter)
    except RegistryError as error:
        raise RegisterRefused(str(error)) from None
    audit.record(AuditEvent.Action.REGISTER, name, by=by, base_model=base, adapter=bool(adapter))
    return version


def policy_choices(registry: Registry | None = None) -> list[str]:
    """The registered policy versions a round may use (rejected ones left out), newest first."""
    registry = registry or Registry(settings.FACTLOOP_MODEL_DIR)
    names = [v.name for v in registry if v.kind == "policy" and registry.status(v.name) != "rejected"]
    return names[::-1]


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
    """Load `name` on the server, or every replica (FACTLOOP_VLLM_URLS), if it is an adapter
    a server lacks, and mark it the serving version; the one serving before goes back to `ready`. A rollback
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
    servers = ", ".join(vllm_urls())
    try:
        with serving_client() as client:
            served_as = serve_version(client, registry, name)
    except (ServingError, RegistryError) as error:
        raise DeployRefused(f"the server at {servers} did not take {name!r}: {error}") from None
    previous = serving_version(registry)
    rollback = previous is not None and previous != name and version.created_at < registry.get(previous).created_at
    for other in registry:
        if other.name != name and other.kind == "policy" and registry.status(other.name) == "serving":
            registry.set_status(other.name, "ready")
    registry.set_status(name, "serving")
    deployment = Deployment(name, previous, rollback, served_as)
    action = AuditEvent.Action.ROLLBACK if rollback else AuditEvent.Action.DEPLOY
    audit.record(action, name, by=by, previous=previous, server=servers, reason=reason)
    return deployment
