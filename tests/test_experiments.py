"""The product loop: `demo --quick`, an ablation grid with resume, `perf` smoke checks."""
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner

from bench.cli import main
from bench.demo import QUICK
from lightgen.probe import completion, load_rows, probe, probe_pipeline

TINY_MODEL = {"width": 32, "num_heads": 2, "encoder_depth": 1, "decoder_depth": 1, "cross_depth": 1,
              "text_depth": 1, "diffloss_width": 32, "diffloss_depth": 1}

UMASK = os.umask(0)
os.umask(UMASK)


def test_demo_quick_runs_the_whole_loop(demo_quick, tmp_path):
    work = demo_quick / "runs" / "demo"
    out = work / "results"  # the default output: under the work folder, not the committed results/
    compare = json.loads((out / "before_after.json").read_text())
    assert set(compare) == {"KD (before DPO)", "KD + DPO"}
    for run in compare.values():
        assert 0.0 <= run["overall"] <= 1.0 and run["fid"] > 0
        assert set(run) >= {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    table = (out / "table.md").read_text().splitlines()
    assert table[0].startswith("| Model | #Params | Pre-train Data | Single Obj.") and len(table) == 4
    # the probe of each model on the KD training data, as `lightgen-bench probe` computes it
    kd_cache = next(p for p in work.iterdir() if p.name.startswith("data-") and ".cache-" in p.name)
    for name, pipe in (("KD (before DPO)", "kd"), ("KD + DPO", "dpo")):
        expected = probe_pipeline(work / pipe / "pipeline", kd_cache, completion_images=QUICK["completion_images"])
        assert (compare[name]["context_gain"], compare[name]["text_gain"], compare[name]["completion_ratio"]) == (
            expected["context_gain"], expected["text_gain"], expected["completion"]["ratio"])
    # `lightgen-bench probe --completion`: both tests from one load, completion on an evenly spaced subset
    kd_pipe = work / "kd" / "pipeline"
    run = CliRunner().invoke(main, ["probe", str(kd_pipe), "--cache", str(kd_cache), "--n", "9", "--completion", "3"])
    assert run.exit_code == 0, run.output
    probed = json.loads(run.stdout)
    model, latents, text = load_rows(kd_pipe, kd_cache, n=9)
    assert probed["context_gain"] == probe(model, latents, text).context_gain
    assert probed["completion"] == completion(model, latents[[0, 4, 8]], text[[0, 4, 8]]).to_dict()
    record = json.loads((out / "run.json").read_text())
    assert record["command"].startswith("lightgen-bench demo --quick") and "git_commit" in record
    assert record["cpu_s"] > 0
    assert record["config"]["kd"]["steps"] == 12
    for name in ("samples.png", "kd_loss.png", "dpo_loss.png", "table.tex", "table.csv", "run.json"):
        assert (out / name).stat().st_size > 0 and (out / name).stat().st_mode & 0o777 == 0o666 & ~UMASK
    # samples.png: columns = prompts, rows = teacher / KD / KD + DPO, each image with its GenEval seed
    from PIL import Image

    from bench.geneval.layout import read_layout
    from bench.testbed.teacher import render
    from lightgen.distill import sample_seed

    grid, first = Image.open(out / "samples.png"), read_layout(work / "eval-kd" / "images")[0]
    cells = [render(first.metadata["prompt"], 32, sample_seed(0, 0, 0)), Image.open(first.samples[0]),
             Image.open(read_layout(work / "eval-dpo" / "images")[0].samples[0])]
    for row, im in enumerate(cells):  # left margin 70 px, 96-px cells 2 px apart
        cell = im.convert("RGB").resize((96, 96), Image.NEAREST)
        assert grid.crop((70, 98 * row, 166, 98 * row + 96)).tobytes() == cell.tobytes()
    # resumable: a second run reuses every finished step
    again = CliRunner().invoke(main, ["demo", "--quick", "--work", str(work), "--output", str(tmp_path / "again")])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "again" / "before_after.json").read_text()) == compare


def _ablation(tmp_path, kind, **extra):
    cfg = {"points": [48, 96], "train": {"model": {**TINY_MODEL, "text_vocab": "testbed"}, "steps": 3,
                                         "batch_size": 16, "save_every": 3, "log_every": 1},
           "data": {"n": 96}, "eval": {"limit": 6, "steps": 2, "fid": False}, **extra}
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_ablation_persists_points_and_skips_them_on_rerun(tmp_path):
    cfg = _ablation(tmp_path, "data-scale")
    args = ["ablate", "data-scale", "--config", str(cfg), "--work", str(tmp_path / "w"), "--output", str(tmp_path / "o")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "o"
    points = sorted(p.name for p in (out / "points").iterdir())
    assert points == ["n48", "n96"]
    first = {p: json.loads((out / "points" / p / "summary.json").read_text())["overall"] for p in points}
    assert sorted(f.name for f in (out / "points" / "n48").iterdir()) == ["seed-0.json", "summary.json"]
    table = (out / "table.md").read_text()
    assert (out / "plot.png").stat().st_size > 0 and "LightGen, 48 images" in table and " ± " in table
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["kind"] == "data-scale" and run["config"]["points"] == [48, 96]
    (tmp_path / "w").rename(tmp_path / "w-moved")  # nothing to recompute: finished points are skipped
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert {p: json.loads((out / "points" / p / "summary.json").read_text())["overall"] for p in points} == first


def test_ablation_seeds_are_combined_and_extend_without_retraining(tmp_path):
    from bench.geneval.summary import combine_runs

    cfg = _ablation(tmp_path, "guidance", points=[1.0])
    args = ["ablate", "guidance", "--config", str(cfg), "--work", str(tmp_path / "w"), "--output", str(tmp_path / "o")]
    assert CliRunner().invoke(main, args).exit_code == 0
    point = tmp_path / "o" / "points" / "cfg1"
    seed0 = (point / "seed-0.json").read_text()
    cfg.write_text(yaml.safe_dump({**yaml.safe_load(cfg.read_text()), "seeds": [0, 1]}))
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert (point / "seed-0.json").read_text() == seed0  # done: not retrained, not rescored
    assert (tmp_path / "w" / "train" / "kd-seed1" / "pipeline").is_dir()
    per_seed = [json.loads((point / f"seed-{s}.json").read_text()) for s in (0, 1)]
    combined = json.loads((point / "summary.json").read_text())
    assert combined["seeds"] == [0, 1] and len(combined["prompt_counts"]) == 2
    assert combined["overall"] == pytest.approx(np.mean([s["overall"] for s in per_seed]))
    assert combined["overall_ci"] == combine_runs(per_seed)["overall_ci"]
    assert [(s["seed"], s["overall"]) for s in combined["per_seed"]] == [(s, p["overall"]) for s, p in
                                                                        zip((0, 1), per_seed)]
    assert "6 prompts × 1 images × 2 seeds" in (tmp_path / "o" / "table.md").read_text()


def test_unet_student_ablation(tmp_path):
    cfg = _ablation(tmp_path, "data-scale", points=[48], student="unet",
                    train={"model": {"text_vocab": "testbed", "max_length": 77}, "steps": 2, "batch_size": 16,
                           "save_every": 2, "log_every": 1, "unet": {"block_out_channels": [8, 16],
                                                                     "attention_levels": [1], "norm_num_groups": 4,
                                                                     "attention_head_dim": 4}})
    r = CliRunner().invoke(main, ["ablate", "data-scale", "--config", str(cfg), "--work", str(tmp_path / "w"),
                                  "--output", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "w" / "train" / "n48" / "pipeline" / "model_index.json").is_file()
    table = (tmp_path / "o" / "table.md").read_text()
    assert "UNet, 48 images" in table and not (tmp_path / "o" / "probe.csv").exists()  # the probe is LightGen's
    both = CliRunner().invoke(main, ["table", str(tmp_path / "o"), str(tmp_path / "o")])
    assert both.output.count("UNet, 48 images") == 2  # rows keep the ablation's names in merged tables


def test_ablation_dry_run_prints_plan_and_estimate(tmp_path):
    cfg = _ablation(tmp_path, "diversity", data={"n": 96})
    result = CliRunner().invoke(main, ["ablate", "diversity", "--config", str(cfg), "--dry-run",
                                       "--work", str(tmp_path / "w")])
    assert result.exit_code == 0, result.output
    assert "d48: data n=96 diversity=48" in result.output and "estimated training CPU time" in result.output
    assert "student lightgen, seeds [0]" in result.output
    assert not (tmp_path / "w").exists()


def test_ablation_config_errors_name_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"points": [1], "colour": "blue"}))
    result = CliRunner().invoke(main, ["ablate", "steps", "--config", str(path)])
    assert result.exit_code == 2 and "unknown key(s) ['colour']" in result.output
    for raw, msg in (({"seeds": [0, 0]}, "seeds: expected a non-empty list of distinct ints"),
                     ({"student": "dit"}, "student: expected one of lightgen, unet"),
                     ({"student": "unet", "train_config": "eval_configs/train/testbed_kd.yaml"},
                      "trains the 'lightgen' student, the ablation names 'unet'")):
        path.write_text(yaml.safe_dump({"points": [1], **raw}))
        result = CliRunner().invoke(main, ["ablate", "steps", "--config", str(path)])
        assert result.exit_code == 2 and msg in result.output, result.output


def test_perf_sample_smoke_reports_both_paths(tmp_path):
    out = tmp_path / "perf.json"
    try:
        result = CliRunner().invoke(main, ["perf", "--what", "sample", "--batch", "2", "--steps", "2", "--iters", "1",
                                           "--threads", "2", "--note", "shared box", "--output", str(out),
                                           *sum((["--set", f"{k}={v}"] for k, v in TINY_MODEL.items()), [])])
    finally:
        torch.set_num_threads(1)  # the suite's setting (conftest)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["results"]["optimised"]["images_per_call"] == 2 and record["results"]["reference"]["images_per_call"] == 2
    assert record["results"]["speedup"] > 0 and "git_commit" in record
    assert record["command"].startswith("lightgen-bench perf --what sample") and record["note"] == "shared box"
    assert "torch threads: 2 (--threads)" in result.stderr and record["torch_threads"] == 2  # printed and recorded


@pytest.mark.parametrize("what", ["train"])
def test_perf_train_smoke(tmp_path, what):
    out = tmp_path / "perf.json"
    result = CliRunner().invoke(main, ["perf", "--what", what, "--batch", "2", "--iters", "1", "--output", str(out),
                                       *sum((["--set", f"{k}={v}"] for k, v in TINY_MODEL.items()), [])])
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())["results"]
    assert res["reference"]["precision"] == "fp32" and res["optimised"]["step_s"] > 0
    assert res["speedup"] == pytest.approx(res["optimised"]["img_per_s"] / res["reference"]["img_per_s"])


def test_steps_ablation_evaluates_snapshots_of_one_run(tmp_path):
    cfg = _ablation(tmp_path, "steps", points=[2, 4])
    result = CliRunner().invoke(main, ["ablate", "steps", "--config", str(cfg), "--work", str(tmp_path / "w"),
                                       "--output", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "o" / "points").iterdir()) == ["r32-s2", "r32-s4"]
    assert [p.name for p in (tmp_path / "w" / "train").iterdir()] == ["r32"]  # one training run
    pipelines = {json.loads((tmp_path / "o" / "points" / p / "seed-0.json").read_text())["pipeline"]
                 for p in ("r32-s2", "r32-s4")}
    assert {Path(p).name for p in pipelines} == {"step-00000002", "step-00000004"}
    probe = pd.read_csv(tmp_path / "o" / "probe.csv")  # what each snapshot uses, on its training cache
    assert list(probe["x"]) == [2, 4] and np.isfinite(probe[["loss", "context_gain", "text_gain"]].to_numpy()).all()
    assert (tmp_path / "o" / "probe.png").stat().st_size > 0
    for name in ("seed-0.json", "summary.json"):  # a snapshot point left to redo, run done
        (tmp_path / "o" / "points" / "r32-s4" / name).unlink()
    again = CliRunner().invoke(main, ["ablate", "steps", "--config", str(cfg), "--work", str(tmp_path / "w"),
                                      "--output", str(tmp_path / "o")])
    assert again.exit_code == 0, again.output
    assert pd.read_csv(tmp_path / "o" / "probe.csv").equals(probe)


def test_guidance_ablation_samples_one_model_at_each_scale(tmp_path):
    # raw weights after a few large steps: at init (and in a 3-step EMA) the head ignores its condition
    train = {"model": {**TINY_MODEL, "text_vocab": "testbed"}, "steps": 3, "batch_size": 16, "save_every": 3,
             "log_every": 1, "lr": 1e-2, "head_lr_scale": 1, "warmup_steps": 0, "ema_decay": 0.0}
    cfg = _ablation(tmp_path, "guidance", points=[1, 3], train=train)
    result = CliRunner().invoke(main, ["ablate", "guidance", "--config", str(cfg), "--work", str(tmp_path / "w"),
                                       "--output", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "w" / "train").iterdir()] == ["kd"]  # one training run
    summaries = [json.loads((tmp_path / "o" / "points" / p / "summary.json").read_text()) for p in ("cfg1", "cfg3")]
    assert [s["eval"]["guidance_scale"] for s in summaries] == [1.0, 3.0]
    assert len({s["pipelines"][0] for s in summaries}) == 1 and summaries[0]["probe"] == summaries[1]["probe"]
    # same model, prompts and seeds: only the scale differs, so the samples must differ
    first = sorted((tmp_path / "w" / "eval" / "cfg1" / "images").glob("*/samples/*.png"))[0]
    other = tmp_path / "w" / "eval" / "cfg3" / first.relative_to(tmp_path / "w" / "eval" / "cfg1")
    assert first.read_bytes() != other.read_bytes()
    assert "CFG 3" in (tmp_path / "o" / "table.md").read_text()


def test_dpo_pairs_from_a_reference_dataset_are_row_aligned(demo_quick, tmp_path):
    """The official builder: winners = a reference dataset's own images, losers = model samples."""
    from lightgen.distill import T2IFolder

    work = demo_quick / "runs" / "demo"
    data = next(p for p in work.iterdir() if p.name.startswith("data-") and "cache" not in p.name)
    result = CliRunner().invoke(main, ["dpo-pairs", "--ckpt", str(work / "kd" / "pipeline"), "--reference", str(data),
                                       "--out", str(tmp_path / "pairs"), "--n", "4", "--steps", "2"])
    assert result.exit_code == 0, result.output
    winners, losers, reference = (T2IFolder(p) for p in (tmp_path / "pairs" / "winner", tmp_path / "pairs" / "loser", data))
    assert len(winners) == len(losers) == 4
    assert all(winners.caption(i) == losers.caption(i) == reference.caption(i) for i in range(4))
    assert winners[2][0].tobytes() == reference[2][0].tobytes()
    assert CliRunner().invoke(main, ["dpo-pairs", "--ckpt", str(work / "kd" / "pipeline"), "--out", str(tmp_path / "x")]
                              ).exit_code == 2  # neither --teacher nor --reference


def test_probe_kd_copy_appends_a_record_with_its_command(tmp_path, monkeypatch):
    """`lightgen-bench probe-kd`: the copy task (here 2 steps instead of 300) and the record it appends."""
    import functools

    import bench.kd_probes as kd_probes

    monkeypatch.setattr(kd_probes, "copy_task", functools.partial(kd_probes.copy_task, steps=2, every=1, probe_n=16))
    out = tmp_path / "results.jsonl"
    args = ["probe-kd", "copy", "--output", str(out), "--work", str(tmp_path / "w")]
    for expected_lines in (1, 2):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(records) == expected_lines
    record = records[-1]
    assert record["kind"] == "copy" and record["command"] == "lightgen-bench " + " ".join(args)
    assert [r["lr"] for r in record["runs"]] == [2e-4, 1e-3] and "git_commit" in record
    for run in record["runs"]:
        assert [p["step"] for p in run["curve"]] == [0, 1, 2]
        assert all(np.isfinite(p["loss"]) and np.isfinite(p["context_gain"]) for p in run["curve"])
    assert records[0]["runs"] == records[1]["runs"]  # seeded: a rerun draws the same curve
    assert CliRunner().invoke(main, ["probe-kd", "nope"]).exit_code == 2


def test_probe_kd_curve_scores_each_snapshot_against_cpu_time(tmp_path, monkeypatch):
    """`probe-kd curve`: KD with dotted `--set` overrides (model fields included), a pipeline every `every`
    steps, each probed and scored; the record carries the overridden model and CPU minutes rising with
    the step, and curves.png is drawn."""
    import dataclasses

    import bench.kd_probes as kd_probes

    monkeypatch.setattr(kd_probes, "DATA", dataclasses.replace(kd_probes.DATA, n=64))
    out = tmp_path / "results.jsonl"
    args = ["probe-kd", "curve", "--name", "eps", "--set", "model.prediction=epsilon", "--set", "batch_size=8",
            "--set", "log_every=1", "--steps", "4", "--every", "2", "--limit", "6", "--output", str(out),
            "--work", str(tmp_path / "w")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["kind"] == "curve" and record["name"] == "eps"
    assert record["config"]["train"]["model"]["prediction"] == "epsilon"
    assert record["config"]["train"]["preset"] == "testbed-small" and record["config"]["train"]["batch_size"] == 8
    assert [p["step"] for p in record["points"]] == [2, 4]
    cpu = [p["train_cpu_min"] for p in record["points"]]
    assert 0 < cpu[0] < cpu[1]
    for p in record["points"]:
        assert np.isfinite(p["probe"]["context_gain"]) and 0 <= p["cfg1"]["overall"] <= 1 and "cfg4" in p
    assert (tmp_path / "curves.png").stat().st_size > 0
