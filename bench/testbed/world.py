"""The testbed world: flat, anti-aliased shapes in the 10 GenEval colours on a grey background.

Everything is defined in relative units (the image is the unit square), so one seed gives the same
scene at 32 px and at 64 px, and the renderer and the detector's shape templates share one
coverage function: the detector fits exactly the shapes the teacher draws.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from lightgen.errors import InputError

# GenEval's colour order (specs/geneval.md §2). Values chosen far from the background and from
# each other's blends with it, so anti-aliased edges still unmix to the right colour.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (250, 225, 30),
    "green": (30, 160, 50),
    "blue": (30, 80, 230),
    "purple": (135, 35, 200),
    "pink": (255, 130, 200),
    "brown": (115, 60, 15),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
}
BACKGROUND = (128, 128, 128)
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
MIN_RESOLUTION = 32  # objects are >= 8 px there; below it the detector cannot tell shapes apart
MAX_OBJECTS = 4
SUPERSAMPLE = 8
CROSS_ARM = 0.36  # half-thickness of the cross's arms, in half-box units

# Layout constants, in image units: border margin, minimum gap between boxes, size range per count.
MARGIN = 0.04
GAP = 0.07
SIZES = {1: (0.30, 0.44), 2: (0.27, 0.40), 3: (0.25, 0.36), 4: (0.25, 0.34)}
POSITION_MARGIN = 0.1  # GenEval's position threshold
CLEAR = (0.65, 0.35)  # a stated relation needs |d| >= 0.65 on its axis and |d| <= 0.35 across


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of points (u, v) in [-1, 1]^2 box coordinates (v grows downward)."""
    au, av = np.abs(u), np.abs(v)
    box = (au <= 1) & (av <= 1)
    if shape == "circle":
        return u * u + v * v <= 1
    if shape == "square":
        return box
    if shape == "triangle":  # apex up, flat base
        return box & (au <= (v + 1) / 2)
    if shape == "diamond":
        return au + av <= 1
    if shape == "cross":
        return box & ((au <= CROSS_ARM) | (av <= CROSS_ARM))
    raise InputError(f"shape: expected one of {', '.join(SHAPES)}, got {shape!r}")


def coverage(shape: str, box: tuple[float, float, float, float], height: int, width: int,
             supersample: int = SUPERSAMPLE) -> np.ndarray:
    """(H, W) float32 fraction of each pixel covered by `shape` filling `box` (x1, y1, x2, y2 in px).

    Area-averaging over supersample^2 points per pixel is the anti-aliasing; only the box's pixels
    are evaluated.
    """
    x1, y1, x2, y2 = box
    out = np.zeros((height, width), np.float32)
    c0, c1 = max(int(np.floor(x1)), 0), min(int(np.ceil(x2)), width)
    r0, r1 = max(int(np.floor(y1)), 0), min(int(np.ceil(y2)), height)
    if c1 <= c0 or r1 <= r0 or x2 <= x1 or y2 <= y1:
        return out
    sub = (np.arange(supersample) + 0.5) / supersample
    xs = (np.arange(c0, c1)[:, None] + sub).ravel()
    ys = (np.arange(r0, r1)[:, None] + sub).ravel()
    u = (xs - (x1 + x2) / 2) / ((x2 - x1) / 2)
    v = (ys - (y1 + y2) / 2) / ((y2 - y1) / 2)
    hit = _inside(shape, u[None, :], v[:, None]).astype(np.float32)
    out[r0:r1, c0:c1] = hit.reshape(r1 - r0, supersample, c1 - c0, supersample).mean((1, 3))
    return out


@dataclass(frozen=True)
class ObjSpec:
    """One object a caption asks for; colour None = the teacher picks one."""
    shape: str
    colour: str | None = None


@dataclass(frozen=True)
class SceneSpec:
    """What a caption constrains: the objects, and optionally `objects[a] relation objects[b]`."""
    objects: tuple[ObjSpec, ...]
    relation: tuple[int, str, int] | None = None


@dataclass(frozen=True)
class Obj:
    """A placed object: centre and side of its square box, in image units."""
    shape: str
    colour: str
    cx: float
    cy: float
    size: float

    def box(self, resolution: int = 1) -> tuple[float, float, float, float]:
        h = self.size / 2
        return tuple(float(c * resolution) for c in (self.cx - h, self.cy - h, self.cx + h, self.cy + h))


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]


def relations(a: tuple[float, ...], b: tuple[float, ...], margin: float = POSITION_MARGIN) -> dict[str, float]:
    """GenEval's position geometry (specs/geneval.md §9): the normalised offsets (dx, dy) of box a
    from box b after the margin; a relation holds where its signed component exceeds 0.5."""
    o = np.array([(a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2])
    d = np.array([abs(a[2] - a[0]) + abs(b[2] - b[0]), abs(a[3] - a[1]) + abs(b[3] - b[1])])
    r = np.maximum(np.abs(o) - margin * d, 0) * np.sign(o) / max(float(np.linalg.norm(o)), 1e-9)
    return {"left of": -r[0], "right of": r[0], "above": -r[1], "below": r[1]}


def _relation_clear(a: Obj, b: Obj, relation: str) -> bool:
    rel = relations(a.box(), b.box())
    across = ("above", "below") if relation in ("left of", "right of") else ("left of", "right of")
    return rel[relation] >= CLEAR[0] and max(rel[r] for r in across) <= CLEAR[1]


def _apart(a: Obj, b: Obj) -> bool:
    """Boxes separated by at least GAP along some axis (so anti-aliased edges never touch)."""
    return max(abs(a.cx - b.cx), abs(a.cy - b.cy)) >= (a.size + b.size) / 2 + GAP


def sample_scene(spec: SceneSpec, rng: np.random.Generator, tries: int = 1000) -> Scene:
    """A random layout satisfying `spec`: rejection sampling of sizes and centres, so every valid
    layout is reachable and no artificial grid is imprinted on the data."""
    n = len(spec.objects)
    if not 1 <= n <= MAX_OBJECTS:
        raise InputError(f"scene: expected 1 to {MAX_OBJECTS} objects, got {n}")
    colours = [o.colour or str(rng.choice(list(COLOURS))) for o in spec.objects]
    lo, hi = SIZES[n]
    for _ in range(tries):
        objs: list[Obj] = []
        for o, colour in zip(spec.objects, colours):
            s = rng.uniform(lo, hi)
            for _ in range(50):
                c = rng.uniform(MARGIN + s / 2, 1 - MARGIN - s / 2, size=2)
                cand = Obj(o.shape, colour, float(c[0]), float(c[1]), float(s))
                if all(_apart(cand, p) for p in objs):
                    objs.append(cand)
                    break
            else:
                break
        if len(objs) == n and (spec.relation is None or _relation_clear(
                objs[spec.relation[0]], objs[spec.relation[2]], spec.relation[1])):
            return Scene(tuple(objs))
    raise InputError(f"scene: no layout found for {spec} in {tries} tries")


class TokenGridRng:
    """An rng for `sample_scene` that puts every box edge on a grid of `cells` × `cells` tokens (the
    token-aligned world of the KD probes), its rejection sampling unchanged: a scalar `uniform(lo, hi)`
    is a side, a pair is a centre. A side may fall up to 1.5 px (at 32 px) below the size range so that
    a token multiple fits (two objects, 4-px tokens at 32 px: sides of 8 or 12 px)."""

    SIDE_SLACK = 1.5 / 32

    def __init__(self, rng: np.random.Generator, cells: int):
        self.rng, self.unit = rng, 1 / cells

    def choice(self, *args, **kwargs):
        return self.rng.choice(*args, **kwargs)

    def uniform(self, low: float, high: float, size: int | None = None):
        u = self.unit
        if size is None:  # a side: a multiple of the token size in [low - slack, high]
            return u * self.rng.integers(math.ceil((low - self.SIDE_SLACK) / u), math.floor(high / u + 1e-9) + 1)
        half = low - MARGIN  # a centre: edges (centre - side/2) on the grid, inside the margins
        edges = self.rng.integers(math.ceil(MARGIN / u - 1e-9), math.floor((high - half) / u + 1e-9) + 1, size)
        return edges * u + half


def render_scene(scene: Scene, resolution: int = 32) -> Image.Image:
    """Composite each object's coverage over the background (objects never overlap)."""
    if resolution < MIN_RESOLUTION:
        raise InputError(f"resolution: expected >= {MIN_RESOLUTION} px (the detector's minimum), got {resolution}")
    img = np.empty((resolution, resolution, 3), np.float32)
    img[:] = BACKGROUND
    for o in scene.objects:
        a = coverage(o.shape, o.box(resolution), resolution, resolution)[..., None]
        img += a * (np.asarray(COLOURS[o.colour], np.float32) - img)
    return Image.fromarray(np.rint(img).astype(np.uint8), "RGB")


@lru_cache(maxsize=None)
def shape_moments(shape: str, n: int = 512) -> tuple[float, float, float, float, float]:
    """(area, cx, cy, var_x, var_y) of `shape` in the unit box: the detector inverts these to fit a
    box to an object's alpha map by moment matching."""
    a = coverage(shape, (0.0, 0.0, float(n), float(n)), n, n, supersample=2).astype(np.float64)
    g = (np.arange(n) + 0.5) / n
    m = a.sum()
    cx, cy = (a.sum(0) @ g) / m, (a.sum(1) @ g) / m
    vx, vy = (a.sum(0) @ (g - cx) ** 2) / m, (a.sum(1) @ (g - cy) ** 2) / m
    return m / n**2, cx, cy, vx, vy
