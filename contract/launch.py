"""How the web app starts a trainer: the `python -m rlhf.cli` command line, run alone or
under `accelerate launch` (rlhf/distributed.py says what each process then does).

`python -m contract.launch --parent-pid PID -- COMMAND...` runs COMMAND in place of itself
(exec) after asking Linux to kill it when PID dies: a training job's worker that dies takes
its launcher along, and the launcher's ranks die with the launcher (rlhf.cli arms the same
signal in each rank).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

LAUNCHERS = ("none", "accelerate")
LAUNCHER_PID = "RLHF_LAUNCHER_PID"  # set for a launcher's ranks: the launcher's pid
CONFIGS_DIR = Path(__file__).resolve().parent.parent / "deploy" / "accelerate"


class LaunchError(ValueError):
    """A launch that cannot work as asked; the message says why."""


def named_config(name_or_path: str) -> Path:
    """An accelerate config file: a path, or the name of one shipped in deploy/accelerate
    ("ddp", "fsdp2", "zero2", "zero3")."""
    path = Path(name_or_path)
    if not path.is_file():
        shipped = CONFIGS_DIR / f"{name_or_path}.yaml"
        if not shipped.is_file():
            names = ", ".join(sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml")))
            raise LaunchError(f"no accelerate config {name_or_path!r} (a file, or one of: {names})")
        path = shipped
    return path.resolve()


@dataclass(frozen=True)
class Launch:
    """How a trainer runs: `launcher` "none" (one process) or "accelerate" (`processes`
    processes, with an accelerate config: a file or a shipped name; ddp by default)."""

    launcher: str = "none"
    config: str | None = None
    processes: int = 1

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise LaunchError(f"launcher must be one of {', '.join(LAUNCHERS)}, got {self.launcher!r}")
        if self.processes < 1:
            raise LaunchError("the number of processes must be at least 1")
        if self.launcher == "none" and (self.processes != 1 or self.config):
            raise LaunchError("several processes or an accelerate config need the accelerate launcher")
        if self.config:
            named_config(self.config)

    def command(self, cli_args: list[str], *, parent_pid: int | None = None, python: str = sys.executable) -> list[str]:
        """The command that runs `python -m rlhf.cli CLI_ARGS` this way; with `parent_pid`,
        every process it starts dies with that process."""
        watch = ["--parent-pid", str(parent_pid)] if parent_pid is not None else []
        if self.launcher == "none":
            return [python, "-m", "rlhf.cli", *watch, *cli_args]
        config = named_config(self.config or "ddp")
        accelerate = [python, "-m", "accelerate.commands.launch", "--config_file", str(config)]
        accelerate += ["--num_processes", str(self.processes), "--main_process_port", "0"]
        rlhf = ["-m", "rlhf.cli", *watch, *cli_args]
        if parent_pid is None:
            return [*accelerate, *rlhf]
        return [python, "-m", "contract.launch", "--parent-pid", str(parent_pid), "--", *accelerate, *rlhf]


ONE_PROCESS = Launch()


def die_with_parent(parent_pid: int | None) -> None:
    """Get SIGKILL when the parent dies (Linux prctl PR_SET_PDEATHSIG), so a worker killed
    mid-training takes its trainer along instead of leaving it to race the resumed run.
    With `parent_pid`, exits at once if that parent died before the signal was armed; with
    None, watches whatever process is the parent now (a launcher's rank)."""
    import ctypes
    import signal

    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1  # <linux/prctl.h>
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if parent_pid is not None and os.getppid() != parent_pid:
        raise SystemExit(f"the parent process {parent_pid} is gone")


def main(argv: list[str]) -> None:
    if len(argv) < 4 or argv[0] != "--parent-pid" or argv[2] != "--":
        raise SystemExit("usage: python -m contract.launch --parent-pid PID -- COMMAND...")
    die_with_parent(int(argv[1]))
    # The launcher keeps this pid through exec: its ranks check that it is still their
    # parent once they have armed their own death signal (rlhf.cli), closing the window in
    # which a rank that starts after the launcher died would run on as an orphan.
    os.environ[LAUNCHER_PID] = str(os.getpid())
    os.execvp(argv[3], argv[3:])  # the death signal survives exec


if __name__ == "__main__":
    main(sys.argv[1:])
