"""GenEval folder layout round trip, and sharded, resumable generation with every generator adapter."""
import json

import numpy as np
import pytest
from PIL import Image

from bench.geneval.generate import generate, get_generator, sample_seed, shard_of
from bench.geneval.layout import OFFICIAL_PROMPTS, OBJECT_NAMES, is_complete, read_layout, read_prompts, write_prompt
from lightgen.errors import InputError

PROMPTS = [{"tag": "single_object", "include": [{"class": c, "count": 1}], "prompt": f"a photo of a {c}"}
           for c in ("dog", "cat", "car", "bus", "cup")]


class SeedPainter:
    """Fake generator: a flat image whose colour encodes the seed; records its calls."""

    name = "seed-painter"

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, seeds):
        self.calls.append(list(prompts))
        return [Image.new("RGB", (8, 8), tuple(int(b) for b in s.to_bytes(4, "little")[:3])) for s in seeds]


def pixels(path):
    return np.asarray(Image.open(path)).copy()


def test_official_prompts_and_class_list():
    prompts = read_prompts(OFFICIAL_PROMPTS)
    assert len(prompts) == 553 and len(OBJECT_NAMES) == 80
    assert [sum(p["tag"] == t for p in prompts) for t in ("single_object", "two_object", "counting", "colors",
                                                            "position", "color_attr")] == [80, 99, 80, 94, 100, 100]
    assert {c["class"] for p in prompts for c in p["include"]} == set(OBJECT_NAMES)
    assert (OFFICIAL_PROMPTS.parent / "LICENSE").read_text().startswith("MIT License")


def test_layout_round_trip(tmp_path):
    ims = [Image.new("RGB", (8, 6), (k, 2 * k, 3 * k)) for k in range(3)]
    d = write_prompt(tmp_path, 7, PROMPTS[1], ims, grid=True)
    assert d == tmp_path / "00007" and json.loads((d / "metadata.jsonl").read_text()) == PROMPTS[1]
    assert sorted(p.name for p in (d / "samples").iterdir()) == ["0000.png", "0001.png", "0002.png"]
    assert Image.open(d / "grid.png").size == (24, 6)
    [folder] = read_layout(tmp_path)
    assert folder.metadata == PROMPTS[1] and [p.name for p in folder.samples] == ["0000.png", "0001.png", "0002.png"]
    assert all((pixels(p) == np.asarray(im)).all() for p, im in zip(folder.samples, ims))
    assert is_complete(tmp_path, 7, PROMPTS[1], 3) and not is_complete(tmp_path, 7, PROMPTS[1], 4)
    write_prompt(tmp_path, 7, PROMPTS[1], ims[:2])  # fewer samples: the stale one goes
    assert [p.name for p in read_layout(tmp_path)[0].samples] == ["0000.png", "0001.png"]


def test_read_layout_accepts_what_the_official_evaluator_accepts(tmp_path):
    d = tmp_path / "3"  # any digit-only folder name; the metadata says which prompt it is
    (d / "samples").mkdir(parents=True)
    (d / "metadata.jsonl").write_text(json.dumps(PROMPTS[0]))
    for name in ("00000.png", "00001.png", "0002.PNG", "0003.jpg", "x1.png", "12.png.bak", "grid.png"):
        Image.new("RGB", (4, 4)).save(d / "samples" / name, format="PNG")
    (tmp_path / "notes").mkdir()
    (tmp_path / "00009").mkdir()  # unfinished: no metadata yet
    f3, f9 = read_layout(tmp_path)
    assert [p.name for p in f3.samples] == ["00000.png", "00001.png", "12.png.bak"]  # re.match(r"\d+\.png")
    assert f9.metadata is None and f9.samples == []
    (d / "metadata.jsonl").write_text("{not json")
    with pytest.raises(InputError, match="metadata.jsonl"):
        read_layout(tmp_path)


def test_seeds_independent_of_batch_size_and_shards(tmp_path):
    generate(SeedPainter(), PROMPTS, tmp_path / "a", n_samples=3, batch_size=1, seed=5, progress=False)
    generate(SeedPainter(), PROMPTS, tmp_path / "b", n_samples=3, batch_size=7, seed=5, shard=(1, 2), progress=False)
    generate(SeedPainter(), PROMPTS, tmp_path / "b", n_samples=3, batch_size=4, seed=5, shard=(0, 2), progress=False)
    a, b = read_layout(tmp_path / "a"), read_layout(tmp_path / "b")
    assert [f.metadata for f in a] == [f.metadata for f in b] == PROMPTS
    assert all((pixels(p) == pixels(q)).all() for fa, fb in zip(a, b) for p, q in zip(fa.samples, fb.samples))
    assert len({sample_seed(5, i, k) for i in range(5) for k in range(3)}) == 15
    assert sample_seed(5, 1, 2) != sample_seed(6, 1, 2)
    # one derivation for GenEval (seed, prompt, sample) and distillation (seed, sample): numpy's SeedSequence
    # hash, which every committed image was generated with
    for parts in ((5, 1, 2), (0, 7)):
        assert sample_seed(*parts) == int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def test_resume_skips_complete_and_redoes_partial(tmp_path):
    gen = SeedPainter()
    assert generate(gen, PROMPTS, tmp_path, n_samples=2, batch_size=3, progress=False) == 5
    before = pixels(tmp_path / "00002" / "samples" / "0001.png")
    (tmp_path / "00002" / "samples" / "0001.png").unlink()
    (tmp_path / "00004" / "metadata.jsonl").unlink()
    gen.calls.clear()
    assert generate(gen, PROMPTS, tmp_path, n_samples=2, batch_size=3, progress=False) == 2
    assert sorted(p for call in gen.calls for p in call) == sorted([PROMPTS[2]["prompt"], PROMPTS[4]["prompt"]] * 2)
    assert (pixels(tmp_path / "00002" / "samples" / "0001.png") == before).all()
    assert generate(gen, PROMPTS, tmp_path, n_samples=2, progress=False) == 0


def test_accelerate_ranks_split_shards(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert shard_of((0, 1)) == (1, 2) and shard_of((1, 3)) == (3, 6)  # i * W + rank of n * W
    with pytest.raises(InputError, match="shard"):
        shard_of((3, 3))


def test_diffusers_adapter_on_tiny_random_pipeline(tmp_path, tiny_sd_pipeline):
    gen = get_generator(pipeline=str(tiny_sd_pipeline), steps=2, resolution=16, device="cpu")  # the hub-id/path route
    generate(gen, PROMPTS[:2], tmp_path / "out", n_samples=2, batch_size=3, seed=1, progress=False)
    first = [pixels(p) for f in read_layout(tmp_path / "out") for p in f.samples]
    assert len(first) == 4 and first[0].shape == (16, 16, 3)
    again = gen([PROMPTS[1]["prompt"]], [sample_seed(1, 1, 1)])[0]  # same (prompt, seed), alone in a batch
    assert np.abs(np.asarray(again).astype(int) - first[3]).max() <= 1


def test_lightgen_adapter_on_tiny_random_pipeline(tmp_path):
    from lightgen.codecs import build_codec
    from lightgen.config import LightGenConfig
    from lightgen.mar import LightGen
    from lightgen.pipeline import LightGenPipeline, build_text_encoder

    config = LightGenConfig.from_preset("testbed", width=32, encoder_depth=1, decoder_depth=1, cross_depth=1,
                                        text_depth=1, num_heads=2, diffloss_depth=1, diffloss_width=32,
                                        num_sampling_steps=2)
    LightGenPipeline(LightGen(config), build_text_encoder(config), build_codec(config)).save_pretrained(tmp_path / "p")
    gen = get_generator(ckpt=str(tmp_path / "p"), steps=2)
    generate(gen, PROMPTS[:2], tmp_path / "out", n_samples=2, batch_size=3, seed=1, progress=False)
    first = [pixels(p) for f in read_layout(tmp_path / "out") for p in f.samples]
    assert len(first) == 4 and first[0].shape == (32, 32, 3)
    assert (np.asarray(gen([PROMPTS[1]["prompt"]], [sample_seed(1, 1, 1)])[0]) == first[3]).all()
