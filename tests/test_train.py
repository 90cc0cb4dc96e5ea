"""Feature cache, KD / DPO trainers: checkpoints, exact resume after SIGKILL, bad input."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from bench.cli import main
from lightgen.cache import FeatureCache, build_cache
from lightgen.codecs import build_codec
from lightgen.config import LightGenConfig
from lightgen.errors import InputError
from lightgen.mar import LightGen
from lightgen.pipeline import LightGenPipeline, build_text_encoder
from lightgen.train import TrainConfig, TrainingDiverged, latest_checkpoint, read_checkpoint, train

MODEL = dict(width=32, num_heads=2, encoder_depth=1, decoder_depth=1, cross_depth=1, text_depth=1,
             diffloss_width=32, diffloss_depth=1, num_sampling_steps=5, diffusion_batch_mul=1,
             text_vocab=["a", "red", "blue", "circle", "square"])
CAPTIONS = ["a red circle", "a blue circle", "a red square", "a blue square"]


def _records(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)), CAPTIONS[i % 4]) for i in range(n)]


def _cache(path, n=24, seed=0):
    config = LightGenConfig.from_preset("testbed", **MODEL)
    return build_cache(_records(n, seed), path, config, build_codec(config), build_text_encoder(config), 32,
                       shard_size=10)


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("caches")
    return _cache(root / "a"), _cache(root / "b", seed=1)


def _cfg(tmp_path, cache, **kw):
    return TrainConfig(model=MODEL, cache=str(cache), out=str(tmp_path / "run"), batch_size=4, steps=6,
                       save_every=2, keep_last=2, log_every=1, warmup_steps=2, ema_decay=0.9, **kw)


def _weights(path):
    from lightgen.checkpoint import load_weights
    return load_weights(path)


def test_cache_round_trip_and_flip(caches):
    cache = FeatureCache(caches[0])
    assert len(cache) == 24 and cache.meta["shards"] == ["shard-00000.safetensors", "shard-00001.safetensors",
                                                         "shard-00002.safetensors"]
    row = cache[13]
    image = _records(24)[13][0]
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
    torch.testing.assert_close(row.moments[:3], pixels, atol=1e-3, rtol=0)  # float16 storage
    torch.testing.assert_close(row.moments_flip[:3], pixels.flip(-1), atol=1e-3, rtol=0)
    assert row.text.shape == (16, 64)


def test_flipped_images_train_with_the_mirrored_caption(tmp_path):
    from lightgen.train import _Rows

    config = LightGenConfig.from_preset("testbed", **{**MODEL, "text_vocab": MODEL["text_vocab"] + ["left", "right",
                                                                                                   "of"]})
    image = _records(1)[0][0]
    encoder = build_text_encoder(config)
    cache = FeatureCache(build_cache([(image, "a red circle left of a blue square")], tmp_path / "c", config,
                                     build_codec(config), encoder, 32))
    states = lambda caption: encoder([caption])[0]  # noqa: E731
    _, moments, text = _Rows([cache], mirror=True)[(0, 0, True)]
    torch.testing.assert_close(moments, cache[0].moments_flip)
    torch.testing.assert_close(text, states("a red circle right of a blue square"))
    assert not torch.allclose(text, states("a red circle left of a blue square"))
    _, moments, text = _Rows([cache], mirror=True)[(0, 0, False)]  # not flipped: the caption as written
    torch.testing.assert_close(text, states("a red circle left of a blue square"))
    _, _, text = _Rows([cache], mirror=False)[(0, 0, True)]  # official: flipped images keep their caption
    torch.testing.assert_close(text, states("a red circle left of a blue square"))


def test_mirror_caption_swaps_sides_only():
    from lightgen.text import mirror_caption

    assert mirror_caption("Left of a box, right of a disc") == "Right of a box, left of a disc"
    assert mirror_caption("a leftover bright circle") == "a leftover bright circle"


def test_cache_is_validated_against_the_model(caches):
    with pytest.raises(InputError, match="cache was built for another model/resolution: max_length"):
        FeatureCache(caches[0], LightGenConfig.from_preset("testbed", **{**MODEL, "max_length": 8}))
    with pytest.raises(InputError, match="not a feature cache"):
        FeatureCache(caches[0].parent)


def test_kd_run_exports_a_working_pipeline_and_logs(tmp_path, caches):
    final = train(_cfg(tmp_path, caches[0]))
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,lr,grad_norm,img_per_s") and len(rows) == 7
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-00000004", "step-00000006"]
    pipe = LightGenPipeline.from_pretrained(final)
    assert pipe.default_weights == "model_ema"
    assert pipe(prompt="a red circle", num_inference_steps=2, seed=0).images[0].size == (32, 32)
    raw, ema = _weights(final / "model.safetensors"), _weights(final / "model_ema.safetensors")
    assert not torch.equal(raw["z_proj.weight"], ema["z_proj.weight"])


def test_resume_continues_exactly(tmp_path, caches):
    full = train(_cfg(tmp_path / "full", caches[0]))
    part = _cfg(tmp_path / "part", caches[0])
    part.steps = 4
    train(part)
    part.steps = 6
    resumed = train(part, resume="auto")
    for name in ("model.safetensors", "model_ema.safetensors"):
        a, b = _weights(full / name), _weights(resumed / name)
        assert all(torch.equal(a[k], b[k]) for k in a)
    rows = (tmp_path / "part" / "run" / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("scale", [0.0, 1.0])
def test_head_lr_scale_reaches_the_diffusion_head_only(tmp_path, caches, scale):
    cfg = _cfg(tmp_path, caches[0], head_lr_scale=scale)
    cfg.steps = 4
    train(cfg)
    a, b = (read_checkpoint(tmp_path / "run" / "checkpoints" / f"step-{s:08d}")["model"] for s in (2, 4))
    moved = {k: not torch.equal(a[k], b[k]) for k in a}
    assert any(v for k, v in moved.items() if not k.startswith("diffloss."))
    assert any(v for k, v in moved.items() if k.startswith("diffloss.")) == bool(scale)


def test_resume_follows_the_configured_head_lr_scale(tmp_path, caches):
    cfg = _cfg(tmp_path, caches[0])
    cfg.steps = 2
    train(cfg)
    cfg.steps, cfg.head_lr_scale = 4, 0.0  # resumed with the head frozen: the checkpoint's 1x must not win
    train(cfg, resume="auto")
    a, b = (read_checkpoint(tmp_path / "run" / "checkpoints" / f"step-{s:08d}")["model"] for s in (2, 4))
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("diffloss."))
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_an_optimizer_with_other_param_groups(tmp_path, caches):
    cfg = _cfg(tmp_path, caches[0])
    cfg.steps = 2
    train(cfg)
    state = tmp_path / "run" / "checkpoints" / "step-00000002" / "state.json"
    raw = json.loads(state.read_text())
    raw["optimizer"]["param_groups"] = raw["optimizer"]["param_groups"][:2]  # as written before the head group
    state.write_text(json.dumps(raw))
    cfg.steps = 4
    with pytest.raises(InputError, match="optimizer has 2 parameter groups, this trainer 3"):
        train(cfg, resume="auto")


def test_corrupt_checkpoint_falls_back_to_previous(tmp_path, caches):
    cfg = _cfg(tmp_path, caches[0])
    cfg.steps = 4
    train(cfg)
    newest = tmp_path / "run" / "checkpoints" / "step-00000004" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    with pytest.warns(UserWarning, match="step-00000004 is unreadable or corrupt"):
        assert latest_checkpoint(tmp_path / "run" / "checkpoints")["step"] == 2


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, caches, monkeypatch):
    cfg = _cfg(tmp_path, caches[0])
    cfg.steps = 2
    train(cfg)
    good = (tmp_path / "run" / "checkpoints" / "step-00000002" / "model.safetensors").read_bytes()
    monkeypatch.setattr(LightGen, "forward", lambda self, *a, **k: torch.tensor(float("nan"), requires_grad=True))
    cfg.steps = 4
    with pytest.raises(TrainingDiverged, match="step 2: loss is nan"):
        train(cfg)
    assert (tmp_path / "run" / "checkpoints" / "step-00000002" / "model.safetensors").read_bytes() == good
    assert not (tmp_path / "run" / "checkpoints" / "step-00000004").exists()


def test_dpo_with_policy_equal_reference_gives_log2(tmp_path, caches):
    init = train(_cfg(tmp_path / "kd", caches[0]))
    cfg = _cfg(tmp_path / "dpo", caches[0], objective="dpo", loser_cache=str(caches[1]), init_from=str(init),
               dpo_beta=500.0)
    cfg.steps, cfg.blr = 3, 0.0  # no update: policy stays the reference
    train(cfg)
    import csv
    rows = list(csv.DictReader(open(tmp_path / "dpo" / "run" / "metrics.csv")))
    assert float(rows[0]["loss"]) == pytest.approx(np.log(2), abs=1e-6)
    assert float(rows[0]["reward_margin"]) == pytest.approx(0.0, abs=1e-6)
    cfg.lr, cfg.steps, cfg.out = 5e-3, 6, str(tmp_path / "dpo2")
    train(cfg)
    rows = list(csv.DictReader(open(tmp_path / "dpo2" / "metrics.csv")))
    assert {"implicit_acc", "reward_margin", "err_w", "err_l"} <= set(rows[0])
    assert abs(float(rows[-1]["reward_margin"])) > 1e-3  # the policy moved away from the reference


@pytest.mark.parametrize("raw, match", [
    ({"bogus_key": 1}, r"unknown key\(s\) \['bogus_key'\]"),
    ({"mixed_precision": "fp8"}, "mixed_precision"),
    ({"head_lr_scale": -1}, "head_lr_scale: expected a finite number >= 0, got -1"),
])
def test_bad_train_config(tmp_path, raw, match):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match=match):
        TrainConfig.from_yaml(path)


def test_testbed_vocabulary_is_resolved_by_the_harness_and_refused_by_the_library():
    """`text_vocab: testbed` names the testbed grammar's words: bench resolves it, lightgen says how to."""
    from bench.config import load_train_config
    from bench.testbed.captions import vocabulary

    path = Path(__file__).resolve().parents[1] / "eval_configs" / "train" / "testbed_kd.yaml"
    assert load_train_config(path, ("steps=3",)).model["text_vocab"] == vocabulary()
    with pytest.raises(InputError, match=r"testbed_kd.yaml: model.text_vocab: .* got the name 'testbed'.*load_train_config"):
        TrainConfig.from_yaml(path)


def test_bad_inputs_fail_before_training(tmp_path, caches):
    with pytest.raises(InputError, match="DPO needs init_from"):
        train(_cfg(tmp_path, caches[0], objective="dpo"))
    with pytest.raises(InputError, match="not a feature cache"):
        train(_cfg(tmp_path, tmp_path))
    big = _cfg(tmp_path, caches[0])
    big.batch_size = 100
    with pytest.raises(InputError, match="fewer than one batch"):
        train(big)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.access(ro, os.W_OK):  # root ignores permissions: use a path under a file instead
        (tmp_path / "file").write_text("x")
        ro = tmp_path / "file" / "sub"
    with pytest.raises(InputError, match="not a writable directory"):
        train(TrainConfig(model=MODEL, cache=str(caches[0]), out=str(ro / "run"), batch_size=4))
    other = _cfg(tmp_path / "other", caches[0])
    other.steps = 2
    train(other)
    other.model = {**MODEL, "width": 64, "num_heads": 4}
    with pytest.raises(InputError, match="made for another model config"):
        train(other)


def test_train_cli_reports_unknown_key_with_exit_2(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 3\nlearning_rte: 1\n")
    result = CliRunner().invoke(main, ["train", "--config", str(path)])
    assert result.exit_code == 2 and "learning_rte" in result.output


def killed_and_clean_runs(tmp_path, config: dict, kill_after: str, timeout: float = 180):
    """Pipelines of a real `lightgen-bench train` run killed with SIGKILL once `kill_after` is checkpointed and
    resumed with the same command, and of an uninterrupted run of the same config: (clean, resumed)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "bench.cli", "train", "--config"]

    def run(name, kill=False):
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump({**config, "out": str(tmp_path / name)}))
        proc = subprocess.Popen(cmd + [str(cfg)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kill:
            deadline = time.time() + timeout
            while not (tmp_path / name / "checkpoints" / kill_after).exists():
                assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert not (tmp_path / name / "pipeline").exists()
            return run(name)  # same command: --resume auto is the default
        assert proc.wait() == 0, proc.stderr.read().decode()[-2000:]
        return tmp_path / name / "pipeline"

    return run("clean"), run("killed", kill=True)


def test_sigkill_then_resume_is_bitwise_identical(tmp_path, caches):
    """Kill a real `lightgen-bench train` process mid-run (SIGKILL), resume, compare with a clean run."""
    config = {"model": MODEL, "cache": str(caches[0]), "batch_size": 4, "steps": 14, "save_every": 3,
              "log_every": 1, "warmup_steps": 2, "ema_decay": 0.9}
    clean, resumed = killed_and_clean_runs(tmp_path, config, "step-00000006")
    for name in ("model.safetensors", "model_ema.safetensors"):
        a, b = _weights(clean / name), _weights(resumed / name)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_dotted_set_overrides_merge_into_the_model_section(tmp_path):
    """`--set model.prediction=v` changes one model field and keeps the file's others (the testbed vocabulary
    included); a key used both as a value and as a section is refused."""
    from bench.config import load_train_config, parse_overrides

    path = tmp_path / "kd.yaml"
    path.write_text("objective: kd\npreset: testbed-small\nmodel:\n  text_vocab: testbed\n  width: 64\n  num_heads: 4\n")
    cfg = load_train_config(path, ("model.prediction=epsilon", "lr=1.0e-3"))
    assert cfg.model["prediction"] == "epsilon" and cfg.model["width"] == 64 and cfg.lr == 1e-3
    assert isinstance(cfg.model["text_vocab"], list) and cfg.model_config().rel_pos_bias  # the preset's option kept
    with pytest.raises(InputError, match="used as a section"):
        parse_overrides(("model=3", "model.width=8"))
    with pytest.raises(InputError, match=r"^--set: unknown key\(s\) \['stepz'\]"):  # the flag is blamed, not the file
        load_train_config(path, ("stepz=10",))


def test_init_from_refuses_a_checkpoint_whose_config_means_something_else(tmp_path, caches):
    """An ε checkpoint must not start a v-prediction run (same tensors, other meaning); a new resolution may."""
    first = _cfg(tmp_path / "eps", caches[0])
    first.steps = 2
    init = train(first)
    v_run = TrainConfig(model={**MODEL, "prediction": "v"}, cache=str(caches[0]), out=str(tmp_path / "v"),
                        init_from=str(init), batch_size=4, steps=1)
    with pytest.raises(InputError, match=r"^init_from .*: made with an incompatible config: prediction 'epsilon' "
                                         r"\(this run: 'v'\)$"):
        train(v_run)
    assert not (tmp_path / "v").exists()


def test_checkpoint_keeps_the_fp16_loss_scaler_state(tmp_path):
    """What accelerate's GradScaler knows (scale, growth tracker) is written with the step and read back."""
    from lightgen.train import write_checkpoint

    model = LightGen(LightGenConfig.from_preset("testbed", **MODEL))
    opt = torch.optim.AdamW(model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones(()))
    scaler.update(new_scale=256.0)
    path = write_checkpoint(tmp_path, 3, model, [p.detach() for p in model.parameters()], opt, TrainConfig(), 1,
                            scaler)
    fresh = torch.amp.GradScaler("cpu")
    fresh.load_state_dict(read_checkpoint(path)["scaler"])
    assert fresh.state_dict() == scaler.state_dict() and fresh.get_scale() == 256.0
    assert read_checkpoint(write_checkpoint(tmp_path, 4, model, [p.detach() for p in model.parameters()], opt,
                                            TrainConfig(), 1))["scaler"] is None  # fp32/bf16: no scaler


def test_a_run_without_a_cache_leaves_no_run_folder(tmp_path):
    with pytest.raises(InputError, match="cache"):
        train(TrainConfig(model=MODEL, out=str(tmp_path / "run"), steps=1))
    assert not (tmp_path / "run").exists()
