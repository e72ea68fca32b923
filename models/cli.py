"""`python -m models.cli build-tiny`: the tiny LLaVA base policy, shipped with the
repository; `--force` rebuilds it, choosing its checkpoint on validation scenes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rlhf.scene_eval import evaluate_toyworld
from testbed.tiny import SHIPPED, OutOfBand, TinySpec, build_toy_model


def build_tiny(out: Path = SHIPPED, *, force: bool = False, steps: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Reuse the build at `out`, copy the shipped one there, or build one (`force`, or a
    spec the shipped model was not built from) that lands in the band; raises `OutOfBand`."""
    from dataclasses import replace

    from tqdm import tqdm  # type: ignore[import-untyped]

    spec = TinySpec(seed=seed)
    if steps is not None:  # the checkpoint choice scales with the schedule
        spec = replace(
            spec,
            steps=steps,
            max_steps=steps * spec.max_steps // spec.steps,
            validate_from=min(steps, spec.validate_from),
            validate_every=min(steps, spec.validate_every),
        )
    # The bar appears with the first training step, so a reused build shows none.
    bars: list[Any] = []

    def progress(step: int, total: int, loss: float) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc="SFT on the toy world", unit="step", file=sys.stderr))
        bars[0].total = total
        bars[0].update(step - bars[0].n)
        bars[0].set_postfix(loss=f"{loss:.3f}")

    def report(line: str) -> None:
        (bars[0].write if bars else print)(f"validation: {line}", file=sys.stderr)

    try:
        manifest = build_toy_model(out, spec, measure=evaluate_toyworld, progress=progress, report=report, force=force)
    finally:
        for bar in bars:
            bar.close()
    if not bars:
        print(f"Using the tiny model at {out} (built from this spec; --force rebuilds).", file=sys.stderr)
    elif manifest["validation"]:
        chosen = next(row for row in manifest["validation"] if row["step"] == manifest["chosen_step"])
        print(f"Chose step {manifest['chosen_step']} on the validation scenes: {chosen}", file=sys.stderr)
    return manifest


def summary(out: Path, manifest: dict[str, Any]) -> str:
    keys = ("spec_hash", "parameters", "chosen_step", "final_loss", "build_seconds")
    return json.dumps({"model": str(out), **{k: manifest.get(k) for k in keys}})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.cli", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build-tiny", help="the tiny LLaVA base policy: reuse, copy the shipped one, or build")
    build.add_argument("--out", type=Path, default=SHIPPED, help=f"folder (default: the shipped model, {SHIPPED})")
    build.add_argument("--force", action="store_true", help="rebuild even when a build of the same spec exists")
    build.add_argument("--steps", type=int, help="SFT steps (default: the spec's)")
    build.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    try:
        manifest = build_tiny(args.out, force=args.force, steps=args.steps, seed=args.seed)
    except OutOfBand as error:
        print(f"build-tiny: {error}", file=sys.stderr)
        return 1
    print(summary(args.out, manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
