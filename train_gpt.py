"""Parameter Golf training script: train a compact GPT, export it as int6 + zstd, score the reloaded artifact.

Runs as `torchrun --standalone --nproc_per_node=K train_gpt.py` (CUDA: NCCL, bf16, torch.compile; CPU: gloo, fp32,
eager) or as plain `python train_gpt.py`. Every setting is an environment variable listed in FLAGS below.
Sections follow the data: hyperparameters, data, model, optimiser, evaluation, export, training loop.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import glob
import hashlib
import json
import math
import os
import platform
import struct
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
import torch.distributed as dist
import torch.nn.functional as F
import zstandard
from torch import Tensor, nn

# ----------------------------------------------------------------------------------------------------------------
# Hyperparameters: every flag, its default and meaning, read from the environment in one place.
# ----------------------------------------------------------------------------------------------------------------

FLAGS = [  # (ENV_NAME, type, default, meaning)
    ("DATA_PATH", str, "./data/datasets/fineweb10B_sp1024", "folder with fineweb_{train,val}_*.bin shards"),
    ("TOKENIZER_PATH", str, "./data/tokenizers/fineweb_1024_bpe.model", "SentencePiece model of the shards"),
    ("RUN_ID", str, "", "name of logs/<RUN_ID>.txt|json and artifacts/<RUN_ID>.ptz (default: a uuid)"),
    ("SEED", int, 1337, "random seed (init and nothing else: the data order is fixed)"),
    ("DEVICE", str, "auto", "auto|cuda|cpu"),
    ("COMPILE", int, 1, "torch.compile the model on CUDA (never on the CPU)"),
    ("COMPILE_MODE", str, "default", "torch.compile mode: default | max-autotune-no-cudagraphs | ..."),
    # model shape
    ("VOCAB_SIZE", int, 1024, "vocabulary size; must equal the tokenizer's"),
    ("NUM_LAYERS", int, 9, "transformer blocks (U-Net skips: first half pushes, second half pops)"),
    ("MODEL_DIM", int, 512, "residual width"),
    ("NUM_HEADS", int, 8, "query heads"),
    ("NUM_KV_HEADS", int, 4, "key/value heads (GQA)"),
    ("MLP_MULT", float, 2.0, "MLP hidden width = MLP_MULT * MODEL_DIM"),
    ("TIE_EMBEDDINGS", int, 1, "share the token embedding with the output head"),
    ("TIED_EMBED_INIT_STD", float, 0.005, "init std of the tied embedding"),
    ("ROPE_BASE", float, 10000.0, "RoPE base"),
    ("LOGIT_SOFTCAP", float, 30.0, "logits = c * tanh(z / c)"),
    ("QK_GAIN_INIT", float, 1.5, "init of the per-head query gain"),
    # techniques (TECHNIQUES.md): all off by default
    ("VALUE_RESIDUAL", int, 0, "mix layer 0's values into every later layer (two scalars per layer, 0.5/0.5)"),
    ("GATED_ATTENTION", int, 0, "sigmoid gate on the attention output, W = 0, b = GATED_ATTENTION_BIAS"),
    ("GATED_ATTENTION_BIAS", float, 4.0, "gate bias init (4: sigma = 0.982, near no-op)"),
    ("GATED_ATTENTION_MODE", str, "head", "head: one gate per head; element: one per channel"),
    ("REVIEW_RESIDUAL", int, 0, "x + sigma(W[rms(x); rms(u)] + b) * u on both sublayers"),
    ("HIGHWAY", int, 0, "x + sigma(W x + b) * u on both sublayers (Review's state-only baseline)"),
    ("REVIEW_GATE", str, "lowrank", "gate size of REVIEW_RESIDUAL/HIGHWAY: full|lowrank|head|scalar"),
    ("REVIEW_RANK", int, 16, "rank of the lowrank gate"),
    ("REVIEW_BIAS_INIT", float, 0.0, "gate bias init: 0 gives 0.5 (published), 4 gives ~1 (plain-like)"),
    ("SMEAR_GATE", int, 0, "blend each position with the previous one (gate 0.5 at init; never across a BOS)"),
    ("BIGRAM_HASH", int, 0, "add a hashed embedding of (previous, current) input token"),
    ("BIGRAM_BUCKETS", int, 2048, "hash buckets of BIGRAM_HASH"),
    ("BIGRAM_DIM", int, 128, "embedding width of BIGRAM_HASH before its projection"),
    ("ORTHO_INIT", int, 0, "orthogonal init of every non-zero Linear with both dims >= 64"),
    ("XSA_LAST_N", int, 0, "exclusive self attention on the last N layers"),
    ("ROPE_DIMS", int, 0, "rotate only the first ROPE_DIMS dims of each head (0: all)"),
    ("LN_SCALE", int, 0, "scale each sublayer's normalised input by 1/sqrt(layer+1)"),
    ("EMA", int, 0, "exponential moving average of the weights, swapped in before export"),
    ("EMA_DECAY", float, 0.997, "EMA decay per step"),
    ("MUON_WD", float, 0.0, "Muon decoupled weight decay: p *= 1 - lr * wd"),
    ("ADAM_WD", float, 0.0, "Adam decoupled weight decay (AdamW) of embeddings, head and scalars"),
    ("MLP_ACT", str, "relu2", "relu2 | leaky_relu2"),
    ("MLP_LEAKY_SLOPE", float, 0.5, "negative slope of leaky_relu2"),
    # training length and batch
    ("ITERATIONS", int, 20000, "training steps (the wallclock cap may stop earlier)"),
    ("WARMUP_STEPS", int, 20, "compile warm-up steps, then weights and optimisers are reset"),
    ("WARMDOWN_ITERS", int, 1200, "linear LR warmdown length in steps (estimated from wallclock under a cap)"),
    ("TRAIN_BATCH_TOKENS", int, 524288, "tokens per optimiser step, all ranks together"),
    ("TRAIN_SEQ_LEN", int, 1024, "training sequence length"),
    ("MAX_WALLCLOCK_SECONDS", float, 600.0, "training time cap, validation excluded (0: none)"),
    ("VAL_LOSS_EVERY", int, 1000, "validate every N steps (0: only at the end)"),
    ("VAL_BATCH_SIZE", int, 524288, "tokens per validation batch, all ranks together"),
    ("TRAIN_LOG_EVERY", int, 200, "log the train loss every N steps (and the first 10)"),
    # optimiser
    ("EMBED_LR", float, 0.6, "Adam LR of an untied embedding"),
    ("HEAD_LR", float, 0.008, "Adam LR of an untied output head"),
    ("TIED_EMBED_LR", float, 0.05, "Adam LR of the tied embedding"),
    ("MATRIX_LR", float, 0.04, "Muon LR of block matrices"),
    ("SCALAR_LR", float, 0.04, "Adam LR of vectors, scalars and control tensors"),
    ("MUON_MOMENTUM", float, 0.95, "Muon momentum after warm-up"),
    ("MUON_BACKEND_STEPS", int, 5, "Newton-Schulz iterations"),
    ("MUON_MOMENTUM_WARMUP_START", float, 0.85, "Muon momentum at step 0"),
    ("MUON_MOMENTUM_WARMUP_STEPS", int, 500, "steps of the momentum warm-up"),
    ("BETA1", float, 0.9, "Adam beta1"),
    ("BETA2", float, 0.95, "Adam beta2"),
    ("ADAM_EPS", float, 1e-8, "Adam epsilon"),
    ("GRAD_CLIP_NORM", float, 0.0, "global gradient clip (0: off)"),
    # export and evaluation
    ("QUANT_BITS", int, 6, "bits per weight of large matrices: 5, 6 or 8"),
    ("QUANT_EMBED_BITS", int, 8, "bits per weight of the token embedding: 5, 6 or 8"),
    ("QUANT_MLP_BITS", int, 0, "bits per weight of MLP matrices (0: QUANT_BITS)"),
    ("ZSTD_LEVEL", int, 22, "zstd compression level of the artifact"),
    ("EVAL_SEQ_LEN", int, 0, "sliding-window length (0: TRAIN_SEQ_LEN)"),
    ("EVAL_STRIDE", int, 64, "sliding-window stride (= EVAL_SEQ_LEN: plain non-overlapping evaluation)"),
    ("EVAL_BATCH_SEQS", int, 64, "windows per evaluation batch and rank"),
    ("FLOAT_EVAL", int, 1, "also score the float model before quantisation (diagnostic)"),
    # evaluation-time methods
    ("PPMC", int, 0, "mix an online PPM-C model over token ids with the network: a * p_net + (1 - a) * p_ppm"),
    ("PPMC_ORDER", int, 2, "longest PPM context, in tokens"),
    ("PPMC_ALPHA", float, 0.95, "weight of the network (0: PPM alone)"),
    ("PPMC_EXCLUSION", int, 1, "PPM-C exclusion (0: blend the orders instead)"),
    ("PPMC_RESET", str, "never", "never | doc: clear the PPM counts after each scored BOS"),
    ("TTT", int, 0, "legal score-first test-time training on the reloaded artifact"),
    ("TTT_CHUNK_TOKENS", int, 32768, "targets per TTT chunk (score the chunk, then train on it)"),
    ("TTT_LR", float, 0.002, "TTT SGD learning rate (cosine decay over chunks)"),
    ("TTT_MOMENTUM", float, 0.9, "TTT SGD momentum"),
    ("TTT_EPOCHS", int, 3, "TTT steps per chunk"),
    ("TTT_GRAD_CLIP", float, 1.0, "TTT gradient clip (0: off)"),
    ("EVAL_ONLY", str, "", "path of an artifact: skip training, load it and run the final evaluation"),
]
KNOWN_ENV = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK",
             "ROLE_RANK", "ROLE_WORLD_SIZE", "GROUP_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "OMP_NUM_THREADS"}
ARTIFACT_LIMIT = 16_000_000


class ConfigError(ValueError):
    """A configuration or input problem, reported as one line before any work starts."""


class Hyperparameters:
    def __init__(self, values: dict):
        self.__dict__.update(values)

    @classmethod
    def from_env(cls, env=None) -> "Hyperparameters":
        env = os.environ if env is None else env
        names = [f[0] for f in FLAGS]
        for key in env:  # a near-miss of a known name is a typo, not a new flag
            if key not in names and key not in KNOWN_ENV and key.isupper():
                close = difflib.get_close_matches(key, names, n=1, cutoff=0.88)
                if close:
                    raise ConfigError(f"unknown setting {key}={env[key]!r}: did you mean {close[0]}?")
        values = {}
        for name, typ, default, _ in FLAGS:
            raw = env.get(name)
            try:
                values[name.lower()] = default if raw is None or raw == "" else typ(float(raw) if typ is int else raw)
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not a valid {typ.__name__}") from None
            if typ is int and raw not in (None, "") and float(raw) != int(float(raw)):
                raise ConfigError(f"{name}={raw!r} must be a whole number")
        args = cls(values)
        args.run_id = args.run_id or str(uuid.uuid4())
        args.eval_seq_len = args.eval_seq_len or args.train_seq_len
        return args

    def as_dict(self) -> dict:
        return {name: getattr(self, name.lower()) for name, *_ in FLAGS}


def check_config(args: Hyperparameters, world_size: int) -> None:
    a = args
    if world_size < 1 or 8 % world_size:
        raise ConfigError(f"WORLD_SIZE={world_size} must divide 8 (grad_accum_steps = 8 // WORLD_SIZE)")
    if a.model_dim % a.num_heads or a.num_heads % a.num_kv_heads or (a.model_dim // a.num_heads) % 2:
        raise ConfigError(f"MODEL_DIM={a.model_dim}, NUM_HEADS={a.num_heads}, NUM_KV_HEADS={a.num_kv_heads}: heads "
                          "must divide MODEL_DIM with an even head dim, and NUM_KV_HEADS must divide NUM_HEADS")
    micro = world_size * (8 // world_size) * a.train_seq_len
    if a.train_batch_tokens % micro:
        raise ConfigError(f"TRAIN_BATCH_TOKENS={a.train_batch_tokens} must be a multiple of 8 * TRAIN_SEQ_LEN "
                          f"= {micro} (8 micro-batches of whole sequences per step)")
    if not 0 < a.eval_stride <= a.eval_seq_len:
        raise ConfigError(f"EVAL_STRIDE={a.eval_stride} must be in 1..EVAL_SEQ_LEN={a.eval_seq_len}")
    if {a.quant_bits, a.quant_embed_bits, a.quant_mlp_bits or 6} - {5, 6, 8}:
        raise ConfigError(f"QUANT_BITS={a.quant_bits} / QUANT_EMBED_BITS={a.quant_embed_bits} / QUANT_MLP_BITS="
                          f"{a.quant_mlp_bits}: use 5, 6 or 8")
    choices = {"GATED_ATTENTION_MODE": ("head", "element"), "REVIEW_GATE": ("full", "lowrank", "head", "scalar"),
               "MLP_ACT": ("relu2", "leaky_relu2"), "PPMC_RESET": ("never", "doc"), "DEVICE": ("auto", "cuda", "cpu")}
    for name, allowed in choices.items():
        if getattr(a, name.lower()) not in allowed:
            raise ConfigError(f"{name}={getattr(a, name.lower())!r}: use one of {', '.join(allowed)}")
    if not 0 <= a.ppmc_alpha <= 1 or a.ppmc_order < 0:
        raise ConfigError(f"PPMC_ALPHA={a.ppmc_alpha} must be in [0, 1] and PPMC_ORDER={a.ppmc_order} >= 0")
    if a.eval_only and not Path(a.eval_only).is_file():
        raise ConfigError(f"EVAL_ONLY={a.eval_only} is not a file; give the path of an artifacts/<RUN_ID>.ptz")
    ranges = [("BIGRAM_BUCKETS", a.bigram_buckets >= 2, ">= 2"), ("REVIEW_RANK", a.review_rank >= 1, ">= 1"),
              ("MLP_MULT", a.mlp_mult > 0, "> 0"),
              ("XSA_LAST_N", 0 <= a.xsa_last_n <= a.num_layers, "in 0..NUM_LAYERS"),
              ("EMA_DECAY", 0 <= a.ema_decay <= 1, "in [0, 1]")]
    for name, ok, rule in ranges:
        if not ok:
            raise ConfigError(f"{name}={getattr(a, name.lower())} is out of range: it must be {rule}")
    if a.review_residual and a.highway:
        raise ConfigError("REVIEW_RESIDUAL=1 and HIGHWAY=1 are alternatives: set one")
    head_dim = a.model_dim // a.num_heads
    if a.rope_dims % 2 or not 0 <= a.rope_dims <= head_dim:
        raise ConfigError(f"ROPE_DIMS={a.rope_dims} must be even and at most the head dim {head_dim}")
    if a.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("DEVICE=cuda but no CUDA device is visible; use DEVICE=cpu")


# ----------------------------------------------------------------------------------------------------------------
# Data: shards of uint16 tokens behind a 256 x int32 header, the tokenizer's byte table, the training stream.
# ----------------------------------------------------------------------------------------------------------------

SHARD_MAGIC, SHARD_VERSION, HEADER_INTS = 20240520, 1, 256


def load_shard(path: Path, header_only: bool = False) -> np.ndarray:
    size = path.stat().st_size
    if size < HEADER_INTS * 4:
        raise ConfigError(f"shard {path} is {size} bytes, shorter than its 1024-byte header")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header[0] != SHARD_MAGIC or header[1] != SHARD_VERSION:
        raise ConfigError(f"shard {path} has magic {header[0]} version {header[1]}; expected {SHARD_MAGIC} "
                          f"version {SHARD_VERSION} (rebuild it with python -m data.prepare)")
    if size != HEADER_INTS * 4 + 2 * int(header[2]):
        raise ConfigError(f"shard {path} is {size} bytes but its header promises {header[2]} tokens "
                          f"({HEADER_INTS * 4 + 2 * int(header[2])} bytes): truncated or corrupted")
    return header if header_only else np.fromfile(path, dtype="<u2", count=int(header[2]), offset=HEADER_INTS * 4)


def shard_files(data_path: str, split: str) -> list[Path]:
    if not Path(data_path).is_dir():
        raise ConfigError(f"DATA_PATH={data_path} is not a folder; build shards with `python -m data.prepare` "
                          "or point DATA_PATH at them")
    files = sorted(Path(p) for p in glob.glob(os.path.join(data_path, f"fineweb_{split}_*.bin")))
    if not files:
        raise ConfigError(f"no fineweb_{split}_*.bin shards in {data_path}")
    return files


def load_tokenizer(args: Hyperparameters) -> spm.SentencePieceProcessor:
    if not Path(args.tokenizer_path).is_file():
        raise ConfigError(f"TOKENIZER_PATH={args.tokenizer_path} does not exist")
    sp = spm.SentencePieceProcessor(model_file=args.tokenizer_path)
    if sp.vocab_size() != args.vocab_size:
        raise ConfigError(f"tokenizer {args.tokenizer_path} has {sp.vocab_size()} pieces but VOCAB_SIZE="
                          f"{args.vocab_size}; set VOCAB_SIZE={sp.vocab_size()} or use the matching tokenizer")
    return sp


def byte_tables(sp: spm.SentencePieceProcessor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per token id: bytes of the piece without its leading '▁', whether it has that '▁', whether it is a
    boundary (control/unknown/unused: 0 bytes). Byte-fallback pieces <0xNN> are exactly 1 byte."""
    V = sp.vocab_size()
    base, space, boundary = np.zeros(V, np.int64), np.zeros(V, bool), np.zeros(V, bool)
    for i in range(V):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            boundary[i] = True
        elif sp.is_byte(i):
            base[i] = 1
        else:
            piece = sp.id_to_piece(i)
            space[i] = piece.startswith("\u2581")
            base[i] = len(piece.removeprefix("\u2581").encode("utf-8"))
    return base, space, boundary


def target_bytes(tokens: np.ndarray, tables) -> np.ndarray:
    """Bytes of each target tokens[1:]: the '▁' counts 1 only when the previous token is not a boundary."""
    base, space, boundary = tables
    prev, tgt = tokens[:-1].astype(np.int64), tokens[1:].astype(np.int64)
    return base[tgt] + (space[tgt] & ~boundary[prev])


class TokenLoader:
    """Reads the training shards in order, forever. Each micro-step takes one global chunk of
    WORLD_SIZE spans of (local_tokens + 1) tokens; rank r trains on span r, so any GPU count sees the same data."""

    def __init__(self, files: list[Path], rank: int, world_size: int, device: torch.device):
        self.files, self.rank, self.world_size, self.device = files, rank, world_size, device
        self.file_idx, self.tokens, self.pos = 0, load_shard(files[0]), 0

    def take(self, n: int) -> np.ndarray:
        parts = []
        while n > 0:
            if self.pos == len(self.tokens):
                self.file_idx = (self.file_idx + 1) % len(self.files)
                self.tokens, self.pos = load_shard(self.files[self.file_idx]), 0
            k = min(n, len(self.tokens) - self.pos)
            parts.append(self.tokens[self.pos:self.pos + k])
            self.pos, n = self.pos + k, n - k
        return np.concatenate(parts)

    def next_batch(self, batch_tokens: int, seq_len: int, grad_accum: int) -> tuple[Tensor, Tensor]:
        span = batch_tokens // (self.world_size * grad_accum) + 1
        chunk = self.take(span * self.world_size)[self.rank * span:(self.rank + 1) * span]
        t = torch.from_numpy(chunk.astype(np.int64)).to(self.device, non_blocking=True)
        return t[:-1].view(-1, seq_len), t[1:].view(-1, seq_len)


# ----------------------------------------------------------------------------------------------------------------
# Model: GPT with GQA attention, RoPE, QK-norm, relu^2 MLP, U-Net skips, tied embeddings, logit softcap.
# ----------------------------------------------------------------------------------------------------------------

CONTROL_NAMES = ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weights", "gate", "vr_lambda", "smear",
                 "bigram.scale")  # control tensors and gates: Adam at SCALAR_LR; fp32 in the export if small


def attention_kernel(device: torch.device):
    """flash-attn 3, then 2, on CUDA; PyTorch SDPA otherwise. Returns (name, fn taking (B,T,H,D) tensors)."""
    if device.type == "cuda":
        for module, name in (("flash_attn_interface", "flash_attn_3"), ("flash_attn", "flash_attn_2")):
            try:
                fa = __import__(module).flash_attn_func
            except (ImportError, AttributeError):
                continue

            def flash(q, k, v, fa=fa):
                out = fa(q.bfloat16(), k.bfloat16(), v.bfloat16(), causal=True)
                return (out[0] if isinstance(out, tuple) else out).to(q.dtype)
            return name, flash

    def sdpa(q, k, v):
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=True, enable_gqa=k.size(2) != q.size(2))
        return y.transpose(1, 2)
    return "sdpa", sdpa


ATTENTION = attention_kernel(torch.device("cpu"))  # replaced in main() once the device is known


class CastedLinear(nn.Linear):
    """fp32 master weights, cast to the activation dtype at matmul time."""

    def __init__(self, fan_in: int, fan_out: int, zero_init: bool = False):
        super().__init__(fan_in, fan_out, bias=False)
        self.zero_init = zero_init

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype))


def rms(x: Tensor) -> Tensor:
    return F.rms_norm(x, (x.size(-1),))


class Rotary(nn.Module):
    """RoPE on the first `dims` channels of each head (ROPE_DIMS; all of them by default)."""

    def __init__(self, dims: int, base: float, max_len: int):
        super().__init__()
        self.dims = dims
        inv_freq = 1.0 / base ** (torch.arange(0, dims, 2, dtype=torch.float32) / dims)
        freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", freqs.cos()[None, :, None, :], persistent=False)
        self.register_buffer("sin", freqs.sin()[None, :, None, :], persistent=False)

    def forward(self, x: Tensor) -> Tensor:  # x: (B, T, H, D)
        T, half = x.size(1), self.dims // 2
        cos, sin = self.cos[:, :T].to(x.dtype), self.sin[:, :T].to(x.dtype)
        x1, x2, rest = x[..., :half], x[..., half:self.dims], x[..., self.dims:]
        return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin, rest), dim=-1)


class Gate(nn.Module):
    """sigma(W z + b), broadcast to `width` channels. W is full (width x n_in), low-rank (width x k)(k x n_in),
    per-head (heads x n_in, one gate per head's channels) or scalar (1 x n_in). W starts at zero (low-rank: its
    output factor), b at `bias`, so the gate is exactly sigma(bias) at init."""

    def __init__(self, n_in: int, width: int, kind: str, rank: int, heads: int, bias: float):
        super().__init__()
        out = {"full": width, "lowrank": width, "head": heads, "scalar": 1}[kind]
        self.down = CastedLinear(n_in, rank) if kind == "lowrank" else nn.Identity()
        self.w = CastedLinear(rank if kind == "lowrank" else n_in, out, zero_init=True)
        self.b = nn.Parameter(torch.full((out,), float(bias)))
        self.expand = width // out if 1 < out < width else 1

    def forward(self, z: Tensor) -> Tensor:
        g = torch.sigmoid(self.w(self.down(z)) + self.b.to(z.dtype))
        return g.repeat_interleave(self.expand, dim=-1) if self.expand > 1 else g


class Plain(nn.Module):
    """The plain residual update x + u (also: no gate, no value mixing, no XSA, where a hook is unused)."""

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        return x + u


class Review(nn.Module):
    """REVIEW_RESIDUAL: x + sigma(W_r [rms(x); rms(u)] + b_r) * u, the gate conditioned on the update itself."""

    def __init__(self, args: Hyperparameters):
        super().__init__()
        d = args.model_dim
        self.gate = Gate(2 * d, d, args.review_gate, args.review_rank, args.num_heads, args.review_bias_init)

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        return x + self.gate(torch.cat((rms(x), rms(u)), dim=-1)) * u


class Highway(nn.Module):
    """HIGHWAY: the state-only additive gate x + sigma(W_g x + b_g) * u."""

    def __init__(self, args: Hyperparameters):
        super().__init__()
        d = args.model_dim
        self.gate = Gate(d, d, args.review_gate, args.review_rank, args.num_heads, args.review_bias_init)

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        return x + self.gate(x) * u


def residual_rule(args: Hyperparameters) -> nn.Module:
    return Review(args) if args.review_residual else Highway(args) if args.highway else Plain()


class ValueResidual(nn.Module):
    """VALUE_RESIDUAL: v = lambda0 * v0 + lambda1 * v with layer 0's raw values v0 (init 0.5, 0.5)."""

    def __init__(self):
        super().__init__()
        self.vr_lambda = nn.Parameter(torch.full((2,), 0.5))

    def forward(self, v: Tensor, v0: Tensor | None) -> Tensor:
        if v0 is None:  # layer 0 produces v0; its pair is unused (published count), tied in with weight 0 for DDP
            return v + 0.0 * self.vr_lambda.sum().to(v.dtype)
        lam = self.vr_lambda.to(v.dtype)
        return lam[0] * v0 + lam[1] * v


class KeepValues(nn.Module):
    def forward(self, v: Tensor, v0: Tensor | None) -> Tensor:
        return v


def exclusive(y: Tensor, v: Tensor) -> Tensor:
    """XSA: remove from each head's output its component along its own (normalised) value vector."""
    v_hat = F.normalize(v, dim=-1).repeat_interleave(y.size(2) // v.size(2), dim=2)
    return y - (y * v_hat).sum(-1, keepdim=True) * v_hat


class Attention(nn.Module):
    def __init__(self, args: Hyperparameters, layer: int, max_len: int):
        super().__init__()
        d, self.h, self.kv = args.model_dim, args.num_heads, args.num_kv_heads
        self.hd = d // self.h
        self.c_q = CastedLinear(d, d)
        self.c_k = CastedLinear(d, self.kv * self.hd)
        self.c_v = CastedLinear(d, self.kv * self.hd)
        self.proj = CastedLinear(d, d, zero_init=True)
        self.q_gain = nn.Parameter(torch.full((self.h,), args.qk_gain_init))
        self.rotary = Rotary(args.rope_dims or self.hd, args.rope_base, max_len)
        self.values = ValueResidual() if args.value_residual else KeepValues()
        self.xsa = exclusive if layer >= args.num_layers - args.xsa_last_n else (lambda y, v: y)
        mode = {"head": "head", "element": "full"}[args.gated_attention_mode]
        self.out_gate = Gate(d, d, mode, 0, self.h, args.gated_attention_bias) if args.gated_attention else None

    def forward(self, a: Tensor, v0: Tensor | None) -> tuple[Tensor, Tensor]:
        """a: the normalised sublayer input. Returns the projected output and this layer's raw values."""
        B, T, _ = a.shape
        q = rms(self.c_q(a).view(B, T, self.h, self.hd))
        k = rms(self.c_k(a).view(B, T, self.kv, self.hd))
        raw_v = self.c_v(a).view(B, T, self.kv, self.hd)
        v = self.values(raw_v, v0)
        q = self.rotary(q) * self.q_gain.to(a.dtype)[:, None]
        y = self.xsa(ATTENTION[1](q, self.rotary(k), v), v).reshape(B, T, -1)
        return self.proj(y if self.out_gate is None else y * self.out_gate(a)), raw_v


class MLP(nn.Module):
    def __init__(self, args: Hyperparameters):
        super().__init__()
        hidden = int(args.mlp_mult * args.model_dim)
        self.fc = CastedLinear(args.model_dim, hidden)
        self.proj = CastedLinear(hidden, args.model_dim, zero_init=True)
        slope = args.mlp_leaky_slope
        self.act = {"relu2": lambda z: torch.relu(z).square(),
                    "leaky_relu2": lambda z: F.leaky_relu(z, slope).square()}[args.mlp_act]

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    def __init__(self, args: Hyperparameters, layer: int, max_len: int):
        super().__init__()
        d = args.model_dim
        self.attn, self.mlp = Attention(args, layer, max_len), MLP(args)
        self.attn_scale = nn.Parameter(torch.ones(d))
        self.mlp_scale = nn.Parameter(torch.ones(d))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(d), torch.zeros(d))))
        self.attn_res, self.mlp_res = residual_rule(args), residual_rule(args)
        self.ln = 1 / math.sqrt(layer + 1) if args.ln_scale else 1.0  # LN_SCALE

    def forward(self, x: Tensor, x0: Tensor, v0: Tensor | None) -> tuple[Tensor, Tensor]:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        u, v = self.attn(rms(x) * self.ln, v0)
        x = self.attn_res(x, self.attn_scale.to(x.dtype) * u)
        return self.mlp_res(x, self.mlp_scale.to(x.dtype) * self.mlp(rms(x) * self.ln)), v


class BigramHash(nn.Module):
    """BIGRAM_HASH: bucket (36313 t_i XOR 27191 t_{i-1}) mod (B-1) (position 0: B-1) -> Embedding(B, dim), zero
    init -> Linear(dim, d) -> times a learned scale (init 0.05), added to the token embedding. Inputs only."""

    def __init__(self, args: Hyperparameters):
        super().__init__()
        self.buckets = args.bigram_buckets
        self.embed = nn.Embedding(self.buckets, args.bigram_dim)
        nn.init.zeros_(self.embed.weight)
        self.proj = CastedLinear(args.bigram_dim, args.model_dim)
        self.scale = nn.Parameter(torch.tensor(0.05))

    def forward(self, x: Tensor, idx: Tensor) -> Tensor:
        h = torch.bitwise_xor(36313 * idx[:, 1:], 27191 * idx[:, :-1]) % (self.buckets - 1)
        h = torch.cat((torch.full_like(idx[:, :1], self.buckets - 1), h), dim=1)
        return x + self.scale.to(x.dtype) * self.proj(self.embed(h).to(x.dtype))


class SmearGate(nn.Module):
    """SMEAR_GATE: x_t = (1 - g) x_t + g x_{t-1}, g = sigma(w) per channel (w = 0: g = 0.5). The previous position
    is zero at position 0 and at every BOS, so nothing smears across a document start."""

    def __init__(self, args: Hyperparameters):
        super().__init__()
        self.smear = nn.Parameter(torch.zeros(args.model_dim))
        self.bos = 1

    def forward(self, x: Tensor, idx: Tensor) -> Tensor:
        prev = F.pad(x[:, :-1], (0, 0, 1, 0)) * (idx != self.bos)[..., None].to(x.dtype)
        g = torch.sigmoid(self.smear.to(x.dtype))
        return (1 - g) * x + g * prev


class GPT(nn.Module):
    def __init__(self, args: Hyperparameters):
        super().__init__()
        max_len = max(args.train_seq_len, args.eval_seq_len)
        self.softcap = args.logit_softcap
        self.tok_emb = nn.Embedding(args.vocab_size, args.model_dim)
        self.bigram = BigramHash(args) if args.bigram_hash else None
        self.smear = SmearGate(args) if args.smear_gate else None
        self.blocks = nn.ModuleList(Block(args, i, max_len) for i in range(args.num_layers))
        self.num_enc = args.num_layers // 2
        self.skip_weights = nn.Parameter(torch.ones(min(self.num_enc, args.num_layers - self.num_enc),
                                                    args.model_dim))
        self.lm_head = None if args.tie_embeddings else CastedLinear(args.model_dim, args.vocab_size, True)
        if args.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, std=args.tied_embed_init_std)
        for m in self.modules():
            if isinstance(m, CastedLinear) and m.zero_init:
                nn.init.zeros_(m.weight)
            elif isinstance(m, CastedLinear) and args.ortho_init and min(m.weight.shape) >= 64:
                nn.init.orthogonal_(m.weight)  # output projections are zero-initialised: no 1/sqrt(2L) needed

    def hidden(self, idx: Tensor) -> Tensor:
        """Final normalised hidden states (B, T, d); the head is applied separately so that evaluation can
        send only the scored positions through it."""
        x = self.tok_emb(idx)
        if torch.is_autocast_enabled(x.device.type):  # bf16 residual stream under autocast (fp32 master weights)
            x = x.to(torch.get_autocast_dtype(x.device.type))
        x = rms(x if self.bigram is None else self.bigram(x, idx))
        x = x0 = x if self.smear is None else self.smear(x, idx)
        skips, v0 = [], None
        for i, block in enumerate(self.blocks):
            if i >= self.num_enc and skips:
                x = x + self.skip_weights[i - self.num_enc].to(x.dtype) * skips.pop()
            x, v = block(x, x0, v0)
            v0 = v if v0 is None else v0
            if i < self.num_enc:
                skips.append(x)
        return rms(x)

    def logits(self, h: Tensor) -> Tensor:
        z = F.linear(h, self.tok_emb.weight.to(h.dtype)) if self.lm_head is None else self.lm_head(h)
        z = z.float() if z.dtype in (torch.bfloat16, torch.float16) else z  # float64 stays float64 (probes)
        return self.softcap * torch.tanh(z / self.softcap)

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> Tensor:
        logits = self.logits(self.hidden(idx))
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def build_model(args: Hyperparameters) -> GPT:
    torch.manual_seed(args.seed)
    return GPT(args)


def count_params(env) -> int:
    """Exact parameter count of a configuration, built on the meta device (no memory, no GPU)."""
    with torch.device("meta"):
        return sum(p.numel() for p in GPT(Hyperparameters.from_env(env)).parameters())


# ----------------------------------------------------------------------------------------------------------------
# Optimiser: Muon (Newton-Schulz orthogonalised Nesterov momentum) for block matrices, Adam for the rest.
# ----------------------------------------------------------------------------------------------------------------

def newton_schulz(G: Tensor, steps: int) -> Tensor:
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.to(torch.bfloat16 if G.is_cuda else torch.float32)
    X = X / (X.norm() + 1e-7)
    transposed = X.size(0) > X.size(1)
    if transposed:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if transposed else X


class Muon(torch.optim.Optimizer):
    """Each rank orthogonalises every WORLD_SIZE-th matrix; one all-reduce shares the updates."""

    def __init__(self, params, lr: float, momentum: float, backend_steps: int, wd: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, backend_steps=backend_steps, wd=wd))

    @torch.no_grad()
    def step(self):
        distributed = dist.is_available() and dist.is_initialized()
        world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        for group in self.param_groups:
            params = group["params"]
            flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device,
                               dtype=torch.bfloat16 if params[0].is_cuda else torch.float32)
            offset = 0
            for i, p in enumerate(params):
                if i % world == rank and p.grad is not None:
                    buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                    buf.mul_(group["momentum"]).add_(p.grad)
                    g = newton_schulz(p.grad.add(buf, alpha=group["momentum"]), group["backend_steps"])
                    flat[offset:offset + p.numel()] = g.flatten() * max(1, p.size(0) / p.size(1)) ** 0.5
                offset += p.numel()
            if distributed:
                dist.all_reduce(flat)
            offset = 0
            for p in params:
                if group["wd"]:
                    p.mul_(1 - group["lr"] * group["wd"])
                p.add_(flat[offset:offset + p.numel()].view_as(p).to(p.dtype), alpha=-group["lr"])
                offset += p.numel()


def build_optimizers(model: GPT, args: Hyperparameters) -> tuple[list[torch.optim.Optimizer], Muon]:
    """Embeddings (token, bigram) and the untied head: Adam at their LRs; 2-D matrices: Muon; the rest: Adam."""
    groups = {"embed": [], "head": [], "matrix": [], "scalar": []}
    for name, p in model.named_parameters():
        kind = ("embed" if name in ("tok_emb.weight", "bigram.embed.weight") else "head" if name.startswith("lm_head")
                else "matrix" if p.ndim == 2 and not any(c in name for c in CONTROL_NAMES) else "scalar")
        groups[kind].append(p)
    fused = next(model.parameters()).is_cuda

    def adam(params, lr):
        return torch.optim.AdamW([dict(params=params, lr=lr, base_lr=lr)], betas=(args.beta1, args.beta2),
                                 eps=args.adam_eps, weight_decay=args.adam_wd, fused=fused)
    muon = Muon(groups["matrix"], args.matrix_lr, args.muon_momentum, args.muon_backend_steps, args.muon_wd)
    for g in muon.param_groups:
        g["base_lr"] = args.matrix_lr
    opts = [adam(groups["embed"], args.tied_embed_lr if args.tie_embeddings else args.embed_lr), muon,
            adam(groups["scalar"], args.scalar_lr)]
    if groups["head"]:
        opts.append(adam(groups["head"], args.head_lr))
    return opts, muon


# ----------------------------------------------------------------------------------------------------------------
# Evaluation: exact sliding-window scoring. Every target tokens[1..N-1] is scored exactly once; windows have
# length L and each later one scores only the targets the previous ones did not reach (at most `stride`), so every
# scored token sees at least L - stride tokens of context. Only scored positions go through the output head.
# ----------------------------------------------------------------------------------------------------------------

def windows(n_tokens: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(input start, first scored target, last scored target + 1) in target positions of the token stream."""
    out, done = [], 1
    end = min(seq_len, n_tokens - 1)
    while done < n_tokens:
        out.append((max(end - seq_len, 0), done, end + 1))
        done, end = end + 1, min(end + stride, n_tokens - 1)
    return out


def autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def window_nll(model: GPT, tokens: Tensor, wins: list[tuple[int, int, int]], batch_seqs: int) -> Tensor:
    """Per-target NLL (float64) of the targets scored by `wins`, in window order."""
    device, out = tokens.device, []
    w = torch.tensor(wins, dtype=torch.long, device=device).view(-1, 3)
    ar = torch.arange(int(w[0, 2] - 1 - w[0, 0]) if len(wins) else 0, device=device)  # all windows: same length
    for i in range(0, len(w), batch_seqs):
        s, a, e = w[i:i + batch_seqs].unbind(1)
        if len(w) > batch_seqs and s.numel() < batch_seqs:  # pad the last batch (one shape for compiled code)
            s, a, e = (F.pad(t, (0, batch_seqs - t.numel()), value=int(t[-1])) for t in (s, a, e))
            a = torch.where(torch.arange(batch_seqs, device=device) < len(w) - i, a, e)  # pads score nothing
        idx = s[:, None] + ar
        scored = (ar >= (a - 1 - s)[:, None]) & (ar < (e - 1 - s)[:, None])
        with autocast(device):
            h = model.hidden(tokens[idx])[scored]
        logp = torch.log_softmax(model.logits(h), dim=-1)
        out.append(-logp.gather(1, tokens[idx + 1][scored][:, None]).squeeze(1).double())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64, device=device)


def score_nll(model: GPT, tokens: Tensor, seq_len: int, stride: int, batch_seqs: int = 32) -> Tensor:
    """Negative log-likelihood in nats of tokens[1:], each scored once: the kit's scoring function."""
    model.eval()
    return window_nll(model, tokens, windows(tokens.numel(), seq_len, stride), batch_seqs)


@torch.no_grad()
def score_distribution(model: GPT, tokens: Tensor, positions, seq_len: int, stride: int) -> Tensor:
    """Full log-probabilities (float64, [P, V]) for each target position, with the scorer's own context."""
    model.eval()
    wins, out = windows(tokens.numel(), seq_len, stride), []
    for p in positions:
        s, a, e = next(w for w in wins if w[1] <= p < w[2])
        with autocast(tokens.device):
            h = model.hidden(tokens[None, s:e - 1])[0, p - 1 - s]
        out.append(torch.log_softmax(model.logits(h).double(), dim=-1))
    return torch.stack(out)


def sliding_eval(model: GPT, tokens: Tensor, args: Hyperparameters, rank: int, world_size: int,
                 seq_len: int = 0, stride: int = 0) -> tuple[Tensor, Tensor]:
    """This rank's share of the sliding windows: (target positions, NLLs)."""
    model.eval()
    wins = windows(tokens.numel(), seq_len or args.eval_seq_len, stride or args.eval_stride)
    mine = wins[len(wins) * rank // world_size:len(wins) * (rank + 1) // world_size]
    nll = window_nll(model, tokens, mine, args.eval_batch_seqs)
    model.train()
    return window_positions(mine, tokens.device), nll


def window_positions(wins: list[tuple[int, int, int]], device: torch.device) -> Tensor:
    w = torch.tensor(wins, dtype=torch.long, device=device).view(-1, 3)
    counts = w[:, 2] - w[:, 1]
    offsets = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    return torch.repeat_interleave(w[:, 1], counts) + torch.arange(int(counts.sum()), device=device) - offsets


def reduce_score(pos: Tensor, nll: Tensor, val_bytes: Tensor) -> tuple[float, float]:
    """(val_loss, val_bpb) over the positions scored by all ranks; val_bytes[p - 1] is target p's byte count."""
    totals = torch.stack([nll.sum(), torch.tensor(float(nll.numel()), dtype=torch.float64, device=nll.device),
                          val_bytes[pos - 1].sum().to(torch.float64)])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    loss = (totals[0] / totals[1]).item()
    return loss, loss / math.log(2) * (totals[1] / totals[2]).item()


def mix_nll(nll_net: Tensor, p_ppm: Tensor, alpha: float) -> Tensor:
    """PPMC mixing in probability space: -log(alpha * p_net + (1 - alpha) * p_ppm). alpha is a constant."""
    return -torch.log(alpha * torch.exp(-nll_net) + (1 - alpha) * p_ppm)


class TTTLedger:
    """No-op ledger; the compliance probe passes one that records every scored and trained target position."""

    def scored(self, positions: Tensor) -> None: ...

    def trained(self, positions: Tensor) -> None: ...


def ttt_eval(model: GPT, tokens: Tensor, args: Hyperparameters, rank: int, world_size: int,
             ledger: TTTLedger = TTTLedger()) -> tuple[Tensor, Tensor]:
    """Legal score-first test-time training. The sliding windows are grouped into chunks of TTT_CHUNK_TOKENS
    targets; each chunk is first scored under no_grad (and added to the totals), then, unless it is the last one,
    the model trains on exactly the targets just scored: TTT_EPOCHS SGD steps, cosine LR over chunks."""
    wins = windows(tokens.numel(), args.eval_seq_len, args.eval_stride)
    chunks: dict[int, list] = {}
    for w in wins:
        chunks.setdefault((w[1] - 1) // args.ttt_chunk_tokens, []).append(w)
    chunks = list(chunks.values())
    params = list(model.parameters())
    for p in params:  # explicit zeros: a rank with nothing to train still joins the gradient all-reduce
        p.grad = torch.zeros_like(p)
    opt = torch.optim.SGD(params, lr=args.ttt_lr, momentum=args.ttt_momentum)
    distributed = dist.is_available() and dist.is_initialized()
    all_pos, all_nll, L = [], [], args.eval_seq_len
    for c, chunk in enumerate(chunks):
        mine = chunk[len(chunk) * rank // world_size:len(chunk) * (rank + 1) // world_size]
        model.eval()
        nll = window_nll(model, tokens, mine, args.eval_batch_seqs)  # 1. score
        pos = window_positions(mine, tokens.device)
        all_pos.append(pos)
        all_nll.append(nll)
        ledger.scored(pos)
        if c == len(chunks) - 1:
            break
        lo, hi = chunk[0][1], chunk[-1][2]  # 2. train on targets lo..hi-1, all scored above (by some rank)
        starts = torch.arange(lo, hi, L, device=tokens.device)[rank::world_size]
        full, tail = starts[starts + L <= hi], starts[starts + L > hi]  # whole sequences, then the short tail
        for g in opt.param_groups:
            g["lr"] = args.ttt_lr * 0.5 * (1 + math.cos(math.pi * c / max(len(chunks) - 1, 1)))
        model.train()
        for _ in range(args.ttt_epochs):
            opt.zero_grad(set_to_none=False)
            for batch, n in ((full, L), (tail, hi - int(tail.max()) if tail.numel() else 0)):
                if batch.numel() == 0:
                    continue
                tgt = batch[:, None] + torch.arange(n, device=tokens.device)  # target positions
                with autocast(tokens.device):
                    logits = model(tokens[tgt - 1])
                loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[tgt].flatten(), reduction="sum")
                (loss / (hi - lo)).backward()
                ledger.trained(tgt.flatten())
            if distributed:  # one all-reduce of all gradients
                flat = torch.cat([p.grad.flatten() for p in params])
                dist.all_reduce(flat)
                for p, g in zip(params, flat.split([p.numel() for p in params])):
                    p.grad.copy_(g.view_as(p))
            if args.ttt_grad_clip > 0:
                nn.utils.clip_grad_norm_(params, args.ttt_grad_clip)
            opt.step()
    model.eval()
    return torch.cat(all_pos), torch.cat(all_nll)


def ttt_score_nll(model: GPT, tokens: Tensor, args: Hyperparameters, ledger: TTTLedger = TTTLedger()) -> Tensor:
    """Single-process TTT scoring: NLL of tokens[1:] in stream order (float64)."""
    pos, nll = ttt_eval(model, tokens, args, 0, 1, ledger)
    return torch.empty_like(nll).index_copy_(0, pos - 1, nll)


# ----------------------------------------------------------------------------------------------------------------
# PPM-C context mixer (PPMC=1): p = alpha * p_net + (1 - alpha) * p_ppm over the val stream, causally.
# Token t uses the contexts of orders min(ORDER, t')..0 (t' = tokens counted since the last reset), then order -1
# (uniform over the vocabulary). A seen context with counts c, total n and q distinct symbols gives P(x) = c(x)/(n+q)
# and escape q/(n+q); an unseen order, or one left empty by exclusion, is skipped at no cost. Exclusion: symbols of
# the higher orders used leave c, n and q of the lower ones; an order whose symbols, with those above it, cover the
# whole vocabulary gets no escape (order -1 would be empty), so every distribution sums to 1. PPMC_EXCLUSION=0
# blends instead: P_k(x) = (c_k(x) + q_k P_{k-1}(x)) / (n_k + q_k). Every order's counts are updated after the token
# is scored; token 0 is counted, never scored; PPMC_RESET=doc clears all counts after a scored BOS, then counts it.
#
# How (exact, vectorised, no per-token loop): the order-k context of t is an integer id: order 0 = the segment (0
# unless PPMC_RESET=doc; the count of a BOS goes to the new one), order k = the dense id of the order-(k-1)
# (context, symbol) pair at t-1. One sort of (context * V + symbol, position) per order gives c_k(t) (earlier
# occurrences of the pair), the pair ids and, shifted by one position, every order-(k+1) context's occurrences in
# time order: n_{k+1}(t) = c_k(t-1), q_{k+1}(t) = first occurrences of pairs so far within that context's run.
# Exclusion needs X_k(t) = sum of c_k(y; t) over y in S_{k+1}(t), the symbols of the order-(k+1) context (nesting
# makes it the whole exclusion set of order k): n'_k = n_k - X_k, q'_k = q_k - q_{k+1}. It is needed where that
# context was seen but did not offer x_t, i.e. at each context's new symbols, so a context ending with q symbols
# costs q^2/2 look-ups "occurrences of (ctx_k(t), y) before t" (text: 5-10 per token at ORDER=2; i.i.d. random
# tokens: ~40), answered chunk by chunk by one sort of the occurrences and look-ups together (_lookup_sums). Orders
# are folded into p bottom-up (_fold) as soon as X and the next q are known, so at most two orders are in memory.
# ----------------------------------------------------------------------------------------------------------------


def _sort_by_key(key: np.ndarray, pos: np.ndarray, nb: int):
    """Positions (increasing, < 2**nb) sorted by (key, position), and flags at the first of each run of equal keys.
    Overwrites key."""
    if key.size == 0 or int(key.max()).bit_length() + nb <= 63:  # packed int64: a plain (SIMD) sort
        key <<= nb
        key |= pos
        key.sort()
        sp = np.empty(key.size, np.int32)
        np.bitwise_and(key, (1 << nb) - 1, out=sp, casting="unsafe")
        key >>= nb
    else:
        o = np.argsort(key, kind="stable")
        key, sp = key[o], pos[o]
    new = np.ones(key.size, bool)
    np.not_equal(key[1:], key[:-1], out=new[1:])
    return sp, new


def _unpack(packed: np.ndarray):
    """(hi, lo) as int32 from int64 values hi << 32 | lo (both in [0, 2**31)). Overwrites packed."""
    lo = np.empty(packed.size, np.int32)
    np.bitwise_and(packed, 0xFFFFFFFF, out=lo, casting="unsafe")
    packed >>= 32
    return packed.astype(np.int32), lo


def _lookup_sums(ev_pos, ev_pair, n_pairs, tq, rank, lp, o, cnt, nb, chunk=1 << 20):
    """For each query i (positions tq, increasing): the summed occurrences before tq[i] of the pairs
    lp[o_i], ..., lp[o_i + cnt_i - 1] among the events (positions ev_pos, increasing; pair ids ev_pair).
    Chunks of queries keep the arrays small: `seen` counts every pair's events before the chunk, and within it one
    sort of events (pair, 2*local rank) and look-ups (pair, 2*local query + 1) puts each look-up just after the
    events of its pair that precede it (rank[j]: queries at positions <= j)."""
    X, seen = np.zeros(tq.size), np.zeros(n_pairs, np.int64)
    evb = np.searchsorted(ev_pos, tq)  # events before each query
    cost = np.cumsum(cnt + np.diff(evb, prepend=0))
    i0 = e0 = 0
    while i0 < tq.size:
        i1 = max(i0 + 1, int(np.searchsorted(cost, (cost[i0 - 1] if i0 else 0) + chunk, "right")))
        e1, c = int(evb[i1 - 1]), cnt[i0:i1]
        g = ev_pair[e0:e1].astype(np.int64)
        idx = np.repeat(o[i0:i1] - np.cumsum(c) + c, c)
        idx += np.arange(idx.size)
        a = np.concatenate(((g << (nb + 1)) | ((rank[ev_pos[e0:e1]] - i0) << 1),
                            (lp[idx].astype(np.int64) << (nb + 1)) | np.repeat(2 * np.arange(i1 - i0) + 1, c)))
        a.sort()
        ev = 1 - (a & 1)
        before = np.cumsum(ev) - ev  # events before each element ...
        pair = a >> (nb + 1)
        new = np.ones(a.size, bool)
        np.not_equal(pair[1:], pair[:-1], out=new[1:])
        before -= np.maximum.accumulate(np.where(new, before, 0))  # ... within its pair's run
        m = np.flatnonzero(a & 1)
        X[i0:i1] = np.bincount((a[m] >> 1) & ((1 << nb) - 1), weights=before[m] + seen[pair[m]], minlength=i1 - i0)
        np.add.at(seen, g, 1)
        i0, e0 = i1, e1
    return X


def _fold(R: np.ndarray, c, m, q, q_up, V: int, exclusion: bool) -> np.ndarray:
    """Order k over R = p(x_t) from the orders below it, in place. c, q: the count of x_t and the distinct symbols
    of the order-k context; m: its total n (exclusion: n - X); q_up: order k+1's q. Exclusion: a hit replaces R, a
    miss escapes to it (the product of escapes, top order down); blending: P_k = (c + q P_{k-1}) / (n + q)."""
    if not exclusion:
        P = q * R
        P += c
        P /= np.maximum(m + q, 1)
        np.copyto(R, P, where=m > 0)
        return R
    qe = q - q_up  # the symbols order k adds to order k+1's
    esc = np.where(q < V, qe, 0)  # no escape once the whole vocabulary is excluded (sums to 1)
    P = esc * R
    np.copyto(P, c, where=c > 0)
    P /= np.maximum(m + esc, 1)
    np.copyto(R, P, where=qe > 0)
    return R


def ppm_target_probs(tokens: np.ndarray, vocab_size: int, order: int = 2, exclusion: bool = True,
                     reset_doc: bool = False, bos_id: int = 1) -> np.ndarray:
    """p_ppm(tokens[t]) for t = 1..N-1 (float64 [N-1]); uses tokens < t only. About 105 bytes of memory a token."""
    x = np.asarray(tokens)
    N, V = x.size, int(vocab_size)
    if N < 2:
        return np.zeros(0)
    if x.min() < 0 or x.max() >= V or N >= 2 ** 31:
        raise ValueError(f"PPM: tokens must lie in [0, {V}) and number fewer than 2**31")
    x = x.astype(np.int32)
    pos = np.arange(N + 1, dtype=np.int32)  # index N: a dummy, never-valid position
    nb = max(1, N.bit_length())
    sq, ctx = 0, np.zeros(N, np.int32)  # segment start of token t; order-0 context of a count at t: its segment
    if reset_doc:
        isb = (x == bos_id) & (pos[:N] >= 1)
        sq = np.concatenate(([0], np.maximum.accumulate(np.where(isb, pos[:N], 0)))).astype(np.int32)
        ctx = np.cumsum(isb, dtype=np.int32)  # (a scored BOS opens the next segment)
    for k in range(order + 1):
        valid = pos - k >= sq  # the order-k context of t lies inside t's segment
        valid[N] = False
        vp = np.flatnonzero(valid).astype(np.int32)
        key = ctx[vp].astype(np.int64)
        del ctx
        key *= V
        key += x[vp]
        sp, new = _sort_by_key(key, vp, nb)
        del key
        gid = np.cumsum(new, dtype=np.int32) - 1  # the dense id of each (context, symbol) pair
        starts = np.flatnonzero(new).astype(np.int32)
        w = np.arange(sp.size, dtype=np.int32) - starts[gid]  # earlier occurrences of the pair, in sorted order
        n_pairs = starts.size
        del starts
        cp = np.zeros(N + 1, np.int64)  # (pair id, count) packed: one scatter into time order
        cp[sp] = (gid.astype(np.int64) << 32) | w
        del gid
        pid, ck = _unpack(cp)
        del cp
        first = valid & (ck == 0)  # the pair's first occurrence: its context gains a symbol
        if k == 0:
            cs = np.concatenate(([0], np.cumsum(first[:N], dtype=np.int32)))
            nk, qk = pos - sq, cs - cs[sq]
            if reset_doc:  # a scored BOS still sees the old segment: its count is of BOS tokens in [sq, t)
                cb = np.concatenate(([0], np.cumsum(x == bos_id, dtype=np.int32)))
                ck[:N][isb] = (cb[:N] - cb[sq[:N]])[isb]
            R = np.full(N + 1, 1.0 / V) if not exclusion else 1.0 / np.maximum(V - qk, 1)  # order -1
        else:
            tt = psp + 1  # occurrences of each order-k context (= order-(k-1) pair at t-1), in time order
            f = first[tt]
            cs = np.cumsum(f, dtype=np.int32)
            cs -= f  # first occurrences of (context, symbol) pairs before, running over contexts
            base = np.maximum.accumulate(np.where(pnew, cs, 0))  # ... at the start of this context's run
            nq = np.zeros(N + 1, np.int64)  # (n, q) packed, scattered to time order
            nq[tt] = (pw.astype(np.int64) << 32) | (cs - base)
            del cs, psp, pw, pnew
            nq *= valid  # (a pair that straddles a reset is no context)
            nk, qk = _unpack(nq)
            del nq
            if exclusion:  # X_{k-1}(t): the order-(k-1) counts of the symbols the order-k context excludes
                need = first & (nk > 0)  # the order-k context was seen and did not offer x_t
                tq = np.flatnonzero(need)
                lp = ppid[tt[f]]  # each order-k context's symbols in first-seen order, as order-(k-1) pair ids
                off = np.zeros(N + 1, np.int32)
                off[tt] = base  # where each context's list starts in lp
                off = off[tq].astype(np.int64)
            del tt, f, base
            if exclusion:
                pn[tq] -= _lookup_sums(pvp, ppid[pvp], pn_pairs, tq, np.cumsum(need, dtype=np.int32), lp, off,
                                       qk[tq].astype(np.int64), nb).astype(np.int32)
                del need, tq, lp, off
            del pvp, ppid
            R = _fold(R, pc, pn, pq, qk, V, exclusion)  # order k-1, now that X_{k-1} and q_k are known
        pc, pn, pq = ck, nk, qk
        pvp, psp, pnew, ppid, pw, pn_pairs = vp, sp, new, pid, w, n_pairs  # order k, for order k+1
        ctx = np.concatenate(([0], pid[:N])).astype(np.int32)  # order-(k+1) context of t = order-k pair id at t-1
    return _fold(R, pc, pn, pq, 0, V, exclusion)[1:N]


def ppm_distribution(tokens: np.ndarray, t: int, vocab_size: int, order: int = 2, exclusion: bool = True,
                     reset_doc: bool = False, bos_id: int = 1) -> np.ndarray:
    """The full PPM distribution (float64 [V]) for token index t >= 1, from tokens < t (direct, slow)."""
    x, V = np.asarray(tokens).astype(np.int64)[:t], int(vocab_size)
    b = np.flatnonzero(x[1:] == bos_id) + 1 if reset_doc else np.zeros(0, np.int64)
    h = x[int(b[-1]) if b.size else 0:]  # the segment: tokens counted since the last reset
    L, cnt = h.size, []
    for k in range(min(order, L) + 1):  # occurrences j >= k whose k previous tokens equal the last k of h
        m = np.ones(L - k, bool)
        for i in range(1, k + 1):
            m &= h[k - i:L - i] == h[L - i]
        cnt.append(np.bincount(h[k:][m], minlength=V).astype(np.float64))
    if not exclusion:
        P = np.full(V, 1.0 / V)
        for ck in cnt:
            if ck.sum() > 0:
                P = (ck + np.count_nonzero(ck) * P) / (ck.sum() + np.count_nonzero(ck))
        return P
    P, mass, ex = np.zeros(V), 1.0, np.zeros(V, bool)
    for ck in cnt[::-1]:
        ce = np.where(ex, 0.0, ck)
        ex |= ck > 0
        n, esc = ce.sum(), (0 if ex.all() else np.count_nonzero(ce))  # no escape into an empty order -1
        if n > 0:
            P += mass * ce / (n + esc)
            mass *= esc / (n + esc)
    return P + (mass * ~ex / max(np.count_nonzero(~ex), 1))


# ----------------------------------------------------------------------------------------------------------------
# Export: int6 per-row quantisation with a clip search (GPTQ-lite), small and control tensors in fp16/fp32, zstd-22.
# File: b"PGKIT001" + zstd( u32 header length + JSON header + raw little-endian arrays ). No pickle.
# ----------------------------------------------------------------------------------------------------------------

ARTIFACT_MAGIC = b"PGKIT001"
CLIP_PERCENTILES = (0.999, 0.9995, 0.9999, 0.99999, 1.0)
SMALL_TENSOR = 65_536


def quantize_rows(w: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Per-row symmetric quantisation; for each row keep the clip percentile with the lowest squared error."""
    qmax, w = 2 ** (bits - 1) - 1, w.float()
    clips = torch.quantile(w.abs(), torch.tensor(CLIP_PERCENTILES, device=w.device), dim=1)  # one sort per row
    best_q, best_scale, best_err = None, None, None
    for clip in clips:
        scale = (clip / qmax).clamp_min(1e-8).half()
        q = torch.clamp(torch.round(w / scale.float()[:, None]), -qmax - 1, qmax)
        err = (q * scale.float()[:, None] - w).square().sum(dim=1)
        better = err < best_err if best_err is not None else torch.ones_like(err, dtype=torch.bool)
        best_q = q if best_q is None else torch.where(better[:, None], q, best_q)
        best_scale = scale if best_scale is None else torch.where(better, scale, best_scale)
        best_err = err if best_err is None else torch.minimum(err, best_err)
    return best_q.to(torch.int8), best_scale


def pack_artifact(state: dict[str, Tensor], args: Hyperparameters, meta: dict) -> bytes:
    entries, blobs, offset = [], [], 0
    for name, t in state.items():
        t = t.detach().cpu()
        if t.ndim == 2 and t.numel() > SMALL_TENSOR:
            bits = (args.quant_embed_bits if name == "tok_emb.weight" else args.quant_mlp_bits or args.quant_bits
                    if ".mlp." in name else args.quant_bits)
            q, scale = quantize_rows(t, bits)
            arrays = {"q": q.numpy(), "scale": scale.numpy()}
        else:
            keep32 = any(c in name for c in CONTROL_NAMES) or t.numel() <= 4096
            arrays = {"data": t.float().numpy() if keep32 else t.half().numpy()}
        entry = {"name": name, "shape": list(t.shape), "arrays": {}}
        for key, arr in arrays.items():
            raw = np.ascontiguousarray(arr).tobytes()
            entry["arrays"][key] = {"dtype": arr.dtype.str, "offset": offset, "nbytes": len(raw)}
            blobs.append(raw)
            offset += len(raw)
        entries.append(entry)
    header = json.dumps({"format": 1, "meta": meta, "tensors": entries}).encode()
    payload = struct.pack("<I", len(header)) + header + b"".join(blobs)
    return ARTIFACT_MAGIC + zstandard.ZstdCompressor(level=args.zstd_level, write_checksum=True).compress(payload)


def unpack_artifact(blob: bytes, where: str = "artifact") -> tuple[dict[str, Tensor], dict]:
    """Inverse of pack_artifact (dequantised float32 tensors, meta). Any damage raises ConfigError."""
    if blob[:8] != ARTIFACT_MAGIC:
        raise ConfigError(f"{where} is not a train_gpt.py artifact (bad magic {blob[:8]!r})")
    try:
        payload = zstandard.ZstdDecompressor().decompress(blob[8:], max_output_size=1 << 32)
        (hlen,) = struct.unpack_from("<I", payload)
        header = json.loads(payload[4:4 + hlen])
        base, state = 4 + hlen, {}
        for e in header["tensors"]:
            arrs = {}
            for key, a in e["arrays"].items():
                if base + a["offset"] + a["nbytes"] > len(payload):
                    raise ValueError(f"tensor {e['name']} runs past the end of the payload")
                arrs[key] = np.frombuffer(payload, dtype=a["dtype"], count=a["nbytes"] // np.dtype(a["dtype"]).itemsize,
                                          offset=base + a["offset"])
            if "q" in arrs:
                t = torch.from_numpy(arrs["q"].astype(np.float32)).view(e["shape"])
                t = t * torch.from_numpy(arrs["scale"].astype(np.float32))[:, None]
            else:
                t = torch.from_numpy(arrs["data"].astype(np.float32)).view(e["shape"])
            state[e["name"]] = t
        return state, header["meta"]
    except ConfigError:
        raise
    except Exception as exc:  # zstd, struct, json and shape errors all mean a damaged file
        raise ConfigError(f"{where} is truncated or corrupted ({type(exc).__name__}: {exc})") from None


# ----------------------------------------------------------------------------------------------------------------
# Training loop and orchestration.
# ----------------------------------------------------------------------------------------------------------------

def versions() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "sentencepiece": spm.__version__, "zstandard": zstandard.__version__}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def unigram_bpb(train_files: list[Path], val: np.ndarray, val_bytes: np.ndarray, vocab: int) -> float:
    """Reference: an add-one unigram model fitted on the first train shard, scored like the network."""
    counts = np.bincount(load_shard(train_files[0]), minlength=vocab).astype(np.float64) + 1
    nll = -np.log(counts / counts.sum())[val[1:].astype(np.int64)]
    return float(nll.sum() / math.log(2) / val_bytes.sum())


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def train(args, base_model: GPT, model: nn.Module, train_files, rank, world_size, device, log, validate) -> dict:
    """The training loop: grad accumulation to 8 micro-batches, wallclock cap and warmdown, optional EMA."""
    distributed, grad_accum = dist.is_available() and dist.is_initialized(), 8 // world_size
    optimizers, muon = build_optimizers(base_model, args)

    def run_step(loader: TokenLoader) -> Tensor:
        total = torch.zeros((), device=device)
        for micro in range(grad_accum):
            x, y = loader.next_batch(args.train_batch_tokens, args.train_seq_len, grad_accum)
            last = not distributed or micro == grad_accum - 1
            with autocast(device), (contextlib.nullcontext() if last else model.no_sync()):
                loss = model(x, y)
                (loss / grad_accum).backward()
            total += loss.detach()
        return total / grad_accum

    def step_all() -> None:
        if args.grad_clip_norm > 0:
            nn.utils.clip_grad_norm_(base_model.parameters(), args.grad_clip_norm)
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)

    if args.warmup_steps > 0:  # prime compiled paths, then restore the true initial state
        init_state = copy.deepcopy(base_model.state_dict())
        init_opt = [copy.deepcopy(o.state_dict()) for o in optimizers]
        loader = TokenLoader(train_files, rank, world_size, device)
        for _ in range(args.warmup_steps):
            run_step(loader)
            step_all()
        base_model.load_state_dict(init_state)
        for opt, state in zip(optimizers, init_opt):
            opt.load_state_dict(state)
        log(f"warmup_steps:{args.warmup_steps} done; weights and optimisers reset")

    loader = TokenLoader(train_files, rank, world_size, device)
    params = list(base_model.parameters())
    ema = [p.detach().clone() for p in params] if args.ema else None
    cap_ms = 1000.0 * args.max_wallclock_seconds if args.max_wallclock_seconds > 0 else None

    def lr_scale(step: int, elapsed_ms: float) -> float:  # read every step: nothing here is frozen by compile
        if args.warmdown_iters <= 0:
            return 1.0
        if cap_ms is None:
            return min(1.0, max(args.iterations - step, 0) / args.warmdown_iters)
        warmdown_ms = args.warmdown_iters * elapsed_ms / max(step, 1)
        remaining_ms = max(cap_ms - elapsed_ms, 0.0)
        return remaining_ms / max(warmdown_ms, 1e-9) if remaining_ms <= warmdown_ms else 1.0

    train_ms, step, stop_after, stopped_early, train_loss = 0.0, 0, None, False, float("nan")
    sync(device)
    t0 = time.perf_counter()
    while True:
        last = step == args.iterations or (stop_after is not None and step >= stop_after)
        if last or (args.val_loss_every > 0 and step % args.val_loss_every == 0):
            sync(device)
            train_ms += 1000 * (time.perf_counter() - t0)
            vl, vb = validate()
            log(f"step:{step}/{args.iterations} val_loss:{vl:.4f} val_bpb:{vb:.4f} train_time:{train_ms:.0f}ms "
                f"step_avg:{train_ms / max(step, 1):.2f}ms")
            sync(device)
            t0 = time.perf_counter()
        if last:
            if stop_after is not None and step < args.iterations:
                stopped_early = True
                log(f"stopping_early: wallclock_cap train_time:{train_ms:.0f}ms step:{step}/{args.iterations}")
            break
        scale = lr_scale(step, train_ms + 1000 * (time.perf_counter() - t0))
        frac = min(step / args.muon_momentum_warmup_steps, 1.0) if args.muon_momentum_warmup_steps > 0 else 1.0
        for g in muon.param_groups:
            g["momentum"] = (1 - frac) * args.muon_momentum_warmup_start + frac * args.muon_momentum
        for opt in optimizers:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * scale
        loss = run_step(loader)
        step_all()
        if ema is not None:
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - args.ema_decay)
        step += 1
        approx_ms = train_ms + 1000 * (time.perf_counter() - t0)
        if args.train_log_every > 0 and (step <= 10 or step % args.train_log_every == 0 or stop_after is not None):
            if distributed:
                dist.all_reduce(loss, op=dist.ReduceOp.AVG)
            train_loss = loss.item()
            log(f"step:{step}/{args.iterations} train_loss:{train_loss:.4f} train_time:{approx_ms:.0f}ms "
                f"step_avg:{approx_ms / step:.2f}ms")
        reached = cap_ms is not None and approx_ms >= cap_ms
        if distributed and cap_ms is not None:
            flag = torch.tensor(int(reached), device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            reached = bool(flag.item())
        if stop_after is None and reached:
            stop_after = step
    if ema is not None:
        with torch.no_grad():
            torch._foreach_copy_(params, ema)
        log(f"ema: swapped in the EMA weights (decay {args.ema_decay})")
    peak_mib = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0
    log(f"peak memory allocated: {peak_mib:.0f} MiB")
    return {"steps": step, "iterations": args.iterations, "stopped_early": stopped_early, "train_time_ms": train_ms,
            "step_avg_ms": train_ms / max(step, 1), "train_loss": train_loss,
            "tokens_per_step": args.train_batch_tokens, "peak_mem_mib": peak_mib}


# The settings an artifact's computation depends on: EVAL_ONLY refuses an artifact made with other values.
ARCH_KEYS = ("VOCAB_SIZE", "NUM_LAYERS", "MODEL_DIM", "NUM_HEADS", "NUM_KV_HEADS", "MLP_MULT", "TIE_EMBEDDINGS",
             "ROPE_BASE", "LOGIT_SOFTCAP", "VALUE_RESIDUAL", "GATED_ATTENTION", "GATED_ATTENTION_MODE",
             "REVIEW_RESIDUAL", "HIGHWAY", "REVIEW_GATE", "REVIEW_RANK", "SMEAR_GATE", "BIGRAM_HASH",
             "BIGRAM_BUCKETS", "BIGRAM_DIM", "XSA_LAST_N", "ROPE_DIMS", "LN_SCALE", "MLP_ACT", "MLP_LEAKY_SLOPE")


def read_eval_artifact(args: Hyperparameters) -> tuple[dict, dict]:
    """EVAL_ONLY: the artifact's tensors and meta, refused unless it was made with this model configuration."""
    state, meta = unpack_artifact(Path(args.eval_only).read_bytes(), args.eval_only)
    made, now = meta.get("config", {}), args.as_dict()
    diff = [f"{k}={made.get(k)} (this run: {now[k]})" for k in ARCH_KEYS if made.get(k) != now[k]]
    if diff:
        raise ConfigError(f"EVAL_ONLY={args.eval_only} was made with a different model: {', '.join(diff)}; "
                          "set the same values to score it")
    return state, meta


def main() -> int:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    args = Hyperparameters.from_env()
    check_config(args, world_size)
    eval_state, eval_meta = read_eval_artifact(args) if args.eval_only else (None, {})
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    sp = load_tokenizer(args)
    val_np = np.concatenate([load_shard(f) for f in shard_files(args.data_path, "val")])
    train_files = [] if args.eval_only else shard_files(args.data_path, "train")
    for f in train_files:
        load_shard(f, header_only=True)
    if int(val_np.max()) >= args.vocab_size:
        raise ConfigError(f"val shards hold token id {int(val_np.max())} >= VOCAB_SIZE={args.vocab_size}")

    distributed = "RANK" in os.environ and world_size > 1
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.enable_cudnn_sdp(False)  # SDPA: the flash kernel (math stays as the fp32 fallback)
        torch.backends.cuda.enable_mem_efficient_sdp(False)
    if distributed:
        dist.init_process_group("nccl" if use_cuda else "gloo", **({"device_id": device} if use_cuda else {}))
        ids = [args.run_id]  # a default (uuid) RUN_ID must be the same on every rank
        dist.broadcast_object_list(ids, src=0)
        args.run_id = ids[0]
    master = rank == 0
    global ATTENTION
    ATTENTION = attention_kernel(device)
    compile_mode = args.compile_mode if use_cuda and args.compile else "none"
    code = Path(__file__).read_bytes()
    code_sha = hashlib.sha256(code).hexdigest()
    log_path = Path("logs") / f"{args.run_id}.txt"
    if master:
        log_path.parent.mkdir(exist_ok=True)
        log_path.write_text("")

    def log(msg: str) -> None:
        if master:
            print(msg, flush=True)
            with open(log_path, "a", encoding="utf-8") as f:
                print(msg, file=f)

    log(f"run_id:{args.run_id}")
    log(f"code_sha256:{code_sha} code_bytes:{len(code)}")
    log("versions: " + " ".join(f"{k}:{v}" for k, v in versions().items()))
    gpu = torch.cuda.get_device_name(device) if use_cuda else "none"
    log(f"device:{device.type} gpu:{gpu.replace(' ', '_')} world_size:{world_size} grad_accum_steps:"
        f"{8 // world_size} attention:{ATTENTION[0]} compile:{compile_mode}")
    log("config:" + json.dumps(args.as_dict()))
    tables = byte_tables(sp)
    val_tokens = torch.from_numpy(val_np.astype(np.int64)).to(device)
    val_bytes = torch.from_numpy(target_bytes(val_np, tables)).to(device)
    log(f"val_tokens:{val_np.size} val_bytes:{int(val_bytes.sum())} train_shards:{len(train_files)}")

    base_model = build_model(args).to(device)
    num_params = sum(p.numel() for p in base_model.parameters())
    log(f"model_params:{num_params}")
    scores, phases = {}, {}

    def score(name: str, line: str, pos: Tensor, nll: Tensor, ms: float) -> None:
        vl, vb = reduce_score(pos, nll, val_bytes)
        scores[name], phases[name] = {"val_loss": vl, "val_bpb": vb}, ms
        log(f"{line} val_loss:{vl:.8f} val_bpb:{vb:.8f}")
        log(f"eval_phase:{name} time:{ms:.0f}ms")

    def timed(fn):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        return out, 1000 * (time.perf_counter() - t)

    stats, model_bytes, artifact_path = {}, None, Path(args.eval_only or Path("artifacts") / f"{args.run_id}.ptz")
    if args.eval_only:
        base_model.load_state_dict(eval_state)
        if eval_meta.get("code_sha256") != code_sha:
            log(f"warning: {args.eval_only} was made by a different train_gpt.py (code_sha256 "
                f"{str(eval_meta.get('code_sha256'))[:12]}...); scoring it with this one")
        if compile_mode != "none":
            base_model.hidden = torch.compile(base_model.hidden, dynamic=False, mode=compile_mode)
        model_bytes = artifact_path.stat().st_size
    else:
        model = base_model if compile_mode == "none" else torch.compile(base_model, dynamic=False, fullgraph=True,
                                                                        mode=compile_mode)
        if distributed:
            model = nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if use_cuda else None,
                                                        broadcast_buffers=False)

        def validate() -> tuple[float, float]:
            L = args.train_seq_len
            return reduce_score(*sliding_eval(base_model, val_tokens, args, rank, world_size, L, L), val_bytes)
        stats = train(args, base_model, model, train_files, rank, world_size, device, log, validate)
        if compile_mode != "none":  # the final evaluation runs a compiled forward too (one shape: padded batches)
            base_model.hidden = torch.compile(base_model.hidden, dynamic=False, mode=compile_mode)
        if args.float_eval:
            (pos, nll), ms = timed(lambda: sliding_eval(base_model, val_tokens, args, rank, world_size))
            score("float_sliding_window", "final_float_sliding_window_exact", pos, nll, ms)
        blob = pack_artifact(base_model.state_dict(), args, {"config": args.as_dict(), "code_sha256": code_sha})
        if master:
            write_atomic(artifact_path, blob)
        if distributed:
            dist.barrier()
        model_bytes = len(blob)
        base_model.load_state_dict(unpack_artifact(artifact_path.read_bytes(), str(artifact_path))[0])
    qname = f"int{eval_meta.get('config', {}).get('QUANT_BITS', args.quant_bits)}"
    total_bytes = model_bytes + len(code)
    log(f"Serialized model {qname}+zstd: {model_bytes} bytes")
    log(f"Code size: {len(code)} bytes")
    log(f"Total submission size {qname}+zstd: {total_bytes} bytes")

    # The final evaluation of the reloaded artifact: sliding windows, then PPM mixing and/or score-first TTT.
    (pos, nll), ms = timed(lambda: sliding_eval(base_model, val_tokens, args, rank, world_size))
    score("sliding_window", f"final_{qname}_sliding_window_exact", pos, nll, ms)
    if "float_sliding_window" in scores:
        log(f"quant_gap_bpb:{scores['sliding_window']['val_bpb'] - scores['float_sliding_window']['val_bpb']:.6f}")
    if args.ppmc:  # one CPU pass over the whole stream on rank 0, shared with the other ranks

        def ppm() -> Tensor:
            p = torch.empty(val_np.size - 1, dtype=torch.float64, device=device)
            if master:
                p.copy_(torch.from_numpy(ppm_target_probs(val_np, args.vocab_size, args.ppmc_order,
                                                          bool(args.ppmc_exclusion), args.ppmc_reset == "doc")))
            if distributed:
                dist.broadcast(p, 0)
            return p
        p_ppm, ms_ppm = timed(ppm)
        score("sliding_window_ppmc", f"final_{qname}_sliding_window_ppmc_exact", pos,
              mix_nll(nll, p_ppm[pos - 1], args.ppmc_alpha), ms_ppm)
    if args.ttt:
        (pos, nll), ms = timed(lambda: ttt_eval(base_model, val_tokens, args, rank, world_size))
        score("ttt", f"final_{qname}_ttt_exact", pos, nll, ms)
        if args.ppmc:
            score("ttt_ppmc", f"final_{qname}_ttt_ppmc_exact", pos, mix_nll(nll, p_ppm[pos - 1], args.ppmc_alpha), 0.0)
    final = list(scores)[-1]
    eval_ms = sum(v for k, v in phases.items() if not k.startswith("float"))
    log(f"eval_time_total:{eval_ms:.0f}ms")
    uni = unigram_bpb(train_files, val_np, val_bytes.cpu().numpy(), args.vocab_size) if train_files else None
    if uni is not None:
        log(f"unigram_val_bpb:{uni:.4f} (add-one unigram of the first train shard, for reference)")
    over = total_bytes > ARTIFACT_LIMIT
    if master:
        summary = {
            "run_id": args.run_id, "seed": args.seed, "code_sha256": code_sha, "code_bytes": len(code),
            "model_bytes": model_bytes, "artifact_bytes": total_bytes, "artifact_path": str(artifact_path),
            "over_budget": over, "config": args.as_dict(), "world_size": world_size, "device": device.type,
            "gpu_name": gpu if use_cuda else None, "versions": versions(), "attention_kernel": ATTENTION[0],
            "compile_mode": compile_mode, "num_params": num_params, **stats, "eval_phases_ms": phases,
            "eval_time_ms": eval_ms, "scores": scores,
            "final": {"metric": final, "line": f"final_{qname}_{final}_exact", **scores[final]},
            "unigram_val_bpb": uni, "status": "complete"}
        write_atomic(log_path.with_suffix(".json"), json.dumps(summary, indent=1).encode())
    if over:
        log(f"error: artifact is {total_bytes} bytes, {total_bytes - ARTIFACT_LIMIT} over the {ARTIFACT_LIMIT}-byte "
            "limit; shrink the model (MODEL_DIM, NUM_LAYERS, MLP_MULT) or QUANT_BITS")
    if distributed:
        dist.barrier()  # leave together: gloo aborts if a peer tears down while the other is still finishing
        dist.destroy_process_group()
    return 1 if over else 0


if __name__ == "__main__":
    try:
        if sys.argv[1:] == ["--count-params"]:
            print(count_params(os.environ))
            sys.exit(0)
        if sys.argv[1:]:
            raise ConfigError(f"unknown arguments {sys.argv[1:]}: settings are environment variables; the only "
                              "option is --count-params")
        sys.exit(main())
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
