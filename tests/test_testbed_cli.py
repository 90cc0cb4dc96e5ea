"""`lightgen-bench testbed ...` and `lightgen-bench distill`."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from bench.cli import main
from bench.testbed.prompts import PROMPTS_PATH
from bench.testbed.teacher import render
from lightgen.distill import T2IFolder


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_render_writes_the_teachers_image(tmp_path):
    r = run("testbed", "render", "two red circles", tmp_path / "a.png", "--resolution", 64, "--seed", 3)
    assert r.exit_code == 0, r.output
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(render("two red circles", 64, 3)))


@pytest.mark.parametrize("args, message", [
    (("testbed", "render", "a hexagon", "x.png"), "unknown word 'hexagon'; known words: 2, 3, 4, a"),
    (("testbed", "render", "five circles", "x.png"), "unknown word 'five'"),
    (("testbed", "render", "a red circle left of a red circle", "x.png"), "cannot be told apart"),
    (("testbed", "render", "a circle", "x.png", "--resolution", 16), "resolution: expected >= 32"),
    (("testbed", "dataset", "--n", 10, "--diversity", 10**7, "--out", "d"), "diversity: expected 1.."),
    (("distill", "--teacher", "testbed", "--captions", "missing.txt", "--out", "d"), "missing.txt: expected"),
])
def test_bad_input_exits_2_with_a_message(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    r = run(*args)
    assert r.exit_code == 2 and message in r.output, r.output


def test_dataset_is_a_resumable_t2i_folder(tmp_path):
    args = ("testbed", "dataset", "--n", 30, "--diversity", 6, "--resolution", 32, "--seed", 1, "--out", tmp_path)
    assert run(*args).exit_code == 0
    ds = T2IFolder(tmp_path)
    captions = [ds.caption(i) for i in range(len(ds))]
    assert len(ds) == 30 and len(set(captions)) == 6 and ds[0][0].size == (32, 32)
    assert json.loads((tmp_path / "meta.json").read_text())["diversity"] == 6
    assert run(*args).exit_code == 0  # a rerun finds everything done
    r = run("testbed", "dataset", "--n", 30, "--diversity", 7, "--out", tmp_path)
    assert r.exit_code == 2 and "another distillation" in r.output


def test_distill_with_the_testbed_teacher(tmp_path):
    (tmp_path / "caps.txt").write_text("a red circle\nthree blue squares\n")
    r = run("distill", "--teacher", "testbed", "--captions", tmp_path / "caps.txt", "--out", tmp_path / "d",
            "--n", 5, "--resolution", 64)
    assert r.exit_code == 0, r.output
    ds = T2IFolder(tmp_path / "d")
    assert [ds.caption(i) for i in range(5)] == ["a red circle", "three blue squares"] * 2 + ["a red circle"]
    assert ds[1][0].size == (64, 64)


def test_prompts_and_grid_regenerate(tmp_path):
    assert run("testbed", "prompts", "--out", tmp_path / "p.jsonl").exit_code == 0
    assert (tmp_path / "p.jsonl").read_text() == PROMPTS_PATH.read_text()
    assert run("testbed", "grid", "--out", tmp_path / "g.png").exit_code == 0
    grid = Image.open(tmp_path / "g.png")
    assert grid.width > 6 * 128 and grid.height > 6 * 128


@pytest.mark.parametrize("command", [["testbed"], ["testbed", "render"], ["testbed", "dataset"], ["testbed", "prompts"],
                                     ["testbed", "grid"], ["distill"]])
def test_help_has_examples(command):
    r = run(*command, "--help")
    assert r.exit_code == 0 and "Example" in r.output and "lightgen-bench" in r.output
