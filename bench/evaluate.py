"""Held-out evaluation speed: through vLLM (what `manage.py evaluate` and `train_round` do)
against transformers in this process, on the same held-out set, side by side in one run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/evaluate.py [--model testbed/tiny-base]
        [--scenes 100] [--workers 32] [--server-url URL]

The held-out set is the synthetic world's first `--scenes` held-out scenes written as a
held-out folder (contract/heldout.py) exactly as `import_toyworld` + the database export
make it; both runs answer every description and POPE probe of it greedily and are scored
by the same evaluator (rlhf/hallucination.py). Prints held-out prompts per second for each, the
ratio vLLM / in-process, and how far their CHAIR_i, CHAIR_s and POPE F1 lie apart.

Without `--server-url` a vLLM server is started from the serving venv (`make serving`) on
the model, and stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# What this bench measures: its result is stale once any of these changes (bench/status.py).
MEASURES = (
    "rlhf/hallucination.py",
    "rlhf/metrics.py",
    "rlhf/scene_eval.py",
    "contract/comparison.py",
    "contract/heldout.py",
    "models",
    "bench/evaluate.py",
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import results, serving  # noqa: E402

DESCRIBE = "Describe the image."


def prompts_of(evaluation: Any) -> int:
    records = evaluation.records
    return len(records["describe"]) + len(records["qa"]) + sum(len(v) for v in records["pope"].values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "testbed/tiny-base"), help="the model folder")
    parser.add_argument("--scenes", type=int, default=100, help="held-out toy scenes (default 100)")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--workers", type=int, default=32, help="requests in flight to vLLM (default 32)")
    parser.add_argument("--server-url", help="a running vLLM server serving the model as 'base'")
    parser.add_argument("--serving-python", type=Path, default=REPO / ".venv-serving/bin/python")
    parser.add_argument("--max-num-seqs", type=int, default=32, help="vLLM's batch size, when started here")
    parser.add_argument("--json", type=Path, default=results.default_path("evaluate"), help="raw results (JSON)")
    results.add_arguments(parser)
    args = parser.parse_args()
    results.begin(args)

    import torch

    from contract.heldout import read_heldout
    from models.serving import ServingClient
    from rlhf.common import load_policy
    from rlhf.hallucination import LocalResponder, Request, ServedResponder, evaluate
    from testbed.toyworld.render import write_heldout_set

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    heldout = read_heldout(
        write_heldout_set(Path(tempfile.mkdtemp(prefix="factloop-bench-eval-")), args.scenes, args.image_size)
    )
    server = serving.served(args.model, args.server_url, python=args.serving_python, max_num_seqs=args.max_num_seqs)
    with server as url, ServingClient(url, timeout=600) as client:
        # Warm-up: the first requests (and each new batch size) compile and allocate.
        warm = [Request(heldout.image_bytes(item), DESCRIBE) for item in heldout.items[: args.workers]]
        ServedResponder(client, "base", max_tokens=args.max_tokens, workers=args.workers).answer(warm)
        began = time.perf_counter()
        served = evaluate(heldout, ServedResponder(client, "base", max_tokens=args.max_tokens, workers=args.workers))
        served_seconds = time.perf_counter() - began
    model, processor = load_policy(args.model)
    began = time.perf_counter()
    local = evaluate(heldout, LocalResponder(model, processor, max_tokens=args.max_tokens))
    local_seconds = time.perf_counter() - began

    prompts = prompts_of(served)
    rows: dict[str, dict[str, Any]] = {
        "vllm": {"seconds": served_seconds, "prompts_per_second": prompts / served_seconds, "metrics": served.metrics},
        "transformers": {
            "seconds": local_seconds,
            "prompts_per_second": prompts / local_seconds,
            "metrics": local.metrics,
        },
    }
    ratio = (prompts / served_seconds) / (prompts / local_seconds)
    gaps = {k: abs(served.metrics[k] - local.metrics[k]) for k in ("chair_i", "chair_s", "pope_f1", "mean_words")}
    print(f"held-out prompts: {prompts} ({args.scenes} descriptions + POPE probes), model {args.model}")
    for name, row in rows.items():
        m = row["metrics"]
        print(
            f"{name:<13} {row['seconds']:7.1f} s  {row['prompts_per_second']:7.2f} prompts/s  "
            f"CHAIR_i {m['chair_i']:.3f}  CHAIR_s {m['chair_s']:.3f}  POPE F1 {m['pope_f1']:.3f}  "
            f"words {m['mean_words']:.1f}"
        )
    print(f"vLLM / in-process: {ratio:.2f}x; metric gaps: " + ", ".join(f"{k} {v:.3f}" for k, v in gaps.items()))
    results.write(
        args.json,
        {
            "prompts": prompts,
            "scenes": args.scenes,
            "workers": args.workers,
            "rows": rows,
            "ratio": ratio,
            "gaps": gaps,
        },
        model=args.model,
    )


if __name__ == "__main__":
    main()
