"""Benchmark provenance (bench/results.py): the revision taken as a run starts, a dirty tree
refused unless allowed (and then described), and every result file stamped by one writer."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import results


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "bench@example.com")
    git(tmp_path, "config", "user.name", "bench")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "bench" / "results").mkdir(parents=True)
    git(tmp_path, "add", "code.py")
    git(tmp_path, "commit", "-qm", "first")
    return tmp_path


def test_a_clean_tree_is_its_revision_and_outputs_do_not_dirty_it(repo: Path) -> None:
    (repo / "bench" / "results" / "old.json").write_text("{}")  # an earlier bench's output
    found = results.start(repo)
    assert found.revision == git(repo, "rev-parse", "HEAD") and found.dirty == [] and found.diff_sha256 is None


def test_a_dirty_tree_is_refused_unless_allowed_and_then_described(repo: Path) -> None:
    (repo / "code.py").write_text("x = 2\n")
    (repo / "new.py").write_text("y = 1\n")
    with pytest.raises(results.DirtyTree, match=r"uncommitted changes \(code.py, new.py\).*--allow-dirty"):
        results.start(repo)
    allowed = results.start(repo, allow_dirty=True)
    assert allowed.dirty == ["code.py", "new.py"] and allowed.diff_sha256 is not None
    # The hash is of the changes: another edit gives another hash.
    (repo / "new.py").write_text("y = 2\n")
    assert results.start(repo, allow_dirty=True).diff_sha256 != allowed.diff_sha256


def test_a_result_records_its_start_arguments_machine_and_what_it_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(results, "_started", None)
    with pytest.raises(RuntimeError, match="begin"):
        results.write(tmp_path / "r.json", {"rows": []})
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--out", type=Path, default=tmp_path)
    results.add_arguments(parser)
    monkeypatch.setattr(results, "start", lambda **_: results.Start("abc123", "2026-12-06T00:00:00+00:00"))
    results.begin(parser.parse_args(["--seeds", "3"]))
    results.write(
        tmp_path / "r.json",
        {"rows": [1]},
        inputs={"heldout": "sha256:1"},
        reused={"rankings": results.stamp()},
    )
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["revision"] == "abc123" and record["started"] == "2026-12-06T00:00:00+00:00"
    assert record["finished"] >= record["started"] and "dirty" not in record
    assert record["arguments"] == {"seeds": "3", "out": str(tmp_path), "allow_dirty": False, "cpu_kernels": None}
    assert record["machine"]["cpus"] >= 1 and isinstance(record["machine"]["gpus"], list)
    assert "vector" in record["machine"]
    assert record["inputs"] == {"heldout": "sha256:1"} and record["reused"]["rankings"]["revision"] == "abc123"
    assert record["rows"] == [1]


def test_status_lists_a_result_whose_measured_code_changed_since(repo: Path) -> None:
    from bench import status

    (repo / "bench" / "timing.py").write_text('MEASURES = ("code.py", "bench/timing.py")\n')
    (repo / "other.py").write_text("z = 1\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "the bench")
    measured = git(repo, "rev-parse", "HEAD")
    result = repo / "bench" / "results" / "timing.json"
    result.write_text(json.dumps({"command": "bench/timing.py --seeds 0", "revision": measured}))
    (repo / "bench" / "results" / "dirty.json").write_text(
        json.dumps({"command": "bench/timing.py", "revision": measured + "+changes"})
    )
    (repo / "bench" / "results" / "lost.json").write_text(
        json.dumps({"command": "bench/timing.py", "revision": "f" * 40})
    )

    def problems() -> dict[str, str | None]:
        return {v.result: v.problem for v in status.check(repo / "bench" / "results", repo=repo)}

    assert status.measures(repo / "bench" / "timing.py") == ("code.py", "bench/timing.py")
    found = problems()
    assert found["timing.json"] is None
    assert found["dirty.json"] == "written from a working tree with uncommitted changes"
    assert "is not in this repository" in str(found["lost.json"])
    # A change elsewhere leaves it current; a change to what it measures makes it stale.
    (repo / "other.py").write_text("z = 2\n")
    git(repo, "commit", "-qam", "elsewhere")
    assert problems()["timing.json"] is None
    (repo / "code.py").write_text("x = 3\n")
    git(repo, "commit", "-qam", "the measured code")
    assert str(problems()["timing.json"]).startswith("changed since by ")
    assert "the measured code" in str(problems()["timing.json"])


def test_every_bench_declares_what_it_measures_and_begins_its_run() -> None:
    from bench import status

    scripts = [p for p in sorted(status.BENCH.glob("*.py")) if "results.write(" in p.read_text()]
    assert len(scripts) >= 17
    for script in scripts:
        text = script.read_text()
        assert all((status.REPO / path).exists() for path in status.measures(script)), script.name
        assert "results.begin(args)" in text and "results.add_arguments(parser)" in text, script.name


def test_the_published_tables_are_what_the_results_give() -> None:
    """Every generated table on the pages equals what bench/tables.py renders from its JSON."""
    from bench import tables

    marked = 0
    for page in tables.pages():
        text = page.read_text()
        _, changed = tables.render(text, where=page.name)
        marked += text.count("<!-- bench:")
        assert changed == [], f"{page.name}: run `.venv/bin/python bench/tables.py` ({', '.join(changed)})"
    assert marked >= 2
    with pytest.raises(ValueError, match="no generated table named 'nothing'"):
        tables.render("<!-- bench:nothing -->\nold\n<!-- /bench:nothing -->\n", where="page.md")


def test_every_result_file_is_published_by_a_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """No raw result sits in bench/results/ unpublished, and every table a page marks reads one."""
    from bench import tables

    read: set[str] = set()
    load = tables._load

    def recorded(name: str) -> dict[str, object]:
        read.add(name)
        return load(name)

    monkeypatch.setattr(tables, "_load", recorded)
    for page in tables.pages():
        tables.render(page.read_text(), where=page.name)
    published = {path.name for path in tables.RESULTS.glob("*.json")}
    assert read == published, f"not in any table: {sorted(published - read)}; missing: {sorted(read - published)}"


def test_the_machine_names_the_cpu_and_the_kernels_torch_runs(tmp_path: Path) -> None:
    """Two CPUs that print the same model name can run different torch kernels (AVX2 or
    AVX-512), whose sums round differently: the record tells them apart."""
    import torch

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n"
        "model name\t: AMD EPYC\nstepping\t: 1\nflags\t\t: fpu sse4_2 avx avx2 fma\n\n"
        "processor\t: 1\nvendor_id\t: AuthenticAMD\nmodel name\t: another\nflags\t\t: avx512f\n"
    )
    found = results.machine(cpuinfo)
    assert found["processor"] == "AMD EPYC"
    assert found["cpu_id"] == "AuthenticAMD cpu family 25 model 1 stepping 1"
    assert found["vector"] == "avx2"  # the first processor's flags, its widest set
    assert found["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    bare = results.machine(tmp_path / "absent")
    assert "cpu_id" not in bare and bare["vector"] is None and bare["cpus"] >= 1


def test_cpu_kernels_hold_torch_to_an_instruction_set_and_are_recorded() -> None:
    """`--cpu-kernels avx2` makes torch run its AVX2 kernels on any CPU that has them (so a
    figure from an AVX2 machine can be repeated on an AVX-512 one), and the result says so."""
    import torch

    script = (
        "import argparse, json, sys; sys.path.insert(0, '.'); from bench import results\n"
        "parser = argparse.ArgumentParser(); results.add_arguments(parser)\n"
        "results.hold_kernels(parser.parse_args(['--cpu-kernels', 'avx2']).cpu_kernels)\n"
        "import torch; print(json.dumps(results.machine()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in results.KERNEL_VARIABLES}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=results.REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout.strip().splitlines()[-1])
    if found["vector"] in ("avx512f", "avx2"):
        assert found["torch_cpu_capability"] == "AVX2"
    assert found["kernel_settings"] == results.KERNEL_SETTINGS["avx2"]
    # Once torch is loaded the choice can no longer take effect: refused, nothing set.
    assert "torch" in sys.modules and torch.backends.cpu.get_cpu_capability()
    environ: dict[str, str] = {}
    with pytest.raises(SystemExit, match="torch is already loaded"):
        results.hold_kernels("avx2", environ)
    assert environ == {}
    results.hold_kernels(None, environ)
    assert environ == {}
