"""Reuse keyed by every setting (issue 26): a rescore, regeneration or resumed write never mixes results of other
settings, and a killed run leaves nothing that the next run keeps or trips over."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from bench.cli import main
from bench.geneval.generate import generate
from bench.geneval.layout import read_prompts
from lightgen.errors import InputError
from lightgen.files import atomic_path, check_writable, remove_stale_temps, writable_dir

PROMPTS = read_prompts(Path(__file__).resolve().parents[1] / "eval_configs" / "testbed" / "geneval_testbed.jsonl")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class Painter:
    """Fake generator: a flat image per seed; `checkpoint_sha256` stands for its weights."""

    name = "painter"

    def __init__(self, weights: str = "w0"):
        self.checkpoint_sha256 = weights

    def __call__(self, prompts, seeds):
        return [Image.new("RGB", (8, 8), (s % 256, 0, 0)) for s in seeds]


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scored") / "g"
    r = invoke("geneval", "--testbed", "--limit", 2, "--n-samples", 1, "--outdir", out, "--threads", 1)
    assert r.exit_code == 0, r.output
    return out


def test_rescoring_with_another_threshold_is_refused_naming_it(scored):
    before = tree(scored)
    r = invoke("geneval-score", scored, "--n-samples", 1, "--allow-missing", "--threshold", 2.0)
    assert r.exit_code == 2 and "threshold 0.3 -> 2.0" in r.output and "--results" in r.output, r.output
    assert tree(scored) == before  # summary.json still says 0.3, nothing merged
    r = invoke("geneval-score", scored, "--n-samples", 1, "--allow-missing", "--threshold", 2.0,
               "--results", scored.parent / "strict.jsonl")
    assert r.exit_code == 0, r.output
    strict = json.loads((scored.parent / "strict.summary.json").read_text())
    assert strict["rules"]["threshold"] == 2.0 and strict["overall"] == 0.0  # nothing passes a 2.0 threshold


def test_compare_refuses_results_of_other_rule_settings(scored, tmp_path):
    for name, threshold in (("a", 0.3), ("b", 0.5)):
        r = invoke("geneval-score", scored, "--n-samples", 1, "--allow-missing", "--threshold", threshold,
                   "--results", tmp_path / name / "results.jsonl")
        assert r.exit_code == 0, r.output
    assert invoke("compare", tmp_path / "a", tmp_path / "a").exit_code == 0
    r = invoke("compare", tmp_path / "a", tmp_path / "b")
    assert r.exit_code == 2 and "one scorer" in r.output


def test_generation_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "g"
    generate(Painter(), PROMPTS[:3], out, n_samples=1, seed=0, progress=False)
    before = tree(out)
    with pytest.raises(InputError, match="seed 0 -> 1"):
        generate(Painter(), PROMPTS[:3], out, n_samples=1, seed=1, progress=False)
    with pytest.raises(InputError, match="checkpoint_sha256 'w0' -> 'w1'"):
        generate(Painter("w1"), PROMPTS[:3], out, n_samples=1, seed=0, progress=False)
    with pytest.raises(InputError, match=r"2 prompt folder\(s\) of another prompt set or --limit \(00001, 00002\)"):
        generate(Painter(), PROMPTS[:1], out, n_samples=1, seed=0, progress=False)
    with pytest.raises(InputError, match="another prompt set"):
        generate(Painter(), PROMPTS[3:6], out, n_samples=1, seed=0, progress=False)
    assert tree(out) == before
    assert generate(Painter(), PROMPTS[:4], out, n_samples=1, seed=0, progress=False) == 1  # same set, larger limit


def test_geneval_into_a_folder_of_another_prompt_set_is_refused(scored, tmp_path):
    out = tmp_path / "g"
    assert invoke("geneval", "--testbed", "--limit", 2, "--n-samples", 1, "--outdir", out, "--no-score").exit_code == 0
    before = tree(out)
    r = invoke("geneval", "--testbed", "--limit", 1, "--n-samples", 1, "--outdir", out)
    assert r.exit_code == 2 and "00001" in r.output and "Total prompts" not in r.output, r.output
    assert tree(out) == before


def test_killed_atomic_writes_are_removed_by_the_next_run(tmp_path):
    captions = tmp_path / "c.txt"
    captions.write_text("a red circle\n")
    args = ("distill", "--teacher", "testbed", "--captions", captions, "--out", tmp_path / "d", "--n", 2)
    assert invoke(*args).exit_code == 0
    shard = tmp_path / "d" / "00000"
    (shard / "00000001.json").unlink()  # as if killed between mkstemp and os.replace of sample 1
    leftovers = [tempfile.mkstemp(dir=d, prefix=".00000001.png.", suffix=".tmp") for d in (shard, tmp_path / "d")]
    assert invoke(*args).exit_code == 0
    assert not [p for p in (tmp_path / "d").rglob("*.tmp")] and (shard / "00000001.json").is_file()
    for fd, _ in leftovers:
        os.close(fd)


def test_probing_and_preparing_a_folder_leave_no_files(tmp_path):
    (tmp_path / "keep").write_text("x")
    check_writable(tmp_path / "a" / "b", "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]  # nothing made, no probe file
    with pytest.raises(InputError, match="not a writable directory"):
        check_writable(tmp_path / "keep" / "x", "out")
    with atomic_path(tmp_path / "w" / "x.txt") as tmp:
        tmp.write_text("whole")
    assert tmp.name.startswith(".x.txt.") and not tmp.exists()
    fd, orphan = tempfile.mkstemp(dir=tmp_path / "w", prefix=".y.png.", suffix=".tmp")
    os.close(fd)
    assert writable_dir(tmp_path / "w", "out") and sorted(p.name for p in (tmp_path / "w").iterdir()) == ["x.txt"]
    assert remove_stale_temps(tmp_path / "w") == 0


def test_cache_killed_before_its_record_reruns_byte_identically(tmp_path):
    data = tmp_path / "data"
    assert invoke("testbed", "dataset", "--n", 4, "--diversity", 4, "--out", data).exit_code == 0
    config = Path(__file__).resolve().parents[1] / "eval_configs" / "train" / "testbed_kd.yaml"
    assert invoke("cache", data, "--out", tmp_path / "c", "--config", config).exit_code == 0
    whole = tree(tmp_path / "c")
    meta = json.loads(whole["meta.json"])  # killed after the last shard, before meta.json was completed:
    incomplete = {k: v for k, v in meta.items() if k != "shards"}
    (tmp_path / "c" / "meta.json").write_text(json.dumps({**incomplete, "complete": False}, indent=2))
    assert invoke("cache", data, "--out", tmp_path / "c", "--config", config).exit_code == 0
    assert tree(tmp_path / "c") == whole
    other = tmp_path / "other"
    assert invoke("testbed", "dataset", "--n", 3, "--diversity", 3, "--out", other).exit_code == 0
    r = invoke("cache", other, "--out", tmp_path / "c", "--config", config)
    assert r.exit_code == 2 and "another dataset" in r.output and tree(tmp_path / "c") == whole


def test_an_ablation_point_of_other_settings_is_refused_not_reused(tmp_path):
    import yaml

    model = {"width": 32, "num_heads": 2, "encoder_depth": 1, "decoder_depth": 1, "cross_depth": 1, "text_depth": 1,
             "diffloss_width": 32, "diffloss_depth": 1, "text_vocab": "testbed"}
    cfg = {"points": [1.0], "train": {"model": model, "steps": 2, "batch_size": 16, "save_every": 2, "log_every": 1},
           "data": {"n": 32}, "eval": {"limit": 6, "steps": 2, "fid": False}}
    path = tmp_path / "guidance.yaml"
    path.write_text(yaml.safe_dump(cfg))
    args = ["ablate", "guidance", "--config", path, "--work", tmp_path / "w", "--output", tmp_path / "o"]
    assert invoke(*args).exit_code == 0
    seed0 = (tmp_path / "o" / "points" / "cfg1" / "seed-0.json").read_text()
    path.write_text(yaml.safe_dump({**cfg, "eval": {**cfg["eval"], "steps": 3}}))
    r = invoke(*args)
    assert r.exit_code == 2 and "point cfg1 was run with other settings (steps 2 -> 3)" in r.output, r.output
    assert (tmp_path / "o" / "points" / "cfg1" / "seed-0.json").read_text() == seed0


def test_a_testbed_evaluation_is_reused_only_for_the_same_weights_settings_and_prompts(tmp_path, monkeypatch):
    """`bench.experiment.evaluate` (every ablation, probe curve and the demo) keeps evaluation.json for a rerun:
    reused as is for the same pipeline bytes, EvalSpec and prompts; any other is refused, naming the setting."""
    import bench.experiment as experiment
    from bench.testbed.teacher import TestbedTeacher

    made = []
    monkeypatch.setattr(experiment, "pipeline_generator", lambda pipe, spec: made.append(pipe) or TestbedTeacher(32))
    pipe, out = tmp_path / "pipe", tmp_path / "eval"
    pipe.mkdir()
    (pipe / "weights.bin").write_bytes(b"0")
    spec = experiment.EvalSpec(limit=4, steps=2, fid=False)
    first = experiment.evaluate(pipe, out, spec)
    assert experiment.evaluate(pipe, out, spec) == first and len(made) == 1  # reused, not regenerated
    lines = (Path(__file__).resolve().parents[1] / "eval_configs" / "testbed" / "geneval_testbed.jsonl").read_text()
    (tmp_path / "other.jsonl").write_text("".join(lines.splitlines(keepends=True)[-4:]))  # 4 other prompts
    for other, prompts, pipe_bytes, named in (
            (experiment.EvalSpec(limit=4, steps=2, fid=False, guidance_scale=2.0), None, b"0", "guidance_scale 4.0 -> 2.0"),
            (experiment.EvalSpec(limit=5, steps=2, fid=False), None, b"0", "limit 4 -> 5"),
            (spec, tmp_path / "other.jsonl", b"0", "prompts"),
            (spec, None, b"1", "pipeline_sha256")):
        (pipe / "weights.bin").write_bytes(pipe_bytes)
        with pytest.raises(InputError, match=f"evaluation.json: evaluated with other weights or settings \\({named}"):
            experiment.evaluate(pipe, out, other, **({"prompts_file": prompts} if prompts else {}))
    assert len(made) == 1
