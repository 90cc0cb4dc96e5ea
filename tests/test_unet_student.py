"""The UNet peer student: same text states, the trainer's machinery (bitwise resume after SIGKILL),
an IFPipeline export that GenEval's diffusers route scores with no special case."""
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bench.cli import main
from lightgen.cache import FeatureCache, build_cache
from lightgen.codecs import build_codec
from lightgen.config import LightGenConfig
from lightgen.errors import InputError
from lightgen.pipeline import build_text_encoder
from lightgen.train import TrainConfig, train
from lightgen.unet_student import IF_MAX_LENGTH, UNetStudentConfig
from tests.test_train import CAPTIONS, MODEL, _records, _weights, killed_and_clean_runs

TEXT = {**MODEL, "max_length": IF_MAX_LENGTH}
UNET = {"block_out_channels": [8, 16], "attention_levels": [1], "attention_head_dim": 4, "norm_num_groups": 4,
        "num_train_timesteps": 50}


@pytest.fixture(scope="module")
def cache77(tmp_path_factory):
    config = LightGenConfig.from_preset("testbed", **TEXT)
    return build_cache(_records(24), tmp_path_factory.mktemp("c77") / "cache", config, build_codec(config),
                       build_text_encoder(config), 32, shard_size=10)


def _cfg(tmp_path, cache, **kw):
    return TrainConfig(**{"student": "unet", "model": TEXT, "unet": UNET, "cache": str(cache),
                          "out": str(tmp_path / "run"), "batch_size": 4, "steps": 4, "lr": 1e-3, "save_every": 2,
                          "log_every": 1, "warmup_steps": 2, "ema_decay": 0.9, **kw})


def test_text_states_are_the_lightgen_presets(cache77, tmp_path):
    """At IFPipeline's 77 tokens T5 masks the padding, so the real tokens' states equal those the LightGen
    testbed preset caches at 16 tokens: the student is conditioned on the same frozen encoder."""
    short = LightGenConfig.from_preset("testbed", **MODEL)
    encoder16, encoder77 = build_text_encoder(short), build_text_encoder(LightGenConfig.from_preset("testbed", **TEXT))
    s16, s77 = encoder16(CAPTIONS), encoder77(CAPTIONS)
    n = [len(c.split()) + 1 for c in CAPTIONS]  # words + </s>
    for i, k in enumerate(n):
        torch.testing.assert_close(s77[i, :k], s16[i, :k], atol=1e-5, rtol=1e-5)
    row = FeatureCache(cache77)[1]
    torch.testing.assert_close(row.text[:n[1]], s16[1, :n[1]], atol=1e-5, rtol=1e-5)


def test_unet_student_trains_exports_an_if_pipeline_and_is_scored(cache77, tmp_path):
    from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler, IFPipeline

    from bench.geneval.generate import get_generator

    final = train(_cfg(tmp_path, cache77, export_steps=[2]))
    assert (tmp_path / "run" / "snapshots" / "step-00000002" / "model_index.json").is_file()
    pipe = DiffusionPipeline.from_pretrained(str(final))
    assert isinstance(pipe, IFPipeline) and isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    assert pipe.safety_checker is None and pipe.watermarker is None
    # the null condition trained on is the pipeline's negative prompt ""
    student_null = json.loads((final / "lightgen_student.json").read_text())
    assert student_null["unet"]["block_out_channels"] == [8, 16]
    _, negative = pipe.encode_prompt("a red circle", do_classifier_free_guidance=True, device="cpu")
    from lightgen.unet_student import UNetStudent
    null = UNetStudent(LightGenConfig.from_preset("testbed", **TEXT), UNetStudentConfig.from_dict(UNET), 32,
                       FeatureCache(cache77)).null_text
    torch.testing.assert_close(negative, null)
    gen = get_generator(pipeline=str(final), steps=3, guidance_scale=2.0, device="cpu")
    a = gen(["a red circle", "a blue square"], [5, 6])
    b = gen(["a blue square"], [6])  # one seed per image: independent of the batch
    assert a[0].size == (32, 32) and np.array_equal(np.asarray(a[1]), np.asarray(b[0]))
    out = tmp_path / "geneval"
    r = CliRunner().invoke(main, ["geneval", "--pipeline", str(final), "--outdir", str(out), "--detector", "testbed",
                                  "--limit", "6", "--n-samples", "1", "--steps", "2", "--num-workers", "0",
                                  "--device", "cpu"])
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    assert s["images"] == 6 and len(s["overall_ci"]) == 2


@pytest.mark.parametrize("cleaner", [False, True])
def test_if_style_pipelines_skip_caption_cleaning_only_without_its_packages(monkeypatch, cleaner):
    """IFPipeline's `clean_caption` needs bs4 and ftfy; without them the generator passes False itself (what
    the pipeline falls back to, minus a warning per batch), with them the pipeline's default stands."""
    import lightgen.distill as distill

    class IFLike:
        def to(self, device):
            return self

        def __call__(self, prompt, generator, clean_caption=True, **kw):
            return type("Out", (), {"images": [clean_caption] * len(prompt)})()

    monkeypatch.setattr(distill, "_has_caption_cleaner", lambda: cleaner)
    assert distill.SeededPipeline(IFLike())(["a red circle"], [0]) == [cleaner]


def test_unet_student_resume_continues_exactly(cache77, tmp_path):
    full = train(_cfg(tmp_path / "full", cache77, steps=6))
    part = _cfg(tmp_path / "part", cache77)
    train(part)
    part.steps = 6
    resumed = train(part, resume="auto")
    a, b = (_weights(p / "unet" / "diffusion_pytorch_model.safetensors") for p in (full, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unet_student_sigkill_then_resume_is_bitwise_identical(cache77, tmp_path):
    """As the LightGen trainer's test: kill a real `lightgen-bench train` of the UNet student mid-run."""
    config = {"student": "unet", "model": TEXT, "unet": UNET, "cache": str(cache77), "batch_size": 4, "steps": 10,
              "save_every": 3, "log_every": 1, "warmup_steps": 2, "ema_decay": 0.9, "lr": 1e-3}
    clean, resumed = (_weights(p / "unet" / "diffusion_pytorch_model.safetensors")
                      for p in killed_and_clean_runs(tmp_path, config, "step-00000006"))
    assert clean.keys() == resumed.keys() and all(torch.equal(clean[k], resumed[k]) for k in clean)


def test_multi_stage_init_from_a_unet_pipeline(cache77, tmp_path):
    first = train(_cfg(tmp_path / "a", cache77))
    second = _cfg(tmp_path / "b", cache77, init_from=str(first))
    second.lr = 0.0  # no update: the run starts from, and exports, the first run's weights
    second.ema_decay = 0.0
    a, b = (_weights(p / "unet" / "diffusion_pytorch_model.safetensors") for p in (first, train(second)))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("change, match", [
    ({"model": MODEL}, "model.max_length: .* expected 77, got 16"),
    ({"unet": {**UNET, "channels": 3}}, r"unknown key\(s\) \['channels'\]"),
    ({"unet": {**UNET, "attention_levels": [2]}}, r"attention_levels: expected levels in \[0, 2\)"),
    ({"unet": {**UNET, "norm_num_groups": 3}}, "norm_num_groups: 3 must divide"),
    ({"objective": "dpo", "dpo_vb": True}, "dpo_vb: the UNet student's variance is fixed"),
    ({"student": "dit"}, "student: expected one of 'lightgen', 'unet', got 'dit'"),
    ({"model": {**TEXT, "codec": "vae"}}, "model.codec: the UNet student works on pixels"),
])
def test_bad_unet_student_configs(cache77, tmp_path, change, match):
    raw = {**{k: v for k, v in _cfg(tmp_path, cache77).__dict__.items() if k != "betas"}, **change}
    with pytest.raises(InputError, match=match):
        train(TrainConfig.from_dict(raw))


def test_min_snr_weighting_is_diffusers_formula(cache77):
    """snr_gamma above every SNR weighs nothing (plain ε-MSE); a small one down-weights low-noise steps."""
    from lightgen.unet_student import UNetStudent

    config = LightGenConfig.from_preset("testbed", **TEXT)
    cache = FeatureCache(cache77)
    rows = [cache[i] for i in range(8)]
    batch = (torch.stack([r.moments for r in rows]), torch.stack([r.text for r in rows]))
    losses = {}
    for gamma in (None, 1e12, 1.0):
        student = UNetStudent(config, UNetStudentConfig.from_dict({**UNET, "snr_gamma": gamma}), 32, cache)
        torch.manual_seed(0)
        model = student.build()
        torch.manual_seed(1)
        losses[gamma] = student.loss(model, batch)[0].item()
    assert losses[1e12] == pytest.approx(losses[None], rel=1e-6) and losses[1.0] < losses[None]


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_loss_target_is_the_schedulers_for_each_prediction_type(cache77, prediction):
    """An oracle UNet that knows the clean batch and answers in the scheduler's parametrisation (ε, v or x0)
    has zero loss: the student trains exactly what the exported scheduler's `prediction_type` samples with."""
    from types import SimpleNamespace

    from lightgen.codecs import config_latents
    from lightgen.unet_student import UNetStudent

    config = LightGenConfig.from_preset("testbed", **TEXT)
    cache = FeatureCache(cache77)
    rows = [cache[i] for i in range(6)]
    batch = (torch.stack([r.moments for r in rows]), torch.stack([r.text for r in rows]))
    student = UNetStudent(config, UNetStudentConfig.from_dict({**UNET, "prediction_type": prediction}), 32, cache)
    x0 = config_latents(batch[0], config)
    abar = student.scheduler.alphas_cumprod

    def oracle(noisy, t, encoder_hidden_states):
        a, s = abar[t].sqrt()[:, None, None, None], (1 - abar[t]).sqrt()[:, None, None, None]
        eps = (noisy - a * x0) / s
        answer = {"epsilon": eps, "v_prediction": a * eps - s * x0, "sample": x0}[prediction]
        return SimpleNamespace(sample=torch.cat([answer, torch.zeros_like(answer)], dim=1))

    assert student.loss(oracle, batch)[0].item() < 1e-8
    wrong = {"epsilon": "sample", "v_prediction": "epsilon", "sample": "epsilon"}[prediction]
    student.unet.prediction_type = wrong  # the same oracle is wrong for another parametrisation
    assert student.loss(oracle, batch)[0].item() > 1e-2


def test_pooled_text_unet_has_no_attention_and_follows_the_caption(cache77, tmp_path):
    """`addition_embed_type: text` with no attention levels and an attention-free mid block: the caption
    reaches the UNet only through the pooled embedding (as DeepFloyd IF adds it), and the exported
    pipeline's UNet answers differently for different prompts' states."""
    from diffusers import DiffusionPipeline
    from diffusers.models.attention_processor import Attention

    pooled = {**UNET, "attention_levels": [], "mid_block_type": "UNetMidBlock2D", "addition_embed_type": "text",
              "resnet_time_scale_shift": "scale_shift"}
    final = train(_cfg(tmp_path, cache77, unet=pooled, lr=1e-2))
    pipe = DiffusionPipeline.from_pretrained(str(final))
    assert not any(isinstance(m, Attention) for m in pipe.unet.modules())
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([500])
    states = pipe.encode_prompt(["a red circle", "a blue square"], do_classifier_free_guidance=False,
                                device="cpu")[0]
    with torch.no_grad():
        out = [pipe.unet(x, t, encoder_hidden_states=s[None]).sample for s in states]
    assert not torch.allclose(out[0], out[1])


@pytest.fixture(scope="module")
def losers77(tmp_path_factory):
    config = LightGenConfig.from_preset("testbed", **TEXT)
    return build_cache(_records(24, seed=1), tmp_path_factory.mktemp("l77") / "cache", config, build_codec(config),
                       build_text_encoder(config), 32, shard_size=10)


def _pairs(cache77, losers77, n=2):
    """A DPO batch (winner moments, loser moments, caption states) of the first `n` rows."""
    winners, losers = FeatureCache(cache77), FeatureCache(losers77)
    return (torch.stack([winners[i].moments for i in range(n)]), torch.stack([losers[i].moments for i in range(n)]),
            torch.stack([winners[i].text for i in range(n)]))


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("sft", [0.0, 0.5])
def test_unet_dpo_loss_is_eq7_on_the_objectives_error(cache77, losers77, prediction, sft):
    """Oracle UNets that answer in the scheduler's parametrisation plus a constant offset per image have
    per-image errors offset²: policy (winners 0.1, 0.2; losers 0.3, 0.1), reference 0.2 everywhere, so
    E_w = (.01, .04), E_l = (.09, .01), R = .04 and with β = 10 the logit −β/2·[(E_w − R_w) − (E_l − R_l)] is
    +0.4 for pair 1 and −0.15 for pair 2. Both networks see one timestep, noise and text drop per pair."""
    from types import SimpleNamespace

    from lightgen.codecs import config_latents
    from lightgen.unet_student import UNetStudent

    config = LightGenConfig.from_preset("testbed", **TEXT, text_drop_prob=0.5)
    student = UNetStudent(config, UNetStudentConfig.from_dict({**UNET, "prediction_type": prediction}), 32,
                          FeatureCache(cache77))
    batch = _pairs(cache77, losers77)
    x0, abar = config_latents(torch.cat(batch[:2]), config), student.scheduler.alphas_cumprod

    def oracle(offsets, calls):
        def unet(noisy, t, encoder_hidden_states):
            a, s = abar[t].sqrt()[:, None, None, None], (1 - abar[t]).sqrt()[:, None, None, None]
            eps = (noisy - a * x0) / s
            calls.append((eps, t, encoder_hidden_states))
            answer = {"epsilon": eps, "v_prediction": a * eps - s * x0, "sample": x0}[prediction]
            answer = answer + torch.tensor(offsets)[:, None, None, None]
            return SimpleNamespace(sample=torch.cat([answer, torch.zeros_like(answer)], dim=1))
        return unet

    mine, theirs = [], []
    cfg = TrainConfig(student="unet", model=TEXT, unet=UNET, dpo_beta=10.0, dpo_sft_weight=sft)
    torch.manual_seed(3)
    loss, logs = student.dpo_loss(oracle([0.1, 0.2, 0.3, 0.1], mine), batch, oracle([0.2] * 4, theirs), cfg)
    expected = (math.log1p(math.exp(-0.4)) + math.log1p(math.exp(0.15))) / 2 + sft * (0.01 + 0.04) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert logs["reward_margin"] == pytest.approx((0.4 - 0.15) / 2, abs=1e-5) and logs["implicit_acc"] == 0.5
    assert logs["err_w"] == pytest.approx(0.025, abs=1e-6) and logs["err_l"] == pytest.approx(0.05, abs=1e-6)
    (eps, t, text), (eps_ref, t_ref, text_ref) = mine[0], theirs[0]
    torch.testing.assert_close(eps[:2], eps[2:], atol=1e-4, rtol=0)  # winner and loser: the same noise...
    assert torch.equal(t[:2], t[2:]) and torch.equal(text[:2], text[2:])  # ...timestep and (dropped) caption
    assert torch.equal(t, t_ref) and torch.equal(text, text_ref) and torch.equal(eps, eps_ref)  # as the reference


def test_unet_dpo_step_raises_the_winners_implicit_reward(cache77, losers77):
    """From policy = reference (loss log 2, margin 0), one gradient step on the pairs lowers the policy's error
    on the winners relative to the losers, against the reference's (the errors at the start, same draws): the
    implicit reward margin turns > 0."""
    from lightgen.unet_student import UNetStudent

    config = LightGenConfig.from_preset("testbed", **TEXT)
    student = UNetStudent(config, UNetStudentConfig.from_dict({**UNET, "prediction_type": "v_prediction"}), 32,
                          FeatureCache(cache77))
    torch.manual_seed(0)
    policy = student.build()
    reference = student.build().requires_grad_(False)
    reference.load_state_dict(policy.state_dict())
    cfg = TrainConfig(student="unet", model=TEXT, unet=UNET, dpo_beta=100.0)
    batch = _pairs(cache77, losers77, n=4)

    def margin():
        torch.manual_seed(1)
        return student.dpo_loss(policy, batch, reference, cfg)

    loss, start = margin()
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6) and start["reward_margin"] == 0.0
    loss.backward()
    torch.optim.SGD(policy.parameters(), lr=1e-3).step()
    loss, after = margin()
    assert after["err_w"] - after["err_l"] < start["err_w"] - start["err_l"]  # the reference's errors: `start`'s
    assert after["reward_margin"] > 0 and loss.item() < math.log(2)


@pytest.fixture(scope="module")
def unet_pipeline(cache77, tmp_path_factory):
    """A tiny UNet student trained 4 steps: the starting pipeline (frozen reference) of DPO tests."""
    return train(_cfg(tmp_path_factory.mktemp("start"), cache77))


def test_unet_dpo_sigkill_then_resume_is_bitwise_identical(cache77, losers77, unet_pipeline, tmp_path):
    """`lightgen-bench train` of a UNet DPO config (objective dpo), killed mid-run and resumed, ends bitwise as
    an uninterrupted run; the run logs DPO's metrics."""
    import csv

    config = {"objective": "dpo", "student": "unet", "model": TEXT, "unet": UNET, "cache": str(cache77),
              "loser_cache": str(losers77), "init_from": str(unet_pipeline), "batch_size": 4, "steps": 8,
              "save_every": 3, "log_every": 1, "warmup_steps": 2, "ema_decay": 0.9, "lr": 1e-3, "flip": False,
              "dpo_beta": 100.0, "dpo_sft_weight": 0.5}
    clean, resumed = killed_and_clean_runs(tmp_path, config, "step-00000003")
    a, b = (_weights(p / "unet" / "diffusion_pytorch_model.safetensors") for p in (clean, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = list(csv.DictReader(open(tmp_path / "clean" / "metrics.csv")))
    assert float(rows[0]["loss"]) > 0 and {"implicit_acc", "reward_margin", "err_w", "err_l"} <= set(rows[0])


def test_dpo_pairs_from_a_unet_pipeline(unet_pipeline, tmp_path):
    """`dpo-pairs --ckpt` on the UNet student's IFPipeline: teacher winners and the UNet's own samples, row-aligned,
    at its resolution."""
    from lightgen.distill import T2IFolder

    captions = tmp_path / "captions.txt"
    captions.write_text("a red circle\na blue square\n")
    r = CliRunner().invoke(main, ["dpo-pairs", "--ckpt", str(unet_pipeline), "--teacher", "testbed", "--captions",
                                  str(captions), "--out", str(tmp_path / "pairs"), "--n", "2", "--steps", "2"])
    assert r.exit_code == 0, r.output
    winners, losers = T2IFolder(tmp_path / "pairs" / "winner"), T2IFolder(tmp_path / "pairs" / "loser")
    assert [winners.caption(i) for i in range(2)] == [losers.caption(i) for i in range(2)] == ["a red circle",
                                                                                                 "a blue square"]
    assert losers[0][0].size == (32, 32) and winners[0][0].tobytes() != losers[0][0].tobytes()
    assert json.loads((tmp_path / "pairs" / "loser" / "meta.json").read_text())["teacher"].startswith("diffusers:")
