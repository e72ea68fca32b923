"""`python -m rlhf.cli`: training and evaluation outside Django.

- `evaluate --data DIR (--server URL --served NAME | --model PATH) [--adapter DIR]`:
  hallucination metrics, with bootstrap intervals, on a held-out set exported from the
  database (contract/heldout.py; rlhf/hallucination.py): through the vLLM server (an adapter is
  loaded under a temporary name and unloaded after) or in this process. Without `--data`,
  `--model` is scored on held-out scenes of the synthetic world, in process.
- `compare --new FILE --current FILE [--metric M[:X],...] [--margin X]`: the gate's decision between
  two evaluations of the same held-out set (paired bootstrap).
- `dpo --config FILE.yaml [--set KEY=VALUE ...] [--resume]`: DDPO, DPO, SFT, mDPO,
  HSA-DPO or HALVA (`method`), optionally with synthetic rejected responses mixed in
  (`synthetic`), from `trl` exports (rlhf/config.py lists every setting); progress bar on
  the terminal, TensorBoard logs under OUTPUT_DIR/runs.
- `reward --config FILE.yaml [--set ...] [--resume] [--register NAME --registry DIR]`: a
  Bradley-Terry reward model from the ranking pairs of `trl` exports (rlhf/reward.py),
  optionally registered as a model version of kind "reward".
- `rl --config FILE.yaml [--set ...]`: PPO, GRPO or RLOO against a reward model
  (RLTrainConfig in rlhf/config.py; per-step statistics in OUTPUT_DIR/log.jsonl).
- `pairs --ratings FILE.jsonl --out DIR`: a `trl` export of Silkie's pairs from rated
  responses (rlhf/ratings.py: any two responses to a prompt with unequal mean ratings),
  source "rating"; train on it with `dpo` (data may name several exports).
- `ai-feedback --items FILE.jsonl --out FILE.jsonl --vocabulary NAME (--server URL --served
  NAME | --model PATH [--adapter DIR])`: an AI labeller's verdicts on responses
  (rlhf/ai_feedback.py, RLAIF-V's claims and questions): one item a line, {"key", "image":
  a file path, "response"}; out, one contract/feedback.py `Feedback` a line. Claims come
  from rules over the vocabulary, or with `--split-served NAME` from a served text model.
- `preflight --model M [--adapter DIR] --method METHOD --data EXPORT [--config FILE.yaml]
  [--set ...] [--reward-config FILE.yaml] [--out FILE.json]`: what a round will do to the
  model, once, on one batch of the export (rlhf/preflight.py): the family's documented gaps,
  whether the pinned vLLM serves the architecture, the method's collator, forward and
  backward (and for RL the reward model's step and one scored rollout). Prints each step
  with its time; exit 1 naming the step, the library and the cause when one fails.
- `families [--family T ...] [--cell C ...] [--vllm] [--out FILE.json]`: the family matrix
  (rlhf/family_matrix.py): every trainer, vLLM and the evaluator on each family's tiny
  checkpoint; prints the Markdown table (exit 1 when a cell fails).

Exit status: 0 done, 2 bad input (config, data, model), 1 anything else.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from contract.comparison import gate as gate_decision
from contract.comparison import parse_gate
from contract.heldout import Evaluation, HeldoutError, read_heldout
from contract.launch import LAUNCHER_PID, die_with_parent
from contract.methods import DEFAULT_GATE, METHODS
from contract.protocols import FACTLOOP, PROTOCOLS
from contract.run import ADAPTER
from models.registry import Registry, RegistryError
from rlhf.common import load_policy
from rlhf.config import ConfigError, RLTrainConfig, load_config, load_run_config
from rlhf.distributed import finish, is_main, launched
from rlhf.family_matrix import CELLS, markdown, run_row, write_pairs
from rlhf.hallucination import LocalResponder, ServedResponder, amber_reader
from rlhf.hallucination import evaluate as evaluate_heldout
from rlhf.reward import RewardConfig, train_reward_model
from rlhf.scene_eval import evaluate_toyworld, heldout_scenes
from rlhf.scoring import RewardModel, locate_reward_model
from rlhf.train_dpo import train as train_dpo
from rlhf.train_rl import train as train_rl
from rlhf.training_data import DataError


def _evaluate(args: argparse.Namespace) -> int:
    if args.data is not None:
        return _evaluate_heldout(args)
    if args.model is None:
        print("rlhf.cli evaluate: name --model (or --data with --server)", file=sys.stderr)
        return 2
    import torch

    torch.manual_seed(0)
    try:
        model, processor = load_policy(args.model, adapter=args.adapter)
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


def _evaluate_heldout(args: argparse.Namespace) -> int:
    from models.replicas import connect
    from models.serving import ServingError

    try:
        heldout = read_heldout(args.data).limited(args.limit)
    except HeldoutError as error:
        print(f"rlhf.cli evaluate: {error}", file=sys.stderr)
        return 2
    if bool(args.server) == bool(args.model):
        print("rlhf.cli evaluate: --data needs either --server (with --served) or --model", file=sys.stderr)
        return 2
    fixed = PROTOCOLS[args.protocol].pope_per_image
    if args.protocol != FACTLOOP and args.pope_per_image not in (None, fixed):
        print(f"rlhf.cli evaluate: the {args.protocol} protocol asks {fixed} POPE objects per image", file=sys.stderr)
        return 2
    if PROTOCOLS[args.protocol].scorer == "amber":  # refused before a model is loaded or a server asked
        try:
            amber_reader(heldout, [item for item in heldout.items if item.kind == "describe"])
        except HeldoutError as error:
            print(f"rlhf.cli evaluate: {error}", file=sys.stderr)
            return 2
    if args.server is not None and not any(url.strip() for url in args.server.split(",")):
        print("rlhf.cli evaluate: --server names no URL", file=sys.stderr)
        return 2
    if args.adapter is not None and not (args.adapter / "adapter_config.json").is_file():
        print(f"rlhf.cli evaluate: {args.adapter} holds no LoRA adapter (adapter_config.json)", file=sys.stderr)
        return 2
    reward = None
    if args.reward_model is not None:
        try:
            reward = RewardModel(args.reward_model)
        except (ConfigError, OSError, ValueError) as error:
            print(f"rlhf.cli evaluate: cannot load the reward model: {error}", file=sys.stderr)
            return 2
    settings: dict[str, Any] = {"pope_per_image": args.pope_per_image, "seed": args.seed, "bootstrap": args.bootstrap}
    settings["protocol"] = args.protocol
    settings["reward_model"] = reward
    try:
        if args.server:
            if not args.served:
                print("rlhf.cli evaluate: --server needs --served (the base model's served name)", file=sys.stderr)
                return 2
            with connect(args.server, timeout=600.0) as client:  # one server, or replicas (a,b,...)
                name, temporary = args.served, None
                if args.adapter is not None:
                    temporary = f"factloop-eval-{os.getpid()}-{secrets.token_hex(3)}"
                    client.load_adapter(temporary, str(args.adapter.resolve()), replace=False)
                    name = temporary
                try:
                    served = ServedResponder(
                        client, name, max_tokens=args.max_tokens, seed=args.seed, workers=args.workers
                    )
                    evaluation = evaluate_heldout(heldout, served, **settings)
                finally:
                    if temporary is not None:
                        client.unload_adapter(temporary)
        else:
            try:
                model, processor = load_policy(args.model, adapter=args.adapter)
            except (OSError, ValueError) as error:
                print(f"rlhf.cli: cannot load model {args.model!r}: {error}", file=sys.stderr)
                return 2
            local = LocalResponder(model, processor, max_tokens=args.max_tokens)
            evaluation = evaluate_heldout(heldout, local, **settings)
    except (HeldoutError, ServingError) as error:
        print(f"rlhf.cli evaluate: {error}", file=sys.stderr)
        return 2
    evaluation = dataclasses.replace(evaluation, policy=args.label or evaluation.policy)
    if args.out:
        evaluation.write(args.out)
    print(json.dumps({"policy": evaluation.policy, "metrics": evaluation.metrics, "seconds": evaluation.seconds}))
    return 0


def _compare(args: argparse.Namespace) -> int:
    try:
        criteria = parse_gate(args.metric, margin=args.margin)
        decision = gate_decision(Evaluation.read(args.new), Evaluation.read(args.current), criteria, seed=args.seed)
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"rlhf.cli compare: {error}", file=sys.stderr)
        return 2
    text = json.dumps(decision)
    if args.out:
        partial = args.out.with_suffix(".partial")
        partial.write_text(text + "\n")
        partial.replace(args.out)
    print(text)
    return 0


def _dpo(args: argparse.Namespace) -> int:

    try:
        config = load_config(args.config, args.set)
    except ConfigError as error:
        print(f"rlhf.cli dpo: {error}", file=sys.stderr)
        return 2

    try:
        result = train_dpo(config, resume=args.resume)
    except (ConfigError, DataError, OSError) as error:
        print(f"rlhf.cli dpo: {error}", file=sys.stderr)
        return 2
    # One line, last: training logs go to the same stream before it (rank 0's alone).
    if is_main():
        print(json.dumps(result.as_dict()))
    return 0


def _reward(args: argparse.Namespace) -> int:

    if bool(args.register) != bool(args.registry):
        print("rlhf.cli reward: --register and --registry go together", file=sys.stderr)
        return 2
    try:
        config = load_run_config(RewardConfig, args.config, args.set)
        if args.register and Registry(args.registry).path_of(args.register).exists():
            raise ConfigError(f"version {args.register!r} is already registered")
        result = train_reward_model(config, resume=args.resume)
    except (ConfigError, DataError, OSError) as error:
        print(f"rlhf.cli reward: {error}", file=sys.stderr)
        return 2
    output = asdict(result)
    if not is_main():  # rank 0 registers and reports
        return 0
    if args.register:
        try:
            Registry(args.registry).register(
                args.register,
                base_model=config.model,
                adapter_dir=Path(result.output_dir) / ADAPTER,
                metrics={"heldout_accuracy": result.heldout_accuracy, "facts": config.facts_mode()},
                kind="reward",
            )
        except RegistryError as error:
            print(f"rlhf.cli reward: trained, but not registered: {error}", file=sys.stderr)
            return 2
        output["registered"] = args.register
    print(json.dumps(output))
    return 0


def _rl(args: argparse.Namespace) -> int:

    try:
        config = load_run_config(RLTrainConfig, args.config, args.set)

        locate_reward_model(config.reward_model)  # before any model loads
    except ConfigError as error:
        print(f"rlhf.cli rl: {error}", file=sys.stderr)
        return 2

    try:
        result = train_rl(config)
    except (ConfigError, DataError, OSError) as error:
        print(f"rlhf.cli rl: {error}", file=sys.stderr)
        return 2
    if is_main():
        print(json.dumps(result.as_dict()))
    return 0


def _families(args: argparse.Namespace) -> int:
    import tempfile

    import torch

    from testbed.family_checkpoints import FAMILIES, family
    from testbed.toyworld.render import write_heldout_set

    try:
        names = [family(name).model_type for name in args.family or [f.model_type for f in FAMILIES]]
    except KeyError as error:
        print(f"rlhf.cli families: {error.args[0]}", file=sys.stderr)
        return 2
    cells = [c for c in CELLS if (c in args.cell if args.cell else (c != "vllm" or args.vllm))]
    serving = args.serving_python or str(Path(__file__).resolve().parent.parent / ".venv-serving/bin/python")
    if "vllm" in cells and not Path(serving).exists():
        print(f"rlhf.cli families: no serving venv at {serving} (make serving)", file=sys.stderr)
        return 2
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    work = args.work or Path(tempfile.mkdtemp(prefix="factloop-families-"))
    work.mkdir(parents=True, exist_ok=True)
    pairs = work / "pairs" if (work / "pairs" / "manifest.json").is_file() else write_pairs(work / "pairs")
    heldout = work / "heldout"
    if not (heldout / "manifest.json").is_file():
        write_heldout_set(heldout, 3)
    rows = []
    for name in names:
        print(f"== {name}", file=sys.stderr)
        row = run_row(
            name,
            work / name,
            pairs=pairs,
            heldout=heldout,
            cells=cells,
            serving_python=serving if "vllm" in cells else None,
            progress=lambda line: print(line, file=sys.stderr),
        )
        rows.append(row)
    if args.out:
        args.out.write_text(json.dumps({"cells": cells, "rows": [r.to_dict() for r in rows]}, indent=2) + "\n")
    print(markdown(rows, cells))
    return 0 if all(c.status in ("ok", "refused", "skipped") for r in rows for c in r.cells.values()) else 1


def _preflight(args: argparse.Namespace) -> int:
    from rlhf.preflight import preflight

    if not (args.data / "manifest.json").is_file():
        print(f"rlhf.cli preflight: {args.data} is not a trl export (no manifest.json)", file=sys.stderr)
        return 2
    serving = args.serving_python or str(Path(__file__).resolve().parent.parent / ".venv-serving/bin/python")
    report = preflight(
        args.model,
        args.method,
        args.data,
        adapter=args.adapter,
        config=args.config,
        overrides=args.set,
        reward_config=args.reward_config,
        serving_python=serving,
        server=args.server,
    )
    for step in report.steps:
        where = f" [{step.library}]" if step.library else ""
        print(f"  {step.name:<8} {step.status:<8} {step.seconds:6.1f} s  {step.detail}{where}")
    print(report.summary())
    if args.out:
        args.out.write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    return 0 if report.ok else 1


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="a YAML file of settings (see rlhf/config.py)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting (repeatable; lora.r=8)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf.cli", description=__doc__)
    parser.add_argument(
        "--parent-pid",
        type=int,
        help="stop when this process (the one that started the command) dies (Linux): a training job's worker",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    evaluate = commands.add_parser("evaluate", help="CHAIR, POPE and more on a held-out set, with intervals")
    evaluate.add_argument(
        "--data", type=Path, help="a held-out folder (contract/heldout.py) exported from the database"
    )
    evaluate.add_argument(
        "--server", help="the vLLM server's URL (or replicas' URLs, comma-separated): answers come from it"
    )
    evaluate.add_argument("--served", help="the name the server serves the base model under")
    evaluate.add_argument("--model", help="a local checkpoint folder or a hub id: answers come from this process")
    evaluate.add_argument("--adapter", type=Path, help="a LoRA adapter folder to apply to the model")
    evaluate.add_argument("--label", help="the policy's name in the result (a version name)")
    evaluate.add_argument("--limit", type=int, help="only the first N items of the held-out set")
    evaluate.add_argument("--max-tokens", type=int, default=256, help="longest answer, in tokens (default 256)")
    evaluate.add_argument("--workers", type=int, default=32, help="requests in flight to the server (default 32)")
    evaluate.add_argument(
        "--protocol",
        default=FACTLOOP,
        choices=PROTOCOLS,
        help="with --data: what is asked and how it is read, FactLoop's own or a published one (default %(default)s)",
    )
    evaluate.add_argument(
        "--pope-per-image", type=int, help="FactLoop's protocol: POPE probes per image and label (default 1)"
    )
    evaluate.add_argument("--seed", type=int, default=0, help="seed of POPE's sampling, decoding and the bootstrap")
    evaluate.add_argument("--reward-model", type=Path, help="also score the answers with this reward model")
    evaluate.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    evaluate.add_argument("--scenes", type=int, default=200, help="without --data: held-out toy scenes (default 200)")
    evaluate.add_argument("--out", type=Path, help="also write the result to this JSON file")
    gate = commands.add_parser("compare", help="the gate: is a new policy not worse than the current one")
    gate.add_argument("--new", type=Path, required=True, help="the new policy's evaluation (evaluate --out)")
    gate.add_argument("--current", type=Path, required=True, help="the current policy's, on the same held-out set")
    gate.add_argument(
        "--metric",
        default=DEFAULT_GATE,
        help="metric[:margin],... of chair_i, chair_s, pope_f1, coverage (default %(default)s)",
    )
    gate.add_argument("--margin", type=float, default=0.0, help="how much worse new may be where no margin is given")
    gate.add_argument("--seed", type=int, default=0, help="seed of the paired bootstrap")
    gate.add_argument("--out", type=Path, help="also write the decision to this JSON file")
    dpo = commands.add_parser("dpo", help="train with DDPO (RLHF-V) or DPO from exported labels")
    _add_config_options(dpo)
    dpo.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    reward = commands.add_parser("reward", help="train a (fact-augmented) Bradley-Terry reward model")
    _add_config_options(reward)
    reward.add_argument("--register", metavar="NAME", help="register the reward model as this version")
    reward.add_argument("--registry", type=Path, help="the registry root (FACTLOOP_MODEL_DIR)")
    reward.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    matrix = commands.add_parser("families", help="run every trainer, vLLM and evaluation on each family's tiny model")
    matrix.add_argument("--family", action="append", help="only this family (model type; repeatable)")
    matrix.add_argument("--cell", action="append", choices=CELLS, help="only this cell (repeatable)")
    matrix.add_argument("--vllm", action="store_true", help="also the vLLM cell (needs the serving venv)")
    matrix.add_argument("--serving-python", help="the serving venv's python (default .venv-serving/bin/python)")
    matrix.add_argument("--work", type=Path, help="where checkpoints and runs go (default: a temporary folder)")
    matrix.add_argument("--out", type=Path, help="also write the rows as JSON to this file")
    check = commands.add_parser("preflight", help="one batch of what a round does to a model, before the round")
    check.add_argument("--model", required=True, help="the base checkpoint (a folder or a hub id)")
    check.add_argument("--adapter", help="the current policy's LoRA adapter, which the round continues")
    check.add_argument("--method", required=True, choices=METHODS, help="what the round trains with")
    check.add_argument("--data", type=Path, required=True, help="a trl export (the round's labels)")
    _add_config_options(check)
    check.add_argument("--reward-config", type=Path, help="PPO/GRPO/RLOO: the reward model's settings file")
    check.add_argument("--serving-python", help="the serving venv's python (default .venv-serving/bin/python)")
    check.add_argument("--server", help="a vLLM server's URL: one request there with the adapter, when it answers")
    check.add_argument("--out", type=Path, help="also write the report as JSON to this file")
    rl = commands.add_parser("rl", help="PPO, GRPO or RLOO against a reward model")
    _add_config_options(rl)
    labels = commands.add_parser("ai-feedback", help="an AI labeller's claims, questions and verdicts (RLAIF-V)")
    labels.add_argument("--items", type=Path, required=True, help='JSON Lines: {"key", "image", "response"}')
    labels.add_argument("--out", type=Path, required=True, help="the feedback file to write (JSON Lines)")
    labels.add_argument("--vocabulary", default="coco", help="the objects' vocabulary: coco or toyworld")
    labels.add_argument("--server", help="the vLLM server's URL: the labeller is served there")
    labels.add_argument("--served", help="the labeller's served name (a base model or a loaded adapter)")
    labels.add_argument("--model", help="or a local checkpoint folder or hub id, answering in this process")
    labels.add_argument("--adapter", type=Path, help="a LoRA adapter folder to apply to --model")
    labels.add_argument(
        "--split-served", help="split claims with this served text model (on --server) instead of the rules"
    )
    labels.add_argument("--name", help='what made the labels, recorded in each (default "ai:<served or model>")')
    labels.add_argument("--workers", type=int, default=16, help="requests in flight to the server (default 16)")
    pairs = commands.add_parser("pairs", help="a trl export of preference pairs from rated responses (Silkie)")
    pairs.add_argument("--ratings", type=Path, required=True, help="a ratings file (JSON Lines; rlhf/ratings.py)")
    pairs.add_argument("--out", type=Path, required=True, help="the export folder to write (must not exist)")
    args = parser.parse_args(argv)
    if args.parent_pid is not None:
        # A launcher's rank watches the launcher (its parent), which watches the worker.
        launcher = os.environ.get(LAUNCHER_PID)
        die_with_parent((int(launcher) if launcher else None) if launched() else args.parent_pid)
    code = _dispatch(parser, args)
    finish()  # only after a run that did not raise: a failed rank is stopped by the launcher
    return code


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command == "evaluate":
        for option in ("scenes", "limit", "max_tokens", "workers", "pope_per_image", "bootstrap"):
            if getattr(args, option) is not None and getattr(args, option) < 1:
                parser.error(f"--{option.replace('_', '-')} must be at least 1")
        return _evaluate(args)
    if args.command == "compare":
        return _compare(args)
    if args.command == "preflight":
        return _preflight(args)
    if args.command == "reward":
        return _reward(args)
    if args.command == "rl":
        return _rl(args)
    if args.command == "families":
        return _families(args)
    if args.command == "pairs":
        return _pairs(args)
    if args.command == "ai-feedback":
        return _ai_feedback(args)
    return _dpo(args)


def _pairs(args: argparse.Namespace) -> int:
    from rlhf.ratings import RatingsError, read_ratings, write_rating_export

    if args.out.exists():
        print(f"rlhf.cli pairs: {args.out} exists; name a new folder", file=sys.stderr)
        return 2
    try:
        counts = write_rating_export(read_ratings(args.ratings), args.out)
    except RatingsError as error:
        print(f"rlhf.cli pairs: {error}", file=sys.stderr)
        return 2
    print(json.dumps(counts))
    return 0


def _ai_feedback(args: argparse.Namespace) -> int:
    from contract.feedback import write_feedback
    from models.replicas import connect
    from models.serving import ServingError
    from rlhf.ai_feedback import labeller_for, local_answerer, read_items, served_answerer, served_text

    if bool(args.server) == bool(args.model) or (args.server and not args.served):
        print("rlhf.cli ai-feedback: name either --server with --served, or --model", file=sys.stderr)
        return 2
    if args.split_served and not args.server:
        print("rlhf.cli ai-feedback: --split-served names a model on --server", file=sys.stderr)
        return 2
    try:
        items = read_items(args.items)
    except (OSError, ValueError) as error:
        print(f"rlhf.cli ai-feedback: {error}", file=sys.stderr)
        return 2
    name = args.name or f"ai:{args.served or args.model}"
    try:
        if args.server:
            with connect(args.server, timeout=300.0) as client:  # one server, or replicas (a,b,...)
                answer = served_answerer(client, args.served, workers=args.workers)
                split = served_text(client, args.split_served) if args.split_served else None
                feedback = labeller_for(args.vocabulary, answer, name, split_with=split).label(items)
        else:
            model, processor = load_policy(args.model, adapter=args.adapter)
            feedback = labeller_for(args.vocabulary, local_answerer(model, processor), name).label(items)
    except (ServingError, OSError, ValueError) as error:
        print(f"rlhf.cli ai-feedback: {error}", file=sys.stderr)
        return 2
    write_feedback(args.out, feedback)
    claims = sum(len(item.claims) for item in feedback)
    suspected = sum(len(item.suspected) for item in feedback)
    print(json.dumps({"items": len(feedback), "claims": claims, "suspected": suspected, "labeller": name}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
