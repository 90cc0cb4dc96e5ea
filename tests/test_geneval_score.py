"""GenEval scoring: summary numbers, the resumable scoring loop, and each backend end to end."""
import hashlib
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from bench.cli import main
from bench.geneval.colors import TEMPLATES, ClipColorClassifier, object_crop
from bench.geneval.detectors import Mask2FormerDetector, label_names, mask2bbox, mmdet_resize_shape
from bench.geneval.layout import OBJECT_NAMES, write_prompt
from bench.geneval.rules import COLORS
from bench.geneval.score import score
from bench.geneval.summary import read_results, summarize
from lightgen.errors import InputError


def row(tag, prompt, correct, **kw):
    return {"filename": f"x/{prompt}.png", "tag": tag, "prompt": prompt, "correct": correct, "reason": "",
            "metadata": json.dumps({"tag": tag, "prompt": prompt}), "details": "{}", **kw}


def test_summary_numbers_on_synthetic_results(tmp_path):
    rows = [row("single_object", "p1", True), row("single_object", "p1", False), row("single_object", "p2", False),
            row("single_object", "p2", False), row("counting", "p3", True), row("counting", "p3", True),
            row("counting", "p3", True), row("colors", "p4", False), row("colors", "p4", True, error="truncated")]
    text = "".join(json.dumps(r).replace("/", "\\/") + "\n" for r in rows)  # pandas escapes '/'
    (tmp_path / "results.jsonl").write_text(text + '{"filename": "torn')
    read = read_results(tmp_path / "results.jsonl")
    assert read[0]["filename"] == "x/p1.png" and len(read) == 9
    s = summarize(read)
    assert list(s["tasks"]) == ["single_object", "counting", "colors"]  # order of first appearance
    assert [t["score"] for t in s["tasks"].values()] == [0.25, 1.0, 0.0]  # per-task mean over images
    assert s["overall"] == pytest.approx((0.25 + 1.0 + 0.0) / 3)  # unweighted over tasks, not images (4/8)
    assert (s["images"], s["prompts"], s["correct_images"], s["correct_prompts"], s["errors"]) == (8, 4, 0.5, 0.5, 1)


# ----------------------------------------------------------------------------------- scoring loop
META = [{"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"},
        {"tag": "counting", "include": [{"class": "cup", "count": 2}], "exclude": [{"class": "cup", "count": 3}],
         "prompt": "a photo of two cups"}]


class FakeDetector:
    """Detections looked up by the image's first pixel value (set by the test)."""

    name, checkpoint, image_size, classes = "fake", "table-v1", None, list(OBJECT_NAMES)

    def __init__(self, table):
        self.table, self.calls, self.images = table, 0, 0

    def weights(self):
        return {"checkpoint": self.checkpoint, "checkpoint_sha256": None, "official_weights": False}

    def detect(self, images):
        self.calls += 1
        self.images += len(images)
        out = []
        for im in images:
            dets = self.table[im.getpixel((0, 0))[0]]
            out.append([{**d, "mask": np.ones((im.height, im.width), bool)} for d in dets])
        return out


class FakeColors:
    name, checkpoint, precision = "fake-colors", "v1", "fp32"

    def __init__(self):
        self.seen = []

    def classify(self, items):
        self.seen += [(cls, d["score"]) for _, d, cls in items]
        return ["red" if d["score"] > 0.8 else "blue" for _, d, _ in items]


def box(score, cls):
    return {"class": cls, "score": score, "box": [1.0, 2.0, 5.5, 6.0]}


TABLE = {1: [box(0.85, "car"), box(0.5, "car")],  # colour prompt: top car red
         2: [box(0.7, "car")],  # top car blue
         3: [box(0.95, "cup"), box(0.95, "cup")],  # exactly two cups
         4: [box(0.95, "cup")] * 3}  # three cups


def make_outdir(tmp_path, codes=((1, 2), (3, 4))):
    for i, (meta, cs) in enumerate(zip(META, codes)):
        write_prompt(tmp_path / "out", i, meta, [Image.new("RGB", (8, 8), (c, 0, 0)) for c in cs])
    return tmp_path / "out"


def run(outdir, det=None, colors=None, **kw):
    return score(outdir, det or FakeDetector(TABLE), colors or FakeColors(), n_samples=2, num_workers=0,
                 batch_size=3, progress=False, **kw)


def test_score_rows_details_and_colour_requests(tmp_path):
    colors = FakeColors()
    r = run(make_outdir(tmp_path), colors=colors, prompts=META)
    rows = read_results(r.results)
    assert [(x["filename"][-22:], x["correct"]) for x in rows] == [
        ("00000/samples/0000.png", True), ("00000/samples/0001.png", False),
        ("00001/samples/0000.png", True), ("00001/samples/0001.png", False)]
    assert rows[1]["reason"] == "expected red car>=1, found 0 red; and 1 blue"
    assert rows[3]["reason"] == "expected cup<3, found 3"
    assert json.loads(rows[0]["details"]) == {"car": [[1.0, 2.0, 5.5, 6.0, float(np.float32(0.85))],
                                                      [1.0, 2.0, 5.5, 6.0, 0.5]]}
    assert json.loads(rows[0]["metadata"]) == META[0] and rows[0]["prompt"] == META[0]["prompt"]
    assert colors.seen == [("car", 0.85), ("car", 0.7)]  # only the top-`count` object of colour clauses
    assert (rows[0]["detector"], rows[0]["checkpoint"], rows[0]["color_classifier"]) == ("fake", "table-v1",
                                                                                         "fake-colors:v1")
    assert rows[0]["image_sha256"] == hashlib.sha256((r.results.parent / "00000/samples/0000.png").read_bytes()).hexdigest()
    s = json.loads((r.results.parent / "summary.json").read_text())
    assert not s["published_comparable"]["comparable"] and len(s["published_comparable"]["why_not"]) == 4
    assert s["overall"] == 0.5 and s["tasks"]["colors"]["score"] == 0.5 and s["errors"] == 0
    assert s["detector"] == "fake" and "torch" in s["versions"] and s["rules"]["counting_threshold"] == 0.9
    assert "| out | 0.5000 |" in (r.results.parent / "summary.md").read_text()


def test_resume_never_duplicates_and_bad_images_become_error_rows(tmp_path):
    out = make_outdir(tmp_path)
    bad = out / "00001" / "samples" / "0001.png"
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[: len(good_bytes) // 2])
    det = FakeDetector(TABLE)
    first = run(out, det)
    assert [f[-22:] for f, _ in first.errors] == ["00001/samples/0001.png"] and "Error" in first.errors[0][1]
    rows = read_results(first.results)
    assert len(rows) == 4 and rows[3]["error"] and rows[3]["correct"] is False
    assert first.summary["images"] == 3 and first.summary["errors"] == 1
    det.calls = 0
    again = run(out, det)  # done rows are skipped; the error row is retried (and still fails)
    assert det.calls == 0 and len(read_results(again.results)) == 4 and len(again.errors) == 1
    bad.write_bytes(good_bytes)
    with open(first.results, "a") as f:
        f.write('{"filename": "torn')  # a crash mid-write
    fixed = run(out, det)
    rows = read_results(fixed.results)
    assert not fixed.errors and len(rows) == 4 and len({r["filename"] for r in rows}) == 4
    assert fixed.summary["overall"] == 0.5 and fixed.results.read_text().endswith("}\n")
    other = FakeDetector(TABLE)
    other.checkpoint = "table-v2"
    with pytest.raises(InputError, match="another --results"):
        run(out, other)


def test_resume_rescores_images_regenerated_in_place(tmp_path):
    out = make_outdir(tmp_path)
    det = FakeDetector(TABLE)
    assert run(out, det).summary["overall"] == 0.5
    write_prompt(out, 0, META[0], [Image.new("RGB", (8, 8), (c, 0, 0)) for c in (1, 1)])  # sample 1: blue -> red car
    det.images = 0
    again = run(out, det)
    assert det.images == 1 and again.summary["tasks"]["colors"]["score"] == 1.0  # only the changed image, no stale row
    rows = read_results(again.results)
    assert len(rows) == 4 and [r["correct"] for r in rows if r["tag"] == "colors"] == [True, True]
    (out / "00001" / "samples" / "0001.png").unlink()  # a removed image leaves the results too
    assert run(out, det, allow_missing=True).summary["images"] == 3 and det.images == 1


def test_missing_folders_and_counts_need_allow_missing(tmp_path):
    out = make_outdir(tmp_path, codes=((1, 2), (3,)))
    with pytest.raises(InputError, match="expected 2 images, found 1"):
        run(out)
    extra = {**META[0], "prompt": "another"}
    with pytest.raises(InputError, match="no prompt folder for 'another'"):
        run(out, prompts=META + [extra], allow_missing=False)
    assert run(out, prompts=META + [extra], allow_missing=True).summary["images"] == 3


@pytest.mark.parametrize("bad,msg", [({"class": "unicorn", "count": 1}, r"include\[0\].class"),
                                     ({"class": "car", "count": 1, "color": "teal"}, r"include\[0\].color"),
                                     ({"class": "car", "count": 0}, r"include\[0\].count")])
def test_bad_metadata_rejected_before_any_model_runs(tmp_path, bad, msg):
    write_prompt(tmp_path, 0, {"tag": "colors", "include": [bad], "prompt": "p"}, [Image.new("RGB", (8, 8))] * 2)
    det = FakeDetector(TABLE)
    with pytest.raises(InputError, match=msg):
        run(tmp_path, det)
    assert det.calls == 0


# ----------------------------------------------------------------------------------- backends
def test_mask2former_helpers():
    m = torch.zeros(2, 6, 8, dtype=torch.bool)
    m[0, 1:3, 2:7] = True
    assert mask2bbox(m).tolist() == [[2.0, 1.0, 7.0, 3.0], [0.0, 0.0, 0.0, 0.0]]  # [x1, y1, x2 + 1, y2 + 1]
    assert mmdet_resize_shape(512, 512, 800) == (800, 800)
    assert mmdet_resize_shape(480, 640, 800) == (800, 1067)  # short side 800
    assert mmdet_resize_shape(200, 1000, 800) == (267, 1333)  # long side capped at 1333
    coco = [{"computer mouse": "mouse", "tv remote": "remote", "computer keyboard": "keyboard"}.get(c, c)
            for c in OBJECT_NAMES]
    assert label_names(coco + ["sky"], OBJECT_NAMES) == list(OBJECT_NAMES) + [None]  # panoptic: stuff ignored
    assert label_names([c.replace(" ", "_") for c in coco], OBJECT_NAMES) == list(OBJECT_NAMES)  # mmdet 3
    with pytest.raises(InputError, match=r"no label for GenEval class\(es\) \['zebra'\]"):
        label_names([c for c in coco if c != "zebra"], OBJECT_NAMES)
    assert label_names([f"LABEL_{i}" for i in range(80)], OBJECT_NAMES) == list(OBJECT_NAMES)


@pytest.fixture(scope="module")
def tiny_detector(tiny_mask2former_dir):
    return Mask2FormerDetector(checkpoint=str(tiny_mask2former_dir), image_size=64, device="cpu")  # the real loader


def test_mask2former_backend_end_to_end(tiny_detector):
    det = tiny_detector
    assert det.weights() == {"checkpoint": det.requested, "checkpoint_sha256": None, "official_weights": False}
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)) for h, w in ((40, 56), (64, 48))]
    out = det.detect(images)
    assert len(out) == 2 and all(len(d) == 100 for d in out)  # top 100 of 12 queries x 80 classes
    for im, dets in zip(images, out):
        for d in dets:
            assert d["class"] in OBJECT_NAMES and 0 <= d["score"] <= 1
            assert d["mask"].shape == (im.height, im.width) and d["mask"].dtype == bool
            assert d["box"] == mask2bbox(torch.from_numpy(d["mask"])[None])[0].tolist()
    # score = class probability x mean mask probability inside the mask, recomputed by hand for one image
    model = det._load()
    x, size = det.preprocess(images[0])  # short side 64 (long side <= 107), zero-padded to 32s
    assert x.shape == (1, 3, 64, 96) and size == (64, 90)
    with torch.no_grad():
        o = model(pixel_values=x)
    probs = o.class_queries_logits[0].softmax(-1)[:, :-1]
    q, c = divmod(int(probs.flatten().argmax()), 80)
    m = torch.nn.functional.interpolate(o.masks_queries_logits[:1, q: q + 1], size=(64, 96), mode="bilinear")
    m = torch.nn.functional.interpolate(m[:, :, :64, :90], size=(40, 56), mode="bilinear")[0, 0]
    want = probs[q, c] * (m.sigmoid() * (m > 0)).sum() / ((m > 0).sum() + 1e-6)
    top = next(d for d in out[0] if d["class"] == OBJECT_NAMES[c] and (d["mask"] == (m > 0).numpy()).all())
    assert top["score"] == pytest.approx(float(want), rel=1e-5)


def test_mask2former_resizes_uint8_with_opencv_and_normalises_like_mmcv(tiny_detector):
    import cv2

    rng = np.random.default_rng(1)
    im = rng.integers(0, 256, (40, 56, 3), np.uint8)
    x, size = tiny_detector.preprocess(Image.fromarray(im))
    resized = cv2.resize(im, (90, 64), interpolation=cv2.INTER_LINEAR)  # mmcv.imrescale's kernel
    want = resized.astype(np.float32) - np.float32([123.675, 116.28, 103.53])  # mmcv.imnormalize: cv2 ops in place
    cv2.multiply(want, 1 / np.float64([[58.395, 57.12, 57.375]]), want)
    assert size == (64, 90) and np.array_equal(x[0, :, :64, :90].permute(1, 2, 0).numpy(), want)
    assert not x[0, :, :, 90:].any() and x.shape[-2:] == (64, 96)  # zero padding to a multiple of 32
    floats = torch.nn.functional.interpolate(torch.from_numpy(im).permute(2, 0, 1)[None].float(), size=(64, 90),
                                             mode="bilinear").round()[0].permute(1, 2, 0).numpy()
    assert np.abs(floats - resized).max() >= 1  # the float resize it replaced is off by a grey level here


def test_mask2former_detections_do_not_depend_on_the_other_images(tiny_detector):
    rng = np.random.default_rng(2)
    a, b = (Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)) for h, w in ((40, 56), (64, 40)))
    together, alone = tiny_detector.detect([a, b]), tiny_detector.detect([a])
    assert [(d["class"], d["score"], d["box"]) for d in together[0]] == [(d["class"], d["score"], d["box"])
                                                                         for d in alone[0]]
    assert all(np.array_equal(x["mask"], y["mask"]) for x, y in zip(together[0], alone[0]))


def test_mmdet_backend_end_to_end():
    pytest.importorskip("mmdet")
    from bench.geneval.detectors import MMDetDetector

    det = MMDetDetector(checkpoint=None, image_size=64, device="cpu")  # GenEval's Swin-S config, random weights
    rng = np.random.default_rng(0)
    out = det.detect([Image.fromarray(rng.integers(0, 255, (40, 56, 3), np.uint8))])
    assert len(out) == 1 and len(out[0]) == 100  # top 100 (query, class) pairs, as in mmdet's post-processing
    for d in out[0]:
        assert d["class"] in OBJECT_NAMES and 0 <= d["score"] <= 1 and d["mask"].shape == (40, 56)
        assert d["box"] == mask2bbox(torch.from_numpy(d["mask"])[None])[0].tolist()
    resize = [s for s in det._model.cfg.test_dataloader.dataset.pipeline if s["type"] == "Resize"]
    assert [s["scale"] for s in resize] == [(107, 64)]


def test_object_crop_protocol():
    im = Image.new("RGB", (6, 4), (255, 0, 0))
    mask = np.zeros((4, 6), bool)
    mask[1:3, 2:4] = True
    crop = np.asarray(object_crop(im, {"mask": mask, "box": [1, 1, 4, 3]}))
    assert crop.shape == (2, 3, 3)
    assert crop[:, 0].tolist() == [[153, 153, 153]] * 2 and crop[:, 1:].tolist() == [[[255, 0, 0]] * 2] * 2


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny open_clip architecture, registered under a name (random weights: pretrained=None)."""
    import open_clip

    path = tmp_path_factory.mktemp("clip") / "lgb-tiny-clip.json"
    path.write_text(json.dumps({
        "embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}))
    open_clip.add_model_config(path)
    return "lgb-tiny-clip"


def _zero_shot_weights(model, tok, obj: str) -> torch.Tensor:
    """clip_benchmark 1.4's zero-shot classifier, by hand: per colour, the normalised mean of the normalised
    template embeddings; (dim, 10)."""
    weights = []
    for c in COLORS:
        e = torch.nn.functional.normalize(model.encode_text(tok([t.format(c=c, obj=obj) for t in TEMPLATES])),
                                          dim=-1).mean(0)
        weights.append(e / e.norm())
    return torch.stack(weights, 1)


def test_clip_colour_backend_end_to_end(tiny_clip):
    torch.manual_seed(0)
    clf = ClipColorClassifier(tiny_clip, pretrained=None, device="cpu", batch_size=2)
    w = clf.class_weights("car")
    assert w.shape == (16, 10) and torch.allclose(w.norm(dim=0), torch.ones(10))
    mask = np.zeros((20, 24), bool)
    mask[2:10, 3:15] = True
    items = [(Image.new("RGB", (24, 20), c), {"mask": mask, "box": [3, 2, 15, 10]}, n)
             for c, n in (((250, 0, 0), "car"), ((0, 0, 250), "bus"), ((250, 250, 0), "car"))]
    got = clf.classify(items[:1]) + clf.classify(items[1:2]) + clf.classify(items[2:])  # one clause per call
    assert len(got) == 3 and set(got) <= set(COLORS) and clf.precision == "fp32"
    # by hand: normalised image embedding of the crop against zero-shot weights built from the templates
    import open_clip

    x = clf._preprocess(object_crop(*items[1][:2]))[None]
    with torch.no_grad():
        f = torch.nn.functional.normalize(clf._model.encode_image(x), dim=-1)[0]
        want = 100.0 * f @ _zero_shot_weights(clf._model, open_clip.get_tokenizer(tiny_clip), "bus")
    torch.testing.assert_close(clf.logits(items[1:2])[0], want)
    assert got[1] == COLORS[int(want.argmax())]
    assert "bus" in clf._weights and len(clf._weights) == 2
    with pytest.raises(ValueError, match="one clause"):
        clf.classify(items)


def test_clip_logits_under_fp16_autocast_as_clip_benchmark(tiny_clip):
    """GenEval on CUDA: clip_benchmark's classifier and logits under fp16 autocast (run here on the CPU)."""
    import open_clip

    torch.manual_seed(0)
    clf = ClipColorClassifier(tiny_clip, pretrained=None, device="cpu", amp=True)
    assert clf.precision == "fp16-autocast"
    mask = np.ones((20, 24), bool)
    items = [(Image.new("RGB", (24, 20), c), {"mask": mask, "box": [0, 0, 24, 20]}, "car")
             for c in ((250, 0, 0), (30, 200, 90))]
    got = clf.logits(items)
    model, tok = clf._model, open_clip.get_tokenizer(tiny_clip)
    x = torch.stack([clf._preprocess(object_crop(im, d)) for im, d, _ in items])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):  # clip_benchmark 1.4, amp=True
        image = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        want = 100.0 * image @ _zero_shot_weights(model, tok, "car")
    assert want.dtype == torch.float16 and torch.equal(got, want.float())
    with torch.no_grad():
        fp32 = 100.0 * torch.nn.functional.normalize(model.encode_image(x), dim=-1) @ clf.class_weights("car").float()
    assert not torch.equal(got, fp32)  # the fp32 logits it replaced differ


# ----------------------------------------------------------------------------------- CLI, testbed
def test_cli_testbed_generate_score_and_errors(tmp_path):
    out = tmp_path / "tb"
    r = CliRunner().invoke(main, ["geneval", "--testbed", "--outdir", str(out), "--limit", "6", "--n-samples", "1",
                                  "--num-workers", "0"])
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    assert s["overall"] == 1.0 and s["images"] == 6 and s["detector"] == "testbed"
    assert s["overall_ci"] == [1.0, 1.0] and "Overall: 1.00 ± 0.00 (95% CI 1.000-1.000" in r.output
    r = CliRunner().invoke(main, ["geneval-score", str(out), "--num-workers", "0", "--allow-missing", "--n-samples", "1",
                                  "--results", str(tmp_path / "auto.jsonl")])
    assert r.exit_code == 0 and "testbed world" in r.output, r.output  # testbed images: the testbed's scorers
    assert json.loads((tmp_path / "auto.summary.json").read_text())["detector"] == "testbed"
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "caf\xe9"}\n')
    for args, message in [(["--prompts", latin1], f"{latin1}: expected UTF-8"), (["--batch-size", 0], "--batch-size"),
                          (["--limit", -358], "--limit"), (["--limit", 0], "--limit"), (["--n-samples", 0], "--n-samples")]:
        r = CliRunner().invoke(main, ["geneval", "--testbed", "--outdir", str(tmp_path / "x"), *map(str, args)])
        assert r.exit_code == 2 and message in r.output, r.output
    r = CliRunner().invoke(main, ["geneval-score", str(out), "--detector", "testbed", "--num-workers", "0"])
    assert r.exit_code == 2 and "no prompt folder" in r.output  # 6 of the testbed prompts only
    (out / "00002" / "samples" / "0000.png").write_bytes(b"\x89PNG broken")
    r = CliRunner().invoke(main, ["geneval-score", str(out), "--detector", "testbed", "--num-workers", "0",
                                  "--allow-missing", "--n-samples", "1", "--results", str(tmp_path / "r.jsonl")])
    assert r.exit_code == 1 and "UNREADABLE" in r.output and "00002/samples/0000.png" in r.output
    r = CliRunner().invoke(main, ["geneval-score", str(out), "--detector", "mask2former", "--allow-missing"])
    assert r.exit_code == 2 and "a class of the detector" in r.output  # testbed classes are not COCO classes
    (out / "00001" / "metadata.jsonl").write_bytes(b"\xff\xfe{}")
    r = CliRunner().invoke(main, ["geneval-score", str(out), "--detector", "testbed", "--allow-missing"])
    assert r.exit_code == 2 and "00001/metadata.jsonl: expected UTF-8" in r.output, r.output
