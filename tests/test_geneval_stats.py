"""Bootstrap intervals of GenEval scores: known answers (enumerable cases, a direct numpy loop),
prompts kept whole, seeds and paired comparisons."""
import itertools
import json

import numpy as np
import pytest

from bench.geneval.stats import (Bootstrap, confidence_intervals, paired_difference, point_scores, prompt_counts,
                                 prompt_key)
from bench.geneval.summary import format_summary, summarize
from lightgen.errors import InputError


def rows_for(scores: dict[str, list[list[bool]]]) -> list[dict]:
    """Result rows: tag -> prompts -> that prompt's images (correct or not), in the GenEval layout."""
    rows, index = [], 0
    for tag, prompts in scores.items():
        for images in prompts:
            meta = json.dumps({"tag": tag, "prompt": f"p{index}"})
            rows += [{"filename": f"out/{index:05d}/samples/{k:04d}.png", "tag": tag, "correct": c, "metadata": meta}
                     for k, c in enumerate(images)]
            index += 1
    return rows


def test_images_of_a_prompt_stay_together():
    """Two prompts, 4 images each, all right / all wrong: drawing prompts gives 0, 0.5, 1 with
    probabilities 1/4, 1/2, 1/4, so the 95 % interval is [0, 1]. Drawing the 8 images independently
    would give Binomial(8, 1/2) / 8, whose interval is [0.125, 0.875]."""
    counts = prompt_counts(rows_for({"counting": [[True] * 4, [False] * 4]}))
    assert counts == {"counting": {prompt_key(rows_for({"counting": [[True]]})[0]): (4, 4),
                                   next(k for k in counts["counting"] if k.startswith("00001")): (0, 4)}}
    ci = confidence_intervals([counts])
    assert ci["tasks"]["counting"] == [0.0, 1.0] and ci["overall"] == [0.0, 1.0]


def test_interval_matches_the_enumerated_bootstrap_distribution():
    """Three prompts with (correct, images) = (0, 1), (1, 2), (3, 3): the 27 equally likely resamples
    give the exact distribution of the task score; its 2.5 % / 97.5 % quantiles are the interval."""
    prompts = [[False], [True, False], [True, True, True]]
    counts = prompt_counts(rows_for({"position": prompts}))
    c, n = np.array([0, 1, 3]), np.array([1, 2, 3])
    values = np.sort([c[list(d)].sum() / n[list(d)].sum() for d in itertools.product(range(3), repeat=3)])
    cdf = np.arange(1, 28) / 27
    lo, hi = values[np.searchsorted(cdf, 0.025)], values[np.searchsorted(cdf, 0.975)]
    assert not np.isclose(cdf, [0.025, 0.975][0]).any()  # no jump sits at a quantile: the answer is sharp
    got = confidence_intervals([counts], Bootstrap(resamples=20000, seed=3))["tasks"]["position"]
    assert got == pytest.approx([lo, hi])


def test_overall_interval_equals_a_direct_numpy_loop():
    """Every task resampled on its own (same draws, in task order), overall = mean of the task scores."""
    rng = np.random.default_rng(7)
    scores = {"single_object": [list(rng.random(4) < 0.8) for _ in range(9)],
              "position": [list(rng.random(4) < 0.2) for _ in range(6)]}
    counts = prompt_counts(rows_for(scores))
    boot = Bootstrap(resamples=300, seed=11)
    got = confidence_intervals([counts], boot)

    draw = np.random.default_rng(boot.seed)
    per_tag = []
    for tag in ("single_object", "position"):  # GenEval's task order
        prompts = sorted(counts[tag])
        idx = draw.integers(0, len(prompts), size=(boot.resamples, len(prompts)))
        per_tag.append([sum(counts[tag][prompts[i]][0] for i in row) / sum(counts[tag][prompts[i]][1] for i in row)
                        for row in idx])
    overall = np.mean(per_tag, axis=0)
    assert got["overall"] == pytest.approx(list(np.quantile(overall, [0.025, 0.975])))
    assert got["tasks"]["position"] == pytest.approx(list(np.quantile(per_tag[1], [0.025, 0.975])))
    assert got["overall"][0] < point_scores([counts])["overall"] < got["overall"][1]


def test_seeded_and_independent_of_row_order():
    rng = np.random.default_rng(0)
    rows = rows_for({"colors": [list(rng.random(4) < 0.6) for _ in range(30)],
                     "counting": [list(rng.random(4) < 0.3) for _ in range(20)]})
    a = summarize(rows)
    b = summarize(list(reversed(rows)))
    assert a["overall_ci"] == b["overall_ci"] and a["tasks"]["colors"]["ci"] == b["tasks"]["colors"]["ci"]
    assert summarize(rows, Bootstrap(seed=1))["overall_ci"] != a["overall_ci"]  # the draw is the seed's
    assert a["bootstrap"] == {"resamples": 2000, "seed": 0, "level": 0.95, "unit": "prompt, within each task",
                              "runs": 1}


def test_seed_spread_widens_the_interval():
    """Two training seeds on the same prompts: one right everywhere, one wrong everywhere. Each alone
    has a zero-width interval; together a replicate is the mean of two drawn seeds (0, 0.5 or 1 with
    probabilities 1/4, 1/2, 1/4), so the interval is [0, 1]. Identical seeds add no width at all."""
    good = prompt_counts(rows_for({"colors": [[True]] * 5}))
    bad = prompt_counts(rows_for({"colors": [[False]] * 5}))
    assert confidence_intervals([good])["overall"] == [1.0, 1.0]
    assert confidence_intervals([good, bad])["overall"] == [0.0, 1.0]
    assert point_scores([good, bad])["overall"] == 0.5
    mixed = prompt_counts(rows_for({"colors": [[True], [False], [True], [True], [False]]}))
    assert confidence_intervals([mixed, mixed]) == confidence_intervals([mixed])


def test_paired_difference_known_answers():
    """A right on prompt 1 only, B on prompt 2 only: the shared draw gives +1, 0, −1 with probabilities
    1/4, 1/2, 1/4 (interval [−1, 1]); against itself the difference is exactly 0."""
    a = prompt_counts(rows_for({"position": [[True], [False]]}))
    b = prompt_counts(rows_for({"position": [[False], [True]]}))
    d = paired_difference([a], [b])
    assert d["overall"]["diff"] == 0.0 and d["overall"]["ci"] == [-1.0, 1.0]
    same = paired_difference([a], [a])
    assert same["overall"]["ci"] == [0.0, 0.0] and same["overall"]["p_not_better"] == 1.0
    better = prompt_counts(rows_for({"position": [[True], [True]]}))
    up = paired_difference([better], [a])
    assert up["overall"]["diff"] == 0.5 and up["overall"]["ci"][0] >= 0.0 and up["tasks"]["position"]["a"] == 1.0


def test_runs_on_other_prompts_are_refused():
    a = prompt_counts(rows_for({"position": [[True], [False]]}))
    b = prompt_counts(rows_for({"position": [[True]]}))
    with pytest.raises(InputError, match="run 1 was scored on other prompts"):
        paired_difference([a], [b])


def test_printout_shows_plus_minus():
    s = summarize(rows_for({"colors": [[True, False]] * 6 + [[True, True]] * 6}))
    text = format_summary(s)
    half = (s["overall_ci"][1] - s["overall_ci"][0]) / 2
    assert f"Overall: {s['overall']:.2f} ± {half:.2f} (95% CI" in text
    assert summarize(rows_for({"colors": [[True]]}), boot=None).get("overall_ci") is None


def _write(path, rows, detector="testbed"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({**r, "detector": detector, "checkpoint": "v2", "color_classifier": "t"}) + "\n"
                            for r in rows))
    return path


def test_compare_cli_paired_difference_and_errors(tmp_path):
    from click.testing import CliRunner

    from bench.cli import main
    from bench.geneval.stats import paired_difference

    rng = np.random.default_rng(1)
    kd = {"position": [[bool(rng.random() < 0.3)] for _ in range(40)], "colors": [[True] for _ in range(10)]}
    dpo = {"position": [[v[0] or bool(rng.random() < 0.5)] for v in kd["position"]], "colors": kd["colors"]}
    a = _write(tmp_path / "dpo" / "results.jsonl", rows_for(dpo))
    b = _write(tmp_path / "kd.jsonl", rows_for(kd))
    (tmp_path / "point").mkdir()  # an ablation point with two seeds: a summary with two runs' prompt counts
    point = {**summarize(rows_for(kd)), "detector": "testbed", "checkpoint": "v2", "color_classifier": "t"}
    (tmp_path / "point" / "summary.json").write_text(json.dumps({**point, "prompt_counts": point["prompt_counts"] * 2}))
    out = tmp_path / "d.json"
    r = CliRunner().invoke(main, ["compare", str(a.parent), str(tmp_path / "point"), "--output", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    expected = paired_difference([prompt_counts(rows_for(dpo))], [prompt_counts(rows_for(kd))] * 2)
    assert d["overall"] == expected["overall"] and d["runs"] == [1, 2] and d["scorer"]["detector"] == "testbed"
    assert d["provenance"]["command"].startswith("lightgen-bench compare") and "git_commit" in d["provenance"]
    assert d["overall"]["diff"] > 0 and d["overall"]["ci"][0] > 0  # DPO only adds correct positions here
    assert f"{d['overall']['diff']:+7.3f}  [{d['overall']['ci'][0]:+.3f}" in r.output
    other = _write(tmp_path / "other.jsonl", rows_for({"position": kd["position"][:5]}))
    mask = _write(tmp_path / "m2f.jsonl", rows_for(kd), detector="mask2former")
    (tmp_path / "old.json").write_text(json.dumps({"overall": 0.5}))
    for args, msg in (([a, other], "other prompts"), ([b, mask], "compare results of one scorer"),
                      ([tmp_path / "point" / "..", b], "expected a results.jsonl"),
                      ([tmp_path / "old.json", b], "no prompt_counts")):
        r = CliRunner().invoke(main, ["compare", *map(str, args)])
        assert r.exit_code == 2 and msg in r.output, r.output
