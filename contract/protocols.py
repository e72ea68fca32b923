"""Named evaluation protocols: which questions the evaluator asks of a held-out set and how
it reads the answers, so that a figure can sit beside a paper's (`manage.py evaluate
--protocol`, a round's gate via FACTLOOP_GATE_PROTOCOL, `rlhf.cli evaluate --protocol`).

- "factloop": FactLoop's own. Every item of the set: descriptions scored by CHAIR, Object
  HalBench's response rate and coverage, questions by accuracy, and POPE with 1 present and
  1 absent object per image and split. Cheap enough for every round; not a published protocol.
- "pope": POPE as Li et al. (2023, "Evaluating Object Hallucination in Large
  Vision-Language Models") built it (RUCAIBox/POPE, main.py and utils.py): 500 images with at
  least 3 annotated objects, drawn at random; per image and split (random, popular,
  adversarial) its first 3 objects asked as present and 3 absent ones, each absent one drawn
  for one present one by the split's rule from the objects of the 500 images: any at random;
  the most frequent first; the ones that co-occur most with that present object first.
  "Is there a/an {object} in the image?" Only POPE is asked.
- "object_halbench": Object HalBench as RLHF-V's evaluation code defines it (Yu et al., 2024,
  RLHF-V; its eval/eval_gpt_obj_halbench.py, rule-based, without the optional ChatGPT object
  extraction): 300 COCO val2014 images, each with one of the 8 description prompts of the
  paper's Table 6 (`import_coco --questions` or `--object-halbench`), read with RLHF-V's refined synonym list
  (eval/data/synonyms_refine.txt); the response-level rate (CHAIR_s) and the mention-level
  rate (CHAIR_i). Only the descriptions are asked.
- "amber": AMBER's generative task (Wang et al., 2023, arXiv:2311.07397; its
  junyangwang0410/AMBER repository): its 1,004 images, each with "Describe this image."
  (`import_amber`), scored by AMBER's CHAIR, Cover, Hal and Cog with its object
  annotations, associations and safe words, read as rlhf/amber.py says (exact word matching
  where AMBER also matches by spaCy vector similarity). Only the descriptions are asked.

A protocol fixes sizes (500 images, 300 prompts); a set too small for them is evaluated
anyway and the result says how many it had (`protocol_size`), so the figure is not mistaken
for a comparable one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from contract.methods import (
    AMBER_CHAIR,
    AMBER_COG,
    AMBER_COVER,
    AMBER_HAL,
    CHAIR_I,
    CHAIR_S,
    COVERAGE,
    GATE_METRICS,
    POPE_F1,
)

Negatives = Literal["factloop", "published"]
Reader = Literal["standard", "rlhf-v"]
Scorer = Literal["chair", "amber"]


@dataclass(frozen=True)
class Protocol:
    name: str
    title: str
    describe: bool  # answer and score the "describe" items
    questions: bool  # answer and score the "question" items
    pope_per_image: int  # present (and as many absent) objects asked per image and split; 0: no POPE
    pope_min_objects: int = 1  # POPE asks about images with at least this many annotated objects
    pope_images: int | None = None  # at most this many images, drawn at random (None: all)
    pope_negatives: Negatives = "factloop"  # rlhf.metrics.build_pope ("factloop") or POPE's own rule
    describe_items: int | None = None  # the protocol's number of description prompts (None: any)
    reader: Reader = "standard"  # how COCO text is read: standard CHAIR's list, or RLHF-V's refined one
    scorer: Scorer = "chair"  # descriptions scored by CHAIR alone, or by AMBER's scorer too (rlhf/amber.py)
    metrics: tuple[str, ...] = ()  # the gate metrics it measures

    @property
    def size(self) -> dict[str, int]:
        """What the protocol's published figures were measured on."""
        sizes = {"pope_images": self.pope_images, "describe_items": self.describe_items}
        return {key: value for key, value in sizes.items() if value}


FACTLOOP: Final = "factloop"
POPE: Final = "pope"
OBJECT_HALBENCH_PROTOCOL: Final = "object_halbench"
AMBER_PROTOCOL: Final = "amber"

PROTOCOLS: Final[dict[str, Protocol]] = {
    FACTLOOP: Protocol(
        FACTLOOP,
        "FactLoop's own (every item; POPE 1+1 per image)",
        describe=True,
        questions=True,
        pope_per_image=1,
        metrics=(CHAIR_I, CHAIR_S, COVERAGE, POPE_F1),
    ),
    # POPE's main.py: --sample_num 3, --img_num 500, images with len(objects) >= sample_num.
    POPE: Protocol(
        POPE,
        "POPE (Li et al., 2023): 500 images, 3 present + 3 absent objects per image and split",
        describe=False,
        questions=False,
        pope_per_image=3,
        pope_min_objects=3,
        pope_images=500,
        pope_negatives="published",
        metrics=(POPE_F1,),
    ),
    # RLHF-V's paper (section 5.1 and Table 6): 300 images, 8 prompts; its code's CHAIRs/CHAIRi.
    OBJECT_HALBENCH_PROTOCOL: Protocol(
        OBJECT_HALBENCH_PROTOCOL,
        "Object HalBench (RLHF-V): 300 COCO images, its 8 description prompts",
        describe=True,
        questions=False,
        pope_per_image=0,
        describe_items=300,
        reader="rlhf-v",
        metrics=(CHAIR_I, CHAIR_S, COVERAGE),
    ),
    # AMBER's README and inference.py: 1,004 generative images, query "Describe this image."
    AMBER_PROTOCOL: Protocol(
        AMBER_PROTOCOL,
        "AMBER (Wang et al., 2023), generative task: 1,004 images; CHAIR, Cover, Hal, Cog",
        describe=True,
        questions=False,
        pope_per_image=0,
        describe_items=1004,
        scorer="amber",
        metrics=(AMBER_CHAIR, AMBER_COVER, AMBER_HAL, AMBER_COG),
    ),
}

AMBER_PROMPT: Final = "Describe this image."  # AMBER's data/query/query_generative.json

# Object HalBench's prompts (RLHF-V, Yu et al., 2024, Table 6: "The list of instructions for
# Object HalBench"). RLHF-V's question file (eval/data/obj_halbench_300_with_image.jsonl)
# pairs each image with one; `import_coco --questions` reads that file, and without it
# `--object-halbench` gives the i-th image the prompt i mod 8.
OBJECT_HALBENCH_PROMPTS: Final = (
    "Provide a thorough description of the given image.",
    "What is this photo about? Please answer in great detail.",
    "Provide a thorough description of the given picture.",
    "Explain the narrative or story that the image seems to convey, detailing each part that contributes to it.",
    "Please provide a detailed description of the image. Describe the visual elements, colors, shapes, textures, "
    "and any objects or people present along with the overall mood or atmosphere portrayed in the image.",
    "Please provide a detailed description of the image, including its visual elements, such as colors, shapes, "
    "textures, objects, and people.",
    "Provide an intricate description of the image, capturing its visual elements, including colors, shapes, "
    "textures, objects, and any people present.",
    "Compose a detailed account of the image, encompassing its visual characteristics, like colors, shapes, "
    "textures, objects, and any human subjects, by paying careful attention to the specifics.",
)


def protocol(name: str) -> Protocol:
    """The protocol `name`; ValueError naming the known ones otherwise."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown evaluation protocol {name!r}; known: {', '.join(PROTOCOLS)}") from None


def check_gate(name: str, metrics: list[str]) -> None:
    """ValueError when a gate metric is one the protocol does not measure."""
    chosen = protocol(name)
    missing = [metric for metric in metrics if metric in GATE_METRICS and metric not in chosen.metrics]
    if missing:
        raise ValueError(
            f"the {name} protocol does not measure {', '.join(missing)}; its gate metrics are "
            f"{', '.join(chosen.metrics)}"
        )
