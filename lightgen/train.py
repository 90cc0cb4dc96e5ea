"""Training loop shared by KD pretraining and Diffusion-DPO (paper §4.2–4.3), on accelerate.

Official recipe by default: AdamW (0.9, 0.95), weight decay 0.02 except 1-D params, biases and the
diffusion head, lr = blr × global batch / 256, linear warm-up then constant, grad-norm clip 3.0, EMA.

Crash safety: every random draw of step s comes from seeds derived from (seed, s, rank) and the data
order from (seed, epoch), so the RNG state and data-loader position at a step are functions of the
step number; a checkpoint holds weights, EMA, optimizer state, the fp16 loss scaler's state (when one is
used) and the step. A run killed at any point and resumed from its last checkpoint therefore ends bitwise
identical to an uninterrupted run: tests/test_train.py kills a real single-process fp32 CPU run with SIGKILL;
mixed-precision and multi-process resumes are not tested here (no GPU).
Checkpoints are written to a temp directory, fsynced, checksummed and renamed; a corrupt one is
skipped with a warning.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from tqdm.auto import tqdm

from lightgen.cache import FeatureCache
from lightgen.checkpoint import load_into, load_weights, save_weights
from lightgen.codecs import config_latents
from lightgen.config import PRESETS, STAGE_FIELDS, LightGenConfig
from lightgen.dpo import dpo_loss
from lightgen.errors import BOOL, MAPPING, TEXT, InputError, Rule, check_fields, check_known, check_same, integer, \
    list_of, nested, number, one_of, optional
from lightgen.files import read_yaml, writable_dir
from lightgen.mar import LightGen
from lightgen.pipeline import read_pipeline_config, write_pipeline
from lightgen.precision import resolve_mixed_precision


@dataclass
class TrainConfig:
    """One training run (KD pretraining or DPO). Loaded from YAML; unknown keys are errors."""

    objective: str = "kd"  # "kd" | "dpo"
    student: str = "lightgen"  # "lightgen" | "unet" (lightgen.unet_student: a pixel-space diffusers UNet)
    preset: str = "testbed"
    model: dict[str, Any] = field(default_factory=dict)  # LightGenConfig overrides (the unet student: text, codec)
    unet: dict[str, Any] = field(default_factory=dict)  # UNetStudentConfig overrides (student: unet)
    cache: str = ""  # feature cache (KD); for DPO the winners' cache
    loser_cache: str = ""  # DPO only: the losers' cache, row-aligned with `cache`
    out: str = "runs/train"
    resolution: int | None = None  # default: the preset's
    init_from: str | None = None  # pipeline dir to start from (multi-stage / DPO reference)
    init_weights: str | None = None  # "model" | "model_ema" (default: the directory's choice)
    batch_size: int = 64  # global, over all processes
    steps: int = 1000
    blr: float = 1e-4
    lr: float | None = None  # default: blr × batch_size / 256
    warmup_steps: int = 100
    weight_decay: float = 0.02
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 3.0
    head_lr_scale: float = 1.0  # the diffusion head's lr / the trunk's (official: 1)
    ema_decay: float = 0.9999
    ema_warmup: bool = False  # decay min(ema_decay, (1+s)/(10+s)): short runs forget the random init
    flip: bool = True  # random horizontal flip (official); captions are not changed...
    mirror_captions: bool = False  # ...unless set: a flipped image trains with left <-> right swapped
    seed: int = 0
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16" (fp16 uses loss scaling) | "auto" (bf16 where native)
    fused_adamw: bool = True  # when the device supports it
    save_every: int = 500
    keep_last: int = 2
    export_steps: list[int] = field(default_factory=list)  # also write a pipeline at these steps
    log_every: int = 10
    num_workers: int = 0
    trackers: list[str] = field(default_factory=list)  # accelerate trackers, e.g. ["tensorboard"]
    # Diffusion-DPO (Eq. 7)
    dpo_beta: float = 1000.0
    dpo_sft_weight: float = 0.0  # optional plain DiffLoss on winners
    dpo_vb: bool = False  # include the VB term in the per-image error (Diffusion-DPO: ε-MSE only)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else self.blr * self.batch_size / 256

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> "TrainConfig":
        return cls.from_dict({**read_yaml(path, "training config"), **(overrides or {})}, str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> "TrainConfig":
        try:
            return cls(**check_known(raw, cls, source))
        except InputError as e:
            raise InputError(f"{source}: {e}") from None

    def __post_init__(self) -> None:
        """Every field is checked here, once, and the model (and UNet) config built from it: a bad value fails
        when the config is made, before any folder or data is touched."""
        check_fields(self, TRAIN_RULES)
        self.betas = tuple(self.betas)
        if self.student == "unet" and self.dpo_vb:
            raise InputError("dpo_vb: the UNet student's variance is fixed, it has no VB term")
        if self.unet and self.student != "unet":
            raise InputError(f"unet: UNet options given, but student is {self.student!r}")
        config = nested("model", LightGenConfig, self.model, self.model_config)
        if self.resolution is not None and self.resolution % config.pixels_per_token:
            raise InputError(f"resolution: expected a multiple of vae_stride×patch_size = {config.pixels_per_token} "
                             f"(preset {self.preset!r}), got {self.resolution}")
        if self.student == "unet":  # its options and text length, before any data is read
            from lightgen.unet_student import UNetStudentConfig, check_text_length
            nested("unet", UNetStudentConfig, self.unet)
            check_text_length(config)

    def model_config(self) -> LightGenConfig:
        return LightGenConfig.from_preset(self.preset, **self.model)


STUDENTS = ("lightgen", "unet")
_COUNT = integer(1)
TRAIN_RULES: dict[str, Rule] = dict(
    objective=one_of("kd", "dpo"), student=one_of(*STUDENTS), preset=one_of(*PRESETS), model=MAPPING,
    unet=MAPPING, cache=TEXT, loser_cache=TEXT, out=TEXT, resolution=optional(_COUNT), init_from=optional(TEXT),
    init_weights=optional(one_of("model", "model_ema")), batch_size=_COUNT, steps=_COUNT, blr=number(0),
    lr=optional(number(0)), warmup_steps=integer(0), weight_decay=number(0),
    betas=Rule(lambda v: list_of(number(0, 1, below=True)).ok(v) and len(v) == 2, "two numbers >= 0 and < 1"),
    grad_clip=number(0, above=True), head_lr_scale=number(0), ema_decay=number(0, 1), ema_warmup=BOOL, flip=BOOL,
    mirror_captions=BOOL, seed=integer(0), mixed_precision=one_of("no", "bf16", "fp16", "auto"), fused_adamw=BOOL,
    save_every=_COUNT, keep_last=_COUNT, export_steps=list_of(_COUNT), log_every=_COUNT, num_workers=integer(0),
    trackers=list_of(TEXT), dpo_beta=number(0, above=True), dpo_sft_weight=number(0), dpo_vb=BOOL)


class TrainingDiverged(RuntimeError):
    """A NaN/inf loss: the run stops and the last good checkpoint is left untouched."""


# ------------------------------------------------------------------------------------ data order
def _seed(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:7], "little")


def step_batch(n: int, batch: int, seed: int, step: int) -> torch.Tensor:
    """Dataset indices of the global batch at `step`: epochs of seeded permutations, drop_last."""
    per_epoch = n // batch
    if per_epoch == 0:
        raise InputError(f"dataset: {n} samples is fewer than one batch of {batch}")
    epoch, k = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(seed, epoch)))
    return order[k * batch:(k + 1) * batch]


class _StepBatches(torch.utils.data.Sampler):
    """Yields (step, index, flip) lists for this process's share of each global batch from `start`."""

    def __init__(self, n: int, cfg: TrainConfig, start: int, rank: int, world: int):
        self.n, self.cfg, self.start, self.rank, self.world = n, cfg, start, rank, world

    def __len__(self):
        return self.cfg.steps - self.start

    def __iter__(self):
        for step in range(self.start, self.cfg.steps):
            idx = step_batch(self.n, self.cfg.batch_size, self.cfg.seed, step)
            flips = torch.rand(len(idx), generator=torch.Generator().manual_seed(_seed(self.cfg.seed, step, -1))) < 0.5
            flips &= self.cfg.flip
            yield [(step, int(i), bool(f)) for i, f in list(zip(idx, flips))[self.rank::self.world]]


class _Rows(torch.utils.data.Dataset):
    """Cache rows for the objective: KD -> (moments, text); DPO -> (winner, loser, text). A flipped row
    takes the mirrored caption's states when `mirror` is set."""

    def __init__(self, caches: list[FeatureCache], mirror: bool = False):
        self.caches, self.mirror = caches, mirror

    def __len__(self):
        return len(self.caches[0])

    def __getitem__(self, item):
        step, i, flip = item
        rows = [c[i] for c in self.caches]
        moments = [r.moments_flip if flip else r.moments for r in rows]
        return (step, *moments, rows[0].text_flip if flip and self.mirror else rows[0].text)


def _collate(items):
    steps = {it[0] for it in items}
    return (steps.pop(), *(torch.stack(col) for col in list(zip(*items))[1:]))


# ------------------------------------------------------------------------------------ checkpoints
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {f"{pid}.{k}": v for pid, st in sd["state"].items() for k, v in st.items() if torch.is_tensor(v)}
    return tensors, {"param_groups": sd["param_groups"], "state_keys": {str(p): list(st) for p, st in sd["state"].items()}}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state = {int(p): {k: tensors[f"{p}.{k}"] for k in keys} for p, keys in meta["state_keys"].items()}
    return {"state": state, "param_groups": meta["param_groups"]}


def write_checkpoint(root: Path, step: int, model: LightGen, ema: list[torch.Tensor],
                     opt: torch.optim.Optimizer, cfg: TrainConfig, keep_last: int, scaler=None) -> Path:
    """`root/step-N`: weights, EMA, optimizer, the fp16 loss scaler's state (when one is used) and the step."""
    final = root / f"step-{step:08d}"
    tmp = root / f".step-{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    names = [n for n, _ in model.named_parameters()]
    save_weights(model.state_dict(), tmp / "model.safetensors")
    save_weights(dict(zip(names, ema)), tmp / "ema.safetensors")
    opt_tensors, opt_meta = _optimizer_tensors(opt)
    save_weights(opt_tensors, tmp / "optimizer.safetensors")
    files = {f.name: _sha256(f) for f in sorted(tmp.iterdir())}
    state = {"step": step, "config": dataclasses.asdict(cfg), "optimizer": opt_meta, "sha256": files,
             "scaler": None if scaler is None else scaler.state_dict(),
             "rng": "derived from (seed, step): see lightgen/train.py"}
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(root.glob("step-*"))[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path: Path) -> dict | None:
    """Verified checkpoint contents, or None (with a warning) when files are missing or corrupt."""
    try:
        state = json.loads((path / "state.json").read_text())
        for name, digest in state["sha256"].items():
            if _sha256(path / name) != digest:
                raise ValueError(f"{name}: checksum mismatch")
        return {**state, "model": load_weights(path / "model.safetensors"), "ema": load_weights(path / "ema.safetensors"),
                "optimizer_tensors": load_weights(path / "optimizer.safetensors")}
    except (OSError, ValueError, KeyError, json.JSONDecodeError, SafetensorError, InputError) as e:
        warnings.warn(f"checkpoint {path} is unreadable or corrupt ({e}); trying an older one")
        return None


def latest_checkpoint(root: Path) -> dict | None:
    for path in sorted(root.glob("step-*"), reverse=True):
        ckpt = read_checkpoint(path)
        if ckpt is not None:
            return ckpt
    return None


# ------------------------------------------------------------------------------------ objectives
def kd_loss(model, batch, config: LightGenConfig, **_) -> tuple[torch.Tensor, dict[str, float]]:
    moments, text = batch
    loss = model(config_latents(moments, config), text)
    return loss, {}


# ------------------------------------------------------------------------------------------ students

class LightGenStudent:
    """The paper's model as the trainer's student: what the trainer needs is building the network,
    its initial weights from a pipeline, its optimizer groups, its KD and DPO losses and its export."""

    name = "lightgen"

    def __init__(self, config: LightGenConfig):
        self.config = config

    def build(self) -> LightGen:
        return LightGen(self.config)

    def init_state(self, path: str | Path, weights: str | None) -> dict[str, torch.Tensor]:
        """`path`'s weights, refused when its config means something else (e.g. an ε head for a v run)."""
        config, state = load_init(path, weights)
        check_same(f"init_from {path}", self.config, config, STAGE_FIELDS)
        return state

    def param_groups(self, model: LightGen, weight_decay: float, head_lr_scale: float) -> list[dict]:
        return param_groups(model, weight_decay, head_lr_scale)

    def loss(self, model, batch, **_) -> tuple[torch.Tensor, dict[str, float]]:
        return kd_loss(model, batch, self.config)

    def dpo_loss(self, model, batch, reference, cfg) -> tuple[torch.Tensor, dict[str, float]]:
        return dpo_loss(model, batch, self.config, reference, cfg)

    def export(self, path: Path, model: LightGen, ema: list[torch.Tensor], cache: FeatureCache) -> Path:
        return export(path, self.config, model, ema, cache)


def make_student(cfg: TrainConfig, config: LightGenConfig, resolution: int, cache: FeatureCache):
    """The student `cfg.student` names, for data made with `config`'s codec and text encoder."""
    if cfg.student == "unet":
        from lightgen.unet_student import UNetStudent, UNetStudentConfig
        return UNetStudent(config, UNetStudentConfig.from_dict(cfg.unet), resolution, cache)
    return LightGenStudent(config)


# ------------------------------------------------------------------------------------------ train
def param_groups(model: LightGen, weight_decay: float, head_lr_scale: float = 1.0) -> list[dict]:
    """Official split: no decay for 1-D params, biases and the whole diffusion head; the head's
    learning rate is `head_lr_scale` × the trunk's (official: 1)."""
    decay, no_decay, head = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("diffloss"):
            head.append(p)
        else:
            (no_decay if p.ndim == 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
            {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
            {"params": head, "weight_decay": 0.0, "lr_scale": head_lr_scale}]


def load_init(path: str | Path, weights: str | None) -> tuple[LightGenConfig, dict[str, torch.Tensor]]:
    """Config and chosen weights of a pipeline directory (position tables interpolate, so a lower-
    resolution checkpoint initialises a higher-resolution stage unchanged)."""
    config, meta = read_pipeline_config(path)
    name = weights or meta.get("default_weights", "model_ema")
    return config, load_weights(Path(path) / f"{name}.safetensors")


def train(cfg: TrainConfig, resume: str | None = "auto",
          on_step: Callable[[int, dict[str, float]], None] | None = None) -> Path:
    """Run (or resume) training; returns the exported pipeline directory `out/pipeline`.

    `resume`: "auto" (latest good checkpoint in `out/checkpoints`, if any), a checkpoint path, or None.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    config, caches = _open_caches(cfg)  # before `out` is made: a bad cache leaves no empty run folder
    student = make_student(cfg, config, cfg.resolution or config.resolution, caches[0])
    init_state = student.init_state(cfg.init_from, cfg.init_weights) if cfg.init_from else None  # checked: ditto
    out = writable_dir(cfg.out, "out")
    AcceleratorState._reset_state()  # a process may run several trainings with different precisions
    device = "cuda" if torch.cuda.is_available() else "cpu"
    acc = Accelerator(mixed_precision=resolve_mixed_precision(cfg.mixed_precision, device),
                      log_with=cfg.trackers or None, project_dir=str(out))
    model, reference = _build_models(cfg, student, init_state, acc.device)
    ckpt = _find_checkpoint(cfg, config, resume, out / "checkpoints")
    if ckpt is not None:
        load_into(model, ckpt["model"], "checkpoint model")
    model.to(acc.device)
    ema = [p.detach().clone() for p in model.parameters()]
    if ckpt is not None:
        names = [n for n, _ in model.named_parameters()]
        ema = [ckpt["ema"][n].to(acc.device) for n in names]
    opt, lr_scales = _build_optimizer(cfg, student, model, acc.device, ckpt, out / "checkpoints")
    start = ckpt["step"] if ckpt is not None else 0
    prepared, opt = acc.prepare(model, opt)
    if acc.scaler is not None and ckpt is not None and ckpt.get("scaler"):  # fp16: the loss scale resumes too
        acc.scaler.load_state_dict(ckpt["scaler"])
    run = _Run(cfg, student, acc, prepared, acc.unwrap_model(prepared), opt, lr_scales, ema, reference, caches, out)
    loader = torch.utils.data.DataLoader(
        _Rows(caches, cfg.mirror_captions),
        batch_sampler=_StepBatches(len(caches[0]), cfg, start, acc.process_index, acc.num_processes), collate_fn=_collate, num_workers=cfg.num_workers, pin_memory=acc.device.type == "cuda")
    if acc.is_main_process:
        _truncate_metrics(out / "metrics.csv", start)
        acc.init_trackers("lightgen", config={k: v for k, v in dataclasses.asdict(cfg).items()
                                              if isinstance(v, (int, float, str, bool))})
    run.loop(loader, start, on_step)
    final = out / "pipeline"
    if acc.is_main_process:
        student.export(final, run.raw_model, ema, caches[0])
    acc.end_training()
    return final


def _open_caches(cfg: TrainConfig) -> tuple[LightGenConfig, list[FeatureCache]]:
    """The model config and the objective's feature caches (KD: one; DPO: winners, losers), checked."""
    if cfg.objective == "dpo" and not (cfg.init_from and cfg.loser_cache):
        raise InputError("DPO needs init_from (the reference model) and loser_cache (the losers' features)")
    config = cfg.model_config()
    resolution = cfg.resolution or config.resolution
    config.grid(resolution, resolution)
    caches = [FeatureCache(cfg.cache, config, resolution)] if cfg.cache else []
    if not caches:
        raise InputError("cache: a feature cache is required (build one with `lightgen-bench cache`)")
    if cfg.objective == "dpo":
        losers = FeatureCache(cfg.loser_cache, config, resolution)
        if len(losers) != len(caches[0]):
            raise InputError(f"loser_cache: {len(losers)} rows, winners' cache has {len(caches[0])}")
        caches.append(losers)
    if len(caches[0]) < cfg.batch_size:
        raise InputError(f"cache: {len(caches[0])} samples is fewer than one batch of {cfg.batch_size}")
    if cfg.flip and cfg.mirror_captions and not caches[0].mirrored:
        raise InputError(f"cache: {cfg.cache} holds no mirrored captions (built by an older version); rebuild it "
                         "with `lightgen-bench cache` or set mirror_captions: false")
    return config, caches


def _build_models(cfg: TrainConfig, student, init_state: dict[str, torch.Tensor] | None,
                  device) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The model to train (seeded init, then `init_from`'s weights `init_state` if given) and, for DPO, the frozen
    reference (on `device`)."""
    torch.manual_seed(cfg.seed)
    model = student.build()
    reference = None
    if init_state is not None:
        load_into(model, init_state, f"init_from {cfg.init_from}")
        if cfg.objective == "dpo":
            reference = student.build().eval().requires_grad_(False)
            load_into(reference, init_state, f"init_from {cfg.init_from}")
            reference.to(device)
    return model, reference


def _find_checkpoint(cfg: TrainConfig, config: LightGenConfig, resume: str | None, ckpt_root: Path) -> dict | None:
    """The checkpoint to resume from ("auto": the latest good one in `ckpt_root`), made for this model config."""
    ckpt = None
    if resume == "auto":
        ckpt = latest_checkpoint(ckpt_root)
    elif resume:
        ckpt = read_checkpoint(Path(resume))
        if ckpt is None:
            raise InputError(f"resume: {resume} is not a readable checkpoint")
    if ckpt is not None:
        saved = TrainConfig.from_dict(ckpt["config"])
        if (saved.student, saved.unet, saved.model_config()) != (cfg.student, cfg.unet, config):
            raise InputError(f"resume: checkpoint at {ckpt_root} was made for another model config "
                             f"(student {saved.student!r}, preset {saved.preset!r}; this run {cfg.student!r}, "
                             f"{cfg.preset!r})")
    return ckpt


def _build_optimizer(cfg: TrainConfig, student, model: torch.nn.Module, device, ckpt: dict | None,
                     ckpt_root: Path) -> tuple[torch.optim.Optimizer, list[float]]:
    """AdamW over the official parameter groups (state restored from `ckpt`) and each group's lr scale."""
    fused = cfg.fused_adamw and device.type == "cuda"
    groups = student.param_groups(model, cfg.weight_decay, cfg.head_lr_scale)
    # kept out of the optimizer state, so a resumed run follows its config's scale as it follows its lr
    lr_scales = [g.pop("lr_scale") for g in groups]
    opt = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=cfg.betas, fused=fused or None)
    if ckpt is not None:
        if len(ckpt["optimizer"]["param_groups"]) != len(opt.param_groups):
            raise InputError(f"{ckpt_root}: the checkpoint's optimizer has {len(ckpt['optimizer']['param_groups'])} "
                             f"parameter groups, this trainer {len(opt.param_groups)} (written before head_lr_scale "
                             "existed); start a new run or --resume none")
        opt.load_state_dict(_optimizer_state(ckpt["optimizer_tensors"], ckpt["optimizer"]))
    return opt, lr_scales


@dataclass
class _Run:
    """The live objects of one training run; the loop's jobs (step, log, save) are its methods."""

    cfg: TrainConfig
    student: Any  # LightGenStudent | lightgen.unet_student.UNetStudent
    acc: Any  # accelerate.Accelerator
    model: torch.nn.Module  # as prepared by accelerate
    raw_model: torch.nn.Module
    opt: torch.optim.Optimizer
    lr_scales: list[float]
    ema: list[torch.Tensor]
    reference: LightGen | None
    caches: list[FeatureCache]
    out: Path

    def lr_at(self, step: int) -> float:
        return self.cfg.learning_rate * min(1.0, (step + 1) / max(1, self.cfg.warmup_steps))

    def loop(self, loader, start: int, on_step: Callable[[int, dict[str, float]], None] | None) -> None:
        cfg, acc = self.cfg, self.acc
        params = list(self.raw_model.parameters())
        bar = tqdm(total=cfg.steps, initial=start, desc=cfg.objective, unit="step", disable=not acc.is_main_process)
        t_last, cpu_last, seen = time.perf_counter(), time.process_time(), 0
        self.model.train()
        for step, *batch in loader:
            loss, extra, grad_norm = self.step(step, batch)
            with torch.no_grad():
                decay = min(cfg.ema_decay, (1 + step) / (10 + step)) if cfg.ema_warmup else cfg.ema_decay
                torch._foreach_lerp_(self.ema, [p.detach() for p in params], 1.0 - decay)
            seen += cfg.batch_size
            done = step + 1
            if acc.is_main_process and (done % cfg.log_every == 0 or done == cfg.steps):
                now, cpu = time.perf_counter(), time.process_time()
                # cpu_s: this process's CPU seconds since the last row (steps, checkpoints, snapshots), so
                # learning curves can be drawn against training CPU time on a shared machine
                row = {"step": done, "loss": loss.item(), "lr": self.lr_at(step), "grad_norm": float(grad_norm),
                       "img_per_s": seen / (now - t_last), "cpu_s": cpu - cpu_last, **extra}
                t_last, cpu_last, seen = now, cpu, 0
                self.log(done, row, bar, on_step)
            bar.update(1)
            if acc.is_main_process:
                self.save(done)
            acc.wait_for_everyone()
        bar.close()

    def step(self, step: int, batch: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """One optimizer step; every random draw is seeded from (seed, step, rank)."""
        cfg, acc = self.cfg, self.acc
        torch.manual_seed(_seed(cfg.seed, step, acc.process_index))
        for group, scale in zip(self.opt.param_groups, self.lr_scales):
            group["lr"] = self.lr_at(step) * scale
        batch = [b.to(acc.device, non_blocking=True) for b in batch]
        objective = self.student.dpo_loss if cfg.objective == "dpo" else self.student.loss
        with acc.autocast():
            loss, extra = objective(self.model, batch, reference=self.reference, cfg=cfg)
        if not torch.isfinite(loss.detach()).item():
            raise TrainingDiverged(f"step {step}: loss is {loss.item()}; stopping (last good checkpoint kept in "
                                   f"{self.out / 'checkpoints'})")
        acc.backward(loss)
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss, extra, grad_norm

    def log(self, done: int, row: dict[str, float], bar, on_step) -> None:
        _append_metrics(self.out / "metrics.csv", row)
        self.acc.log(row, step=done)
        bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['img_per_s']:.0f}")
        if on_step:
            on_step(done, row)

    def save(self, done: int) -> None:
        """A checkpoint every `save_every` steps and at the end; a pipeline at each of `export_steps`."""
        cfg = self.cfg
        if done % cfg.save_every == 0 or done == cfg.steps:
            write_checkpoint(self.out / "checkpoints", done, self.raw_model, self.ema, self.opt, cfg, cfg.keep_last,
                             self.acc.scaler)
        if done in cfg.export_steps:
            self.student.export(self.out / "snapshots" / f"step-{done:08d}", self.raw_model, self.ema, self.caches[0])


def export(path: Path, config: LightGenConfig, model: LightGen, ema: list[torch.Tensor], cache: FeatureCache) -> Path:
    """A pipeline directory with raw and EMA weights (samples with EMA by default)."""
    names = [n for n, _ in model.named_parameters()]
    ema_sd = {**model.state_dict(), **dict(zip(names, ema))}
    text_encoder = cache.text_encoder_path() if config.text_encoder == "tiny-t5" else None
    return write_pipeline(path, config, {"model": model.state_dict(), "model_ema": ema_sd}, "model_ema", text_encoder)


def _truncate_metrics(path: Path, start: int) -> None:
    """On resume, drop rows logged after the checkpoint so the CSV never holds a step twice."""
    if not path.is_file():
        return
    with open(path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    keep = [r for r in rows if int(r["step"]) <= start]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)


def _append_metrics(path: Path, row: dict[str, float]) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)
