"""The conditioning probe: swapping the visible tokens / dropping the caption, all else shared."""
import torch
from click.testing import CliRunner

from bench.cli import main
from lightgen.config import LightGenConfig
from lightgen.mar import LightGen
from lightgen.probe import completion, probe

SMALL = dict(width=48, num_heads=4, encoder_depth=1, decoder_depth=1, cross_depth=1, text_depth=1,
             diffloss_width=64, diffloss_depth=2)


def _model_and_batch(batch: int = 6):
    torch.manual_seed(0)
    model = LightGen(LightGenConfig.from_preset("testbed", **SMALL))
    with torch.no_grad():  # the head's AdaLN starts at zero (z ignored): give it weights as training would
        for p in model.diffloss.parameters():
            if p.ndim == 2 and not p.any():
                p.normal_(std=0.1)
    latents = torch.rand(batch, 3, 32, 32) * 2 - 1
    text = torch.randn(batch, 16, model.config.caption_channels)
    return model, latents, text


def test_probe_measures_both_sources_and_is_deterministic():
    model, latents, text = _model_and_batch()
    model.train()
    first, again = probe(model, latents, text, seed=3), probe(model, latents, text, seed=3)
    assert first == again
    assert model.training  # restored
    # a fresh trunk's z depends on the visible tokens and on the caption: both swaps move the loss
    assert first.context_gain != 0.0 and first.text_gain != 0.0
    assert first.masked == 32 and first.images == 6


def test_context_gain_is_exactly_zero_when_every_image_is_the_same():
    model, latents, text = _model_and_batch()
    same = latents[:1].expand_as(latents).contiguous()
    result = probe(model, same, text[:1].expand_as(text).contiguous())
    assert result.context_gain == 0.0  # the swapped-in context is the image's own
    assert result.text_gain != 0.0


def test_probe_cli_rejects_a_bad_fraction(tmp_path):
    run = CliRunner().invoke(main, ["probe", str(tmp_path), "--cache", str(tmp_path), "--masked", "1.5"])
    assert run.exit_code == 2 and "Invalid value for '--masked': 1.5 is not in the range 0<x<1" in run.output


def test_completion_compares_own_and_swapped_left_halves():
    model, latents, text = _model_and_batch(4)
    first, again = completion(model, latents, text, seed=1, steps=4), completion(model, latents, text, seed=1, steps=4)
    assert first == again and first.images == 4
    # a fresh trunk reads the visible half, so the two completions differ
    assert first.own_mse > 0 and first.swapped_mse > 0 and first.ratio != 1.0
    # identical images: the swapped-in left half is the image's own, so both errors are the same
    same = completion(model, latents[:1].expand_as(latents).contiguous(), text[:1].expand_as(text).contiguous(),
                      seed=1, steps=4)
    assert same.ratio == 1.0


def test_probe_cli_rejects_a_single_completion_image(tmp_path):
    run = CliRunner().invoke(main, ["probe", str(tmp_path), "--cache", str(tmp_path), "--completion", "1"])
    assert run.exit_code == 2 and "completion: expected 0 (off) or 2 to n" in run.output
