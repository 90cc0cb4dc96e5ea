import io
import json

import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from bench.cli import main
from bench.tables import (SCORES, build_table, find_summaries, load_baselines, load_results, line_plot, render,
                          result_row, score_fields, write_table)
from lightgen.errors import InputError

TASKS = {"single_object": 1.0, "two_object": 0.7, "counting": 0.25, "colors": 0.9, "position": 0.5, "color_attr": 0.125}


def summary(scores=TASKS, **extra) -> dict:
    tasks = {t: {"score": s, "correct": int(s * 8), "images": 8} for t, s in scores.items()}
    return {"overall": sum(scores.values()) / len(scores), "tasks": tasks, "images": 48, "prompts": 12,
            "detector": "testbed", "checkpoint": "classical-v1", "image_size": None, **extra}


def write_summary(folder, s=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(s or summary()))
    return folder


def test_paper_rows_reproduced():
    t2 = {r["model"]: r for r in load_baselines(table=2)}
    assert (t2["LightGen (with DPO)"]["overall"], t2["LightGen (with DPO)"]["position"]) == (0.62, 0.22)
    t1 = {r["model"]: r for r in load_baselines(table=1)}
    assert t1["SD v1.5"] == {**t1["SD v1.5"], "params": "0.9B", "data": "2B", "single_object": 0.41, "overall": 0.13}
    assert t1["Flux"]["params"] is None and t1["Flux"]["data"] == "12B"
    t3 = load_baselines(table=3)
    t3 = {r["model"]: r for r in t3}
    assert len(t3) == 11 and all(r["overall"] is not None for r in t3.values())
    assert [m for m, r in t3.items() if not r["params"]] == ["DALL-E 3"]  # the paper prints no size for it
    assert [m for m, r in t3.items() if r["position"] is None] == ["Chameleon"]  # the only row without tags
    assert t3["SD1.5"] == {**t3["SD1.5"], "params": "0.9B", "data": "2B", "single_object": 0.97, "counting": 0.35}
    assert (t3["SEED-X"]["params"], t3["SEED-X"]["color_attr"], t3["DALL-E 3"]["params"]) == ("17B", 0.14, None)
    assert {r["source"] for r in load_baselines()} == {f"LightGen paper Table {n}" for n in (1, 2, 3)}


def test_bold_on_true_max_per_column():
    rows = load_baselines(table=2) + [result_row(summary(), "ours")]
    md = render(build_table(rows), "md").splitlines()
    cells = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in md[2:]}
    col = {c: i for i, c in enumerate(md[0].split(" | "))}
    assert cells["ours"][col["Single Obj."]] == "**1.00**"  # beats SD3/LightGen's .99 ...
    assert cells["SD3"][col["Single Obj."]] == "0.99"       # ... so those lose their bold
    assert cells["ours"][col["Position"]] == "**0.50**" and cells["SD3"][col["Position"]] == "0.27"
    assert cells["Flux"][col["Counting"]] == "**0.76**" and cells["ours"][col["Counting"]] == "0.25"
    assert cells["SD3"][col["Two Obj."]] == "**0.82**" and "".join(md).count("**") == 2 * len(SCORES)
    tie = build_table([result_row(summary({"position": 0.824}), "a"), result_row(summary({"position": 0.82}), "b")])
    assert render(tie, "md").count("**0.82**") == 4  # printed alike -> bolded alike (position and overall)


def test_latex_booktabs_and_escaping():
    row = result_row(summary(), "w/ 50% & x_1 #2", params="0.7B", source="ours: {a}~^\\")
    tex = render(build_table([row]), "latex")
    assert tex.startswith(r"\begin{tabular}{lllrrrrrrrl}") and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"\#Params" in tex and r"w/ 50\% \& x\_1 \#2" in tex
    assert r"ours: \{a\}\textasciitilde{}\textasciicircum{}\textbackslash{}" in tex
    assert r"\textbf{0.70}" in tex and "-- &" in tex  # a lone row is the best; no data -> "--"


def test_intervals_print_as_plus_minus_and_stay_numbers_in_csv(tmp_path):
    s = summary()
    s["tasks"]["position"]["ci"], s["overall_ci"] = [0.4, 0.62], [0.5, 0.56]
    row = result_row(s, "ours")
    assert (row["position_ci_low"], row["position_ci_high"], row["overall_ci_high"]) == (0.4, 0.62, 0.56)
    frame = build_table(load_baselines(table=2) + [row])
    md = render(frame, "md").splitlines()
    col = {c: i for i, c in enumerate(md[0].split(" | "))}
    ours = md[-1].split(" | ")
    assert ours[col["Position"]] == "**0.50** ± 0.11" and ours[col["Counting"]] == "0.25"  # no interval: no ±
    assert ours[col["Overall"]] == f"{sum(TASKS.values()) / 6:.2f} ± 0.03" and "CI low" not in md[0]
    assert "0.50} $\\pm$ 0.11" in render(frame, "latex")
    back = pd.read_csv(io.StringIO(render(frame, "csv")))
    assert list(back.columns[-4:]) == ["Position CI low", "Position CI high", "Overall CI low", "Overall CI high"]
    assert back["Position CI high"].iloc[-1] == 0.62 and back["Position CI high"].isna().sum() == len(back) - 1
    assert load_baselines(write_table(frame, tmp_path / "t.csv"))[-1]["overall_ci_low"] == 0.5
    with pytest.raises(InputError, match="ci"):
        result_row({**s, "overall_ci": [0.5]}, "bad")


def test_csv_round_trip_and_atomic_write(tmp_path):
    frame = build_table(load_baselines(table=1) + [result_row(summary(), "ours, 32 px")])
    back = pd.read_csv(io.StringIO(render(frame, "csv")))
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    assert load_baselines(write_table(frame, tmp_path / "t.csv"))[-1]["color_attr"] == 0.125  # reusable as baselines
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_results_from_files_dirs_and_ablations(tmp_path):
    img = tmp_path / "img.png"
    Image.new("RGB", (32, 32)).save(img)
    (tmp_path / "results.jsonl").write_text(json.dumps({"filename": str(img)}) + "\n")
    one = write_summary(tmp_path / "run", summary(results=str(tmp_path / "results.jsonl")))
    for n in ("n1000", "n16000", "n4000", "n100"):
        write_summary(tmp_path / "abl" / n)
    rows = load_results([one / "summary.json", tmp_path / "abl"])
    assert [r["model"] for r in rows] == ["run", "n100", "n1000", "n4000", "n16000"]  # numbers sort as numbers
    assert rows[0]["source"] == "ours: testbed detector, 32 px, 48 images"
    assert rows[0]["position"] == 0.5 and rows[0]["overall"] == pytest.approx(sum(TASKS.values()) / 6)
    assert load_results([one], ["mine"])[0]["model"] == "mine"
    with pytest.raises(InputError, match="one name per result"):
        load_results([one], ["a", "b"])
    with pytest.raises(InputError, match="no summary.json"):
        find_summaries((tmp_path / "empty").mkdir() or tmp_path / "empty")


def test_cli_outputs_and_exit_codes(tmp_path):
    run = write_summary(tmp_path / "run")
    runner = CliRunner()
    ok = runner.invoke(main, ["table", str(run), "--paper-table", "2", "--name", "ours", "--format", "latex",
                              "--output", str(tmp_path / "t.tex")])
    assert ok.exit_code == 0, ok.output
    assert "ours & -- & -- & \\textbf{1.00}" in (tmp_path / "t.tex").read_text()
    (tmp_path / "bad.json").write_text(json.dumps({"overall": 0.5}))
    for args in (["bad.json"], ["missing.json"], ["--paper-table", "4"], [str(run), "--name", "a", "--name", "b"]):
        res = runner.invoke(main, ["table", *[str(tmp_path / a) if a.endswith(".json") else a for a in args]])
        assert res.exit_code == 2 and "expected" in res.output, (args, res.output)
    assert "Example" in runner.invoke(main, ["table", "--help"]).output


def test_line_plot_png(tmp_path):
    df = pd.DataFrame({"images": [10000, 1000, 100], "overall": [0.6, 0.5, 0.3], "position": [0.2, 0.1, 0.0]})
    path = line_plot(df, "images", ["overall", "position"], tmp_path / "p" / "scale.png", "Data scale", logx=True)
    series = line_plot(df.set_index("images")["overall"], None, None, tmp_path / "s.png", "Steps", "step")
    bars = line_plot(df.assign(overall_ci_low=df.overall - 0.1, overall_ci_high=df.overall + 0.05), "images", None,
                     tmp_path / "bars.png")
    plain = line_plot(df, "images", None, tmp_path / "plain.png")
    for p in (path, series, bars):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000
    assert bars.read_bytes() != plain.read_bytes()  # the interval columns draw bars, not curves of their own


def _frame(**cis):
    rows = [{"x": x, **{t: s * k for t, s in {**TASKS, "overall": 0.5}.items()}} for k, x in ((0.2, 100), (1.0, 200))]
    return pd.DataFrame(rows).assign(**cis)


def test_geneval_figure_has_every_tag_on_a_fixed_axis_with_its_error_bars():
    from bench.plots import PANELS, geneval_figure

    frame = _frame(position_ci_low=[0.05, 0.3], position_ci_high=[0.2, 0.6], fid=[3000.0, 2000.0])
    fig = geneval_figure(frame, "UNet: GenEval vs steps", "training steps")
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert list(axes) == [SCORES[t] for t in PANELS]  # overall and the six tags, in that order
    assert all(ax.get_ylim() == (-0.03, 1.03) for ax in axes.values())  # fixed 0–1, never auto-scaled
    (bars,) = axes["Position"].containers
    segments = bars.lines[2][0].get_segments()  # one vertical segment per point: its interval
    assert [tuple(s[:, 1]) for s in segments] == [(0.05, 0.2), (0.3, 0.6)]
    assert not axes["Counting"].containers[0].has_yerr  # no interval columns, no bars
    assert fig.get_suptitle().startswith("UNet: GenEval vs steps\nerror bars: 95 %")
    fid = geneval_figure(frame, "t", "steps", extra=("fid", "FID")).axes[-1]
    assert fid.get_title() == "FID" and fid.get_ylim()[1] < 4000  # its own linear axis


def test_intervals_reconstructed_from_counts_are_the_scorers_bootstrap():
    """One image per prompt: a summary's per-tag counts are its prompt counts up to order, so the reconstructed
    interval is the scorer's (same bootstrap) when the correct prompts sort first."""
    from bench.geneval.stats import confidence_intervals
    from bench.plots import scores_with_intervals

    s = summary()  # 8 images per tag, each its own prompt
    s["prompts"] = s["images"]
    rebuilt, flag = scores_with_intervals(s)
    counts = {t: {f"p{i}": (int(i < v["correct"]), 1) for i in range(8)} for t, v in s["tasks"].items()}
    ci = confidence_intervals([counts])
    assert flag and rebuilt["overall_ci_low"] == ci["overall"][0]
    assert rebuilt["position_ci_high"] == ci["tasks"]["position"][1]
    assert rebuilt["position_ci_low"] < 0.5 < rebuilt["position_ci_high"]
    kept, flag = scores_with_intervals({**s, "overall_ci": [0.1, 0.2]})
    assert not flag and kept["overall_ci_low"] == 0.1  # recorded intervals are never replaced
    assert scores_with_intervals(summary()) == (score_fields(summary()), False)  # 4 images a prompt: not rebuilt


def test_plot_redraws_committed_folders_without_training(tmp_path, monkeypatch):
    """`lightgen-bench plot DIR`: an ablation folder (run.json + points/*/summary.json) and a probe-kd records
    file; anything else is refused with one line."""
    abl = tmp_path / "abl"
    for n in (1000, 4000):
        point = {"label": f"n{n}", "x": n, "data": {"n": n, "diversity": None}}
        write_summary(abl / "points" / f"n{n}", summary(point=point, eval={"steps": 20, "guidance_scale": 4.0},
                                                        probe={"context_gain": 1e-3, "text_gain": -1e-5}))
    (abl / "run.json").write_text(json.dumps({"config": {"kind": "data-scale", "student": "unet"}}))
    record = {"kind": "curve", "name": "r", "limit": 120, "points": [
        {"step": 2, "train_cpu_min": 1.0, "probe": {"context_gain": 0.01},
         "cfg1": {"overall": 0.1, **{t: 0.1 for t in TASKS}}}]}
    probes = tmp_path / "probes"
    probes.mkdir()
    (probes / "results.jsonl").write_text(json.dumps({"kind": "copy"}) + "\n" + json.dumps(record) + "\n")
    res = CliRunner().invoke(main, ["plot", str(abl), str(probes)])
    assert res.exit_code == 0, res.output
    for png in (abl / "plot.png", abl / "probe.png", probes / "curves.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {png}" in res.output
    # a folder of ablation folders of one kind (a grid run as two configs): one plot of all their points
    grid = tmp_path / "grid"
    for part, n in (("a", 1000), ("b", 64000)):
        point = {"label": f"n{n}", "x": n, "data": {"n": n, "diversity": None}}
        write_summary(grid / part / "points" / f"n{n}", summary(point=point, eval={"steps": 20, "guidance_scale": 4.0}))
        (grid / part / "run.json").write_text(json.dumps({"config": {"kind": "data-scale", "student": "unet"}}))
    seen = []
    monkeypatch.setattr("bench.ablate.plot_outputs", lambda kind, summaries, out, student: seen.append(
        (kind, [s["point"]["x"] for s in summaries], out, student)) or [out / "plot.png"])
    assert CliRunner().invoke(main, ["plot", str(grid)]).exit_code == 0
    assert seen == [("data-scale", [1000, 64000], grid, "unet")]
    (grid / "b" / "run.json").write_text(json.dumps({"config": {"kind": "steps", "student": "unet"}}))
    res = CliRunner().invoke(main, ["plot", str(grid)])
    assert res.exit_code == 2 and "of different kinds or students" in res.output
    (tmp_path / "empty").mkdir()
    (probes / "results.jsonl").write_text(json.dumps({"kind": "copy"}) + "\n")
    for folder, message in ((tmp_path / "empty", "run.json"), (probes, "no `curve` records")):
        res = CliRunner().invoke(main, ["plot", str(folder)])
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output
