"""`manage.py train_round` end to end on the tiny model: labels in the database become a
registered version served by a real vLLM server, and the next round opens on it; the gate
keeps a worse policy out; a run killed while training resumes without duplicating anything."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from annotation.data.benchmark_sets import import_toyworld
from annotation.data.images import add_prompt
from annotation.models import Candidate, Dataset, Image, Job, Prompt, Round, TrainingRun
from annotation.worker.tasks import generate_candidates
from models.registry import Registry
from models.serving import ServingClient
from testbed.demo import TOY_DDPO, TOY_PPO
from testbed.demo.simulation import label_round
from testbed.demo.toy_rounds import build_synthetic_round
from tests.conftest import PYTHON, REPO, clean_env, database_url
from tests.factories import make_image, make_round

pytestmark = [pytest.mark.slow, pytest.mark.serving]

TOY_CONFIG = str(TOY_DDPO)
RL_CONFIG = str(TOY_PPO)
TRAIN_ARGS = ["--method", "ddpo", "--config", TOY_CONFIG, "--set", "epochs=1", "--eval-items", "24"]


@pytest.fixture
def loop(settings: Any, tmp_path: Path, base_policy: Path) -> Registry:
    settings.FACTLOOP_MODEL_DIR = str(tmp_path / "models")
    settings.FACTLOOP_TRAIN_DIR = str(tmp_path / "training")
    settings.FACTLOOP_VLLM_URL = "http://127.0.0.1:9"  # tests that deploy name their server
    settings.FACTLOOP_EVAL_ITEMS = 24
    return Registry(settings.FACTLOOP_MODEL_DIR)


def labelled_round(annotator: Any, policy: str, *, scenes: int = 24) -> Round:
    """A labelled round on `policy`, and 24 held-out toy scenes to evaluate on."""
    import_toyworld(24)
    built = build_synthetic_round(scenes=scenes, kinds=("rank", "correct"), error_rate=0.7, seed=5)
    Round.objects.filter(pk=built.round.pk).update(policy_version=policy, task_kinds=["rank", "correct"])
    assert label_round(annotator) == built.tasks
    return Round.objects.get(pk=built.round.pk)


@pytest.mark.django_db
def test_a_round_trains_deploys_and_opens_the_next_on_the_new_policy(
    loop: Registry,
    base_policy: Path,
    annotator: Any,
    vllm_server: Any,
    settings: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings.FACTLOOP_VLLM_URL = vllm_server.url
    # The generation job below runs in this process: its heartbeat thread cannot see the
    # test's transaction, and on a loaded machine a beat would come before the job ends.
    settings.FACTLOOP_JOB_HEARTBEAT_SECONDS = 3600
    loop.register("tiny-base", base_model=str(base_policy))
    round_ = labelled_round(annotator, "tiny-base")

    call_command("train_round", "--dry-run", *TRAIN_ARGS)
    planned = json.loads(capsys.readouterr().out)
    assert planned["round"] == round_.number and planned["policy"] == "tiny-base"
    assert not TrainingRun.objects.exists() and Round.objects.get(pk=round_.pk).status == Round.Status.OPEN

    call_command("train_round", "--inline", "--force", *TRAIN_ARGS)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run = TrainingRun.objects.get()
    assert run.status == TrainingRun.Status.SUCCEEDED and summary["deployed"] is True
    assert all(run.steps[step]["status"] == "done" for step in run.steps) and "reward_model" not in run.steps
    assert all(isinstance(run.steps[step]["seconds"], float | int) for step in run.steps)
    assert Round.objects.get(pk=round_.pk).status == Round.Status.FROZEN
    version = loop.get(run.version)
    assert version.parent == "tiny-base" and version.round == round_.number and version.adapter == "adapter"
    assert loop.status(run.version) == "serving" and 0 <= version.metrics["chair_i"] <= 1
    with ServingClient(vllm_server.url) as client:
        assert run.version in client.models()  # hot-loaded

    next_round = Round.objects.get(number=round_.number + 1)
    assert run.next_round == next_round and next_round.policy_version == run.version
    job = Job.objects.get(kind=Job.Kind.GENERATE, params={"round_id": next_round.pk})
    generate_candidates.apply(args=(job.pk,))
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    models = {params["model"] for params in Candidate.objects.filter(round=next_round).values_list("params", flat=True)}
    assert models == {run.version}  # the next round's candidates come from the new policy

    with pytest.raises(CommandError, match="was trained already"):
        call_command("train_round", "--inline", "--round", str(round_.number), *TRAIN_ARGS)
    with pytest.raises(CommandError, match="no unfinished training run"):
        call_command("train_round", "--inline", "--resume", "--round", str(round_.number), *TRAIN_ARGS)


@pytest.mark.django_db
def test_a_run_that_cannot_train_stops_at_its_preflight_naming_the_library(
    loop: Registry, base_policy: Path, annotator: Any
) -> None:
    """LoRA on modules the model does not have (a new family's layers are named otherwise):
    the run stops at its preflight, one batch in, with the library and the cause; the
    trainer never starts and nothing is registered."""
    loop.register("tiny-base", base_model=str(base_policy))
    labelled_round(annotator, "tiny-base")
    bad = ["--set", "lora.target_modules=[no_such_proj]"]
    with pytest.raises(CommandError, match=r"the preflight's train step failed in peft: .*no_such_proj"):
        call_command("train_round", "--inline", *TRAIN_ARGS, *bad)
    run = TrainingRun.objects.get()
    assert run.status == TrainingRun.Status.FAILED and "not found in the base model" in run.error
    assert "(input: ddpo on one batch of " in run.error
    assert set(run.steps) == {"freeze", "export", "preflight"}
    assert run.steps["preflight"]["status"] == "failed" and not (Path(run.work_dir) / "train").exists()
    report = json.loads((Path(run.work_dir) / "preflight.json").read_text())
    assert [(s["name"], s["status"]) for s in report["steps"]][-1] == ("train", "failed")
    assert [v.name for v in loop] == ["tiny-base"]


@pytest.mark.django_db
def test_an_rl_round_registers_its_reward_and_kl_and_the_admin_plots_them(
    loop: Registry, base_policy: Path, annotator: Any, admin_user: Any, vllm_server: Any, settings: Any
) -> None:
    """Through real trainers (a reward model, then PPO): the reward and KL the trainer wrote
    in its result are what the registered version carries, under the keys the per-round
    plot reads, so the admin draws them (the plot was once always empty: the register step
    wrote `last_reward`/`last_kl` and the plot read `reward`/`kl`)."""
    from django.test import Client

    from contract.results import RunResult

    settings.FACTLOOP_VLLM_URL = vllm_server.url
    loop.register("tiny-base", base_model=str(base_policy))
    labelled_round(annotator, "tiny-base")
    small = ["steps=2", "rollout_batch_size=8", "minibatch_size=8", "num_generations=4", "max_new_tokens=16"]
    call_command(
        "train_round",
        "--inline",
        "--method",
        "ppo",
        "--config",
        RL_CONFIG,
        *[arg for item in small for arg in ("--set", item)],
        "--eval-items",
        "24",
        stdout=io.StringIO(),
    )
    run = TrainingRun.objects.get()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    trained = RunResult.read(Path(run.work_dir) / "train")
    assert trained.method == "ppo" and trained.last_reward is not None and trained.last_kl is not None
    # PPO sampled on the vLLM server FactLoop talks to (rlhf/rollouts.py), which matched it.
    assert trained.config["rollout_server"] == vllm_server.url
    log = [json.loads(line) for line in (Path(run.work_dir) / "train/log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(entry["rollout_logprob_gap"] < 0.05 for entry in log), log
    assert not (Path(run.work_dir) / "train/rollout-adapter").exists()
    version = loop.get(run.version)
    assert (version.metrics["reward"], version.metrics["kl"]) == (trained.last_reward, trained.last_kl)
    assert 0 <= version.metrics["reward_model_accuracy"] <= 1
    client = Client()
    client.force_login(admin_user)
    page = client.get("/admin/annotation/round/metrics/").content.decode()
    # Labels per round, hallucination, and reward/KL (not drawn when its series are empty,
    # as they were); one annotator per task gives no agreement to plot.
    assert page.count("data:image/svg+xml;base64,") == 3


@pytest.mark.django_db
def test_the_gate_keeps_a_worse_policy_out(
    loop: Registry,
    base_policy: Path,
    annotator: Any,
    admin_client: Any,
    capsys: pytest.CaptureFixture[str],
    vllm_server: Any,
    settings: Any,
) -> None:
    """Both policies measured on the same held-out prompts through vLLM; a margin of -0.5
    demands that the new policy cut CHAIR_i by half a point, which one epoch on 12 scenes
    cannot, so the gate refuses it on measured figures. Also the job path: without
    --inline the run is queued on the `train` queue."""
    from annotation.worker.tasks import train_round

    settings.FACTLOOP_VLLM_URL = vllm_server.url
    # The job runs here, in the test's transaction, which the heartbeat thread's own
    # connection cannot see: no beat during the run (a worker's job is tested elsewhere).
    settings.FACTLOOP_JOB_HEARTBEAT_SECONDS = 3600
    loop.register("tiny-base", base_model=str(base_policy))
    round_ = labelled_round(annotator, "tiny-base", scenes=12)
    # The current policy measured on the round's held-out set before: the run reuses it.
    before = io.StringIO()
    call_command("evaluate", version="tiny-base", stdout=before, stderr=io.StringIO())
    call_command("train_round", *TRAIN_ARGS, "--gate-margin", "-0.5")
    queued = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    job = Job.objects.get(pk=queued["job"])
    assert (job.kind, job.queue, job.status) == (Job.Kind.TRAIN, "train", Job.Status.QUEUED)
    train_round.apply(args=(job.pk,))
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    # Nine steps: every step but reward_model, which a DDPO run has not.
    assert (job.progress_done, job.progress_total) == (9, 9) and job.result["deployed"] is False
    run = TrainingRun.objects.get()
    assert run.job == job
    decision = run.steps["gate"]["detail"]
    # The default metrics, CHAIR_i and coverage, each asked for a gain of half a point.
    assert decision["passed"] is False and [c["metric"] for c in decision["criteria"]] == ["chair_i", "coverage"]
    gate = decision["criteria"][0]
    assert gate["passed"] is False and gate["margin"] == -0.5
    measured = run.steps["evaluate"]["detail"]
    assert (gate["new"], gate["current"]) == (measured["new"]["chair_i"], measured["current"]["chair_i"])
    assert decision["criteria"][1]["new"] == measured["new"]["coverage"]
    low, high = gate["worse_by_interval"]
    assert low <= gate["worse_by"] <= high and low > -0.5  # not half a point better, with 95% confidence
    assert decision["summary"].startswith("refused: not better on CHAIR_i by the required 0.500")
    manifest = json.loads((Path(run.work_dir) / "heldout" / "manifest.json").read_text())
    assert measured["heldout"] == {
        "dataset": "toyworld",
        "items": 24,
        "digest": manifest["digest"],
        "vocabulary": "toyworld",
    }
    assert [e["metrics"] for e in loop.evaluations("tiny-base")] == [
        json.loads((Path(run.work_dir) / "eval-current.json").read_text())["metrics"]
    ]
    assert measured["current_reused"] is True
    assert measured["current"]["chair_i"] == json.loads(before.getvalue())["metrics"]["chair_i"]
    assert not run.deployed and loop.status(run.version) == "rejected"
    assert run.steps["deploy"]["detail"]["deployed"] is False
    assert run.next_round is not None and run.next_round.policy_version == "tiny-base"
    assert round_.number + 1 == run.next_round.number
    page = admin_client.get(f"/admin/annotation/trainingrun/{run.pk}/change/").content.decode()
    assert "<td>gate</td><td>done</td>" in page and "&#x27;passed&#x27;: False" in page
    listing = admin_client.get("/admin/annotation/trainingrun/").content.decode()
    assert run.version in listing and "all done" in listing


@pytest.mark.django_db
def test_bad_requests_are_refused(loop: Registry, base_policy: Path) -> None:
    with pytest.raises(CommandError, match="no open round"):
        call_command("train_round", "--inline")
    with pytest.raises(CommandError, match="no round 9"):
        call_command("train_round", "--inline", "--round", "9")
    with pytest.raises(CommandError, match="no config file"):
        call_command("train_round", "--inline", "--config", "/nonexistent.yaml")
    with pytest.raises(CommandError, match="gate metric 'bleu'"):
        call_command("train_round", "--inline", "--gate-metric", "chair_i,bleu")
    with pytest.raises(CommandError, match="gate margin 'x' of coverage"):
        call_command("train_round", "--inline", "--gate-metric", "coverage:x")
    # A published protocol must measure the gate's metrics: POPE's measures POPE alone.
    with pytest.raises(CommandError, match="the pope protocol does not measure chair_i, coverage"):
        call_command("train_round", "--inline", "--gate-protocol", "pope")
    from annotation.loop.training import Options

    chosen = Options(gate_protocol="pope", gate_metric="pope_f1")
    assert chosen.gate_protocol == "pope" and chosen.gate_criteria() == [("pope_f1", 0.0)]
    assert Options().gate_protocol == "factloop"
    loop.register("test-policy", base_model=str(base_policy))
    round_ = make_round()
    with pytest.raises(CommandError, match="no held-out prompts to evaluate"):
        call_command("train_round", "--inline")
    # A held-out set it could not score is refused before training, naming the prompt.
    import_toyworld(3)
    unscorable = Prompt.objects.filter(dataset__name="toyworld").order_by("pk").last()
    assert unscorable is not None
    Image.objects.filter(pk=unscorable.image_id).update(facts={"classes": ["unicorn"]})
    with pytest.raises(
        CommandError, match=rf"prompt {unscorable.pk}: classes outside the toyworld vocabulary: 'unicorn'"
    ):
        call_command("train_round", "--inline")
    # Two datasets and none named: which one is asked for, with the choices.
    Image.objects.filter(pk=unscorable.image_id).update(facts={"classes": ["ball"]})
    other = Dataset.objects.create(name="toy-small", vocabulary="toyworld")
    for colour in ((1, 2, 3), (4, 5, 6)):
        add_prompt(make_image(colour), "Describe the image.", split="heldout", dataset=other)
    Round.objects.filter(pk=round_.pk).update(heldout=None)
    with pytest.raises(CommandError, match=r"name one \(datasets: toy-small \(2 prompts\), toyworld \(3 prompts\)\)"):
        call_command("train_round", "--inline")
    with pytest.raises(CommandError, match="no held-out dataset 'nope'"):
        call_command("train_round", "--inline", "--dataset", "nope")
    assert not TrainingRun.objects.exists() and Round.objects.get(pk=round_.pk).status == Round.Status.OPEN


@pytest.mark.django_db(transaction=True)
def test_a_run_killed_while_training_resumes_without_duplicates(
    loop: Registry, base_policy: Path, annotator: Any, settings: Any, tmp_path: Path, vllm_server: Any
) -> None:
    settings.FACTLOOP_VLLM_URL = vllm_server.url
    loop.register("tiny-base", base_model=str(base_policy))
    round_ = labelled_round(annotator, "tiny-base", scenes=12)
    from django.db import connection

    env = clean_env(
        DATABASE_URL=database_url(connection.settings_dict),
        SECRET_KEY=settings.SECRET_KEY,
        DEBUG="1",
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        MEDIA_ROOT=str(settings.MEDIA_ROOT),
        FACTLOOP_MODEL_DIR=settings.FACTLOOP_MODEL_DIR,
        FACTLOOP_TRAIN_DIR=settings.FACTLOOP_TRAIN_DIR,
        FACTLOOP_VLLM_URL=settings.FACTLOOP_VLLM_URL,
        OMP_NUM_THREADS="1",
    )
    output = open(tmp_path / "train_round.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [PYTHON, "manage.py", "train_round", "--inline", "--force", *TRAIN_ARGS, "--set", "epochs=3"],
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            run = TrainingRun.objects.filter(round=round_).first()
            if run and run.steps.get("train", {}).get("status") == "running" and Path(run.work_dir, "train").exists():
                break
            assert process.poll() is None, (tmp_path / "train_round.log").read_text()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("training never started")
        time.sleep(3)  # inside the trainer
        os.killpg(process.pid, signal.SIGKILL)  # the command and its trainer, as a killed worker
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        output.close()
    run = TrainingRun.objects.get(round=round_)
    assert run.status == TrainingRun.Status.RUNNING and not run.version and run.next_round is None
    assert not (Path(run.work_dir) / "train" / "result.json").exists()

    call_command("train_round", "--inline", "--resume")
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED and run.deployed
    assert [v.name for v in loop if v.round == round_.number] == [run.version]
    assert Round.objects.filter(number__gt=round_.number).count() == 1
    assert Job.objects.filter(kind=Job.Kind.GENERATE, params={"round_id": run.next_round_id}).count() == 1
    assert TrainingRun.objects.count() == 1


def test_the_launch_comes_from_the_run_or_the_settings_and_is_checked(settings: Any) -> None:
    """train_round's --launcher/--accelerate-config/--num-processes, else FACTLOOP_TRAIN_*;
    a launch that cannot work is refused before any run is made."""
    from annotation.loop.training import Options, TrainingRefused
    from contract.launch import Launch

    assert Options().launch() == Launch()  # the defaults: one process
    settings.FACTLOOP_TRAIN_LAUNCHER, settings.FACTLOOP_TRAIN_PROCESSES = "accelerate", 4
    settings.FACTLOOP_ACCELERATE_CONFIG = "fsdp2"
    assert Options().launch() == Launch("accelerate", "fsdp2", 4)
    assert Options(num_processes=2, accelerate_config="ddp").launch() == Launch("accelerate", "ddp", 2)
    command = Options().launch().command(["dpo"], parent_pid=7)
    assert command[command.index("--num_processes") + 1] == "4" and "deploy/accelerate/fsdp2.yaml" in " ".join(command)
    for bad in ({"accelerate_config": "nonesuch"}, {"launcher": "none", "num_processes": 2}, {"launcher": "mpi"}):
        with pytest.raises(TrainingRefused):
            Options(**bad)
