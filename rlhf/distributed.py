"""Training on several processes: every trainer runs under `accelerate launch`.

accelerate (https://huggingface.co/docs/accelerate, "Launching your distributed code")
starts N copies of `python -m rlhf.cli ...` through torchrun and gives each its RANK,
LOCAL_RANK and WORLD_SIZE. The trainers built on transformers' Trainer (DDPO, DPO, the
reward model, trl's GRPO and RLOO) then run data-parallel, or sharded with FSDP2 or
DeepSpeed ZeRO, as the launch's config says (deploy/accelerate/); FactLoop's PPO prepares
its policy, critic and optimisers through an `Accelerator` (rlhf/train_rl.py).

What FactLoop adds on top:
- `is_main()`: only rank 0 writes a run's files (config, adapter, log, result) and prints
  its result line, once. If rank 0 fails, the launcher (torch elastic) stops the others and
  exits non-zero; nothing marks the run finished, so it can be resumed.
- The command line a training job runs is built in contract/launch.py (annotation's
  `train_round --launcher accelerate --accelerate-config FILE --num-processes N`).
- Without a GPU, torchrun's processes talk over gloo: `accelerate launch --multi_gpu
  --num_processes 2` on this CPU machine runs the same DistributedDataParallel code path a
  GPU cluster runs (accelerate picks gloo when CUDA is absent). `--cpu` would not: with
  `--cpu` accelerate's simple launcher starts a single process.

Nothing here imports torch.
"""

from __future__ import annotations

import os
import sys


def rank() -> int:
    """This process's global rank under a launcher (0 when run alone)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """True when a launcher (torchrun, accelerate launch) started this process."""
    return "LOCAL_RANK" in os.environ


def finish() -> None:
    """Leave the process group once this rank's work is done, after every rank got there.

    Without it each rank's interpreter exits with gloo's threads still running, and a rank
    that exits while another still writes can die in C++ ("terminate called without an
    active exception", SIGABRT), which the launcher reports as a failed run although the
    training finished. PyTorch asks for an explicit `destroy_process_group()` before exit
    (https://pytorch.org/docs/stable/distributed.html, "Shutdown"). A no-op when this
    process never joined a group (one process, or a command that trains nothing)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    dist.barrier()
    dist.destroy_process_group()
