"""Caption grammar of the testbed: templates with synonyms for GenEval's six skills, a parser back
to scene constraints, and a sampler whose `diversity` (distinct captions) is set apart from its
volume (captions drawn).

Compositional generalisation is measured by held-out combinations that training captions never
contain: one shape per colour (HELDOUT_COLOURED) and two shape pairs that never share a caption
(HELDOUT_PAIRS). The evaluation prompts use them; `sample_captions` never does. Held-out is a
property of the text: the teacher still picks unstated colours freely, so "a circle" may be drawn
red, and the model must bind the words "red" and "circle" without having read them together.
"""
from __future__ import annotations

import itertools
import re
from functools import lru_cache

import numpy as np

from bench.testbed.world import COLOURS, MAX_OBJECTS, SHAPES, ObjSpec, SceneSpec
from lightgen.errors import InputError

PREFIXES = ("a photo of", "an image of", "a picture of", "a drawing of", "")
DETERMINERS = ("a", "one")  # "a" becomes "an" before a vowel
ARTICLES = ("a", "an", "one")
NOUNS = {  # shape -> (singular, plural) synonyms; the first is the GenEval class name
    "circle": (("circle", "circles"), ("disc", "discs")),
    "square": (("square", "squares"), ("box", "boxes")),
    "triangle": (("triangle", "triangles"),),
    "diamond": (("diamond", "diamonds"), ("rhombus", "rhombuses")),
    "cross": (("cross", "crosses"), ("plus sign", "plus signs")),
}
NUMBERS = {2: ("two", "2"), 3: ("three", "3"), 4: ("four", "4")}
CONNECTORS = ("and", "with")
RELATION_PHRASES = {
    "left of": ("left of", "to the left of", "on the left of"),
    "right of": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
SKILLS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COLOUR_NAMES = tuple(COLOURS)
# One held-out shape per colour (each shape twice), and two shape pairs.
HELDOUT_COLOURED = frozenset((SHAPES[i % len(SHAPES)], c) for i, c in enumerate(COLOUR_NAMES))
HELDOUT_PAIRS = frozenset({frozenset(("circle", "triangle")), frozenset(("square", "cross"))})


def is_heldout(spec: SceneSpec) -> bool:
    """True if the scene holds a combination that training captions never contain."""
    if any((o.shape, o.colour) in HELDOUT_COLOURED for o in spec.objects):
        return True
    shapes = {o.shape for o in spec.objects}
    return any(p <= shapes for p in HELDOUT_PAIRS)


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def _one(det: str, colour: str | None, noun: str) -> str:
    words = [colour, noun] if colour else [noun]
    return " ".join([_article(words[0]) if det == "a" else det, *words])


def _say(prefix: str, body: str) -> str:
    return f"{prefix} {body}".strip()


def _sg() -> list[tuple[str, str]]:
    return [(shape, sg) for shape, syns in NOUNS.items() for sg, _ in syns]


def _pl() -> list[tuple[str, str]]:
    return [(shape, pl) for shape, syns in NOUNS.items() for _, pl in syns]


@lru_cache(maxsize=1)
def universe() -> dict[str, list[tuple[str, SceneSpec]]]:
    """Every (caption, spec) of each skill, held-out combinations included, in a fixed order."""
    def single():
        for p, det, (s, noun) in itertools.product(PREFIXES, DETERMINERS, _sg()):
            yield _say(p, _one(det, None, noun)), SceneSpec((ObjSpec(s),))

    def colors():
        for p, det, c, (s, noun) in itertools.product(PREFIXES, DETERMINERS, COLOUR_NAMES, _sg()):
            yield _say(p, _one(det, c, noun)), SceneSpec((ObjSpec(s, c),))

    def counting():
        for p, (k, words), c, (s, noun) in itertools.product(
                PREFIXES, [(k, w) for k, ws in NUMBERS.items() for w in ws], (None, *COLOUR_NAMES), _pl()):
            yield _say(p, " ".join(filter(None, (words, c, noun)))), SceneSpec((ObjSpec(s, c),) * k)

    def two_object():
        for p, (a, na), conn, (b, nb) in itertools.product(PREFIXES, _sg(), CONNECTORS, _sg()):
            if a != b:
                yield (_say(p, f"{_one('a', None, na)} {conn} {_one('a', None, nb)}"),
                       SceneSpec((ObjSpec(a), ObjSpec(b))))

    def position():
        rels = [(r, w) for r, ws in RELATION_PHRASES.items() for w in ws]
        for p, (a, na), (r, w), (b, nb) in itertools.product(PREFIXES, _sg(), rels, _sg()):
            if a != b:
                yield (_say(p, f"{_one('a', None, na)} {w} {_one('a', None, nb)}"),
                       SceneSpec((ObjSpec(a), ObjSpec(b)), (0, r, 1)))

    def color_attr():
        for p, ca, (a, na), conn, cb, (b, nb) in itertools.product(
                PREFIXES, COLOUR_NAMES, _sg(), CONNECTORS, COLOUR_NAMES, _sg()):
            if a != b and ca != cb:
                yield (_say(p, f"{_one('a', ca, na)} {conn} {_one('a', cb, nb)}"),
                       SceneSpec((ObjSpec(a, ca), ObjSpec(b, cb))))

    families = {"single_object": single, "two_object": two_object, "counting": counting, "colors": colors,
                "position": position, "color_attr": color_attr}
    return {skill: list(families[skill]()) for skill in SKILLS}


@lru_cache(maxsize=4)
def _training_order(seed: int) -> tuple[str, ...]:
    """Training captions in the order the pool takes them: the skills' seeded shuffles, held-out
    combinations removed, interleaved round-robin (a skill drops out once exhausted)."""
    rng = np.random.default_rng(seed)
    lists = []
    for skill in SKILLS:
        items = [t for t, spec in universe()[skill] if not is_heldout(spec)]
        lists.append([items[i] for i in rng.permutation(len(items))])
    return tuple(c for row in itertools.zip_longest(*lists) for c in row if c is not None)


def max_diversity() -> int:
    """Distinct training captions the grammar holds (held-out combinations excluded)."""
    return len(_training_order(0))


def sample_captions(n: int, diversity: int, seed: int = 0) -> list[str]:
    """`n` training captions drawn from a pool of `diversity` distinct ones.

    The pool is balanced over the six skills (until a skill runs out) and nested: the pool for a
    smaller diversity is a subset of the pool for a larger one with the same seed. Each pool caption
    appears floor(n/diversity) or ceil(n/diversity) times, so diversity and volume vary
    independently. Layouts and unstated colours are drawn per image by the teacher.
    """
    total = max_diversity()
    if not 1 <= diversity <= total:
        raise InputError(f"diversity: expected 1..{total} (distinct training captions in the grammar), got {diversity}")
    if n < 0:
        raise InputError(f"n: expected >= 0, got {n}")
    pool = _training_order(seed)[:diversity]
    epochs = np.tile(np.arange(diversity), (-(-n // diversity), 1))
    order = np.random.default_rng([seed, 1]).permuted(epochs, axis=1).ravel()[:n]
    return [pool[i] for i in order]


# ----------------------------------------------------------------------------------------- parser
def _lexicon() -> dict[tuple[str, ...], tuple[str, object]]:
    lex: dict[tuple[str, ...], tuple[str, object]] = {}
    for p in filter(None, PREFIXES):
        lex[tuple(p.split())] = ("prefix", p)
    for w in ARTICLES:
        lex[(w,)] = ("count", 1)
    for k, words in NUMBERS.items():
        for w in words:
            lex[(w,)] = ("count", k)
    for c in COLOUR_NAMES:
        lex[(c,)] = ("colour", c)
    for shape, syns in NOUNS.items():
        for form in (f for pair in syns for f in pair):
            lex[tuple(form.split())] = ("shape", shape)
    for w in CONNECTORS:
        lex[(w,)] = ("and", w)
    for rel, phrases in RELATION_PHRASES.items():
        for ph in phrases:
            lex[tuple(ph.split())] = ("relation", rel)
    return lex


_LEX = _lexicon()
_EXPECTED = {"count": f"an article or number ({', '.join(ARTICLES + sum(NUMBERS.values(), ()))})",
             "shape": f"a shape ({', '.join(f for syns in NOUNS.values() for pair in syns for f in pair)})"}
_LONGEST = max(map(len, _LEX))


def vocabulary() -> list[str]:
    """Every word the grammar can produce (and the parser accepts), sorted."""
    return sorted({w for key in _LEX for w in key})


def _tokens(caption: str) -> list[tuple[str, object, str]]:
    words = re.sub(r"[^\w\s]", " ", caption.lower()).split()
    known = set(vocabulary())
    for w in words:
        if w not in known:
            raise InputError(f"caption {caption!r}: unknown word {w!r}; known words: {', '.join(vocabulary())}")
    out, i = [], 0
    while i < len(words):
        for k in range(min(_LONGEST, len(words) - i), 0, -1):
            if tuple(words[i:i + k]) in _LEX:
                kind, value = _LEX[tuple(words[i:i + k])]
                out.append((kind, value, " ".join(words[i:i + k])))
                i += k
                break
        else:
            raise InputError(f"caption {caption!r}: {words[i]!r} does not start a phrase of the grammar")
    return out


def parse(caption: str) -> SceneSpec:
    """Caption -> scene constraints. Grammar: [prefix] group (and group)* | [prefix] one rel one,
    where group = count [colour] shape and one = a [colour] shape."""
    toks = _tokens(caption)
    if toks and toks[0][0] == "prefix":
        toks = toks[1:]
    groups: list[tuple[int, ObjSpec]] = []
    relation, i, word = None, 0, None

    def expect(kind: str, after: str | None) -> tuple[str, object, str]:
        if i >= len(toks) or toks[i][0] != kind:
            where = f"after {after!r}" if after else "at the start"
            got = repr(toks[i][2]) if i < len(toks) else "the end"
            raise InputError(f"caption {caption!r}: expected {_EXPECTED[kind]} {where}, got {got}")
        return toks[i]

    while True:
        _, count, word = expect("count", word)
        i += 1
        colour = None
        if i < len(toks) and toks[i][0] == "colour":
            colour, word = toks[i][1], toks[i][2]
            i += 1
        shape = expect("shape", word)[1]
        i += 1
        groups.append((count, ObjSpec(shape, colour)))
        if i == len(toks):
            break
        kind, value, word = toks[i]
        if kind == "relation" and len(groups) == 1:
            relation = value
        elif kind != "and" or relation is not None:
            hint = ("a relation links exactly two objects" if relation or kind == "relation"
                    else f"expected {', '.join(CONNECTORS)} or a relation")
            raise InputError(f"caption {caption!r}: unexpected {word!r} ({hint})")
        i += 1
    return _check(caption, groups, relation)


def _check(caption: str, groups: list[tuple[int, ObjSpec]], relation: str | None) -> SceneSpec:
    """Reject scenes the world cannot hold or GenEval cannot tell apart."""
    n = sum(k for k, _ in groups)
    if n > MAX_OBJECTS:
        raise InputError(f"caption {caption!r}: asks for {n} objects; a scene holds at most {MAX_OBJECTS}")
    objects = tuple(o for k, o in groups for _ in range(k))
    if relation is None:
        return SceneSpec(objects)
    if n != 2:
        raise InputError(f"caption {caption!r}: {relation!r} needs one object on each side")
    a, b = objects
    if a.shape == b.shape and (a.colour is None or b.colour is None or a.colour == b.colour):
        raise InputError(f"caption {caption!r}: the two sides of {relation!r} cannot be told apart "
                         f"(an object cannot be {relation} itself)")
    return SceneSpec(objects, (0, relation, 1))
