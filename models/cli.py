"""`python -m models.cli build-tiny`: build (or reuse) the tiny LLaVA base policy."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def build_tiny(out: Path, *, force: bool = False, steps: int | None = None, seed: int = 0) -> dict[str, object]:
    from dataclasses import replace

    from tqdm import tqdm  # type: ignore[import-untyped]

    from models.tiny import TinySpec, build_toy_model

    spec = TinySpec(seed=seed)
    if steps is not None:
        spec = replace(spec, steps=steps)
    # The bar appears with the first training step, so a reused build shows none.
    bars: list[Any] = []

    def progress(step: int, total: int, loss: float) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc="SFT on the toy world", unit="step", file=sys.stderr))
        bars[0].update(step - bars[0].n)
        bars[0].set_postfix(loss=f"{loss:.3f}")

    try:
        manifest = build_toy_model(out, spec, progress=progress, force=force)
    finally:
        for bar in bars:
            bar.close()
    if not bars:
        print(f"Reusing the tiny model at {out} (same spec; --force rebuilds).", file=sys.stderr)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.cli", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build-tiny", help="build the tiny LLaVA base policy, or reuse it if built")
    build.add_argument("--out", type=Path, required=True, help="folder to write the model to")
    build.add_argument("--force", action="store_true", help="rebuild even when an identical build exists")
    build.add_argument("--steps", type=int, help="SFT steps (default: the spec's)")
    build.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    manifest = build_tiny(args.out, force=args.force, steps=args.steps, seed=args.seed)
    summary = {k: manifest[k] for k in ("parameters", "final_loss", "build_seconds")}
    print(json.dumps({"model": str(args.out), **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
