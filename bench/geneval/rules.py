"""GenEval's per-image decision (`evaluation/evaluate_images.py`), as a pure function.

The official code runs on float32 numpy arrays, so every comparison here is made in float32 as
well: `score > 0.3` rejects float32(0.3) itself, and the position rule's margin and norm are
float32. Exact score ties are ordered by a port of numpy 1.23's default argsort (the pinned
version), so decisions do not depend on the numpy or CPU that runs this code. Spec §7, §9, §10.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS = ("left of", "right of", "above", "below")
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


@dataclass(frozen=True)
class Rules:
    """The official `--options` (defaults as in GenEval since December 2023)."""

    threshold: float = 0.3
    counting_threshold: float = 0.9  # replaces `threshold` for every class of a `counting` prompt
    max_objects: int = 16  # per class, highest scores, applied before NMS
    nms_threshold: float = 1.0  # 1.0 = NMS off
    position_threshold: float = 0.1


def numpy123_argsort(values: Sequence[float]) -> list[int]:
    """numpy 1.23's `argsort(kind="quicksort")`: median-of-3 introsort, insertion sort below 17.

    Only the order of *equal* values depends on it: for n <= 16 it is stable, above that it follows
    the partitioning. Ported so tie handling matches the official environment everywhere.
    """
    v, idx = list(values), list(range(len(values)))

    def heapsort(lo: int, n: int) -> None:  # numpy's aheapsort on idx[lo:lo+n], 1-based heap
        def sift(i: int, tmp: int, n: int) -> None:
            j = 2 * i
            while j <= n:
                if j < n and v[idx[lo + j - 1]] < v[idx[lo + j]]:
                    j += 1
                if not v[tmp] < v[idx[lo + j - 1]]:
                    break
                idx[lo + i - 1], i, j = idx[lo + j - 1], j, 2 * j
            idx[lo + i - 1] = tmp

        for l in range(n >> 1, 0, -1):
            sift(l, idx[lo + l - 1], n)
        while n > 1:
            tmp, idx[lo + n - 1] = idx[lo + n - 1], idx[lo]
            n -= 1
            sift(1, tmp, n)

    stack: list[tuple[int, int, int]] = []
    pl, pr, depth = 0, len(v) - 1, 2 * (max(len(v), 1).bit_length() - 1)
    while True:
        if depth < 0:
            heapsort(pl, pr - pl + 1)
        else:
            while pr - pl > 15:
                pm = pl + ((pr - pl) >> 1)
                if v[idx[pm]] < v[idx[pl]]:
                    idx[pm], idx[pl] = idx[pl], idx[pm]
                if v[idx[pr]] < v[idx[pm]]:
                    idx[pr], idx[pm] = idx[pm], idx[pr]
                if v[idx[pm]] < v[idx[pl]]:
                    idx[pm], idx[pl] = idx[pl], idx[pm]
                vp, pi, pj = v[idx[pm]], pl, pr - 1
                idx[pm], idx[pj] = idx[pj], idx[pm]
                while True:
                    pi += 1
                    while v[idx[pi]] < vp:
                        pi += 1
                    pj -= 1
                    while vp < v[idx[pj]]:
                        pj -= 1
                    if pi >= pj:
                        break
                    idx[pi], idx[pj] = idx[pj], idx[pi]
                idx[pi], idx[pr - 1] = idx[pr - 1], idx[pi]
                depth -= 1
                if pi - pl < pr - pi:  # push the larger part, continue with the smaller
                    stack.append((pi + 1, pr, depth))
                    pr = pi - 1
                else:
                    stack.append((pl, pi - 1, depth))
                    pl = pi + 1
            for i in range(pl + 1, pr + 1):  # insertion sort
                t, j = idx[i], i
                while j > pl and v[t] < v[idx[j - 1]]:
                    idx[j] = idx[j - 1]
                    j -= 1
                idx[j] = t
        if not stack:
            return idx
        pl, pr, depth = stack.pop()


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Official IoU with "+1 pixel" areas, in float64 (numpy 1.x promotion); used only by NMS."""
    def area(x1, y1, x2, y2):
        return max(x2 - x1 + 1, 0) * max(y2 - y1 + 1, 0)

    a, b = [float(x) for x in a[:4]], [float(x) for x in b[:4]]
    inter = area(max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    union = area(*a) + area(*b) - inter
    return inter / union if union else 0.0


def filter_detections(detections: Sequence[dict], tag: str, rules: Rules = Rules()) -> dict[str, list[dict]]:
    """Per class: sort by score (descending), keep `score > conf` (float32), cap, optional NMS.

    Classes with nothing kept are absent, as officially. Input order is the detector's raw order.
    """
    conf = np.float32(rules.counting_threshold if tag == "counting" else rules.threshold)
    by_class: dict[str, list[dict]] = {}
    for d in detections:
        by_class.setdefault(d["class"], []).append(d)
    detected = {}
    for cls, dets in by_class.items():
        scores = np.asarray([d["score"] for d in dets], np.float32)
        order = [i for i in numpy123_argsort(scores.tolist())[::-1] if scores[i] > conf][: rules.max_objects]
        kept = []
        while order:
            kept.append(order.pop(0))
            if rules.nms_threshold < 1:
                order = [j for j in order if iou(dets[kept[-1]]["box"], dets[j]["box"]) < rules.nms_threshold]
        if kept:
            detected[cls] = [dets[i] for i in kept]
    return detected


def relative_position(box_a: Sequence[float], box_b: Sequence[float], margin: float = 0.1) -> tuple[str, ...]:
    """Relations of A with respect to B (y grows downward), float32 like the official numpy code.

    Each axis' centre offset shrinks by `margin` x the summed extents; the rest is divided by the
    norm of the *original* offset and compared strictly with 0.5. Fixed order left/right/above/below.
    """
    boxes = np.asarray([box_a[:4], box_b[:4]], np.float32).reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=1)
    dim_a, dim_b = np.abs(boxes[:, 1] - boxes[:, 0])
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - np.float32(margin) * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < np.float32(1e-3)):
        return ()
    dx, dy = revised / np.sqrt(offset[0] * offset[0] + offset[1] * offset[1])
    return tuple(rel for rel, hit in zip(RELATIONS, (dx < -0.5, dx > 0.5, dy < -0.5, dy > 0.5)) if hit)


def decide(metadata: dict[str, Any], detected: dict[str, list[dict]], rules: Rules = Rules()) -> tuple[bool, str]:
    """Include clauses in order (count -> colour -> position), then exclude clauses; every failing
    clause adds its official reason text. Colour and position look at the top-`count` objects only."""
    correct, reasons, groups = True, [], []
    for req in metadata["include"]:
        cls, n = req["class"], req["count"]
        found = detected.get(cls, [])[:n]
        ok = len(found) >= n
        if not ok:
            reasons.append(f"expected {cls}>={n}, found {len(found)}")
        else:
            if "color" in req:
                if any(d.get("color") is None for d in found):
                    raise ValueError(f"detections of {cls!r} need a 'color' for this prompt")
                colors, want = [d["color"] for d in found], req["color"]
                if colors.count(want) < n:
                    ok = False
                    tally = ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)
                    reasons.append(f"expected {want} {cls}>={n}, found {colors.count(want)} {want}; and {tally}")
            if "position" in req and ok:
                rel, g = req["position"]
                if groups[g] is None:
                    ok = False
                    reasons.append(f"no target for {cls} to be {rel}")
                else:
                    for a, b in ((a, b) for a in found for b in groups[g]):
                        rels = relative_position(a["box"], b["box"], rules.position_threshold)
                        if rel not in rels:
                            ok = False
                            reasons.append(f"expected {cls} {rel} target, found {' and '.join(rels)} target")
                            break
        correct &= ok
        groups.append(found if ok else None)
    for req in metadata.get("exclude", []):
        k = len(detected.get(req["class"], []))
        if k >= req["count"]:
            correct = False
            reasons.append(f"expected {req['class']}<{req['count']}, found {k}")
    return correct, "\n".join(reasons)


def evaluate_detections(metadata: dict[str, Any], detections: Sequence[dict], rules: Rules = Rules()) -> dict:
    """GenEval's verdict for one image.

    `detections`: `{"class", "score", "box": [x1, y1, x2, y2], "color": str | None}` in the
    detector's raw order (colour needed only for the top-`count` objects of a colour clause).
    Returns `{"correct": bool, "reason": str}` with the official reason texts.
    """
    correct, reason = decide(metadata, filter_detections(detections, metadata["tag"], rules), rules)
    return {"correct": correct, "reason": reason}
