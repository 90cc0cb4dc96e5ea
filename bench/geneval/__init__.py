"""GenEval, reproduced: the official layout, decision rules and summary, with pluggable detectors.

`evaluate_detections(metadata, detections)` is the official per-image decision as a pure function.
"""
from bench.geneval.rules import COLORS, Rules, evaluate_detections, relative_position

__all__ = ["COLORS", "Rules", "evaluate_detections", "relative_position"]
