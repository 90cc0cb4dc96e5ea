"""GenEval's colour classifier: zero-shot CLIP over the 10 colours, on the masked, cropped object.

Crop protocol (spec §8): object pixels over solid #999 grey, cropped to the box, then CLIP's eval
preprocess. Text side as clip_benchmark's `zero_shot_classifier` (open_clip's `build_zero_shot_classifier`
does the same): per colour, the 3 templates are encoded, L2-normalised, averaged and normalised
again; one weight matrix per object class.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from bench.geneval.detectors import default_device
from bench.geneval.rules import COLORS
from lightgen.errors import InputError

TEMPLATES = ("a photo of a {c} {obj}", "a photo of a {c}-colored {obj}", "a photo of a {c} object")
BACKGROUND = (153, 153, 153)  # "#999"


class ColorClassifier(Protocol):
    name: str
    checkpoint: str
    precision: str  # how the logits were computed, e.g. "fp16-autocast" (official, CUDA) or "fp32"

    def classify(self, items: list[tuple[Image.Image, dict, str]]) -> list[str]:
        """Colours of the objects of one include clause (one image), as one batch like GenEval."""


def object_crop(image: Image.Image, detection: dict,
                background: tuple[int, int, int] | None = BACKGROUND) -> Image.Image:
    """The object over grey (background=None keeps the real one), cropped to its box (PIL rounds)."""
    image = image.convert("RGB")
    if background is not None:
        image = Image.composite(image, Image.new("RGB", image.size, background), Image.fromarray(detection["mask"]))
    box = tuple(detection["box"][:4])
    # An empty box would crash CLIP's preprocess; only zero-score detections have one.
    return image.crop(box) if round(box[2]) > round(box[0]) and round(box[3]) > round(box[1]) else image


class ClipColorClassifier:
    """open_clip `ViT-L-14` / `openai` by default (GenEval's model); weights load on first use.

    Logits as clip_benchmark 1.4's `zero_shot_classifier` + `run_classification(amp=True)`, which
    GenEval calls: on CUDA both run under fp16 autocast, so the logits `100 * normalize(f) @ W` are
    fp16 (ties go to the first colour). Elsewhere everything is fp32 (`precision` says which).
    """

    name = "clip"

    def __init__(self, model: str = "ViT-L-14", pretrained: str | None = "openai", device: str | None = None,
                 batch_size: int = 16, amp: bool | None = None):
        self.model_name, self.pretrained = model, pretrained
        self.checkpoint = f"{model}:{pretrained}"
        self.device, self.batch_size = device or default_device(), batch_size
        self.amp = str(self.device).startswith("cuda") if amp is None else amp
        self.precision = "fp16-autocast" if self.amp else "fp32"
        self._model = self._preprocess = self._tokenizer = None
        self._weights: dict[str, torch.Tensor] = {}

    def _load(self):
        if self._model is None:
            import open_clip
            self._model, _, self._preprocess = open_clip.create_model_and_transforms(
                self.model_name, pretrained=self.pretrained, device=self.device)
            self._model.eval()
            self._tokenizer = open_clip.get_tokenizer(self.model_name)
        return self._model

    def _autocast(self):
        return torch.autocast(torch.device(self.device).type, dtype=torch.float16, enabled=self.amp)

    @torch.inference_mode()
    def class_weights(self, classname: str) -> torch.Tensor:
        """(D, 10) zero-shot weights for one object class, cached: per colour, its 3 templates are
        encoded, L2-normalised, averaged and normalised again."""
        if classname not in self._weights:
            model, columns = self._load(), []
            with self._autocast():
                for colour in COLORS:
                    texts = self._tokenizer([t.format(c=colour, obj=classname) for t in TEMPLATES]).to(self.device)
                    w = F.normalize(model.encode_text(texts), dim=-1).mean(0)
                    columns.append(w / w.norm())
            self._weights[classname] = torch.stack(columns, 1)
        return self._weights[classname]

    @torch.inference_mode()
    def logits(self, items: Sequence[tuple[Image.Image, dict, str]]) -> torch.Tensor:
        """(N, 10) colour logits of one clause's objects (all of one class), batches of `batch_size`."""
        model, out = self._load(), []
        weights = self.class_weights(items[0][2])
        for i in range(0, len(items), self.batch_size):
            chunk = items[i: i + self.batch_size]
            x = torch.stack([self._preprocess(object_crop(im, det)) for im, det, _ in chunk]).to(self.device)
            with self._autocast():
                out.append((100.0 * F.normalize(model.encode_image(x), dim=-1) @ weights).float().cpu())
        return torch.cat(out)

    def classify(self, items: Sequence[tuple[Image.Image, dict, str]]) -> list[str]:
        if len({cls for _, _, cls in items}) > 1:
            raise ValueError("classify: one clause's objects (a single class) per call")
        return [COLORS[int(i)] for i in self.logits(items).argmax(1)] if items else []


def get_color_classifier(name: str = "clip", **kw) -> ColorClassifier:
    """`clip` (default) or `testbed`; None-valued options mean the backend's default."""
    kw = {k: v for k, v in kw.items() if v is not None}
    if name == "clip":
        return ClipColorClassifier(**kw)
    if name == "testbed":
        from bench.testbed.detector import PaletteColorClassifier
        return PaletteColorClassifier(**kw)
    raise InputError(f"--color-classifier: expected clip or testbed, got {name!r}")
