"""Candidate generation throughput: FactLoop's Celery path vs vLLM directly vs transformers.

    .venv/bin/python bench/generation.py --model testbed/tiny-base [--prompts 256] [--k 4]
        [--concurrency 8] [--server-url URL]

One batch of requests (P prompts of the toy world x K candidates, sampled at temperature 0.7,
at most `--max-tokens` each) is generated three ways, side by side in one run:
  (a) through FactLoop: a round with the P prompts, the `generate_candidates` job queued on
      Celery (a real worker process, the embedded broker, SQLite), until the job ends;
  (b) straight to the same vLLM server with the serving client, `--concurrency` requests in
      flight, the same requests;
  (c) transformers' `generate` in this process (batched, sampling), no server.
It prints completion tokens per second for each and the ratios a/b (FactLoop's overhead over
raw vLLM; the goal is >= 0.9) and b/c (what serving buys over in-process generation), and
the CPU seconds per 1,000 candidates that FactLoop's worker (with its pool processes) and
the vLLM server (its whole process group) used during (a), with the worker's share of
vLLM's (the goal is under 10%; on a 2-core machine the two compete for the same cores).

Without `--server-url`, a vLLM server is started from the serving venv (`make serving`) on
the model and stopped at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # (a dependency of accelerate and vLLM; pinned in constraints.txt)

# What this bench measures: its result is stale once any of these changes (bench/status.py).
MEASURES = (
    "annotation/labeling",
    "annotation/worker",
    "models",
    "bench/generation.py",
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import results, serving  # noqa: E402

PROMPT = "Describe the image."


def scenes_png(prompts: int) -> list[tuple[Any, bytes]]:
    from testbed.toyworld import render, sample_scenes

    out = []
    for scene in sample_scenes(99, prompts, prefix="bench"):
        buffer = io.BytesIO()
        render(scene).save(buffer, format="PNG")
        out.append((scene, buffer.getvalue()))
    return out


def direct(url: str, images: list[bytes], k: int, max_tokens: int, concurrency: int) -> tuple[int, float]:
    from models.serving import Sampling, ServingClient

    sampling = Sampling(n=k, temperature=0.7, max_tokens=max_tokens)
    with ServingClient(url) as client, ThreadPoolExecutor(concurrency) as pool:
        began = time.perf_counter()
        results = list(
            pool.map(lambda image: client.chat(model="base", prompt=PROMPT, image=image, sampling=sampling), images)
        )
        seconds = time.perf_counter() - began
    return sum(r.completion_tokens for r in results), seconds


def in_process(model_dir: str, scenes: list[Any], k: int, max_tokens: int) -> tuple[int, float]:
    import torch

    from rlhf.common import load_policy
    from testbed.tiny import generate
    from testbed.toyworld import render

    torch.set_num_threads(2)
    model, processor = load_policy(model_dir)
    images = [render(scene) for scene in scenes for _ in range(k)]
    began = time.perf_counter()
    texts = generate(
        model, processor, images, [PROMPT] * len(images), max_new_tokens=max_tokens, do_sample=True, temperature=0.7
    )
    seconds = time.perf_counter() - began
    tokenizer = processor.tokenizer
    # Count as vLLM does: the generated tokens, with the end-of-sequence token.
    tokens = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1 for text in texts)
    return tokens, seconds


def _cpu_seconds(processes: list[Any]) -> float:
    """User plus system CPU seconds the processes have used so far (psutil)."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:  # it ended meanwhile
            continue
        total += times.user + times.system
    return total


def worker_processes(pid: int) -> list[Any]:
    """A Celery worker and its pool's processes."""
    worker = psutil.Process(pid)
    return [worker, *worker.children(recursive=True)]


def server_processes(url: str) -> list[Any]:
    """Every process of the vLLM server listening at `url`: its API process's group (the
    engine and worker processes it started; models/server.py starts it in a session of its
    own)."""
    port = urllib.parse.urlsplit(url).port
    listening = [
        c.pid
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid
    ]
    if not listening:
        return []
    group = os.getpgid(listening[0])
    out = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == group:
                out.append(process)
        except (ProcessLookupError, psutil.Error):
            continue
    return out


def through_celery(
    url: str,
    model_dir: str,
    images: list[tuple[Any, bytes]],
    k: int,
    max_tokens: int,
    concurrency: int,
    broker_url: str | None,
    cpu: dict[str, float] | None = None,
) -> tuple[int, float]:
    """A round of P prompts, generated by a real Celery worker; timed from queueing to the end.
    `cpu`, when given, receives the CPU seconds the worker (with its pool) and the vLLM
    server used meanwhile."""
    var = Path(tempfile.mkdtemp(prefix="factloop-bench-gen-"))
    env = dict(os.environ)
    env.update(
        DEBUG="1",
        FACTLOOP_VAR_DIR=str(var),
        FACTLOOP_VLLM_URL=url,
        FACTLOOP_GENERATE_CONCURRENCY=str(concurrency),
        LOG_LEVEL="WARNING",
        DJANGO_SETTINGS_MODULE="webapp.settings",
    )
    for name in ("DATABASE_URL", "CELERY_BROKER_URL"):  # the embedded default: SQLite, file broker
        env.pop(name, None)
        os.environ.pop(name, None)
    if broker_url:
        env["CELERY_BROKER_URL"] = broker_url
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    from annotation.data.images import add_image, add_prompt
    from annotation.labeling.rounds import add_prompts_to_round, create_round
    from annotation.loop.generation import queue_generation
    from annotation.models import Job, Round
    from annotation.rules.selectors import wait_for_jobs
    from models.registry import Registry
    from webapp.celery import worker_command

    call_command("migrate", verbosity=0)
    from django.conf import settings

    Registry(settings.FACTLOOP_MODEL_DIR).register("bench-base", base_model=model_dir)
    round_ = create_round(policy_version="bench-base")
    Round.objects.filter(pk=round_.pk).update(
        candidates_per_prompt=k, sampling={"temperature": 0.7, "max_tokens": max_tokens}
    )
    prompts = [add_prompt(add_image(png, facts=scene.facts()), PROMPT) for scene, png in images]
    add_prompts_to_round(round_, prompts)

    worker = subprocess.Popen(
        worker_command(sys.executable, ("generate",), loglevel="WARNING"),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(3)  # the worker connects to the broker
        round_.refresh_from_db()
        ours, theirs = worker_processes(worker.pid), server_processes(url)
        before = (_cpu_seconds(ours), _cpu_seconds(theirs))
        began = time.perf_counter()
        job = queue_generation(round_)
        [done] = wait_for_jobs([job.pk], timeout=3600, poll=0.05)
        seconds = time.perf_counter() - began
        if cpu is not None:
            cpu["worker"] = _cpu_seconds(ours) - before[0]
            cpu["vllm"] = _cpu_seconds(theirs) - before[1] if theirs else float("nan")
            # Where the wall time went: waiting for a worker, then the job itself.
            assert done.started_at is not None and done.finished_at is not None
            cpu["queued_seconds"] = (done.started_at - done.created_at).total_seconds()
            cpu["running_seconds"] = (done.finished_at - done.started_at).total_seconds()
    finally:
        worker.terminate()
        worker.wait(30)
    if done.status != Job.Status.SUCCEEDED:
        raise RuntimeError(f"the generation job ended {done.status}: {done.error}")
    return int(done.result["completion_tokens"]), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the model folder (the shipped tiny model: testbed/tiny-base)")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--k", type=int, default=4, help="candidates per prompt")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--server-url", help="a running vLLM server serving the model as 'base'")
    parser.add_argument("--serving-python", type=Path, default=REPO / ".venv-serving/bin/python")
    parser.add_argument("--max-num-seqs", type=int, default=16, help="vLLM's batch size, when started here")
    parser.add_argument(
        "--broker-url", help="the Celery broker for (a), e.g. redis://127.0.0.1:6379/13 (default: the embedded one)"
    )
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--json", type=Path, default=results.default_path("generation"), help="raw rates (JSON)")
    results.add_arguments(parser)
    args = parser.parse_args()
    results.begin(args)

    images = scenes_png(args.prompts)
    server = serving.served(args.model, args.server_url, python=args.serving_python, max_num_seqs=args.max_num_seqs)
    with server as url:
        # Warm the server up (the first image request compiles and allocates).
        direct(url, [images[0][1]], 1, 8, 1)
        b = direct(url, [png for _, png in images], args.k, args.max_tokens, args.concurrency)
        cpu: dict[str, float] = {}
        a = through_celery(url, args.model, images, args.k, args.max_tokens, args.concurrency, args.broker_url, cpu)
    c = None if args.skip_transformers else in_process(args.model, [s for s, _ in images], args.k, args.max_tokens)

    rows = {"(a) FactLoop Celery path": a, "(b) vLLM directly": b}
    if c is not None:
        rows["(c) transformers in-process"] = c
    print(f"{args.prompts} prompts x {args.k} candidates, max {args.max_tokens} tokens, concurrency {args.concurrency}")
    for name, (tokens, seconds) in rows.items():
        print(f"{name:<30} {tokens:>7} tokens {seconds:>7.1f} s {tokens / seconds:>8.1f} tokens/s")
    rate = {name: tokens / seconds for name, (tokens, seconds) in rows.items()}
    print(f"a/b = {rate['(a) FactLoop Celery path'] / rate['(b) vLLM directly']:.2f}")
    if c is not None:
        print(f"b/c = {rate['(b) vLLM directly'] / rate['(c) transformers in-process']:.2f}")
    candidates = args.prompts * args.k
    per_thousand = {name: cpu[name] * 1000 / candidates for name in ("worker", "vllm")}
    print(f"(a) queued {cpu['queued_seconds']:.1f} s, then ran {cpu['running_seconds']:.1f} s")
    print(
        f"CPU seconds per 1,000 candidates during (a): FactLoop's worker {per_thousand['worker']:.2f}, "
        f"vLLM {per_thousand['vllm']:.2f}; the worker's share of vLLM's {cpu['worker'] / cpu['vllm']:.1%} (goal < 10%)"
    )
    print(json.dumps({name: round(value, 1) for name, value in rate.items()}))
    payload = {
        "prompts": args.prompts,
        "k": args.k,
        "max_tokens": args.max_tokens,
        "concurrency": args.concurrency,
        "rows": {name: {"tokens": tokens, "seconds": seconds} for name, (tokens, seconds) in rows.items()},
        "tokens_per_second": rate,
        "cpu_seconds_per_1000_candidates": per_thousand,
        "worker_share_of_vllm_cpu": cpu["worker"] / cpu["vllm"],
        "job_seconds": {"queued": cpu["queued_seconds"], "running": cpu["running_seconds"]},
    }
    results.write(args.json, payload, model=args.model)


if __name__ == "__main__":
    main()
