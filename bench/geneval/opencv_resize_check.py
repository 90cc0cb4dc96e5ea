"""Does cv2's uint8 INTER_LINEAR resize (what mmcv.imrescale runs in GenEval) depend on the opencv version?

Resizes 6 seeded random images of GenEval-like sizes to mmdet's (1333, 800) keep-ratio scale and prints
the sha256 of all outputs, and whether mmcv.imnormalize's in-place cv2 ops equal the numpy formula of
bench.geneval.detectors (float32 subtract, float64 multiply by 1/std). Run it under each opencv, e.g.
    python -m venv /tmp/cv46 && /tmp/cv46/bin/pip install opencv-python-headless==4.6.0.66 "numpy<2"
    /tmp/cv46/bin/python bench/geneval/opencv_resize_check.py >> results/geneval/opencv-resize/record.jsonl
(run as a file: it needs only opencv and numpy, not this package's dependencies).
"""
import hashlib
import json
import platform

import cv2
import numpy as np

MEAN, STD = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])


def main() -> None:
    rng = np.random.default_rng(0)
    digest, normalize_same = hashlib.sha256(), True
    for h, w in [(512, 512), (1024, 1024), (480, 640), (333, 500), (750, 1333), (37, 91)]:
        image = rng.integers(0, 256, (h, w, 3), np.uint8)
        s = min(1333 / max(h, w), 800 / min(h, w))
        resized = cv2.resize(image, (int(w * s + 0.5), int(h * s + 0.5)), interpolation=cv2.INTER_LINEAR)
        digest.update(resized.tobytes())
        ours = ((resized.astype(np.float32) - MEAN.astype(np.float32)) * (1 / STD)).astype(np.float32)
        theirs = resized.astype(np.float32)
        cv2.subtract(theirs, np.float64(MEAN.reshape(1, -1)), theirs)  # mmcv.imnormalize_
        cv2.multiply(theirs, 1 / np.float64(STD.reshape(1, -1)), theirs)
        normalize_same &= bool(np.array_equal(ours, theirs))
    print(json.dumps({"opencv": cv2.__version__, "numpy": np.__version__, "python": platform.python_version(),
                      "machine": platform.machine(), "resize_sha256": digest.hexdigest(),
                      "imnormalize_equals_numpy": normalize_same}))


if __name__ == "__main__":
    main()
