"""Object detectors behind one interface: per-image detection records in the detector's raw order.

Record: `{"class": str, "score": float, "box": [x1, y1, x2, y2], "mask": bool ndarray (H, W)}` at
the original image resolution. Weights load lazily on the first `detect`, so prompt metadata can be
checked against `classes` before anything heavy happens. Only GenEval's own checkpoint gives
published-comparable numbers: `weights()` (name, sha256, official or not) and `image_size` go into
every results row.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bench.geneval.convert import OFFICIAL_FILES, OFFICIAL_URL, hash_suffix, resolve, sha256_file
from bench.geneval.layout import OBJECT_NAMES
from lightgen.errors import InputError

MMDET_CONFIG = "mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco"
# mmdet 3.x conversion of the same training run as GenEval's 2.x checkpoint (...-743b7d99.pth).
MMDET_CHECKPOINT = ("https://download.openmmlab.com/mmdetection/v3.0/mask2former/" + MMDET_CONFIG + "/"
                    + MMDET_CONFIG + "_20220504_001756-c9d0c4f2.pth")
# COCO spellings (mmdet/Detectron2, and older variants) -> GenEval's names
ALIASES = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard", "tvmonitor": "tv",
           "motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch", "pottedplant": "potted plant",
           "diningtable": "dining table", "hair dryer": "hair drier"}
PIXEL_MEAN = np.array([123.675, 116.28, 103.53])
PIXEL_STD = np.array([58.395, 57.12, 57.375])


class Detector(Protocol):
    name: str
    image_size: int | None
    classes: list[str]

    def weights(self) -> dict:
        """{"checkpoint": name, "checkpoint_sha256": str | None, "official_weights": GenEval's own file?}"""

    def detect(self, images: list[Image.Image]) -> list[list[dict]]: ...


def named_weights(checkpoint: str | None, sha256: str | None = None) -> dict:
    """`weights()` of a checkpoint known by name (and hash if local); official by mmdet's hash suffix."""
    prefix = hash_suffix(checkpoint or "")
    official = prefix in OFFICIAL_FILES and (sha256 is None or sha256.startswith(prefix))
    return {"checkpoint": checkpoint, "checkpoint_sha256": sha256, "official_weights": official}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def label_names(labels: Sequence[str], classes: Sequence[str]) -> list[str | None]:
    """Model label i -> GenEval class (None: not a GenEval class). By name, with COCO's other
    spellings mapped (mmdet 3 writes `traffic_light`); generic labels (LABEL_i) map by position."""
    named = [ALIASES.get(label.replace("_", " "), label.replace("_", " ")) for label in labels]
    if set(named) & set(classes):
        missing = sorted(set(classes) - set(named))
        if missing:  # a silently undetectable class would score 0 on its prompts
            raise InputError(f"detector labels: no label for GenEval class(es) {missing}")
        return [n if n in classes else None for n in named]
    if len(labels) == len(classes):
        return list(classes)
    raise InputError(f"detector labels: expected GenEval class names or {len(classes)} labels, got {len(labels)}")


def mmdet_resize_shape(h: int, w: int, short: int) -> tuple[int, int]:
    """mmdet's keep-ratio rescale to scale (1333, 800), with both edges scaled by short/800."""
    s = min(round(short * 1333 / 800) / max(h, w), short / min(h, w))
    return int(h * s + 0.5), int(w * s + 0.5)


def mask2bbox(masks: torch.Tensor) -> torch.Tensor:
    """mmdet's integer boxes `[x_min, y_min, x_max + 1, y_max + 1]`; zeros for an empty mask."""
    def span(hit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.arange(hit.shape[1])
        return torch.where(hit, i, hit.shape[1]).amin(1), torch.where(hit, i + 1, 0).amax(1)

    xs, ys = (masks.view(torch.uint8).amax(d).bool() for d in (1, 2))  # = any(d), several times faster
    (x1, x2), (y1, y2) = span(xs), span(ys)
    boxes = torch.stack([x1, y1, x2, y2], 1).float()
    boxes[~xs.any(1)] = 0
    return boxes


class Mask2FormerDetector:
    """transformers' `Mask2FormerForUniversalSegmentation` with mmdet 2.x's test pipeline and instance
    post-processing (top 100 query-class pairs; score = class prob x mean mask prob inside the mask;
    box = mask2bbox). transformers' own post-processor thresholds and resolves overlaps, so it is
    not used: GenEval needs every raw detection.

    Default weights: GenEval's own checkpoint, downloaded once, converted (`bench.geneval.convert`)
    and cached. One image per forward, as officially: a padded batch shifts every feature (global
    attention and GroupNorm see the padding).
    """

    name = "mask2former"

    def __init__(self, checkpoint: str = OFFICIAL_URL, image_size: int | None = 800, device: str | None = None,
                 max_per_image: int = 100, classes: Sequence[str] = OBJECT_NAMES, model: torch.nn.Module | None = None):
        self.requested, self.image_size = checkpoint, image_size or None
        self.device, self.max_per_image = device or default_device(), max_per_image
        self.classes, self._model, self._labels, self._resolved = list(classes), model, None, None

    def _resolve(self) -> tuple[str, dict | None]:
        if self._resolved is None:
            self._resolved = resolve(self.requested)
        return self._resolved

    @property
    def checkpoint(self) -> str:
        source = self._resolve()[1]
        return source["source"] if source else self.requested

    def weights(self) -> dict:
        """Which weights score: the checkpoint, its sha256 and whether it is GenEval's own file."""
        sha256 = (self._resolve()[1] or {}).get("sha256")
        return {"checkpoint": self.checkpoint, "checkpoint_sha256": sha256,
                "official_weights": sha256 is not None and sha256[:8] in OFFICIAL_FILES}

    def _load(self) -> torch.nn.Module:
        if self._model is None:
            from transformers import Mask2FormerForUniversalSegmentation
            self._model = Mask2FormerForUniversalSegmentation.from_pretrained(self._resolve()[0])
        if self._labels is None:
            cfg = self._model.config
            self._labels = label_names([cfg.id2label[i] for i in range(cfg.num_labels)], self.classes)
            self._model.to(self.device).eval()
        return self._model

    def preprocess(self, image: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        """mmdet 2.x: uint8 resize with cv2 INTER_LINEAR (`mmcv.imrescale`), normalise as
        `mmcv.imnormalize` (float32 subtract, float64 multiply by 1/std), zero-pad to a multiple of 32."""
        import cv2

        x = np.asarray(image.convert("RGB"))
        if self.image_size:
            h, w = mmdet_resize_shape(*x.shape[:2], self.image_size)
            x = cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR)
        x = ((x.astype(np.float32) - PIXEL_MEAN.astype(np.float32)) * (1 / PIXEL_STD)).astype(np.float32)
        h, w = x.shape[:2]
        padded = np.zeros((32 * math.ceil(h / 32), 32 * math.ceil(w / 32), 3), np.float32)
        padded[:h, :w] = x
        return torch.from_numpy(padded).permute(2, 0, 1)[None], (h, w)

    def postprocess(self, logits: torch.Tensor, mask_logits: torch.Tensor, padded: tuple[int, int],
                    resized: tuple[int, int], original: tuple[int, int]) -> list[dict]:
        probs = logits.softmax(-1)[:, :-1]
        top, flat = probs.flatten().topk(min(self.max_per_image, probs.numel()))
        query, label = flat // probs.shape[1], flat % probs.shape[1]
        queries, inverse = query.unique(return_inverse=True)  # upsample each selected query's mask once
        m = F.interpolate(mask_logits[queries][None], size=padded, mode="bilinear", align_corners=False)
        m = m[:, :, : resized[0], : resized[1]]
        if tuple(resized) != tuple(original):  # (at equal size bilinear is the identity: skip it)
            m = F.interpolate(m, size=original, mode="bilinear", align_corners=False)
        m = m[0]
        binary = m > 0
        mask_score = m.sigmoid().mul_(binary).sum((1, 2)) / (binary.sum((1, 2), dtype=torch.int32) + 1e-6)
        score, boxes = top * mask_score[inverse], mask2bbox(binary)[inverse]
        return [{"class": self._labels[l], "score": float(s), "box": b.tolist(), "mask": binary[q].numpy()}
                for l, s, b, q in zip(label.tolist(), score, boxes, inverse.tolist()) if self._labels[l] is not None]

    @torch.inference_mode()
    def detect(self, images: list[Image.Image]) -> list[list[dict]]:
        model, out = self._load(), []
        for im in images:
            x, size = self.preprocess(im)
            o = model(pixel_values=x.to(self.device))
            out.append(self.postprocess(o.class_queries_logits[0].float().cpu(), o.masks_queries_logits[0].float().cpu(),
                                        tuple(x.shape[-2:]), size, (im.height, im.width)))
        return out


class MMDetDetector:
    """GenEval's own detector through mmdet 3.x: the reference that `bench.geneval.parity_mmdet`
    checks the converted `mask2former` backend against. Default weights: the 3.x conversion of the
    official checkpoint (same training run; GenEval itself runs mmdet 2.x, which needs mmcv-full 1.7).

    PyPI has no mmcv binary wheel (and mmcv-lite lacks the ops), so build it once (6-25 min, 2 cores):
        pip install "setuptools>=77.0.3,<81" wheel ninja
        pip download mmcv==2.1.0 --no-deps --no-binary :all: && tar xzf mmcv-2.1.0.tar.gz
        sed -i "s/'-std=c++1[47]'/'-std=c++20'/g" mmcv-2.1.0/setup.py   # torch >= 2.14 headers need C++20
        MMCV_WITH_OPS=1 MAX_JOBS=2 pip install --no-build-isolation ./mmcv-2.1.0
        pip install -e ".[mmdet]"        # mmengine 0.10.7, mmdet 3.3.0
    The built mmcv is tied to the torch it was built against. `checkpoint=None`: random weights.
    """

    name = "mmdet"

    def __init__(self, checkpoint: str = MMDET_CHECKPOINT, config: str = MMDET_CONFIG, image_size: int | None = 800,
                 device: str | None = None, classes: Sequence[str] = OBJECT_NAMES):
        self.checkpoint, self.config, self.image_size = checkpoint, config, image_size or None
        self.device, self.classes, self._model = device or default_device(), list(classes), None

    def weights(self) -> dict:
        local = self.checkpoint is not None and Path(self.checkpoint).is_file()
        return named_weights(self.checkpoint, sha256_file(self.checkpoint) if local else None)

    def _load(self):
        if self._model is None:
            try:
                import mmdet
                from mmdet.apis import init_detector
                from mmengine.config import Config
            except ImportError as e:
                raise InputError(f"--detector mmdet: not installed ({e}); see README 'mmdet backend'") from None
            path = Path(self.config)
            if not path.is_file():
                path = Path(mmdet.__file__).parent / ".mim" / "configs" / "mask2former" / f"{self.config}.py"
            cfg = Config.fromfile(str(path))
            cfg.model.backbone.init_cfg = None  # weights come from the checkpoint, not ImageNet
            for step in cfg.test_dataloader.dataset.pipeline:
                if step["type"] == "LoadImageFromFile":  # GenEval's mmdet 2.x resizes the uint8 image; 3.x floats
                    step["to_float32"] = False
                if step["type"] == "Resize":
                    step["scale"] = (round(self.image_size * 1333 / 800), self.image_size) if self.image_size else None
            cfg.test_dataloader.dataset.pipeline = [s for s in cfg.test_dataloader.dataset.pipeline
                                                    if s["type"] != "Resize" or s["scale"]]
            self._model = init_detector(cfg, self.checkpoint, device=self.device)
            self._labels = label_names(self._model.dataset_meta["classes"], self.classes)
        return self._model

    def detect(self, images: list[Image.Image]) -> list[list[dict]]:
        from mmdet.apis import inference_detector
        bgr = [np.ascontiguousarray(np.asarray(im.convert("RGB"))[:, :, ::-1]) for im in images]
        out = []
        for r in inference_detector(self._load(), bgr):
            p = r.pred_instances.cpu()
            out.append([{"class": self._labels[l], "score": float(s), "box": b.tolist(), "mask": m.numpy().astype(bool)}
                        for l, s, b, m in zip(p.labels.tolist(), p.scores, p.bboxes, p.masks)
                        if self._labels[l] is not None])
        return out


def get_detector(name: str = "mask2former", **kw) -> Detector:
    """`mask2former` (default), `mmdet` or `testbed`; None-valued options mean the backend's default."""
    kw = {k: v for k, v in kw.items() if v is not None}
    if name == "mask2former":
        return Mask2FormerDetector(**kw)
    if name == "mmdet":
        return MMDetDetector(**kw)
    if name == "testbed":
        from bench.testbed.detector import TestbedDetector
        return TestbedDetector(**kw)
    raise InputError(f"--detector: expected mask2former, mmdet or testbed, got {name!r}")
