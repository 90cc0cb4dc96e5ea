"""FID: Fréchet distance parity with clean-fid, identical sets, the clean pipeline, caching, KID, CLI."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from bench.cli import main
from bench.fid import CleanInception, features, fid, frechet_distance, kernel_distance, statistics


class Pooled(nn.Module):
    """A tiny deterministic extractor: 4x4 average pool + fixed linear map; counts its calls."""

    def __init__(self, dim=8, name=None):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, dim))
        self.calls = 0
        if name:
            self.name = name

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def image_folder(path, n, seed, size=(20, 24)):
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*size, 3), np.uint8)).save(path / f"{i:03d}.png")
    return path


def test_frechet_distance_matches_clean_fid_on_random_features():
    from cleanfid.fid import frechet_distance as clean_frechet

    rng = np.random.default_rng(0)
    for d, n in ((16, 200), (64, 500)):
        f1 = rng.standard_normal((n, d))
        f2 = rng.standard_normal((n, d)) @ (np.eye(d) + 0.3 * rng.standard_normal((d, d))) + 0.5
        (m1, s1), (m2, s2) = statistics(f1), statistics(f2)
        ours, ref = frechet_distance(m1, s1, m2, s2), clean_frechet(m1, s1, m2, s2)
        assert ours == pytest.approx(ref, rel=1e-6) and ref > 1


def test_identical_sets_give_zero_even_when_rank_deficient():
    x = torch.rand(12, 3, 16, 16)
    assert abs(fid(x, x.clone(), Pooled(dim=8), cache_dir=None)["fid"]) < 1e-9
    f = np.random.default_rng(1).standard_normal((30, 64))  # n < d: singular covariance
    mu, sigma = statistics(f)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-7 * np.trace(sigma)  # clean-fid: -1.3e-6 here


def test_folder_fid_matches_clean_fid_pipeline(tmp_path):
    from cleanfid.fid import compare_folders

    a, b = image_folder(tmp_path / "a", 24, 0), image_folder(tmp_path / "b", 24, 1, size=(30, 18))
    model = Pooled()
    ours = fid(a, b, model, resolution=299, cache_dir=None, batch_size=5)
    ref = compare_folders(str(a), str(b), lambda x: model(x / 255), mode="clean", num_workers=0, batch_size=5,
                          device=torch.device("cpu"), verbose=False)  # clean-fid hands [0, 255] at 299x299
    assert ours["fid"] == pytest.approx(ref, rel=1e-5)
    assert (ours["n_a"], ours["n_b"], ours["extractor"]) == (24, 24, "Pooled")


def test_clean_inception_extractor_matches_clean_fid(tmp_path):
    """A stand-in TorchScript file with the Inception's interface (the real one needs a download)."""
    from cleanfid.fid import get_folder_features
    from cleanfid.inception_torchscript import InceptionV3W

    class FakeInception(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 2048))

        def forward(self, x):
            return self.layers(x)

    torch.manual_seed(0)
    torch.jit.script(FakeInception()).save(str(tmp_path / "inception-2015-12-05.pt"))
    folder = image_folder(tmp_path / "imgs", 6, 2)
    ours = features(folder, CleanInception(tmp_path / "inception-2015-12-05.pt"), batch_size=4)
    ref = get_folder_features(str(folder), InceptionV3W(str(tmp_path), download=False), num_workers=0, batch_size=4,
                              device=torch.device("cpu"), mode="clean", verbose=False)
    assert ours.shape == (6, 2048) and np.allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_cli_fid_on_statistics_files(tmp_path):
    rng = np.random.default_rng(0)
    for name, shift in (("a", 0.0), ("b", 1.0)):
        mu, sigma = statistics(rng.standard_normal((50, 4)) + shift)
        np.savez(tmp_path / f"{name}.npz", mu=mu, sigma=sigma, n=50)
    r = CliRunner().invoke(main, ["fid", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--device", "cpu",
                                  "--out", str(tmp_path / "fid.json")])  # no extractor is built (no download)
    assert r.exit_code == 0, r.output
    out = json.loads((tmp_path / "fid.json").read_text())
    assert "n=50 vs n=50" in r.output and out["extractor"] == "clean-inception" and 3 < out["fid"] < 6
    r = CliRunner().invoke(main, ["fid", str(tmp_path / "a.npz"), str(tmp_path), "--no-cache"])
    assert r.exit_code == 2 and "no images found" in r.output


def test_stats_cache_keyed_by_contents_and_npz_sources(tmp_path):
    a, b = image_folder(tmp_path / "a", 10, 0), image_folder(tmp_path / "b", 10, 1)
    model = Pooled(name="pooled-test")
    first = fid(a, b, model, cache_dir=tmp_path / "cache", batch_size=4)
    calls = model.calls
    assert fid(a, b, model, cache_dir=tmp_path / "cache", batch_size=4) == first and model.calls == calls
    assert fid(a, b, model, cache_dir=tmp_path / "cache", num=8, batch_size=4)["n_a"] == 8  # count is in the key
    Image.new("RGB", (24, 20)).save(a / "999.png")
    assert fid(a, b, model, cache_dir=tmp_path / "cache", batch_size=4)["n_a"] == 11  # contents changed
    cached = sorted((tmp_path / "cache").glob("pooled-test_b_native_10_*.npz"))
    assert len(cached) == 1
    assert fid(cached[0], b, model, cache_dir=None)["fid"] == pytest.approx(0, abs=1e-9)
    assert fid(b, cached[0], model, cache_dir=None)["n_b"] == 10
    assert len(list((tmp_path / "cache").iterdir())) == 5  # a, b at 10; a, b at 8; a at 11


def test_kid_matches_clean_fid_when_subsets_are_whole_sets():
    from cleanfid.fid import kernel_distance as clean_kid

    rng = np.random.default_rng(0)
    f1, f2 = rng.standard_normal((40, 8)), rng.standard_normal((40, 8)) + 0.3
    mean, std = kernel_distance(f1, f2, subsets=3, subset_size=40)  # each subset is a permutation
    assert mean == pytest.approx(clean_kid(f1, f2, num_subsets=1, max_subset_size=40), rel=1e-9) and std < 1e-12
    x = torch.rand(16, 3, 8, 8)
    y = x + 0.5 * torch.rand_like(x)
    r = fid(x, y, Pooled(), kid=True, cache_dir=None)
    with torch.no_grad():  # 16 images: every subset is the whole set, so KID is clean-fid's on the features
        fx, fy = (Pooled()(v).double().numpy() for v in (x, y))
    assert r["kid"] == pytest.approx(clean_kid(fx, fy, num_subsets=1, max_subset_size=16), rel=1e-6)
    assert r["kid_std"] < 1e-9


def test_bad_sources_are_input_errors(tmp_path):
    from lightgen.errors import InputError

    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        fid(tmp_path / "empty", tmp_path / "empty", Pooled(), cache_dir=None)
    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    with pytest.raises(InputError, match="mu, sigma"):
        fid(tmp_path / "bad.npz", tmp_path / "bad.npz", Pooled())
    mixed = image_folder(tmp_path / "mixed", 3, 0)
    Image.new("RGB", (5, 5)).save(mixed / "z.png")
    with pytest.raises(InputError, match="different sizes"):
        fid(mixed, mixed, Pooled(), cache_dir=None)


def test_testbed_extractor_end_to_end(tmp_path):
    from bench.fid import extractor_name
    from bench.testbed.extractor import Recipe, load_extractor

    tiny = load_extractor(tmp_path / "net", Recipe(images=64, steps=3, batch=16))  # the default trains ~1 min
    a, b = image_folder(tmp_path / "a", 8, 0, size=(32, 32)), image_folder(tmp_path / "b", 8, 1, size=(32, 32))
    same = fid(a, a, tiny, cache_dir=tmp_path / "cache")
    assert same["extractor"] == tiny.name and same["n_a"] == 8 and abs(same["fid"]) < 1e-6
    assert fid(a, b, tiny, cache_dir=tmp_path / "cache")["fid"] > 0
    assert len(list((tmp_path / "cache").glob(f"{tiny.name}_*.npz"))) == 2
    assert extractor_name("testbed") == f"testbed-scenenet-{Recipe().key()}"  # cache key follows the recipe


def test_folders_of_different_image_sizes_are_flagged(tmp_path):
    """A 32-px folder against a 64-px one compares resizes as much as content: the result says so (the CLI
    prints it on stderr) unless `--resolution` puts both on one size."""
    a = image_folder(tmp_path / "a", 6, 0, size=(32, 32))
    b = image_folder(tmp_path / "b", 6, 1, size=(64, 64))
    assert "32x32 vs 64x64" in fid(a, b, Pooled(), cache_dir=None)["warning"]
    assert "warning" not in fid(a, b, Pooled(), cache_dir=None, resolution=32)
    assert "warning" not in fid(a, image_folder(tmp_path / "c", 6, 2, size=(32, 32)), Pooled(), cache_dir=None)
