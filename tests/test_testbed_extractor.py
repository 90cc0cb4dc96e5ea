"""The testbed FID extractor: deterministic training, on-disk cache, and FID that means something.

A reduced recipe keeps CI fast; it runs the same code as the default one.
"""
import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from bench.testbed.captions import sample_captions
from bench.testbed.extractor import Recipe, load_extractor, train_extractor
from bench.testbed.teacher import TestbedTeacher as Teacher

SMALL = Recipe(images=2000, steps=200)
N = 500


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """FD between Gaussians fitted to two feature sets; tr sqrt(S1 S2) from the eigenvalues of S1 S2."""
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * root)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    first = load_extractor(cache, SMALL)  # trains and caches
    files = list(cache.glob("testbed_extractor_*.safetensors"))
    assert [f.name for f in files] == [f"testbed_extractor_{SMALL.key()}.safetensors"]
    again = load_extractor(cache, SMALL)  # loads
    for (k, v), w in zip(first.state_dict().items(), again.state_dict().values()):
        assert torch.equal(v, w), k
    return first


def features(net, images) -> np.ndarray:
    x = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return net(x).double().numpy()


def test_training_is_deterministic_and_recipe_keyed(tmp_path):
    tiny = Recipe(images=64, steps=3, batch=16)
    a, b = train_extractor(tiny), train_extractor(tiny)
    assert all(torch.equal(v, w) for v, w in zip(a.state_dict().values(), b.state_dict().values()))
    assert tiny.key() != Recipe(images=64, steps=4, batch=16).key()
    path = tmp_path / f"testbed_extractor_{tiny.key()}.safetensors"
    path.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="unreadable"):
        c = load_extractor(tmp_path, tiny)  # a corrupt cache is retrained and replaced
    assert all(torch.equal(v, w) for v, w in zip(a.state_dict().values(), c.state_dict().values()))
    assert c.name == f"testbed-scenenet-{tiny.key()}" and not any(p.requires_grad for p in c.parameters())
    assert load_extractor(tmp_path, tiny)(torch.rand(2, 3, 64, 48)).shape == (2, tiny.features)


def test_fid_near_zero_for_teacher_and_monotone_in_blur_and_noise(net):
    caps = sample_captions(N, 5000, seed=0)
    a = Teacher(32)(caps, list(range(N)))
    b = Teacher(32)(caps, list(range(N, 2 * N)))
    fa = features(net, a)
    base = frechet(fa, features(net, b))
    blur = [frechet(fa, features(net, [im.filter(ImageFilter.GaussianBlur(r)) for im in b])) for r in (0.7, 1.4, 2.8)]
    rng = np.random.default_rng(0)
    noise = [frechet(fa, features(net, [Image.fromarray(np.clip(np.asarray(im) + rng.normal(0, s, (32, 32, 3)), 0, 255)
                                                         .astype(np.uint8)) for im in b])) for s in (16, 32, 64)]
    assert base < 0.2 * min(blur[-1], noise[-1]), (base, blur, noise)
    assert base < blur[0] < blur[1] < blur[2], (base, blur)
    assert base < noise[0] < noise[1] < noise[2], (base, noise)
    # Any input size: the 64 px renders of the same scenes sit as close as a reseeded 32 px set.
    f64 = features(net, Teacher(64)(caps, list(range(N, 2 * N))))
    assert f64.shape == fa.shape and frechet(fa, f64) < 2 * base
