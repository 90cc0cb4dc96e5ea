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

    def classify(self, items: list[tuple[Image.Image, dict, str]]) -> list[str]: ...


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
    """open_clip `ViT-L-14` / `openai` by default (GenEval's model); weights load on first use."""

    name = "clip"

    def __init__(self, model: str = "ViT-L-14", pretrained: str | None = "openai", device: str | None = None,
                 batch_size: int = 16):
        self.model_name, self.pretrained = model, pretrained
        self.checkpoint = f"{model}:{pretrained}"
        self.device, self.batch_size = device or default_device(), batch_size
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

    def _autocast(self):  # the official run uses amp on CUDA; fp32 elsewhere
        return torch.autocast("cuda", enabled=str(self.device).startswith("cuda"))

    def class_weights(self, classname: str) -> torch.Tensor:
        """(D, 10) zero-shot weights for one object class, cached."""
        if classname not in self._weights:
            import open_clip
            templates = [lambda c, t=t: t.format(c=c, obj=classname) for t in TEMPLATES]
            with self._autocast():
                w = open_clip.build_zero_shot_classifier(self._load(), self._tokenizer, COLORS, templates,
                                                         num_classes_per_batch=None, device=self.device)
            self._weights[classname] = w.float()
        return self._weights[classname]

    @torch.inference_mode()
    def classify(self, items: Sequence[tuple[Image.Image, dict, str]]) -> list[str]:
        model, out = self._load(), []
        for i in range(0, len(items), self.batch_size):
            chunk = items[i: i + self.batch_size]
            x = torch.stack([self._preprocess(object_crop(im, det)) for im, det, _ in chunk]).to(self.device)
            with self._autocast():
                feats = F.normalize(model.encode_image(x).float(), dim=-1)
            out += [COLORS[int((f @ self.class_weights(cls)).argmax())] for f, (_, _, cls) in zip(feats, chunk)]
        return out


def get_color_classifier(name: str = "clip", **kw) -> ColorClassifier:
    """`clip` (default) or `testbed`; None-valued options mean the backend's default."""
    kw = {k: v for k, v in kw.items() if v is not None}
    if name == "clip":
        return ClipColorClassifier(**kw)
    if name == "testbed":
        from bench.testbed.detector import PaletteColorClassifier
        return PaletteColorClassifier(**kw)
    raise InputError(f"--color-classifier: expected clip or testbed, got {name!r}")
