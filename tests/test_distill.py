"""Distillation into the text-to-image-2M layout: determinism, resume, validation, diffusers teachers."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from lightgen.distill import SeededPipeline, T2IFolder, distill, read_captions, sample_key, sample_seed
from lightgen.errors import InputError

CAPTIONS = ["a red circle", "two blue squares", "a triangle left of a cross"]


class Recorder:
    """A deterministic fake teacher that remembers what it was asked to render."""

    name, resolution = "recorder", 8

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, prompts, seeds):
        self.calls.append(list(prompts))
        return [Image.fromarray(np.random.default_rng(s).integers(0, 256, (8, 8, 3), dtype=np.uint8)) for s in seeds]


def files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and p.name != "meta.json"}


def test_layout_index_meta_and_seeds(tmp_path):
    t = Recorder()
    distill(t, CAPTIONS, tmp_path, n=7, seed=5, batch_size=3, extra={"diversity": 3})
    keys = (tmp_path / "index.txt").read_text().split()
    assert keys == [sample_key(i) for i in range(7)] == [f"00000/{i:08d}" for i in range(7)]
    for i, k in enumerate(keys):
        assert json.loads((tmp_path / f"{k}.json").read_text()) == {"prompt": CAPTIONS[i % 3]}
        expected = np.random.default_rng(sample_seed(5, i)).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"{k}.png")), expected)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["teacher"] == "recorder" and meta["resolution"] == 8 and meta["count"] == 7 and meta["complete"]
    assert meta["diversity"] == 3 and "torch" in meta["versions"]
    assert [len(c) for c in t.calls] == [3, 3, 1]
    assert len({sample_seed(5, i) for i in range(1000)}) == 1000 and sample_seed(5, 1) != sample_seed(6, 1)


def test_results_do_not_depend_on_batch_size(tmp_path):
    distill(Recorder(), CAPTIONS, tmp_path / "a", n=5, batch_size=1)
    distill(Recorder(), CAPTIONS, tmp_path / "b", n=5, batch_size=4)
    assert files(tmp_path / "a") == files(tmp_path / "b")


def test_resume_renders_only_missing_samples(tmp_path):
    distill(Recorder(), CAPTIONS, tmp_path, n=6)
    before = files(tmp_path)
    (tmp_path / "00000/00000004.json").unlink()  # a crash between the image and its caption
    (tmp_path / "00000/00000001.png").unlink()
    (tmp_path / "00000/00000001.json").unlink()
    (tmp_path / "00000/.00000005.png.tmp123").write_bytes(b"partial")  # a crash mid-write
    t = Recorder()
    distill(t, CAPTIONS, tmp_path, n=6)
    assert t.calls == [[CAPTIONS[1], CAPTIONS[1]]]
    after = files(tmp_path)
    after.pop("00000/.00000005.png.tmp123")
    assert after == before
    with pytest.raises(InputError, match="another distillation .*seed"):
        distill(Recorder(), CAPTIONS, tmp_path, n=6, seed=1)


def test_bad_input_is_named(tmp_path):
    with pytest.raises(InputError, match="captions: expected at least one"):
        distill(Recorder(), [], tmp_path)
    with pytest.raises(InputError, match="line 2"):
        distill(Recorder(), ["a circle", "  "], tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="writable directory"):
        distill(Recorder(), CAPTIONS, tmp_path / "file")
    (tmp_path / "caps.txt").write_text("\n\n")
    with pytest.raises(InputError, match="caps.txt: expected one caption per line"):
        read_captions(tmp_path / "caps.txt")
    (tmp_path / "caps.txt").write_text("a circle\n\n two squares \n")
    assert read_captions(tmp_path / "caps.txt") == ["a circle", "two squares"]


def test_folder_reader_yields_pairs_and_validates(tmp_path):
    distill(Recorder(), CAPTIONS, tmp_path, n=4)
    ds = T2IFolder(tmp_path)
    assert len(ds) == 4
    image, caption = ds[3]
    assert caption == CAPTIONS[0] and image.mode == "RGB" and image.size == (8, 8)
    Image.open(tmp_path / "00000/00000002.png").save(tmp_path / "00000/00000002.jpg")  # text-to-image-2M's format
    (tmp_path / "00000/00000002.png").unlink()
    assert T2IFolder(tmp_path)[2][1] == CAPTIONS[2]
    (tmp_path / "00000/00000001.json").write_text('{"caption": "x"}')
    with pytest.raises(InputError, match="00000001.json: field 'prompt'"):
        T2IFolder(tmp_path)[1]
    (tmp_path / "00000/00000001.png").unlink()
    with pytest.raises(InputError, match="00000001.json: caption without image"):
        T2IFolder(tmp_path)
    (tmp_path / "index.txt").write_text("00000/00000000\n00000/00000009\n")
    with pytest.raises(InputError, match="00000009.json: missing"):
        T2IFolder(tmp_path)
    (tmp_path / "index.txt").write_text("\n")
    with pytest.raises(InputError, match="empty dataset"):
        T2IFolder(tmp_path)
    with pytest.raises(InputError, match="index.txt: missing"):
        T2IFolder(tmp_path / "00000")


def test_library_does_not_import_bench():
    code = "import sys, lightgen.distill; sys.exit(any(m.split('.')[0] == 'bench' for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_sd_pipeline):
    return tiny_sd_pipeline


@pytest.fixture
def one_thread():
    """Tiny models: OpenMP synchronisation would dominate (and explode on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_seeded_diffusers_pipeline_from_a_local_path(tiny_pipeline, tmp_path, one_thread):
    t = SeededPipeline(tiny_pipeline, num_inference_steps=2, height=16, width=16)
    assert t.name == str(tiny_pipeline) and t.resolution == 16
    distill(t, CAPTIONS, tmp_path / "a", n=4, seed=3, batch_size=4)
    distill(t, CAPTIONS, tmp_path / "b", n=4, seed=3, batch_size=1)
    a, b = T2IFolder(tmp_path / "a"), T2IFolder(tmp_path / "b")
    images = [np.asarray(a[i][0], np.int16) for i in range(4)]
    assert images[0].shape == (16, 16, 3) and images[0].std() > 0
    assert not np.array_equal(images[0], images[3])  # same caption, another seed
    for i in range(4):  # per-image generators: batch size only changes float rounding
        assert np.abs(images[i] - np.asarray(b[i][0], np.int16)).max() <= 2
    with pytest.raises(InputError, match="cannot load a diffusers pipeline"):
        SeededPipeline(tmp_path / "nothing-here")
