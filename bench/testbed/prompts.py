"""Testbed evaluation prompts in the official GenEval metadata schema (specs/geneval.md §2).

Every (shape, colour) and every ordered shape pair appears, held-out combinations included, so the
score measures composition rather than memorisation of the training captions.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench.testbed.captions import SKILLS, is_heldout, parse, universe
from bench.testbed.world import SceneSpec
from lightgen.files import write_text

PROMPTS_PATH = Path(__file__).resolve().parents[2] / "eval_configs" / "testbed" / "geneval_testbed.jsonl"
SEED = 2025
# Prompts per scene: single objects cycle through 10 phrasings, counting and pairs through several.
PER_SPEC = {"single_object": 10, "two_object": 3, "counting": 4, "colors": 1, "position": 1, "color_attr": 1}
COLOR_ATTR_SPECS = 60  # of the 1800 (shape, colour, shape, colour) scenes


def metadata(tag: str, spec: SceneSpec, prompt: str) -> dict:
    """GenEval metadata for `spec`, keys in the official order."""
    def clause(o, count=1):
        c = {"class": o.shape, "count": count}
        if o.colour:
            c["color"] = o.colour
        return c

    objs = spec.objects
    if tag == "counting":
        return {"tag": tag, "include": [clause(objs[0], len(objs))],
                "exclude": [{"class": objs[0].shape, "count": len(objs) + 1}], "prompt": prompt}
    if tag == "position":
        a, rel, b = spec.relation
        return {"tag": tag, "include": [clause(objs[b]), {**clause(objs[a]), "position": [rel, 0]}], "prompt": prompt}
    return {"tag": tag, "include": [clause(o) for o in objs], "prompt": prompt}


def eval_prompts(seed: int = SEED) -> list[dict]:
    """The evaluation set: per tag, every distinct scene (a seeded subset for color_attr), each with
    PER_SPEC phrasings drawn from the grammar's synonyms and templates."""
    rng = np.random.default_rng(seed)
    rows = []
    for tag in SKILLS:
        by_spec: dict[SceneSpec, list[str]] = {}
        for text, spec in universe()[tag]:
            by_spec.setdefault(spec, []).append(text)
        specs = list(by_spec)
        if tag == "counting":  # GenEval counts objects of any colour
            specs = [s for s in specs if s.objects[0].colour is None]
        if tag == "color_attr":
            specs = [specs[i] for i in sorted(rng.choice(len(specs), COLOR_ATTR_SPECS, replace=False))]
        for spec in specs:
            texts = by_spec[spec]
            for i in rng.choice(len(texts), PER_SPEC[tag], replace=False):
                rows.append(metadata(tag, spec, texts[i]))
    return rows


def write_prompts(path: Path | str = PROMPTS_PATH, seed: int = SEED) -> Path:
    path = Path(path)
    write_text(path, "".join(json.dumps(r) + "\n" for r in eval_prompts(seed)))  # atomic: never half a prompt set
    return path


def heldout_rows(rows: list[dict]) -> list[dict]:
    """The result rows of prompts holding a combination no training caption contains (generalisation:
    what caption diversity should buy); single-object and counting prompts have none."""
    return [r for r in rows if is_heldout(parse(r["prompt"]))]
