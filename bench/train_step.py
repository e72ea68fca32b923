"""FactLoop's DPO and DDPO against trl's DPO: the same batches, side by side.

Each step = collate (DDPO adds span-to-token weights) + forward/backward of the loss
(DDPO adds a forward hook that scales the per-token log-probs; FactLoop runs each pair's
prompt and image once, and a frozen tower's features once for the policy and the
reference, rlhf/prefix.py, where trl runs them for every row and both models) + optimizer
step. The methods alternate step by step so that drift in the machine's speed hits all
alike. Prints the median step time and pairs per second of each, the peak memory of a
step, and the ratios to trl's DPO.

    OMP_NUM_THREADS=1 .venv/bin/python bench/train_step.py --model testbed/tiny-base
    OMP_NUM_THREADS=1 .venv/bin/python bench/train_step.py --shape llava15 --json bench/results/train_step_llava15.json

`--shape` picks the timed model; the pairs always come from the toy world, sampled by the
shipped tiny model (`--model`):
- `shipped`: the tiny model itself (9 image tokens);
- `llava15`: LLaVA-1.5's image-token count, 576 (a 336-pixel image in 14-pixel patches,
  arXiv:2310.03744), with the tiny model's widths and a frozen tower: the prompt then
  outweighs the responses as it does in LLaVA-1.5, on a CPU;
- `llava15-1b`: for a GPU, LLaVA-1.5-shaped at about 1.4B parameters (ViT-L/14-336 tower,
  a TinyLlama-shaped 22-layer 2048-wide Llama; the toy vocabulary makes it 0.97B of
  language model where a 32k vocabulary gives 1.06B). Run it with
  `--set lora.r=64 --set dtype=bfloat16`.
The shaped models have random weights: time and memory do not depend on what was learnt.

Peak memory: on a GPU, torch's peak allocation during each method's step (reset before
it); on the CPU, each method runs its steps again alone in a child process, which samples its
resident memory every 2 ms and reports the peak's growth over what it held before its
first step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import results

# What this bench measures: its result is stale once any of these changes (bench/status.py).
MEASURES = (
    "rlhf",
    "bench/train_step.py",
)

METHODS = ("trl-dpo", "dpo", "ddpo")
KEEP = ("prompt", "chosen", "rejected", "images", "chosen_spans", "rejected_spans")


def shaped_model(shape: str, shipped: str, out: Path) -> str:
    """The folder of the timed model: the shipped one, or a random model of `shape` with the
    shipped tokenizer."""
    if shape == "shipped":
        return shipped
    from transformers import AutoProcessor

    from testbed.tiny import TinySpec, build_model, build_processor, save_pretrained

    sizes: dict[str, Any] = {"image_size": 336, "patch_size": 14, "max_positions": 1024}  # 24 x 24 = 576 tokens
    if shape == "llava15-1b":
        sizes |= {"vision_hidden": 1024, "vision_layers": 24, "vision_heads": 16, "max_positions": 2048}
        sizes |= {"text_hidden": 2048, "text_layers": 22, "text_heads": 32, "text_kv_heads": 4}
        sizes |= {"text_intermediate": 5632}
    spec = TinySpec(**sizes)
    tokenizer = AutoProcessor.from_pretrained(shipped).tokenizer.backend_tokenizer
    processor = build_processor(tokenizer, spec)
    model = build_model(spec, processor)
    save_pretrained(model, processor, out)
    return str(out)


def trainer_for(method: str, model: str, work: Path, args: argparse.Namespace) -> Any:
    from rlhf.config import load_config
    from rlhf.train_dpo import build_trainer

    config = load_config(
        None,
        [f"method={'dpo' if method == 'trl-dpo' else method}", f"batch_size={args.batch_size}", "threads=1", *args.set],
        model=model,
        data=[str(work / "pairs")],
        output_dir=str(work / method),
    )
    trainer = build_trainer(config, report_to=[])
    trainer.create_optimizer_and_scheduler(num_training_steps=args.steps + 5)
    if method == "trl-dpo":  # trl's DPO as it ships: its own collator, no token weights, no shared prefix
        from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

        trainer.data_collator = DataCollatorForVisionPreference(trainer.processing_class)
        trainer.share_prefix = False
    return trainer


def batches(trainer: Any, args: argparse.Namespace) -> list[list[dict[str, Any]]]:
    """The same rows for every method, batch by batch (3 warm-up steps first)."""
    dataset = trainer.train_dataset
    return [
        [dataset[(step * args.batch_size + i) % len(dataset)] for i in range(args.batch_size)]
        for step in range(args.steps + 3)
    ]


def one_step(method: str, trainer: Any, rows: list[dict[str, Any]]) -> tuple[float, float, float]:
    """Collate, loss, backward and update; answers (collate s, the rest s, peak GPU bytes)."""
    import torch

    device = trainer.args.device
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    batch = trainer.data_collator([{k: r[k] for k in KEEP if method != "trl-dpo" or "spans" not in k} for r in rows])
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    collated = time.perf_counter()
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    done = time.perf_counter()
    return collated - began, done - collated, float(torch.cuda.max_memory_allocated()) if cuda else 0.0


def rss_peak_growth(method: str, model: str, work: Path, args: argparse.Namespace) -> float:
    """Run one method's steps alone in a child process: its peak resident memory (bytes)
    beyond what it held before the first step."""
    command = [sys.executable, __file__, "--memory-child", method, "--work", str(work), "--timed-model", model]
    command += ["--batch-size", str(args.batch_size), "--steps", str(min(args.steps, 6))]
    command += [x for item in args.set for x in ("--set", item)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["peak_growth_bytes"])


def memory_child(args: argparse.Namespace) -> None:
    import psutil  # type: ignore[import-untyped]
    import torch

    torch.set_num_threads(1)
    trainer = trainer_for(args.memory_child, args.timed_model, args.work, args)
    order = batches(trainer, args)
    process = psutil.Process()
    before = process.memory_info().rss
    peak = [before]
    running = threading.Event()
    running.set()

    def watch() -> None:  # the process's own peak is set by loading, before the steps: sample
        while running.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for rows in order[: args.steps]:
        one_step(args.memory_child, trainer, rows)
    running.clear()
    watcher.join()
    print(json.dumps({"peak_growth_bytes": max(0, peak[0] - before)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="testbed/tiny-base", help="the tiny model that samples the pairs")
    parser.add_argument("--shape", choices=("shipped", "llava15", "llava15-1b"), default="shipped")
    parser.add_argument("--pairs", type=int, default=160, help="oracle pairs to build")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per method")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", type=Path, default=results.default_path("train_step"), help="raw timings (JSON)")
    parser.add_argument("--memory-child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--timed-model", help="a model folder built for --shape already (bench/gpu.py builds it once for every part)"
    )
    results.add_arguments(parser)
    args = parser.parse_args()
    if args.memory_child:  # a child of this bench: the parent took the revision
        memory_child(args)
        return
    results.begin(args)

    import torch

    from rlhf import toy_pairs
    from rlhf.common import load_policy
    from testbed.tiny import image_size_of

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="factloop-train-step-"))
    sampler, processor = load_policy(args.model)
    responses = toy_pairs.sample_responses(
        sampler, processor, toy_pairs.training_scenes(args.pairs * 2), questions=False, temperature=0.7, seed=2
    )
    pairs = toy_pairs.oracle_pairs(responses)[: args.pairs]
    toy_pairs.write_export(pairs, work / "pairs", image_size=image_size_of(processor))
    del sampler
    model = args.timed_model or shaped_model(args.shape, args.model, work / "model")
    tokens = toy_tokens(model, work)

    trainers = {method: trainer_for(method, model, work, args) for method in METHODS}
    order = batches(trainers["ddpo"], args)
    times: dict[str, dict[str, list[float]]] = {m: {"collate": [], "step": []} for m in trainers}
    gpu_peak: dict[str, float] = dict.fromkeys(trainers, 0.0)
    for step, rows in enumerate(order):
        for method, trainer in trainers.items():
            collate, update, peak = one_step(method, trainer, rows)
            if step >= 3:  # warm-up steps are not timed
                times[method]["collate"].append(collate)
                times[method]["step"].append(update)
                gpu_peak[method] = max(gpu_peak[method], peak)
    on_gpu = any(gpu_peak.values())
    if on_gpu:
        memory, memory_kind = gpu_peak, "peak GPU allocation during a step"
    else:
        del trainers  # the children measure memory alone
        memory = {method: rss_peak_growth(method, model, work, args) for method in METHODS}
        memory_kind = "peak resident memory growth over a step (child process per method)"

    print(f"{args.shape} model: {tokens['image_tokens']} image tokens, responses of {tokens['response_tokens']:.0f}")
    print(f"tokens on average; {len(pairs)} oracle pairs, batch {args.batch_size}, {args.steps} timed steps per method")
    header = ("method", "collate", "loss+backward+update", "total ms", "pairs/s", "memory MiB")
    print("{:<8} {:>8} {:>21} {:>9} {:>8} {:>11}".format(*header))
    totals: dict[str, float] = {}
    for method, parts in times.items():
        collate = statistics.median(parts["collate"]) * 1000
        update = statistics.median(parts["step"]) * 1000
        totals[method] = statistics.median([a + b for a, b in zip(parts["collate"], parts["step"], strict=True)])
        rate = args.batch_size / totals[method]
        print(
            f"{method:<8} {collate:>8.1f} {update:>21.1f} {totals[method] * 1000:>9.1f} {rate:>8.2f}"
            f" {memory[method] / 2**20:>11.1f}"
        )
    pairs_per_second = {method: args.batch_size / total for method, total in totals.items()}
    speed = {m: pairs_per_second[m] / pairs_per_second["trl-dpo"] for m in ("dpo", "ddpo")}
    memory_ratio = {m: memory[m] / memory["trl-dpo"] if memory["trl-dpo"] else None for m in ("dpo", "ddpo")}
    print(f"pairs/s over trl DPO: FactLoop DPO {speed['dpo']:.2f}x, DDPO {speed['ddpo']:.2f}x")
    print(
        f"memory over trl DPO ({memory_kind}): "
        + ", ".join(f"{m} {r:.2f}x" for m, r in memory_ratio.items() if r is not None)
    )
    payload = {
        "shape": args.shape,
        "device": "cuda" if on_gpu else "cpu",
        **tokens,
        "pairs": len(pairs),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "settings": args.set,
        "median_ms": {m: round(t * 1000, 2) for m, t in totals.items()},
        "ddpo_over_trl_dpo": totals["ddpo"] / totals["trl-dpo"],
        "dpo_over_trl_dpo": totals["dpo"] / totals["trl-dpo"],
        "pairs_per_second": pairs_per_second,
        "speed_over_trl_dpo": speed,
        "memory_bytes": memory,
        "memory_kind": memory_kind,
        "memory_over_trl_dpo": memory_ratio,
        "seconds": times,
    }
    results.write(args.json, payload, model=args.model)


def toy_tokens(model: str, work: Path) -> dict[str, float]:
    """The timed model's image tokens and prompt tokens (of the first pair) and the pairs'
    mean response length."""
    from datasets import load_from_disk  # type: ignore[import-untyped]
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model)
    pairs = load_from_disk(str(work / "pairs"))
    lengths = [
        len(processor.tokenizer(turn[0]["content"][0]["text"])["input_ids"])
        for column in ("chosen", "rejected")
        for turn in pairs[column]
    ]
    image = pairs[0]["images"][0]
    text = processor.apply_chat_template(pairs[0]["prompt"], add_generation_prompt=True, tokenize=False)
    ids = processor(images=[image], text=[text], return_tensors="pt")["input_ids"][0].tolist()
    image_tokens = ids.count(processor.tokenizer.convert_tokens_to_ids(processor.image_token))
    return {"image_tokens": image_tokens, "prompt_tokens": len(ids), "response_tokens": sum(lengths) / len(lengths)}


if __name__ == "__main__":
    main()
