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
    from bench.geneval.summary import read_results, summarize

    for name, folder in (("KD (before DPO)", "eval-kd"), ("KD + DPO", "eval-dpo")):  # rescored from its rows
        run, rescored = compare[name], summarize(read_results(work / folder / "results.jsonl"))
        assert run["overall"] == pytest.approx(rescored["overall"]) and run["fid"] > 0
        tasks = {t: v["score"] for t, v in rescored["tasks"].items()}
        assert {t: run[t] for t in tasks} == pytest.approx(tasks)
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


def test_ablation_persists_points_and_skips_them_on_rerun(tmp_path, monkeypatch):
    cfg = _ablation(tmp_path, "data-scale")
    args = ["ablate", "data-scale", "--config", str(cfg), "--work", str(tmp_path / "w"), "--output", str(tmp_path / "o")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "o"
    points = sorted(p.name for p in (out / "points").iterdir())
    assert points == ["n48", "n96"]
    first = {p: json.loads((out / "points" / p / "summary.json").read_text())["overall"] for p in points}
    assert sorted(f.name for f in (out / "points" / "n48").iterdir()) == ["seed-0.json", "summary.json"]
    for point in points:  # each point's training CPU time, summed from its run's metrics.csv
        cpu = pd.read_csv(tmp_path / "w" / "train" / point / "metrics.csv")["cpu_s"].sum()
        assert json.loads((out / "points" / point / "seed-0.json").read_text())["train_cpu_s"] == pytest.approx(cpu)
    table = (out / "table.md").read_text()
    assert (out / "plot.png").stat().st_size > 0 and "LightGen, 48 images" in table and " ± " in table
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["kind"] == "data-scale" and run["config"]["points"] == [48, 96]
    (tmp_path / "w").rename(tmp_path / "w-moved")  # nothing to recompute: finished points are skipped
    recomputed = []
    monkeypatch.setattr("bench.ablate._run_point", lambda ab, p, *a, **k: recomputed.append(p.label))
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert recomputed == []  # a seeded recompute would give the same numbers: count the calls instead
    assert {p: json.loads((out / "points" / p / "summary.json").read_text())["overall"] for p in points} == first
    # the record keeps both invocations and sums their CPU time: what the resumed job cost in all
    rerun = json.loads((out / "run.json").read_text())
    assert [i["cpu_s"] for i in rerun["invocations"]] == [run["cpu_s"], rerun["cpu_s"]]
    assert rerun["total_cpu_s"] == pytest.approx(run["cpu_s"] + rerun["cpu_s"]) and run["total_cpu_s"] == run["cpu_s"]
    (out / "run.json").write_text("[1, 2]")  # a bad record stops the job before any work, naming the file
    bad = CliRunner().invoke(main, args)
    assert bad.exit_code == 2 and f"{out / 'run.json'}: expected the run.json of an earlier invocation" in bad.output


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


TINY_UNET = {"model": {"text_vocab": "testbed", "max_length": 77}, "log_every": 1,
             "unet": {"block_out_channels": [8, 16], "attention_levels": [1], "norm_num_groups": 4,
                      "attention_head_dim": 4}}


def test_unet_student_ablation(tmp_path):
    cfg = _ablation(tmp_path, "data-scale", points=[48], student="unet",
                    train={**TINY_UNET, "steps": 2, "batch_size": 16, "save_every": 2})
    r = CliRunner().invoke(main, ["ablate", "data-scale", "--config", str(cfg), "--work", str(tmp_path / "w"),
                                  "--output", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "w" / "train" / "n48" / "pipeline" / "model_index.json").is_file()
    table = (tmp_path / "o" / "table.md").read_text()
    assert "UNet, 48 images" in table and not (tmp_path / "o" / "probe.csv").exists()  # the probe is LightGen's
    both = CliRunner().invoke(main, ["table", str(tmp_path / "o"), str(tmp_path / "o")])
    assert both.output.count("UNet, 48 images") == 2  # rows keep the ablation's names in merged tables
    _unet_dpo_ablation_from(tmp_path / "w" / "train" / "n48" / "pipeline", tmp_path)


def _unet_dpo_ablation_from(start, tmp_path):
    """`ablate dpo` with `student: unet` from a trained pipeline (init_from; no KD run): a β point with and
    without SFT, each DPO run from and against `start`, table + paired comparisons against `start`."""
    cfg = _ablation(tmp_path, "dpo", points=[100], student="unet", init_from=str(start), dpo_sft=[0, 1], dpo_sft_only=True,
                    dpo={**TINY_UNET, "steps": 2, "batch_size": 4, "save_every": 2}, dpo_pairs=8,
                    train={**TINY_UNET}, eval={"limit": 6, "steps": 2, "fid": True})
    args = ["ablate", "dpo", "--config", str(cfg), "--work", str(tmp_path / "wd"), "--output", str(tmp_path / "od")]
    dry = CliRunner().invoke(main, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"before-dpo: data n=96 diversity=all 32px, train 0 steps (starting pipeline {start})" in dry.output
    assert "beta100-sft1: data n=96 diversity=all 32px, train 2 steps (DPO)" in dry.output
    assert "sft-only: data n=96 diversity=all 32px, train 2 steps (SFT only)" in dry.output
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "wd" / "train").iterdir()) == ["beta100", "beta100-sft1", "sft-only"]
    out = tmp_path / "od"
    before = json.loads((out / "points" / "before-dpo" / "summary.json").read_text())
    assert before["pipelines"] == [str(start)]
    for label, sft in (("beta100", 0.0), ("beta100-sft1", 25.0)):  # SFT weight 1 × β/4
        state = json.loads(next((tmp_path / "wd" / "train" / label / "checkpoints").glob("step-*/state.json")
                                ).read_text())["config"]
        assert (state["init_from"], state["dpo_beta"], state["dpo_sft_weight"], state["student"]) == (
            str(start), 100.0, sft, "unet")
    # the SFT-only control: the student's own objective from the start, on the DPO runs' winners alone, with
    # their optimiser, batch and steps
    sft_state, dpo_state = (json.loads(next((tmp_path / "wd" / "train" / label / "checkpoints").glob(
        "step-*/state.json")).read_text())["config"] for label in ("sft-only", "beta100"))
    assert (sft_state["objective"], dpo_state["objective"], sft_state["loser_cache"]) == ("kd", "dpo", "")
    for key in ("init_from", "cache", "lr", "batch_size", "steps", "ema_decay", "flip", "student"):
        assert sft_state[key] == dpo_state[key], key
    table = (out / "table.md").read_text()
    assert all(f"| UNet, {name} |" in table for name in ("before DPO", "DPO β=100", "DPO β=100 + SFT (weight 25)",
                                                         "SFT only (winners alone, DPO's optimiser and steps)"))
    compare = json.loads((out / "compare.json").read_text())
    assert set(compare) == {"beta100", "beta100-sft1", "sft-only"}
    after = json.loads((out / "points" / "beta100" / "summary.json").read_text())
    assert compare["beta100"]["overall"]["diff"] == pytest.approx(after["overall"] - before["overall"])
    lines = (out / "compare.md").read_text().splitlines()
    assert len(lines) == 5 and lines[2].startswith("| UNet, DPO β=100 | ") and " → " in lines[2]


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
    for raw, msg in (({"seeds": [0, 0]}, "seeds: expected a non-empty list of distinct integers >= 0, got [0, 0]"),
                     ({"student": "dit"}, "student: expected one of 'lightgen', 'unet', got 'dit'"),
                     ({"points": []}, "points: expected a non-empty list, got []"),
                     ({"dpo_pairs": 0}, "dpo_pairs: expected an integer >= 1, got 0"),
                     ({"eval": {"steps": 0}}, "eval.steps: expected an integer >= 1, got 0"),
                     ({"data": {"n": "many"}}, "data.n: expected an integer >= 1, got 'many'"),
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
    for path in ("optimised", "reference"):  # 1 timed iteration of a batch of 2
        assert res[path]["all_seconds"] == [res[path]["step_s"]]
        assert res[path]["img_per_s"] * res[path]["step_s"] == pytest.approx(2)


def test_race_times_each_path_by_its_median_in_alternating_rounds(monkeypatch):
    """A fake clock that each workload advances by a known amount: the medians and the call order are
    known answers (warm-up calls untimed, rounds alternate the order)."""
    from bench import perf

    now, calls = [0.0], []

    def work(name, costs):
        def fn():
            calls.append(name)
            now[0] += costs.pop(0)
        return fn

    monkeypatch.setattr(perf, "clock", lambda device: ("fake", lambda: now[0]))
    fns = {"optimised": work("o", [100.0, 1.0, 5.0, 2.0]), "reference": work("r", [100.0, 3.0, 4.0, 9.0])}
    got = perf.race(fns, iters=3, warmup=1, device=torch.device("cpu"))
    assert calls == ["o", "r", "o", "r", "r", "o", "o", "r"]
    assert got["optimised"] == {"seconds": 2.0, "all_seconds": [1.0, 5.0, 2.0]}
    assert got["reference"] == {"seconds": 4.0, "all_seconds": [3.0, 4.0, 9.0]}


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
