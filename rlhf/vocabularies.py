"""Object vocabularies a held-out set may spell its objects in, by name.

A vocabulary gives CHAIR its reader (which classes a text mentions) and POPE its classes,
in a fixed order (POPE's random split samples from that order; its popular and adversarial
splits break ties by it):

- "coco": COCO's 80 classes read as standard CHAIR reads them (rlhf/coco.py), in COCO's
  category order;
- "toyworld": the synthetic world's classes and synonyms (testbed/toyworld), in its order;
- any other name: a vocabulary of the user's own, its classes and synonyms given with it
  (a held-out folder's vocabulary.json, contract/heldout.py), read as "toyworld" is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from contract.heldout import Classes
from rlhf.metrics import ObjectReader, SynonymTable


@dataclass(frozen=True)
class Vocabulary:
    name: str
    reader: ObjectReader
    order: tuple[str, ...]  # every class, in the vocabulary's own order


def _coco() -> Vocabulary:
    from rlhf.coco import CocoObjects

    reader = CocoObjects()
    return Vocabulary("coco", reader, reader.order)


def _toyworld() -> Vocabulary:
    from testbed.toyworld import CLASSES, SYNONYMS

    return Vocabulary("toyworld", SynonymTable({cls: SYNONYMS[cls] for cls in CLASSES}), tuple(CLASSES))


VOCABULARIES: dict[str, Callable[[], Vocabulary]] = {"coco": _coco, "toyworld": _toyworld}


def vocabulary(name: str, classes: Classes | None = None, *, rules: str = "standard") -> Vocabulary:
    """A built-in vocabulary by name, or with `classes` one of the user's own. ValueError
    for an unknown name, or for classes whose surface forms collide (with plurals). `rules`
    "rlhf-v" reads COCO text as RLHF-V's Object HalBench does (rlhf/coco.py); only "coco"
    has them."""
    if rules != "standard":
        if name != "coco" or classes is not None:
            raise ValueError(f"the {rules} reading is COCO's; this set's objects are in the {name} vocabulary")
        from rlhf.coco import CocoObjects

        reader = CocoObjects(rules=rules)  # type: ignore[arg-type]
        return Vocabulary("coco", reader, reader.order)
    if classes is not None:
        return Vocabulary(name, SynonymTable(dict(classes)), tuple(cls for cls, _ in classes))
    try:
        return VOCABULARIES[name]()
    except KeyError:
        raise ValueError(f"unknown object vocabulary {name!r}; known: {', '.join(VOCABULARIES)}") from None
