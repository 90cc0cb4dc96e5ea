"""GenEval decision rules: hand-computed cases per tag, float32 thresholds, position edges, ties."""
import numpy as np
import pytest

from bench.geneval import Rules, evaluate_detections, relative_position
from bench.geneval.rules import filter_detections, numpy123_argsort

F32_03, F32_09 = float(np.float32(0.3)), float(np.float32(0.9))
ABOVE_03 = float(np.nextafter(np.float32(0.3), np.float32(1)))  # one float32 step above
ABOVE_09 = float(np.nextafter(np.float32(0.9), np.float32(1)))


def det(cls, score, box=(0, 0, 10, 10), color=None, **kw):
    return {"class": cls, "score": score, "box": list(box), "color": color, **kw}


def verdict(meta, dets, **rules):
    r = evaluate_detections(meta, dets, Rules(**rules))
    return r["correct"], r["reason"]


SINGLE = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}
TWO = {"tag": "two_object", "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}]}
COUNT2 = {"tag": "counting", "include": [{"class": "apple", "count": 2}], "exclude": [{"class": "apple", "count": 3}]}
COLOR = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}]}
POS = {"tag": "position", "include": [{"class": "cat", "count": 1},
                                      {"class": "dog", "count": 1, "position": ["right of", 0]}]}
ATTR = {"tag": "color_attr", "include": [{"class": "car", "count": 1, "color": "red"},
                                         {"class": "bus", "count": 1, "color": "blue"}]}


def test_single_object():
    assert verdict(SINGLE, []) == (False, "expected dog>=1, found 0")
    assert verdict(SINGLE, [det("cat", 0.99)]) == (False, "expected dog>=1, found 0")
    assert verdict(SINGLE, [det("cat", 0.99), det("dog", 0.31)]) == (True, "")


@pytest.mark.parametrize("meta,py,th,same,above", [(SINGLE, 0.3, F32_03, 0.30000001, ABOVE_03),
                                                   (COUNT2, 0.9, F32_09, 0.900000001, ABOVE_09)])
def test_threshold_is_strict_in_float32(meta, py, th, same, above):
    cls, n = meta["include"][0]["class"], meta["include"][0]["count"]
    assert verdict(meta, [det(cls, th)] * n)[0] is False  # float32(threshold) itself is rejected,
    assert same > py and float(np.float32(same)) == th  # (a float64 comparison would accept it)
    assert verdict(meta, [det(cls, same)] * n)[0] is False  # so is anything that rounds to it in float32,
    assert verdict(meta, [det(cls, above)] * n) == (True, "")  # one float32 step above passes


def test_two_object_reports_every_failing_clause():
    assert verdict(TWO, [det("dog", 0.5), det("cat", 0.5)]) == (True, "")
    assert verdict(TWO, [det("dog", 0.5)]) == (False, "expected cat>=1, found 0")
    assert verdict(TWO, []) == (False, "expected dog>=1, found 0\nexpected cat>=1, found 0")


def test_counting_n_vs_n_plus_one_at_0_9():
    assert verdict(COUNT2, [det("apple", 0.95)] * 2) == (True, "")
    assert verdict(COUNT2, [det("apple", 0.95)] * 3) == (False, "expected apple<3, found 3")
    assert verdict(COUNT2, [det("apple", 0.95), det("apple", 0.85)]) == (False, "expected apple>=2, found 1")
    assert verdict(COUNT2, [det("apple", 0.95)] * 2 + [det("apple", 0.89)] * 5) == (True, "")  # below 0.9: unseen
    assert verdict(COUNT2, [det("apple", 0.95)] * 2 + [det("apple", 0.89)], counting_threshold=0.3)[0] is False
    assert verdict(COUNT2, [det("apple", 0.95)]) == (False, "expected apple>=2, found 1")  # no exclude failure


def test_cap_16_applies_before_exclude():
    meta = {"tag": "counting", "include": [{"class": "cup", "count": 2}], "exclude": [{"class": "cup", "count": 17}]}
    dets = [det("cup", 0.91 + i / 1000) for i in range(20)]
    kept = filter_detections(dets, "counting")["cup"]
    assert [d["score"] for d in kept] == sorted((d["score"] for d in dets), reverse=True)[:16]
    assert verdict(meta, dets) == (True, "")  # 20 detected, 16 kept: never >= 17
    assert verdict(meta, dets, max_objects=17) == (False, "expected cup<17, found 17")


def test_colors_only_top_detection_counts():
    assert verdict(COLOR, [det("car", 0.9, color="red")]) == (True, "")
    assert verdict(COLOR, [det("car", 0.9, color="blue"), det("car", 0.5, color="red")]) == (
        False, "expected red car>=1, found 0 red; and 1 blue")
    assert verdict(COLOR, [det("car", 0.5, color="blue"), det("car", 0.9, color="red")]) == (True, "")
    meta2 = {"tag": "colors", "include": [{"class": "car", "count": 2, "color": "red"}]}
    assert verdict(meta2, [det("car", 0.9, color="blue"), det("car", 0.8, color="red")]) == (
        False, "expected red car>=2, found 1 red; and 1 red, 1 blue")  # tally in GenEval's colour order
    with pytest.raises(ValueError, match="need a 'color'"):
        evaluate_detections(COLOR, [det("car", 0.9)])


def test_color_attr_each_clause():
    ok = [det("car", 0.9, color="red"), det("bus", 0.9, color="blue")]
    assert verdict(ATTR, ok) == (True, "")
    assert verdict(ATTR, [ok[0], det("bus", 0.9, color="red")]) == (
        False, "expected blue bus>=1, found 0 blue; and 1 red")


def test_position_margin_edges_spec_example():
    cat = [0, 0, 250, 100]
    assert relative_position([100, 0, 350, 100], cat) == ()  # dx = 50/100 = 0.5 exactly: no relation
    assert relative_position([101, 0, 351, 100], cat) == ("right of",)  # dx = 51/101
    assert verdict(POS, [det("cat", 0.9, cat), det("dog", 0.9, [100, 0, 350, 100])]) == (
        False, "expected dog right of target, found  target")
    assert verdict(POS, [det("cat", 0.9, cat), det("dog", 0.9, [101, 0, 351, 100])]) == (True, "")


def test_position_relations_and_reasons():
    assert relative_position([100, 100, 150, 150], [0, 0, 50, 50]) == ("right of", "below")  # dx = dy = 0.64
    assert relative_position([0, 0, 50, 50], [100, 100, 150, 150]) == ("left of", "above")
    assert relative_position([0, 0, 10, 10], [0, 0, 10, 10]) == ()
    assert relative_position([0, 0, 10, 10], [0, 30, 10, 40]) == ("above",)
    meta = {**POS, "include": [POS["include"][0], {"class": "dog", "count": 1, "position": ["left of", 0]}]}
    assert verdict(meta, [det("cat", 0.9, [0, 0, 50, 50]), det("dog", 0.9, [100, 100, 150, 150])]) == (
        False, "expected dog left of target, found right of and below target")
    assert verdict(POS, [det("dog", 0.9, [300, 0, 350, 50])]) == (
        False, "expected cat>=1, found 0\nno target for dog to be right of")


def test_position_uses_top1_of_each_class_only():
    cat = det("cat", 0.9, [100, 0, 150, 50])
    left, right = [0, 0, 50, 50], [300, 0, 350, 50]
    assert verdict(POS, [cat, det("dog", 0.9, left), det("dog", 0.5, right)])[0] is False
    assert verdict(POS, [cat, det("dog", 0.5, left), det("dog", 0.9, right)])[0] is True


def test_ties_later_detection_first_up_to_16():
    cat = det("cat", 0.9, [100, 0, 150, 50])
    left, right = det("dog", 0.8, [0, 0, 50, 50]), det("dog", 0.8, [300, 0, 350, 50])
    assert verdict(POS, [cat, left, right])[0] is True  # equal scores: the later one is top-1
    assert verdict(POS, [cat, right, left])[0] is False


def test_ties_above_16_follow_numpy_1_23_quicksort():
    # Expected orders produced with numpy 1.23.5 (GenEval's pin): np.argsort(float32 scores)[::-1].
    assert numpy123_argsort([0.5, 0.2, 0.2, 0.5, 0.5])[::-1] == [4, 3, 0, 2, 1]
    scores = [0.2, 0.95, 0.2, 0.95, 0.2, 0.95, 0.95, 0.5, 0.2, 0.5, 0.5, 0.95, 0.2, 0.2, 0.95, 0.95, 0.5, 0.5,
              0.5, 0.2]
    expected = [15, 14, 1, 11, 3, 6, 5, 9, 17, 16, 10, 18, 7, 4, 2, 19, 8, 12, 13, 0]
    assert numpy123_argsort(np.asarray(scores, np.float32).tolist())[::-1] == expected
    kept = filter_detections([det("dog", s, id=i) for i, s in enumerate(scores)], "single_object")["dog"]
    assert [d["id"] for d in kept] == [i for i in expected if scores[i] > 0.3]
    rng = np.random.default_rng(0)
    for n in (0, 1, 17, 64, 100):  # without ties it is a plain sort
        v = rng.random(n).astype(np.float32)
        assert numpy123_argsort(v.tolist()) == np.argsort(v, kind="stable").tolist()


def test_nms_optional_with_plus_one_iou():
    a, b = det("dog", 0.9, [0, 0, 9, 9]), det("dog", 0.8, [0, 0, 9, 4])  # IoU = 50/100 (+1 pixel areas)
    assert len(filter_detections([a, b], "single_object")["dog"]) == 2  # off by default
    assert len(filter_detections([a, b], "single_object", Rules(nms_threshold=0.5))["dog"]) == 1  # >= thr: dropped
    assert len(filter_detections([a, b], "single_object", Rules(nms_threshold=0.51))["dog"]) == 2


def test_other_classes_absent_and_never_matter():
    assert filter_detections([det("dog", 0.2), det("cat", 0.5)], "single_object").keys() == {"cat"}
    assert verdict(COUNT2, [det("apple", 0.95)] * 2 + [det("pear", 0.99)] * 9) == (True, "")
