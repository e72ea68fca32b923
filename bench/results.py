"""Where a benchmark's raw output goes, `bench/results/NAME.json`, and what produced it, so
that every published figure can be traced to the code and command that measured it.

A bench calls `add_arguments(parser)` and, once its arguments are parsed, `begin(args)`:
that takes the git revision as the run starts and refuses a working tree with uncommitted
changes (outside `bench/results/`, which only holds outputs) unless `--allow-dirty` is
given, in which case the changed paths and a hash of the diff are recorded. `write` is the
one writer of result files; each records the command line, its arguments (seeds
included), the revision (and the dirty state), the start and end times, the machine (CPU
model and identity, cores, vector set, torch's CPU kernels, GPUs), for a model folder its
tiny-model spec hash, and what the caller reports it reused (`reused`) or read (`inputs`),
each with its own provenance.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import MutableMapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
REPO = RESULTS.parent.parent
OUTPUTS = "bench/results/"  # changes here are outputs, not code: they do not make a tree dirty


class DirtyTree(SystemExit):
    """The working tree has uncommitted changes and --allow-dirty was not given."""


@dataclass(frozen=True)
class Start:
    """The code a run starts on: its revision and, for a dirty tree, what differs."""

    revision: str
    started: str
    dirty: list[str] = field(default_factory=list)  # changed or untracked paths
    diff_sha256: str | None = None  # of `git diff HEAD` and the untracked files' contents


_started: Start | None = None
_arguments: dict[str, Any] = {}


def default_path(name: str) -> Path:
    return RESULTS / f"{name}.json"


def model_spec_hash(model: str) -> str | None:
    """The spec hash a tiny-model folder records (None for any other model)."""
    from testbed.tiny import MANIFEST

    try:
        return str(json.loads((Path(model) / MANIFEST).read_text())["spec_hash"])
    except (OSError, ValueError, KeyError):
        return None


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=60).stdout


def start(repo: Path = REPO, *, allow_dirty: bool = False) -> Start:
    """The revision `repo` is at now, with its uncommitted changes (outside bench/results/)
    recorded, or refused (DirtyTree) unless `allow_dirty`."""
    try:
        revision = _git(repo, "rev-parse", "HEAD").strip()
        listed = _git(repo, "status", "--porcelain", "--untracked-files=all").splitlines()
    except (OSError, subprocess.SubprocessError):
        return Start("unknown", _now())
    paths = sorted({line[3:].split(" -> ")[-1] for line in listed if not line[3:].startswith(OUTPUTS)})
    if not paths:
        return Start(revision, _now())
    if not allow_dirty:
        shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
        raise DirtyTree(
            f"{Path(sys.argv[0]).name}: the working tree has uncommitted changes ({shown}); commit them so the "
            "results name the code that ran, or pass --allow-dirty to record the changed paths and the diff's hash"
        )
    digest = hashlib.sha256(_git(repo, "diff", "HEAD", "--binary", "--", ".", f":(exclude){OUTPUTS}").encode())
    for path in paths:
        if (repo / path).is_file():
            digest.update(path.encode() + b"\0" + (repo / path).read_bytes())
    return Start(revision, _now(), paths, digest.hexdigest())


# The settings that hold torch's CPU kernels to one instruction set, whatever the CPU has:
# ATen's dispatch (ATEN_CPU_CAPABILITY, PyTorch's DispatchStub.cpp), oneMKL's BLAS
# (MKL_ENABLE_INSTRUCTIONS, oneMKL developer guide, "Instruction Set Specific Dispatching")
# and oneDNN's JIT kernels (ONEDNN_MAX_CPU_ISA, oneDNN's "CPU Dispatcher Control"). Each is
# read once, when its library first runs, so they are set before torch is imported.
KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")
KERNEL_SETTINGS: dict[str, dict[str, str]] = {
    kernels: dict(zip(KERNEL_VARIABLES, values, strict=True))
    for kernels, values in {
        "avx512": ("avx512", "AVX512", "AVX512_CORE"),
        "avx2": ("avx2", "AVX2", "AVX2"),
        "default": ("default", "SSE4_2", "SSE41"),
    }.items()
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-dirty",
        action="store_true",
        help="run on a working tree with uncommitted changes (the results record the changed paths and the diff's "
        "hash)",
    )
    parser.add_argument(
        "--cpu-kernels",
        choices=tuple(KERNEL_SETTINGS),
        help="run torch's CPU kernels (ATen's, oneMKL's and oneDNN's) of this instruction set, not the widest the CPU "
        "has: to repeat a figure measured on a CPU of another kind (the result records the kernels that ran)",
    )


def hold_kernels(kernels: str | None, environ: MutableMapping[str, str] = os.environ) -> None:
    """Set the kernel settings of `--cpu-kernels` (child processes inherit them); refused
    once torch is loaded, when they could no longer take effect."""
    if not kernels:
        return
    if "torch" in sys.modules:
        raise SystemExit(f"--cpu-kernels {kernels}: torch is already loaded, so its kernels can no longer be chosen")
    environ.update(KERNEL_SETTINGS[kernels])


def begin(args: argparse.Namespace) -> Start:
    """Called once the arguments are parsed: the run's code, taken now (see `start`)."""
    global _started, _arguments
    hold_kernels(getattr(args, "cpu_kernels", None))
    _started = start(allow_dirty=bool(getattr(args, "allow_dirty", False)))
    _arguments = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    return _started


def stamp() -> dict[str, Any]:
    """This run's provenance in brief, for what a bench keeps to reuse later (its `reused`)."""
    if _started is None:
        raise RuntimeError("bench.results.begin(args) was not called")
    return {"revision": _started.revision, "started": _started.started, "command": _command(), "dirty": _started.dirty}


def _command() -> str:
    return " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])


CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo(path: Path) -> dict[str, str]:
    """The first processor's fields in a /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in path.read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


# The CPU's widest vector set decides which kernels torch runs (ATen's dispatch, oneMKL's
# and oneDNN's: KERNEL_SETTINGS above), and their float sums round differently, so a training
# run that repeats exactly on one kind of CPU can differ on another that prints the same
# model name ("AMD EPYC" names AVX2-only and AVX-512 parts).
VECTOR_SETS = ("avx512f", "avx2", "avx", "sse4_2", "asimd")


def machine(cpuinfo: Path = CPUINFO) -> dict[str, Any]:
    """CPU model, cores, the CPU's identity (vendor, family, model, stepping) and widest
    vector set, torch's CPU kernel set where torch is loaded, and the GPUs nvidia-smi lists
    (none without it)."""
    info = _cpuinfo(cpuinfo)
    cpu = info.get("model name") or platform.processor() or platform.machine()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    gpus: list[str] = []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            gpus = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    record: dict[str, Any] = {"cpus": os.cpu_count(), "processor": cpu, "gpus": gpus}
    identity = [info.get("vendor_id", "")] + [
        f"{name} {info[name]}" for name in ("cpu family", "model", "stepping") if info.get(name)
    ]
    if any(identity):
        record["cpu_id"] = " ".join(part for part in identity if part)
    record["vector"] = next((name for name in VECTOR_SETS if name in flags), None)
    held = {name: os.environ[name] for name in KERNEL_VARIABLES if name in os.environ}
    if held:
        record["kernel_settings"] = held
    torch = sys.modules.get("torch")
    if torch is not None:
        record["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return record


def write(
    path: Path,
    payload: dict[str, Any],
    *,
    model: str | None = None,
    inputs: dict[str, Any] | None = None,
    reused: dict[str, Any] | None = None,
) -> None:
    """Write the payload with its provenance, whole (a temporary file renamed into place).
    `inputs` names the data read (a digest each); `reused`, what an earlier run made and
    this one took, each with that run's `stamp()`."""
    if _started is None:
        raise RuntimeError("bench.results.begin(args) was not called: the revision must be taken as the run starts")
    finished = _now()
    record: dict[str, Any] = {
        "command": _command(),
        "arguments": _arguments,
        "revision": _started.revision + ("+changes" if _started.dirty else ""),
        "started": _started.started,
        "finished": finished,
        "date": finished,
        "machine": machine(),
    }
    if _started.dirty:
        record["dirty"] = {key: value for key, value in asdict(_started).items() if key in ("dirty", "diff_sha256")}
    if model is not None:
        record["model"] = model
        record["model_spec_hash"] = model_spec_hash(model)
    if inputs:
        record["inputs"] = inputs
    if reused:
        record["reused"] = reused
    record.update(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".partial")
    staging.write_text(json.dumps(record, indent=2, default=float) + "\n")
    staging.replace(path)
    print(f"raw results: {path}", file=sys.stderr)
