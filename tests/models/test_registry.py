"""Model versions on disk: atomic, unique, immutable."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from models.registry import Registry, RegistryError, UnknownVersion, VersionExists


def adapter(tmp_path: Path, rank: int = 8) -> Path:
    folder = tmp_path / f"adapter-{rank}"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank}))
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    return folder


def test_register_and_read_back(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "models")
    base = registry.register("tiny-base", base_model="/models/tiny", metrics={"chair_i": 0.16})
    child = registry.register(
        "round-1", base_model="/models/tiny", adapter_dir=adapter(tmp_path), parent="tiny-base", round=1
    )
    assert registry.get("round-1") == child and child.adapter == "adapter"
    assert registry.adapter_path("tiny-base") is None
    assert (registry.adapter_path("round-1") / "adapter_config.json").is_file()  # type: ignore[operator]
    assert [v.name for v in registry.lineage("round-1")] == ["round-1", "tiny-base"]
    assert [v.name for v in registry] == ["tiny-base", "round-1"]
    assert base.metrics == {"chair_i": 0.16} and base.created_at
    assert registry.status("round-1") == "ready"
    registry.set_status("round-1", "serving")
    assert registry.status("round-1") == "serving"
    assert child.kind == "policy"
    scorer = registry.register("rm-1", base_model="/models/tiny", adapter_dir=adapter(tmp_path, 4), kind="reward")
    assert registry.get("rm-1").kind == "reward" == scorer.kind


def test_manifests_from_before_kinds_read_as_policies(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.register("old", base_model="m")
    manifest = registry.path_of("old") / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["kind"]
    manifest.write_text(json.dumps(data))
    assert registry.get("old").kind == "policy"


def test_names_are_unique_and_versions_immutable(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.register("v1", base_model="hub/model")
    with pytest.raises(VersionExists):
        registry.register("v1", base_model="other/model")
    assert registry.get("v1").base_model == "hub/model"


def test_concurrent_registrations_of_one_name_leave_exactly_one(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    outcomes: list[str] = []

    def register(base: str) -> None:
        try:
            registry.register("race", base_model=base, adapter_dir=adapter(tmp_path / base, 4))
            outcomes.append("won")
        except VersionExists:
            outcomes.append("lost")

    for base in ("a", "b", "c", "d"):
        (tmp_path / base).mkdir()
    threads = [threading.Thread(target=register, args=(base,)) for base in ("a", "b", "c", "d")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["lost", "lost", "lost", "won"]
    assert [path.name for path in (tmp_path / "versions").iterdir()] == ["race"]


def test_a_failed_registration_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = Registry(tmp_path)

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("models.registry._fsync_tree", broken)
    with pytest.raises(OSError, match="disk full"):
        registry.register("v1", base_model="hub/model", adapter_dir=adapter(tmp_path))
    assert list((tmp_path / "versions").iterdir()) == []
    with pytest.raises(UnknownVersion):
        registry.get("v1")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "../escape", "base_model": "m"}, "invalid version name"),
        ({"name": "", "base_model": "m"}, "invalid version name"),
        ({"name": "v", "base_model": " "}, "needs a base model"),
        ({"name": "v", "base_model": "m", "parent": "nope"}, "parent version 'nope'"),
        ({"name": "v", "base_model": "m", "status": "great"}, "unknown status"),
        ({"name": "v", "base_model": "m", "kind": "critic"}, "unknown kind"),
    ],
)
def test_bad_registrations_are_refused(tmp_path: Path, kwargs: dict[str, str], message: str) -> None:
    registry = Registry(tmp_path)
    name = kwargs.pop("name")
    with pytest.raises(RegistryError, match=message):
        registry.register(name, **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "versions").exists() or list((tmp_path / "versions").iterdir()) == []


def test_an_adapter_folder_without_an_adapter_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match=r"adapter_config\.json"):
        Registry(tmp_path / "models").register("v", base_model="m", adapter_dir=tmp_path / "empty")


def test_unknown_versions_and_statuses(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    with pytest.raises(UnknownVersion):
        registry.get("missing")
    registry.register("v", base_model="m")
    with pytest.raises(RegistryError, match="unknown status"):
        registry.set_status("v", "excellent")
    assert list(Registry(tmp_path / "nothing")) == []
