"""GenEval (generate + score, score only) and FID commands."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import click

from bench.cli.group import NON_NEGATIVE, POSITIVE, main, threads_option
from bench.geneval.rules import Rules
from lightgen.errors import InputError

RULE_DEFAULTS = asdict(Rules())


def _scoring_options(f):
    """Options shared by `geneval` and `geneval-score` (detector, colours, rules, bookkeeping)."""
    opts = [
        click.option("--detector", default=None, type=click.Choice(["mask2former", "mmdet", "testbed"]),
                     help="Detector backend (default: testbed for testbed inputs, else mask2former; mmdet = "
                          "GenEval's own, an optional extra)."),
        click.option("--checkpoint", default=None,
                     help="Detector weights. mask2former: GenEval's mmdet .pth (path or URL; converted once and "
                          "cached), a converted directory, or a transformers hub id / directory (default: GenEval's "
                          "own checkpoint, downloaded). mmdet: path or URL."),
        click.option("--image-size", type=click.IntRange(min=0), default=None,
                     help="Detector input short side (official 800; 0 = original size)."),
        click.option("--color-classifier", default=None, type=click.Choice(["clip", "testbed"]),
                     help="Colour backend (default: testbed with --detector testbed, else clip)."),
        click.option("--clip-model", default=None, help="open_clip model for colours (default ViT-L-14)."),
        click.option("--device", default=None, help="cpu / cuda (default: cuda if available)."),
        click.option("--score-batch-size", type=click.IntRange(min=1), default=8, show_default=True,
                     help="Images decoded per step (the detector still sees one image per forward, CLIP one clause)."),
        click.option("--num-workers", type=click.IntRange(min=0), default=2, show_default=True,
                     help="DataLoader workers decoding images."),
        click.option("--results", type=click.Path(dir_okay=False), default=None,
                     help="results.jsonl path (default: OUTDIR/results.jsonl)."),
        click.option("--allow-missing", is_flag=True, help="Score what is there despite missing folders/images."),
        *[click.option(f"--{k.replace('_', '-')}", k, type=POSITIVE if isinstance(v, int) else NON_NEGATIVE,
                       default=v, show_default=True,
                       help="GenEval option (official default).") for k, v in RULE_DEFAULTS.items()],
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _default_prompts(testbed: bool) -> Path:
    from bench.geneval.layout import OFFICIAL_PROMPTS, TESTBED_PROMPTS
    return TESTBED_PROMPTS if testbed else OFFICIAL_PROMPTS


def _scorer(opts: dict, testbed_input: str | None = None):
    """Detector and colour classifier; `testbed_input` names a testbed input (then the testbed's are the defaults)."""
    from bench.geneval.colors import get_color_classifier
    from bench.geneval.detectors import get_detector
    if testbed_input and not opts["detector"]:
        click.echo(f"{testbed_input} is from the testbed world: testbed prompts, detector and colour classifier "
                   f"(--detector/--color-classifier/--prompts to choose others)")
    opts["detector"] = opts["detector"] or ("testbed" if testbed_input else "mask2former")
    testbed = opts["detector"] == "testbed"
    detector = get_detector(opts["detector"], **({} if testbed else dict(
        checkpoint=opts["checkpoint"], image_size=opts["image_size"], device=opts["device"])))
    colors = opts["color_classifier"] or ("testbed" if testbed else "clip")
    classifier = get_color_classifier(colors, **({} if colors == "testbed" else dict(
        model=opts["clip_model"], device=opts["device"])))
    return detector, classifier


def _score(outdir, prompts, detector, classifier, opts, n_samples) -> None:
    from bench.geneval.score import report, score
    run = score(outdir, detector, classifier, prompts=prompts, results=opts["results"], n_samples=n_samples,
                allow_missing=opts["allow_missing"], batch_size=opts["score_batch_size"],
                num_workers=opts["num_workers"], rules=Rules(**{k: opts[k] for k in RULE_DEFAULTS}))
    click.echo(report(run))
    if run.errors:
        click.echo(f"Error: {len(run.errors)} unreadable image(s), listed above; fix or regenerate them and "
                   f"rerun to score them", err=True)
        sys.exit(1)


def _load_prompts(path, testbed: bool, limit: int | None, classes) -> list[dict]:
    from bench.geneval.layout import read_prompts
    from bench.geneval.score import validate_metadata
    path = Path(path) if path else _default_prompts(testbed)
    prompts = read_prompts(path)[:limit]
    click.echo(f"prompts: {path} ({len(prompts)})")
    for i, p in enumerate(prompts):
        validate_metadata(p, f"{path}:{i + 1}", set(classes))
        if not isinstance(p.get("prompt"), str):
            raise InputError(f"{path}:{i + 1}: prompt: expected a string")
    return prompts


@main.command(epilog="""\b
Examples:
  lightgen-bench geneval --testbed --outdir runs/geneval-teacher
  lightgen-bench geneval --ckpt runs/demo/dpo/pipeline --outdir runs/geneval-demo --steps 64 --guidance-scale 4
  lightgen-bench geneval --pipeline stabilityai/stable-diffusion-2-1 --outdir runs/sd21 \\
      --steps 50 --guidance-scale 9 --device cuda
  lightgen-bench geneval --ckpt DIR --outdir OUT --shard 0/4 --no-score   # one of 4 shards
  accelerate launch --multi_gpu --num_processes 8 $(which lightgen-bench) geneval --ckpt DIR --outdir OUT
""")
@click.option("--ckpt", type=click.Path(file_okay=False), default=None, help="LightGen pipeline directory.")
@click.option("--pipeline", default=None, help="diffusers text-to-image pipeline: hub id or local path.")
@click.option("--testbed", is_flag=True, help="The testbed teacher as the generator.")
@click.option("--outdir", type=click.Path(file_okay=False), required=True, help="Official GenEval image layout.")
@click.option("--prompts", type=click.Path(dir_okay=False), default=None,
              help="Metadata .jsonl (default: the testbed's 360 for --testbed, a testbed --ckpt or --detector "
                   "testbed; else the 553 official prompts).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N prompts (smoke tests).")
@click.option("--n-samples", type=click.IntRange(min=1), default=4, show_default=True,
              help="Images per prompt (official: 4).")
@click.option("--steps", type=POSITIVE, default=None, help="Sampling steps (default: the generator's).")
@click.option("--guidance-scale", type=NON_NEGATIVE, default=None, help="Guidance scale (default: the generator's).")
@click.option("--resolution", type=POSITIVE, default=None, help="Image side in pixels (default: the generator's).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Base seed; image (i, k) gets hash(seed, i, k).")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Images per generator call.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default=None,
              help="diffusers pipeline weights dtype (default: as stored).")
@click.option("--shard", default="0/1", show_default=True, help="i/n: generate prompts with index % n == i.")
@click.option("--grid", is_flag=True, help="Also write grid.png per prompt.")
@click.option("--no-score", is_flag=True, help="Generate only.")
@_scoring_options
@threads_option
def geneval(ckpt, pipeline, testbed, outdir, prompts, limit, n_samples, steps, guidance_scale, resolution, seed, batch_size,
            dtype, shard, grid, no_score, **opts):
    """Generate GenEval images (resumable, sharded) and score them."""
    from bench.geneval.generate import check_generator_choice, generate, get_generator
    from lightgen.files import check_writable

    check_generator_choice(ckpt, pipeline, testbed)  # before any detector is fetched
    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError:
        raise InputError(f"--shard {shard}: expected i/n, e.g. 0/4") from None
    check_writable(outdir, "--outdir")
    from bench.testbed.recognise import testbed_pipeline
    detector, classifier = _scorer(opts, "--testbed" if testbed else ckpt if testbed_pipeline(ckpt) else None)
    prompt_list = _load_prompts(prompts, testbed or opts["detector"] == "testbed", limit, detector.classes)
    if not no_score and n == 1:
        detector.weights()  # download / convert the detector checkpoint now, not after hours of generation
    import torch
    state = None
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:  # under `accelerate launch`: one process per device
        from accelerate import PartialState
        state = PartialState(cpu=not torch.cuda.is_available())
        opts["device"] = opts["device"] or str(state.device)
    generator = get_generator(ckpt=ckpt, pipeline=pipeline, testbed=testbed, steps=steps, guidance_scale=guidance_scale,
                              resolution=resolution, device=opts["device"], dtype=getattr(torch, dtype) if dtype else None)
    written = generate(generator, prompt_list, outdir, n_samples=n_samples, batch_size=batch_size, seed=seed,
                       shard=(i, n), grid=grid)
    click.echo(f"{generator.name}: wrote {written} prompt folder(s) to {outdir}")
    if state is not None:
        state.wait_for_everyone()
        if not state.is_main_process:
            state.destroy_process_group()
            return
    if no_score or n > 1:
        if n > 1:
            click.echo(f"shard {i}/{n} done; score with: lightgen-bench geneval-score {outdir}")
    else:
        _score(outdir, prompt_list, detector, classifier, opts, n_samples)
    if state is not None:
        state.destroy_process_group()


@main.command("geneval-score", epilog="""\b
Examples:
  lightgen-bench geneval-score runs/sd21                       # GenEval's detector (transformers) + CLIP
  lightgen-bench geneval-score runs/sd21 --checkpoint detectors/geneval-m2f   # converted once, offline
  lightgen-bench geneval-score runs/sd21 --detector mmdet      # the same weights through mmdet (mmcv)
  lightgen-bench geneval-score runs/geneval-teacher            # testbed images: testbed prompts, detector, colours
  lightgen-bench geneval-score official_outputs/ --n-samples 0 --allow-missing   # anything there
\b
Writes OUTDIR/results.jsonl (official fields; resumable), summary.json and summary.md.
Exit 1 if some images were unreadable (listed), 2 on bad input.
""")
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--prompts", type=click.Path(dir_okay=False), default=None,
              help="Metadata .jsonl every folder is checked against (default: the testbed's for a folder of "
                   "testbed prompts or --detector testbed, else the official 553).")
@click.option("--n-samples", type=click.IntRange(min=0), default=4, show_default=True,
              help="Expected images per prompt (0 = any).")
@_scoring_options
@threads_option
def geneval_score(outdir, prompts, n_samples, **opts):
    """Score a GenEval image folder (ours or the official generator's)."""
    from bench.geneval.layout import read_prompts
    from bench.testbed.recognise import testbed_folder, testbed_prompts
    testbed = testbed_prompts(read_prompts(prompts)) if prompts else testbed_folder(outdir)
    detector, classifier = _scorer(opts, (prompts or outdir) if testbed else None)
    prompt_list = _load_prompts(prompts, opts["detector"] == "testbed", None, detector.classes)
    _score(outdir, prompt_list, detector, classifier, opts, n_samples or None)


@main.command("convert-geneval-detector", epilog="""\b
Example:
  lightgen-bench convert-geneval-detector \\
      mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco_20220504_001756-743b7d99.pth detectors/geneval-m2f
\b
Accepts the mmdet 2.x file (GenEval's) or its mmdet 3.x conversion (...-c9d0c4f2.pth). Exit 2 (nothing
written) for a file that is not that model, pickles anything but tensors and plain metadata, or is truncated.
""")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("outdir", type=click.Path(file_okay=False))
def convert_geneval_detector(checkpoint, outdir):
    """Convert GenEval's Mask2Former checkpoint into a transformers directory (no mmcv needed)."""
    from bench.geneval.convert import convert, read_source
    source = read_source(convert(checkpoint, outdir))
    official = f"yes, {source['official']}" if source["official"] else "no"
    click.echo(f"{outdir}: {source['source']} ({source['layout']} keys, sha256 {source['sha256'][:16]}...); "
               f"GenEval's own weights: {official}")


@main.command("fid", epilog="""\b
Examples:
  lightgen-bench fid runs/sd21 refs/coco30k                    # clean-fid Inception, clean mode
  lightgen-bench fid runs/a runs/b --extractor clip --kid
  lightgen-bench fid runs/a refs/stats.npz --inception ~/inception-2015-12-05.pt
  lightgen-bench fid runs/demo/eval-kd/images runs/demo/eval-dpo/images   # testbed images: testbed extractor
""")
@click.argument("a", type=click.Path(exists=True))
@click.argument("b", type=click.Path(exists=True))
@click.option("--extractor", default=None, type=click.Choice(["clean", "clip", "testbed"]),
              help="Feature extractor (default: testbed when A or B holds testbed images, else clean).")
@click.option("--inception", type=click.Path(exists=True), default=None,
              help="Local inception-2015-12-05.pt (clean); else downloaded on first use.")
@click.option("--resolution", type=POSITIVE, default=None, help="Resize images (clean-fid's PIL bicubic) first.")
@click.option("--num", type=POSITIVE, default=None, help="Use the first N images of each folder.")
@click.option("--batch-size", type=POSITIVE, default=32, show_default=True)
@click.option("--num-workers", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--device", default=None, help="cpu / cuda (default: cuda if available).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Where folder statistics are cached (default ~/.cache/lightgen-bench/fid).")
@click.option("--no-cache", is_flag=True, help="Do not read or write cached statistics.")
@click.option("--kid", is_flag=True, help="Also KID (mean and std over 100 seeded subsets).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the result as JSON.")
@threads_option
def fid_cmd(a, b, extractor, inception, resolution, num, batch_size, num_workers, device, cache_dir, no_cache, kid,
            out):
    """FID between two image folders (or .npz statistics). Report the counts and extractor with it."""
    import torch

    from bench.fid import CACHE_DIR, CleanInception, fid
    from lightgen.files import check_output_file, write_text

    from bench.testbed.recognise import testbed_folder
    if out:
        check_output_file(out, "--out")
    if extractor is None:
        extractor = "testbed" if testbed_folder(a) or testbed_folder(b) else "clean"
        click.echo(f"extractor: {extractor} (default for {'testbed' if extractor == 'testbed' else 'these'} images; "
                   f"--extractor to choose)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = CleanInception(inception) if inception and extractor == "clean" else extractor
    result = fid(a, b, model, kid=kid, cache_dir=None if no_cache else (cache_dir or CACHE_DIR), resolution=resolution,
                 num=num, batch_size=batch_size, num_workers=num_workers, device=device)
    line = f"FID {result['fid']:.4f} ({result['extractor']}, n={result['n_a']} vs n={result['n_b']})"
    if kid:
        line += f"  KID {result['kid']:.6f} ± {result['kid_std']:.6f}"
    click.echo(line)
    if "warning" in result:
        click.echo(f"warning: {result['warning']}", err=True)
    if out:
        from bench.provenance import environment
        write_text(out, json.dumps({**result, **environment()}, indent=2) + "\n")
