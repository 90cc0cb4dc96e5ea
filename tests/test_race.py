"""The race: learning curves against training CPU time, where they cross, and the committed picture's inputs."""
import json

import pandas as pd
import pytest

from bench.race import crossing, load_curve, race
from bench.tables import SCORES
from lightgen.errors import InputError


def _point(folder, label, steps, cpu_s, overall):
    tasks = {t: {"score": overall, "ci": [max(0.0, overall - 0.1), min(1.0, overall + 0.1)]} for t in SCORES
             if t != "overall"}
    summary = {"images": 360, "overall": overall, "overall_ci": [overall - 0.05, overall + 0.05], "tasks": tasks, "prompts": 360,
               "point": {"x": steps, "data": {"n": 16000}}, "train_cpu_s": cpu_s, "student": "x", "row_name": label, "eval": {"steps": 8}}
    (folder / "points" / label).mkdir(parents=True)
    (folder / "points" / label / "summary.json").write_text(json.dumps(summary))


def _curve(xs, ys):
    return pd.DataFrame({"train_cpu_min": xs, "overall": ys})


def test_crossing_is_the_exact_intersection_of_the_piecewise_linear_curves():
    a, b = _curve([1, 2, 3], [0.0, 0.2, 0.6]), _curve([1, 3], [0.3, 0.3])
    assert crossing(a, b) == pytest.approx(2.25)
    assert crossing(b, a) == pytest.approx(1.0)  # b starts above a
    assert crossing(_curve([1, 3], [0.0, 0.1]), b) is None
    assert crossing(_curve([5, 6], [1.0, 1.0]), b) is None  # no common range


def test_race_writes_table_plot_and_crossing_from_ablation_folders(tmp_path):
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    for i, (steps, cpu) in enumerate([(100, 60), (200, 120), (300, 180)]):
        _point(fast, f"s{steps}", steps, cpu, [0.1, 0.3, 0.5][i])
        _point(slow, f"s{steps}", steps, cpu * 2, [0.2, 0.25, 0.3][i])
    result = race([fast, slow], ["A", "B"], tmp_path / "out", ["lightgen-bench", "race"])
    table = pd.read_csv(tmp_path / "out" / "curves.csv")
    assert list(table.student) == ["A", "A", "A", "B", "B", "B"]
    assert list(table.train_cpu_min) == [1, 2, 3, 2, 4, 6]
    # A: 0.1 @ 1, 0.3 @ 2, 0.5 @ 3; B: 0.2 @ 2, 0.25 @ 4 -> common range [2, 3], A above from its start
    assert result["crossing_cpu_min"]["A reaches B"] == pytest.approx(2.0)
    assert (tmp_path / "out" / "race.png").stat().st_size > 10_000
    md = (tmp_path / "out" / "table.md").read_text()
    assert "| A, 200 steps, 2.0 training CPU-min |" in md and "0.30 ± 0.10" in md
    # #Params from each folder's ablation record: the trained network, as the ablation tables give it
    from bench.config import train_config
    from bench.experiment import parameter_count

    (fast / "run.json").write_text(json.dumps({"config": {"train_config": "eval_configs/train/testbed_unet.yaml",
                                                          "train": {"batch_size": 8}}}))
    params = parameter_count(train_config("eval_configs/train/testbed_unet.yaml", {}))
    assert f"{params / 1e6:.1f}M" == load_curve(fast).params.iloc[0] and load_curve(slow).params.isna().all()


def test_points_without_training_cpu_time_are_left_out_and_a_folder_of_none_is_refused(tmp_path):
    _point(tmp_path, "s1", 1, None, 0.1)
    with pytest.raises(InputError, match="no point records train_cpu_s"):
        load_curve(tmp_path)
    _point(tmp_path, "s2", 2, 120, 0.2)
    assert list(load_curve(tmp_path).steps) == [2]


def test_snapshot_cpu_time_sums_the_logged_intervals_up_to_its_step(tmp_path):
    from bench.ablate import train_cpu_seconds

    metrics = tmp_path / "metrics.csv"
    metrics.write_text("step,loss,cpu_s\n20,1,2.0\n40,1,3.0\n60,1,5.0\n")
    assert train_cpu_seconds(metrics, 40) == 5.0
    assert train_cpu_seconds(metrics, 60) == 10.0
    assert train_cpu_seconds(metrics, 50) is None  # no row at the snapshot: no guess
    (tmp_path / "old.csv").write_text("step,loss\n20,1\n")
    assert train_cpu_seconds(tmp_path / "old.csv", 20) is None


def test_teacher_forced_control_keeps_exactly_the_unmasked_tokens_of_the_teacher_render():
    import numpy as np

    from bench.forced import TeacherForced
    from bench.testbed.teacher import TestbedTeacher
    from bench.testbed.world import BACKGROUND

    gen = TeacherForced(None, keep=0.25, fill="background")
    mask = np.asarray(gen.mask(7)) > 127
    assert mask.reshape(8, 4, 8, 4).all(axis=(1, 3)).sum() == 48  # 75 % of 64 tokens, whole tokens only
    assert np.array_equal(np.asarray(gen.mask(7)), np.asarray(gen.mask(7)))
    out = np.asarray(gen(["a red circle"], [7])[0])
    teacher = np.asarray(TestbedTeacher()(["a red circle"], [7])[0])
    assert np.array_equal(out[~mask], teacher[~mask])
    assert (out[mask] == np.asarray(BACKGROUND, np.uint8)).all()
