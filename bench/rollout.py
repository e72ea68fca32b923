"""Online RL rollouts: the vLLM server (rlhf/rollouts.py) against transformers' generate, side
by side in one run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/rollout.py --model testbed/tiny-base

Each round samples one rollout batch (`--batch` toy-world prompts with their images, one
response each at temperature 1.0, at most `--max-tokens` tokens) both ways, alternating so
that drift in the machine's speed hits both alike:
  (a) PPO's own `sample`: the LoRA policy's `generate` in this process;
  (b) `sample_served`: the adapter saved and loaded in place on the vLLM server (what PPO
      does after every update), then the batch sampled there, `--concurrency` requests in
      flight.
Both give the trainer the same Rollout (prompt, response tokens, mask). The adapter is
nudged between rounds, as an update would change it. Prints rollout tokens per second for
each, the ratio b/a, and where (b)'s time goes: the adapter load, the wait on the server,
the trainer's own work (encoding the prompts, assembling the rollout), and inside the
server, from vLLM's own request histograms (`/metrics`: queue, prefill, decode and
end-to-end seconds per request, vLLM 0.32's `vllm:request_*_seconds`).

Without `--server-url`, a vLLM server is started from the serving venv (`make serving`) on
the model and stopped at the end (on a CPU machine it shares the cores with this process:
`--server-cpus` binds it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# What this bench measures: its result is stale once any of these changes (bench/status.py).
MEASURES = (
    "rlhf",
    "models",
    "bench/rollout.py",
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import results, serving  # noqa: E402


def toy_rows(count: int) -> list[dict[str, Any]]:
    """Rollout prompts as PPO reads them from an export: trl messages and the image."""
    from testbed.toyworld import render, sample_scenes

    question = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    return [{"prompt": question, "images": [render(scene)]} for scene in sample_scenes(77, count, prefix="rollout")]


PHASES = ("e2e_request_latency", "request_queue_time", "request_prefill_time", "request_decode_time")


def server_seconds(url: str) -> dict[str, float]:
    """vLLM's request histograms so far: the sum of each phase's seconds over all requests,
    and the request count."""
    import httpx

    totals = dict.fromkeys((*PHASES, "requests"), 0.0)
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, value = line.split("{")[0].split(" ")[0], line.rsplit(" ", 1)[-1]
        for phase in PHASES:
            if name == f"vllm:{phase}_seconds_sum":
                totals[phase] += float(value)
        if name == "vllm:e2e_request_latency_seconds_count":
            totals["requests"] += float(value)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="testbed/tiny-base")
    parser.add_argument("--batch", type=int, default=32, help="prompts per rollout batch")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per path")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the generate path")
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the policy generates (auto: any GPU)"
    )
    parser.add_argument("--server-url", default=None)
    parser.add_argument("--server-cpus", default=None, help="cores the started server is bound to, e.g. 1")
    parser.add_argument("--python", type=Path, default=REPO / ".venv-serving/bin/python")
    parser.add_argument("--json", type=Path, default=results.default_path("rollout"), help="raw timings (JSON)")
    results.add_arguments(parser)
    args = parser.parse_args()
    results.begin(args)

    import torch

    from rlhf.config import RLTrainConfig
    from rlhf.rollouts import ServerRollouts
    from rlhf.train_rl import load_trainable_policy, sample, sample_served, stop_ids

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="factloop-rollout-"))
    config = RLTrainConfig(
        model=args.model,
        reward_model=str(work),  # unused: no reward is computed here
        data=[str(work)],
        output_dir=str(work),
        lora={"r": 8, "alpha": 16, "dropout": 0.0},  # type: ignore[arg-type]
        max_new_tokens=args.max_tokens,
        temperature=1.0,
    )
    model, processor = load_trainable_policy(config)
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    model.to(device)
    stops = stop_ids(model, processor)
    rows = toy_rows(args.batch)
    generator = torch.Generator().manual_seed(0)

    def nudge() -> None:  # an update's worth of change to the adapter
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if parameter.requires_grad and "lora_" in name:
                    parameter.add_(torch.randn(parameter.shape, generator=generator).to(parameter.device) * 0.02)

    timings: dict[str, list[float]] = {"generate": [], "served": [], "load": [], "wait": []}
    inside: dict[str, float] = dict.fromkeys((*PHASES, "requests"), 0.0)
    tokens: dict[str, list[int]] = {"generate": [], "served": []}
    with serving.served(
        args.model, args.server_url, python=args.python, max_num_seqs=args.batch, cpus=args.server_cpus
    ) as url:
        server = ServerRollouts(url, name="bench-rollout", folder=work / "adapter", concurrency=args.batch)
        ask = server.sample
        waited = [0.0]

        def timed(*sample_args: Any, **sample_kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return ask(*sample_args, **sample_kwargs)
            finally:
                waited[0] = time.perf_counter() - began

        server.sample = timed  # type: ignore[method-assign]
        try:
            for round_ in range(args.rounds + 1):  # round 0 warms both paths up
                nudge()
                began = time.perf_counter()
                rollout = sample(model, processor, rows, config, stops, device)
                generate_s = time.perf_counter() - began
                generate_tokens = int(rollout.mask.sum())
                began = time.perf_counter()
                save = lambda folder: model.save_pretrained(str(folder), selected_adapters=["default"])  # noqa: E731
                server.sync(save, round_)
                loaded = time.perf_counter()
                before = server_seconds(url)
                rollout = sample_served(model, processor, rows, config, stops, device, server, seed=round_)
                served_s = time.perf_counter() - began
                after = server_seconds(url)
                if round_:
                    timings["generate"].append(generate_s)
                    timings["served"].append(served_s)
                    timings["load"].append(loaded - began)
                    timings["wait"].append(waited[0])
                    for key in inside:
                        inside[key] += after[key] - before[key]
                    tokens["generate"].append(generate_tokens)
                    tokens["served"].append(int(rollout.mask.sum()))
                print(f"round {round_}: generate {generate_s:.2f}s, server {served_s:.2f}s")
        finally:
            server.close()
    rate = {path: sum(tokens[path]) / sum(timings[path]) for path in tokens}
    load_share = sum(timings["load"]) / sum(timings["served"])
    print(f"{args.batch} prompts per batch, {args.rounds} timed rounds, at most {args.max_tokens} tokens each")
    print(f"rollout tokens/s: generate {rate['generate']:.0f}, vLLM server {rate['served']:.0f}")
    print(f"vLLM server / generate: {rate['served'] / rate['generate']:.2f}x")
    served_total = sum(timings["served"])
    wait_share = sum(timings["wait"]) / served_total
    print(
        f"the server path's time: adapter loads {load_share:.0%}, waiting on the server {wait_share:.0%},"
        f" the trainer's encoding and assembling {1 - load_share - wait_share:.0%}"
    )
    requests = max(1.0, inside["requests"])
    per_request = {phase: inside[phase] / requests for phase in PHASES}
    decode_per_token = inside["request_decode_time"] / max(1, sum(tokens["served"]))
    print(
        f"inside vLLM, per request ({requests:.0f} requests): end to end {per_request['e2e_request_latency']:.3f}s,"
        f" queued {per_request['request_queue_time']:.3f}s, prefill {per_request['request_prefill_time']:.3f}s,"
        f" decode {per_request['request_decode_time']:.3f}s ({decode_per_token * 1000:.1f} ms per token of one request)"
    )
    payload = {
        "batch": args.batch,
        "rounds": args.rounds,
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "device": device,
        "server_cpus": args.server_cpus,
        "tokens_per_second": rate,
        "served_over_generate": rate["served"] / rate["generate"],
        "adapter_load_share": load_share,
        "server_wait_share": wait_share,
        "vllm_seconds_per_request": per_request,
        "vllm_requests": inside["requests"],
        "median_seconds": {path: statistics.median(values) for path, values in timings.items()},
        "seconds": timings,
        "tokens": tokens,
    }
    results.write(args.json, payload, model=args.model)


if __name__ == "__main__":
    main()
