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
sys.path.insert(0, str(REPO))  # the families' and the preflight's own table writers
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


ALIGNMENT = "alignment.json"  # every row of bench/alignment.py, in one run


def _alignment_row(row: dict[str, Any], base: dict[str, Any], first: str) -> str:
    """The cells every alignment table shares, after its own first cells."""
    return (
        f"| {first} | {_pm(row, 'chair_i')} ({_change(row['chair_i'], base['chair_i'])}) | {_pm(row, 'chair_s')} | "
        f"{row['pope_f1']:.3f} | {_pm(row, 'mean_words', 1)} ({_change(row['mean_words'], base['mean_words'])}) | "
        f"{_pm(row, 'coverage')} |"
    )


def _alignment_base(base: dict[str, Any], first: str) -> str:
    return (
        f"| {first} | {base['chair_i']:.3f} | {base['chair_s']:.3f} | {base['pope_f1']:.3f} | "
        f"{base['mean_words']:.1f} | {base['coverage']:.3f} |"
    )


ALIGNMENT_HEAD = "CHAIR_i (vs base) | CHAIR_s | POPE F1 | words (vs base) | coverage |"


def alignment_styles() -> str:
    """bench/alignment.py's correction rows, each deleting beside replacing (the `+replace` rows of
    alignment.json)."""
    record = _load(ALIGNMENT)
    rows = {row["method"]: row for row in record["rows"]}
    base = record["rows"][0]
    lines = [
        f"| method | corrections | labels | seeds | {ALIGNMENT_HEAD}",
        "| --- | --- | ---: | ---: | --- | --- | ---: | --- | --- |",
        _alignment_base(base, "base | - | 0 | -"),
    ]
    for name, row in rows.items():
        if not name.endswith("+replace"):
            continue
        method = name.removesuffix("+replace")
        for style, found in (("delete", rows.get(method)), ("replace", row)):
            if found:
                first = f"{method} | {style} | {found['labels']} | {len(found['seeds'])}"
                lines.append(_alignment_row(found, base, first))
    return "\n".join(lines) + "\n\n" + _source(ALIGNMENT, record) + "\n"


# How the main table names bench/alignment.py's rows.
ALIGNMENT_NAMES = {
    "ddpo": "DDPO (gamma 5, normalised)",
    "dpo": "DPO",
    "sft": "SFT on the corrections",
    "mdpo": "mDPO",
    "hsa_dpo": "HSA-DPO",
    "halva": "HALVA",
    "halva+inject": "HALVA + injected phrases",
    "silkie": "Silkie (rating pairs, DPO)",
    "ddpo+ld": "DDPO + LD-DPO (alpha 0.5)",
    "ddpo+inject": "DDPO + injected negatives",
    "ddpo+noised_image": "DDPO + noised-image negatives",
    "ppo": "PPO",
    "ppo+debias": "PPO, length trend regressed out",
    "ppo+helpful": "PPO, reward model with helpfulness-ordered ties",
    "ppo+anchor": "PPO, length anchor 2.0/word",
    "ppo+released": "PPO as LLaVA-RLHF released it",
    "grpo": "GRPO (trl)",
    "rloo": "RLOO (trl)",
}


def _reward_models(record: dict[str, Any]) -> str:
    """bench/alignment.py names a reward model "ties drop" or "ties use", then ", released"."""

    def label(key: str) -> str:
        ties, *modes = key.split(", ")
        return f"`ties: {ties.removeprefix('ties ')}`" + (" on the released input" if "released" in modes else "")

    models = record.get("reward_models", {})
    return ", ".join(f"{label(key)} {found['heldout_accuracy']:.3f}" for key, found in models.items())


def alignment() -> str:
    """bench/alignment.py's table of every method on deleting corrections, ratings and rankings
    (alignment.json, less its `+replace` rows)."""
    record = _load(ALIGNMENT)
    rows = [row for row in record["rows"] if not row["method"].endswith("+replace")]
    base = rows[0]
    lines = [
        f"| method | labels | generated | seeds | {ALIGNMENT_HEAD} empty | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        _alignment_base(base, "base | 0 | 0 | -") + f" {base['empty_share']:.2f} | - |",
    ]
    for row in rows[1:]:
        first = (
            f"{ALIGNMENT_NAMES.get(row['method'], row['method'])} | {row['labels']} | {row['generated']:.0f} | "
            f"{len(row['seeds'])}"
        )
        lines.append(_alignment_row(row, base, first) + f" {row['empty_share']:.2f} | {row['seconds']:.0f} |")
    names = {
        "replacements": "replacing corrections",
        "ratings": "rated answers",
        "ranking_ties": "of them ordered by helpfulness after a tie",
    }
    labels = ", ".join(f"{count} {names.get(kind, kind)}" for kind, count in record["labels"].items())
    tail = (
        f"\n\nOn {record['heldout']} held-out scenes. Labels: {labels}; the reward models' held-out accuracy: "
        f"{_reward_models(record)}. "
    )
    return "\n".join(lines) + tail + _source(ALIGNMENT, record) + "\n"


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
    """bench/alignment.py's PPO beside PPO as LLaVA-RLHF released it (rows ppo and ppo+released
    of alignment.json)."""
    record = _load(ALIGNMENT)
    rows = {row["method"]: row for row in record["rows"]}
    base = record["rows"][0]
    lines = [
        f"| method | reward model's held-out accuracy | {ALIGNMENT_HEAD} training s |",
        "| --- | ---: | --- | ---: | ---: | --- | ---: | ---: |",
        _alignment_base(base, "base | -") + " - |",
    ]
    models = record.get("reward_models", {})
    for method in ("ppo", "ppo+released"):
        row = rows[method]
        accuracy = models["ties drop, released" if method == "ppo+released" else "ties drop"]["heldout_accuracy"]
        lines.append(_alignment_row(row, base, f"{method} | {accuracy:.3f}") + f" {row['seconds']:.0f} |")
    return "\n".join(lines) + "\n\n" + _source(ALIGNMENT, record) + "\n"


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
    tail = ["", _label_settings(record)]
    if best:
        tail.append(
            f"Best human arm after {record['settings']['rounds']} rounds: `{best['name']}`, CHAIR_i "
            f"{best['chair_i_drop']:.1%} below the base, coverage {best['coverage']:.3f}."
        )
    return "\n".join(lines + tail) + "\n\n" + _source(name, record) + "\n"


def _label_settings(record: dict[str, Any]) -> str:
    """bench/label_efficiency.py's settings and its base policy, in a sentence."""
    settings, base = record["settings"], record["base"]
    return (
        f"{settings['labels']} human labels a round, {settings['rounds']} rounds, a pool of {settings['pool']} "
        f"scenes (2 prompts each, K = {settings['samples']}), noise {settings['noise']:g}, seeds {settings['seeds']} "
        f"(means; ± the standard deviation over seeds), {settings['heldout']} held-out scenes. The base: CHAIR_i "
        f"{base['chair_i']:.3f}, POPE F1 {base['pope_f1']:.3f}, {base['mean_words']:.1f} words, coverage "
        f"{base['coverage']:.3f}."
    )


def label_efficiency() -> str:
    """bench/label_efficiency.py's five arms in its default correction style (label_efficiency.json)."""
    name = "label_efficiency.json"
    record = _load(name)
    base = record["base"]
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
                f"{row['mean_words']:.1f} | {row['coverage']:.3f} | {row['annotator_minutes']:.0f} |"
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
        _label_settings(record),
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


def _range(values: list[float], fmt: str = ".1f") -> str:
    low, high = min(values), max(values)
    return f"{low:{fmt}}" if f"{low:{fmt}}" == f"{high:{fmt}}" else f"{low:{fmt}}-{high:{fmt}}"


def families() -> str:
    """bench/families.py: the family matrix and what its cells measured (families.json)."""
    from rlhf.family_matrix import PAIR_CELLS, RL_CELLS, Cell, Row, markdown

    name = "families.json"
    record = _load(name)
    rows = [
        Row(row["family"], row["model_type"], {cell: Cell(**value) for cell, value in row["cells"].items()})
        for row in record["rows"]
    ]
    done = [(cell, value) for row in rows for cell, value in row.cells.items() if value.status == "ok"]
    other = [value.seconds for cell, value in done if cell != "vllm"]
    rl = [value.seconds for cell, value in done if cell in RL_CELLS]
    vllm = [value.seconds for cell, value in done if cell == "vllm"]
    pair = [value.figures for cell, value in done if cell in PAIR_CELLS]
    reward = [value.figures["accuracy"] for cell, value in done if cell == "reward"]
    before = [value.figures["reward_before"] for cell, value in done if cell in RL_CELLS]
    after = [value.figures["reward"] for cell, value in done if cell in RL_CELLS]
    total = sum(value.seconds for row in rows for value in row.cells.values())
    fell = sum(figures["last_loss"] < figures["first_loss"] for figures in pair)
    tail = (
        f"\n\nOn the tiny checkpoints the training and evaluation cells took {_range(other, '.2f')} s each "
        f"(RL cells {_range(rl)} s), each vLLM cell {_range(vllm, '.0f')} s (mostly the server's start); "
        f"the cells add up to {total / 60:.1f} minutes. {fell} of {len(pair)} pair cells' losses fell; the "
        f"reward cells' accuracy on their pairs rose to {_range(reward, '.2f')}; the RL cells' reward rose from "
        f"{_range(before, '.2f')} to {_range(after, '.2f')}. "
    )
    return markdown(rows, record["cells"]) + tail + _source(name, record) + "\n"


def preflight() -> str:
    """bench/preflight.py: the preflight's verdict and time per family and method (preflight.json)."""
    from bench.preflight import table

    name = "preflight.json"
    record = _load(name)
    rows = record["rows"]
    passed = [row["command_seconds"] for row in rows if row["ok"]]
    refused = [row["command_seconds"] for row in rows if not row["ok"]]
    probe = [
        step["seconds"] for row in rows for step in row["steps"] if step["name"] == "vllm" and step["status"] == "ok"
    ]
    tail = (
        f"\n\n{len(passed)} passes, {len(refused)} refusals. A pass took {_range(passed)} s, a refusal "
        f"{_range(refused)} s (the whole command: interpreter start and imports included); vLLM's probe, "
        f"{_range(probe)} s of a pass. "
    )
    return table(record) + tail + _source(name, record) + "\n"


def reward_model() -> str:
    """bench/reward_model.py: the reward model's held-out accuracy with and without facts (reward_model.json)."""
    name = "reward_model.json"
    record = _load(name)
    lines = [
        "| facts | training pairs | held-out pairs | held-out accuracy | loss, first to last | training s |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for row in record["rows"]:
        lines.append(
            f"| {'yes' if row['facts'] else 'no'} | {row['train_pairs']} | {row['heldout_pairs']} | "
            f"**{row['heldout_accuracy']:.3f}** | {row['first_loss']:.3f} to {row['last_loss']:.3f} | "
            f"{row['seconds']:.0f} |"
        )
    settings = record["settings"]
    tail = (
        f"\n\n{record['scenes']} training scenes, {record['rankings']} oracle rankings "
        f"({record['tie_then_helpfulness']} ordered by helpfulness after a tie, ties {settings['ties']}); "
        f"facts as {record['fact_format']}; {settings['epochs']:g} epochs at learning rate "
        f"{settings['learning_rate']:g}. "
    )
    return "\n".join(lines) + tail + _source(name, record) + "\n"


def reward_model_kernels() -> str:
    """bench/reward_model.py with --cpu-kernels beside the plain run: the same command on the
    same CPU, only torch's kernels differ (reward_model.json, reward_model-avx2.json)."""
    lines = [
        "| torch's CPU kernels | facts | held-out accuracy | loss, first to last |",
        "| --- | --- | ---: | --- |",
    ]
    sources, machines = [], []
    for name in ("reward_model.json", "reward_model-avx2.json"):
        record = _load(name)
        cpu = record["machine"]
        machines.append(f"{cpu['processor']} ({cpu.get('cpu_id', 'identity not recorded')}), {cpu['cpus']} cores")
        kernels = record["machine"].get("torch_cpu_capability", "not recorded")
        for row in record["rows"]:
            lines.append(
                f"| {kernels} | {'yes' if row['facts'] else 'no'} | {row['heldout_accuracy']:.3f} | "
                f"{row['first_loss']:.5f} to {row['last_loss']:.5f} |"
            )
        sources.append(_source(name, record))
    # The comparison holds only on one CPU: say so when the two files came from two.
    same = machines[0] == machines[1] and "not recorded" not in machines[0]
    where = f"Both on {machines[0]}." if same else f"On two CPUs, not comparable: {machines[0]}; {machines[1]}."
    first, second = sources
    return "\n".join(lines) + f"\n\n{where} {first} And: {second.removeprefix('Raw rows: ')}\n"


def generation() -> str:
    """bench/generation.py: candidate tokens/s by path, and the worker's CPU beside vLLM's (generation.json)."""
    name = "generation.json"
    record = _load(name)
    rate = record["tokens_per_second"]
    lines = ["| path | tokens/s |", "| --- | ---: |", *[f"| {path} | {value:.1f} |" for path, value in rate.items()]]
    celery, direct, local = rate.values()
    cpu, job = record["cpu_seconds_per_1000_candidates"], record["job_seconds"]
    tail = (
        f"\n\na/b = **{celery / direct:.2f}**, b/c = {direct / local:.2f}. During (a) FactLoop's worker (with its "
        f"pool) used {cpu['worker']:.2f} CPU seconds per 1,000 candidates against vLLM's {cpu['vllm']:.2f}, "
        f"{record['worker_share_of_vllm_cpu']:.1%} of vLLM's; the job waited {job['queued']:.1f} s in the queue "
        f"and ran {job['running']:.1f} s. {record['prompts']} prompts x {record['k']} candidates, at most "
        f"{record['max_tokens']} tokens, {record['concurrency']} requests in flight. "
    )
    return "\n".join(lines) + tail + _source(name, record) + "\n"


def _ms(row: dict[str, Any], key: str) -> str:
    return " / ".join(f"{row[key][p]:.0f}" if row[key][p] >= 10 else f"{row[key][p]:.1f}" for p in ("50", "95", "99"))


def annotate() -> str:
    """bench/annotate.py: labels/s and per-label latency by annotators and style (annotate.json)."""
    name = "annotate.json"
    record = _load(name)
    lines = [
        "| annotators | style | labels/s | one / two | per label p50 / p95 / p99 ms | lost | duplicated "
        "| tasks over k | errors |",
        "| ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in record["rows"]:
        ratio = f"{row['one_over_two']:.2f}" if row.get("one_over_two") else ""
        lines.append(
            f"| {row['annotators']} | {row['style']} | {row['per_second']:.1f} | {ratio} | {_ms(row, 'label_ms')} | "
            f"{row['lost']} | {row['duplicated']} | {row['tasks_over_k']} | {row['errors']} |"
        )
    settings = record["settings"]
    tail = (
        f"\n\ngunicorn {settings['workers']} workers x {settings['threads']} threads, k = {settings['overlap']}, "
        f"think time {settings['think_ms']:g} ms. "
    )
    return "\n".join(lines) + tail + _source(name, record) + "\n"


def soak() -> str:
    """bench/soak.py: many annotators with think times for minutes (soak.json)."""
    name = "soak.json"
    record = _load(name)
    minutes = record["per_minute"]
    counts = [minute["annotations"] for minute in minutes]
    p99 = [minute["submit_p99_ms"] for minute in minutes]
    audit = sum(record[key] for key in ("lost", "duplicated", "acknowledged_twice", "unacknowledged_stored"))
    text = (
        f"{record['annotators']} annotators for {record['seconds'] / 60:.0f} minutes, each pausing about "
        f"{record['think_ms'] / 1000:g} s before a task: **{record['annotations']:,} annotations "
        f"({record['per_second']:.1f}/s)**, {record['errors']} errors and {record['retries']} retries; next p50 / "
        f"p95 / p99 {_ms(record, 'next_ms')} ms, submit {_ms(record, 'submit_ms')} ms; {min(counts):,} to "
        f"{max(counts):,} annotations a minute (last minute / first: {record['last_over_first_annotations']:.2f}), "
        f"a per-minute submit p99 of {min(p99):.0f} to {max(p99):.0f} ms (last / first: "
        f"{record['last_over_first_submit_p99']:.2f}); the audit found {audit} labels lost or doubled and "
        f"{record['tasks_over_k']} tasks over k. "
    )
    return text + _source(name, record) + "\n"


def hostile() -> str:
    """bench/hostile.py: what each hostile or unlucky request made the server spend (hostile.json)."""
    name = "hostile.json"
    record = _load(name)
    parts = record["parts"]
    cost, disk, accounts = parts["cost"], parts["disk"], parts["accounts"]
    workers, start, claims = parts["workers"], parts["round_start"], parts["claims"]
    loaded, empty = claims["leftovers_10000"], claims["leftovers_0"]

    def seconds(run: dict[str, Any]) -> str:
        return f"{run['seconds']:.2f} s" if run["seconds"] is not None else f"cut off after {run['timed_out_after']} s"

    def export(run: dict[str, Any]) -> str:
        return f"the export {run['export']['status']} after {run['export']['attempts']} attempt(s)"

    lines = [
        "| attack | measured |",
        "| --- | --- |",
        "| an anonymous `POST /api/auth/token/` whose body is an unterminated string of escaped quotes (throttles "
        f"raised out of the way) | {cost['8KB']['cpu_ms_per_request']:.2f} ms of server CPU at 8 KB, "
        f"{cost['32KB']['cpu_ms_per_request']:.2f} ms at 32 KB ({cost['ratio_32KB_to_8KB']:.2f}x), "
        f"{cost['128KB']['cpu_ms_per_request']:.2f} ms at 128 KB ({cost['128KB']['statuses'][0]} from its length) |",
        f"| an anonymous {disk['upload_mb']} MB multipart upload to the sign-in page with a made-up `csrftoken` "
        f"cookie | {disk['status']}; {disk['bytes_written']:,} bytes written to disk against "
        f"{disk['bytes_written_for_a_1KB_refusal']:,} for a refused 1 KB form (the request's log line); "
        f"{disk['bytes_of_the_upload_written']:,} bytes of the upload |",
        "| wrong passwords for the admin from one address, behind one trusted proxy | "
        f"{accounts['attacker_429s']} answers 429; the right password from that address: "
        f"{accounts['attacker_with_the_right_password']}; the admin from another address: "
        f"{accounts['owner_from_another_address']} |",
        f"| one password sprayed over {accounts['spray_tries']} user names from one address | 429 from try "
        f"{accounts['spray_first_429_at_try']} on ({accounts['spray_429s']} of {accounts['spray_tries']}) |",
        "| the generate worker restarts while an export runs on the export worker of the same host | names as "
        f"shipped (`-n QUEUE@%h`): {export(workers['shipped'])}; both workers under Celery's default name: "
        f"{export(workers['shared'])} |",
        f"| choosing a new round's prompts among {start['prompts']:,} | NOT EXISTS: "
        f"{seconds(start['not_exists_work_mem_4MB'])} at PostgreSQL's default `work_mem` and "
        f"{seconds(start['not_exists_work_mem_256kB'])} at 256 kB; the NOT IN it replaced: "
        f"{seconds(start['not_in_work_mem_4MB'])} and {seconds(start['not_in_work_mem_256kB'])}; the first 1,000 "
        f"new prompts in {start['not_exists_first_1000_seconds']:.2f} s |",
        "| one annotator labelling with 10,000 unfinished tasks of frozen rounds older than the open round's | "
        f"{loaded['labels_per_second']:.1f} against {empty['labels_per_second']:.1f} labels/s without (median of "
        f"three alternating runs each; ratio {claims['ratio']:.2f}; single runs "
        f"{_range(loaded['labels_per_second_runs'] + empty['labels_per_second_runs'], '.0f')} labels/s) |",
    ]
    return "\n".join(lines) + "\n\n" + _source(name, record) + "\n"


def replicas() -> str:
    """bench/replicas.py: candidates an hour through one vLLM replica and through two (replicas.json)."""
    name = "replicas.json"
    record = _load(name)
    median = record["median_candidates_per_hour"]
    pinned = ", each server's threads bound to a core of its own" if record["pinned"] else ""
    text = (
        f"{record['prompts']} prompts x {record['k']} candidates, at most {record['max_tokens']} tokens, "
        f"{record['concurrency']} requests in flight{pinned}; median of {len(record['runs']['one'])} alternating "
        f"runs: one replica **{median['one']:,.0f}** candidates an hour, two replicas **{median['two']:,.0f}**, "
        f"a ratio of **{record['two_over_one']:.2f}**. "
    )
    return text + _source(name, record) + "\n"


def distributed() -> str:
    """bench/distributed.py: one process against two, loss curve against loss curve (distributed.json)."""
    name = "distributed.json"
    record = _load(name)
    trainers = record["trainers"]
    steps = len(next(iter(trainers.values()))["curves"]["one"])
    gaps = ", ".join(
        f"{'DDPO' if trainer == 'ddpo' else 'the reward model'} {found['max_abs_difference']:.1e}"
        for trainer, found in trainers.items()
    )
    text = f"Over {steps} steps at global batch {record['global_batch']}, the largest difference: {gaps}. "
    return text + _source(name, record) + "\n"


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
    "families": families,
    "preflight": preflight,
    "reward-model": reward_model,
    "reward-model-kernels": reward_model_kernels,
    "generation": generation,
    "annotate": annotate,
    "soak": soak,
    "hostile": hostile,
    "replicas": replicas,
    "distributed": distributed,
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
