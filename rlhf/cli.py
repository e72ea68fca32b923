"""`python -m rlhf.cli evaluate --model PATH`: hallucination metrics on held-out toy scenes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf.cli", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    evaluate = commands.add_parser("evaluate", help="CHAIR, POPE and MMHal-style metrics on held-out scenes")
    evaluate.add_argument("--model", required=True, help="a local checkpoint folder or a hub id")
    evaluate.add_argument("--scenes", type=int, default=200, help="held-out scenes (default 200)")
    evaluate.add_argument("--out", type=Path, help="also write the metrics to this JSON file")
    args = parser.parse_args(argv)
    if args.scenes < 1:
        parser.error("--scenes must be at least 1")

    import torch

    from rlhf.evaluate import evaluate_toyworld, heldout_scenes, load_policy

    torch.manual_seed(0)
    try:
        model, processor = load_policy(args.model)
    except (OSError, ValueError) as error:
        # transformers raises OSError for a missing checkpoint and ValueError for a folder
        # that holds no processor or model config.
        print(f"rlhf.cli: cannot load model {args.model!r}: {error}", file=sys.stderr)
        return 2
    metrics = evaluate_toyworld(model, processor, heldout_scenes(args.scenes))
    text = json.dumps(metrics, indent=2, sort_keys=True)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
