"""The harness's training configs: YAML + `--set` overrides, with the testbed's names resolved.

`model.text_vocab: testbed` stands for the testbed grammar's vocabulary. `lightgen` cannot import the
testbed, so it refuses the bare name; every config the harness trains from is resolved here.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lightgen.errors import InputError, check_known
from lightgen.files import read_yaml

if TYPE_CHECKING:
    from lightgen.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]  # config paths in the harness's own configs are relative to it


def parse_overrides(pairs: tuple[str, ...]) -> dict:
    """`--set key=value` (value parsed as YAML, so numbers, lists and booleans work); a dotted key such as
    `model.prediction=v` sets one field of a nested section."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise InputError(f"--set {pair!r}: expected key=value")
        key, value = pair.split("=", 1)
        *sections, leaf = key.split(".")
        node = out
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise InputError(f"--set {pair!r}: {section!r} is set to a value and used as a section")
        try:
            node[leaf] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise InputError(f"--set {pair!r}: the value is not a YAML scalar or list ({e})".replace("\n", " ")) from None
    return out


def merge(base: dict, layer: dict) -> dict:
    """`base` with `layer` applied; nested sections (e.g. `model`) are merged key by key, not replaced."""
    out = dict(base)
    for k, v in layer.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_vocab(raw: dict[str, Any]) -> dict[str, Any]:
    """A raw training config with `model.text_vocab: testbed` replaced by the testbed's word list."""
    model = raw.get("model")
    if isinstance(model, dict) and model.get("text_vocab") == "testbed":
        from bench.testbed.captions import vocabulary
        return {**raw, "model": {**model, "text_vocab": vocabulary()}}
    return raw


def load_train_config(path: str | Path, overrides: tuple[str, ...] = ()) -> TrainConfig:
    """A training config file with `--set` overrides."""
    from lightgen.train import TrainConfig  # torch: imported when a command needs it, not at CLI start

    layer = check_known(parse_overrides(overrides), TrainConfig, "--set")  # blame the flag, not the file
    raw = merge(read_yaml(path, "training config"), layer)
    return TrainConfig.from_dict(resolve_vocab(raw), str(path))


def train_config(base: str | Path, *layers: dict, **fixed) -> TrainConfig:
    """A training config file (relative to the repo root) with override layers applied in order."""
    from lightgen.train import TrainConfig

    merged = read_yaml(ROOT / base, "training config")
    for layer in (*layers, fixed):
        merged = merge(merged, layer)
    return TrainConfig.from_dict(resolve_vocab(merged), str(base))
