"""FID (and KID) between two image sets with any feature extractor; one call: `fid(a, b, extractor=...)`.

Sources: a folder (recursive, clean-fid's extensions, GenEval `grid.png` files skipped), a list of
paths or PIL images, a (N, 3, H, W) tensor (uint8, or float in [0, 1]), or a `.npz` with `mu` and
`sigma` (reference statistics, e.g. clean-fid's). Every extractor takes (B, 3, H, W) float in [0, 1]
and returns (B, D): `"clean"` (clean-fid's Inception in its `clean` mode), `"clip"` (open_clip
image embeddings, CLIP-FID), `"testbed"`, or any `nn.Module`. Statistics of folders are cached as
`.npz`, keyed by extractor, folder contents, resolution and count.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from lightgen.errors import InputError
from lightgen.files import atomic_path, open_rgb

IMAGE_EXTS = {"bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"}  # clean-fid's, any case
CACHE_DIR = Path(os.environ.get("LIGHTGEN_BENCH_CACHE", Path.home() / ".cache" / "lightgen-bench")) / "fid"
Source = Union[str, os.PathLike, Sequence, torch.Tensor]


def clean_resizer(size: int):
    """clean-fid's `clean` resize: PIL bicubic per channel in float32, no quantisation, clipped."""
    from cleanfid.resize import make_resizer
    return make_resizer("PIL", False, "bicubic", (size, size))


class CleanInception(nn.Module):
    """clean-fid `mode="clean"`: the NVIDIA TorchScript Inception (pool3, 2048-d) after the clean
    resize to 299. `path`: the `inception-2015-12-05.pt` file or its folder; downloaded if absent."""

    name = "clean-inception"

    def __init__(self, path: str | os.PathLike | None = None):
        super().__init__()
        from cleanfid.inception_torchscript import InceptionV3W
        folder = Path(path) if path else CACHE_DIR
        folder = folder.parent if folder.suffix == ".pt" else folder
        folder.mkdir(parents=True, exist_ok=True)
        try:
            self.net = InceptionV3W(str(folder), download=True)
        except OSError as e:  # offline: say which file to provide
            raise InputError(f"--inception: inception-2015-12-05.pt not in {folder} and its download failed ({e}); "
                             "pass a local copy") from None
        self.resize = clean_resizer(299)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * 255
        if x.shape[-2:] != (299, 299):
            imgs = x.permute(0, 2, 3, 1).cpu().numpy()
            x = torch.from_numpy(np.stack([self.resize(im) for im in imgs])).permute(0, 3, 1, 2).to(x.device)
        return self.net(x)


class ClipFeatures(nn.Module):
    """open_clip image embeddings, not normalised (clean-fid's CLIP-FID uses ViT-B/32 `openai`):
    bicubic resize of the short side, centre crop, the model's mean/std."""

    def __init__(self, model: str = "ViT-B-32", pretrained: str | None = "openai"):
        super().__init__()
        import open_clip
        self.name = f"clip-{model}-{pretrained}"
        self.model = open_clip.create_model(model, pretrained=pretrained).eval()
        cfg = self.model.visual.preprocess_cfg
        size = cfg["size"]
        self.size = size if isinstance(size, int) else size[0]
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        s = self.size / min(h, w)
        x = F.interpolate(x.to(self.mean.device), size=(max(self.size, round(h * s)), max(self.size, round(w * s))),
                          mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (x.shape[-2] - self.size) // 2, (x.shape[-1] - self.size) // 2
        x = x[..., top: top + self.size, left: left + self.size]
        return self.model.encode_image((x - self.mean) / self.std)


NAMES = {"clean": CleanInception.name, "inception": CleanInception.name, "clip": "clip-ViT-B-32-openai"}


def extractor_name(extractor: str | nn.Module) -> str | None:
    """Cache name, known without building the extractor; None for a user module without a `name`
    (unknown weights: never cached). The testbed's name carries its training-recipe hash."""
    if isinstance(extractor, nn.Module):
        return getattr(extractor, "name", None)
    if extractor == "testbed":
        from bench.testbed.extractor import Recipe
        return f"testbed-scenenet-{Recipe().key()}"
    if extractor not in NAMES:
        raise InputError(f"--extractor: expected clean, clip, testbed or an nn.Module, got {extractor!r}")
    return NAMES[extractor]


def get_extractor(extractor: str | nn.Module = "clean") -> nn.Module:
    extractor_name(extractor)
    if isinstance(extractor, nn.Module):
        return extractor
    if extractor == "clip":
        return ClipFeatures()
    if extractor == "testbed":
        from bench.testbed.extractor import load_extractor
        return load_extractor()
    return CleanInception()


def list_images(folder: str | os.PathLike) -> list[Path]:
    if not Path(folder).is_dir():
        raise InputError(f"{folder}: expected an image folder or a .npz with mu and sigma")
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix[1:].lower() in IMAGE_EXTS and p.is_file()
                   and not p.name.startswith(("grid.", ".")))
    if not files:
        raise InputError(f"{folder}: no images found")
    return files


class _ImageTensors(torch.utils.data.Dataset):
    """Paths, PIL images or (3, H, W) tensors -> float (3, H, W) in [0, 1], optionally clean-resized."""

    def __init__(self, items: Sequence, resolution: int | None):
        self.items, self.resize = items, clean_resizer(resolution) if resolution else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self.items[i]
        if isinstance(item, torch.Tensor):
            x = (item.float() if item.dtype == torch.uint8 else item.float() * 255).permute(1, 2, 0).numpy()
        elif isinstance(item, Image.Image):
            x = np.asarray(item.convert("RGB"))
        else:
            x = np.asarray(open_rgb(item, item))
        x = self.resize(x) if self.resize else x.astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1) / 255


def features(source: Source, model: str | nn.Module | Callable[[], nn.Module], *, resolution: int | None = None,
             num: int | None = None, batch_size: int = 32, num_workers: int = 0,
             device: str | None = None) -> np.ndarray:
    """(N, D) float32 features of an image source (its first `num` images, folders in sorted order).
    `model` may be a name or a zero-argument builder: it is built once the source is known to be valid."""
    items = list_images(source) if isinstance(source, (str, os.PathLike)) else list(source)
    items = items[:num] if num else items
    if len(items) < 2:
        raise InputError(f"{source if isinstance(source, (str, os.PathLike)) else 'images'}: "
                         f"FID needs at least 2 images, got {len(items)}")
    if not isinstance(model, nn.Module):  # built outside inference mode: the testbed's trains on first use
        model = get_extractor(model) if isinstance(model, str) else model()
    model = model.eval().to(device) if device else model.eval()
    dev = device or next(iter(model.parameters()), torch.empty(0)).device
    loader = torch.utils.data.DataLoader(_ImageTensors(items, resolution), batch_size=batch_size, num_workers=num_workers)
    try:
        with torch.inference_mode():
            return np.concatenate([model(b.to(dev)).float().cpu().numpy().reshape(len(b), -1) for b in loader])
    except RuntimeError as e:
        if "stack expects each tensor to be equal size" in str(e):
            raise InputError(f"{source}: images of different sizes; pass --resolution") from None
        raise


def statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance, in float64."""
    feats = np.asarray(feats, np.float64)
    return feats.mean(0), np.cov(feats, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr S1 + Tr S2 - 2 Tr (S1 S2)^(1/2).

    With S1 = A A^T, S1 S2 has the eigenvalues of the symmetric PSD matrix A^T S2 A, so the trace
    term is the sum of square roots of one `eigvalsh`: a second or two for 2048-d where scipy's
    `sqrtm` takes half a minute, and never complex. A is S1's Cholesky factor, or V sqrt(W) from
    `eigh` when S1 is singular (fewer images than dimensions; tiny negative eigenvalues clipped).
    """
    mu1, mu2, sigma1, sigma2 = (np.atleast_1d(np.asarray(a, np.float64)) for a in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise InputError(f"statistics: dimensions differ ({mu1.shape} vs {mu2.shape})")
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    try:
        a = np.linalg.cholesky(sigma1)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(sigma1)
        a = v * np.sqrt(np.clip(w, 0, None))
    m = a.T @ sigma2 @ a
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_sqrt)


def kernel_distance(f1: np.ndarray, f2: np.ndarray, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """KID: unbiased MMD^2 with the kernel (x.y/d + 1)^3, mean and std over seeded random subsets."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    d, m, rng = f1.shape[1], min(len(f1), len(f2), subset_size), np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        x, y = f2[rng.choice(len(f2), m, replace=False)], f1[rng.choice(len(f1), m, replace=False)]
        a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
        b = (x @ y.T / d + 1) ** 3
        vals.append(((a.sum() - np.trace(a)) / (m - 1) - 2 * b.sum() / m) / m)
    return float(np.mean(vals)), float(np.std(vals))


def cache_file(folder: str | os.PathLike, name: str, resolution: int | None, num: int | None,
               cache_dir: str | os.PathLike = CACHE_DIR) -> Path:
    """One file per (extractor, folder path + file list with sizes and mtimes, resolution, count)."""
    folder = Path(folder)
    files = list_images(folder)[:num] if num else list_images(folder)
    listing = [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = json.dumps([name, str(folder.resolve()), listing, resolution, len(files)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{name}_{folder.name}_{resolution or 'native'}_{len(files)}_{digest}.npz"


def load_stats(source: Source, extractor: str | nn.Module | Callable[[], nn.Module], name: str | None = None, *,
               kid: bool = False, cache_dir: str | os.PathLike | None = CACHE_DIR, **kw) -> dict[str, np.ndarray]:
    """`{"mu", "sigma", "n"[, "feats"]}` of a source. A `.npz` source is read as is (never unpickled);
    folders go through the cache when the extractor has a `name`. The extractor (a module, a name or
    a zero-argument builder) is built only if features are needed."""
    if isinstance(source, (str, os.PathLike)) and str(source).endswith(".npz"):
        try:
            z = np.load(source, allow_pickle=False)
        except (OSError, ValueError) as e:  # not a zip of arrays, or an object array
            raise InputError(f"{source}: expected a .npz of arrays mu, sigma ({e})") from None
        with z:
            if not {"mu", "sigma"} <= set(z.files) or (kid and "feats" not in z.files):
                raise InputError(f"{source}: expected arrays mu, sigma{', feats' if kid else ''}; found {z.files}")
            stats = {"n": np.asarray(-1), **{k: z[k] for k in z.files}}
        if not all(np.isfinite(stats[k]).all() for k in ("mu", "sigma")):
            raise InputError(f"{source}: mu/sigma hold NaN or infinite values; recompute the statistics")
        return stats
    cache = None
    if cache_dir and name and isinstance(source, (str, os.PathLike)):
        cache = cache_file(source, name, kw.get("resolution"), kw.get("num"), cache_dir)
        if cache.exists():
            with np.load(cache, allow_pickle=False) as z:
                if not kid or "feats" in z.files:
                    return {k: z[k] for k in z.files}
    feats = features(source, extractor, **kw)
    if not np.isfinite(feats).all():
        raise InputError(f"{source}: the {name or 'extractor'} features hold NaN or infinite values")
    mu, sigma = statistics(feats)
    stats = {"mu": mu, "sigma": sigma, "n": np.asarray(len(feats)), **({"feats": feats} if kid else {})}
    if cache:
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, **stats)
    return stats


def _first_image_size(source: Source) -> tuple[int, int] | None:
    """The size of an image folder's first image (None for statistics, tensors or image lists)."""
    if not (isinstance(source, (str, os.PathLike)) and Path(source).is_dir()):
        return None
    with Image.open(list_images(source)[0]) as im:
        return im.size


def fid(a: Source, b: Source, extractor: str | nn.Module = "clean", *, kid: bool = False,
        cache_dir: str | os.PathLike | None = CACHE_DIR, resolution: int | None = None, num: int | None = None,
        batch_size: int = 32, num_workers: int = 0, device: str | None = None) -> dict:
    """FID of `a` against `b`. The result names the extractor and both image counts: report them
    with the number (n = -1 for precomputed statistics without a count)."""
    name = extractor_name(extractor)
    build = functools.cache(lambda: get_extractor(extractor))
    kw = dict(resolution=resolution, num=num, batch_size=batch_size, num_workers=num_workers, device=device)
    sa, sb = (load_stats(s, build, name, kid=kid, cache_dir=cache_dir, **kw) for s in (a, b))
    out = {"fid": frechet_distance(sa["mu"], sa["sigma"], sb["mu"], sb["sigma"]), "n_a": int(sa["n"]),
           "n_b": int(sb["n"]), "extractor": name or type(extractor).__name__, "resolution": resolution}
    sizes = [_first_image_size(s) for s in (a, b)]
    if resolution is None and None not in sizes and sizes[0] != sizes[1]:
        out["warning"] = (f"images of different sizes ({sizes[0][0]}x{sizes[0][1]} vs {sizes[1][0]}x{sizes[1][1]}) "
                          f"compared without --resolution: the FID then also measures the resize")
    if kid:
        out["kid"], out["kid_std"] = kernel_distance(sa["feats"], sb["feats"])
    if not all(np.isfinite(v) for k, v in out.items() if k in ("fid", "kid", "kid_std")):
        raise InputError(f"{a} vs {b}: FID/KID is not a finite number (degenerate statistics)")
    return out
