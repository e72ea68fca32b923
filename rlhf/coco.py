"""COCO's 80 classes for CHAIR, read the way Rohrbach et al. (2018) read them.

The standard implementation (LisaAnne/Hallucination, utils/chair.py, with its
data/synonyms.txt; RLHF-V's Object HalBench evaluation runs the same rules) takes each
caption through four steps:

1. lower-case it, split it into words (nltk's word_tokenize) and singularize each word
   (pattern.en's singularize);
2. join two-word names (`double_word_dict`): COCO's two-word class names ("hot dog", "fire
   hydrant", "motor cycle", "train track", ...) stay one word; "baby"/"adult" + an animal
   becomes the animal (no person); "passenger" + jet/train becomes that vehicle; "bow tie"
   becomes "tie"; "toilet seat" becomes "toilet";
3. drop "seat" when "toilet" is in the caption (a toilet seat is no chair);
4. keep the words that stand in the synonym list, each mapped to its class, the first word
   of its line. "train track" is not in the list: "train tracks" names no train.

FactLoop does the same steps without nltk or pattern (neither can fetch its data offline):
words are runs of letters and digits, hyphenated words kept whole, apostrophes and
punctuation splitting (as word_tokenize does for objects: "dog's" gives "dog"); a plural is
made singular when the singular is a word of the synonym list or of a two-word name
(regular endings, and the irregular plurals the list needs: geese, calves, mice, men,
women, knives...); any other word is left as it is, which cannot change what is counted.
The standard list's quirks are kept, since figures must compare with published ones: its
"motor bike" and "cheesecake" follow a double space and so never match, and "hair dryer"
is not a two-word name ("hair drier" is). `hair_dryer=True` reads "hair dryer" (and
"hair dryers") as the class; it is off by default and documented as a difference.

`rules="rlhf-v"` reads as RLHF-V's Object HalBench evaluation does (RLHF-V,
eval/eval_gpt_obj_halbench.py with eval/data/synonyms_refine.txt): the standard list with
"brother", "pedestrian", "coffee table" and "remote control" added, each entry stripped of
its spaces (so "motor bike" and "cheesecake" do match there), and every synonym of two
words a two-word name, besides "home plate" and "train track".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from rlhf.metrics import Mention

# The standard synonym list (LisaAnne/Hallucination, data/synonyms.txt), one class a line:
# the class first, then the words that name it. Kept byte for byte, double spaces included
# (they make " motor bike" and " cheesecake" entries no word can equal, as in the standard).
STANDARD_SYNONYMS = """\
person, girl, boy, man, woman, kid, child, chef, baker, people, adult, rider, children, baby, worker, passenger, sister, biker, policeman, cop, officer, lady, cowboy, bride, groom, male, female, guy, traveler, mother, father, gentleman, pitcher, player, skier, snowboarder, skater, skateboarder, person, woman, guy, foreigner, child, gentleman, caller, offender, coworker, trespasser, patient, politician, soldier, grandchild, serviceman, walker, drinker, doctor, bicyclist, thief, buyer, teenager, student, camper, driver, solider, hunter, shopper, villager
bicycle, bike, bicycle, bike, unicycle, minibike, trike
car, automobile, van, minivan, sedan, suv, hatchback, cab, jeep, coupe, taxicab, limo, taxi
motorcycle, scooter,  motor bike, motor cycle, motorbike, scooter, moped
airplane, jetliner, plane, air plane, monoplane, aircraft, jet, jetliner, airbus, biplane, seaplane
bus, minibus, trolley
train, locomotive, tramway, caboose
truck, pickup, lorry, hauler, firetruck
boat, ship, liner, sailboat, motorboat, dinghy, powerboat, speedboat, canoe, skiff, yacht, kayak, catamaran, pontoon, houseboat, vessel, rowboat, trawler, ferryboat, watercraft, tugboat, schooner, barge, ferry, sailboard, paddleboat, lifeboat, freighter, steamboat, riverboat, battleship, steamship
traffic light, street light, traffic signal, stop light, streetlight, stoplight
fire hydrant, hydrant
stop sign
parking meter
bench, pew
bird, ostrich, owl, seagull, goose, duck, parakeet, falcon, robin, pelican, waterfowl, heron, hummingbird, mallard, finch, pigeon, sparrow, seabird, osprey, blackbird, fowl, shorebird, woodpecker, egret, chickadee, quail, bluebird, kingfisher, buzzard, willet, gull, swan, bluejay, flamingo, cormorant, parrot, loon, gosling, waterbird, pheasant, rooster, sandpiper, crow, raven, turkey, oriole, cowbird, warbler, magpie, peacock, cockatiel, lorikeet, puffin, vulture, condor, macaw, peafowl, cockatoo, songbird
cat, kitten, feline, tabby
dog, puppy, beagle, pup, chihuahua, schnauzer, dachshund, rottweiler, canine, pitbull, collie, pug, terrier, poodle, labrador, doggie, doberman, mutt, doggy, spaniel, bulldog, sheepdog, weimaraner, corgi, cocker, greyhound, retriever, brindle, hound, whippet, husky
horse, colt, pony, racehorse, stallion, equine, mare, foal, palomino, mustang, clydesdale, bronc, bronco
sheep, lamb, ram, lamb, goat, ewe
cow, cattle, oxen, ox, calf, cattle, holstein, heifer, buffalo, bull, zebu, bison
elephant
bear, panda
zebra
giraffe
backpack, knapsack
umbrella
handbag, wallet, purse, briefcase
tie, bow, bow tie
suitcase, suit case, luggage
frisbee
skis, ski
snowboard
sports ball, ball
kite
baseball bat
baseball glove
skateboard
surfboard, longboard, skimboard, shortboard, wakeboard
tennis racket, racket
bottle
wine glass
cup
fork
knife, pocketknife, knive
spoon
bowl, container
banana
apple
sandwich, burger, sub, cheeseburger, hamburger
orange
broccoli
carrot
hot dog
pizza
donut, doughnut, bagel
cake,  cheesecake, cupcake, shortcake, coffeecake, pancake
chair, seat, stool
couch, sofa, recliner, futon, loveseat, settee, chesterfield
potted plant, houseplant
bed
dining table, table, desk
toilet, urinal, commode, toilet, lavatory, potty
tv, monitor, televison, television
laptop, computer, notebook, netbook, lenovo, macbook, laptop computer
mouse
remote
keyboard
cell phone, mobile phone, phone, cellphone, telephone, phon, smartphone, iPhone
microwave
oven, stovetop, stove, stove top oven
toaster
sink
refrigerator, fridge, fridge, freezer
book
clock
vase
scissors
teddy bear, teddybear
hair drier, hairdryer
toothbrush
"""

# What RLHF-V's refined list (eval/data/synonyms_refine.txt) adds to the standard one.
RLHF_V_ADDITIONS = {
    "person": ("brother", "pedestrian"),
    "dining table": ("coffee table",),
    "remote": ("remote control",),
}

# The standard's two-word names (its `coco_double_words`), and its qualifier rules.
DOUBLE_WORDS = (
    "motor bike",
    "motor cycle",
    "air plane",
    "traffic light",
    "street light",
    "traffic signal",
    "stop light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "suit case",
    "sports ball",
    "baseball bat",
    "baseball glove",
    "tennis racket",
    "wine glass",
    "hot dog",
    "cell phone",
    "mobile phone",
    "teddy bear",
    "hair drier",
    "potted plant",
    "bow tie",
    "laptop computer",
    "stove top oven",
    "home plate",
    "train track",
)
ANIMAL_WORDS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
VEHICLE_WORDS = ("jet", "train")

# Plurals no suffix rule undoes (pattern.en's singularize knows them).
IRREGULAR_PLURALS = {
    "men": "man",
    "women": "woman",
    "children": "child",
    "people": "person",
    "geese": "goose",
    "mice": "mouse",
    "calves": "calf",
    "knives": "knife",
    "oxen": "ox",
    "wolves": "wolf",
    "loaves": "loaf",
    "halves": "half",
    "feet": "foot",
    "teeth": "tooth",
}

_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*", re.IGNORECASE)


def _lines(text: str) -> list[list[str]]:
    # As the standard reads its file: each line stripped, then split at ", " exactly.
    return [line.strip().split(", ") for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class _Word:
    text: str
    start: int
    end: int


class CocoObjects:
    """Which of COCO's 80 classes a text names, mention by mention, as standard CHAIR reads
    it. Has the interface of rlhf.metrics.SynonymTable (`classes`, `mentions`), so
    rlhf.metrics.chair and object_halbench take it."""

    def __init__(self, *, hair_dryer: bool = False, rules: Literal["standard", "rlhf-v"] = "standard") -> None:
        lines = _lines(STANDARD_SYNONYMS)
        doubles: tuple[str, ...] = DOUBLE_WORDS
        if rules == "rlhf-v":
            # RLHF-V's Object HalBench (eval/eval_gpt_obj_halbench.py, class CHAIR) reads its
            # refined list, eval/data/synonyms_refine.txt: the standard one with four more
            # synonyms, every entry stripped (so "motor bike" and "cheesecake" match), and
            # every synonym of two or more words, with "home plate" and "train track", a
            # two-word name.
            lines = [[word.strip() for word in line] + list(RLHF_V_ADDITIONS.get(line[0], ())) for line in lines]
            doubles = (
                *(word for line in lines for word in line if len(word.split()) >= 2),
                "home plate",
                "train track",
            )
        elif rules != "standard":
            raise ValueError(f"rules must be standard or rlhf-v, got {rules!r}")
        self.rules = rules
        self.to_class: dict[str, str] = {word: line[0] for line in lines for word in line}
        self.classes = frozenset(line[0] for line in lines)
        self.order = tuple(line[0] for line in lines)  # COCO's category order
        self.double_words: dict[str, str] = {pair: pair for pair in doubles}
        for animal in ANIMAL_WORDS:
            self.double_words[f"baby {animal}"] = animal
            self.double_words[f"adult {animal}"] = animal
        for vehicle in VEHICLE_WORDS:
            self.double_words[f"passenger {vehicle}"] = vehicle
        self.double_words["bow tie"] = "tie"
        self.double_words["toilet seat"] = "toilet"
        self.double_words["wine glas"] = "wine glass"
        if hair_dryer:  # a deliberate difference from the standard (off by default)
            self.double_words["hair dryer"] = "hair drier"
        # The words a singular may be: those of the list and of the two-word names.
        self._singulars = {part for name in [*self.to_class, *self.double_words] for part in name.split()}

    def singular(self, word: str) -> str:
        """The singular of a plural the list or a two-word name uses; any other word as it is."""
        if word in self._singulars:
            return word
        candidates = [IRREGULAR_PLURALS[word]] if word in IRREGULAR_PLURALS else []
        if word.endswith("ies"):
            candidates.append(word[:-3] + "y")
        if word.endswith("ves"):
            candidates += [word[:-3] + "f", word[:-3] + "fe"]
        if word.endswith("es"):
            candidates.append(word[:-2])
        if word.endswith("s") and not word.endswith("ss"):
            candidates.append(word[:-1])
        return next((c for c in candidates if c in self._singulars), word)

    def objects(self, text: str) -> list[tuple[str, str, int, int]]:
        """(word as the standard reads it, its class, start, end) for every object word."""
        # Offsets in the text as given (lower-casing can change a string's length).
        words = [_Word(self.singular(m.group().lower()), m.start(), m.end()) for m in _WORD.finditer(text)]
        joined: list[_Word] = []
        i = 0
        while i < len(words):
            pair = f"{words[i].text} {words[i + 1].text}" if i + 1 < len(words) else ""
            if pair in self.double_words:
                joined.append(_Word(self.double_words[pair], words[i].start, words[i + 1].end))
                i += 2
            else:
                joined.append(words[i])
                i += 1
        texts = {w.text for w in joined}
        if "toilet" in texts and "seat" in texts:
            joined = [w for w in joined if w.text != "seat"]
        return [(w.text, self.to_class[w.text], w.start, w.end) for w in joined if w.text in self.to_class]

    def mentions(self, text: str) -> list[Mention]:
        return [Mention(cls, text[start:end], start, end) for _, cls, start, end in self.objects(text)]

    def named(self, texts: list[str]) -> set[str]:
        """The classes some of the texts name: how standard CHAIR adds an image's reference
        captions to its ground truth."""
        return {cls for text in texts for _, cls, _, _ in self.objects(text)}
