"""The testbed world: rendering, layouts, caption grammar, sampler and evaluation prompts."""
import itertools
import json
from collections import Counter

import numpy as np
import pytest

from bench.geneval.rules import relative_position
from bench.testbed import captions as cap
from bench.testbed.prompts import PROMPTS_PATH, eval_prompts
from bench.testbed import teacher
from bench.testbed.teacher import render
from bench.testbed.world import (BACKGROUND, COLOURS, GAP, MARGIN, SHAPES, ObjSpec, SceneSpec, TokenGridRng, coverage,
                                 sample_scene,
                                 shape_moments)
from lightgen.errors import InputError


def test_coverage_is_exact_area_and_antialiased():
    # Analytic areas of the unit-box shapes; the cross has arms of half-thickness 0.36.
    expected = {"circle": np.pi / 4, "square": 1, "triangle": 0.5, "diamond": 0.5, "cross": 2 * 0.36 - 0.36**2}
    for s in SHAPES:
        assert shape_moments(s)[0] == pytest.approx(expected[s], abs=2e-3)
        a = coverage(s, (3.3, 4.6, 13.3, 14.6), 20, 20)
        assert a.sum() == pytest.approx(100 * expected[s], rel=0.02)
        assert ((a > 0) & (a < 1)).any()  # edges are blends, not aliased steps
        assert a[:4].sum() == 0 and a[:, :3].sum() == 0  # nothing outside the box


def test_render_is_deterministic_and_resolution_independent():
    a, b = render("a red circle left of a blue square", 32, 7), render("a red circle left of a blue square", 32, 7)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(render("a red circle left of a blue square", 32, 8)))
    big = np.asarray(render("a red circle left of a blue square", 64, 7), np.float32)
    # Same layout at 64 px: box-downsampling it gives the 32 px render up to sampling and rounding.
    diff = np.abs(big.reshape(32, 2, 32, 2, 3).mean((1, 3)) - np.asarray(a, np.float32))
    assert diff.max() <= 12 and diff.mean() < 0.3
    assert tuple(np.asarray(a)[0, 0]) == BACKGROUND
    colours = {tuple(c) for c in np.asarray(a).reshape(-1, 3)}
    assert COLOURS["red"] in colours and COLOURS["blue"] in colours


def test_palette_stays_apart_from_background_and_itself():
    c = np.asarray(list(COLOURS.values()), float)
    assert np.linalg.norm(c - BACKGROUND, axis=1).min() > 100
    assert min(np.linalg.norm(a - b) for a, b in itertools.combinations(c, 2)) > 80


def test_layouts_keep_objects_apart_inside_and_relations_clear():
    rng = np.random.default_rng(0)
    for i in range(300):
        n = 1 + i % 4
        scene = sample_scene(SceneSpec(tuple(ObjSpec(SHAPES[(i + k) % 5]) for k in range(n))), rng)
        assert len(scene.objects) == n
        for o in scene.objects:
            x1, y1, x2, y2 = o.box()
            assert min(x1, y1) >= MARGIN - 1e-9 and max(x2, y2) <= 1 - MARGIN + 1e-9
            assert 0.25 <= o.size <= 0.44  # 8-14 px at 32 px
        for a, b in itertools.combinations(scene.objects, 2):
            assert max(abs(a.cx - b.cx), abs(a.cy - b.cy)) >= (a.size + b.size) / 2 + GAP - 1e-9
    for rel in ("left of", "right of", "above", "below"):
        for _ in range(50):
            a, b = sample_scene(SceneSpec((ObjSpec("circle"), ObjSpec("square")), (0, rel, 1)), rng).objects
            assert relative_position(a.box(32), b.box(32)) == (rel,)  # the stated relation, and only it


def test_token_aligned_world_puts_every_box_edge_on_the_token_grid():
    rng = np.random.default_rng(0)
    for i in range(300):
        n = 1 + i % 4
        scene = sample_scene(SceneSpec(tuple(ObjSpec(SHAPES[(i + k) % 5]) for k in range(n))), TokenGridRng(rng, 8))
        for o in scene.objects:
            edges = np.array(o.box(32))  # pixels of a 32-px image: 4-px tokens
            np.testing.assert_allclose(edges, np.round(edges / 4) * 4, atol=1e-9)
            assert edges.min() >= MARGIN * 32 and edges.max() <= 32 - MARGIN * 32
        for a, b in itertools.combinations(scene.objects, 2):  # the world's own rules still hold
            assert max(abs(a.cx - b.cx), abs(a.cy - b.cy)) >= (a.size + b.size) / 2 + GAP - 1e-9
    aligned = teacher.TestbedTeacher(32, token_grid=8)
    assert aligned.name == "testbed-teacher-grid8" and teacher.TestbedTeacher(32).name == "testbed-teacher"
    image = aligned(["two red circles"], [5])[0]
    assert image.tobytes() == render("two red circles", 32, 5, token_grid=8).tobytes()
    assert image.tobytes() != render("two red circles", 32, 5).tobytes()
    with pytest.raises(InputError, match="token_grid"):
        teacher.TestbedTeacher(32, token_grid=0)


def test_teacher_rejects_small_resolutions_and_mismatched_seeds():
    with pytest.raises(InputError, match="resolution"):
        teacher.TestbedTeacher(16)
    with pytest.raises(InputError, match="resolution"):
        render("a circle", 24)
    with pytest.raises(InputError, match="seeds"):
        teacher.TestbedTeacher()(["a circle"], [0, 1])


def test_parser_round_trips_every_template():
    for items in cap.universe().values():
        for text, spec in items[::7]:
            assert cap.parse(text) == spec, text
    assert cap.parse("A photo of 3 RED plus signs.") == SceneSpec((ObjSpec("cross", "red"),) * 3)
    left = SceneSpec((ObjSpec("circle"), ObjSpec("square")), (0, "left of", 1))
    assert cap.parse("a disc to the left of a box") == left


@pytest.mark.parametrize("caption, message", [
    ("a hexagon", "unknown word 'hexagon'; known words: 2, 3, 4, a, above"),
    ("five circles", "unknown word 'five'"),
    ("four circles and a square", "asks for 5 objects; a scene holds at most 4"),
    ("a red circle left of a red circle", "cannot be told apart"),
    ("a circle above a circle", "cannot be told apart"),
    ("two circles left of a square", "needs one object on each side"),
    ("a circle left of a square and a triangle", "unexpected 'and'"),
    ("red circle", "expected an article or number"),
    ("a red", "expected a shape"),
    ("", "expected an article or number"),
])
def test_parser_errors_name_the_problem(caption, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        cap.parse(caption)


def test_vocabulary_covers_every_caption_and_nothing_more():
    words = {w for items in cap.universe().values() for text, _ in items for w in text.split()}
    assert words == set(cap.vocabulary())


def test_sample_captions_diversity_is_independent_of_volume():
    for n, d in [(1000, 10), (1000, 200), (300, 1000)]:
        caps = cap.sample_captions(n, d, seed=3)
        counts = Counter(caps)
        assert len(caps) == n and len(counts) == min(n, d)
        assert max(counts.values()) - min(counts.values()) <= 1  # balanced repetition
    small, large = set(cap.sample_captions(500, 60, 3)), set(cap.sample_captions(5000, 5000, 3))
    assert small <= large  # nested pools
    skills = Counter(_skill(c) for c in small)
    assert set(skills) == set(cap.SKILLS) and set(skills.values()) == {10}  # balanced over skills
    assert cap.sample_captions(50, 20, 3) == cap.sample_captions(50, 20, 3)
    assert cap.sample_captions(50, 20, 3) != cap.sample_captions(50, 20, 4)
    with pytest.raises(InputError, match="diversity"):
        cap.sample_captions(10, cap.max_diversity() + 1)


def _skill(caption: str) -> str:
    spec = cap.parse(caption)
    if spec.relation:
        return "position"
    if len({o.shape for o in spec.objects}) == 1 and len(spec.objects) > 1:
        return "counting"
    if len(spec.objects) == 2:
        return "color_attr" if spec.objects[0].colour else "two_object"
    return "colors" if spec.objects[0].colour else "single_object"


def test_training_captions_never_contain_heldout_combinations():
    pool = cap.sample_captions(cap.max_diversity(), cap.max_diversity(), seed=0)
    assert not any(cap.is_heldout(cap.parse(c)) for c in pool)
    assert len(cap.HELDOUT_COLOURED) == 10 and {c for _, c in cap.HELDOUT_COLOURED} == set(COLOURS)
    assert cap.is_heldout(cap.parse("a photo of a red circle"))
    assert cap.is_heldout(cap.parse("a circle left of a triangle"))
    assert not cap.is_heldout(cap.parse("a blue circle"))


def test_eval_prompts_follow_the_official_schema():
    rows = [json.loads(line) for line in PROMPTS_PATH.read_text().splitlines()]
    assert rows == eval_prompts()  # the committed file is the generator's output
    by_tag = Counter(r["tag"] for r in rows)
    assert set(by_tag) == set(cap.SKILLS) and min(by_tag.values()) >= 50
    for r in rows:
        assert list(r) == (["tag", "include", "exclude", "prompt"] if r["tag"] == "counting"
                           else ["tag", "include", "prompt"])
        assert all(c["class"] in SHAPES and c.get("color", "red") in COLOURS for c in r["include"])
        spec = cap.parse(r["prompt"])  # every prompt is in the grammar and means its metadata
        clauses = [c["class"] for c in r["include"] for _ in range(c["count"])]
        assert sorted(o.shape for o in spec.objects) == sorted(clauses)
    pos = next(r for r in rows if r["tag"] == "position")
    a, rel, b = cap.parse(pos["prompt"]).relation
    assert pos["include"][1]["position"] == [rel, 0]
    heldout = Counter(r["tag"] for r in rows if cap.is_heldout(cap.parse(r["prompt"])))
    assert {"colors", "two_object", "position", "color_attr"} <= set(heldout)
    colours = {(c["class"], c["color"]) for r in rows if r["tag"] == "colors" for c in r["include"]}
    assert len(colours) == 50  # every (shape, colour), the 10 held-out ones included
