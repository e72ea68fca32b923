"""Model versions on disk: what FactLoop serves, trains from and evaluates.

Layout under the registry root (`FACTLOOP_MODEL_DIR`, passed in by the caller):

    versions/<name>/manifest.json   what the version is (immutable once registered)
    versions/<name>/adapter/        the LoRA adapter files, when the version has one
    versions/<name>/status          its current status (the one mutable file)
    versions/<name>/evaluations/    its evaluations on held-out sets, one file per set

A version is a base model (a local path or a hub id) plus an optional LoRA adapter, with its
parent version, the round that produced it, its metrics and creation time.

Registration is atomic: everything is written into a hidden temporary folder under
`versions/`, flushed, and renamed into place in one `rename(2)`, which fails if the name is
taken. A reader therefore sees either no version or a complete one, never a half-written
one, and two registrations of one name cannot both succeed. Names are unique and versions
immutable; only the status and the evaluations change, each file by an atomic replace.

No Django here: the web app and the trainers both use this module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contract.protocols import FACTLOOP

MANIFEST = "manifest.json"
STATUS = "status"
ADAPTER = "adapter"
EVALUATIONS = "evaluations"
SCHEMA_VERSION = 1
STATUSES = ("ready", "serving", "retired", "rejected")
KINDS = ("policy", "reward")  # a policy can be served; a reward model scores responses in PPO
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class RegistryError(Exception):
    """A registration or lookup the registry refuses, with the reason."""


class VersionExists(RegistryError):
    pass


class UnknownVersion(RegistryError):
    pass


@dataclass(frozen=True)
class ModelVersion:
    name: str
    base_model: str
    # Relative to the version's folder ("adapter") or None for the base model alone.
    adapter: str | None = None
    parent: str | None = None
    round: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    schema_version: int = SCHEMA_VERSION
    kind: str = "policy"  # manifests written before reward models were registered are policies

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelVersion:
        data = json.loads(text)
        if data.get("schema_version") != SCHEMA_VERSION:
            raise RegistryError(f"manifest schema {data.get('schema_version')!r} is not {SCHEMA_VERSION}")
        return cls(**data)


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class Registry:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.versions = self.root / "versions"

    def path_of(self, name: str) -> Path:
        return self.versions / name

    def register(
        self,
        name: str,
        *,
        base_model: str,
        adapter_dir: Path | None = None,
        parent: str | None = None,
        round: int | None = None,
        metrics: dict[str, Any] | None = None,
        status: str = "ready",
        kind: str = "policy",
    ) -> ModelVersion:
        """Register a version, copying the adapter folder in. Raises VersionExists if the
        name is taken, RegistryError for a bad name, status, parent or adapter folder; on any
        failure nothing of the version is left behind."""
        if not _NAME.match(name):
            raise RegistryError(f"invalid version name {name!r}: letters, digits, '.', '_', '-' (at most 100)")
        if kind not in KINDS:
            raise RegistryError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
        if status not in STATUSES:
            raise RegistryError(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}")
        if not base_model.strip():
            raise RegistryError("a version needs a base model (a local path or a hub id)")
        if parent is not None and not (self.path_of(parent) / MANIFEST).is_file():
            raise UnknownVersion(f"parent version {parent!r} is not registered")
        if adapter_dir is not None and not (Path(adapter_dir) / "adapter_config.json").is_file():
            raise RegistryError(f"{adapter_dir} holds no LoRA adapter (adapter_config.json is missing)")
        if self.path_of(name).exists():
            raise VersionExists(f"version {name!r} is already registered")
        version = ModelVersion(
            name=name,
            base_model=base_model,
            adapter=ADAPTER if adapter_dir is not None else None,
            parent=parent,
            round=round,
            metrics=dict(metrics or {}),
            created_at=datetime.now(UTC).isoformat(timespec="microseconds"),
            kind=kind,
        )
        self.versions.mkdir(parents=True, exist_ok=True)
        staging = self.versions / f".staging-{name}-{uuid.uuid4().hex[:8]}"
        try:
            staging.mkdir()
            if adapter_dir is not None:
                shutil.copytree(adapter_dir, staging / ADAPTER)
            (staging / MANIFEST).write_text(version.to_json())
            (staging / STATUS).write_text(status)
            _fsync_tree(staging)
            try:
                # rename(2) onto an existing, non-empty folder fails: the name is taken.
                os.rename(staging, self.path_of(name))
            except OSError:
                raise VersionExists(f"version {name!r} is already registered") from None
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return version

    def get(self, name: str) -> ModelVersion:
        manifest = self.path_of(name) / MANIFEST
        if not _NAME.match(name) or not manifest.is_file():
            raise UnknownVersion(f"no model version {name!r} in {self.versions}")
        return ModelVersion.from_json(manifest.read_text())

    def adapter_path(self, name: str) -> Path | None:
        version = self.get(name)
        return None if version.adapter is None else self.path_of(name) / version.adapter

    def status(self, name: str) -> str:
        self.get(name)
        return (self.path_of(name) / STATUS).read_text().strip()

    def set_status(self, name: str, status: str) -> None:
        if status not in STATUSES:
            raise RegistryError(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}")
        self.get(name)
        temporary = self.path_of(name) / f".{STATUS}-{uuid.uuid4().hex[:8]}"
        temporary.write_text(status)
        os.replace(temporary, self.path_of(name) / STATUS)

    def record_evaluation(self, name: str, evaluation: dict[str, Any]) -> Path:
        """Keep an evaluation of version `name` (contract.heldout.Evaluation as a dict) in
        its folder, one file per held-out set and protocol (a later one on the same set under
        the same protocol replaces it), written whole; returns the file."""
        self.get(name)
        digest = str(evaluation.get("heldout_digest", ""))
        key = re.sub(r"[^0-9A-Za-z_.-]", "-", digest)[:80] or "unnamed"
        protocol = _protocol(evaluation)
        if protocol != FACTLOOP:  # FactLoop's own keeps the name it had before protocols
            key = f"{key}-{re.sub(r'[^0-9A-Za-z_]', '-', protocol)[:40]}"
        folder = self.path_of(name) / EVALUATIONS
        folder.mkdir(exist_ok=True)
        stamped = {**evaluation, "recorded_at": datetime.now(UTC).isoformat(timespec="microseconds")}
        temporary = folder / f".{key}-{uuid.uuid4().hex[:8]}"
        temporary.write_text(json.dumps(stamped, indent=1) + "\n")
        os.replace(temporary, folder / f"{key}.json")
        return folder / f"{key}.json"

    def evaluations(self, name: str) -> list[dict[str, Any]]:
        """The version's recorded evaluations, oldest first."""
        self.get(name)
        folder = self.path_of(name) / EVALUATIONS
        found = [json.loads(path.read_text()) for path in folder.glob("*.json")] if folder.is_dir() else []
        return sorted(found, key=lambda e: str(e.get("recorded_at", "")))

    def latest_metrics(self, name: str) -> dict[str, Any]:
        """The version's registered metrics, updated by its newest recorded evaluation under
        FactLoop's own protocol (what every round is measured by; a published protocol's
        figures stay in its own evaluation)."""
        found = [e for e in self.evaluations(name) if _protocol(e) == FACTLOOP]
        return {**self.get(name).metrics, **(found[-1].get("metrics", {}) if found else {})}

    def __iter__(self) -> Iterator[ModelVersion]:
        """Every registered version, oldest first (staging folders are invisible)."""
        if not self.versions.is_dir():
            return iter(())
        found = [self.get(path.name) for path in self.versions.iterdir() if (path / MANIFEST).is_file()]
        return iter(sorted(found, key=lambda version: (version.created_at, version.name)))

    def lineage(self, name: str) -> list[ModelVersion]:
        """The version and its ancestors, newest first."""
        chain = [self.get(name)]
        while chain[-1].parent is not None:
            if len(chain) > 10_000:
                raise RegistryError(f"the parents of {name!r} form a cycle")
            chain.append(self.get(chain[-1].parent))
        return chain


def _protocol(evaluation: dict[str, Any]) -> str:
    """The protocol an evaluation followed (one recorded before protocols followed FactLoop's)."""
    return str(evaluation.get("settings", {}).get("protocol", FACTLOOP))
