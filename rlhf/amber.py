"""AMBER's generative-task scores of one description: CHAIR, Cover, Hal and Cog.

AMBER (Wang et al., 2023, "AMBER: An LLM-free Multi-dimensional Benchmark for MLLMs
Hallucination Evaluation", arXiv:2311.07397) annotates each of its 1,004 images with the
objects in it (`truth`) and objects a model is likely to name although they are absent
(`hallu`), and relates every object word to associated words (data/relation.json). Its
scorer (the authors' inference.py, evaluation type "g") reads a response so:

1. the response's nouns, lemmatised, kept when they are object words (a key or a value of
   the associations);
2. each kept noun: a global safe word (data/safe_words.txt) is never a hallucination; a
   word of the image's truth or associated with one of its truth objects is none and
   covers that object; any other is a hallucination, and when it is one of the image's
   `hallu` objects or associated with one, that object counts for Cog. The first listed
   entry a word matches is the one marked: the truth objects' associated words in truth
   order, then the truth objects themselves (so a truth object that is also another
   truth object's associated word covers that other one, as the authors' code does);
3. CHAIR = hallucinated nouns / kept nouns (every kept noun, safe words included, counts
   in the denominator), Cover = truth objects covered / truth objects, Hal = the share of
   responses with any hallucinated noun, Cog = `hallu` objects named / `hallu` objects;
   all pooled over the responses.

Where FactLoop departs, because the authors' scorer needs NLTK's tagger and WordNet's data
and spaCy's en_core_web_lg vectors, none of which ship with a Python package:

- nouns: every word of the response is read (NLTK's word_tokenize splits hyphens no more
  than this does), not only those its tagger calls nouns, so an object word used as a verb
  or an adjective counts here and not there;
- lemmas: WordNet's noun rules (morphy(7WN): -s, -ses, -ves, -xes, -zes, -ches, -shes,
  -men, -ies) and its irregular plurals of object words, a candidate kept when it is an
  object word, the shortest one taken (NLTK's WordNetLemmatizer takes the shortest WordNet
  lemma), except for the forms `_WORDNET_LEMMAS` lists, where WordNet's lemma is another
  (a word WordNet lacks keeps its plural there, and a plural object word such as
  "sunglasses" becomes a singular AMBER does not list). With that table the two agree on
  every object word of AMBER's relation.json and on its plurals (checked against NLTK
  3.10's lemmatizer on WordNet 3.0 over the words and their regular plural forms, 1,286 in
  all: the 7 read otherwise are no words, such as "slipperss"). As there, the match is
  case-sensitive: a capitalised word is not an object word;
- no similarity: AMBER also spares a noun whose spaCy vector similarity to a truth word
  exceeds 0.8 and marks Cover and Cog by it; FactLoop matches words exactly. So on the same
  responses CHAIR and Hal here are at least AMBER's, Cover and Cog at most AMBER's, apart
  from the reading of non-nouns.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from contract.heldout import Associations, HeldoutError

# WordNet's noun detachment rules (morphy(7WN), "Rules of Detachment", nouns).
_DETACH = (
    ("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"),
    ("ies", "y"),
)  # fmt: skip
# Irregular plurals from WordNet's exception list (noun.exc) of words AMBER's objects use.
_IRREGULAR = {
    "children": "child", "feet": "foot", "teeth": "tooth", "geese": "goose", "mice": "mouse", "knives": "knife",
    "leaves": "leaf", "wolves": "wolf", "calves": "calf", "loaves": "loaf", "halves": "half", "lives": "life",
    "wives": "wife", "oxen": "ox", "dice": "die", "scarves": "scarf", "thieves": "thief", "women": "woman",
}  # fmt: skip
# Where NLTK's WordNetLemmatizer (NLTK 3.10, WordNet 3.0) reads a form of an AMBER object
# word otherwise than the rules above: its lemma, which is no object word (so AMBER's
# scorer never counts these forms).
_WORDNET_LEMMAS = {
    "TVs": "TVs", "air-conditionings": "air-conditionings", "baconics": "baconics", "bedsheets": "bedsheets",
    "canns": "canns", "catholes": "catholes", "chopsticks": "chopstick", "closestools": "closestools",
    "cooktops": "cooktops", "dogholes": "dogholes", "e-books": "e-books", "earings": "earings", "earrings": "earring",
    "ebooks": "ebooks", "electrombiles": "electrombiles", "hots": "hots", "kiwifruits": "kiwifruits",
    "paragliders": "paragliders", "pissoirs": "pissoirs", "potatoes": "potato", "rpoes": "rpoes",
    "sanitizers": "sanitizers", "scoons": "scoons", "seegulls": "seegulls", "showerpuffs": "showerpuffs",
    "slippers": "slipper", "streetlamps": "streetlamps", "sunglasses": "sunglass", "tomatoes": "tomato",
    "vases": "vas", "waterfonts": "waterfonts",
}  # fmt: skip
_WORD = re.compile(r"[A-Za-z]+(?:-[A-Za-z]+)*")

Row = list[int]  # [object words, of them hallucinated, truth objects, of them covered, hallu objects, of them named]


@dataclass(frozen=True)
class AmberReader:
    associations: Associations

    @cached_property
    def words(self) -> frozenset[str]:
        """AMBER's object words: every key and value of the associations."""
        return frozenset(self.associations.words) | {w for ws in self.associations.words.values() for w in ws}

    def lemma(self, token: str) -> str:
        if token in _WORDNET_LEMMAS:
            return _WORDNET_LEMMAS[token]
        candidates = [token, _IRREGULAR[token]] if token in _IRREGULAR else [token]
        if token not in _IRREGULAR:
            candidates += [
                token[: -len(end)] + put for end, put in _DETACH if token.endswith(end) and len(token) > len(end)
            ]
        known = [candidate for candidate in candidates if candidate in self.words]
        return min(known, key=len) if known else token

    def object_words(self, text: str) -> list[str]:
        """The response's object words, lemmatised, in order."""
        lemmas = (self.lemma(token) for token in _WORD.findall(text))
        return [lemma for lemma in lemmas if lemma in self.words]

    def _entries(self, objects: Sequence[str]) -> tuple[list[str], list[int]]:
        """AMBER's list for `objects`: each one's associated words in order, then the objects
        themselves, with the index of the object each entry stands for."""
        entries: list[str] = []
        owners: list[int] = []
        for index, name in enumerate(objects):
            try:
                related = self.associations.words[name]
            except KeyError:
                raise HeldoutError(f"{name!r} has no association in AMBER's relation data") from None
            entries += related
            owners += [index] * len(related)
        return entries + list(objects), owners + list(range(len(objects)))

    def row(self, text: str, truth: Sequence[str], hallu: Sequence[str]) -> Row:
        safe, safe_owner = self._entries(truth)
        risky, risky_owner = self._entries(hallu)
        covered, named = set(), set()
        found = self.object_words(text)
        hallucinated = 0
        for word in found:
            if word in self.associations.safe_words:
                continue
            if word in safe:
                covered.add(safe_owner[safe.index(word)])
                continue
            if word in risky:
                named.add(risky_owner[risky.index(word)])
            hallucinated += 1
        return [len(found), hallucinated, len(truth), len(covered), len(hallu), len(named)]
