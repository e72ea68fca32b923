"""The synthetic world of rendered scenes whose objects are known (see world.py)."""

from testbed.toyworld.render import render
from testbed.toyworld.world import (
    CLASSES,
    COLOURS,
    PROMPT_KINDS,
    SIZES,
    SYNONYMS,
    Question,
    Scene,
    SceneObject,
    cooccurrence,
    describe,
    heldout_scenes,
    questions_for,
    sample_scenes,
    true_answer,
)

__all__ = [
    "CLASSES",
    "COLOURS",
    "PROMPT_KINDS",
    "SIZES",
    "SYNONYMS",
    "Question",
    "Scene",
    "SceneObject",
    "cooccurrence",
    "describe",
    "heldout_scenes",
    "questions_for",
    "render",
    "sample_scenes",
    "true_answer",
]
