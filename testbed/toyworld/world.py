"""The synthetic world: scenes of known objects, their facts, prompts and true answers.

A scene holds 1 to 5 objects on a 3x3 grid, one per cell. Each object has a class (8, each
drawn as its own shape), a colour (6) and a size (2). Classes come in themes (toys, night
camp, jewellery...) so that some objects usually appear together: a model trained on the
world learns that bias and hallucinates along it, as real VLMs hallucinate "fork" next to
"plate", and POPE's adversarial split (absent objects that co-occur with present ones) is
harder than its random split.

Everything is plain Python and deterministic for a seed: `random.Random(seed)` only.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

CLASSES: tuple[str, ...] = ("ball", "box", "kite", "tent", "star", "moon", "ring", "cross")
PLURALS: dict[str, str] = {name: ("boxes" if name == "box" else f"{name}s") for name in CLASSES}
# Other words a response may use for a class: CHAIR maps them to the class (metrics.SynonymTable).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "ball": ("sphere", "orb"),
    "box": ("cube", "crate"),
    "kite": ("diamond",),
    "tent": ("triangle", "pyramid"),
    "star": (),
    "moon": ("crescent", "crescent moon"),
    "ring": ("hoop", "donut"),
    "cross": ("plus sign",),
}
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES: tuple[str, ...] = ("small", "large")
GRID = 3
POSITIONS: tuple[tuple[str, ...], ...] = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five")

# Themes: a scene picks one; its classes are drawn with the theme's weights. Pairs within a
# theme co-occur far more often than pairs across themes.
THEMES: dict[str, dict[str, float]] = {
    "toys": {"ball": 6, "box": 5, "kite": 4},
    "camp": {"tent": 6, "moon": 5, "star": 5},
    "jewels": {"ring": 6, "star": 3, "cross": 4},
}
OFF_THEME_WEIGHT = 0.6

PromptKind = Literal["describe", "count", "exist", "color", "spatial"]
PROMPT_KINDS: tuple[PromptKind, ...] = ("describe", "count", "exist", "color", "spatial")
DESCRIBE_PROMPTS = ("Describe the image.", "What do you see in this picture?", "Describe the scene in detail.")


@dataclass(frozen=True)
class SceneObject:
    cls: str
    colour: str
    size: str
    row: int
    col: int

    @property
    def position(self) -> str:
        return POSITIONS[self.row][self.col]

    def phrase(self) -> str:
        return f"{self.size} {self.colour} {self.cls}"


@dataclass(frozen=True)
class Scene:
    scene_id: str
    theme: str
    objects: tuple[SceneObject, ...]

    @property
    def classes(self) -> set[str]:
        return {obj.cls for obj in self.objects}

    def count(self, cls: str) -> int:
        return sum(obj.cls == cls for obj in self.objects)

    def of_class(self, cls: str) -> list[SceneObject]:
        return [obj for obj in self.objects if obj.cls == cls]

    def at(self, row: int, col: int) -> SceneObject | None:
        return next((obj for obj in self.objects if (obj.row, obj.col) == (row, col)), None)

    def facts(self) -> dict[str, Any]:
        """The ground truth kept on the Image row: objects with attributes, counts, captions."""
        counts: dict[str, int] = {}
        for obj in self.objects:
            counts[obj.cls] = counts.get(obj.cls, 0) + 1
        return {
            "scene_id": self.scene_id,
            "theme": self.theme,
            "objects": [asdict(obj) | {"position": obj.position} for obj in self.objects],
            "counts": counts,
            "classes": sorted(counts),
            "captions": [describe(self)],
        }

    @classmethod
    def from_facts(cls, facts: dict[str, Any]) -> Scene:
        objects = tuple(
            SceneObject(cls=o["cls"], colour=o["colour"], size=o["size"], row=o["row"], col=o["col"])
            for o in facts["objects"]
        )
        return cls(scene_id=facts["scene_id"], theme=facts.get("theme", ""), objects=objects)


def reading_order(objects: Sequence[SceneObject]) -> list[SceneObject]:
    return sorted(objects, key=lambda obj: (obj.row, obj.col))


def _location(obj: SceneObject) -> str:
    return f"in the {obj.position}" if obj.position == "center" else f"at the {obj.position}"


def object_sentence(obj: SceneObject) -> str:
    article = "An" if obj.size[0] in "aeiou" else "A"
    return f"{article} {obj.phrase()} is {_location(obj)}."


def describe(scene: Scene) -> str:
    """The reference description: one sentence per object, in reading order."""
    return " ".join(object_sentence(obj) for obj in reading_order(scene.objects))


def sample_scene(rng: random.Random, scene_id: str, *, min_objects: int = 1, max_objects: int = 5) -> Scene:
    theme = rng.choice(sorted(THEMES))
    weights = [THEMES[theme].get(name, OFF_THEME_WEIGHT) for name in CLASSES]
    n = rng.randint(min_objects, max_objects)
    cells = rng.sample([(r, c) for r in range(GRID) for c in range(GRID)], n)
    objects = tuple(
        SceneObject(
            cls=rng.choices(CLASSES, weights=weights)[0],
            colour=rng.choice(COLOURS),
            size=rng.choice(SIZES),
            row=row,
            col=col,
        )
        for row, col in cells
    )
    return Scene(scene_id=scene_id, theme=theme, objects=tuple(reading_order(objects)))


def sample_scenes(seed: int, n: int, *, prefix: str = "scene") -> list[Scene]:
    rng = random.Random(seed)
    return [sample_scene(rng, f"{prefix}-{seed}-{index:05d}") for index in range(n)]


HELDOUT_SEED = 10_007


def heldout_scenes(n: int = 200, seed: int = HELDOUT_SEED) -> list[Scene]:
    """Scenes never used for training (their own seed and id prefix)."""
    return sample_scenes(seed, n, prefix="heldout")


def cooccurrence(scenes: Sequence[Scene]) -> dict[str, dict[str, int]]:
    """How often each pair of classes appears in the same scene (for POPE's adversarial split)."""
    table = {a: dict.fromkeys(CLASSES, 0) for a in CLASSES}
    for scene in scenes:
        present = scene.classes
        for a in present:
            for b in present:
                if a != b:
                    table[a][b] += 1
    return table


# ---------------------------------------------------------------------------------------
# Prompts and true answers


@dataclass(frozen=True)
class Question:
    kind: PromptKind
    text: str
    # The class the question is about (count, exist, color, spatial); "" for describe.
    target: str = ""
    relation: str = ""  # "left of" or "above" for spatial questions


def count_answer(cls: str, n: int) -> str:
    if n == 0:
        return f"There are no {PLURALS[cls]}."
    if n == 1:
        return f"There is one {cls}."
    return f"There are {NUMBER_WORDS[n]} {PLURALS[cls]}."


def exist_answer(cls: str, present: bool) -> str:
    return f"Yes, there is a {cls}." if present else f"No, there is no {cls}."


def neighbour(scene: Scene, obj: SceneObject, relation: str) -> SceneObject | None:
    """The nearest object left of `obj` in its row, or above it in its column."""
    if relation == "left of":
        cells = [(obj.row, col) for col in range(obj.col - 1, -1, -1)]
    else:
        cells = [(row, obj.col) for row in range(obj.row - 1, -1, -1)]
    for row, col in cells:
        found = scene.at(row, col)
        if found is not None:
            return found
    return None


def spatial_answer(scene: Scene, cls: str, relation: str) -> str:
    [obj] = scene.of_class(cls)
    other = neighbour(scene, obj, relation)
    if other is None:
        return f"Nothing is {relation} the {cls}."
    article = "An" if other.colour[0] in "aeiou" else "A"
    return f"{article} {other.colour} {other.cls} is {relation} the {cls}."


def true_answer(scene: Scene, question: Question) -> str:
    if question.kind == "describe":
        return describe(scene)
    if question.kind == "count":
        return count_answer(question.target, scene.count(question.target))
    if question.kind == "exist":
        return exist_answer(question.target, question.target in scene.classes)
    if question.kind == "color":
        [obj] = scene.of_class(question.target)
        return f"The {question.target} is {obj.colour}."
    return spatial_answer(scene, question.target, question.relation)


def make_question(rng: random.Random, scene: Scene, kind: PromptKind) -> Question | None:
    """A question of `kind` about `scene`, or None where the scene cannot support it."""
    singles = [cls for cls in sorted(scene.classes) if scene.count(cls) == 1]
    if kind == "describe":
        return Question("describe", rng.choice(DESCRIBE_PROMPTS))
    if kind == "count":
        cls = rng.choice(sorted(scene.classes) if rng.random() < 0.7 else CLASSES)
        return Question("count", f"How many {PLURALS[cls]} are there?", cls)
    if kind == "exist":
        absent = [cls for cls in CLASSES if cls not in scene.classes]
        pool = sorted(scene.classes) if (rng.random() < 0.5 or not absent) else absent
        cls = rng.choice(pool)
        return Question("exist", f"Is there a {cls} in the image?", cls)
    if not singles:
        return None
    cls = rng.choice(singles)
    if kind == "color":
        return Question("color", f"What color is the {cls}?", cls)
    relation = rng.choice(("left of", "above"))
    return Question("spatial", f"What is {relation} the {cls}?", cls, relation)


def questions_for(rng: random.Random, scene: Scene, kinds: Sequence[PromptKind] = PROMPT_KINDS) -> Iterator[Question]:
    for kind in kinds:
        question = make_question(rng, scene, kind)
        if question is not None:
            yield question


# ---------------------------------------------------------------------------------------
# Wrong answers with the world's bias (the tiny model's SFT mixes them in; synthetic
# candidates for annotation use them too)


def _theme_mates(scene: Scene) -> list[str]:
    """Absent classes that co-occur with the scene's (its theme first)."""
    absent = [cls for cls in CLASSES if cls not in scene.classes]
    theme = THEMES.get(scene.theme, {})
    return sorted(absent, key=lambda cls: -theme.get(cls, 0.0))


def wrong_answer(rng: random.Random, scene: Scene, question: Question, ghosts: int = 1) -> str | None:
    """A plausible hallucination for the question, or None if none fits.

    A description gets `ghosts` absent objects, mostly from the scene's theme, in free cells.
    """
    if question.kind == "describe":
        mates = _theme_mates(scene)
        free = [(r, c) for r in range(GRID) for c in range(GRID) if scene.at(r, c) is None]
        if not mates or not free:
            return None
        added = []
        for row, col in rng.sample(free, min(ghosts, len(free))):
            cls = mates[0] if rng.random() < 0.9 else rng.choice(mates)
            added.append(SceneObject(cls, rng.choice(COLOURS), rng.choice(SIZES), row, col))
        return " ".join(object_sentence(obj) for obj in reading_order([*scene.objects, *added]))
    if question.kind == "exist" and question.target not in scene.classes:
        return exist_answer(question.target, True)
    if question.kind == "count":
        n = scene.count(question.target)
        return count_answer(question.target, min(n + 1, len(NUMBER_WORDS) - 1))
    if question.kind == "color":
        [obj] = scene.of_class(question.target)
        return f"The {question.target} is {rng.choice([c for c in COLOURS if c != obj.colour])}."
    return None


def sampled_responses(rng: random.Random, scene: Scene, question: Question, n: int, error_rate: float) -> list[str]:
    """`n` responses a policy of the world might give: each is wrong (a biased hallucination,
    where one fits) with probability `error_rate`, else true. Stands in for a served model in
    the demo, the tests and the benchmarks of the annotation side."""
    out = []
    for _ in range(n):
        wrong = wrong_answer(rng, scene, question, ghosts=rng.choice((1, 1, 2))) if rng.random() < error_rate else None
        out.append(wrong if wrong is not None else true_answer(scene, question))
    return out
