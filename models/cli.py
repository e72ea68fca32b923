"""`python -m models.cli build-tiny`: build (or reuse) the tiny LLaVA base policy."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def build_tiny(out: Path, *, force: bool = False, steps: int | None = None, seed: int = 0) -> dict[str, object]:
    from dataclasses import replace

    from tqdm import tqdm  # type: ignore[import-untyped]

    from models.tiny import TinySpec, build_toy_model, is_built

    spec = TinySpec(seed=seed)
    if steps is not None:
        spec = replace(spec, steps=steps)
    if is_built(out, spec) and not force:
        print(f"Reusing the tiny model at {out} (same spec; --force rebuilds).", file=sys.stderr)
        return build_toy_model(out, spec)
    bar = tqdm(total=spec.steps, desc="SFT on the toy world", unit="step", file=sys.stderr)

    def progress(step: int, total: int, loss: float) -> None:
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.3f}")

    try:
        return build_toy_model(out, spec, progress=progress, force=force)
    finally:
        bar.close()


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
