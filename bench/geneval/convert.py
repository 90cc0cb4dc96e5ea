"""GenEval's own detector in transformers: the mmdet Mask2Former Swin-S COCO-instance checkpoint
(`..._20220504_001756-743b7d99.pth`, mmdet 2.x, or its 3.x key conversion `...-c9d0c4f2.pth`) ->
`Mask2FormerForUniversalSegmentation`, saved with `save_pretrained` (safetensors).

Why: GenEval numbers are comparable to published ones only with this checkpoint, and mmdet needs
mmcv built from source. The `.pth` is read with `torch.load(weights_only=True)` and an explicit
allow-list (numpy scalars, for `meta`); anything else is refused. The key table is generated from
the architecture (`official_layout`) and tested against mmdet's real state dict (a fixture), so
every official tensor is used exactly once and nothing in the target is left at its init.
mmdet publishes files named by the first 8 hex digits of their sha256, which identifies the
official weights without downloading them here.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lightgen.checkpoint import read_pth
from lightgen.errors import InputError
from lightgen.files import sha256_file

CONFIG_NAME = "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco"
OFFICIAL_FILES = {  # sha256 prefix -> what it is
    "743b7d99": f"{CONFIG_NAME}_20220504_001756-743b7d99.pth (mmdet 2.x; GenEval's download_models.sh)",
    "c9d0c4f2": "mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco_20220504_001756-c9d0c4f2.pth (its mmdet 3.x conversion)",
}
OFFICIAL_URL = ("https://download.openmmlab.com/mmdetection/v2.0/mask2former/" + CONFIG_NAME + "/"
                + CONFIG_NAME + "_20220504_001756-743b7d99.pth")
SOURCE_FILE = "geneval_source.json"  # written beside the converted weights: where they came from
CACHE_DIR = Path(os.environ.get("LIGHTGEN_BENCH_CACHE", Path.home() / ".cache" / "lightgen-bench")) / "detectors"
# transformers tensors no mmdet checkpoint has, and none used at inference: the loss's class weights
# (set from the config) and SwinModel's final norm (SwinBackbone normalises each stage itself).
NOT_IN_CHECKPOINT = re.compile(r"^criterion\.empty_weight$|\.swin\.layernorm\.")

EMBED, DEPTHS, HEADS, WINDOW = 96, (2, 2, 18, 2), (3, 6, 12, 24), 7  # Swin-S, patch 4, window 7
DIM, ENCODER_LAYERS, DECODER_LAYERS, QUERIES, CLASSES = 256, 6, 9, 100, 80
# What an mmdet checkpoint's `meta` may pickle besides plain containers: numpy scalars (a seed, a best
# score). numpy 1.x pickles name `numpy.core`, numpy 2 `numpy._core`.
_MULTIARRAY = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
ALLOWED_GLOBALS = [np.dtype, _MULTIARRAY.scalar, (_MULTIARRAY.scalar, "numpy.core.multiarray.scalar"),
                   *(type(np.dtype(t)) for t in ("b", "i4", "i8", "u8", "f4", "f8"))]


@dataclass(frozen=True)
class Rule:
    """One official tensor: its mmdet 3.x name and shape, the transformers name(s) it fills, and how."""

    src: str
    shape: tuple[int, ...]
    dst: tuple[str, ...]  # () for a buffer that is checked, not copied
    op: str = "copy"  # copy | split (qkv -> q, k, v) | unfold_linear / unfold_norm (patch merging) | index


def _linear(rules: list[Rule], src: str, dst: str, n_out: int, n_in: int, op: str = "copy") -> None:
    rules.append(Rule(f"{src}.weight", (n_out, n_in), (f"{dst}.weight",), op))
    rules.append(Rule(f"{src}.bias", (n_out,), (f"{dst}.bias",), op))


def _norm(rules: list[Rule], src: str, dst: str, n: int, op: str = "copy") -> None:
    rules += [Rule(f"{src}.{p}", (n,), (f"{dst}.{p}",), op) for p in ("weight", "bias")]


def _split(rules: list[Rule], src: str, dst: str, names: tuple[str, ...], n: int, weight: str = "weight",
           bias: str = "bias") -> None:
    rules.append(Rule(f"{src}.{weight}", (3 * n, n), tuple(f"{dst}.{q}.weight" for q in names), "split"))
    rules.append(Rule(f"{src}.{bias}", (3 * n,), tuple(f"{dst}.{q}.bias" for q in names), "split"))


def _backbone(rules: list[Rule]) -> None:
    src, dst = "backbone", "model.pixel_level_module.encoder"
    rules.append(Rule(f"{src}.patch_embed.projection.weight", (EMBED, 3, 4, 4),
                      (f"{dst}.embeddings.patch_embeddings.projection.weight",)))
    rules.append(Rule(f"{src}.patch_embed.projection.bias", (EMBED,), (f"{dst}.embeddings.patch_embeddings.projection.bias",)))
    _norm(rules, f"{src}.patch_embed.norm", f"{dst}.embeddings.norm", EMBED)
    for s, (depth, heads) in enumerate(zip(DEPTHS, HEADS)):
        d = EMBED * 2 ** s
        for b in range(depth):
            a, h = f"{src}.stages.{s}.blocks.{b}", f"{dst}.encoder.layers.{s}.blocks.{b}"
            _norm(rules, f"{a}.norm1", f"{h}.layernorm_before", d)
            rules.append(Rule(f"{a}.attn.w_msa.relative_position_bias_table", ((2 * WINDOW - 1) ** 2, heads),
                              (f"{h}.attention.self.relative_position_bias_table",)))
            rules.append(Rule(f"{a}.attn.w_msa.relative_position_index", (WINDOW ** 2, WINDOW ** 2), (), "index"))
            _split(rules, f"{a}.attn.w_msa.qkv", f"{h}.attention.self", ("query", "key", "value"), d)
            _linear(rules, f"{a}.attn.w_msa.proj", f"{h}.attention.output.dense", d, d)
            _norm(rules, f"{a}.norm2", f"{h}.layernorm_after", d)
            _linear(rules, f"{a}.ffn.layers.0.0", f"{h}.intermediate.dense", 4 * d, d)
            _linear(rules, f"{a}.ffn.layers.1", f"{h}.output.dense", d, 4 * d)
        if s < len(DEPTHS) - 1:  # mmdet merges patches with nn.Unfold: channel-major, not Swin's order
            _norm(rules, f"{src}.stages.{s}.downsample.norm", f"{dst}.encoder.layers.{s}.downsample.norm", 4 * d,
                  "unfold_norm")
            rules.append(Rule(f"{src}.stages.{s}.downsample.reduction.weight", (2 * d, 4 * d),
                              (f"{dst}.encoder.layers.{s}.downsample.reduction.weight",), "unfold_linear"))
        _norm(rules, f"{src}.norm{s}", f"{dst}.hidden_states_norms.stage{s + 1}", d)


def _pixel_decoder(rules: list[Rule]) -> None:
    src, dst = "panoptic_head.pixel_decoder", "model.pixel_level_module.decoder"
    for i, s in enumerate((3, 2, 1)):  # lowest resolution first, in both
        rules.append(Rule(f"{src}.input_convs.{i}.conv.weight", (DIM, EMBED * 2 ** s, 1, 1),
                          (f"{dst}.input_projections.{i}.0.weight",)))
        rules.append(Rule(f"{src}.input_convs.{i}.conv.bias", (DIM,), (f"{dst}.input_projections.{i}.0.bias",)))
        _norm(rules, f"{src}.input_convs.{i}.gn", f"{dst}.input_projections.{i}.1", DIM)
    for l in range(ENCODER_LAYERS):
        a, h = f"{src}.encoder.layers.{l}", f"{dst}.encoder.layers.{l}"
        _linear(rules, f"{a}.self_attn.sampling_offsets", f"{h}.self_attn.sampling_offsets", 8 * 3 * 4 * 2, DIM)
        _linear(rules, f"{a}.self_attn.attention_weights", f"{h}.self_attn.attention_weights", 8 * 3 * 4, DIM)
        _linear(rules, f"{a}.self_attn.value_proj", f"{h}.self_attn.value_proj", DIM, DIM)
        _linear(rules, f"{a}.self_attn.output_proj", f"{h}.self_attn.output_proj", DIM, DIM)
        _linear(rules, f"{a}.ffn.layers.0.0", f"{h}.fc1", 4 * DIM, DIM)
        _linear(rules, f"{a}.ffn.layers.1", f"{h}.fc2", DIM, 4 * DIM)
        _norm(rules, f"{a}.norms.0", f"{h}.self_attn_layer_norm", DIM)
        _norm(rules, f"{a}.norms.1", f"{h}.final_layer_norm", DIM)
    rules.append(Rule(f"{src}.level_encoding.weight", (3, DIM), (f"{dst}.level_embed",)))
    rules.append(Rule(f"{src}.lateral_convs.0.conv.weight", (DIM, EMBED, 1, 1), (f"{dst}.adapter_1.0.weight",)))
    _norm(rules, f"{src}.lateral_convs.0.gn", f"{dst}.adapter_1.1", DIM)
    rules.append(Rule(f"{src}.output_convs.0.conv.weight", (DIM, DIM, 3, 3), (f"{dst}.layer_1.0.weight",)))
    _norm(rules, f"{src}.output_convs.0.gn", f"{dst}.layer_1.1", DIM)
    rules.append(Rule(f"{src}.mask_feature.weight", (DIM, DIM, 1, 1), (f"{dst}.mask_projection.weight",)))
    rules.append(Rule(f"{src}.mask_feature.bias", (DIM,), (f"{dst}.mask_projection.bias",)))


def _transformer_decoder(rules: list[Rule]) -> None:
    src, dst = "panoptic_head", "model.transformer_module"
    for l in range(DECODER_LAYERS):
        a, h = f"{src}.transformer_decoder.layers.{l}", f"{dst}.decoder.layers.{l}"
        rules.append(Rule(f"{a}.cross_attn.attn.in_proj_weight", (3 * DIM, DIM), (f"{h}.cross_attn.in_proj_weight",)))
        rules.append(Rule(f"{a}.cross_attn.attn.in_proj_bias", (3 * DIM,), (f"{h}.cross_attn.in_proj_bias",)))
        _linear(rules, f"{a}.cross_attn.attn.out_proj", f"{h}.cross_attn.out_proj", DIM, DIM)
        _split(rules, f"{a}.self_attn.attn", f"{h}.self_attn", ("q_proj", "k_proj", "v_proj"), DIM,
               "in_proj_weight", "in_proj_bias")
        _linear(rules, f"{a}.self_attn.attn.out_proj", f"{h}.self_attn.out_proj", DIM, DIM)
        _linear(rules, f"{a}.ffn.layers.0.0", f"{h}.fc1", 8 * DIM, DIM)
        _linear(rules, f"{a}.ffn.layers.1", f"{h}.fc2", DIM, 8 * DIM)
        for i, norm in enumerate(("cross_attn_layer_norm", "self_attn_layer_norm", "final_layer_norm")):
            _norm(rules, f"{a}.norms.{i}", f"{h}.{norm}", DIM)
    _norm(rules, f"{src}.transformer_decoder.post_norm", f"{dst}.decoder.layernorm", DIM)
    for name, hf, n in (("query_embed", "queries_embedder", QUERIES), ("query_feat", "queries_features", QUERIES),
                        ("level_embed", "level_embed", 3)):
        rules.append(Rule(f"{src}.{name}.weight", (n, DIM), (f"{dst}.{hf}.weight",)))
    for i in range(3):  # Linear, ReLU, Linear, ReLU, Linear
        _linear(rules, f"{src}.mask_embed.{2 * i}", f"{dst}.decoder.mask_predictor.mask_embedder.{i}.0", DIM, DIM)
    _linear(rules, f"{src}.cls_embed", "class_predictor", CLASSES + 1, DIM)


def official_layout() -> list[Rule]:
    """Every tensor of GenEval's checkpoint (mmdet 3.x names) -> transformers' saved names."""
    rules: list[Rule] = []
    _backbone(rules)
    _pixel_decoder(rules)
    _transformer_decoder(rules)
    return rules


def mmdet3_name(name: str) -> str:
    """mmdet 2.x -> 3.x key names, as mmdet's own Mask2Former checkpoint conversion renamed them."""
    if "encoder.layers" in name:
        name = name.replace("attentions.0", "self_attn")
    name = name.replace("ffns.0", "ffn")
    if "decoder.layers" in name:
        name = name.replace("attentions.0", "cross_attn").replace("attentions.1", "self_attn")
    return name


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, meta) of an mmdet checkpoint, unpickling nothing outside the allow-list."""
    ckpt = read_pth(path, ALLOWED_GLOBALS)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: expected an mmdet checkpoint: a dict with a 'state_dict' of tensors")
    return state, ckpt.get("meta") if isinstance(ckpt.get("meta"), dict) else {}


def check_architecture(state: dict[str, torch.Tensor], path: str | os.PathLike, rules: list[Rule]) -> None:
    """GenEval's exact model or a clear error: class count, Swin variant, then every key and shape."""
    cls = state.get("panoptic_head.cls_embed.weight")
    if cls is not None and cls.shape[0] != CLASSES + 1:
        kind = " (133 = the COCO panoptic model)" if cls.shape[0] == 134 else ""
        raise InputError(f"{path}: panoptic_head.cls_embed predicts {cls.shape[0] - 1} classes{kind}; expected "
                         f"GenEval's COCO instance detector ({CLASSES} classes + no-object)")
    patch = state.get("backbone.patch_embed.projection.weight")
    depths = tuple(len({k.split(".")[4] for k in state if k.startswith(f"backbone.stages.{s}.blocks.")})
                   for s in range(4))
    if patch is None or patch.shape[0] != EMBED or depths != DEPTHS:
        found = f"embed dim {patch.shape[0]}, depths {'-'.join(map(str, depths))}" if patch is not None else "no Swin"
        raise InputError(f"{path}: backbone has {found}; expected Swin-S (embed dim {EMBED}, depths 2-2-18-2; "
                         f"Swin-T is 2-2-6-2)")
    want = {r.src: r.shape for r in rules}
    missing = sorted(set(want) - set(state))
    unused = sorted(set(state) - set(want))
    shapes = [f"{k} {tuple(state[k].shape)} (expected {want[k]})" for k in want if k in state
              and tuple(state[k].shape) != want[k]]
    for what, keys in (("missing keys", missing), ("unexpected keys", unused), ("wrong shapes", shapes)):
        if keys:
            more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
            raise InputError(f"{path}: {what} for GenEval's Mask2Former Swin-S: {', '.join(keys[:5])}{more}")


def relative_position_index(window: int = WINDOW) -> torch.Tensor:
    """Swin's window index: (dy + w - 1) * (2w - 1) + (dx + w - 1) for each pair of window positions."""
    yx = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    d = (yx[:, :, None] - yx[:, None, :]) + window - 1
    return d[0] * (2 * window - 1) + d[1]


def convert_state_dict(state: dict[str, torch.Tensor], rules: list[Rule]) -> dict[str, torch.Tensor]:
    """Official tensors (mmdet 3.x names, already checked) -> transformers' saved names."""
    out = {}
    for r in rules:
        t = state[r.src].float() if r.op != "index" else state[r.src]
        if r.op == "index":
            if not torch.equal(t.long(), relative_position_index()):
                raise InputError(f"{r.src}: not Swin's relative position index for window {WINDOW}")
            continue
        if r.op == "split":
            parts = t.chunk(3, 0)
        elif r.op == "unfold_linear":  # [out, c*4 + k] with k = 2*row + col -> [out, s*C + c], s = k for (0,2,1,3)
            parts = (t.reshape(t.shape[0], -1, 4)[:, :, [0, 2, 1, 3]].transpose(1, 2).reshape(t.shape),)
        elif r.op == "unfold_norm":
            parts = (t.reshape(-1, 4)[:, [0, 2, 1, 3]].T.reshape(t.shape),)
        else:
            parts = (t,)
        out.update({name: p.contiguous() for name, p in zip(r.dst, parts)})
    return out


def hf_config():
    """GenEval's architecture as a transformers config, labels in mmdet order with GenEval's names."""
    from transformers import Mask2FormerConfig, SwinConfig

    from bench.geneval.layout import OBJECT_NAMES
    swin = SwinConfig(embed_dim=EMBED, depths=list(DEPTHS), num_heads=list(HEADS), window_size=WINDOW,
                      drop_path_rate=0.3, out_features=["stage1", "stage2", "stage3", "stage4"])
    return Mask2FormerConfig(backbone_config=swin, num_labels=CLASSES, num_queries=QUERIES, hidden_dim=DIM,
                             feature_size=DIM, mask_feature_size=DIM, encoder_layers=ENCODER_LAYERS,
                             decoder_layers=DECODER_LAYERS + 1,  # transformers counts the query-only prediction
                             encoder_feedforward_dim=4 * DIM, dim_feedforward=8 * DIM,
                             id2label=dict(enumerate(OBJECT_NAMES)), label2id={c: i for i, c in enumerate(OBJECT_NAMES)})


def build_model(tensors: dict[str, torch.Tensor]):
    """Load converted tensors through `from_pretrained` (which maps saved names to the installed
    transformers' modules) and insist that every weight of the model came from the checkpoint."""
    from safetensors.torch import save_file
    from transformers import Mask2FormerForUniversalSegmentation
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # its load report calls the two NOT_IN_CHECKPOINT tensors "newly initialized"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            hf_config().save_pretrained(tmp)
            save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
            model, info = Mask2FormerForUniversalSegmentation.from_pretrained(tmp, output_loading_info=True)
    finally:
        logging.set_verbosity(verbosity)
    info["missing_keys"] = {k for k in info["missing_keys"] if not NOT_IN_CHECKPOINT.search(k)}
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise RuntimeError(f"converted Mask2Former does not load cleanly into transformers: {problems}")
    return model.eval()


def convert(src: str | os.PathLike, dst: str | os.PathLike, sha256: str | None = None) -> Path:
    """Convert GenEval's mmdet checkpoint `src` into a new transformers directory `dst`.

    Everything is checked before anything is written; `dst` appears in one rename.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists():
        raise InputError(f"{dst}: already exists; give a new directory for the converted detector")
    state, meta = read_checkpoint(src)
    layout = "mmdet 2.x" if any(".attentions." in k or ".ffns." in k for k in state) else "mmdet 3.x"
    state = {mmdet3_name(k): v for k, v in state.items()}
    rules = official_layout()
    check_architecture(state, src, rules)
    model = build_model(convert_state_dict(state, rules))
    sha256 = sha256 or sha256_file(src)
    source = {"source": src.name, "sha256": sha256, "official": OFFICIAL_FILES.get(sha256[:8]), "layout": layout,
              "mmdet_version": meta.get("mmdet_version"), "converter": "bench.geneval.convert"}
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp"))
    try:
        model.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
        os.replace(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def read_source(directory: str | os.PathLike) -> dict | None:
    """The `geneval_source.json` record of a converted directory (None for any other model dir)."""
    f = Path(directory) / SOURCE_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def hash_suffix(name: str) -> str | None:
    """The `<sha256[:8]>` of an mmdet file name `..._<date>-<sha256[:8]>.pth` (None if not so named)."""
    found = re.search(r"-([0-9a-f]{8})\.pth$", name)
    return found.group(1) if found else None


def download(url: str) -> Path:
    """A `.pth` URL -> the cached file; mmdet's `-<sha256[:8]>.pth` file names are verified."""
    from lightgen.files import atomic_path

    dst = CACHE_DIR / url.rsplit("/", 1)[-1]
    if not dst.is_file():
        try:
            with atomic_path(dst) as tmp:
                torch.hub.download_url_to_file(url, str(tmp), hash_prefix=hash_suffix(dst.name), progress=False)
        except (OSError, RuntimeError) as e:  # offline, HTTP error, hash mismatch
            raise InputError(f"--checkpoint {url}: download failed ({e}); fetch the file and pass its path") from None
    return dst


def resolve(checkpoint: str) -> tuple[str, dict | None]:
    """(what `from_pretrained` loads, the source record or None) for a `--checkpoint` value.

    A `.pth` (path or URL) is converted once into the cache, keyed by its sha256; a converted
    directory carries its record; anything else (hub id, other model dir) is passed through.
    """
    if re.match(r"(https?|file)://", checkpoint):
        path = download(checkpoint)
    elif checkpoint.endswith(".pth") or Path(checkpoint).is_file():
        path = Path(checkpoint)
    else:
        return checkpoint, read_source(checkpoint) if Path(checkpoint).is_dir() else None
    if not path.is_file():
        raise InputError(f"--checkpoint {path}: file not found")
    sha256 = sha256_file(path)
    cached = CACHE_DIR / f"mask2former-{sha256[:16]}"
    if read_source(cached) is None:
        try:
            convert(path, cached, sha256)
        except InputError:
            if read_source(cached) is None:  # not a concurrent conversion that won the rename
                raise
    return str(cached), read_source(cached)
