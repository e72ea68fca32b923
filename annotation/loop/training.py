"""One alignment iteration for a round: `manage.py train_round` and the `train` queue's job.

Steps, in order, each recorded on the TrainingRun with its status, timing and outcome:

1. freeze: the round takes no more labels (assignments still out are refused at submission).
2. export: the round's labels as a `trl` export (annotation.data.exporters; whole or absent).
   preflight: the steps below once, on one batch of that export (`rlhf.cli preflight`: the
   family's documented gaps, whether vLLM serves it, the method's collator, forward and
   backward, for RL one reward-model step and one scored rollout), so that a family, method
   or setting that cannot work stops the run in seconds with the step, library and cause.
3. reward_model: PPO/GRPO/RLOO only: a fact-augmented reward model from the rankings.
4. train: DDPO, DPO, PPO, GRPO or RLOO (`python -m rlhf.cli` in a child process: the web
   app and worker never load torch), continuing the round's policy adapter.
5. evaluate: the new and the current policy answer the database's held-out prompts (the
   first FACTLOOP_EVAL_ITEMS) through the vLLM server, scored with bootstrap intervals
   (annotation/loop/evaluation.py, the same code as `manage.py evaluate`).
6. gate: the new policy must not be worse than the current one on any gate metric
   (FACTLOOP_GATE_METRICS, default CHAIR_i and coverage) beyond the paired bootstrap
   interval and its margin (contract.comparison.gate; `force` overrides).
7. register: the new version in the model registry (status "rejected" if the gate failed).
8. deploy: hot-load the adapter into the running vLLM server (skipped if the gate failed).
9. open_next: the next round, on the deployed policy (else the current one), with its
   candidate generation queued.

Every step can run again after a crash without duplicating what it made: files are written
under the run's folder and renamed into place (or detected by their completion marker),
the version name is fixed per run and checked before registering, the adapter is loaded
only if the server lacks it, and the next round is created in the transaction that records
it on the run. `resume` picks up the round's unfinished run at its first unfinished step.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from annotation.data.exporters import Selection, export
from annotation.jobs.lifecycle import enqueue_job
from annotation.labeling.rounds import freeze_round
from annotation.loop.deployment import deploy_version, serving_client, vllm_urls
from annotation.loop.evaluation import RlhfFailed, evaluate_version, export_heldout, run_rlhf
from annotation.loop.generation import start_round
from annotation.models import Correction, Job, Judgement, Prompt, Round, RoundPrompt, Task, TrainingRun
from annotation.rules.datasets import choose_dataset, scorable
from annotation.rules.errors import Refused
from contract.comparison import gate as gate_decision
from contract.comparison import parse_gate
from contract.export import MANIFEST as EXPORT_MANIFEST
from contract.family_gaps import checkpoint_gap
from contract.heldout import MANIFEST as HELDOUT_MANIFEST
from contract.heldout import Evaluation
from contract.launch import ONE_PROCESS, Launch, LaunchError
from contract.methods import (
    AMBER_CHAIR,
    AMBER_COG,
    AMBER_COVER,
    AMBER_HAL,
    CHAIR_I,
    CHAIR_S,
    COVERAGE,
    DPO_METHODS,
    EMPTY_SHARE,
    MEAN_WORDS,
    METHODS,
    OBJECT_HALBENCH,
    POPE_F1,
    QA_ACCURACY,
    REWARD_MODEL_ACCURACY,
    RL_METHODS,
)
from contract.protocols import check_gate
from contract.results import RewardResult, RunResult
from contract.run import POLICIES, Policy, RunFolder
from models.registry import Registry, RegistryError, UnknownVersion
from models.server import check_served_base
from models.serving import ServingError

STEPS = (
    "freeze",
    "export",
    "preflight",
    "reward_model",
    "train",
    "evaluate",
    "gate",
    "register",
    "deploy",
    "open_next",
)
# What the evaluate step keeps of each evaluation (AMBER's four under the amber protocol).
KEPT_METRICS = (
    *(CHAIR_I, CHAIR_S, OBJECT_HALBENCH, POPE_F1, COVERAGE, QA_ACCURACY, MEAN_WORDS, EMPTY_SHARE),
    *(AMBER_CHAIR, AMBER_COVER, AMBER_HAL, AMBER_COG),
)


class TrainingRefused(Exception):
    """train_round cannot start or resume as asked; the message says why."""


class StepFailed(Exception):
    """A step failed; the run is left resumable."""


@dataclass
class Options:
    method: str = "ddpo"
    config: str | None = None  # a YAML file for the trainer (rlhf/config.py)
    overrides: list[str] = field(default_factory=list)  # KEY=VALUE for the trainer
    reward_config: str | None = None  # a YAML file for the reward model (PPO/GRPO/RLOO)
    force: bool = False
    # "metric[:margin],..." (FACTLOOP_GATE_METRICS); a metric without a margin gets gate_margin
    gate_metric: str = ""
    gate_margin: float | None = None  # how much worse the new policy may be (FACTLOOP_GATE_MARGIN)
    gate_protocol: str = ""  # what both evaluations ask (contract/protocols.py; FACTLOOP_GATE_PROTOCOL)
    eval_items: int = 0
    dataset: str = ""  # the held-out dataset evaluated on (default: the round's; recorded when the run begins)
    next_prompts: int | None = None  # prompts of the next round (default: as many as this one)
    # How the trainers run (contract/launch.py): one process, or accelerate launch with
    # num_processes processes and an accelerate config (a file, or ddp/fsdp2/zero2/zero3).
    # Unset (empty, None, 0): FACTLOOP_TRAIN_LAUNCHER, FACTLOOP_ACCELERATE_CONFIG, FACTLOOP_TRAIN_PROCESSES.
    launcher: str = ""
    accelerate_config: str | None = None
    num_processes: int = 0

    def __post_init__(self) -> None:
        self.launcher = self.launcher or settings.FACTLOOP_TRAIN_LAUNCHER
        if self.accelerate_config is None and self.launcher == "accelerate":
            self.accelerate_config = settings.FACTLOOP_ACCELERATE_CONFIG or None
        self.num_processes = self.num_processes or (
            settings.FACTLOOP_TRAIN_PROCESSES if self.launcher == "accelerate" else 1
        )
        try:
            self.launch()
        except LaunchError as error:
            raise TrainingRefused(str(error)) from None
        if self.method not in METHODS:
            raise TrainingRefused(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        self.gate_metric = self.gate_metric or settings.FACTLOOP_GATE_METRICS
        if self.gate_margin is None:
            self.gate_margin = settings.FACTLOOP_GATE_MARGIN
        self.gate_protocol = self.gate_protocol or settings.FACTLOOP_GATE_PROTOCOL
        try:
            check_gate(self.gate_protocol, [metric for metric, _ in self.gate_criteria()])
        except ValueError as error:
            raise TrainingRefused(str(error)) from None
        self.eval_items = self.eval_items or settings.FACTLOOP_EVAL_ITEMS
        for path in (self.config, self.reward_config):
            try:
                found = path is None or Path(path).is_file()
            except OSError as error:  # a name too long for the file system, say
                raise TrainingRefused(f"no config file {str(path)[:200]}: {error.strerror}") from None
            if not found:
                raise TrainingRefused(f"no config file {path}")
        if any("=" not in item for item in self.overrides):
            raise TrainingRefused("overrides are KEY=VALUE")

    def gate_criteria(self) -> list[tuple[str, float]]:
        return parse_gate(self.gate_metric, margin=float(self.gate_margin or 0.0))

    def launch(self) -> Launch:
        return Launch(self.launcher, self.accelerate_config, self.num_processes)


def _registry() -> Any:

    return Registry(settings.FACTLOOP_MODEL_DIR)


def target_round(number: int | None, *, resume: bool = False) -> Round:
    """The round to train: `number`; else, to resume, the round of the newest unfinished
    run; else the newest open round."""
    if number is not None:
        try:
            return Round.objects.get(number=number)
        except Round.DoesNotExist:
            raise TrainingRefused(f"no round {number}") from None
    if resume:
        unfinished = TrainingRun.objects.exclude(status=TrainingRun.Status.SUCCEEDED).order_by("-created_at").first()
        if unfinished is None:
            raise TrainingRefused("no unfinished training run to resume")
        return unfinished.round
    round_ = Round.objects.filter(status=Round.Status.OPEN).order_by("-number").first()
    if round_ is None:
        raise TrainingRefused("no open round to train; name one with --round")
    return round_


def label_counts(round_: Round) -> dict[str, int]:
    return {
        "judgements": Judgement.objects.filter(assignment__task__round=round_).count(),
        "corrections": Correction.objects.filter(assignment__task__round=round_).count(),
    }


def plan(round_: Round, options: Options) -> dict[str, Any]:
    """What a run would do (the dry run): nothing is written."""
    if not round_.policy_version:
        raise TrainingRefused(f"{round_} names no policy version to train from")

    try:
        current = _registry().get(round_.policy_version)
    except RegistryError as error:
        raise TrainingRefused(str(error)) from None
    # A documented gap of the base model's family refuses the method here, before a run is
    # written or queued (the admin's Train form and API, train_round), not in the worker.
    if reason := checkpoint_gap(current.base_model, options.method):
        raise TrainingRefused(f"{current.base_model}: {reason}")
    try:  # refused before any training when the evaluate step could not score it after
        heldout = scorable(choose_dataset(options.dataset, round_), options.eval_items, protocol=options.gate_protocol)
    except Refused as error:
        raise TrainingRefused(f"the held-out set: {error.message}") from None
    steps = [s for s in STEPS if s != "reward_model" or options.method in RL_METHODS]
    return {
        "round": round_.number,
        "round_status": round_.status,
        "method": options.method,
        "policy": current.name,
        "base_model": current.base_model,
        "labels": label_counts(round_),
        "steps": steps,
        "gate": {
            "metric": options.gate_metric,
            "margin": options.gate_margin,
            "protocol": options.gate_protocol,
            "force": options.force,
        },
        "launch": {
            "launcher": options.launcher,
            "accelerate_config": options.accelerate_config,
            "num_processes": options.num_processes,
        },
        "heldout": heldout,
        "work_dir": str(Path(settings.FACTLOOP_TRAIN_DIR) / f"round-{round_.number}-<run>"),
    }


def begin(round_: Round, options: Options, *, resume: bool) -> TrainingRun:
    """A new run for the round, or with `resume` its unfinished one (its options are kept)."""
    with transaction.atomic():
        Round.objects.select_for_update().get(pk=round_.pk)
        unfinished = round_.training_runs.exclude(status=TrainingRun.Status.SUCCEEDED).first()
        if resume:
            if unfinished is None:
                raise TrainingRefused(f"{round_} has no unfinished training run to resume")
            unfinished.status, unfinished.error, unfinished.finished_at = TrainingRun.Status.RUNNING, "", None
            unfinished.save(update_fields=["status", "error", "finished_at"])
            return unfinished
        if unfinished is not None:
            raise TrainingRefused(f"{round_} has an unfinished training run (#{unfinished.pk}); use --resume")
        done = round_.training_runs.filter(status=TrainingRun.Status.SUCCEEDED).first()
        if done is not None:
            raise TrainingRefused(f"{round_} was trained already (run #{done.pk}, version {done.version or 'none'})")
        options.dataset = plan(round_, options)["heldout"]["dataset"]
        run = TrainingRun.objects.create(round=round_, method=options.method, config=asdict(options), work_dir="")
        run.work_dir = str(Path(settings.FACTLOOP_TRAIN_DIR) / f"round-{round_.number}-run-{run.pk}")
        run.save(update_fields=["work_dir"])
    return run


def queue_run(round_: Round, options: Options, *, resume: bool = False, created_by: Any = None) -> TrainingRun:
    """`begin`, then the run as a job on the `train` queue (the admin's Train page and the
    admin API); TrainingRefused with the reason, and nothing written, when it cannot start."""
    with transaction.atomic():
        run = begin(round_, options, resume=resume)
        run.job = enqueue_job(Job.Kind.TRAIN, queue="train", params={"run_id": run.pk}, created_by=created_by)
        run.save(update_fields=["job"])
    return run


# ---------------------------------------------------------------------------------------
# Running the steps


Progress = Callable[[str, int, int], None]


def run_steps(run: TrainingRun, *, progress: Progress | None = None) -> TrainingRun:
    """Run the run's unfinished steps in order; raises StepFailed (the run marked failed)."""
    options = Options(**run.config)
    work = RunFolder(Path(run.work_dir))
    work.root.mkdir(parents=True, exist_ok=True)
    steps = [s for s in STEPS if s != "reward_model" or run.method in RL_METHODS]
    for index, name in enumerate(steps):
        if run.steps.get(name, {}).get("status") == "done":
            continue
        if progress:
            progress(name, index, len(steps))
        _record(run, name, status="running", started_at=timezone.now().isoformat())
        began = time.perf_counter()
        try:
            detail = STEP_FUNCTIONS[name](run, options, work)
        except Exception as error:
            cause = f" ({type(error.__cause__).__name__}: {error.__cause__})" if error.__cause__ else ""
            message = f"{name}: {error}{cause}"
            _record(run, name, status="failed", error=message[-4000:], seconds=time.perf_counter() - began)
            TrainingRun.objects.filter(pk=run.pk).update(
                status=TrainingRun.Status.FAILED, error=message[-10_000:], finished_at=timezone.now()
            )
            run.refresh_from_db()
            raise StepFailed(message) from error
        _record(run, name, status="done", seconds=round(time.perf_counter() - began, 2), detail=detail or {})
    TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.SUCCEEDED, finished_at=timezone.now())
    run.refresh_from_db()
    if progress:
        progress("done", len(steps), len(steps))
    return run


def _record(run: TrainingRun, name: str, **fields: Any) -> None:
    entry = dict(run.steps.get(name, {}))
    if fields.get("status") == "running":
        entry = {}
    entry.update({k: (round(v, 2) if isinstance(v, float) else v) for k, v in fields.items()})
    run.steps = {**run.steps, name: entry}
    TrainingRun.objects.filter(pk=run.pk).update(steps=run.steps)


def _rlhf(args: list[str], log: Path, launch: Launch = ONE_PROCESS) -> None:
    """`python -m rlhf.cli ARGS` in a child process (or a launcher's processes) that dies
    with this one."""
    try:
        run_rlhf(args, log, parent_pid=os.getpid(), launch=launch)
    except RlhfFailed as error:
        raise StepFailed(str(error)) from None


def _current(run: TrainingRun) -> Any:
    return _registry().get(run.round.policy_version)


def _step_freeze(run: TrainingRun, options: Options, work: RunFolder) -> dict[str, Any]:

    round_ = run.round
    round_.refresh_from_db()
    if round_.status != Round.Status.FROZEN:
        freeze_round(round_)
    return label_counts(round_)


def _step_export(run: TrainingRun, options: Options, work: RunFolder) -> dict[str, Any]:

    out = work.export
    if not (out / EXPORT_MANIFEST).is_file():
        # A round with an AI labeller trains on its pairs too (source "ai"), at the config's
        # ai_weight (1 unless set; 0 leaves them out).
        export("trl", Selection((run.round.number,), ai_pairs=bool(run.round.ai_labeller)), out)
    counts = json.loads((out / EXPORT_MANIFEST).read_text()).get("counts", {})
    if not counts.get("pairs"):
        raise StepFailed(f"{run.round} has no preference pairs to train on (labels: {label_counts(run.round)})")
    return dict(counts)


def _model_settings(run: TrainingRun) -> list[str]:
    current = _current(run)
    adapter = _registry().adapter_path(current.name)
    settings_ = ["--set", f"model={current.base_model}"]
    if adapter is not None:
        settings_ += ["--set", f"init_adapter={adapter}"]
    return settings_


def _config_args(path: str | None, overrides: list[str]) -> list[str]:
    args = ["--config", path] if path else []
    for item in overrides:
        args += ["--set", item]
    return args


def _rollout_settings(options: Options) -> list[str]:
    """PPO, GRPO and RLOO sample their rollouts on the vLLM server(s) FactLoop talks to
    (rlhf/rollouts.py), unless the run's config file or overrides name `rollout_server`
    themselves (null: transformers' generate in the trainer)."""
    if any(item.partition("=")[0].strip() == "rollout_server" for item in options.overrides):
        return []
    if options.config:
        try:
            named = yaml.safe_load(Path(options.config).read_text()) or {}
        except (OSError, yaml.YAMLError):
            named = {}  # the trainer reports an unreadable config
        if isinstance(named, dict) and "rollout_server" in named:
            return []
    return [f"rollout_server={','.join(vllm_urls())}"]


def _trainer_settings(run: TrainingRun, options: Options) -> list[str]:
    """The policy trainer's config file and overrides, as the train step and the preflight
    both pass them: the method, for PPO/GRPO/RLOO the rollout server, then the run's own."""
    rollouts = _rollout_settings(options) if run.method in RL_METHODS else []
    return _config_args(options.config, [f"method={run.method}", *rollouts, *options.overrides])


def _step_preflight(run: TrainingRun, options: Options, work: RunFolder) -> dict[str, Any]:
    """What the trainer steps will do, once on one batch of the export, with the run's own
    settings: refused in seconds, naming the step, the library and the cause, before the
    reward model and the policy train for hours (rlhf/preflight.py)."""
    current = _current(run)
    args = ["preflight", "--model", current.base_model, "--method", run.method, "--data", str(work.export)]
    if (adapter := _registry().adapter_path(current.name)) is not None:
        args += ["--adapter", str(adapter)]
    args += _trainer_settings(run, options)
    if run.method in RL_METHODS and options.reward_config:
        args += ["--reward-config", options.reward_config]
    args += ["--serving-python", str(settings.FACTLOOP_SERVING_PYTHON), "--out", str(work.preflight)]
    args += ["--server", vllm_urls()[0]]  # one request there with the current adapter, when it answers
    try:
        run_rlhf(args, work.train_log, parent_pid=os.getpid())
    except RlhfFailed as error:
        if not work.preflight.is_file():
            raise StepFailed(str(error)) from None
        report = json.loads(work.preflight.read_text())
        failed = next(s for s in report["steps"] if s["status"] in ("refused", "failed"))
        where = f" in {failed['library']}" if failed["library"] else ""
        message = f"the preflight's {failed['name']} step {failed['status']}{where}: {failed['detail']}"
        raise StepFailed(f"{message} (input: {failed['input']})") from None
    report = json.loads(work.preflight.read_text())
    return {"seconds": report["seconds"], "steps": {s["name"]: s["status"] for s in report["steps"]}}


def _step_reward_model(run: TrainingRun, options: Options, work: RunFolder) -> dict[str, Any]:
    out = work.reward
    if not RewardResult.exists(out):
        args = ["reward", *_config_args(options.reward_config, [])]
        args += ["--set", f"model={_current(run).base_model}", "--set", f"data={work.export}"]
        if any(out.glob("checkpoint-*")):  # a run killed mid-way continues from its checkpoint
            args.append("--resume")
        _rlhf([*args, "--set", f"output_dir={out}"], work.train_log, options.launch())
    result = RewardResult.read(out)
    return {"heldout_accuracy": result.heldout_accuracy, "train_pairs": result.train_pairs}


def _step_train(run: TrainingRun, options: Options, work: RunFolder) -> dict[str, Any]:
    out = work.train
    if not RunResult.exists(out):
        if run.method in DPO_METHODS:
            args = ["dpo", *_trainer_settings(run, options)]
            if any(out.glob("checkpoint-*")):
                args.append("--resume")
        else:
            args = ["rl", *_trainer_settings(run, options), "--set", f"reward_model={work.reward}"]
        args += [*_model_settings(run), "--set", f"data={work.export}", "--set", f"output_dir={out}"]
        _rlhf(args, work.train_log, options.launch())
    result = RunResult.read(out)
    keep = (
        "pairs",
        "synthetic_pairs",
        "prompts",
        "steps",
        "first_loss",
        "last_loss",
        "first_reward",
        "last_reward",
        "last_kl",
        "seconds",
    )
    return {k: getattr(result, k) for k in keep if getattr(result, k) is not None}


def _step_evaluate(run: TrainingRun, options: Options, work: RunFolder) -> dict[str, Any]:
    heldout = work.heldout
    if not (heldout / HELDOUT_MANIFEST).is_file():
        try:
            export_heldout(
                heldout,
                choose_dataset(options.dataset, run.round),
                limit=options.eval_items,
                protocol=options.gate_protocol,
            )
        except Refused as error:
            raise StepFailed(error.message) from None
    log, current = work.evaluate_log, _current(run)
    # The new adapter is evaluated on the served base, and the current policy's evaluation
    # may be a recorded one: the server must serve the base the round trains on, asked
    # here whether or not anything else asks it.
    try:
        with serving_client(timeout=30.0) as client:
            check_served_base(client, _registry(), current.name)
    except (RegistryError, ServingError) as error:
        raise StepFailed(str(error)) from None
    measured: dict[str, Any] = {}
    policies: tuple[tuple[Policy, str, Path | None], ...] = (
        ("new", _version_name(run), work.adapter),
        ("current", current.name, None),
    )
    for key, name, adapter in policies:
        try:  # the current policy's evaluation on this set, recorded already, is reused
            result = evaluate_version(
                name,
                heldout,
                work.evaluation(key),
                log=log,
                adapter=adapter,
                parent_pid=os.getpid(),
                reuse=key == "current",
                protocol=options.gate_protocol,
            )
        except RlhfFailed as error:
            raise StepFailed(str(error)) from None
        measured[key] = {k: result["metrics"][k] for k in KEPT_METRICS if k in result["metrics"]}
    measured["current_reused"] = bool(result.get("reused"))
    manifest = json.loads((heldout / HELDOUT_MANIFEST).read_text())
    keep = ("dataset", "items", "digest", "vocabulary")
    return {**measured, "heldout": {key: manifest.get(key, "") for key in keep}}


def _step_gate(run: TrainingRun, options: Options, work: RunFolder) -> dict[str, Any]:
    """The paired comparison of the two evaluations (contract.comparison.compare), here in
    the worker: it is pure Python over their per-item records."""
    out = work.gate
    if not out.is_file():
        try:
            new, current = (Evaluation.read(work.evaluation(key)) for key in POLICIES)
            decision = gate_decision(new, current, options.gate_criteria())
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise StepFailed(f"the gate cannot compare the evaluations: {error}") from None
        partial = out.with_suffix(".partial")
        partial.write_text(json.dumps(decision) + "\n")
        partial.replace(out)
    decision = json.loads(out.read_text())
    return {
        **decision,
        "passed": bool(decision["passed"] or options.force),
        "forced": bool(options.force and not decision["passed"]),
    }


def _version_name(run: TrainingRun) -> str:
    return f"round-{run.round.number}-{run.method}-run-{run.pk}"


def _step_register(run: TrainingRun, options: Options, work: RunFolder) -> dict[str, Any]:

    registry = _registry()
    name = _version_name(run)
    gate = run.steps["gate"]["detail"]
    evaluations = {key: json.loads(work.evaluation(key).read_text()) for key in POLICIES}
    try:
        registry.get(name)  # registered before a crash: the name is this run's alone
    except UnknownVersion:
        current = _current(run)
        metrics: dict[str, Any] = dict(evaluations["new"]["metrics"])
        metrics.update(RunResult.read(work.train).registry_metrics())
        if "reward_model" in run.steps:
            metrics[REWARD_MODEL_ACCURACY] = RewardResult.read(work.reward).heldout_accuracy
        metrics["method"] = run.method
        registry.register(
            name,
            base_model=current.base_model,
            adapter_dir=work.adapter,
            parent=current.name,
            round=run.round.number,
            metrics=metrics,
            status="ready" if gate["passed"] else "rejected",
        )
    registry.record_evaluation(name, evaluations["new"])
    registry.record_evaluation(run.round.policy_version, evaluations["current"])
    TrainingRun.objects.filter(pk=run.pk).update(version=name)
    run.version = name
    return {"version": name, "status": registry.status(name)}


def _step_deploy(run: TrainingRun, options: Options, work: RunFolder) -> dict[str, Any]:

    if not run.steps["gate"]["detail"]["passed"]:
        return {"deployed": False, "why": "the gate kept the current policy"}
    deployment = deploy_version(run.version, registry=_registry(), reason=f"train_round run {run.pk}")
    TrainingRun.objects.filter(pk=run.pk).update(deployed=True)
    run.deployed = True
    return {"deployed": True, "server": ",".join(vllm_urls()), "previous": deployment.previous}


def next_prompts(round_: Round, limit: int | None) -> list[Prompt]:
    """Training prompts no round has used yet (oldest first); if none are left, the round's own."""
    used = RoundPrompt.objects.values_list("prompt_id", flat=True)
    count = limit or RoundPrompt.objects.filter(round=round_).count() or None
    fresh = list(Prompt.objects.filter(split=Prompt.Split.TRAIN).exclude(pk__in=used).order_by("pk")[:count])
    if fresh:
        return fresh
    return list(Prompt.objects.filter(pk__in=RoundPrompt.objects.filter(round=round_).values("prompt_id")))


def _step_open_next(run: TrainingRun, options: Options, work: RunFolder) -> dict[str, Any]:

    with transaction.atomic():
        locked = TrainingRun.objects.select_for_update().get(pk=run.pk)
        if locked.next_round_id is None:
            round_ = run.round
            policy = run.version if locked.deployed else round_.policy_version
            prompts = next_prompts(round_, options.next_prompts)
            kinds = round_.task_kinds or [Task.Kind.RANK, Task.Kind.CORRECT]
            new_round, job = start_round(
                policy_version=policy,
                prompts=prompts,
                task_kinds=kinds,
                candidates_per_prompt=max(round_.candidates_per_prompt, 2 if Task.Kind.RANK in kinds else 1),
                overlap=round_.overlap,
                gold_rate=round_.gold_rate,
                sampling=round_.sampling,
                # The next round keeps its AI labeller ("policy" is then the new policy)
                # and its human budget.
                ai_labeller=round_.ai_labeller,
                selection=round_.selection,
                human_prompts=round_.human_prompts,
                identical_rankings=round_.identical_rankings,
            )
            locked.next_round = new_round
            locked.save(update_fields=["next_round"])
            run.next_round = new_round
            return {"round": new_round.number, "policy": policy, "prompts": len(prompts), "generation_job": job.pk}
    next_round = locked.next_round
    assert next_round is not None
    return {"round": next_round.number, "policy": next_round.policy_version}


STEP_FUNCTIONS: dict[str, Callable[[TrainingRun, Options, RunFolder], dict[str, Any]]] = {
    "freeze": _step_freeze,
    "export": _step_export,
    "preflight": _step_preflight,
    "reward_model": _step_reward_model,
    "train": _step_train,
    "evaluate": _step_evaluate,
    "gate": _step_gate,
    "register": _step_register,
    "deploy": _step_deploy,
    "open_next": _step_open_next,
}
