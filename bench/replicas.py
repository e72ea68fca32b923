"""Generation throughput with one vLLM replica and with two (models/replicas.py).

    .venv/bin/python bench/replicas.py --model testbed/tiny-base [--prompts 64] [--k 4]
        [--max-tokens 64] [--concurrency 8] [--repeats 2] [--pin]

Two vLLM servers of the model are started from the serving venv (`make serving`). After one
untimed pass on each server, the same requests (P prompts of the toy world, K candidates
each, sampled at temperature 0.7) go through a `ReplicaPool` of the first server alone and
of both, alternately (1, 2, 1, 2, ...), side by side in one run. It prints candidates per
hour and completion tokens per second for each, and the ratio two/one. On the 2-core
development machine both servers share the same cores, which bounds the ratio near 1: on
separate GPUs each replica brings its own. With `--pin`, each server's threads are bound to
a core of its own (vLLM's VLLM_CPU_OMP_THREADS_BIND: the first to core 0, the second to
core 1), as replicas on separate hardware would be; the client's threads still share the
machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

# What this bench measures: its result is stale once any of these changes (bench/status.py).
MEASURES = (
    "models",
    "bench/replicas.py",
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import results, serving  # noqa: E402
from bench.generation import PROMPT, scenes_png  # noqa: E402


def run(urls: list[str], images: list[bytes], k: int, max_tokens: int, concurrency: int) -> dict[str, Any]:
    from models.replicas import ReplicaPool
    from models.serving import Sampling

    sampling = Sampling(n=k, temperature=0.7, max_tokens=max_tokens)
    with ReplicaPool(urls) as pool, ThreadPoolExecutor(concurrency) as threads:
        began = time.perf_counter()
        answers = list(
            threads.map(lambda image: pool.chat(model="base", prompt=PROMPT, image=image, sampling=sampling), images)
        )
        seconds = time.perf_counter() - began
        served = [r["served"] for r in pool.stats()]
    tokens = sum(a.completion_tokens for a in answers)
    candidates = sum(len(a.choices) for a in answers)
    return {
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "candidates_per_hour": candidates / seconds * 3600,
        "served": served,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "testbed" / "tiny-base"))
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--pin", action="store_true", help="bind each server to a core of its own")
    parser.add_argument("--serving-python", type=Path, default=REPO / ".venv-serving" / "bin" / "python")
    parser.add_argument("--out", type=Path, default=results.default_path("replicas"))
    results.add_arguments(parser)
    args = parser.parse_args()
    results.begin(args)

    images = [png for _, png in scenes_png(args.prompts)]
    with ExitStack() as stack:
        urls = [
            stack.enter_context(
                serving.served(
                    args.model,
                    None,
                    python=args.serving_python,
                    max_num_seqs=16,
                    port=8611 + core,
                    cpus=str(core) if args.pin else None,
                )
            )
            for core in (0, 1)
        ]
        for url in urls:  # warm-up: a fresh server is slow on its first batches of each shape
            run([url], images, args.k, args.max_tokens, args.concurrency)
        runs: dict[str, list[dict[str, Any]]] = {"one": [], "two": []}
        for repeat in range(args.repeats):
            for name, chosen in (("one", urls[:1]), ("two", urls)):
                outcome = run(chosen, images, args.k, args.max_tokens, args.concurrency)
                runs[name].append(outcome)
                print(
                    f"repeat {repeat + 1} {name}: {outcome['candidates_per_hour']:.0f} candidates/h, "
                    f"{outcome['tokens_per_second']:.1f} tokens/s, served {outcome['served']}",
                    file=sys.stderr,
                )
    median = {name: statistics.median(r["candidates_per_hour"] for r in found) for name, found in runs.items()}
    ratio = median["two"] / median["one"]
    print(f"candidates/hour, median of {args.repeats}: one replica {median['one']:.0f}, two {median['two']:.0f}")
    print(f"two / one = {ratio:.2f}")
    results.write(
        args.out,
        {
            "prompts": args.prompts,
            "k": args.k,
            "max_tokens": args.max_tokens,
            "concurrency": args.concurrency,
            "pinned": args.pin,
            "runs": runs,
            "median_candidates_per_hour": median,
            "two_over_one": ratio,
        },
        model=args.model,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
