"""Loss curves of 1 and 2 training processes at the same global batch, side by side.

    .venv/bin/python bench/distributed.py [--model testbed/tiny-base] [--epochs 4]

DDPO and the reward model run on the synthetic world's oracle pairs twice each: as one
process at batch 4, and under `accelerate launch` (deploy/accelerate/ddp.yaml) as two
processes over gloo at batch 2 each, the same 4 pairs a step. It prints both curves step
by step with their largest difference, the seconds of each run, writes the raw curves to
bench/results/distributed.json and draws them to bench/results/distributed.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# What this bench measures: its result is stale once any of these changes (bench/status.py).
MEASURES = (
    "rlhf",
    "contract",
    "deploy/accelerate",
    "bench/distributed.py",
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import results  # noqa: E402
from contract.launch import Launch  # noqa: E402

RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    # trainer: (rlhf.cli command, settings shared by both runs)
    "ddpo": ("dpo", {"max_pairs": 16, "lora.r": 8, "lora.dropout": 0}),
    # 0.2 held out leaves 16 training pairs: whole batches of 4
    "reward": ("reward", {"heldout_share": 0.2, "lora.r": 8, "lora.alpha": 16, "lora.dropout": 0}),
}


def _args(settings: dict[str, Any]) -> list[str]:
    return [item for key, value in settings.items() for item in ("--set", f"{key}={value}")]


def _curve(out: Path) -> list[float]:
    entries = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [entry["loss"] for entry in entries if "loss" in entry]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "testbed" / "tiny-base"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=results.default_path("distributed"))
    results.add_arguments(parser)
    args = parser.parse_args()
    results.begin(args)

    from rlhf.family_matrix import write_pairs

    work = Path(tempfile.mkdtemp(prefix="factloop-distributed-"))
    pairs = write_pairs(work / "pairs", scenes=24)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    measured: dict[str, Any] = {}
    for trainer, (command, settings) in RUNS.items():
        common = {"model": args.model, "data": pairs, "epochs": args.epochs, "logging_steps": 1, "threads": 1}
        common |= {"learning_rate": args.learning_rate, **settings}
        curves, seconds = {}, {}
        for name, launch, batch in (("one", Launch(), 4), ("two", Launch("accelerate", "ddp", 2), 2)):
            out = work / f"{trainer}-{name}"
            began = time.perf_counter()
            subprocess.run(
                launch.command([command, *_args({**common, "batch_size": batch, "output_dir": out})]),
                cwd=REPO,
                env=env,
                check=True,
                capture_output=True,
            )
            seconds[name] = time.perf_counter() - began
            curves[name] = _curve(out)
        gap = max(abs(a - b) for a, b in zip(curves["one"], curves["two"], strict=True))
        measured[trainer] = {"curves": curves, "max_abs_difference": gap, "seconds": seconds}
        print(f"{trainer}: {len(curves['one'])} steps, largest difference {gap:.2e}")
        for step, (a, b) in enumerate(zip(curves["one"], curves["two"], strict=True), start=1):
            print(f"  step {step:3d}  1 process {a:.6f}  2 processes {b:.6f}")
        print(f"  seconds (start-up included): 1 process {seconds['one']:.1f}, 2 processes {seconds['two']:.1f}")
    results.write(args.out, {"epochs": args.epochs, "global_batch": 4, "trainers": measured}, model=args.model)
    _plot(measured, args.out.with_suffix(".png"))
    return 0


def _plot(measured: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(measured), figsize=(5 * len(measured), 3.6))
    for axis, (trainer, found) in zip(axes, measured.items(), strict=True):
        for name, style in (("one", "-"), ("two", "--")):
            curve = found["curves"][name]
            label = "1 process, batch 4" if name == "one" else "2 processes, batch 2 each"
            axis.plot(range(1, len(curve) + 1), curve, style, label=label)
        axis.set_title(f"{trainer}: largest difference {found['max_abs_difference']:.1e}")
        axis.set_xlabel("step")
        axis.set_ylabel("loss")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    print(f"plot: {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
