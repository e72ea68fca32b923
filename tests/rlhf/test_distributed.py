"""Every trainer under `accelerate launch` with 2 processes over gloo (rlhf/distributed.py):
the same DistributedDataParallel code path a GPU cluster runs, on this CPU machine.

At the same global batch (1 process x 4 = 2 processes x 2), DDPO's and the reward model's
loss curves follow the 1-process curves step by step: data parallelism averages the
gradients of the two halves of each batch, which is the gradient of the whole batch. The
tolerance, 1e-4 on a loss near 0.7, allows for float32 sums in another order; a mismatch of
the data order, the batch or the gradient sync shows up far above it (an uneven last batch
alone moved the reward model's curve by 0.04 while writing this test)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from contract.launch import Launch, LaunchError
from contract.results import RewardResult, RunResult
from tests.conftest import REPO, clean_env

pytestmark = pytest.mark.slow

TOLERANCE = 1e-4
TWO = Launch("accelerate", "ddp", 2)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """38 oracle pairs of the synthetic world (corrections and rankings); no model needed."""
    from rlhf.family_matrix import write_pairs

    return write_pairs(tmp_path_factory.mktemp("distributed") / "pairs", scenes=24)


def _run(launch: Launch, args: list[str], timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        launch.command(args),
        cwd=REPO,
        env=clean_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _ok(finished: subprocess.CompletedProcess[str]) -> str:
    assert finished.returncode == 0, finished.stderr[-4000:]
    return finished.stdout


def _losses(out: Path) -> list[float]:
    entries = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [entry["loss"] for entry in entries if "loss" in entry]


def _settings(**values: Any) -> list[str]:
    args = []
    for key, value in values.items():
        args += ["--set", f"{key.replace('__', '.')}={value}"]
    return args


def _result_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith('{"')]


def _follows(one: list[float], two: list[float]) -> None:
    assert len(one) == len(two) >= 6
    assert max(abs(a - b) for a, b in zip(one, two, strict=True)) <= TOLERANCE, (one, two)
    assert max(one) - min(one) > 100 * TOLERANCE  # the curve moves: the comparison means something


def test_ddpo_on_two_processes_follows_one_process_and_rank_0_alone_writes(
    base_policy: Path, pairs: Path, tmp_path: Path
) -> None:
    common = _settings(
        model=base_policy, data=pairs, max_pairs=16, epochs=2, lora__r=8, lora__dropout=0, logging_steps=1
    )
    common += _settings(learning_rate=1e-3, threads=1)
    _ok(_run(Launch(), ["dpo", *common, *_settings(batch_size=4, output_dir=tmp_path / "one")]))
    stdout = _ok(_run(TWO, ["dpo", *common, *_settings(batch_size=2, output_dir=tmp_path / "two")]))

    _follows(_losses(tmp_path / "one"), _losses(tmp_path / "two"))
    (line,) = _result_lines(stdout)  # one result line: rank 0's
    one, two = RunResult.read(tmp_path / "one"), RunResult.read(tmp_path / "two")
    assert line["steps"] == two.steps == one.steps == 8  # 16 pairs, 4 a step, 2 epochs: both
    assert (tmp_path / "two" / "adapter" / "adapter_model.safetensors").is_file()


def test_the_reward_model_on_two_processes_follows_one_process(base_policy: Path, pairs: Path, tmp_path: Path) -> None:
    # 0.2 held out leaves 16 training pairs: whole batches of 4, as 4 or as 2 + 2.
    common = _settings(model=base_policy, data=pairs, heldout_share=0.2, epochs=2, lora__r=8, lora__alpha=16)
    common += _settings(lora__dropout=0, logging_steps=1, learning_rate=1e-3, threads=1)
    _ok(_run(Launch(), ["reward", *common, *_settings(batch_size=4, output_dir=tmp_path / "one")]))
    stdout = _ok(_run(TWO, ["reward", *common, *_settings(batch_size=2, output_dir=tmp_path / "two")]))

    _follows(_losses(tmp_path / "one"), _losses(tmp_path / "two"))
    assert len(_result_lines(stdout)) == 1
    one, two = RewardResult.read(tmp_path / "one"), RewardResult.read(tmp_path / "two")
    assert one.train_pairs == two.train_pairs == 16 and one.steps == two.steps == 8
    assert abs(one.last_loss - two.last_loss) <= TOLERANCE  # the result's figures are over both processes
    assert (tmp_path / "two" / "adapter" / "factloop_reward.json").is_file()


@pytest.mark.parametrize("method", ["ppo", "grpo", "rloo"])
def test_the_rl_trainers_run_on_two_processes(
    method: str, base_policy: Path, reward_model: Path, pairs: Path, tmp_path: Path
) -> None:
    out = tmp_path / method
    args = _settings(model=base_policy, data=pairs, reward_model=reward_model, method=method, steps=2)
    args += _settings(rollout_batch_size=4, minibatch_size=2, num_generations=2, max_new_tokens=8, lora__r=8)
    stdout = _ok(_run(TWO, ["rl", *args, *_settings(logging_steps=1, threads=1, output_dir=out)]))

    (line,) = _result_lines(stdout)
    assert line["steps"] == 2 and RunResult.read(out).prompts == line["prompts"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert len((out / "log.jsonl").read_text().splitlines()) >= 2


def test_an_uneven_share_of_the_rollouts_is_refused_before_anything_is_written(
    base_policy: Path, reward_model: Path, pairs: Path, tmp_path: Path
) -> None:
    args = _settings(model=base_policy, data=pairs, reward_model=reward_model, method="ppo", rollout_batch_size=3)
    finished = _run(TWO, ["rl", *args, *_settings(minibatch_size=2, output_dir=tmp_path / "out")])
    assert finished.returncode != 0
    assert "rollout_batch_size must be a multiple of the 2 processes" in finished.stderr
    assert not (tmp_path / "out").exists()


def _descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *_descendants(child)]
    return found


def _rank_of(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [entry.split(b"=", 1)[1] for entry in environ if entry.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else None


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_rank_0_killed_mid_run_stops_the_others_and_the_run_resumes(
    base_policy: Path, pairs: Path, tmp_path: Path
) -> None:
    """Rank 0 dies (SIGKILL, as the kernel's OOM killer does) after a checkpoint: the launcher
    stops rank 1 and fails, nothing marks the run finished, and `--resume` under the same
    launch continues from the checkpoint to the end of the schedule."""
    out = tmp_path / "run"
    args = ["dpo", *_settings(model=base_policy, data=pairs, max_pairs=16, epochs=10, batch_size=2, lora__r=8)]
    args += _settings(lora__dropout=0, save_steps=4, logging_steps=1, threads=1, output_dir=out)
    launcher = subprocess.Popen(
        TWO.command(args),
        cwd=REPO,
        env=clean_env(OMP_NUM_THREADS="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoint-4" / "trainer_state.json").is_file():
            assert launcher.poll() is None and time.monotonic() < deadline, "no checkpoint-4"
            time.sleep(0.05)
        ranks = {_rank_of(pid): pid for pid in _descendants(launcher.pid)}
        assert {0, 1} <= set(ranks)
        os.kill(ranks[0], signal.SIGKILL)
        returncode = launcher.wait(timeout=120)  # the launcher stops rank 1 and fails
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    stderr = launcher.stderr.read() if launcher.stderr else ""
    assert returncode != 0
    assert not _alive(ranks[1]), "rank 1 outlived the failed run"
    assert not RunResult.exists(out) and not (out / "adapter").exists(), stderr[-2000:]

    _ok(_run(TWO, [*args, "--resume"]))
    result = RunResult.read(out)
    assert result.resumed_at >= 4 and result.steps == 40  # 16 pairs, 4 a step (2 x 2), 10 epochs
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_a_launch_is_checked_before_anything_runs() -> None:
    command = TWO.command(["dpo", "--config", "x.yaml"], parent_pid=123)
    assert command[1:6] == ["-m", "contract.launch", "--parent-pid", "123", "--"]
    assert "accelerate.commands.launch" in command
    assert command[-5:] == ["--parent-pid", "123", "dpo", "--config", "x.yaml"]
    assert command[command.index("--config_file") + 1].endswith("deploy/accelerate/ddp.yaml")
    assert Launch().command(["dpo"])[1:] == ["-m", "rlhf.cli", "dpo"]
    for bad in (
        lambda: Launch("torchrun"),
        lambda: Launch("accelerate", "nonesuch", 2),
        lambda: Launch("none", None, 2),
        lambda: Launch("accelerate", None, 0),
    ):
        with pytest.raises(LaunchError):
            bad()
    for name in ("ddp", "fsdp2", "zero2", "zero3"):
        Launch("accelerate", name, 8)  # every shipped config is found by name


def test_the_shipped_accelerate_configs_parse_as_accelerate_reads_them() -> None:
    """accelerate's own loader reads each file (its fields and their values are checked
    there), with the distributed type each promises."""
    from accelerate.commands.config.config_args import load_config_from_file  # type: ignore[import-untyped]

    from contract.launch import CONFIGS_DIR

    expected = {"ddp": "MULTI_GPU", "fsdp2": "FSDP", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED"}
    for name, kind in expected.items():
        config = load_config_from_file(str(CONFIGS_DIR / f"{name}.yaml"))
        assert config.distributed_type.value == kind
    assert load_config_from_file(str(CONFIGS_DIR / "fsdp2.yaml")).fsdp_config["fsdp_version"] == 2
    assert load_config_from_file(str(CONFIGS_DIR / "zero3.yaml")).deepspeed_config["zero_stage"] == 3
