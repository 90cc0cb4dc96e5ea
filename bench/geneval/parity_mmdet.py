"""Proof that the converted detector is GenEval's: mmdet vs transformers on the same random weights.

Runs in a side environment with mmdet 3.3 + mmcv 2.1 (README "mmdet backend"), never in CI:

    python -m bench.geneval.parity_mmdet run --out results/geneval/parity-mmdet/800px --images 4 --sensitivity 0
    python -m bench.geneval.parity_mmdet keys tests/fixtures/geneval_m2f_official_keys.tsv
    python -m bench.geneval.parity_mmdet golden tests/fixtures/geneval_m2f_mmdet_golden.json

(`--stand-in-ops` runs it with mmcv installed without its compiled ops: mmdet's Mask2Former calls
none of them on a CPU.)

`run` builds GenEval's config with random weights (every tensor redrawn: nothing left at a zero or
one init), saves it as an mmdet checkpoint in both key layouts (3.x, and 2.x as GenEval downloads
it), converts both with `bench.geneval.convert`, and on renders of varied sizes compares
1. class and mask logits of one forward on the same input tensor (mmdet's own preprocessing);
2. the final detections (class, score, box, mask) of each side's full pipeline: mmdet's
   `inference_detector` vs our `Mask2FormerDetector` (cv2 resize, mmcv-style normalisation);
3. GenEval decisions for 4 official prompts per image (colours from one shared deterministic
   classifier, so only the detector differs).
`keys` writes the official state dict's names (3.x and 2.x) and shapes: the CI test fixture. `golden`
writes mmdet's outputs on those random weights (drawn again without mmdet from the key table), which CI
compares our pipeline against on every run.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from bench.geneval.convert import mmdet3_name

SIZES = ((512, 512), (1024, 1024), (480, 640), (640, 480), (600, 800), (333, 500), (750, 1333), (256, 256))


def mmdet2_name(name: str) -> str:
    """mmdet 3.x -> 2.x names (inverse of `convert.mmdet3_name`): transformer layers only."""
    if "encoder.layers" in name:
        name = name.replace(".self_attn.", ".attentions.0.").replace(".ffn.", ".ffns.0.")
    if "decoder.layers" in name:
        name = (name.replace(".cross_attn.", ".attentions.0.").replace(".self_attn.", ".attentions.1.")
                .replace(".ffn.", ".ffns.0."))
    return name


def render(seed: int) -> Image.Image:
    """A photo-like scene: sky and ground gradients, shaded textured objects, blur and sensor noise."""
    rng = np.random.default_rng(seed)
    h, w = SIZES[seed % len(SIZES)]
    y = np.linspace(0, 1, h)[:, None, None]
    sky, ground = rng.uniform(60, 230, 3), rng.uniform(30, 180, 3)
    horizon = rng.uniform(0.35, 0.7)
    base = np.where(y < horizon, sky * (0.75 + 0.25 * y / horizon), ground * (1.2 - 0.4 * y))
    im = Image.fromarray(np.broadcast_to(base, (h, w, 3)).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(rng.integers(2, 7)):
        cx, cy, r = rng.uniform(0.1, 0.9) * w, rng.uniform(0.2, 0.9) * h, rng.uniform(0.05, 0.25) * min(h, w)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = (cx - r, cy - r * rng.uniform(0.5, 1.2), cx + r, cy + r)
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        else:
            pts = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in np.sort(rng.uniform(0, 2 * math.pi, 6))]
            draw.polygon(pts, fill=colour)
        draw.ellipse((box[0] + r * 0.3, box[1] + r * 0.2, box[0] + r * 0.8, box[1] + r * 0.6),
                     fill=tuple(min(255, c + 60) for c in colour))  # highlight
    im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
    noisy = np.asarray(im, np.float32) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def _matrix_std(name: str, shape: torch.Size) -> float:
    """N(0, 1/fan_in), embeddings N(0, 1). Class logits x8 and the last mask layer x3, so that scores
    span (0, 1) and masks have both signs (GenEval's thresholds and mask2bbox are exercised); the
    decoder layers' residual branches x0.1, so the 100 queries do not collapse onto one detection."""
    if name.endswith(("query_embed.weight", "query_feat.weight", "level_embed.weight", "level_encoding.weight",
                      "relative_position_bias_table")):
        return 1.0
    gain = 8.0 if "cls_embed" in name else 3.0 if "mask_embed.4" in name else 0.1 if (
        "transformer_decoder.layers" in name and ("out_proj" in name or "ffn.layers.1" in name)) else 1.0
    return math.prod(shape[1:]) ** -0.5 * gain


def random_parameters(shapes: list[tuple[str, tuple[int, ...]]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Every parameter (named, in the model's order) redrawn, none left at a zero or one init: matrices
    as `_matrix_std`, norm scales 1 +/- 0.2, biases N(0, 0.02) (larger shared offsets make every query the
    same class). One generator in that order: mmdet's model and the CI fixture test draw the same tensors."""
    g, out = torch.Generator().manual_seed(seed), {}
    for name, shape in shapes:
        n = torch.randn(shape, generator=g)
        out[name] = n * _matrix_std(name, torch.Size(shape)) if len(shape) >= 2 else 1 + 0.2 * n \
            if name.endswith("weight") else 0.02 * n
    zero = [k for k, v in out.items() if not v.abs().gt(0).any()]
    assert not zero, f"parameters left at zero: {zero}"
    return out


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """`random_parameters` into `model`."""
    drawn = random_parameters([(n, tuple(p.shape)) for n, p in model.named_parameters()], seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(drawn[name])


def official_random_state(keys: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """The state dict `randomise` gives mmdet's model, built without mmdet from the official key table
    (`keys` writes it: mmdet 3.x names and shapes in the model's order; the only buffers are Swin's
    relative position indices, which are constants)."""
    from bench.geneval.convert import relative_position_index

    rows = [line.split("\t") for line in keys.read_text().splitlines() if line and not line.startswith("#")]
    shapes = [(name, tuple(int(d) for d in shape.split("x"))) for name, _, shape in rows]
    drawn = random_parameters([(n, s) for n, s in shapes if not n.endswith("relative_position_index")], seed)
    return {n: relative_position_index() if n.endswith("relative_position_index") else drawn[n] for n, _ in shapes}


def build_mmdet(checkpoint: str | None, image_size: int = 800):
    from bench.geneval.detectors import MMDetDetector
    det = MMDetDetector(checkpoint=checkpoint, image_size=image_size, device="cpu")
    det._load()
    return det


def write_keys(path: Path) -> None:
    """Official state dict (from mmdet's own model): 3.x name, 2.x name, shape."""
    sd = build_mmdet(None)._model.state_dict()
    lines = ["# GenEval's Mask2Former Swin-S COCO-instance state dict, from mmdet 3.3.0's model of "
             "mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco: mmdet 3.x name, mmdet 2.x name, shape"]
    lines += [f"{k}\t{mmdet2_name(k)}\t{'x'.join(map(str, v.shape))}" for k, v in sd.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    assert all(mmdet3_name(mmdet2_name(k)) == k for k in sd)


def save_checkpoints(model: torch.nn.Module, folder: Path) -> tuple[Path, Path]:
    """The random model as mmdet checkpoints: 3.x keys (zip) and 2.x keys (legacy format, as GenEval's)."""
    from mmdet.evaluation import get_classes
    sd = model.state_dict()
    v3, v2 = folder / "m2f-random-mmdet3.pth", folder / "m2f-random-mmdet2.pth"
    torch.save({"meta": {"dataset_meta": {"classes": get_classes("coco")}}, "state_dict": sd}, v3)
    torch.save({"meta": {"CLASSES": tuple(get_classes("coco")), "mmdet_version": "2.25.0"},
                "state_dict": {mmdet2_name(k): v for k, v in sd.items()}}, v2, _use_new_zipfile_serialization=False)
    return v3, v2


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a - b).abs().max() / b.abs().max())


def compare_detections(ref: list[dict], ours: list[dict], tag: str) -> dict:
    """GenEval's kept detections (official filtering for `tag`) side by side: same classes, boxes and
    order? Largest score difference, and mask pixels that differ (logits within rounding of 0)."""
    from bench.geneval.rules import filter_detections
    a, b = filter_detections(ref, tag), filter_detections(ours, tag)
    pairs = [(x, y) for c in a if c in b for x, y in zip(a[c], b[c])]
    return {"same_classes_boxes_order": a.keys() == b.keys() and all(len(a[c]) == len(b[c]) for c in a)
            and all(x["box"] == y["box"] for x, y in pairs),
            "kept": sum(map(len, a.values())), "max_score_diff": max((abs(x["score"] - y["score"]) for x, y in pairs),
                                                                     default=0.0),
            "mask_pixels_differing": int(sum((x["mask"] != y["mask"]).sum() for x, y in pairs)),
            "mask_pixels": int(sum(x["mask"].size for x, _ in pairs))}


def decisions(dets: list[dict], image: Image.Image, prompts: list[dict]) -> list[list]:
    """GenEval's (correct, reason) per prompt; colours from the testbed palette classifier (shared)."""
    from bench.geneval.rules import decide, filter_detections
    from bench.geneval.score import colour_requests
    from bench.testbed.detector import PaletteColorClassifier
    out, palette = [], PaletteColorClassifier()
    for meta in prompts:
        kept = filter_detections([dict(d) for d in dets], meta["tag"])
        for found, cls in colour_requests(meta, kept):
            for d, c in zip(found, palette.classify([(image, d, cls) for d in found])):
                d["color"] = c
        out.append(list(decide(meta, kept)))
    return out


def forward_logged(det, image: Image.Image, pre: torch.nn.Module, post: torch.nn.Module, outputs) -> tuple[list, dict]:
    """`det.detect([image])`, recording the backbone's input tensor (pre-hook on `pre`), the final
    logits (`outputs` of `post`'s output), the wall time and the process CPU time (with one thread:
    what the call costs on an idle core, even on a shared machine)."""
    got = {}
    hooks = [pre.register_forward_pre_hook(lambda m, args: got.__setitem__("x", args[0].detach())),
             post.register_forward_hook(lambda m, args, out: got.__setitem__("out", outputs(out)))]
    try:
        t, cpu = time.perf_counter(), time.process_time()
        dets = det.detect([image])[0]
        got["seconds"], got["cpu_seconds"] = time.perf_counter() - t, time.process_time() - cpu
    finally:
        for h in hooks:
            h.remove()
    return dets, got


def mmdet_hooks(det) -> tuple:
    """Where `forward_logged` reads mmdet's input tensor and last-layer (class, mask) logits."""
    return det._model.backbone, det._model.panoptic_head, lambda out: (out[0][-1].detach(), out[1][-1].detach())


def our_hooks(det) -> tuple:
    """The same points in our transformers Mask2Former."""
    hf = det._load()
    return (hf.model.pixel_level_module.encoder, hf,
            lambda out: (out.class_queries_logits.detach(), out.masks_queries_logits.detach()))


def compare_image(i: int, mmdet, ours, prompts: list[dict]) -> dict:
    """One render through both full pipelines: input tensors, last-layer logits, detections, decisions."""
    im = render(i)
    ref, m = forward_logged(mmdet, im, *mmdet_hooks(mmdet))
    mine, o = forward_logged(ours, im, *our_hooks(ours))
    d_ref, d_mine = decisions(ref, im, prompts), decisions(mine, im, prompts)
    same_shape = o["x"].shape == m["x"].shape
    return {"image": i, "size": [im.height, im.width], "input_shape": list(m["x"].shape[-2:]),
            "input_max_abs_diff": float((o["x"] - m["x"]).abs().max()) if same_shape else None,
            "class_logits_rel_diff": rel_diff(o["out"][0], m["out"][0]) if same_shape else None,
            "mask_logits_rel_diff": rel_diff(o["out"][1], m["out"][1]) if same_shape else None,
            "raw_same_classes_boxes": sorted((d["class"], d["box"]) for d in ref) == sorted(
                (d["class"], d["box"]) for d in mine),
            **{f"kept_{t}": compare_detections(ref, mine, t) for t in ("single_object", "counting")},
            "decisions_same": d_ref == d_mine, "decisions_correct": [sum(c for c, _ in d) for d in (d_ref, d_mine)],
            "decisions": d_mine,
            "our_detect_s": o["seconds"], "mmdet_detect_s": m["seconds"], "our_detect_cpu_s": o["cpu_seconds"],
            "mmdet_detect_cpu_s": m["cpu_seconds"]}


def _detect_tensor(det, model: torch.nn.Module, x: torch.Tensor, resized: tuple[int, int], image: Image.Image):
    with torch.no_grad():
        o = model(pixel_values=x)
    return det.postprocess(o.class_queries_logits[0], o.masks_queries_logits[0], tuple(x.shape[-2:]), resized,
                           (image.height, image.width))


def sensitivity(i: int, ours, perturbed: torch.nn.Module, prompts: list[dict], base: list[list]) -> dict:
    """How far from GenEval's decisions the gaps closed here move one image, with these weights:
    the float resize this scorer used before, zero padding as in a 2-image batch with the next
    render, and the same detector with every weight multiplied by (1 + 1e-3 N(0, 1))."""
    import torch.nn.functional as F

    im, model = render(i), ours._load()
    x, size = ours.preprocess(im)
    raw = torch.from_numpy(np.asarray(im.convert("RGB"))).permute(2, 0, 1)[None].float()
    legacy = F.interpolate(raw, size=size, mode="bilinear", align_corners=False).round().clamp(0, 255)[0]
    legacy = (legacy - torch.tensor([123.675, 116.28, 103.53])[:, None, None]) / torch.tensor(
        [58.395, 57.12, 57.375])[:, None, None]
    float_x = torch.zeros_like(x)
    float_x[0, :, : size[0], : size[1]] = legacy
    other = ours.preprocess(render(i + 1))[0]
    padded = torch.zeros(1, 3, max(x.shape[2], other.shape[2]), max(x.shape[3], other.shape[3]))
    padded[..., : x.shape[2], : x.shape[3]] = x
    variants = {"float_resize": (model, float_x), "batch_padding": (model, padded), "weights_1e-3": (perturbed, x)}
    out = {"image": i, "padding_changed_input": tuple(padded.shape) != tuple(x.shape)}
    for name, (m, inp) in variants.items():
        if name == "batch_padding" and not out["padding_changed_input"]:
            continue
        out[name] = sum(a[0] != b[0] for a, b in zip(base, decisions(_detect_tensor(ours, m, inp, size, im), im, prompts)))
    return out


def stand_in_ops() -> None:
    """Let `mmcv.ops` import without the compiled extension (e.g. `MMCV_WITH_OPS=0 pip install
    mmcv==2.1.0`, seconds instead of a 6-25 min build): on a CPU mmdet's Mask2Former calls none of its
    kernels, and any call would raise here, so the numbers are those of a full build."""
    import importlib.machinery
    import types

    def missing(name: str):
        def call(*args, **kwargs):
            raise RuntimeError(f"mmcv._ext.{name} is not available (stand-in extension)")
        return call
    ext = types.ModuleType("mmcv._ext")
    ext.__file__, ext.__getattr__ = "<stand-in>", missing
    ext.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", loader=types.SimpleNamespace())  # "ops exist"
    sys.modules["mmcv._ext"] = ext


def mmcv_ext() -> str:
    """Which mmcv extension ran: the compiled one, or a stand-in (mmdet's Mask2Former calls none of
    its kernels on a CPU: deformable attention falls back to `multi_scale_deformable_attn_pytorch`)."""
    import mmcv
    import mmcv._ext as ext
    return f"{mmcv.__version__} {'compiled' if str(ext.__file__).endswith('.so') else 'stand-in'} ({ext.__file__})"


def same_conversions(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def perturbed_copy(model: torch.nn.Module, rel: float = 1e-3, seed: int = 1) -> torch.nn.Module:
    import copy
    g, other = torch.Generator().manual_seed(seed), copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1 + rel * torch.randn(p.shape, generator=g))
    return other


def summarize_rows(rows: list[dict], sens: list[dict]) -> dict:
    worst = lambda k: max(r[k] for r in rows)  # noqa: E731
    out = {"images": len(rows), "pairs": 4 * len(rows), "sizes": sorted({tuple(r["size"]) for r in rows}),
           "class_logits_rel_diff_max": worst("class_logits_rel_diff"),
           "mask_logits_rel_diff_max": worst("mask_logits_rel_diff"), "input_max_abs_diff": worst("input_max_abs_diff"),
           "raw_detections_same_classes_boxes": sum(r["raw_same_classes_boxes"] for r in rows),
           "decisions_identical_images": sum(r["decisions_same"] for r in rows),
           "decisions_correct_mmdet_ours": [sum(r["decisions_correct"][k] for r in rows) for k in (0, 1)],
           "kept_per_image_mean": float(np.mean([r["kept_single_object"]["kept"] for r in rows])),
           **{f"{k}_median": float(np.median([r[k] for r in rows])) for k in
              ("our_detect_s", "mmdet_detect_s", "our_detect_cpu_s", "mmdet_detect_cpu_s")}}
    for t in ("single_object", "counting"):
        kept = [r[f"kept_{t}"] for r in rows]
        out[f"kept_{t}"] = {"detections": sum(k["kept"] for k in kept),
                            "images_same_classes_boxes_order": sum(k["same_classes_boxes_order"] for k in kept),
                            "max_score_diff": max(k["max_score_diff"] for k in kept),
                            "mask_pixels_differing": sum(k["mask_pixels_differing"] for k in kept),
                            "mask_pixels": sum(k["mask_pixels"] for k in kept)}
    out["sensitivity"] = {"images": len(sens), "pairs": 4 * len(sens),
                          **{f"{k}_decision_flips": sum(r.get(k, 0) for r in sens)
                             for k in ("float_resize", "batch_padding", "weights_1e-3")},
                          "padding_changed_input_images": sum(r["padding_changed_input"] for r in sens)}
    return out


def run(out: Path, n_images: int, n_sensitivity: int, image_size: int, seed: int) -> dict:
    """The whole check; writes `out/images.jsonl` (per image) and `out/parity.json` (summary)."""
    from bench.provenance import run_record
    from bench.geneval.convert import convert
    from bench.geneval.detectors import Mask2FormerDetector
    from bench.geneval.layout import OFFICIAL_PROMPTS, read_prompts
    from bench.provenance import cpu_name

    started = time.perf_counter()
    record = {"machine": cpu_name(), "mmcv_ext": mmcv_ext(), **run_record(  # git state at launch
        ["python", "-m", "bench.geneval.parity_mmdet", *sys.argv[1:]],
        {"images": n_images, "sensitivity_images": n_sensitivity, "image_size": image_size, "seed": seed}, started)}
    mmdet = build_mmdet(None, image_size)
    randomise(mmdet._model, seed)
    official = read_prompts(OFFICIAL_PROMPTS)
    rng = np.random.default_rng(seed)
    prompts = [[official[j] for j in rng.choice(len(official), 4, replace=False)] for _ in range(n_images)]
    with tempfile.TemporaryDirectory() as tmp:
        v3, v2 = save_checkpoints(mmdet._model, Path(tmp))
        conv3, conv2 = convert(v3, Path(tmp) / "conv3"), convert(v2, Path(tmp) / "conv2")
        layouts_agree = same_conversions(conv3, conv2)
        ours = Mask2FormerDetector(checkpoint=str(conv2), image_size=image_size, device="cpu")
        progress = Progress(out / "progress.jsonl", record["config"])
        rows, sens = progress.rows("image"), progress.rows("sensitivity")
        for i in range(len(rows), n_images):
            rows.append(progress.add("image", compare_image(i, mmdet, ours, prompts[i])))
        perturbed = perturbed_copy(ours._load())
        for i in range(len(sens), min(n_sensitivity, n_images)):
            sens.append(progress.add("sensitivity", sensitivity(i, ours, perturbed, prompts[i], rows[i]["decisions"])))
    summary = {"layouts_2x_3x_convert_identically": layouts_agree, "image_size": image_size, **summarize_rows(rows, sens)}
    summary["pass"] = bool(layouts_agree and summary["class_logits_rel_diff_max"] <= 1e-4
                           and summary["mask_logits_rel_diff_max"] <= 1e-4 and summary["decisions_identical_images"]
                           == summary["kept_single_object"]["images_same_classes_boxes_order"]
                           == summary["kept_counting"]["images_same_classes_boxes_order"] == n_images)
    record = {**summary, **record, "wall_s": time.perf_counter() - started, "invocations": progress.invocations}
    (out / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + sens))
    (out / "parity.json").write_text(json.dumps(record, indent=2) + "\n")
    progress.path.unlink()
    return record


GOLDEN_RENDERS = (0, 2, 6)  # 512², 480×640 and 750×1333: square, portrait-to-landscape, the widest


def golden_record(det, prompts: list[list[dict]], mmdet: bool) -> list[dict]:
    """What the CI fixture keeps of `det` (mmdet's pipeline or ours) per golden render: the first 8 queries'
    class logits, every detection's class, score and box, and GenEval's decisions for the render's prompts."""
    rows = []
    for i, metas in zip(GOLDEN_RENDERS, prompts):
        im = render(i)
        dets, got = forward_logged(det, im, *(mmdet_hooks(det) if mmdet else our_hooks(det)))
        rows.append({"image": i, "size": [im.height, im.width], "prompts": metas,
                     "class_logits_first8": got["out"][0][0, :8].tolist(),
                     "detections": [{"class": d["class"], "score": d["score"], "box": d["box"]} for d in dets],
                     "decisions": decisions(dets, im, metas)})
    return rows


def write_golden(path: Path, image_size: int = 128, seed: int = 0) -> dict:
    """The CI fixture: mmdet's Mask2Former (GenEval's config) on `random_parameters(seed)` at `image_size`,
    on the golden renders with 4 official prompts each; tests/test_geneval_convert.py checks our pipeline
    against it on every run, with no mmdet installed."""
    from bench.geneval.layout import OFFICIAL_PROMPTS, read_prompts
    from bench.provenance import run_record

    started = time.perf_counter()
    mmdet = build_mmdet(None, image_size)
    randomise(mmdet._model, seed)
    official, rng = read_prompts(OFFICIAL_PROMPTS), np.random.default_rng(seed)
    prompts = [[official[j] for j in rng.choice(len(official), 4, replace=False)] for _ in GOLDEN_RENDERS]
    record = {"image_size": image_size, "seed": seed, "mmcv_ext": mmcv_ext(),
              "renders": golden_record(mmdet, prompts, mmdet=True),
              **run_record(["python", "-m", "bench.geneval.parity_mmdet", *sys.argv[1:]],
                           {"image_size": image_size, "seed": seed}, started)}
    path.write_text(json.dumps(record) + "\n")
    return record


class Progress:
    """`out/progress.jsonl`: the settings, then one line per finished image, appended as it finishes, so a
    killed run continues where it stopped (every row is deterministic in the seed); refused for other
    settings. Removed once parity.json is written."""

    def __init__(self, path: Path, settings: dict):
        self.path, self.lines = path, []
        if path.is_file():
            head, *self.lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if head.get("settings") != settings:
                raise SystemExit(f"{path}: made with other settings ({head.get('settings')} vs {settings}); "
                                 f"delete it to start again")
            self.invocations = head.get("invocations", 1) + 1
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.invocations = 1
        self.lines = [line for line in self.lines if "kind" in line]
        path.write_text("".join(json.dumps(x) + "\n" for x in
                                [{"settings": settings, "invocations": self.invocations}, *self.lines]))

    def rows(self, kind: str) -> list[dict]:
        return [{k: v for k, v in line.items() if k != "kind"} for line in self.lines if line["kind"] == kind]

    def add(self, kind: str, row: dict) -> dict:
        with self.path.open("a") as f:
            f.write(json.dumps({"kind": kind, **row}) + "\n")
        print(json.dumps(row), flush=True)
        return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="the parity check; writes OUT/parity.json and OUT/images.jsonl")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--images", type=int, default=56)
    r.add_argument("--sensitivity", type=int, default=16, help="images also scored with the old pipeline gaps")
    r.add_argument("--image-size", type=int, default=800)
    r.add_argument("--seed", type=int, default=0)
    k = sub.add_parser("keys", help="write the official key table (the CI test fixture)")
    k.add_argument("path", type=Path)
    f = sub.add_parser("golden", help="write mmdet's outputs on the random weights (the CI golden fixture)")
    f.add_argument("path", type=Path)
    f.add_argument("--image-size", type=int, default=128)
    for sp in (r, k, f):
        sp.add_argument("--stand-in-ops", action="store_true", help="mmcv installed without its compiled ops")
        sp.add_argument("--threads", type=int, default=1, help="torch threads (the CPU seconds are per image)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.stand_in_ops:
        stand_in_ops()
    if a.cmd == "keys":
        write_keys(a.path)
    elif a.cmd == "golden":
        write_golden(a.path, a.image_size)
    else:
        record = run(a.out, a.images, a.sensitivity, a.image_size, a.seed)
        print(json.dumps({k: v for k, v in record.items() if k not in ("config", "versions")}, indent=2))
        sys.exit(0 if record["pass"] else 1)


if __name__ == "__main__":
    main()
