"""The demo and the simulation, apart from the production app: the synthetic world's rounds
(`synthetic`), oracle annotators (`simulation`), the whole loop that `make demo` runs
(`loop`), and the test bed's training settings (`configs/`: DDPO/DPO and PPO/GRPO/RLOO on
the tiny model; the benches read them too)."""

from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "configs"
TOY_DDPO = CONFIGS / "toy-ddpo.yaml"
TOY_PPO = CONFIGS / "toy-ppo.yaml"
