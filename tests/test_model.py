"""The LightGen model: checkpoint compatibility, official numerics, training and sampling behaviour."""
import argparse
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from bench.cli import main
from lightgen.checkpoint import check_state_dict
from lightgen.codecs import build_codec
from lightgen.config import LightGenConfig
from lightgen.diffloss import GaussianDiffusion, _spaced_steps
from lightgen.errors import InputError
from lightgen.mar import LightGen
from lightgen.pipeline import LightGenPipeline, build_text_encoder, sampling_precision

TSV = Path(__file__).resolve().parent / "data" / "fluid_large_state_dict_keys.tsv"  # the official 813 names/shapes
SMALL = dict(width=48, num_heads=4, encoder_depth=1, decoder_depth=1, cross_depth=1, text_depth=1,
             diffloss_width=64, diffloss_depth=2, num_sampling_steps=10)


def small_config(**kw) -> LightGenConfig:
    return LightGenConfig.from_preset("testbed", **{**SMALL, **kw})


def small_model(seed=0, **kw) -> LightGen:
    torch.manual_seed(seed)
    return LightGen(small_config(**kw))


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


# ------------------------------------------------------------------------------ compatibility
def test_state_dict_matches_official_tsv_exactly():
    rows = [line.rstrip("\n").split("\t") for line in TSV.read_text().splitlines() if line.strip()]
    assert len(rows) == 813
    with torch.device("meta"):
        model = LightGen(LightGenConfig.from_preset("lightgen-0.7b"))
    sd = model.state_dict()
    assert [k for k in sd] == [r[0] for r in rows]  # same 813 names, same order
    assert all(str(tuple(sd[name].shape)) == shape for name, shape, _ in rows)
    assert sum(v.numel() for v in sd.values()) == 792_244_352


def test_position_interpolation_follows_official_scale_factor_rule():
    model = small_model()
    g, table = model.config.pos_grid, model.encoder_pos_embed_learned
    assert model.interpolate_pos(table, g, g) is table  # native grid: used as is
    rows = cols = 2 * g
    got = model.interpolate_pos(table, rows, cols)
    grid = table.reshape(1, g, g, -1).permute(0, 3, 1, 2)
    scale = (cols + 0.1) / g
    expected = F.interpolate(grid, scale_factor=(scale, scale), mode="bicubic").permute(0, 2, 3, 1).reshape(1, -1, 48)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    by_size = F.interpolate(grid, size=(rows, cols), mode="bicubic").permute(0, 2, 3, 1).reshape(1, -1, 48)
    assert (by_size - got).abs().max() > 1e-4  # `size=` is NOT the official rule


def test_sincos_position_init_leaves_every_other_weight_as_officially_drawn():
    """The KD probe's sin-cos run relies on it: same RNG draws, only the three position tables replaced."""
    official, sincos = small_model(seed=3).state_dict(), small_model(seed=3, pos_init="sincos").state_dict()
    for name, value in official.items():
        assert torch.equal(sincos[name], value) != name.endswith("pos_embed_learned"), name


def test_diffusion_schedule_matches_improved_ddpm():
    steps = _spaced_steps(1000, 100)
    assert steps[:7] == [0, 10, 20, 30, 40, 50, 61] and steps[-1] == 999 and len(steps) == 100
    d = GaussianDiffusion(list(range(1000)))
    ab = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert d.sqrt_ac[500].item() ** 2 == pytest.approx(ab(501 / 1000) / ab(0), rel=1e-4)


def test_v_prediction_target_converts_back_to_the_noise():
    d = GaussianDiffusion(list(range(1000)), prediction="v")
    torch.manual_seed(0)
    x0, noise, t = torch.randn(50, 6), torch.randn(50, 6), torch.arange(0, 1000, 20)
    torch.testing.assert_close(d.to_eps(d.target(x0, t, noise), d.q_sample(x0, t, noise), t), noise,
                               rtol=0, atol=1e-5)
    eps = GaussianDiffusion(list(range(1000)))
    assert eps.target(x0, t, noise) is noise and eps.to_eps(noise, x0, t) is noise


def test_timestep_shift_one_is_the_official_uniform_draw():
    torch.manual_seed(0)
    official = torch.randint(0, 1000, (4000,))
    torch.manual_seed(0)
    assert torch.equal(GaussianDiffusion(list(range(1000))).sample_t(4000), official)
    t = GaussianDiffusion(list(range(1000)), timestep_shift=3.0).sample_t(40000)
    assert t.min() == 0 and t.max() == 999
    assert t.float().median().item() == pytest.approx(750, abs=15)  # u = 0.5 -> 3·0.5 / (1 + 2·0.5)


def test_sincos_position_init_is_an_option_and_normal_the_default():
    from lightgen.mar import sincos_2d

    official = small_model()
    assert official.decoder_pos_embed_learned.std().item() == pytest.approx(0.02, rel=0.2)
    model = small_model(pos_init="sincos")
    table = sincos_2d(8, 48)
    for p in (model.encoder_pos_embed_learned, model.decoder_pos_embed_learned, model.last_pos_embed_learned):
        assert torch.equal(p.data, table)
    near, far = (table[0, 9] @ table[0, 10]).item(), (table[0, 9] @ table[0, 63]).item()
    assert near > far  # neighbouring tokens have similar codes: locality from step 0
    with pytest.raises(InputError, match="pos_init"):
        small_model(pos_init="rope")


def test_relative_position_bias_is_opt_in_and_local():
    assert not any("rel_pos_bias" in k for k in small_model().state_dict())  # official keys unchanged
    model = small_model(rel_pos_bias=True).eval()
    names = [k for k in model.state_dict() if "rel_pos_bias" in k]
    assert len(names) == 2 and all(model.state_dict()[k].shape == (4, 15 * 15) for k in names)
    rel = model.positions(8, 8)[3]
    centre = 7 * 15 + 7  # offset (0, 0)
    assert rel[9, 9] == centre and rel[9, 10] == centre - 1 and rel[9, 17] == centre - 15  # (query − key)
    x, text = torch.randn(2, 3, 32, 32), torch.randn(2, 16, 64)
    mask = torch.zeros(2, 64)
    mask[:, ::2] = 1
    before = model.forward_features(model.patchify(x), mask, text, 32, 32)
    with torch.no_grad():
        for k in names:
            model.get_parameter(k)[:, centre + 1] = 5.0  # every head looks at the left-hand neighbour
    after = model.forward_features(model.patchify(x), mask, text, 32, 32)
    assert (after - before).abs().max() > 1e-2


def test_mask_count_is_truncated_normal_on_official_support():
    model = small_model(mask_ratio_min=0.7)
    torch.manual_seed(0)
    counts = [model.sample_mask_count(256) for _ in range(2000)]
    assert min(counts) >= math.ceil(0.7 * 256) and max(counts) <= 256
    assert sum(counts) / len(counts) / 256 == pytest.approx(0.867, abs=0.01)  # truncnorm mean


# ----------------------------------------------------------------------------------- training
def test_tiny_model_overfits_one_batch():
    model = small_model()
    torch.manual_seed(1)
    latents, text = torch.randn(4, 3, 32, 32).clamp(-1, 1), torch.randn(4, 16, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        torch.manual_seed(step % 2)  # two fixed draws of mask/noise: memorisable
        loss = model(latents, text)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def test_per_sample_loss_reduction_agrees_with_mean():
    model = small_model().eval()
    x, text = torch.randn(3, 3, 32, 32), torch.randn(3, 16, 64)
    torch.manual_seed(0)
    per = model(x, text, reduction="none")
    torch.manual_seed(0)
    mean = model(x, text)
    assert per.shape == (3,)
    torch.testing.assert_close(per.mean(), mean)


def test_forward_features_deterministic_and_sees_visible_tokens_only():
    model = small_model().eval()
    tokens, text = torch.randn(2, 64, 48), torch.randn(2, 16, 64)
    mask = torch.zeros(2, 64)
    mask[:, :40] = 1
    z1 = model.forward_features(tokens, mask, text, 32, 32)
    z2 = model.forward_features(tokens, mask, text, 32, 32)
    assert z1.shape == (2, 64, 48) and torch.equal(z1, z2)
    changed = tokens.clone()
    changed[:, :40] += 5.0  # masked positions: invisible to the encoder
    torch.testing.assert_close(model.forward_features(changed, mask, text, 32, 32), z1)
    with pytest.raises(InputError, match="same number"):
        bad = mask.clone()
        bad[0, 50] = 1
        model.forward_features(tokens, bad, text, 32, 32)


# ----------------------------------------------------------------------------------- sampling
def option_model(option: dict) -> LightGen:
    """small_model with a config option; a relative-position bias (zero-initialised) is given an effect."""
    model = small_model(**option).eval()
    for name, p in model.named_parameters():
        if "rel_pos_bias" in name:
            p.data.normal_()
    return model


def test_sampling_deterministic_per_seed_and_independent_of_batch():
    model = small_model().eval()
    text = torch.randn(3, 16, 64)
    kw = dict(num_iter=6, guidance_scale=3.0)
    alone = model.sample_tokens(text[1:2], gens([7]), **kw)
    batched = model.sample_tokens(text, gens([3, 7, 9]), **kw)
    torch.testing.assert_close(batched[1:2], alone, rtol=0, atol=1e-5)
    assert not torch.allclose(batched[0], batched[1])
    again = model.sample_tokens(text, gens([3, 7, 9]), **kw)
    assert torch.equal(batched, again)


@pytest.mark.parametrize("schedule,option", [("constant", {}), ("linear", {}), ("constant", {"prediction": "v"}),
                                             ("constant", {"rel_pos_bias": True})])
def test_cached_sampler_equals_reference_path(schedule, option):
    model = option_model(option)
    text = torch.randn(2, 16, 64)
    kw = dict(num_iter=5, guidance_scale=2.5, cfg_schedule=schedule)
    fast = model.sample_tokens(text, gens([1, 2]), cache=True, **kw)
    ref = model.sample_tokens(text, gens([1, 2]), cache=False, **kw)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)


BF16_TOKEN_RMSE = 0.05  # documented tolerance (README): bf16 vs fp32 tokens, [-1, 1] pixel scale


def noisy_small_model() -> LightGen:
    model = small_model().eval()
    for p in model.diffloss.parameters():  # its zero-initialised output layers would make bf16 == fp32
        torch.nn.init.normal_(p, std=0.05)
    return model


def test_bf16_sampling_stays_within_documented_tolerance():
    model, text = noisy_small_model(), torch.randn(4, 16, 64)
    tokens = {}
    for precision in ("fp32", "bf16"):
        with sampling_precision(precision, "cpu"):
            tokens[precision] = model.sample_tokens(text, gens(range(4)), num_iter=8, guidance_scale=4.0)
    assert tokens["bf16"].dtype == torch.float32
    rmse = (tokens["bf16"] - tokens["fp32"]).pow(2).mean().sqrt()
    assert 0 < rmse < BF16_TOKEN_RMSE


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_autocast_exactly_where_bf16_is_native(monkeypatch, native):
    """native_bf16 is forced each way, so both paths are checked on every CPU (AMX Xeon or AVX2 EPYC)."""
    monkeypatch.setattr("lightgen.pipeline.native_bf16", lambda device: native)
    model, text = noisy_small_model(), torch.randn(2, 16, 64)
    with sampling_precision("auto", "cpu"):
        auto = model.sample_tokens(text, gens([0, 1]), num_iter=3)
    exact = model.sample_tokens(text, gens([0, 1]), num_iter=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model.sample_tokens(text, gens([0, 1]), num_iter=3)
    assert not torch.equal(bf16, exact)  # the two paths are distinguishable at all
    assert torch.equal(auto, bf16 if native else exact)
    with pytest.raises(InputError, match="precision: expected one of"):
        sampling_precision("fp16", "cpu")


def test_train_at_one_grid_sample_at_another():
    model = small_model()
    loss = model(torch.randn(2, 3, 32, 32), torch.randn(2, 16, 64))  # 8×8 grid
    loss.backward()
    tokens = model.eval().sample_tokens(torch.randn(1, 16, 64), gens([0]), num_iter=4, height=48, width=64)
    assert tokens.shape == (1, 12 * 16, 48) and torch.isfinite(tokens).all()


def test_more_steps_than_tokens_still_fills_every_token():
    model = small_model().eval()
    tokens = model.sample_tokens(None, gens([0]), num_iter=80, guidance_scale=1.0, height=16, width=16)  # 16 tokens
    assert tokens.shape == (1, 16, 48) and (tokens.abs().sum(-1) > 0).all()


def test_inpainting_keeps_known_tokens():
    model = small_model().eval()
    init = torch.randn(2, 64, 48)
    fill = torch.zeros(64, dtype=torch.bool)
    fill[20:36] = True
    out = model.sample_tokens(torch.randn(2, 16, 64), gens([0, 1]), num_iter=4, init_tokens=init, inpaint_mask=fill)
    assert torch.equal(out[:, ~fill], init[:, ~fill])
    assert not torch.allclose(out[:, fill], init[:, fill])


# ----------------------------------------------------------------------------------- pipeline
@pytest.fixture(scope="module")
def pipe():
    config = small_config(text_vocab=["a", "red", "blue", "circle", "square", "two"])
    torch.manual_seed(0)
    return LightGenPipeline(LightGen(config), build_text_encoder(config), build_codec(config))


def test_pipeline_save_load_round_trip_gives_identical_images(pipe, tmp_path):
    kw = dict(num_inference_steps=4, guidance_scale=2.0, seed=5)
    before = pipe(prompt=["a red circle", "two blue square"], **kw).images
    pipe.save_pretrained(tmp_path / "p")
    loaded = LightGenPipeline.from_pretrained(tmp_path / "p")
    after = loaded(prompt=["a red circle", "two blue square"], **kw).images
    assert [im.tobytes() for im in before] == [im.tobytes() for im in after]
    assert before[0].size == (32, 32)


def test_pipeline_images_independent_of_batch_size(pipe):
    prompts = ["a red circle", "a blue square", "two red circle"]
    one = pipe(prompts, num_inference_steps=3, seed=[4, 5, 6], batch_size=1).images
    all_ = pipe(prompts, num_inference_steps=3, seed=[4, 5, 6], batch_size=3).images
    for a, b in zip(one, all_):
        diff = (torch.tensor(list(a.tobytes())) - torch.tensor(list(b.tobytes()))).abs().max()
        assert diff <= 1


def test_pipeline_takes_diffusers_style_generators(pipe):
    """`pipe(prompt=..., num_images_per_prompt=..., generator=[one per image])` returns `.images`, each image
    from its own generator: the same as `seed=` with those seeds; one generator draws a seed per image."""
    from diffusers.utils import BaseOutput

    kw = dict(prompt=["a red circle", "a blue square"], num_images_per_prompt=2, num_inference_steps=3)
    out = pipe(**kw, generator=[torch.Generator().manual_seed(s) for s in (7, 8, 9, 10)])
    assert isinstance(out, BaseOutput) and len(out.images) == 4
    by_seed = pipe(**kw, seed=[7, 8, 9, 10], return_dict=False)[0]
    assert [im.tobytes() for im in out.images] == [im.tobytes() for im in by_seed]
    drawn = torch.randint(0, 2 ** 62, (4,), generator=torch.Generator().manual_seed(3)).tolist()
    from_one = pipe(**kw, generator=torch.Generator().manual_seed(3)).images
    assert [im.tobytes() for im in from_one] == [im.tobytes() for im in pipe(**kw, seed=drawn).images]
    latents = pipe(**kw, seed=0, output_type="latent").images
    assert latents.shape == (4, 64, 48)  # 8×8 tokens of 4×4×3 pixels
    with pytest.raises(InputError, match="generator: expected one per image"):
        pipe(**kw, generator=[torch.Generator()])


def test_pipeline_inpaint_keeps_pixels_outside_mask(pipe):
    from PIL import Image
    image = Image.new("RGB", (32, 32), (30, 200, 90))
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 16, 16))
    out = pipe.inpaint(image, mask, "a red circle", num_images=1, seed=0, num_inference_steps=3).images[0]
    assert out.getpixel((0, 0)) == (30, 200, 90) and out.getpixel((31, 31)) == (30, 200, 90)
    assert out.crop((8, 8, 16, 16)).tobytes() != image.crop((8, 8, 16, 16)).tobytes()


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompt=[]), "prompt"),
    (dict(prompt=["a red circle"], guidance_scale=-1.0), "guidance_scale"),
    (dict(prompt=["a red circle"], num_inference_steps=0), "num_inference_steps"),
    (dict(prompt=["a red circle"], height=30, width=32), "multiples of"),
    (dict(prompt=["a green circle"]), "unknown word"),
])
def test_pipeline_bad_input(pipe, kwargs, match):
    with pytest.raises(InputError, match=match):
        pipe(**kwargs)


def test_unknown_preset_is_input_error():
    with pytest.raises(InputError, match="unknown 'nope'"):
        LightGenConfig.from_preset("nope")


def test_missing_real_text_encoder_fails_loudly():
    with pytest.raises(InputError, match="cannot load"):
        build_text_encoder(LightGenConfig(text_encoder="/nonexistent/flan-t5"))


def test_empty_tokenizer_is_refused():
    from transformers import T5Config, T5EncoderModel
    from lightgen.text import TextEncoder, word_level_tokenizer

    class Empty:  # what T5TokenizerFast.from_pretrained returns offline: ~100 tokens, all <unk>
        def __len__(self):
            return 104

    enc = T5EncoderModel(T5Config(d_model=8, d_ff=8, num_layers=1, num_heads=1, d_kv=8, vocab_size=32))
    with pytest.raises(InputError, match="tokenizer has only 104"):
        TextEncoder(enc, Empty(), 8)
    TextEncoder(enc, word_level_tokenizer(["red"]), 8)  # our word-level tokenizer is small on purpose


def test_vae_codec_round_trip_shapes(tmp_path):
    from diffusers import AutoencoderKL
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4)
    vae.save_pretrained(tmp_path / "vae")
    config = LightGenConfig(codec="vae", codec_path=str(tmp_path), latent_channels=4, vae_stride=2)
    codec = build_codec(config)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    moments = codec.moments(images)
    assert moments.shape == (2, 8, 8, 8)
    mean = moments[:, :4]
    torch.testing.assert_close(codec.latents(moments, sample=False), (mean - 0.0609) * 1.5305)
    assert codec.decode(codec.latents(moments)).shape == (2, 3, 16, 16)
    with pytest.raises(InputError, match="channels"):
        build_codec(LightGenConfig(codec="vae", codec_path=str(tmp_path)))


# --------------------------------------------------------------------------- official checkpoints
def _official_ckpt(path, model, **extra):
    sd = model.state_dict()
    torch.save({"model": sd, "model_ema": {k: v + 1 for k, v in sd.items()}, "epoch": 3,
                "args": argparse.Namespace(model="fluid_large", blr=1e-4), **extra}, path)


def test_convert_official_round_trip(tmp_path):
    model = LightGen(LightGenConfig.from_preset("testbed"))
    _official_ckpt(tmp_path / "checkpoint-last.pth", model)
    result = CliRunner().invoke(main, ["convert-official", str(tmp_path / "checkpoint-last.pth"),
                                       str(tmp_path / "out"), "--preset", "testbed"])
    assert result.exit_code == 0, result.output
    from lightgen.checkpoint import load_weights
    raw, ema = load_weights(tmp_path / "out" / "model.safetensors"), load_weights(tmp_path / "out" / "model_ema.safetensors")
    assert torch.equal(raw["fake_latent"], model.fake_latent.detach())
    assert torch.equal(ema["fake_latent"], model.fake_latent.detach() + 1)
    import json
    assert json.loads((tmp_path / "out" / "config.json").read_text())["default_weights"] == "model"


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/lightgen_pwned",))


def test_convert_official_refuses_malicious_pickle(tmp_path):
    torch.save({"model": {}, "payload": _Evil()}, tmp_path / "evil.pth")
    result = CliRunner().invoke(main, ["convert-official", str(tmp_path / "evil.pth"), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "refused to unpickle" in result.output
    assert not (tmp_path / "out").exists()


def test_checkpoint_for_another_config_names_offending_keys(tmp_path):
    model = LightGen(LightGenConfig.from_preset("testbed", cross_depth=4))
    _official_ckpt(tmp_path / "c.pth", model)
    result = CliRunner().invoke(main, ["convert-official", str(tmp_path / "c.pth"), str(tmp_path / "out"),
                                       "--preset", "testbed"])
    assert result.exit_code == 2
    assert "unexpected keys: cross_attn_blocks.3." in result.output


def test_missing_keys_error_lists_first_few():
    model = small_model()
    sd = model.state_dict()
    for k in list(sd)[:7]:
        del sd[k]
    with pytest.raises(InputError, match=r"7 missing keys: last_pos_embed_learned, fake_latent, .* \(\+2 more\)"):
        check_state_dict(model, sd, "ckpt")


@pytest.mark.parametrize("args, match", [
    (["--preset", "nope"], "unknown 'nope'"),
    (["--resolution", "30"], "multiples of"),
    (["--guidance-scale", "-2"], "--guidance-scale"),
    (["--steps", "0"], "--steps"),
    (["-n", "0"], "-n"),
    (["--prompt", " "], "--prompt: expected a non-empty prompt"),
])
def test_sample_cli_bad_input_exit_2(tmp_path, args, match):
    result = CliRunner().invoke(main, ["sample", "--prompt", "a red circle", "--out", str(tmp_path), *args])
    assert result.exit_code == 2 and match in result.output, result.output


@pytest.mark.parametrize("option", [{}, {"prediction": "v"}, {"rel_pos_bias": True}])
def test_reference_training_path_gives_the_same_loss(option):
    """Head, cross stack and last decoder block on masked rows only (ours) == on every row, then masked
    mean (official), same draws; also with v-prediction and the relative-position bias gathered per row."""
    model = option_model(option)
    x, text = torch.randn(2, 3, 32, 32), torch.randn(2, 16, 64)
    mul, L, n = model.config.diffusion_batch_mul, 64, 50
    orders = torch.stack([torch.randperm(L) for _ in range(2)])
    t_all, noise_all = torch.randint(0, 1000, (mul, 2, L)), torch.randn(mul, 2, L, 48)
    masked = orders[:, :n].sort(1).values
    t_m = t_all.gather(2, masked.expand(mul, -1, -1))
    noise_m = noise_all.gather(2, masked[None, ..., None].expand(mul, -1, -1, 48))
    kw = dict(orders=orders, num_masked=n, reduction="none")
    fast = model(x, text, t=t_m.flatten(), noise=noise_m.flatten(0, 2), **kw)
    ref = model(x, text, t=t_all.flatten(), noise=noise_all.flatten(0, 2), fast=False, **kw)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
