"""A sweep of hostile inputs per command (issue 26): each must end with exit code 2 (1 where an image is
unreadable), exactly one "Error:" line naming the file, field or flag, no traceback, and the workspace as it
was (no run folder, meta.json, partial results or probe file left behind)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from bench.cli import main

TRAIN = "eval_configs/train/testbed_kd.yaml"
ROOT = Path(__file__).resolve().parents[1]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory):
    """Small real inputs, made once: a scored testbed GenEval folder, a distilled dataset, a tiny pipeline."""
    root = tmp_path_factory.mktemp("hostile")
    r = invoke("geneval", "--testbed", "--limit", 2, "--n-samples", 1, "--outdir", root / "geneval", "--threads", 1)
    assert r.exit_code == 0, r.output
    r = invoke("testbed", "dataset", "--n", 4, "--diversity", 4, "--out", root / "data", "--threads", 1)
    assert r.exit_code == 0, r.output
    return root


@pytest.fixture(scope="session")
def pipe(tmp_path_factory) -> Path:
    """A tiny random-init LightGen pipeline directory (only the commands that load one need it)."""
    root = tmp_path_factory.mktemp("pipe")
    from lightgen.codecs import build_codec
    from lightgen.config import LightGenConfig
    from lightgen.mar import LightGen
    from lightgen.pipeline import LightGenPipeline, build_text_encoder
    config = LightGenConfig.from_preset("testbed", width=32, encoder_depth=1, decoder_depth=1, cross_depth=1,
                                        text_depth=1, num_heads=2, diffloss_depth=1, diffloss_width=32,
                                        num_sampling_steps=2)
    LightGenPipeline(LightGen(config), build_text_encoder(config), build_codec(config)).save_pretrained(root)
    return root


def _png16(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32), 40000, np.uint16)).save(path)  # mode I;16: convert("RGB") clips to white


def _dataset(t: Path, name: str, image) -> Path:
    d = t / name
    (d / "00000").mkdir(parents=True)
    (d / "index.txt").write_text("00000/00000000\n")
    (d / "00000" / "00000000.json").write_text(json.dumps({"prompt": "a red circle"}))
    image(d / "00000" / "00000000.png")
    return d


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# (id, setup(t, fx) -> argv, substring the Error line must hold)
CASES = [
    # output locations that cannot be written
    ("render-parent-is-file", lambda t, fx: ["testbed", "render", "a red circle", t / "f" / "x.png"], "f"),
    ("table-output-parent-is-file", lambda t, fx: ["table", "--paper-table", 1, "--output", t / "f" / "t.md"],
     "--output"),
    ("compare-output-parent-is-file", lambda t, fx: ["compare", fx / "geneval", fx / "geneval", "--output",
                                                     t / "f" / "d.json"], "--output"),
    ("geneval-outdir-parent-is-file", lambda t, fx: ["geneval", "--testbed", "--limit", 1, "--outdir", t / "f" / "o"],
     "--outdir"),
    ("sample-out-parent-is-file", lambda t, fx: ["sample", "--prompt", "a red circle", "--steps", 1, "--out",
                                                 t / "f" / "o"], "--out"),
    ("prompts-out-parent-is-file", lambda t, fx: ["testbed", "prompts", "--out", t / "f" / "p.jsonl"], "--out"),
    ("grid-out-is-a-folder", lambda t, fx: ["testbed", "grid", "--out", t], "--out"),
    ("table-format-mismatch", lambda t, fx: ["table", "--paper-table", 1, "--format", "csv", "--output", t / "t.tex"],
     "--format"),
    # malformed files
    ("compare-summary-not-json", lambda t, fx: _write(t / "s" / "summary.json", "{oops") and
     ["compare", t / "s", fx / "geneval"], "summary.json"),
    ("compare-summary-a-list", lambda t, fx: _write(t / "s" / "summary.json", "[1, 2]") and
     ["compare", t / "s", fx / "geneval"], "summary.json"),
    ("compare-row-without-tag", lambda t, fx: _write(t / "r" / "results.jsonl", '{"filename": "x"}\n') and
     ["compare", t / "r" / "results.jsonl", fx / "geneval"], "results.jsonl:1"),
    ("compare-jsonl-line-a-list", lambda t, fx: _write(t / "r" / "results.jsonl", "[1]\n") and
     ["compare", t / "r" / "results.jsonl", fx / "geneval"], "results.jsonl:1"),
    ("prompts-line-a-list", lambda t, fx: _write(t / "p.jsonl", "[1]\n") and
     ["geneval-score", _copy(fx / "geneval", t / "g"), "--prompts", t / "p.jsonl"], "p.jsonl:1"),
    ("demo-section-a-list", lambda t, fx: _write(t / "c.yaml", "data: [1, 2]\n") and
     ["demo", "--config", t / "c.yaml", "--work", t / "w"], "data"),
    ("demo-binary-config", lambda t, fx: _write(t / "c.yaml", b"\xff\xfe\x00\x81") and
     ["demo", "--config", t / "c.yaml", "--work", t / "w"], "c.yaml"),
    ("cache-binary-config", lambda t, fx: _write(t / "c.yaml", b"\xff\xfe\x00\x81") and
     ["cache", fx / "data", "--out", t / "c", "--config", t / "c.yaml"], "c.yaml"),
    ("cache-meta-not-json", lambda t, fx: _write(t / "c" / "meta.json", "{bad") and
     ["cache", fx / "data", "--out", t / "c", "--config", ROOT / TRAIN], "meta.json"),
    ("fid-npz-not-an-archive", lambda t, fx: _write(t / "a.npz", "text") and
     ["fid", t / "a.npz", t / "a.npz"], "a.npz"),
    # --set values of the wrong type, unknown nested keys, unparsable YAML
    ("set-not-yaml", lambda t, fx: ["train", "--config", ROOT / TRAIN, "--set", "steps=[1", "--set",
                                    f"out={t / 'run'}"], "--set"),
    ("set-batch-size-abc", lambda t, fx: ["train", "--config", ROOT / TRAIN, "--set", "batch_size=abc", "--set",
                                          f"out={t / 'run'}"], "batch_size"),
    ("set-lr-nan", lambda t, fx: ["train", "--config", ROOT / TRAIN, "--set", "lr=.nan", "--set", f"out={t / 'run'}"],
     "lr"),
    ("set-width-negative", lambda t, fx: ["train", "--config", ROOT / TRAIN, "--set", "model.width=-8", "--set",
                                          f"out={t / 'run'}"], "width"),
    ("set-unknown-nested-key", lambda t, fx: ["train", "--config", ROOT / TRAIN, "--set", "model.bogus_field=1",
                                              "--set", f"out={t / 'run'}"], "bogus_field"),
    # numbers nobody meant
    ("sample-guidance-nan", lambda t, fx: ["sample", "--prompt", "x", "--guidance-scale", "nan", "--out", t / "o"],
     "--guidance-scale"),
    ("sample-temperature-negative", lambda t, fx: ["sample", "--prompt", "x", "--temperature", -1, "--out", t / "o"],
     "--temperature"),
    ("sample-resolution-zero", lambda t, fx: ["sample", "--prompt", "x", "--resolution", 0, "--out", t / "o"],
     "--resolution"),
    ("geneval-guidance-inf", lambda t, fx: ["geneval", "--testbed", "--guidance-scale", "inf", "--outdir", t / "o"],
     "--guidance-scale"),
    ("geneval-score-threshold-nan", lambda t, fx: ["geneval-score", _copy(fx / "geneval", t / "g"), "--threshold",
                                                   "nan"], "--threshold"),
    ("fid-num-negative", lambda t, fx: ["fid", fx / "geneval", fx / "geneval", "--num", -1], "--num"),
    ("fid-batch-size-zero", lambda t, fx: ["fid", fx / "geneval", fx / "geneval", "--batch-size", 0], "--batch-size"),
    ("fid-nan-statistics", lambda t, fx: _npz(t / "a.npz", np.nan) and ["fid", t / "a.npz", t / "a.npz"], "a.npz"),
    ("probe-n-zero", lambda t, fx: ["probe", fx / "data", "--cache", fx / "data", "--n", 0], "--n"),
    ("probe-kd-every-zero", lambda t, fx: ["probe-kd", "curve", "--every", 0, "--work", t / "w"], "--every"),
    ("perf-iters-zero", lambda t, fx: ["perf", "--iters", 0], "--iters"),
    ("testbed-dataset-n-zero", lambda t, fx: ["testbed", "dataset", "--n", 0, "--out", t / "d"], "--n"),
    ("distill-seed-negative", lambda t, fx: _write(t / "c.txt", "a red circle\n") and
     ["distill", "--teacher", "testbed", "--captions", t / "c.txt", "--out", t / "d", "--seed", -1], "--seed"),
    # images
    ("fid-text-named-png", lambda t, fx: _write(t / "i" / "0.png", "text") and _write(t / "i" / "1.png", "text") and
     ["fid", t / "i", t / "i", "--extractor", "testbed", "--no-cache"], "0.png"),
    ("cache-16-bit-png", lambda t, fx: _dataset(t, "d16", _png16) and
     ["cache", t / "d16", "--out", t / "c", "--config", ROOT / TRAIN], "16-bit"),
    # writing into a folder that holds other results
    ("distill-into-geneval-folder", lambda t, fx: _write(t / "c.txt", "a red circle\n") and
     ["distill", "--teacher", "testbed", "--captions", t / "c.txt", "--out", _copy(fx / "geneval", t / "g")], "out"),
    ("dataset-into-geneval-folder", lambda t, fx: ["testbed", "dataset", "--n", 2, "--out",
                                                   _copy(fx / "geneval", t / "g")], "out"),
    ("cache-into-geneval-folder", lambda t, fx: ["cache", fx / "data", "--out", _copy(fx / "geneval", t / "g"),
                                                 "--config", ROOT / TRAIN], "out"),
    ("convert-official-into-non-empty", lambda t, fx: _write(t / "x.pth", "x") and _write(t / "o" / "keep", "") and
     ["convert-official", t / "x.pth", t / "o"], "OUT_DIR"),
    # refused inputs must leave nothing behind
    ("distill-unknown-word", lambda t, fx: _write(t / "c.txt", "a purple dragon\n") and
     ["distill", "--teacher", "testbed", "--captions", t / "c.txt", "--out", t / "d"], "dragon"),
    ("dpo-pairs-unknown-word", lambda t, fx: _write(t / "c.txt", "a purple dragon\n") and
     ["dpo-pairs", "--ckpt", t / "pipe", "--teacher", "testbed", "--captions", t / "c.txt", "--out", t / "p",
      "--steps", 1], "dragon"),
    ("demo-bad-kd-key", lambda t, fx: _write(t / "c.yaml", "kd: {bogus: 1}\n") and
     ["demo", "--config", t / "c.yaml", "--work", t / "w"], "bogus"),
    # messages that must blame the right thing
    ("geneval-without-generator", lambda t, fx: ["geneval", "--outdir", t / "o"], "--ckpt"),
]


def _write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return path


def _npz(path: Path, value: float) -> Path:
    np.savez(path, mu=np.full(3, value), sigma=np.eye(3))
    return path


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("name,setup,field", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_ends_in_one_line_and_writes_nothing(name, setup, field, fixtures, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)  # default outputs (runs/...) would land here
    (tmp_path / "f").write_text("a file where a folder is expected")
    if name.startswith("dpo-pairs"):
        (tmp_path / "pipe").symlink_to(request.getfixturevalue("pipe"))
    args = setup(tmp_path, fixtures)
    before = snapshot(tmp_path)
    r = invoke(*args)
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert "Traceback" not in r.output and len(errors) == 1 and field in errors[0], r.output
    assert snapshot(tmp_path) == before


def test_a_16_bit_image_is_an_error_row_not_a_white_image(fixtures, tmp_path):
    folder = _copy(fixtures / "geneval", tmp_path / "g")
    for p in folder.glob("*/samples/*.png"):
        _png16(p)
    r = invoke("geneval-score", folder, "--n-samples", 1, "--allow-missing")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.count("UNREADABLE") == 2 and "16-bit" in r.output


def test_images_the_detector_refuses_become_error_rows_not_a_short_file(fixtures, tmp_path):
    folder = _copy(fixtures / "geneval", tmp_path / "g")
    for p in folder.glob("*/samples/*.png"):
        Image.new("RGB", (1, 1)).save(p)
    r = invoke("geneval-score", folder, "--n-samples", 1, "--allow-missing")
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert len(rows) == 2 and all("32 px" in row["error"] for row in rows)
