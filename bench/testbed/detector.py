"""Classical detector and colour classifier for the testbed, with the Mask2Former/CLIP interfaces.

A flat object over the background, anti-aliased or blurred, is `background + alpha * (colour -
background)`: every one of its pixels points from the background in the same RGB direction, with a
length that is its coverage. So, after a light Gaussian pre-filter against pixel noise (the
templates get the same blur): pixels far enough from the background are foreground; connected
components are candidate objects; the concentration of their pixel directions (the weighted mean
resultant length, 1 for a flat colour, ~0 for noise) is their objectness; components holding two
colours (touching objects) are split by palette colour; and each object's alpha map is fitted by
every shape template placed by moment matching (soft IoU, with a little blur forgiven). The score
is fit x objectness: teacher renders score ~1, blobs and noise score low, so GenEval's 0.3 / 0.9
thresholds keep their meaning. Two gates keep a model's token mosaics from passing as objects (v1
scored random 4-px palette blocks 0.06-0.08 GenEval overall, as much as a 500-step KD model): an
object is at least 0.72x the teacher's smallest (one 4-px token at 32 px is not an object), and at
least half of the ring of pixels around it is background (teacher objects: all of it). Colours are
named by unmixing the object's mean colour against the background, which is exact for anti-aliased
edges and averages pixel noise away.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from bench.testbed.world import BACKGROUND, COLOURS, MIN_RESOLUTION, SHAPES, coverage, shape_moments
from lightgen.errors import InputError

_BG = np.asarray(BACKGROUND, np.float32)
_DIRS = np.asarray(list(COLOURS.values()), np.float32) - _BG  # (10, 3): background -> colour
_NAMES = list(COLOURS)
CONTRAST = 40.0  # RGB distance from the background that makes a pixel foreground (~1/3 coverage)
UNIFORM = 0.9  # objectness above which a component is one colour and is never split
SPLIT_SHARE = 0.25  # in a mixed component, a palette colour with this share becomes its own object
SIZE_RANGE = (0.18, 0.65)  # object side as a fraction of the image side (teacher: 0.25-0.44)
ISOLATION = 0.5  # least background share of the one-pixel ring around an object
BLURS = (0.0, 0.4, 0.8)  # edge softness (px at 32 px) forgiven: generated images are rarely crisp
SMOOTH = 0.5  # Gaussian pre-filter (px at 32 px) against pixel noise; the templates get the same blur
_EIGHT = np.ones((3, 3), bool)


def unmix(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Offsets from the background (..., 3) -> per palette colour: coverage alpha and the RGB
    distance of the pixel from the segment background -> colour (..., 10)."""
    alpha = np.clip(d @ _DIRS.T / (_DIRS**2).sum(1), 0, 1)
    return alpha, np.linalg.norm(d[..., None, :] - alpha[..., None] * _DIRS, axis=-1)


def palette_colour(d: np.ndarray) -> int:
    """Index of the palette colour whose blend with the background best explains offset d (3,)."""
    return int(np.argmin(unmix(d)[1]))


def objectness(d: np.ndarray) -> float:
    """Mean resultant length of the offsets d (N, 3), weighted by their length."""
    return float(np.linalg.norm(d.sum(0)) / max(np.linalg.norm(d, axis=1).sum(), 1e-6))


def fit_shape(a: np.ndarray, shape: str, blur: float = 0.0) -> tuple[float, tuple[float, float, float, float]]:
    """Soft IoU of alpha map `a` with `shape` placed by moment matching and blurred by `blur` px,
    and the fitted box."""
    m = float(a.sum())
    h, w = a.shape
    ys, xs = np.arange(h) + 0.5, np.arange(w) + 0.5
    mx, my = (a.sum(0) @ xs) / m, (a.sum(1) @ ys) / m
    # Box-filtered pixels add 1/12 px^2 of variance and the blur its square; remove both before
    # inverting the template's variance.
    vx = max((a.sum(0) @ (xs - mx) ** 2) / m - 1 / 12 - blur**2, 1e-3)
    vy = max((a.sum(1) @ (ys - my) ** 2) / m - 1 / 12 - blur**2, 1e-3)
    _, cx, cy, tvx, tvy = shape_moments(shape)
    bw, bh = np.sqrt(vx / tvx), np.sqrt(vy / tvy)
    box = (mx - cx * bw, my - cy * bh, mx + (1 - cx) * bw, my + (1 - cy) * bh)
    t = coverage(shape, box, h, w)
    if blur > 0:
        t = ndimage.gaussian_filter(t, blur, mode="constant")
    return float(np.minimum(a, t).sum() / max(np.maximum(a, t).sum(), 1e-6)), box


class TestbedDetector:
    """Detector backend `testbed`: same records as the Mask2Former backend (class, score, box, mask)."""

    name = "testbed"
    checkpoint = "classical-v2"
    image_size = None
    classes = list(SHAPES)

    def weights(self) -> dict:
        return {"checkpoint": self.checkpoint, "checkpoint_sha256": None, "official_weights": False}

    def detect(self, images: list[Image.Image]) -> list[list[dict]]:
        return [self._detect(np.asarray(im.convert("RGB"), np.float32) - _BG) for im in images]

    def _detect(self, d: np.ndarray) -> list[dict]:
        h, w = d.shape[:2]
        if min(h, w) < MIN_RESOLUTION:
            raise InputError(f"image: expected at least {MIN_RESOLUTION} px a side, got {w}x{h}")
        smooth = SMOOTH * min(h, w) / 32
        d = ndimage.gaussian_filter(d, (smooth, smooth, 0))
        fg = np.linalg.norm(d, axis=-1) >= CONTRAST
        comps, n = ndimage.label(fg, _EIGHT)
        out = []
        for i in range(1, n + 1):
            for part in self._split(comps == i, d):
                rec = self._fit(part, fg, d, min(h, w), smooth)
                if rec is not None:
                    out.append(rec)
        return sorted(out, key=lambda r: -r["score"])

    @staticmethod
    def _split(comp: np.ndarray, d: np.ndarray) -> list[np.ndarray]:
        """The objects in one component: itself if it is one colour, else the connected parts of
        each palette colour holding at least SPLIT_SHARE of its pixels (touching objects)."""
        if objectness(d[comp]) >= UNIFORM:
            return [comp]
        alpha, resid = unmix(d[comp])
        best = np.argmin(resid, axis=-1)
        share = np.bincount(best, weights=alpha[np.arange(len(best)), best], minlength=len(_NAMES))
        major = np.flatnonzero(share >= SPLIT_SHARE * share.sum())
        if not len(major):  # no colour dominates: noise, not objects
            return []
        own = np.full(comp.shape, -1)
        own[comp] = major[np.argmin(resid[:, major], axis=-1)]
        parts = []
        for c in major:
            lab, n = ndimage.label(own == c, _EIGHT)
            parts += [lab == j for j in range(1, n + 1)]
        return parts

    @staticmethod
    def _fit(part: np.ndarray, fg: np.ndarray, d: np.ndarray, side: int, smooth: float) -> dict | None:
        """Best shape for one object. Alpha is the projection on the object's own colour direction,
        scaled by its typical full-coverage length, over the part plus a one-pixel ring of faint
        edge pixels below the foreground cut."""
        min_area = (SIZE_RANGE[0] * side) ** 2 / 2  # a diamond of the smallest side
        ring = ndimage.binary_dilation(part, _EIGHT) & ~part
        isolated = not ring.any() or (~fg[ring]).mean() >= ISOLATION
        if part.sum() < min_area or not isolated:
            return None
        dp = d[part]
        u = dp.sum(0) / max(np.linalg.norm(dp.sum(0)), 1e-6)
        full = max(float(_DIRS[palette_colour(dp.mean(0))] @ u), CONTRAST)
        region = part | (ring & ~fg)
        a = np.where(region, np.clip(d @ u / full, 0, 1), 0).astype(np.float32)
        blurs = [np.hypot(smooth, b * side / 32) for b in BLURS]
        fits = [max((fit_shape(a, s, b) for b in blurs), key=lambda f: f[0]) for s in SHAPES]
        k = int(np.argmax([f[0] for f in fits]))
        iou, box = fits[k]
        mask = a >= 0.5
        size = max(box[2] - box[0], box[3] - box[1]) / side
        if mask.sum() < min_area or not SIZE_RANGE[0] <= size <= SIZE_RANGE[1]:
            return None
        ys, xs = np.nonzero(mask)
        return {"class": SHAPES[k], "score": iou * objectness(dp),
                "box": [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)],
                "mask": mask}


class PaletteColorClassifier:
    """Colour backend `testbed`: the palette colour whose blend with the background best explains
    the object's mean colour (same interface as the CLIP classifier)."""

    name = "testbed-palette"
    checkpoint = "unmix-v1"
    precision = "fp32"

    def classify(self, items: list[tuple[Image.Image, dict, str]]) -> list[str]:
        out = []
        for image, det, _classname in items:
            d = np.asarray(image.convert("RGB"), np.float32) - _BG
            mask = np.array(det["mask"], bool)
            if not mask.any():  # another backend's empty mask: fall back to its box
                x1, y1, x2, y2 = (int(round(v)) for v in det["box"])
                mask[y1:y2, x1:x2] = True
            out.append(_NAMES[palette_colour(d[mask].mean(0))])
        return out
