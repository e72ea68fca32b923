"""The published benchmark tables, generated from the raw results in bench/results/.

A page marks each generated table with a pair of comments,

    <!-- bench:NAME -->
    ...
    <!-- /bench:NAME -->

and this command replaces what lies between them with TABLES[NAME] rendered from its JSON
file (the file's name, command and revision are printed under the table, so every figure
names the run that measured it). `--check` changes nothing and exits 1 naming every block
that differs from what the results give (tests/test_bench_results.py runs it).

    .venv/bin/python bench/tables.py [--check]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
PAGES = ("README.md", "docs/*.md", "bench/README.md")
BLOCK = re.compile(r"(<!-- bench:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /bench:(?P=name) -->)", re.DOTALL)


def _load(name: str) -> dict[str, Any]:
    return dict(json.loads((RESULTS / name).read_text()))


def _source(name: str, record: dict[str, Any]) -> str:
    return f"Raw rows: `bench/results/{name}`, from `{record['command']}` at revision `{record['revision'][:12]}`."


def _pm(row: dict[str, Any], key: str, digits: int = 3) -> str:
    value = f"{row[key]:.{digits}f}"
    return value + (f" ± {row[key + '_sd']:.{digits}f}" if f"{key}_sd" in row else "")


def _change(value: float, base: float) -> str:
    return f"{(value - base) / base:+.1%}" if base else "-"


def alignment_styles() -> str:
    """bench/alignment.py's correction rows, deleting against replacing (alignment-replace.json)."""
    name = "alignment-replace.json"
    record = _load(name)
    rows = record["rows"]
    base = rows[0]
    lines = [
        "| method | corrections | labels | seeds | CHAIR_i (vs base) | CHAIR_s | POPE F1 | words (vs base) "
        "| coverage |",
        "| --- | --- | ---: | ---: | --- | --- | ---: | --- | --- |",
        f"| base | - | 0 | - | {base['chair_i']:.3f} | {base['chair_s']:.3f} | {base['pope_f1']:.3f} | "
        f"{base['mean_words']:.1f} | {base['coverage']:.3f} |",
    ]
    for row in rows[1:]:
        method = row["method"].removesuffix("+replace")
        lines.append(
            f"| {method} | {'replace' if method != row['method'] else 'delete'} | {row['labels']} | "
            f"{len(row['seeds'])} | {_pm(row, 'chair_i')} ({_change(row['chair_i'], base['chair_i'])}) | "
            f"{_pm(row, 'chair_s')} | {row['pope_f1']:.3f} | {_pm(row, 'mean_words', 1)} "
            f"({_change(row['mean_words'], base['mean_words'])}) | {_pm(row, 'coverage')} |"
        )
    return "\n".join(lines) + "\n\n" + _source(name, record) + "\n"


# How the main table names bench/alignment.py's rows.
ALIGNMENT_NAMES = {
    "ddpo": "DDPO (gamma 5, normalised)",
    "dpo": "DPO",
    "sft": "SFT on the corrections",
    "mdpo": "mDPO",
    "hsa_dpo": "HSA-DPO",
    "halva": "HALVA [a]",
    "halva+inject": "HALVA + injected phrases [a]",
    "silkie": "Silkie (rating pairs, DPO)",
    "ddpo+ld": "DDPO + LD-DPO (alpha 0.5)",
    "ddpo+inject": "DDPO + injected negatives",
    "ddpo+noised_image": "DDPO + noised-image negatives",
    "ppo": "PPO",
    "ppo+debias": "PPO, length trend regressed out",
    "ppo+helpful": "PPO, reward model with helpfulness-ordered ties",
    "ppo+anchor": "PPO, length anchor 2.0/word",
    "grpo": "GRPO (trl)",
    "rloo": "RLOO (trl)",
}


def alignment() -> str:
    """bench/alignment.py's table of every method (alignment.json), HALVA's rows from
    alignment-halva.json (the run after HALVA's fix)."""
    name, halva_name = "alignment.json", "alignment-halva.json"
    record, halva = _load(name), _load(halva_name)
    later = {row["method"]: row for row in halva["rows"][1:]}
    rows = [later.get(row["method"], row) for row in record["rows"]]
    base = rows[0]
    cover = "coverage" if "coverage" in base else "object_recall"  # its name before issue 37
    lines = [
        "| method | labels | generated | seeds | CHAIR_i (vs base) | CHAIR_s | POPE F1 | words (vs base) "
        "| coverage | empty | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| base | 0 | 0 | - | {base['chair_i']:.3f} | {base['chair_s']:.3f} | {base['pope_f1']:.3f} | "
        f"{base['mean_words']:.1f} | {base[cover]:.3f} | {base['empty_share']:.2f} | - |",
    ]
    for row in rows[1:]:
        lines.append(
            f"| {ALIGNMENT_NAMES.get(row['method'], row['method'])} | {row['labels']} | {row['generated']:.0f} | "
            f"{len(row['seeds'])} | {_pm(row, 'chair_i')} ({_change(row['chair_i'], base['chair_i'])}) | "
            f"{_pm(row, 'chair_s')} | {row['pope_f1']:.3f} | {_pm(row, 'mean_words', 1)} "
            f"({_change(row['mean_words'], base['mean_words'])}) | {row[cover]:.3f} | {row['empty_share']:.2f} | "
            f"{row['seconds']:.0f} |"
        )
    sources = _source(name, record) + " HALVA's rows: " + _source(halva_name, halva).removeprefix("Raw rows: ")
    return "\n".join(lines) + "\n\n" + sources + "\n"


def train_step() -> str:
    """bench/train_step.py on each CPU shape (train_step.json, train_step_llava15.json)."""
    shapes = {
        "train_step.json": "shipped tiny",
        "train_step_llava15.json": "`llava15`: LLaVA-1.5's 576 image tokens, tiny widths, frozen tower",
    }
    lines = [
        "| model (`--shape`) | image tokens | trl DPO pairs/s | DPO | DDPO | memory, DPO / DDPO over trl |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    sources = []
    for name, label in shapes.items():
        record = _load(name)
        rate, speed, memory = record["pairs_per_second"], record["speed_over_trl_dpo"], record["memory_over_trl_dpo"]
        lines.append(
            f"| {label} | {record['image_tokens']} | {rate['trl-dpo']:#.3g} | "
            f"{rate['dpo']:#.3g} ({speed['dpo']:.2f}x) | {rate['ddpo']:#.3g} ({speed['ddpo']:.2f}x) | "
            f"{memory['dpo']:.2f}x / {memory['ddpo']:.2f}x |"
        )
        sources.append(_source(name, record))
    return "\n".join(lines) + "\n\n" + " ".join(sources) + "\n"


def rollout() -> str:
    """bench/rollout.py: PPO's rollouts through the vLLM server against generate (rollout.json)."""
    name = "rollout.json"
    record = _load(name)
    rate, inside, median = record["tokens_per_second"], record["vllm_seconds_per_request"], record["median_seconds"]
    load, wait = record["adapter_load_share"], record["server_wait_share"]
    lines = [
        "| path | rollout tokens/s | median seconds a batch |",
        "| --- | ---: | ---: |",
        f"| transformers' `generate` in the trainer | {rate['generate']:,.0f} | {median['generate']:.2f} |",
        f"| the vLLM server, the adapter loaded in place each round | {rate['served']:,.0f} | {median['served']:.2f} |",
    ]
    tail = (
        f"\n\nvLLM over `generate`: **{record['served_over_generate']:.2f}x**. Of the server path's time: "
        f"the adapter load {load:.0%}, waiting on the server {wait:.0%}, the trainer's own work "
        f"{1 - load - wait:.0%}. Inside vLLM's engine a request takes {inside['e2e_request_latency']:.2f} s: "
        f"{inside['request_queue_time']:.2f} s queued, {inside['request_prefill_time']:.2f} s of prefill, "
        f"{inside['request_decode_time']:.2f} s of decode ({record['vllm_requests']:.0f} requests; "
        f"{record['batch']} prompts a batch, {record['rounds']} timed rounds, at most {record['max_tokens']} tokens). "
    )
    return "\n".join(lines) + tail + _source(name, record) + "\n"


def alignment_released() -> str:
    """bench/alignment.py's PPO beside PPO as LLaVA-RLHF released it (alignment-released.json)."""
    name = "alignment-released.json"
    record = _load(name)
    rows = record["rows"]
    base = rows[0]
    lines = [
        "| method | reward model's held-out accuracy | CHAIR_i (vs base) | CHAIR_s | POPE F1 | words (vs base) "
        "| coverage | training s |",
        "| --- | ---: | --- | ---: | ---: | --- | ---: | ---: |",
        f"| base | - | {base['chair_i']:.3f} | {base['chair_s']:.3f} | {base['pope_f1']:.3f} | "
        f"{base['mean_words']:.1f} | {base['coverage']:.3f} | - |",
    ]
    models = record.get("reward_models", {})
    for row in rows[1:]:
        key = "ties drop, released" if row["method"].endswith("+released") else "ties drop"
        accuracy = models.get(key, {}).get("heldout_accuracy")
        lines.append(
            f"| {row['method']} | {accuracy:.3f} | {row['chair_i']:.3f} ({_change(row['chair_i'], base['chair_i'])}) | "
            f"{row['chair_s']:.3f} | {row['pope_f1']:.3f} | {row['mean_words']:.1f} "
            f"({_change(row['mean_words'], base['mean_words'])}) | {row['coverage']:.3f} | {row['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n\n" + _source(name, record) + "\n"


def label_efficiency_styles() -> str:
    """bench/label_efficiency.py's human arms in both correction styles (label_efficiency-styles.json)."""
    name = "label_efficiency-styles.json"
    record = _load(name)
    base = record["base"]
    lines = [
        "| arm | corrections | round | human labels | pairs | CHAIR_i | vs base | POPE F1 | words | coverage |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for label, rows in record["arms"].items():
        arm, _, style = label.partition(":")
        for row in rows:
            lines.append(
                f"| `{arm}` | {style or '-'} | {row['round']} | {row['human_labels']:.0f} | {row['pairs']:.0f} | "
                f"{_pm(row, 'chair_i')} | {_change(row['chair_i'], base['chair_i'])} | {row['pope_f1']:.3f} | "
                f"{row['mean_words']:.1f} | {_pm(row, 'coverage')} |"
            )
    summary = record["summary"]
    best = summary.get("best_human_arm")
    tail = [
        "",
        f"The base: CHAIR_i {base['chair_i']:.3f}, POPE F1 {base['pope_f1']:.3f}, {base['mean_words']:.1f} words, "
        f"coverage {base['coverage']:.3f}. Seeds {record['settings']['seeds']} (mean ± standard deviation).",
    ]
    if best:
        tail.append(
            f"Best human arm after {record['settings']['rounds']} rounds: `{best['name']}`, CHAIR_i "
            f"{best['chair_i_drop']:.1%} below the base, coverage {best['coverage']:.3f}."
        )
    return "\n".join(lines + tail) + "\n\n" + _source(name, record) + "\n"


def label_efficiency() -> str:
    """bench/label_efficiency.py's five arms, deleting corrections (label_efficiency.json, which
    predates coverage's name: its `object_recall` is the same measure)."""
    name = "label_efficiency.json"
    record = _load(name)
    base = record["base"]
    cover = "coverage" if "coverage" in base else "object_recall"
    lines = [
        "| arm | round | human labels (total) | pairs | CHAIR_i | vs base | POPE F1 | words | coverage "
        "| annotator minutes (total) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for arm, rows in record["arms"].items():
        for row in rows:
            lines.append(
                f"| `{arm}` | {row['round']} | {row['human_labels']:.0f} | {row['pairs']:.0f} | "
                f"{_pm(row, 'chair_i')} | {_change(row['chair_i'], base['chair_i'])} | {row['pope_f1']:.3f} | "
                f"{row['mean_words']:.1f} | {row[cover]:.3f} | {row['annotator_minutes']:.0f} |"
            )
    summary = record["summary"]
    reached = [
        f"- `{arm}`: {found['labels_to_target']} (round {found['round']})"
        if found["labels_to_target"] is not None
        else f"- `{arm}`: not reached"
        for arm, found in summary.items()
        if arm in record["arms"]
    ]
    best = summary["best_arm"]
    tail = [
        "",
        f"Human labels each arm had used when its CHAIR_i first reached arm `random`'s final "
        f"{summary['target_chair_i']:.3f}:",
        *reached,
        "",
        f"Best arm: `{best['name']}`, CHAIR_i {best['chair_i_drop']:.0%} below the base after "
        f"{record['settings']['rounds']} rounds.",
    ]
    return "\n".join(lines + tail) + "\n\n" + _source(name, record) + "\n"


def demo() -> str:
    """`make demo`'s loop as bench/demo.py measured it (demo.json): the demo's own table."""
    name = "demo.json"
    record = _load(name)
    lines = ["```", "policy                        CHAIR_i  CHAIR_s  POPE F1  coverage  words"]
    for key in ("current", "new"):
        metrics = record["metrics"][key]
        lines.append(
            f"{record['policies'][key]:<28}  {metrics['chair_i']:>7.3f}  {metrics['chair_s']:>7.3f}  "
            f"{metrics['pope_f1']:>7.3f}  {metrics['coverage']:>8.3f}  {metrics['mean_words']:>5.1f}"
        )
    lines.append(f"gate {record['gate']['summary']}")
    served = "the new policy, deployed" if record["deployed"] else "the same policy: the new one was not deployed"
    following = record["next_round"]
    lines.append(
        f"The loop took {record['seconds']:.0f} s; round {following['number']} is open for you, "
        f"served by {following['policy']} ({served})."
    )
    parts = ", ".join(f"{part.replace('_', ' ')} {seconds:.0f} s" for part, seconds in record["phase_seconds"].items())
    tail = f"\nOf the loop's time: {parts}."
    return "\n".join([*lines, "```"]) + "\n" + tail + "\n\n" + _source(name, record) + "\n"


def export() -> str:
    """bench/export.py's rows per second and memory at growing row counts (export.json)."""
    name = "export.json"
    record = _load(name)
    rows = record["rows"]
    first = rows[0]
    lines = [
        "| rows | seconds | rows/s | memory the export adds | JSONL | rows/s vs the first | memory vs the first |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        rate = row["rows"] / row["seconds"]
        lines.append(
            f"| {row['rows']:,} | {row['seconds']:.1f} | {rate:,.0f} | {row['peak_rss_bytes'] / 2**20:.1f} MiB | "
            f"{row['output_bytes'] / 2**20:.0f} MiB | {rate / (first['rows'] / first['seconds']):.2f} | "
            f"{row['peak_rss_bytes'] / first['peak_rss_bytes']:.2f} |"
        )
    return "\n".join(lines) + "\n\n" + _source(name, record) + "\n"


def gpu(name: str) -> str:
    """bench/gpu.py's parts (gpu.json on a GPU, gpu-dry-run.json for its dry run on the CPU)."""
    record = _load(name)
    found = record["figures"]
    lines = ["| part | status | seconds | figures |", "| --- | --- | ---: | --- |"]
    for part, measured in record["parts"].items():
        text = "-"
        if part == "train_step" and "pairs_per_second" in found:
            rates, memory = found["pairs_per_second"], found["memory_gib"]
            text = ", ".join(f"{m} {rates[m]:.1f} pairs/s at {memory[m]:.2f} GiB" for m in rates)
        elif part == "rollout" and "rollout_tokens_per_second" in found:
            rates = found["rollout_tokens_per_second"]
            text = (
                f"tokens/s: `generate` {rates['generate']:.0f}, vLLM with the hot-loaded adapter "
                f"{rates['served']:.0f} ({found['served_over_generate']:.2f}x)"
            )
        elif part == "round" and "round_seconds" in found:
            chair = found["round_chair_i"]
            gate = "passed" if found["round_gate_passed"] else "refused"
            text = f"loop {found['round_seconds']:.0f} s; CHAIR_i {chair['current']:.3f} to {chair['new']:.3f}"
            text += f", gate {gate}"
        lines.append(f"| {part} | {measured['status']} | {measured['seconds']:.0f} | {text} |")
    machine = record["machine"]
    where = ", ".join(machine["gpus"]) or f"{machine['processor']}, {machine['cpus']} cores, no GPU"
    return "\n".join(lines) + f"\n\nOn {where}. " + _source(name, record) + "\n"


def weighting() -> str:
    """bench/weighting.py: FactLoop's DDPO token weights against RLHF-V's released rules (weighting.json)."""
    name = "weighting.json"
    record = _load(name)
    lines = [
        "| scenes per response | pairs | tokens (mean) | weighted differently | released rules weight nothing "
        "| autojunk alone changes the released weights | weighted tokens: FactLoop | weighted tokens: released |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for band in record["bands"]:
        lines.append(
            f"| {band['scenes_per_response']} | {band['pairs']} | {band['mean_tokens']:.0f} | "
            f"{band['share_differing']:.1%} | {band['share_released_weights_nothing']:.1%} | "
            f"{band['share_autojunk_matters']:.1%} | {band['mean_changed_tokens_factloop']:.1f} | "
            f"{band['mean_changed_tokens_released']:.1f} |"
        )
    return "\n".join(lines) + "\n\n" + _source(name, record) + "\n"


def toy_policy() -> str:
    """bench/toy_policy.py: the shipped tiny base against a blind and a random-init copy (toy_policy.json)."""
    name = "toy_policy.json"
    record = _load(name)
    lines = [
        "| policy | CHAIR_i | CHAIR_s | POPE F1 | POPE yes-ratio (random) | words |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for policy, row in record["rows"].items():
        lines.append(
            f"| {policy} | {row['chair_i']:.3f} | {row['chair_s']:.3f} | {row['pope_f1']:.3f} | "
            f"{row['pope']['random']['yes_ratio']:.2f} | {row['mean_words']:.1f} |"
        )
    tail = f"\n\nOn {record['scenes']} held-out scenes. " + _source(name, record)
    return "\n".join(lines) + tail + "\n"


def evaluate_speed() -> str:
    """bench/evaluate.py: held-out prompts through vLLM against transformers in process (evaluate.json)."""
    name = "evaluate.json"
    record = _load(name)
    lines = [
        "| path | seconds | prompts/s | CHAIR_i | CHAIR_s | POPE F1 | words |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for path, row in record["rows"].items():
        metrics = row["metrics"]
        lines.append(
            f"| {path} | {row['seconds']:.1f} | {row['prompts_per_second']:.0f} | {metrics['chair_i']:.3f} | "
            f"{metrics['chair_s']:.3f} | {metrics['pope_f1']:.3f} | {metrics['mean_words']:.1f} |"
        )
    gaps = ", ".join(f"{key} {value:.3f}" for key, value in record["gaps"].items())
    tail = (
        f"\n\n{record['prompts']} prompts ({record['scenes']} scenes), {record['workers']} requests in flight; "
        f"vLLM over transformers: **{record['ratio']:.2f}x**; the two paths' gaps: {gaps}. "
    )
    return "\n".join(lines) + tail + _source(name, record) + "\n"


TABLES: dict[str, Callable[[], str]] = {
    "weighting": weighting,
    "toy-policy": toy_policy,
    "evaluate": evaluate_speed,
    "label-efficiency": label_efficiency,
    "alignment": alignment,
    "train-step": train_step,
    "rollout": rollout,
    "alignment-styles": alignment_styles,
    "alignment-released": alignment_released,
    "label-efficiency-styles": label_efficiency_styles,
    "demo": demo,
    "export": export,
    "gpu-dry-run": lambda: gpu("gpu-dry-run.json"),
}


def pages(repo: Path = REPO) -> list[Path]:
    return [path for pattern in PAGES for path in sorted(repo.glob(pattern))]


def render(text: str, *, where: str = "") -> tuple[str, list[str]]:
    """`text` with every marked block regenerated, and the names of the blocks that changed."""
    changed: list[str] = []

    def one(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in TABLES:
            raise ValueError(f"{where}: no generated table named {name!r}; known: {', '.join(TABLES)}")
        body = TABLES[name]()
        if body != match["body"]:
            changed.append(name)
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(one, text), changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table differs")
    args = parser.parse_args()
    stale = []
    for page in pages():
        text = page.read_text()
        new, changed = render(text, where=str(page.relative_to(REPO)))
        stale += [f"{page.relative_to(REPO)}: {name}" for name in changed]
        if changed and not args.check:
            page.write_text(new)
    for item in stale:
        print(f"{'differs' if args.check else 'regenerated'}: {item}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
