"""Every command the README, the pages under docs/ and the `--help` epilogs show works as written: each one
parses against the CLI, and each one that needs no GPU, hub weights or hours runs at tiny sizes in a project
folder holding the quick demo's `runs/demo` (sizes are appended: the last value of an option wins). Every
relative link and repository path they name exists."""
from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from bench.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PAGES = {p.relative_to(ROOT): p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}


def _joined(lines) -> list[str]:
    """Lines with `\\` continuations joined and comments dropped, as shell words."""
    out, cur = [], ""
    for line in lines:
        if not cur and not line.strip().startswith("lightgen-bench "):
            continue  # prose in an epilog, or a non-CLI line in a README block
        cur += line.rstrip()
        if cur.endswith("\\"):
            cur = cur[:-1] + " "
            continue
        if cur.strip():
            out.append(shlex.join(shlex.split(cur, comments=True)))
        cur = ""
    return out


def _help_examples(group: click.Group = main):
    for cmd in group.commands.values():
        yield from _joined((cmd.epilog or "").splitlines())
        if isinstance(cmd, click.Group):
            yield from _help_examples(cmd)


EXAMPLES = sorted({e for e in [*_joined(l for text in PAGES.values() for b in re.findall(r"```bash\n(.*?)```", text, re.S)
                                        for l in b.splitlines()), *_help_examples()]
                   if e.startswith("lightgen-bench ")})

CACHE = "runs/demo/data-n16000-d36780-r32-s0.cache-a3d2b926e6"  # the full demo's; the quick demo's is swapped in
TINY = {"geneval": "--limit 3 --n-samples 1 --steps 2 --batch-size 3",
        "geneval-score": "--n-samples 1 --allow-missing", "sample": "--steps 2", "probe": "--n 4",
        "testbed dataset": "--n 8 --diversity 4", "distill": "--n 4",
        "fid": "--no-cache", "train": "--set steps=1 --set batch_size=2 --set save_every=1 --set log_every=1",
        "dpo": "--set steps=1 --set batch_size=2 --set save_every=1 --set log_every=1", "dpo-pairs": "--n 2 --steps 2"}
# run in this order (later ones read what earlier ones wrote)
RUN = [
    "lightgen-bench geneval --ckpt runs/demo/dpo/pipeline --outdir runs/geneval-ours",
    "lightgen-bench geneval --ckpt runs/demo/dpo/pipeline --outdir runs/geneval-demo --steps 64 --guidance-scale 4",
    "lightgen-bench geneval --testbed --outdir runs/geneval-teacher",
    "lightgen-bench geneval-score runs/geneval-teacher",
    "lightgen-bench fid runs/demo/eval-kd/images runs/demo/eval-dpo/images",
    "lightgen-bench table runs/geneval-demo --paper-table 1",
    "lightgen-bench table --paper-table 3",
    "lightgen-bench table results/testbed/data-scale --paper-table 1 --format latex",
    "lightgen-bench table results/testbed/data-scale --format csv",
    "lightgen-bench sample --preset testbed --prompt 'two red circles' --out samples/",
    "lightgen-bench sample --ckpt runs/demo/dpo/pipeline --prompt 'a blue square' -n 4 --seed 0 --out samples/",
    f"lightgen-bench probe runs/demo/kd/pipeline --cache {CACHE}",
    f"lightgen-bench probe runs/demo/kd/pipeline --cache {CACHE} --completion 48",
    "lightgen-bench testbed render 'two red circles' out.png",
    "lightgen-bench testbed render 'a photo of a blue square left of a triangle' out.png --resolution 64 --seed 3",
    "lightgen-bench testbed dataset --n 5000 --diversity 200 --resolution 32 --out data/testbed-5k",
    "lightgen-bench cache data/testbed-5k --out data/testbed-5k.cache --config eval_configs/train/testbed_kd.yaml",
    "lightgen-bench compare results/testbed/diversity/points/d36780 "
    "results/testbed/diversity/points/d30 --output d.json",
    "lightgen-bench ablate diversity --config eval_configs/ablations/diversity.yaml --dry-run",
    "lightgen-bench distill --teacher testbed --captions captions.txt --out data/t2i",
    "lightgen-bench cache data/t2i --out data/t2i.cache --config eval_configs/train/testbed_kd.yaml",
    "lightgen-bench train --config eval_configs/train/testbed_kd.yaml --set cache=data/t2i.cache",
    "lightgen-bench train --config eval_configs/train/testbed_kd.yaml --set cache=data/t2i.cache --set steps=200 "
    "--set out=runs/short",
    "lightgen-bench probe runs/kd/pipeline --cache data/t2i.cache --completion 48",
    "lightgen-bench dpo-pairs --ckpt runs/kd/pipeline --teacher testbed --captions captions.txt --out data/pairs",
    "lightgen-bench cache data/pairs/winner --out data/pairs/winner.cache --config eval_configs/train/testbed_dpo.yaml",
    "lightgen-bench cache data/pairs/loser --out data/pairs/loser.cache --config eval_configs/train/testbed_dpo.yaml",
    "lightgen-bench dpo --config eval_configs/train/testbed_dpo.yaml --set init_from=runs/kd/pipeline "
    "--set cache=data/pairs/winner.cache --set loser_cache=data/pairs/loser.cache",
]
HUB = "hub weights or a GPU (not in offline CPU tests; the same code runs on tiny random models elsewhere)"
LONG = "a full-size run (minutes to hours); the same code runs at tiny size in the examples above / test_experiments"
NOT_RUN = {
    "lightgen-bench demo --quick": "the shared fixture of this file (`demo --quick --work runs/demo`)",
    "lightgen-bench demo": LONG,
    "lightgen-bench demo --output results/demo": "rewrites the committed results/demo",
    "lightgen-bench testbed grid": "rewrites the committed teacher grid (tested with --out in test_testbed_cli)",
    "lightgen-bench testbed prompts": "rewrites the committed prompts (tested with --out in test_testbed_cli)",
    "lightgen-bench testbed grid --out results/testbed/teacher_grid.png": "rewrites the committed teacher grid",
    "lightgen-bench testbed prompts --out eval_configs/testbed/geneval_testbed.jsonl": "rewrites the committed prompts",
    "lightgen-bench plot results/testbed/steps": "rewrites a committed plot (plot: test_tables, on copies)",
    "lightgen-bench plot results/testbed/kd-probes": "rewrites a committed plot (plot: test_tables, on copies)",
    "lightgen-bench plot results/testbed/data-scale": "rewrites a committed plot (plot: test_tables, on copies)",
    "lightgen-bench race results/testbed/race/lightgen results/testbed/race/unet --name LightGen --name UNet "
    "--output results/testbed/race": "rewrites the committed results/testbed/race (race: test_race)",
    "lightgen-bench ablate steps --config eval_configs/ablations/race-lightgen.yaml --work runs/race-lightgen "
    "--threads 1 --output results/testbed/race/lightgen": LONG,
    "lightgen-bench forced --ckpt runs/race-lightgen/train/r32/pipeline --keep 0.5 --outdir runs/forced":
        "needs the race's LightGen run (its snapshot pipeline)",
    "lightgen-bench ablate steps --config eval_configs/ablations/race-unet.yaml --work runs/race --threads 1 "
    "--output results/testbed/race/unet": LONG,
    "lightgen-bench ablate steps --config eval_configs/ablations/steps-unet-2core.yaml --work runs/ablate/unet "
    "--threads 1 --output results/testbed/steps": LONG,
    "lightgen-bench train --config eval_configs/train/testbed_kd.yaml --set cache=data/t2i.cache --set steps=500 "
    "--set head_lr_scale=20 --set out=runs/hls/20": LONG,
    "lightgen-bench geneval --ckpt runs/hls/20/pipeline --detector testbed --color-classifier testbed --n-samples 1 "
    "--steps 32 --guidance-scale 4 --outdir runs/hls/20/eval": "needs that 500-step run (geneval --ckpt runs above)",
    "lightgen-bench probe runs/ablate/steps-long-lr2e-4/train/r32/snapshots/step-00002000 --cache "
    "runs/ablate/steps-long-lr2e-4/data-n64000-d36780-r32-s0.cache-a3d2b926e6 --completion 48":
        "needs that ablation's work folder (probe --completion runs above)",
    "lightgen-bench ablate guidance --threads 1": LONG,
    "lightgen-bench ablate data-scale --config eval_configs/ablations/data-scale.yaml": LONG,
    "lightgen-bench ablate steps --config eval_configs/ablations/steps.yaml --launcher accelerate": LONG,
    "lightgen-bench probe-kd copy": LONG, "lightgen-bench probe-kd grid --threads 1": LONG,
    "lightgen-bench probe-kd sincos --threads 1": LONG,
    "lightgen-bench probe-kd curve --name eps --set model.prediction=epsilon --threads 1": LONG,
    "lightgen-bench testbed dataset --n 5000 --diversity 5000 --out data/testbed-5k-div5k --seed 1": LONG,
    "lightgen-bench distill --teacher testbed --captions captions.txt --out data/distilled --n 10000": LONG,
    "lightgen-bench geneval --ckpt DIR --outdir OUT --shard 0/4 --no-score": "placeholders (DIR, OUT)",
    "lightgen-bench perf --preset testbed --what sample --batch 64 --steps 16": LONG,
    "lightgen-bench perf --preset testbed --what train --batch 64 --output results/perf/cpu_train.json": LONG,
    "lightgen-bench perf --what fid": LONG,
    "lightgen-bench ablate steps --config eval_configs/ablations/steps-unet-2core.yaml --threads 1": LONG,
    "lightgen-bench ablate steps --config eval_configs/ablations/steps-unet.yaml --threads 1": LONG,
    "lightgen-bench cache data/t2i --out data/t2i.cache77 --config eval_configs/train/testbed_unet.yaml":
        "the UNet chain needs data/t2i from the README's distil example (the UNet trainer: test_unet_student)",
    "lightgen-bench train --config eval_configs/train/testbed_unet.yaml --set cache=data/t2i.cache77": LONG,
    "lightgen-bench geneval --pipeline runs/unet/pipeline --detector testbed --steps 20 --guidance-scale 4 "
    "--outdir runs/g-unet": "needs a trained UNet (test_unet_student scores one through geneval --pipeline)",
    "lightgen-bench compare runs/dpo-eval runs/kd-eval": "placeholders for two scored folders (compare: test_geneval_stats)",
    "lightgen-bench compare runs/geneval-ours runs/sd21": "needs SD 2.1 images (compare: test_geneval_stats)",
    "lightgen-bench probe-kd curve --name testbed-small --steps 750 --every 250 --threads 1 --work runs/kd-probes "
    "--output results/testbed/kd-probes/results.jsonl": LONG,
    "lightgen-bench probe-kd curve --name testbed-small-eps-abs --set model.prediction=epsilon "
    "--set model.rel_pos_bias=false --steps 750 --every 250 --threads 1 --work runs/kd-probes "
    "--output results/testbed/kd-probes/results.jsonl": LONG,
    "lightgen-bench perf --official ../LightGen --set pos_grid=16 --set clip_sample=null --threads 1":
        "needs a checkout of the official LightGen code (the loader is tested on a fake checkout in test_official)",
    "lightgen-bench convert-geneval-detector mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco_20220504_001756-743b7d99.pth "
    "detectors/geneval-m2f": "needs GenEval's checkpoint (a download; the converter is tested on random weights)",
    "lightgen-bench geneval-score runs/sd21 --checkpoint detectors/geneval-m2f":
        "needs the converted GenEval detector and SD 2.1 images",
    "lightgen-bench table runs/kd/summary.json runs/dpo --name 'ours (KD)' --name 'ours (DPO)' --paper-table 2 "
    "--format latex --output table.tex": "needs GenEval summaries in runs/kd and runs/dpo (table is run above)",
    **dict.fromkeys([
        "lightgen-bench geneval --pipeline stabilityai/stable-diffusion-2-1 --outdir runs/sd21",
        "lightgen-bench geneval --pipeline stabilityai/stable-diffusion-2-1 --outdir runs/sd21 --steps 50 "
        "--guidance-scale 9 --device cuda",
        "lightgen-bench geneval-score runs/sd21",
        "lightgen-bench geneval-score runs/sd21 --detector mmdet",
        "lightgen-bench geneval-score official_outputs/ --n-samples 0 --allow-missing",
        "lightgen-bench fid runs/sd21 refs/coco30k", "lightgen-bench fid runs/a runs/b --extractor clip --kid",
        "lightgen-bench fid runs/a refs/stats.npz --inception '~/inception-2015-12-05.pt'",
        "lightgen-bench distill --teacher stabilityai/sdxl-turbo --captions captions.txt --out data/sdxl "
        "--resolution 512 --steps 4",
        "lightgen-bench dpo-pairs --ckpt pipelines/lightgen-0.7b --reference data/laion-aesthetic --out data/pairs",
        "lightgen-bench convert-official fluid_dpo/checkpoint-last.pth pipelines/lightgen-0.7b",
        "lightgen-bench perf --preset lightgen-0.7b --what train --batch 64 --resolution 256 --device cuda",
    ], HUB),
}


def test_readme_test_command_is_what_ci_runs_and_needs_no_activated_venv():
    first, second = re.search(r"```bash\n(.*?)```", README, re.S).group(1).splitlines()
    assert "pip install -e" in first and second == ".venv/bin/python -m pytest -q"
    ci = (ROOT / ".ci" / "run").read_text()
    run = [line.split("#")[0].strip() for line in ci.splitlines() if "pytest" in line and not line.startswith("#")]
    assert run[0] == second and "deactivate" in ci.split(second)[0]


LINK = re.compile(r"\]\(([^)\s]+)\)")
REPO_PATH = re.compile(r"`((?:results|eval_configs|bench|lightgen|tests|docs)/[^`\s]*)`")


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens (code blocks skipped)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_links_and_named_paths_exist():
    """Relative links (and their #anchors) resolve from their page; repository paths in backticks from the root
    (placeholders such as `<label>` or `*` skipped). HTML comments are skipped: they hold notes for later runs."""
    missing = []
    for page, text in PAGES.items():
        text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
        for target in LINK.findall(text):
            path, _, anchor = target.partition("#")
            if "://" in path:
                continue
            file = (ROOT / page.parent / path) if path else ROOT / page
            if not file.exists() or (anchor and anchor not in _anchors(file.read_text())):
                missing.append(f"{page}: ({target})")
        for path in REPO_PATH.findall(text):
            if not re.search(r"[<*{]", path) and not (ROOT / path.split("::")[0]).exists():
                missing.append(f"{page}: `{path}`")
    assert not missing, "\n".join(missing)


def test_every_example_is_run_or_says_why_not():
    assert len(set(RUN)) == len(RUN) and not set(RUN) & set(NOT_RUN)
    assert set(EXAMPLES) - set(RUN) - set(NOT_RUN) == set(), "new example: add it to RUN (or say why not)"
    assert set(RUN) | set(NOT_RUN) <= set(EXAMPLES), "stale entry: the example is gone"


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_example_parses(example, monkeypatch):
    """Options, choices, types and required arguments as the CLI checks them (input paths need not exist)."""
    monkeypatch.setattr(click.Path, "convert", lambda self, value, param, ctx: value)
    monkeypatch.setattr(click.Command, "invoke", lambda self, ctx: None)  # parse, do not run
    main.main(shlex.split(example)[1:], standalone_mode=False)


def _tiny(example: str, cache: str) -> list[str]:
    args = shlex.split(example.replace(CACHE, cache).replace("--completion 48", "--completion 2"))[1:]
    command = " ".join(args[:2]) if args[0] == "testbed" else args[0]
    return args + shlex.split(TINY.get(command, ""))


def test_examples_run_at_tiny_sizes(demo_quick, monkeypatch):
    from bench.testbed.captions import sample_captions

    monkeypatch.chdir(demo_quick)
    for name in ("eval_configs", "results"):  # read only
        (demo_quick / name).symlink_to(ROOT / name)
    Path("captions.txt").write_text("\n".join(sample_captions(4, 4, 0)) + "\n")
    cache = str(next(Path("runs/demo").glob("data-*.cache-*")))
    for example in RUN:
        r = CliRunner().invoke(main, _tiny(example, cache))
        assert r.exit_code == 0, f"{example}\n{r.output}\n{r.exception!r}"
        if example.startswith("lightgen-bench geneval"):  # testbed inputs get the testbed's scorers, and say so
            assert "testbed world" in r.output and "geneval_testbed.jsonl" in r.output, r.output
            outdir = example.split()[-1] if "score" in example else example.split("--outdir ")[1].split()[0]
            summary = json.loads((Path(outdir) / "summary.json").read_text())
            assert summary["detector"] == "testbed" and summary["color_classifier"].startswith("testbed")
        if example.startswith("lightgen-bench fid"):
            assert "extractor: testbed" in r.output and "FID " in r.output and "(testbed-" in r.output, r.output
    assert sorted(os.listdir("samples")) == [f"{k:04d}.png" for k in range(4)]
