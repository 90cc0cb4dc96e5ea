"""Score a GenEval image folder: detector -> official filtering -> CLIP colours -> official decision.

Images are decoded in DataLoader workers; the detector sees one image per forward and CLIP one
clause's objects per batch, as officially. Rows are appended to `results.jsonl` as batches finish
(official fields + the scorer's identity + the image's sha256), so a rerun skips images already
scored with the same content and metadata, rescores regenerated ones and never duplicates a row.
An unreadable image becomes an error row (retried on the next run) and the run ends with an error
listing it, instead of crashing midway or skipping silently.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Collection, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from bench.geneval.colors import ColorClassifier
from bench.geneval.detectors import Detector
from bench.geneval.layout import read_layout
from bench.geneval.rules import COLORS, RELATIONS, TAGS, Rules, decide, filter_detections
from bench.geneval.summary import comparability, format_summary, read_results, summarize, summary_path, write_summary
from bench.provenance import environment, setting_difference
from lightgen.errors import InputError
from lightgen.files import open_rgb, write_text

def validate_metadata(meta: dict, where: str, classes: Collection[str]) -> None:
    """Reject what the official scorer would silently mis-score: unknown tags, classes, colours."""
    def check(ok: bool, field: str, expected: str) -> None:
        if not ok:
            raise InputError(f"{where}: {field}: expected {expected}")

    check(meta.get("tag") in TAGS, "tag", f"one of {', '.join(TAGS)}, got {meta.get('tag')!r}")
    include, exclude = meta.get("include"), meta.get("exclude", [])
    check(isinstance(include, list) and len(include) > 0, "include", "a non-empty list of clauses")
    check(isinstance(exclude, list), "exclude", "a list of clauses")
    for key, clauses in (("include", include), ("exclude", exclude)):
        for i, req in enumerate(clauses):
            f = f"{key}[{i}]"
            check(isinstance(req, dict), f, "an object")
            check(req.get("class") in classes, f + ".class", f"a class of the detector, got {req.get('class')!r}")
            n = req.get("count")
            check(isinstance(n, int) and not isinstance(n, bool) and n >= 1, f + ".count", f"an int >= 1, got {n!r}")
            if "color" in req:
                check(req["color"] in COLORS, f + ".color", f"one of {', '.join(COLORS)}, got {req['color']!r}")
            if "position" in req:
                p = req["position"]
                check(key == "include" and isinstance(p, list) and len(p) == 2 and p[0] in RELATIONS
                      and isinstance(p[1], int) and 0 <= p[1] < i, f + ".position",
                      f"[relation in {', '.join(RELATIONS)}, index of an earlier include clause], got {p!r}")


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Images(torch.utils.data.Dataset):
    """Decodes like the official scorer (EXIF transpose, RGB), with the sha256 of exactly the bytes
    decoded; a failure is returned, not raised."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Image.Image | None, str | None, str | None]:
        try:
            data = self.paths[i].read_bytes()
            return i, open_rgb(io.BytesIO(data), self.paths[i].name, exif_transpose=True), None, content_hash(data)
        except Exception as e:  # noqa: BLE001 - any unreadable file becomes an error row
            return i, None, f"{type(e).__name__}: {e}", None


def _key(filename: str) -> str:
    """`<folder>/samples/<name>`: independent of how the outdir was spelled."""
    return "/".join(Path(filename).parts[-3:])


def _f32(x: float) -> float:
    return float(np.float32(x))


def colour_requests(meta: dict, kept: dict[str, list[dict]]) -> list[tuple[list[dict], str]]:
    """(detections, class) per colour clause whose count passed: its top-`count` objects, the only
    ones the official scorer classifies (one CLIP batch per clause, as officially)."""
    out = []
    for req in meta["include"]:
        found = kept.get(req["class"], [])[: req["count"]]
        if "color" in req and len(found) >= req["count"]:
            out.append((found, req["class"]))
    return out


def result_row(meta: dict, path: Path, kept: dict[str, list[dict]] | None, error: str | None,
               classes: Sequence[str], rules: Rules) -> dict:
    """One results.jsonl row with the official fields; `details` lists kept boxes in class order."""
    row = {"filename": str(path), "tag": meta["tag"], "prompt": meta.get("prompt", ""), "correct": False,
           "reason": f"unreadable image: {error}", "metadata": json.dumps(meta), "details": "{}"}
    if error is not None:
        return {**row, "error": error}
    row["correct"], row["reason"] = decide(meta, kept, rules)
    row["details"] = json.dumps({c: [[*map(_f32, d["box"][:4]), _f32(d["score"])] for d in kept[c]]
                                 for c in classes if c in kept})
    return row


def scorer_identity(detector: Detector, classifier: ColorClassifier, rules: Rules = Rules()) -> dict:
    """What produced a row: detector, its weights (file hash, GenEval's own?), input size, colours and the
    rule settings (a threshold changes the decision as much as the weights do)."""
    return {"detector": detector.name, **detector.weights(), "image_size": detector.image_size,
            "color_classifier": f"{classifier.name}:{classifier.checkpoint}", "color_precision": classifier.precision,
            "rules": asdict(rules)}


def reusable_rows(results: Path, scorer: dict, todo: Sequence[tuple[dict, Path]]) -> list[dict]:
    """Rows of an earlier run that still hold: same scorer (else an error), an image of the folder
    with the same bytes (sha256) and metadata. The file is rewritten without the others (error
    rows, regenerated or removed images, a torn last line), so they are scored again."""
    rows = read_results(results) if results.exists() else []
    for r in rows:
        diff = setting_difference(r, scorer)
        if diff:
            raise InputError(f"{results}: holds rows scored with other settings ({diff}); pass another "
                             f"--results FILE, or delete {results.name} to rescore from scratch")

    def current(path: Path) -> str | None:
        try:
            return content_hash(path.read_bytes())
        except OSError:
            return None
    now = {_key(str(p)): (json.dumps(m), current(p)) for m, p in todo}
    rows = [r for r in rows if r.get("image_sha256") and not r.get("error")
            and now.get(_key(r["filename"])) == (r["metadata"], r["image_sha256"])]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if results.exists() and results.read_text() != text:
        write_text(results, text)
    return rows


@dataclass
class ScoreRun:
    summary: dict
    results: Path
    errors: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)


def score(outdir: str | os.PathLike, detector: Detector, color_classifier: ColorClassifier, *,
          prompts: Sequence[dict] | None = None, results: str | os.PathLike | None = None, n_samples: int | None = 4,
          allow_missing: bool = False, batch_size: int = 8, num_workers: int = 2, rules: Rules = Rules(),
          progress: bool = True) -> ScoreRun:
    """Score every image under `outdir`; `prompts` (metadata lines) makes a missing folder an error.

    `n_samples`: expected images per prompt (None: any). Both checks are waived by `allow_missing`.
    """
    outdir = Path(outdir)
    results = Path(results) if results else outdir / "results.jsonl"
    todo = images_to_score(outdir, detector.classes, prompts, n_samples, allow_missing)
    scorer = scorer_identity(detector, color_classifier, rules)
    rows = reusable_rows(results, scorer, todo)
    done = {_key(r["filename"]) for r in rows}
    todo = [(m, p) for m, p in todo if _key(str(p)) not in done]
    start = time.perf_counter()
    timing = _score_images(todo, detector, color_classifier, rules, scorer, results, rows, batch_size, num_workers,
                           progress)
    timing["total_s"] = time.perf_counter() - start
    timing["elsewhere_s"] = timing["total_s"] - timing["detector_s"] - timing["color_s"]  # decode, rules, I/O
    timing["images"] = len(todo)

    summary = {**summarize(rows), **scorer, "published_comparable": comparability(scorer, rules, rows, n_samples or 4),
               "outdir": str(outdir), "results": str(results), **environment(),
               "timing": {**timing, "images_per_s": len(todo) / timing["total_s"] if todo else None}}
    write_summary(summary, summary_path(results), outdir.name, f"{detector.name}:{scorer['checkpoint']}")
    errors = [(r["filename"], r["error"]) for r in rows if r.get("error")]
    return ScoreRun(summary, results, errors)


def images_to_score(outdir: Path, classes: Sequence[str], prompts: Sequence[dict] | None, n_samples: int | None,
                    allow_missing: bool) -> list[tuple[dict, Path]]:
    """(metadata, image) of every sample under `outdir`, after checking the folders against `prompts`
    and `n_samples`; unfinished or missing folders are errors unless `allow_missing`."""
    folders = read_layout(outdir)
    problems = []
    for f in folders:
        if f.metadata is None:
            problems.append(f"{f.path}/metadata.jsonl: missing (unfinished prompt folder)")
            continue
        validate_metadata(f.metadata, f"{f.path}/metadata.jsonl", set(classes))
        if n_samples and len(f.samples) != n_samples:
            problems.append(f"{f.path}/samples: expected {n_samples} images, found {len(f.samples)}")
    if prompts is not None:
        canon = lambda m: json.dumps(m, sort_keys=True)  # noqa: E731
        missing = Counter(map(canon, prompts)) - Counter(canon(f.metadata) for f in folders if f.metadata)
        problems += [f"{outdir}: no prompt folder for {json.loads(m)['prompt']!r}" for m in missing.elements()]
        known = set(map(canon, prompts))
        problems += [f"{f.path}: prompt {f.metadata.get('prompt')!r} is not in the prompt set (another set's folder?)"
                     for f in folders if f.metadata and canon(f.metadata) not in known]
    if problems and not allow_missing:
        more = f"\n... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise InputError("\n".join(problems[:10]) + more + "\n(--allow-missing scores what is there)")
    todo = [(f.metadata, p) for f in folders if f.metadata for p in f.samples]
    if not todo:
        raise InputError(f"{outdir}: no images to score")
    return todo



def _score_images(todo: list[tuple[dict, Path]], detector: Detector, color_classifier: ColorClassifier, rules: Rules,
                  scorer: dict, results: Path, rows: list[dict], batch_size: int, num_workers: int,
                  progress: bool) -> Counter:
    """Detect, filter, classify colours and decide, batch by batch; each batch's rows are appended (and fsynced)
    to `results` and to `rows`. Returns the detector / colour time."""
    loader = torch.utils.data.DataLoader(_Images([p for _, p in todo]), batch_size=batch_size,
                                         num_workers=num_workers, collate_fn=list)
    timing = Counter()
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as out, tqdm(total=len(todo), desc="geneval-score", disable=not progress) as bar:
        for batch in loader:
            t = time.perf_counter()
            good, detections, refused = _detect(detector, [(i, im) for i, im, err, _ in batch if err is None])
            timing["detector_s"] += time.perf_counter() - t
            kept = {i: filter_detections(d, todo[i][0]["tag"], rules) for (i, _), d in zip(good, detections)}
            t = time.perf_counter()
            for i, im in good:
                for found, cls in colour_requests(todo[i][0], kept[i]):
                    for d, c in zip(found, color_classifier.classify([(im, d, cls) for d in found])):
                        d["color"] = c
            timing["color_s"] += time.perf_counter() - t
            new = [{**result_row(*todo[i], kept.get(i), err or refused.get(i), detector.classes, rules), **scorer,
                    "image_sha256": sha} for i, _, err, sha in batch]
            out.write("".join(json.dumps(r) + "\n" for r in new))
            out.flush()
            os.fsync(out.fileno())
            rows += new
            bar.update(len(batch))
    return timing


def _detect(detector: Detector, good: list[tuple[int, Image.Image]]) -> tuple[list, list, dict[int, str]]:
    """Detections of a batch; if the detector refuses an image (InputError: e.g. too small), each image is
    detected alone and the refused ones become error rows, so one bad image neither stops the run nor leaves
    a results file short of the images before it."""
    try:
        return good, detector.detect([im for _, im in good]) if good else [], {}
    except InputError:
        pass
    kept, detections, refused = [], [], {}
    for i, im in good:
        try:
            detections += detector.detect([im])
            kept.append((i, im))
        except InputError as e:
            refused[i] = f"InputError: {e}"
    return kept, detections, refused


def report(run: ScoreRun) -> str:
    """The official-style printout, plus the scorer identity and any unreadable files."""
    s, c = run.summary, run.summary["published_comparable"]
    sha = f", sha256 {s['checkpoint_sha256'][:16]}..." if s.get("checkpoint_sha256") else ""
    lines = [format_summary(s), f"Detector: {s['detector']} ({s['checkpoint']}{sha}; GenEval's own weights: "
             f"{'yes' if s['official_weights'] else 'no'}; image size {s['image_size']}); colours: "
             f"{s['color_classifier']} ({s['color_precision']})",
             "Comparable to published GenEval: " + ("yes" if c["comparable"] else "no (" + "; ".join(c["why_not"]) + ")"),
             *(f"Note: {n}" for n in c["notes"]), f"Results: {run.results}"]
    lines += [f"UNREADABLE: {f}: {e}" for f, e in run.errors]
    return "\n".join(lines)
