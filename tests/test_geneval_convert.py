"""GenEval's mmdet checkpoint -> transformers: key table, conversion, bad input, the detector on it.

`fixtures/geneval_m2f_official_keys.tsv` lists the official state dict (mmdet 3.x name, the 2.x name,
shape), written from mmdet's own model by `python -m bench.geneval.parity_mmdet keys`.
"""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from bench.cli import main
from bench.geneval import convert as conv
from bench.geneval.detectors import Mask2FormerDetector
from lightgen.errors import InputError

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE = FIXTURES / "geneval_m2f_official_keys.tsv"


def official_keys() -> list[tuple[str, str, tuple[int, ...]]]:
    rows = [line.split("\t") for line in FIXTURE.read_text().splitlines() if not line.startswith("#")]
    return [(new, old, tuple(int(x) for x in shape.split("x") if x)) for new, old, shape in rows]


def mmdet_relative_position_index(window: int = 7) -> torch.Tensor:
    """As mmdet's WindowMSA builds it (double_step_seq, then flip), independently of the converter."""
    seq = (torch.arange(0, (2 * window - 1) * window, 2 * window - 1)[:, None] + torch.arange(window)).reshape(1, -1)
    return (seq + seq.T).flip(1)


def test_key_table_covers_every_official_tensor_exactly_once():
    rules, keys = conv.official_layout(), official_keys()
    assert len(rules) == len({r.src for r in rules}) == len(keys)  # each official tensor has exactly one rule
    assert {r.src: r.shape for r in rules} == {new: shape for new, _, shape in keys}  # same names and shapes
    assert all(conv.mmdet3_name(old) == new for new, old, _ in keys)  # the 2.x names map onto them
    targets = [t for r in rules for t in r.dst]
    assert len(targets) == len(set(targets))  # no transformers tensor is filled twice
    assert {r.src for r in rules if not r.dst} == {k for k, _, _ in keys if k.endswith("relative_position_index")}


@pytest.fixture(scope="module")
def official_pth(tmp_path_factory):
    """A random checkpoint with the official keys in the mmdet 2.x layout (GenEval's file format)."""
    g = torch.Generator().manual_seed(0)
    state = {old: mmdet_relative_position_index() if new.endswith("relative_position_index")
             else torch.randn(shape, generator=g) * 0.05 for new, old, shape in official_keys()}
    path = tmp_path_factory.mktemp("mmdet") / "m2f_swin-s_random-00000000.pth"
    torch.save({"meta": {"CLASSES": ("person",) * 80, "mmdet_version": "2.25.0", "seed": np.int64(7)},
                "state_dict": state}, path, _use_new_zipfile_serialization=False)  # as mmdet's publish_model
    return path, state


@pytest.fixture(scope="module")
def converted(official_pth, tmp_path_factory):
    out = tmp_path_factory.mktemp("conv") / "geneval-m2f"
    r = CliRunner().invoke(main, ["convert-geneval-detector", str(official_pth[0]), str(out)])
    assert r.exit_code == 0, r.output
    assert "mmdet 2.x keys" in r.output and "GenEval's own weights: no" in r.output
    return out


def test_conversion_fills_every_weight_and_reorders_like_mmdet(official_pth, converted):
    from transformers import Mask2FormerForUniversalSegmentation

    state = official_pth[1]
    model = Mask2FormerForUniversalSegmentation.from_pretrained(converted).eval()
    source = conv.read_source(converted)
    assert source["sha256"] == conv.sha256_file(official_pth[0]) and source["layout"] == "mmdet 2.x"
    assert model.config.num_labels == 80 and model.config.id2label[0] == "person"
    block = model.model.pixel_level_module.encoder.swin.encoder.layers[2].blocks[17]
    qkv = state["backbone.stages.2.blocks.17.attn.w_msa.qkv.weight"]
    assert torch.equal(torch.cat([block.attention.q_proj.weight, block.attention.k_proj.weight,
                                  block.attention.v_proj.weight]), qkv)
    layer = model.model.transformer_module.decoder.layers[8]
    assert torch.equal(layer.cross_attn.in_proj_weight,
                       state["panoptic_head.transformer_decoder.layers.8.attentions.0.attn.in_proj_weight"])
    assert torch.equal(layer.self_attn.v_proj.bias,
                       state["panoptic_head.transformer_decoder.layers.8.attentions.1.attn.in_proj_bias"][512:])
    # patch merging as mmdet computes it: nn.Unfold(2, stride 2) -> LayerNorm -> Linear
    merge, d = model.model.pixel_level_module.encoder.swin.encoder.layers[0].downsample, 96
    x = torch.randn(1, 6, 8, d)
    unfolded = torch.nn.functional.unfold(x.permute(0, 3, 1, 2), 2, stride=2).transpose(1, 2)
    norm = torch.nn.functional.layer_norm(unfolded, (4 * d,), state["backbone.stages.0.downsample.norm.weight"],
                                          state["backbone.stages.0.downsample.norm.bias"])
    want = norm @ state["backbone.stages.0.downsample.reduction.weight"].T
    with torch.no_grad():
        assert torch.allclose(merge(x.reshape(1, 48, d), (6, 8)), want, atol=1e-5)


def test_detector_reads_a_pth_once_through_the_cache(official_pth, converted, tmp_path, monkeypatch):
    monkeypatch.setattr(conv, "CACHE_DIR", tmp_path)
    sha = conv.sha256_file(official_pth[0])
    (tmp_path / f"mask2former-{sha[:16]}").symlink_to(converted)  # a finished earlier conversion
    det = Mask2FormerDetector(checkpoint=str(official_pth[0]), image_size=64, device="cpu")
    want = {"checkpoint": official_pth[0].name, "checkpoint_sha256": sha, "official_weights": False}
    assert det.weights() == want
    assert Mask2FormerDetector(checkpoint=str(converted)).weights() == want  # the directory names its source
    out = det.detect([Image.new("RGB", (48, 40), (200, 30, 30))])
    assert len(out[0]) == 100 and out[0][0]["mask"].shape == (40, 48)
    monkeypatch.setitem(conv.OFFICIAL_FILES, sha[:8], "test")  # GenEval's file is recognised by its sha256
    assert Mask2FormerDetector(checkpoint=str(converted)).weights()["official_weights"] is True


def test_download_checks_mmdet_hash_suffix(tmp_path, monkeypatch):
    monkeypatch.setattr(conv, "CACHE_DIR", tmp_path / "cache")
    data = tmp_path / "payload"
    data.write_bytes(b"weights")
    sha = conv.sha256_file(data)
    good, bad = tmp_path / f"m-{sha[:8]}.pth", tmp_path / "m-00000000.pth"
    good.write_bytes(b"weights")
    bad.write_bytes(b"weights")
    assert conv.download(good.as_uri()).read_bytes() == b"weights"
    with pytest.raises(InputError, match="download failed"):
        conv.download(bad.as_uri())
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [good.name]  # nothing half-written


class NotAllowed:
    pass


def small_state(**shapes) -> dict:
    state = {"backbone.patch_embed.projection.weight": torch.zeros(96, 3, 4, 4),
             "panoptic_head.cls_embed.weight": torch.zeros(81, 256)}
    for s, depth in enumerate(shapes.get("depths", (2, 2, 18, 2))):
        state.update({f"backbone.stages.{s}.blocks.{b}.norm1.weight": torch.zeros(1) for b in range(depth)})
    if "classes" in shapes:
        state["panoptic_head.cls_embed.weight"] = torch.zeros(shapes["classes"] + 1, 256)
    return state


@pytest.mark.parametrize("make,message", [
    (lambda p: torch.save({"state_dict": small_state(), "meta": {"hook": NotAllowed()}}, p),
     r"refused to unpickle .*NotAllowed"),
    (lambda p: torch.save({"state_dict": small_state(depths=(2, 2, 6, 2))}, p), r"depths 2-2-6-2; expected Swin-S"),
    (lambda p: torch.save({"state_dict": small_state(classes=133)}, p), r"133 classes \(133 = the COCO panoptic"),
    (lambda p: (torch.save({"state_dict": small_state()}, p), p.write_bytes(p.read_bytes()[:3000])),
     "not a readable PyTorch checkpoint"),
    (lambda p: torch.save({"state_dict": {**small_state(), "extra": torch.zeros(1)}}, p), "missing keys"),
    (lambda p: pickle.dump({"state_dict": [1, 2]}, p.open("wb")), "not a readable PyTorch checkpoint"),
])
def test_bad_checkpoints_exit_2_naming_the_file_and_write_nothing(tmp_path, make, message):
    path = tmp_path / "bad.pth"
    make(path)
    r = CliRunner().invoke(main, ["convert-geneval-detector", str(path), str(tmp_path / "out" / "m2f")])
    assert r.exit_code == 2, r.output
    assert str(path) in r.output and __import__("re").search(message, r.output), r.output
    assert not (tmp_path / "out").exists()


def test_parity_with_mmdet_when_installed(tmp_path):
    """The full check of `bench.geneval.parity_mmdet`, small (CI has no mmdet; the record is in results/)."""
    pytest.importorskip("mmdet")
    from bench.geneval.parity_mmdet import run

    record = run(tmp_path, n_images=2, n_sensitivity=1, image_size=128, seed=0)
    assert record["pass"] and record["layouts_2x_3x_convert_identically"], record


def test_geneval_score_prints_which_checkpoint_scored(converted, tiny_mask2former_dir, tmp_path):
    from bench.geneval.layout import write_prompt

    meta = {"tag": "single_object", "include": [{"class": "car", "count": 1}], "prompt": "a photo of a car"}
    write_prompt(tmp_path / "out", 0, meta, [Image.new("RGB", (48, 40), (200, 30, 30))])
    (tmp_path / "prompts.jsonl").write_text(__import__("json").dumps(meta) + "\n")
    other = str(tiny_mask2former_dir)  # stands in for another checkpoint (e.g. the HF port)
    args = ["geneval-score", str(tmp_path / "out"), "--prompts", str(tmp_path / "prompts.jsonl"), "--n-samples", "1",
            "--image-size", "64", "--color-classifier", "testbed", "--device", "cpu", "--num-workers", "0"]
    r = CliRunner().invoke(main, [*args, "--checkpoint", str(converted)])
    assert r.exit_code == 0, r.output
    assert "Detector: mask2former (m2f_swin-s_random-00000000.pth, sha256 " in r.output
    assert "GenEval's own weights: no" in r.output and "Comparable to published GenEval: no (detector weights" in r.output
    r = CliRunner().invoke(main, [*args, "--checkpoint", other])
    assert r.exit_code == 2 and "another --results" in r.output  # never mixed with the other checkpoint's rows
    r = CliRunner().invoke(main, [*args, "--checkpoint", other, "--results", str(tmp_path / "o.jsonl")])
    assert r.exit_code == 0 and f"Detector: mask2former ({other}; GenEval's own weights: no" in r.output


def test_parity_progress_resumes_a_killed_run_and_refuses_other_settings(tmp_path):
    """The mmdet parity run (an hour at 800 px) keeps each finished image in progress.jsonl: a rerun continues
    from there with the same rows, and a rerun with other settings stops, naming the file."""
    from bench.geneval.parity_mmdet import Progress

    settings = {"images": 3, "image_size": 800, "seed": 0}
    first = Progress(tmp_path / "progress.jsonl", settings)
    first.add("image", {"image": 0, "decisions": [1]})
    first.add("image", {"image": 1, "decisions": [0]})  # ... killed here
    again = Progress(tmp_path / "progress.jsonl", settings)
    assert again.rows("image") == [{"image": 0, "decisions": [1]}, {"image": 1, "decisions": [0]}]
    assert again.rows("sensitivity") == [] and again.invocations == 2
    with pytest.raises(SystemExit, match="progress.jsonl: made with other settings"):
        Progress(tmp_path / "progress.jsonl", {**settings, "image_size": 256})


def test_our_detector_reproduces_mmdets_golden_outputs_without_mmdet(tmp_path):
    """The mmdet parity in CI: GenEval's Mask2Former with random weights (drawn without mmdet from the official
    key table, the tensors `parity_mmdet.randomise` gives mmdet's model) saved as an mmdet checkpoint, converted,
    run through our pipeline on the golden renders: class logits, every detection's class, box and score, and
    GenEval's decisions match mmdet's (tests/fixtures/geneval_m2f_mmdet_golden.json, made by
    `python -m bench.geneval.parity_mmdet golden` in the mmdet environment)."""
    import json

    from bench.geneval.detectors import Mask2FormerDetector
    from bench.geneval.parity_mmdet import golden_record, official_random_state

    golden = json.loads((FIXTURES / "geneval_m2f_mmdet_golden.json").read_text())
    state = official_random_state(FIXTURES / "geneval_m2f_official_keys.tsv", golden["seed"])
    torch.save({"meta": {}, "state_dict": state}, tmp_path / "m2f-random.pth")
    ours = Mask2FormerDetector(checkpoint=str(conv.convert(tmp_path / "m2f-random.pth", tmp_path / "conv")),
                               image_size=golden["image_size"], device="cpu")
    rows = golden_record(ours, [r["prompts"] for r in golden["renders"]], mmdet=False)
    for ref, mine in zip(golden["renders"], rows, strict=True):
        a, b = torch.tensor(mine["class_logits_first8"]), torch.tensor(ref["class_logits_first8"])
        assert float((a - b).abs().max() / b.abs().max()) <= 1e-4, ref["image"]
        assert [(d["class"], d["box"]) for d in mine["detections"]] == [(d["class"], d["box"]) for d in
                                                                       ref["detections"]], ref["image"]
        assert max(abs(x["score"] - y["score"]) for x, y in zip(mine["detections"], ref["detections"])) <= 1e-4
        assert mine["decisions"] == ref["decisions"], ref["image"]
