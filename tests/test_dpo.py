"""Diffusion-DPO (lightgen/dpo.py): the loss against a hand-computed Eq. 7, and the randomness a pair shares."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from lightgen.config import LightGenConfig
from lightgen.dpo import dpo_loss, shared_randomness
from lightgen.mar import LightGen
from lightgen.train import TrainConfig

TINY = dict(width=32, num_heads=2, encoder_depth=1, decoder_depth=1, cross_depth=1, text_depth=1, diffloss_width=32,
            diffloss_depth=1, diffusion_batch_mul=2, text_vocab=["a"])


class ErrorStub(nn.Module):
    """A 'model' whose per-image error is its latent's first value (or a constant): Eq. 7 by hand. Records the
    randomness it was given, which `shared_randomness` draws through its `sample_*` methods."""

    def __init__(self, constant: float | None = None):
        super().__init__()
        self.constant, self.calls = constant, []
        self.diffloss = SimpleNamespace(train_diffusion=SimpleNamespace(
            sample_t=lambda n, device: torch.randint(0, 1000, (n,), device=device)))

    def sample_orders(self, batch, length, device):
        return torch.stack([torch.randperm(length, device=device) for _ in range(batch)])

    def sample_mask_count(self, length, device):
        return length // 2

    def forward(self, x, text, *, reduction, vb, **shared):
        assert reduction == "none"
        self.calls.append(shared)
        first = x.flatten(1)[:, 0]
        return first if self.constant is None else torch.full_like(first, self.constant)


def _moments(values, config):
    """Cached moments whose normalised latent (pixel codec: the mean) is `values[i]` everywhere in image i."""
    mean = torch.tensor(values).view(-1, 1, 1, 1).expand(-1, config.latent_channels, 8, 8)
    return torch.cat([mean, torch.zeros_like(mean)], dim=1)


@pytest.mark.parametrize("sft", [0.0, 0.5])
def test_dpo_loss_is_eq7_on_a_hand_computed_case(sft):
    """Policy errors E_w = (0.1, 0.4), E_l = (0.5, 0.2); reference 0.3 everywhere; β = 2, so the logit
    −β/2·[(E_w − R_w) − (E_l − R_l)] is +0.4 for pair 1 (policy prefers the winner) and −0.2 for pair 2."""
    config = LightGenConfig.from_preset("testbed", **TINY)
    cfg = TrainConfig(model=TINY, dpo_beta=2.0, dpo_sft_weight=sft)
    policy, reference = ErrorStub(), ErrorStub(constant=0.3)
    batch = (_moments([0.1, 0.4], config), _moments([0.5, 0.2], config), torch.zeros(2, 16, config.caption_channels))
    loss, logs = dpo_loss(policy, batch, config, reference, cfg)
    expected = (math.log1p(math.exp(-0.4)) + math.log1p(math.exp(0.2))) / 2 + sft * (0.1 + 0.4) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert logs["reward_margin"] == pytest.approx((0.4 - 0.2) / 2, abs=1e-6)
    assert logs["implicit_acc"] == 0.5
    assert logs["err_w"] == pytest.approx(0.25) and logs["err_l"] == pytest.approx(0.35)
    # policy and reference are scored under one draw of the pair's randomness
    (mine,), (theirs,) = policy.calls, reference.calls
    assert mine.keys() == theirs.keys() and all(
        torch.equal(mine[k], theirs[k]) if torch.is_tensor(mine[k]) else mine[k] == theirs[k] for k in mine)


def test_shared_randomness_makes_winner_and_loser_see_the_same_draws():
    """With the same image as winner and loser, the per-image errors of the two halves are equal only if mask,
    order, text drop, timesteps and noise are shared in the layout the model reads (diffusion_batch_mul 2, random
    weights everywhere)."""
    config = LightGenConfig.from_preset("testbed", **TINY, text_drop_prob=0.5)
    torch.manual_seed(0)
    model = LightGen(config)
    for p in model.parameters():  # the head's zero init would make the error ignore everything but the noise
        p.data.normal_(0.0, 0.2)
    B, L = 4, 64
    x = torch.randn(B, 3, 32, 32)
    text = torch.randn(B, 16, config.caption_channels)
    shared = shared_randomness(model, B, L, config, "cpu")
    assert shared["orders"].shape == (2 * B, L) and shared["drop_text"].shape == (2 * B,)
    with torch.no_grad():
        err = model(torch.cat([x, x]), torch.cat([text, text]), reduction="none", vb=False, **shared)
    torch.testing.assert_close(err[:B], err[B:], rtol=0, atol=0)
    # different pairs draw differently (the sharing is within a pair, not across the batch)
    assert not torch.equal(shared["orders"][0], shared["orders"][1])
