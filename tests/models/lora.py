"""LoRA adapters for tests: random, so that they visibly change the tiny model's answers
(rlhf.serving_check.random_adapter: the language model's q and v projections)."""

from __future__ import annotations

from rlhf.serving_check import random_adapter

__all__ = ["random_adapter"]
