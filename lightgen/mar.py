"""The LightGen generator (paper §4.1; official `FLUID` in `models/fluid_arbitrary.py`).

MAE encoder on the visible latent tokens → MAE decoder with mask tokens → text-conditioned
cross-attention stack (image tokens query the aligned T5 states) → per-token condition `z` for the
diffusion head. Parameter names match the official state dict, so official weights load strictly.

Masks are handled as index sets: `vis` (B, n) are the visible token positions, sorted. This is the
same computation as boolean indexing but needs no host-device sync while sampling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.models.embeddings import PixArtAlphaTextProjection
from torch.utils.checkpoint import checkpoint

from lightgen.config import LightGenConfig
from lightgen.diffloss import DiffLoss
from lightgen.errors import InputError


# ------------------------------------------------------------------------------------------ blocks
class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.unflatten(-1, (n, -1)).transpose(1, 2)  # (B, T, D) -> (B, H, T, D/H)


def take(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x (B, L, D) at positions rows (B, k) -> (B, k, D)."""
    return x.gather(1, rows[..., None].expand(-1, -1, x.shape[-1]))


class Attention(nn.Module):
    """timm `Attention` (fused qkv, SDPA) with timm's parameter names.

    `rel_grid` (testbed option, not official): a learned bias per head and 2-D token offset (Swin-style),
    initialised to −slope·distance² with one slope per head (0 for the first head, which stays global), so
    attention is local from step 0 instead of waiting for the learned position tables to grow and align
    with the query/key projections (a zero-initialised bias moves by ~lr per Adam step: too slow)."""

    def __init__(self, dim: int, heads: int, attn_drop: float, proj_drop: float, rel_grid: int | None = None):
        super().__init__()
        self.heads, self.attn_drop = heads, attn_drop
        self.qkv, self.proj, self.proj_drop = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), nn.Dropout(proj_drop)
        if rel_grid:
            d = torch.arange(1 - rel_grid, rel_grid, dtype=torch.float32)
            dist2 = (d[:, None] ** 2 + d[None] ** 2).flatten()
            slopes = torch.tensor([0.0] + [2.0 ** (i - (heads - 1) // 2) for i in range(heads - 1)])
            self.rel_pos_bias = nn.Parameter(-slopes[:, None] * dist2)

    def forward(self, x, rel: torch.Tensor | None = None, query: torch.Tensor | None = None):
        """`rel` (B or 1, T_q, T): offset index of each (query, key) token pair, for `rel_pos_bias`.
        `query` (a subset of x's rows): only those rows' outputs (keys and values still from all of x)."""
        if query is None:
            q, k, v = (_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        else:
            D = x.shape[-1]
            q = _heads(F.linear(query, self.qkv.weight[:D], self.qkv.bias[:D]), self.heads)
            k, v = (_heads(t, self.heads) for t in F.linear(x, self.qkv.weight[D:], self.qkv.bias[D:]).chunk(2, -1))
        bias = self.rel_pos_bias[:, rel].transpose(0, 1).to(q.dtype) if rel is not None else None
        if bias is not None and bias.shape[-2:] != (q.shape[-2], k.shape[-2]):  # tokens after the grid's (a
            bias = F.pad(bias, (0, k.shape[-2] - bias.shape[-1], 0, q.shape[-2] - bias.shape[-2]))  # prefix): none
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).flatten(2)))


class Block(nn.Module):
    """Pre-norm ViT block (timm `Block` semantics: no LayerScale, no DropPath)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, attn_drop: float, proj_drop: float,
                 rel_grid: int | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, attn_drop, proj_drop, rel_grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), proj_drop)

    def forward(self, x, rel: torch.Tensor | None = None, rows: torch.Tensor | None = None):
        """`rows` (B, k): compute only those positions' outputs (they still attend to every token)."""
        h = self.norm1(x)
        if rows is None:
            x = x + self.attn(h, rel)
        else:
            rel = None if rel is None else take(rel.expand(x.shape[0], -1, -1), rows)
            x = take(x, rows) + self.attn(h, rel, take(h, rows))
        return x + self.mlp(self.norm2(x))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int, attn_drop: float, proj_drop: float):
        super().__init__()
        self.heads, self.attn_drop = heads, attn_drop
        self.query_linear, self.kv = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        self.proj, self.proj_drop = nn.Linear(dim, dim), nn.Dropout(proj_drop)

    def forward(self, q, k, v):
        q = _heads(self.query_linear(q), self.heads)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).flatten(2)))


class CrossBlock(nn.Module):
    """Official `Attention_Block(is_cross=True)`: the residual adds the *normalised* query.
    No key-padding mask: every text position (pads included) is attended."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, attn_drop: float, proj_drop: float):
        super().__init__()
        self.normq, self.normkv = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = CrossAttention(dim, heads, attn_drop, proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), proj_drop)

    def text_kv(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the text sequence: constant across sampling steps, so cacheable."""
        k, v = self.attn.kv(self.normkv(text)).chunk(2, dim=-1)
        return _heads(k, self.attn.heads), _heads(v, self.attn.heads)

    def forward(self, x, kv):
        q = self.normq(x)
        x = q + self.attn(q, *kv)
        return x + self.mlp(self.norm2(x))


class TextEmbedder(nn.Module):
    """Trainable projection of frozen T5 states + a ViT 'text aligner' (official `text_emb`)."""

    def __init__(self, c: LightGenConfig):
        super().__init__()
        self.text_proj = PixArtAlphaTextProjection(in_features=c.caption_channels, hidden_size=c.width)
        self.text_aligner = nn.ModuleList(
            Block(c.width, c.num_heads, c.mlp_ratio, c.attn_dropout, c.proj_dropout) for _ in range(c.text_depth))
        self.text_aligner_norm = nn.LayerNorm(c.width, eps=1e-6)


@dataclass
class TextContext:
    """Per-call text conditioning: aligned states and, once computed, each cross block's K/V."""

    states: torch.Tensor  # (B, T, D) aligned text (or fake_latent rows for dropped / uncond samples)
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos table (1, grid², dim): half the channels encode the row, half the column."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    axis = torch.arange(grid, dtype=torch.float64)[:, None] * omega
    axis = torch.cat([axis.sin(), axis.cos()], dim=1)
    rows, cols = axis[:, None].expand(grid, grid, -1), axis[None].expand(grid, grid, -1)
    return torch.cat([rows, cols], dim=-1).reshape(1, grid * grid, dim).float()


# ------------------------------------------------------------------------------------------- model
class LightGen(nn.Module):
    def __init__(self, config: LightGenConfig):
        super().__init__()
        self.config = c = config
        D, n_pos = c.width, c.pos_grid ** 2
        rel_grid = c.pos_grid if c.rel_pos_bias else None
        blk = lambda: Block(D, c.num_heads, c.mlp_ratio, c.attn_dropout, c.proj_dropout, rel_grid)  # noqa: E731
        # registration order reproduces the official state_dict order
        self.last_pos_embed_learned = nn.Parameter(torch.zeros(1, n_pos, D))
        self.fake_latent = nn.Parameter(torch.zeros(1, 1, D))
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, n_pos, D))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, n_pos, D))
        self.last_embed = nn.Linear(D, D)
        self.text_emb = TextEmbedder(c)
        self.cross_attn_blocks = nn.ModuleList(
            CrossBlock(D, c.num_heads, c.mlp_ratio, c.attn_dropout, c.proj_dropout) for _ in range(c.cross_depth))
        self.cross_norm = nn.LayerNorm(D, eps=1e-6)
        self.z_proj = nn.Linear(c.token_dim, D)
        self.z_proj_ln = nn.LayerNorm(D, eps=1e-6)
        self.encoder_blocks = nn.ModuleList(blk() for _ in range(c.encoder_depth))
        self.encoder_norm = nn.LayerNorm(D, eps=1e-6)
        self.decoder_embed = nn.Linear(D, D)
        self.decoder_blocks = nn.ModuleList(blk() for _ in range(c.decoder_depth))
        self.decoder_norm = nn.LayerNorm(D, eps=1e-6)
        if c.trunk_text not in ("none", "pool", "prefix"):
            raise InputError(f"trunk_text: expected 'none', 'pool' or 'prefix', got {c.trunk_text!r}")
        if c.trunk_text != "none":  # testbed option (not official): see `_trunk_text`
            self.trunk_text_proj = nn.Linear(D, D)
        self._init_weights()
        self.diffloss = DiffLoss(c.token_dim, D, c.diffloss_width, c.diffloss_depth, c.num_sampling_steps,
                                 c.clip_sample, c.prediction, c.timestep_shift)
        self.diffloss.net.grad_checkpointing = c.grad_checkpointing

    def _init_weights(self) -> None:
        for p in (self.last_pos_embed_learned, self.fake_latent, self.encoder_pos_embed_learned,
                  self.mask_token, self.decoder_pos_embed_learned):
            nn.init.normal_(p, std=0.02)
        if self.config.pos_init == "sincos":  # position as strong as content from step 0 (testbed option)
            table = sincos_2d(self.config.pos_grid, self.config.width)
            for p in (self.encoder_pos_embed_learned, self.decoder_pos_embed_learned, self.last_pos_embed_learned):
                p.data.copy_(table)
        elif self.config.pos_init != "normal":
            raise InputError(f"pos_init: expected 'normal' or 'sincos', got {self.config.pos_init!r}")
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------------------ tokens / pos
    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, L, C·p²), row-major tokens, channel-major features (c·p² + dy·p + dx)."""
        p = self.config.patch_size
        B, C, h, w = latents.shape
        x = latents.reshape(B, C, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(B, (h // p) * (w // p), C * p * p)

    def unpatchify(self, tokens: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        p, C = self.config.patch_size, self.config.latent_channels
        x = tokens.reshape(tokens.shape[0], rows, cols, C, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(tokens.shape[0], C, rows * p, cols * p)

    def interpolate_pos(self, table: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """Official DINOv2-style rule: bicubic with a *scale factor* (n + 0.1)/grid, not a size.
        The tensor is laid out (cols, rows) as officially; this only matters for non-square grids."""
        g, off = self.config.pos_grid, self.config.interpolate_offset
        if rows * cols == g * g and rows == cols:
            return table
        t = table.reshape(1, g, g, -1).permute(0, 3, 1, 2).float()
        t = F.interpolate(t, scale_factor=((cols + off) / g, (rows + off) / g), mode="bicubic")
        assert t.shape[-2:] == (cols, rows), (t.shape, rows, cols)
        return t.permute(0, 2, 3, 1).reshape(1, rows * cols, -1).to(table.dtype)

    def positions(self, rows: int, cols: int) -> tuple[torch.Tensor, ...]:
        """Encoder, decoder and last position tables for a grid, and (with `rel_pos_bias`) the (L, L) index
        of every token pair's offset into the bias tables (offsets beyond the table are clamped)."""
        tables = tuple(self.interpolate_pos(t, rows, cols) for t in (
            self.encoder_pos_embed_learned, self.decoder_pos_embed_learned, self.last_pos_embed_learned))
        if not self.config.rel_pos_bias:
            return (*tables, None)
        g = self.config.pos_grid
        r, c = (a.flatten().to(tables[0].device) for a in torch.meshgrid(torch.arange(rows), torch.arange(cols),
                                                                         indexing="ij"))
        dr = (r[:, None] - r[None]).clamp(1 - g, g - 1) + g - 1
        dc = (c[:, None] - c[None]).clamp(1 - g, g - 1) + g - 1
        return (*tables, dr * (2 * g - 1) + dc)

    # -------------------------------------------------------------------------------------- text
    def align_text(self, text_states: torch.Tensor) -> torch.Tensor:
        """Raw text-encoder states (B, T, caption_channels) -> aligned (B, T, D)."""
        x = self.text_emb.text_proj(text_states)
        for block in self.text_emb.text_aligner:
            x = self._run(block, x)
        return self.text_emb.text_aligner_norm(x)

    def null_text(self, batch: int, length: int) -> torch.Tensor:
        """The learned null condition: `fake_latent` at every text position (bypasses the aligner)."""
        return self.fake_latent.expand(batch, length, -1)

    def text_kv(self, text: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [blk.text_kv(text) for blk in self.cross_attn_blocks]

    # ------------------------------------------------------------------------------------ trunk
    def _run(self, block: nn.Module, *args):
        if self.config.grad_checkpointing and self.training:
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def _trunk(self, tokens, vis, text: TextContext, pos, repeat: int = 1, rows: torch.Tensor | None = None
               ) -> torch.Tensor:
        """Encoder (visible tokens only) → decoder (mask tokens elsewhere) → cross stack → z.
        `repeat`: the text batch is `repeat`× the token batch (CFG's [cond ‖ uncond]); encoder and
        decoder never see the text, so they run once and their output is repeated for the cross stack.
        `rows` (B, k): return z at those positions only (B·repeat, k, D). Everything after the decoder's
        attention is per token, so the last decoder block and the cross stack run on those rows alone.

        `trunk_text` (testbed option): see `_trunk_text`."""
        extra, tokens, vis, rows, repeat = self._trunk_text(text, tokens, vis, rows, repeat)
        B, L, _ = tokens.shape
        enc_pos, dec_pos, last_pos, rel = pos
        x = self.z_proj_ln(self.z_proj(tokens) + enc_pos)
        index = vis[..., None].expand(-1, -1, x.shape[-1])
        x = x.gather(1, index)
        n_vis = x.shape[1]
        x = x if extra is None else x + extra if extra.shape[1] == 1 else torch.cat([x, extra.expand(B, -1, -1)], 1)
        enc_rel = rel[vis[:, :, None], vis[:, None, :]] if rel is not None else None  # visible pairs
        for block in self.encoder_blocks:
            x = self._run(block, x, enc_rel)
        x = self.decoder_embed(self.encoder_norm(x))
        full = self.mask_token.to(x.dtype).expand(B, L, -1).scatter(1, index, x[:, :n_vis]) + dec_pos
        x = full if extra is None else full + extra if extra.shape[1] == 1 else torch.cat([full, x[:, n_vis:]], 1)
        dec_rel = rel[None] if rel is not None else None
        n_dec = len(self.decoder_blocks)
        for i, block in enumerate(self.decoder_blocks):
            x = self._run(block, x, dec_rel, rows if i == n_dec - 1 else None)
        if rows is not None:  # (the last decoder block already kept only `rows`)
            x = x if n_dec else take(x, rows)
            last_pos = take(last_pos.expand(B, -1, -1), rows)
        else:
            x = x[:, :L]  # (without a caption prefix)
        x = self.last_embed(self.decoder_norm(x)) + last_pos
        x = x.repeat(repeat, 1, 1)
        kv = text.kv if text.kv is not None else self.text_kv(text.states)
        for block, block_kv in zip(self.cross_attn_blocks, kv):
            x = self._run(block, x, block_kv)
        return self.cross_norm(x)

    def _trunk_text(self, text: TextContext, tokens, vis, rows, repeat: int):
        """The caption's way into encoder and decoder (testbed option `trunk_text`; officially none: the caption
        enters only through the cross stack after the decoder, so encoder and decoder run once for both CFG halves).
        "pool": the projected mean of the aligned caption states, added to every encoder and decoder input token (as
        the UNet peer adds its pooled caption to the time embedding); "prefix": the projected caption states
        appended to the encoder and decoder sequences (as MAR's class-token buffer). Returns the extra input
        (B·repeat, 1 or T, D) or None, and the token batch repeated to the text batch."""
        if self.config.trunk_text == "none":
            return None, tokens, vis, rows, repeat
        states = text.states.mean(1, keepdim=True) if self.config.trunk_text == "pool" else text.states
        if repeat > 1:
            tokens, vis = tokens.repeat(repeat, 1, 1), vis.repeat(repeat, 1)
            rows = None if rows is None else rows.repeat(repeat, 1)
        return self.trunk_text_proj(states), tokens, vis, rows, 1

    @staticmethod
    def visible_index(mask: torch.Tensor) -> torch.Tensor:
        """(B, L) mask (1 = masked, equal count per sample) -> sorted visible positions (B, n_vis)."""
        mask = mask.bool()
        counts = (~mask).sum(1)
        if (counts != counts[0]).any():
            raise InputError("mask: every sample must have the same number of masked tokens")
        return (~mask).nonzero()[:, 1].view(mask.shape[0], -1)

    def forward_features(self, tokens, mask, text_states, height: int, width: int) -> torch.Tensor:
        """Per-token conditions z (B, L, D) for patchified tokens (B, L, token_dim), mask (B, L) with
        1 = masked, raw text states (B, T, caption_channels), image size in pixels. No text drop."""
        rows, cols = self.config.grid(height, width)
        text = TextContext(self.align_text(text_states))
        return self._trunk(tokens, self.visible_index(mask), text, self.positions(rows, cols))

    # --------------------------------------------------------------------------------- training
    def sample_orders(self, batch: int, length: int, device=None, generator=None) -> torch.Tensor:
        """One random permutation of token positions per sample."""
        return torch.rand(batch, length, device=device, generator=generator).argsort(dim=1)

    def sample_mask_count(self, length: int, device=None, generator=None) -> int:
        """One masking rate per batch ~ truncated normal on [mask_ratio_min, 1], mode 1, sd 0.25."""
        lo = torch.special.ndtr(torch.tensor((self.config.mask_ratio_min - 1.0) / 0.25, dtype=torch.float64))
        u = torch.rand((), dtype=torch.float64, device=device, generator=generator).cpu()
        rate = 1.0 + 0.25 * torch.special.ndtri(lo + u * (0.5 - lo))
        return int(math.ceil(length * float(rate)))

    def forward(self, latents: torch.Tensor, text_states: torch.Tensor, *, orders: torch.Tensor | None = None,
                num_masked: int | None = None, drop_text: torch.Tensor | None = None,
                t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                reduction: str = "mean", vb: bool = True, fast: bool = True) -> torch.Tensor:
        """Masked DiffLoss on normalised latents (B, C, h, w). Randomness (orders, mask count, text
        drop, timesteps, noise) is drawn here unless given, so DPO can share it across a pair.
        `t`/`noise` cover the masked rows × diffusion_batch_mul (copy-major). `reduction`: "mean" over
        all masked rows, or "none" for one value per sample (B,). `vb=False`: ε-MSE only.
        `fast=False` is the reference path: like the official code, the head runs on every token and
        the loss is masked afterwards (same expectation, more work)."""
        c = self.config
        x = self.patchify(latents)
        B, L, _ = x.shape
        rows, cols = latents.shape[-2] // c.patch_size, latents.shape[-1] // c.patch_size
        orders = self.sample_orders(B, L, x.device) if orders is None else orders
        n_mask = self.sample_mask_count(L, x.device) if num_masked is None else num_masked
        masked, vis = orders[:, :n_mask].sort(1).values, orders[:, n_mask:].sort(1).values
        text = self.align_text(text_states)
        if drop_text is None:
            drop_text = torch.rand(B, device=x.device) < c.text_drop_prob if self.training else \
                torch.zeros(B, dtype=torch.bool, device=x.device)
        text = torch.where(drop_text[:, None, None], self.null_text(B, text.shape[1]).to(text.dtype), text)
        # fast: z only where the loss looks (masked tokens); reference: everywhere, as officially
        z = self._trunk(x, vis, TextContext(text), self.positions(rows, cols), rows=masked if fast else None)
        head_rows = masked if fast else torch.arange(L, device=x.device).expand(B, L)
        mul = c.diffusion_batch_mul
        loss = self.diffloss(take(x, head_rows).flatten(0, 1).repeat(mul, 1), z.flatten(0, 1).repeat(mul, 1),
                             t, noise, vb, fast)
        loss = loss.view(mul, B, head_rows.shape[1])
        if not fast:
            weight = torch.zeros(B, L, device=x.device).scatter(1, masked, 1.0)
            loss = loss * weight * (L / n_mask)  # masked mean, as sum(loss·mask)/sum(mask)
        if reduction == "mean":
            return loss.mean()
        if reduction == "none":
            return loss.mean(dim=(0, 2))
        raise ValueError(f"reduction: expected 'mean' or 'none', got {reduction!r}")

    # --------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample_tokens(self, text_states: torch.Tensor | None, generators: list[torch.Generator], *,
                      num_iter: int = 64, guidance_scale: float = 4.0, cfg_schedule: str = "constant",
                      temperature: float = 1.0, height: int | None = None, width: int | None = None,
                      init_tokens: torch.Tensor | None = None, inpaint_mask: torch.Tensor | None = None,
                      cache: bool = True) -> torch.Tensor:
        """MAR iterative decoding with a cosine mask schedule; returns tokens (B, L, token_dim).

        Every random draw of image i comes from `generators[i]`, so an image depends only on its own
        (text, seed), not on the rest of the batch. `text_states=None` samples unconditionally.
        Inpainting: `init_tokens` (B, L, C) are kept wherever `inpaint_mask` (L,) is False; only the
        masked positions are generated. `cache=False` is the unoptimised reference path (text branch,
        cross K/V, position tables and the head's condition/time embeddings recomputed at every step;
        encoder and decoder run on the doubled CFG batch), kept to measure and test the optimised path.
        """
        c = self.config
        if num_iter < 1:
            raise InputError(f"num_inference_steps: expected >= 1, got {num_iter}")
        if guidance_scale < 0:
            raise InputError(f"guidance_scale: expected >= 0, got {guidance_scale}")
        if cfg_schedule not in ("constant", "linear"):
            raise InputError(f"cfg_schedule: expected 'constant' or 'linear', got {cfg_schedule!r}")
        height, width = height or c.resolution, width or c.resolution
        rows, cols = c.grid(height, width)
        B, L, device = len(generators), rows * cols, self.fake_latent.device
        guided = guidance_scale != 1.0

        # orders: the positions to fill, in random order per image, then the known ones
        fill = torch.ones(L, dtype=torch.bool) if inpaint_mask is None else inpaint_mask.bool().cpu().flatten()
        if fill.numel() != L:
            raise InputError(f"inpaint mask: expected {L} tokens ({rows}×{cols}), got {fill.numel()}")
        fill_pos, known_pos = fill.nonzero()[:, 0], (~fill).nonzero()[:, 0]
        n_fill = len(fill_pos)
        orders = torch.stack([torch.cat([fill_pos[torch.randperm(n_fill, generator=g, device=g.device).cpu()],
                                         known_pos]) for g in generators]).to(device)
        tokens = torch.zeros(B, L, c.token_dim, device=device) if init_tokens is None else init_tokens.clone()

        def text_context() -> TextContext:
            T = c.max_length if text_states is None else text_states.shape[1]
            cond = self.null_text(B, T) if text_states is None else self.align_text(text_states)
            states = torch.cat([cond, self.null_text(B, T)]) if guided else cond
            return TextContext(states, self.text_kv(states))

        pos = self.positions(rows, cols)
        text = text_context() if cache else None
        n_masked = n_fill
        for step in range(num_iter):
            if not cache:
                text, pos = text_context(), self.positions(rows, cols)
            if step == num_iter - 1:
                n_next = 0
            else:
                n_next = max(1, min(n_masked - 1, int(math.floor(n_fill * math.cos(math.pi / 2 * (step + 1) / num_iter)))))
            if n_masked == n_next:
                continue  # more steps than tokens: nothing to predict this step
            vis = orders[:, n_masked:].sort(1).values
            pred = orders[:, n_next:n_masked].sort(1).values
            if cache:  # encoder/decoder once for both CFG halves; z at the predicted rows only
                z = self._trunk(tokens, vis, text, pos, repeat=2 if guided else 1, rows=pred).flatten(0, 1)
            else:  # reference: the official doubled batch, z everywhere, then the predicted rows
                doubled = [torch.cat([a, a]) if guided else a for a in (tokens, vis, pred)]
                z = take(self._trunk(*doubled[:2], text, pos), doubled[2]).flatten(0, 1)
            k = n_masked - n_next
            scale = guidance_scale if cfg_schedule == "constant" else 1 + (guidance_scale - 1) * (L - n_next) / L
            randn = lambda draws: torch.cat([torch.randn(draws, k, c.token_dim, generator=g, device=g.device)  # noqa: E731
                                             for g in generators], dim=1).to(device)
            sampled = self.diffloss.sample(z, randn, scale if guided else None, temperature, fast=cache)
            tokens = tokens.scatter(1, pred[..., None].expand(-1, -1, c.token_dim), sampled.view(B, k, -1))
            n_masked = n_next
        return tokens
