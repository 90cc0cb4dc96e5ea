"""The testbed option `trunk_text`: the caption inside encoder and decoder (pooled, or as prefix tokens)."""
import pytest
import torch

from lightgen.config import LightGenConfig
from lightgen.errors import InputError
from lightgen.mar import LightGen, TextContext, take

MODES = ("pool", "prefix")


def _model(mode: str, **kw) -> LightGen:
    torch.manual_seed(0)
    model = LightGen(LightGenConfig.from_preset("testbed-small", trunk_text=mode, text_vocab=None, **kw)).eval()
    with torch.no_grad():  # the head's zero-initialised output layer would hide every difference in z
        for p in model.diffloss.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def _inputs(model: LightGen, batch: int = 3):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(batch, 64, model.config.token_dim, generator=g)
    text = torch.randn(batch, model.config.max_length, model.config.caption_channels, generator=g)
    orders = model.sample_orders(batch, 64, generator=g)
    return tokens, text, orders[:, 40:].sort(1).values, orders[:, :40].sort(1).values


@pytest.mark.parametrize("mode", MODES)
def test_the_caption_reaches_z_without_any_cross_block(mode):
    """With no cross stack, z depends on the caption only through encoder and decoder: the option's path."""
    for m, reads_text in ((_model("none"), False), (_model(mode), True)):
        m.cross_attn_blocks = torch.nn.ModuleList()
        tokens, text, vis, _ = _inputs(m)
        pos = m.positions(8, 8)
        z = [m._trunk(tokens, vis, TextContext(m.align_text(t)), pos) for t in (text, text.flip(0))]
        assert (z[0] - z[1]).abs().max().item() > 1e-3 if reads_text else torch.equal(z[0], z[1])


@pytest.mark.parametrize("mode", MODES)
def test_z_at_rows_equals_the_full_computation_at_those_rows(mode):
    m = _model(mode)
    tokens, text, vis, rows = _inputs(m)
    ctx, pos = TextContext(m.align_text(text)), m.positions(8, 8)
    torch.testing.assert_close(m._trunk(tokens, vis, ctx, pos, rows=rows), take(m._trunk(tokens, vis, ctx, pos), rows))


@pytest.mark.parametrize("mode", MODES)
def test_cached_cfg_sampling_equals_the_reference_path_and_ignores_the_batch(mode):
    m = _model(mode)
    _, text, _, _ = _inputs(m)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    fast = m.sample_tokens(text, gens([0, 1, 2]), num_iter=4, guidance_scale=3.0)
    ref = m.sample_tokens(text, gens([0, 1, 2]), num_iter=4, guidance_scale=3.0, cache=False)
    alone = m.sample_tokens(text[1:2], gens([1]), num_iter=4, guidance_scale=3.0)
    torch.testing.assert_close(fast, ref)
    torch.testing.assert_close(fast[1:2], alone)


def test_official_presets_have_no_trunk_text_parameters_and_bad_values_are_refused():
    with torch.device("meta"):
        assert not any("trunk_text" in n for n in LightGen(LightGenConfig.from_preset("lightgen-base")).state_dict())
        assert "trunk_text_proj.weight" in LightGen(LightGenConfig.from_preset("testbed", trunk_text="prefix")).state_dict()
    with pytest.raises(InputError, match="trunk_text"):
        LightGen(LightGenConfig.from_preset("testbed", trunk_text="cross"))
