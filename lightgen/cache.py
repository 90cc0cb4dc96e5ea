"""Feature cache (official `main_cache.py`): codec posterior moments of every image *and of its
horizontal flip*, plus the frozen text encoder's states, so training never runs the VAE or T5.

Layout: `meta.json` (what produced it; validated before use) + `shard-XXXXX.safetensors`, each with
`moments` / `moments_flip` (n, 2C, h, w) float16, `text` (u, T, C) float32 for the shard's *unique*
captions and their mirrored forms (left ↔ right), `text_index` (n,) into it (synthetic data repeats
captions a lot) and `text_flip_index` (n,), the mirrored caption of each row, for trainers that flip
captions with their images. Rows are read lazily through safetensors' memory map, so a cache may be
larger than RAM.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from safetensors import safe_open
from tqdm.auto import tqdm

from lightgen.checkpoint import save_weights
from lightgen.files import TEMP_RE, atomic_write, read_json, writable_dir
from lightgen.codecs import LatentCodec
from lightgen.config import LightGenConfig
from lightgen.errors import InputError
from lightgen.pipeline import image_to_tensor
from lightgen.text import TextEncoder, mirror_caption

CACHE_FORMAT = 2  # 2: mirrored captions stored (`text_flip_index`); an older complete cache is rebuilt, not reused
CACHE_FIELDS = ("codec", "codec_path", "latent_channels", "vae_stride", "text_encoder", "caption_channels",
                "max_length", "t5_config", "text_vocab")


def cache_signature(config: LightGenConfig, resolution: int) -> dict:
    """What must agree between a cache and the model trained on it."""
    return {**{f: getattr(config, f) for f in CACHE_FIELDS}, "resolution": resolution}


def _same_source(a: str | None, b: str) -> bool:
    """The same source, also when one run named the folder relative and another absolute."""
    return a == b or bool(a and b and Path(a).resolve() == Path(b).resolve())


def build_cache(records: Sequence[tuple[Image.Image, str]], out: str | Path,
                config: LightGenConfig, codec: LatentCodec, text_encoder: TextEncoder, resolution: int,
                source: str = "", shard_size: int = 4096, batch_size: int = 64) -> Path:
    """Encode (image, caption) records (e.g. a `T2IFolder`) into a cache. Resumable: finished shards are kept; a cache
    whose signature matches and that is complete is reused as is."""
    out = Path(out)
    n = len(records)
    if n == 0:
        raise InputError(f"{source or 'dataset'}: empty, nothing to cache")
    first = records[0][0]  # unreadable or mis-sized images are refused before anything is written
    if first.size != (resolution, resolution):
        raise InputError(f"{source}: image of size {first.size}, expected {resolution}×{resolution}")
    signature = cache_signature(config, resolution)
    meta_file = out / "meta.json"
    meta = {"signature": signature, "format": CACHE_FORMAT, "count": n, "source": source}
    if meta_file.is_file():
        old = read_json(meta_file, "cache record")
        diff = [k for k in ("signature", "count") if old.get(k) != meta[k]]
        if not _same_source(old.get("source"), source):
            diff.append("source")
        if diff:
            raise InputError(f"{meta_file}: {out} holds the cache of another dataset or model (different "
                             f"{', '.join(diff)}); use a new --out folder")
        if old.get("complete") and old.get("format") == CACHE_FORMAT:
            return out
    elif out.is_dir() and any(not TEMP_RE.fullmatch(p.name) for p in out.iterdir()):
        raise InputError(f"out: {out} holds other files and no cache meta.json; use a new or empty folder")
    writable_dir(out, "out")
    atomic_write(meta_file, lambda tmp: Path(tmp).write_text(json.dumps({**meta, "complete": False}, indent=2)))
    if config.text_encoder == "tiny-t5":  # saved before it encodes: a rerun that encodes nothing writes the same
        tmp = out / "text_encoder.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        text_encoder.save_pretrained(tmp)
        shutil.rmtree(out / "text_encoder", ignore_errors=True)
        tmp.rename(out / "text_encoder")
    shards = []
    bar = tqdm(total=n, desc="cache", unit="img")
    for s, start in enumerate(range(0, n, shard_size)):
        name = f"shard-{s:05d}.safetensors"
        shards.append(name)
        stop = min(start + shard_size, n)
        if (out / name).is_file() and _rows(out / name, "text_flip_index") == stop - start:
            bar.update(stop - start)
            continue
        moments, flips, captions = [], [], []
        for b in range(start, stop, batch_size):
            batch = [records[i] for i in range(b, min(b + batch_size, stop))]
            images, caps = zip(*batch)
            for im in images:
                if im.size != (resolution, resolution):
                    raise InputError(f"{source}: image of size {im.size}, expected {resolution}×{resolution}")
            x = image_to_tensor(images).to(_device(codec, text_encoder))
            moments.append(codec.moments(x).half().cpu())
            flips.append(codec.moments(x.flip(-1)).half().cpu())
            captions += caps
            bar.update(len(batch))
        mirrored = [mirror_caption(c) for c in captions]
        unique = sorted(set(captions) | set(mirrored))
        text = torch.cat([text_encoder(unique[i:i + batch_size]).cpu() for i in range(0, len(unique), batch_size)])
        where = {c: i for i, c in enumerate(unique)}
        save_weights({"moments": torch.cat(moments), "moments_flip": torch.cat(flips), "text": text,
                      "text_index": torch.tensor([where[c] for c in captions]),
                      "text_flip_index": torch.tensor([where[c] for c in mirrored])}, out / name)
    bar.close()
    meta.update(shards=shards, complete=True)
    atomic_write(meta_file, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
    return out


def _device(*modules) -> torch.device:
    for m in modules:
        for p in m.parameters():
            return p.device
    return torch.device("cpu")


def _rows(path: Path, key: str = "text_index") -> int:
    try:
        with safe_open(str(path), "pt") as f:
            return f.get_slice(key).get_shape()[0]
    except Exception:  # a truncated shard from a killed run: redo it
        return -1


@dataclass
class CachedSample:
    moments: torch.Tensor
    moments_flip: torch.Tensor
    text: torch.Tensor
    text_flip: torch.Tensor | None  # states of the mirrored caption (None: a cache from before they were stored)


class FeatureCache(torch.utils.data.Dataset):
    """Validated, lazily read cache. `sample(i)` -> moments, flipped moments and text states."""

    def __init__(self, path: str | Path, config: LightGenConfig | None = None, resolution: int | None = None):
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.is_file():
            raise InputError(f"{self.path}: not a feature cache (no meta.json); build one with `lightgen-bench cache`")
        self.meta = read_json(meta_file, "cache record")
        if not self.meta.get("complete"):
            raise InputError(f"{self.path}: cache is incomplete; rerun `lightgen-bench cache` to finish it")
        if config is not None:
            expected = cache_signature(config, resolution or config.resolution)
            diff = {k: (self.meta["signature"].get(k), v) for k, v in expected.items()
                    if self.meta["signature"].get(k) != v}
            if diff:
                raise InputError(f"{meta_file}: cache was built for another model/resolution: "
                                 + "; ".join(f"{k}: cache {a!r} vs config {b!r}" for k, (a, b) in diff.items()))
        self.files = [self.path / s for s in self.meta["shards"]]
        self.offsets = [0]
        for f in self.files:
            rows = _rows(f)
            if rows < 0:
                raise InputError(f"{f}: missing or unreadable cache shard")
            self.offsets.append(self.offsets[-1] + rows)
        if self.offsets[-1] != self.meta["count"]:
            raise InputError(f"{self.path}: shards hold {self.offsets[-1]} rows, meta.json says {self.meta['count']}")
        self._handles: dict[int, object] = {}

    def __len__(self) -> int:
        return self.offsets[-1]

    def _locate(self, i: int):
        s = next(k for k in range(len(self.files)) if i < self.offsets[k + 1])
        if s not in self._handles:
            self._handles[s] = safe_open(str(self.files[s]), "pt")
        return self._handles[s], i - self.offsets[s]

    def __getitem__(self, i: int) -> CachedSample:
        f, r = self._locate(i)
        row = lambda key: f.get_slice(key)[r:r + 1][0]  # noqa: E731
        text = lambda key: f.get_slice("text")[int(row(key))]  # noqa: E731
        return CachedSample(row("moments").float(), row("moments_flip").float(), text("text_index"),
                            text("text_flip_index") if "text_flip_index" in f.keys() else None)

    @property
    def mirrored(self) -> bool:
        """Whether the cache holds the mirrored captions' states (caches built before they existed do not)."""
        return "text_flip_index" in self._locate(0)[0].keys()

    def __getstate__(self):  # safe_open handles do not pickle (DataLoader workers reopen them)
        return {**self.__dict__, "_handles": {}}

    def text_encoder_path(self) -> Path | None:
        p = self.path / "text_encoder"
        return p if p.is_dir() else None
