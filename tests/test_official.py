"""`bench.official`: loading the official LightGen code from a checkout at run time, and `perf --official`.

The loader is tested on a tiny fake checkout laid out like the official one (top-level `models/`
without `__init__`, `diffusion/` with one, `sys.path` edits and `.cuda()` calls at import / call time).
The comparison against the real official code runs when `LIGHTGEN_OFFICIAL` points at a checkout of
github.com/XianfengWu01/LightGen (it needs timm, which the project does not depend on).
"""
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bench.cli import main
from bench.official import build_official, cuda_noop, load_official, max_abs_diff, official_kwargs, source_digest
from bench.perf import race, run_perf
from lightgen.config import LightGenConfig
from lightgen.errors import InputError
from lightgen.mar import LightGen

OFFICIAL = os.environ.get("LIGHTGEN_OFFICIAL")
needs_official = pytest.mark.skipif(not OFFICIAL, reason="set LIGHTGEN_OFFICIAL to a checkout of the official LightGen code")
# tiny, with the official 16×16 position tables and no x0 clipping (the official sampler has none)
TINY = dict(width=48, num_heads=4, encoder_depth=1, decoder_depth=1, cross_depth=1, text_depth=1, diffloss_width=64,
            diffloss_depth=2, num_sampling_steps=10, pos_grid=16, clip_sample=None)

FAKE_MODEL = '''
import os, sys
import torch
sys.path.append(os.path.join(os.path.dirname("__file__"), ".."))
from models.diffloss import DiffLoss

class FLUID(torch.nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs, self.head = kwargs, DiffLoss()

    def ones(self):
        return torch.ones(2).cuda()
'''
FAKE_DIFFLOSS = '''
import torch
from diffusion import create_diffusion

class DiffLoss(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(2, 2)
        self.schedule = create_diffusion()
'''


def fake_checkout(root: Path, model: str = FAKE_MODEL) -> Path:
    for rel, text in {"models/fluid_arbitrary.py": model, "models/diffloss.py": FAKE_DIFFLOSS,
                      "diffusion/__init__.py": "def create_diffusion():\n    return 'fake schedule'\n"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_loader_imports_the_checkout_in_isolation(tmp_path, monkeypatch):
    sentinel = type(sys)("models")  # an unrelated top-level `models` the user already imported
    monkeypatch.setitem(sys.modules, "models", sentinel)
    path_before = list(sys.path)
    module = load_official(fake_checkout(tmp_path))
    model = module.FLUID(depth=3)
    assert model.kwargs == {"depth": 3} and model.head.schedule == "fake schedule"
    assert sys.modules["models"] is sentinel and "diffusion" not in sys.modules and "models.diffloss" not in sys.modules
    assert sys.path == path_before  # the official file's sys.path.append is undone


def test_cuda_noop_runs_official_cuda_calls_on_cpu_and_restores(tmp_path):
    model = load_official(fake_checkout(tmp_path)).FLUID()
    original = torch.Tensor.cuda
    with cuda_noop(torch.device("cpu")):
        assert torch.equal(model.ones(), torch.ones(2))
    assert torch.Tensor.cuda is original


def test_loader_errors_name_the_path_and_what_was_expected(tmp_path):
    with pytest.raises(InputError, match=r"expected a checkout of the official LightGen .* models/fluid_arbitrary.py"):
        load_official(tmp_path)
    broken = fake_checkout(tmp_path / "broken", "import not_a_real_module_xyz\n")
    with pytest.raises(InputError, match=r"fluid_arbitrary.py: import failed \(ModuleNotFoundError"):
        load_official(broken)
    assert "models" not in sys.modules


def test_source_digest_follows_the_official_files(tmp_path):
    root = fake_checkout(tmp_path)
    before = source_digest(root)
    (root / "README.md").write_text("docs do not count")
    assert source_digest(root) == before
    (root / "models" / "diffloss.py").write_text(FAKE_DIFFLOSS + "\n# changed\n")
    assert source_digest(root) != before


def test_configs_without_an_official_counterpart_are_refused(tmp_path):
    with pytest.raises(InputError, match="pos_grid: the official FLUID hard-codes"):
        official_kwargs(LightGenConfig.from_preset("testbed"))
    with pytest.raises(InputError, match="clip_sample: the official FLUID has no such option"):
        official_kwargs(LightGenConfig.from_preset("testbed", pos_grid=16))
    with pytest.raises(InputError, match="prediction"):
        official_kwargs(LightGenConfig.from_preset("lightgen-0.7b", prediction="v"))
    kw = official_kwargs(LightGenConfig.from_preset("lightgen-0.7b"))
    assert kw["cross_depth"] == 16 and kw["num_sampling_steps"] == "100" and kw["norm_layer"](8).eps == 1e-6
    module = load_official(fake_checkout(tmp_path))  # a FLUID whose parameters are not ours
    config = LightGenConfig.from_preset("testbed", **TINY)
    with pytest.raises(InputError, match="does not load strictly"):
        build_official(module, config, LightGen(config).state_dict(), torch.device("cpu"))


def test_perf_official_bad_path_exits_2(tmp_path):
    result = CliRunner().invoke(main, ["perf", "--official", str(tmp_path), "--set", "pos_grid=16",
                                       "--set", "clip_sample=null"])
    assert result.exit_code == 2 and "models/fluid_arbitrary.py" in result.output


def test_race_alternates_the_order_and_takes_medians():
    calls = []
    result = race({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, iters=3, warmup=1,
                  device=torch.device("cpu"))
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert set(result) == {"a", "b"} and len(result["a"]["all_seconds"]) == 3


# ------------------------------------------------------------------------------ the real official code
@needs_official
def test_official_fluid_computes_what_ours_computes_with_the_same_weights():
    torch.manual_seed(0)
    config = LightGenConfig.from_preset("testbed", **TINY)
    ours = LightGen(config)
    for p in ours.diffloss.parameters():  # the head's zero-initialised layers would hide a mismatch
        torch.nn.init.normal_(p, std=0.05)
    official = build_official(load_official(OFFICIAL), config, ours.state_dict(), torch.device("cpu"))
    diff = max_abs_diff(ours, official, 2, 32, torch.device("cpu"))
    assert diff["z"] < 1e-4 and diff["head"] < 1e-4, diff


@needs_official
@pytest.mark.parametrize("what", ["sample", "train"])
def test_perf_official_times_both_and_records_the_checkout(tmp_path, what):
    out = tmp_path / "perf.json"
    record = run_perf("testbed", what, 2, None, "cpu", iters=1, steps=2, out=out, overrides=TINY, official=OFFICIAL)
    assert json.loads(out.read_text()) == record
    res = record["results"]
    assert record["baseline"] == "official" and "reference" not in res
    assert res["speedup"] == pytest.approx(res["official"]["seconds"] / res["optimised"]["seconds"])
    assert res["official"]["max_abs_diff"]["z"] < 1e-4
    assert record["official"]["files_sha256"] == source_digest(OFFICIAL) and "cpu_flags" in record


# ------------------------------------------------------------------------ golden fixture (no checkout needed)
GOLDEN = Path(__file__).resolve().parent / "fixtures" / "fluid_tiny_golden.safetensors"


def _golden_inputs():
    """The tiny model of the official comparison (seed 0, head redrawn) and fixed inputs: 1 image of 8×8 tokens,
    half masked, 16 text states, 16 head rows."""
    torch.manual_seed(0)
    ours = LightGen(LightGenConfig.from_preset("testbed", **TINY)).eval()
    for p in ours.diffloss.parameters():  # the head's zero-initialised layers would hide a mismatch
        torch.nn.init.normal_(p, std=0.05)
    c, g = ours.config, torch.Generator().manual_seed(0)
    tokens = torch.randn(1, 64, c.token_dim, generator=g)
    text = torch.randn(1, c.max_length, c.caption_channels, generator=g)
    mask = (torch.rand(1, 64, generator=g).argsort(1) < 32).float()
    return ours, tokens, text, mask, torch.randint(0, 1000, (16,), generator=g)


@torch.no_grad()
def _official_outputs(official, tokens, text, mask, t) -> dict[str, torch.Tensor]:
    official.eval()
    official.seq_h = official.seq_w = 8
    official.seq_len = 64
    with cuda_noop(torch.device("cpu")):
        z = official.forward_fluid_text_decoder(
            official.forward_fluid_decoder(official.forward_fluid_encoder(tokens, mask), mask), official.text_emb(text))
    return {"z": z.contiguous(), "head": official.diffloss.net(tokens[0, :16], t, z[0, :16]).contiguous()}


@torch.no_grad()
def test_forward_matches_the_official_fluid_golden_outputs():
    """tests/fixtures/fluid_tiny_golden.safetensors holds what the official FLUID computed on these weights and
    inputs (tests/fixtures/README.md); our trunk and head must agree with it within 1e-4, with no checkout."""
    from safetensors.torch import load_file

    ours, tokens, text, mask, t = _golden_inputs()
    want = load_file(GOLDEN)
    z = ours.forward_features(tokens, mask, text, 32, 32)
    assert (z - want["z"]).abs().max() < 1e-4
    assert (ours.diffloss.net(tokens[0, :16], t, want["z"][0, :16]) - want["head"]).abs().max() < 1e-4


@needs_official
def test_golden_outputs_are_what_the_official_fluid_computes():
    """Rechecks the committed fixture against the checkout; LIGHTGEN_WRITE_GOLDEN=1 rewrites it (how it was made)."""
    from safetensors.torch import load_file, save_file

    ours, tokens, text, mask, t = _golden_inputs()
    official = build_official(load_official(OFFICIAL), ours.config, ours.state_dict(), torch.device("cpu"))
    got = _official_outputs(official, tokens, text, mask, t)
    if os.environ.get("LIGHTGEN_WRITE_GOLDEN") == "1":
        import timm

        save_file(got, str(GOLDEN), metadata={"made_by": "tests/test_official.py::"
                                                          "test_golden_outputs_are_what_the_official_fluid_computes",
                                              "official_files_sha256": source_digest(OFFICIAL),
                                              "torch": torch.__version__, "timm": timm.__version__})
    want = load_file(GOLDEN)
    assert all((got[k] - want[k]).abs().max() < 1e-6 for k in ("z", "head"))
