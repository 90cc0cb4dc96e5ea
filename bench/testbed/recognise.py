"""Is this input from the testbed world? Then `geneval`, `geneval-score` and `fid` default to the testbed's
prompts, detector, colour classifier and FID extractor (a testbed image scored by Mask2Former, or a testbed
pipeline asked for COCO objects, is a wrong default, not a result)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from bench.testbed.world import SHAPES
from lightgen.errors import InputError


def testbed_prompts(prompts: Iterable[dict]) -> bool:
    """GenEval metadata whose every object class is a testbed shape (and at least one object)."""
    classes = [c.get("class") for p in prompts for c in [*p.get("include", []), *p.get("exclude", [])]
               if isinstance(c, dict)]
    return bool(classes) and set(classes) <= set(SHAPES)


def testbed_pipeline(ckpt: str | os.PathLike | None) -> bool:
    """A LightGen pipeline directory of a testbed preset (`testbed`, `testbed-small`, ...)."""
    from lightgen.pipeline import read_pipeline_config

    if not ckpt or not (Path(ckpt) / "config.json").is_file():
        return False
    return (read_pipeline_config(ckpt)[0].preset or "").startswith("testbed")


def testbed_folder(folder: str | os.PathLike) -> bool:
    """A GenEval image folder of testbed prompts, or a dataset distilled from the testbed teacher."""
    from bench.geneval.layout import read_layout

    folder = Path(folder)
    if not folder.is_dir():
        return False
    meta = folder / "meta.json"
    if meta.is_file():
        try:
            return str(json.loads(meta.read_text()).get("teacher", "")).startswith("testbed")
        except (OSError, ValueError, AttributeError):
            return False
    try:
        return testbed_prompts(f.metadata for f in read_layout(folder) if f.metadata)
    except InputError:
        return False
