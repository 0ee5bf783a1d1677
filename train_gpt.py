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
    ("ZSTD_LEVEL", int, 22, "zstd compression level of the artifact"),
    ("EVAL_SEQ_LEN", int, 0, "sliding-window length (0: TRAIN_SEQ_LEN)"),
    ("EVAL_STRIDE", int, 64, "sliding-window stride (= EVAL_SEQ_LEN: plain non-overlapping evaluation)"),
    ("EVAL_BATCH_SEQS", int, 32, "windows per evaluation batch and rank"),
    ("FLOAT_EVAL", int, 1, "also score the float model before quantisation (diagnostic)"),
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
    if a.quant_bits not in (5, 6, 8) or a.quant_embed_bits not in (5, 6, 8):
        raise ConfigError(f"QUANT_BITS={a.quant_bits} / QUANT_EMBED_BITS={a.quant_embed_bits}: use 5, 6 or 8")
    if a.device not in ("auto", "cuda", "cpu"):
        raise ConfigError(f"DEVICE={a.device!r}: use auto, cuda or cpu")
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

CONTROL_NAMES = ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weights")


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
    def __init__(self, head_dim: int, base: float, max_len: int):
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", freqs.cos()[None, :, None, :], persistent=False)
        self.register_buffer("sin", freqs.sin()[None, :, None, :], persistent=False)

    def forward(self, x: Tensor) -> Tensor:  # x: (B, T, H, D)
        T, half = x.size(1), x.size(-1) // 2
        cos, sin = self.cos[:, :T].to(x.dtype), self.sin[:, :T].to(x.dtype)
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class Attention(nn.Module):
    def __init__(self, args: Hyperparameters, max_len: int):
        super().__init__()
        d, self.h, self.kv = args.model_dim, args.num_heads, args.num_kv_heads
        self.hd = d // self.h
        self.c_q = CastedLinear(d, d)
        self.c_k = CastedLinear(d, self.kv * self.hd)
        self.c_v = CastedLinear(d, self.kv * self.hd)
        self.proj = CastedLinear(d, d, zero_init=True)
        self.q_gain = nn.Parameter(torch.full((self.h,), args.qk_gain_init))
        self.rotary = Rotary(self.hd, args.rope_base, max_len)

    def forward(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        q = rms(self.c_q(x).view(B, T, self.h, self.hd))
        k = rms(self.c_k(x).view(B, T, self.kv, self.hd))
        v = self.c_v(x).view(B, T, self.kv, self.hd)
        q = self.rotary(q) * self.q_gain.to(x.dtype)[:, None]
        y = ATTENTION[1](q, self.rotary(k), v)
        return self.proj(y.reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, args: Hyperparameters):
        super().__init__()
        hidden = int(args.mlp_mult * args.model_dim)
        self.fc = CastedLinear(args.model_dim, hidden)
        self.proj = CastedLinear(hidden, args.model_dim, zero_init=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(torch.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, args: Hyperparameters, max_len: int):
        super().__init__()
        d = args.model_dim
        self.attn, self.mlp = Attention(args, max_len), MLP(args)
        self.attn_scale = nn.Parameter(torch.ones(d))
        self.mlp_scale = nn.Parameter(torch.ones(d))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(d), torch.zeros(d))))

    def forward(self, x: Tensor, x0: Tensor) -> Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.attn(rms(x))
        return x + self.mlp_scale.to(x.dtype) * self.mlp(rms(x))


class GPT(nn.Module):
    def __init__(self, args: Hyperparameters):
        super().__init__()
        max_len = max(args.train_seq_len, args.eval_seq_len)
        self.softcap = args.logit_softcap
        self.tok_emb = nn.Embedding(args.vocab_size, args.model_dim)
        self.blocks = nn.ModuleList(Block(args, max_len) for _ in range(args.num_layers))
        self.num_enc = args.num_layers // 2
        self.skip_weights = nn.Parameter(torch.ones(min(self.num_enc, args.num_layers - self.num_enc),
                                                    args.model_dim))
        self.lm_head = None if args.tie_embeddings else CastedLinear(args.model_dim, args.vocab_size, True)
        if args.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, std=args.tied_embed_init_std)
        for m in self.modules():
            if isinstance(m, CastedLinear) and m.zero_init:
                nn.init.zeros_(m.weight)

    def hidden(self, idx: Tensor) -> Tensor:
        """Final normalised hidden states (B, T, d); the head is applied separately so that evaluation can
        send only the scored positions through it."""
        x = x0 = rms(self.tok_emb(idx))
        skips = []
        for i, block in enumerate(self.blocks):
            if i >= self.num_enc and skips:
                x = x + self.skip_weights[i - self.num_enc].to(x.dtype) * skips.pop()
            x = block(x, x0)
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

    def __init__(self, params, lr: float, momentum: float, backend_steps: int):
        super().__init__(params, dict(lr=lr, momentum=momentum, backend_steps=backend_steps))

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
                p.add_(flat[offset:offset + p.numel()].view_as(p).to(p.dtype), alpha=-group["lr"])
                offset += p.numel()


def build_optimizers(model: GPT, args: Hyperparameters) -> tuple[list[torch.optim.Optimizer], Muon]:
    named = list(model.blocks.named_parameters())
    matrices = [p for n, p in named if p.ndim == 2 and not any(c in n for c in CONTROL_NAMES)]
    scalars = [p for n, p in named if p.ndim < 2 or any(c in n for c in CONTROL_NAMES)]
    scalars += [p for n, p in model.named_parameters() if not n.startswith(("blocks.", "tok_emb.", "lm_head."))]
    fused = next(model.parameters()).is_cuda

    def adam(params, lr):
        return torch.optim.Adam([dict(params=params, lr=lr, base_lr=lr)], betas=(args.beta1, args.beta2),
                                eps=args.adam_eps, fused=fused)
    muon = Muon(matrices, args.matrix_lr, args.muon_momentum, args.muon_backend_steps)
    for g in muon.param_groups:
        g["base_lr"] = args.matrix_lr
    opts = [adam([model.tok_emb.weight], args.tied_embed_lr if args.tie_embeddings else args.embed_lr), muon,
            adam(scalars, args.scalar_lr)]
    if model.lm_head is not None:
        opts.append(adam([model.lm_head.weight], args.head_lr))
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
    for i in range(0, len(wins), batch_seqs):
        batch = wins[i:i + batch_seqs]
        x = torch.stack([tokens[s:e - 1] for s, _, e in batch])  # every window has the same length
        rows = torch.cat([torch.full((e - a,), j, device=device) for j, (s, a, e) in enumerate(batch)])
        cols = torch.cat([torch.arange(a - 1 - s, e - 1 - s, device=device) for s, a, e in batch])
        with autocast(device):
            h = model.hidden(x)[rows, cols]
        logp = torch.log_softmax(model.logits(h), dim=-1)
        y = torch.cat([tokens[a:e] for _, a, e in batch])
        out.append(-logp.gather(1, y[:, None]).squeeze(1).double())
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


def evaluate(model: GPT, val_tokens: Tensor, val_bytes: Tensor, seq_len: int, stride: int, batch_seqs: int,
             rank: int, world_size: int) -> tuple[float, float, Tensor, Tensor]:
    """Distributed sliding-window evaluation. Returns (val_loss, val_bpb, this rank's target positions, NLLs)."""
    model.eval()
    wins = windows(val_tokens.numel(), seq_len, stride)
    mine = wins[len(wins) * rank // world_size:len(wins) * (rank + 1) // world_size]
    nll = window_nll(model, val_tokens, mine, batch_seqs)
    pos = torch.cat([torch.arange(a, e) for _, a, e in mine]) if mine else torch.zeros(0, dtype=torch.long)
    totals = torch.stack([nll.sum(), torch.tensor(float(nll.numel()), dtype=torch.float64, device=nll.device),
                          val_bytes[pos.to(val_bytes.device) - 1].sum().to(nll.device, torch.float64)])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    model.train()
    loss = (totals[0] / totals[1]).item()
    return loss, loss / math.log(2) * (totals[1] / totals[2]).item(), pos, nll


# ----------------------------------------------------------------------------------------------------------------
# Export: int6 per-row quantisation with a clip search (GPTQ-lite), small and control tensors in fp16/fp32, zstd-22.
# File: b"PGKIT001" + zstd( u32 header length + JSON header + raw little-endian arrays ). No pickle.
# ----------------------------------------------------------------------------------------------------------------

ARTIFACT_MAGIC = b"PGKIT001"
CLIP_PERCENTILES = (0.999, 0.9995, 0.9999, 0.99999, 1.0)
SMALL_TENSOR = 65_536


def quantize_rows(w: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Per-row symmetric quantisation; for each row keep the clip percentile with the lowest squared error."""
    qmax = 2 ** (bits - 1) - 1
    w = w.float()
    best_q, best_scale, best_err = None, None, None
    for pct in CLIP_PERCENTILES:
        clip = torch.quantile(w.abs(), pct, dim=1) if pct < 1 else w.abs().amax(dim=1)
        scale = (clip / qmax).clamp_min(1e-8).half()
        q = torch.clamp(torch.round(w / scale.float()[:, None]), -qmax - 1, qmax)
        err = (q * scale.float()[:, None] - w).square().sum(dim=1)
        if best_err is None:
            best_q, best_scale, best_err = q, scale, err
        else:
            better = err < best_err
            best_q = torch.where(better[:, None], q, best_q)
            best_scale, best_err = torch.where(better, scale, best_scale), torch.minimum(err, best_err)
    return best_q.to(torch.int8), best_scale


def pack_artifact(state: dict[str, Tensor], args: Hyperparameters, meta: dict) -> bytes:
    entries, blobs, offset = [], [], 0
    for name, t in state.items():
        t = t.detach().cpu()
        if t.ndim == 2 and t.numel() > SMALL_TENSOR and not any(c in name for c in CONTROL_NAMES):
            bits = args.quant_embed_bits if name == "tok_emb.weight" else args.quant_bits
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
    return ARTIFACT_MAGIC + zstandard.ZstdCompressor(level=args.zstd_level).compress(payload)


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

def code_bytes() -> bytes:
    return Path(__file__).read_bytes()


def versions() -> dict:
    import sentencepiece
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "sentencepiece": sentencepiece.__version__, "zstandard": zstandard.__version__}


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


def main() -> int:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    args = Hyperparameters.from_env()
    check_config(args, world_size)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    sp = load_tokenizer(args)
    train_files, val_files = shard_files(args.data_path, "train"), shard_files(args.data_path, "val")
    val_np = np.concatenate([load_shard(f) for f in val_files])
    for f in train_files:
        load_shard(f, header_only=True)
    if int(val_np.max()) >= args.vocab_size:
        raise ConfigError(f"val shards hold token id {int(val_np.max())} >= VOCAB_SIZE={args.vocab_size}")

    distributed = "RANK" in os.environ and world_size > 1
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if distributed:
        dist.init_process_group("nccl" if use_cuda else "gloo", **({"device_id": device} if use_cuda else {}))
    master = rank == 0
    grad_accum = 8 // world_size
    global ATTENTION
    ATTENTION = attention_kernel(device)
    compile_mode = "default" if use_cuda and args.compile else "none"

    code = code_bytes()
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
    log(f"code_sha256:{hashlib.sha256(code).hexdigest()} code_bytes:{len(code)}")
    log("versions: " + " ".join(f"{k}:{v}" for k, v in versions().items()))
    gpu = torch.cuda.get_device_name(device) if use_cuda else "none"
    log(f"device:{device.type} gpu:{gpu.replace(' ', '_')} world_size:{world_size} grad_accum_steps:{grad_accum} "
        f"attention:{ATTENTION[0]} compile:{compile_mode}")
    log("config:" + json.dumps(args.as_dict()))

    tables = byte_tables(sp)
    val_tokens = torch.from_numpy(val_np.astype(np.int64)).to(device)
    val_bytes = torch.from_numpy(target_bytes(val_np, tables)).to(device)
    log(f"val_tokens:{val_np.size} val_bytes:{int(val_bytes.sum())} train_shards:{len(train_files)}")

    base_model = build_model(args).to(device)
    model = torch.compile(base_model, dynamic=False, fullgraph=True) if compile_mode != "none" else base_model
    if distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if use_cuda else None,
                                                    broadcast_buffers=False)
    optimizers, muon = build_optimizers(base_model, args)
    num_params = sum(p.numel() for p in base_model.parameters())
    log(f"model_params:{num_params}")

    def run_step(loader: TokenLoader) -> Tensor:
        total = torch.zeros((), device=device)
        for micro in range(grad_accum):
            x, y = loader.next_batch(args.train_batch_tokens, args.train_seq_len, grad_accum)
            sync = not distributed or micro == grad_accum - 1
            with autocast(device), (model.no_sync() if not sync else contextlib.nullcontext()):
                loss = model(x, y)
                (loss / grad_accum).backward()
            total += loss.detach()
        return total / grad_accum

    def zero_grad() -> None:
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)

    def val_now(seq_len: int, stride: int, batch_seqs: int) -> tuple[float, float]:
        return evaluate(base_model, val_tokens, val_bytes, seq_len, stride, batch_seqs, rank, world_size)[:2]

    if args.warmup_steps > 0:  # prime compiled paths, then restore the true initial state
        init_state = copy.deepcopy(base_model.state_dict())
        init_opt = [copy.deepcopy(o.state_dict()) for o in optimizers]
        loader = TokenLoader(train_files, rank, world_size, device)
        for _ in range(args.warmup_steps):
            run_step(loader)
            for opt in optimizers:
                opt.step()
            zero_grad()
        base_model.load_state_dict(init_state)
        for opt, s in zip(optimizers, init_opt):
            opt.load_state_dict(s)
        log(f"warmup_steps:{args.warmup_steps} done; weights and optimisers reset")

    loader = TokenLoader(train_files, rank, world_size, device)
    cap_ms = 1000.0 * args.max_wallclock_seconds if args.max_wallclock_seconds > 0 else None
    val_seqs = max(1, args.val_batch_size // (world_size * args.train_seq_len))

    def lr_scale(step: int, elapsed_ms: float) -> float:
        if args.warmdown_iters <= 0:
            return 1.0
        if cap_ms is None:
            return min(1.0, max(args.iterations - step, 0) / args.warmdown_iters)
        warmdown_ms = args.warmdown_iters * elapsed_ms / max(step, 1)
        remaining_ms = max(cap_ms - elapsed_ms, 0.0)
        return remaining_ms / max(warmdown_ms, 1e-9) if remaining_ms <= warmdown_ms else 1.0

    def sync() -> None:
        if use_cuda:
            torch.cuda.synchronize()

    train_ms, step, stop_after, stopped_early, train_loss = 0.0, 0, None, False, float("nan")
    sync()
    t0 = time.perf_counter()
    while True:
        last = step == args.iterations or (stop_after is not None and step >= stop_after)
        if last or (args.val_loss_every > 0 and step % args.val_loss_every == 0):
            sync()
            train_ms += 1000 * (time.perf_counter() - t0)
            vl, vb = val_now(args.train_seq_len, args.train_seq_len, val_seqs)
            log(f"step:{step}/{args.iterations} val_loss:{vl:.4f} val_bpb:{vb:.4f} train_time:{train_ms:.0f}ms "
                f"step_avg:{train_ms / max(step, 1):.2f}ms")
            sync()
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
        if args.grad_clip_norm > 0:
            nn.utils.clip_grad_norm_(base_model.parameters(), args.grad_clip_norm)
        for opt in optimizers:
            opt.step()
        zero_grad()
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
    peak_mib = torch.cuda.max_memory_allocated() / 2**20 if use_cuda else 0.0
    log(f"peak memory allocated: {peak_mib:.0f} MiB")

    # Export, reload, score.
    scores, phases = {}, {}

    def timed_eval(name: str) -> tuple[float, float]:
        sync()
        t = time.perf_counter()
        vl, vb = val_now(args.eval_seq_len, args.eval_stride, args.eval_batch_seqs)
        sync()
        phases[name] = 1000 * (time.perf_counter() - t)
        scores[name] = {"val_loss": vl, "val_bpb": vb}
        return vl, vb

    if args.float_eval:
        timed_eval("float_sliding_window")
    meta = {"config": args.as_dict(), "code_sha256": hashlib.sha256(code).hexdigest()}
    artifact_path = Path("artifacts") / f"{args.run_id}.ptz"
    blob = pack_artifact(base_model.state_dict(), args, meta)
    if master:
        write_atomic(artifact_path, blob)
    if distributed:
        dist.barrier()
    model_bytes, qname = len(blob), f"int{args.quant_bits}"
    total_bytes = model_bytes + len(code)
    log(f"Serialized model {qname}+zstd: {model_bytes} bytes")
    log(f"Code size: {len(code)} bytes")
    log(f"Total submission size {qname}+zstd: {total_bytes} bytes")
    state, _ = unpack_artifact(artifact_path.read_bytes(), str(artifact_path))
    base_model.load_state_dict(state)
    timed_eval("sliding_window")
    for name in ("float_sliding_window", "sliding_window"):
        if name in scores:
            line = "final_float_sliding_window_exact" if name.startswith("float") else f"final_{qname}_{name}_exact"
            log(f"{line} val_loss:{scores[name]['val_loss']:.8f} val_bpb:{scores[name]['val_bpb']:.8f}")
    if "float_sliding_window" in scores:
        log(f"quant_gap_bpb:{scores['sliding_window']['val_bpb'] - scores['float_sliding_window']['val_bpb']:.6f}")
    eval_ms = sum(v for k, v in phases.items() if not k.startswith("float"))
    log(f"eval_time_total:{eval_ms:.0f}ms")
    final = "sliding_window"
    uni = unigram_bpb(train_files, val_np, val_bytes.cpu().numpy(), args.vocab_size)
    log(f"unigram_val_bpb:{uni:.4f} (add-one unigram of the first train shard, for reference)")
    over = total_bytes > ARTIFACT_LIMIT
    if master:
        summary = {
            "run_id": args.run_id, "seed": args.seed, "code_sha256": meta["code_sha256"], "code_bytes": len(code),
            "model_bytes": model_bytes, "artifact_bytes": total_bytes, "artifact_path": str(artifact_path),
            "over_budget": over, "config": args.as_dict(), "world_size": world_size, "device": device.type,
            "gpu_name": gpu if use_cuda else None, "versions": versions(), "attention_kernel": ATTENTION[0],
            "compile_mode": compile_mode, "num_params": num_params, "steps": step, "iterations": args.iterations,
            "stopped_early": stopped_early, "train_time_ms": train_ms, "step_avg_ms": train_ms / max(step, 1),
            "train_loss": train_loss, "tokens_per_step": args.train_batch_tokens, "peak_mem_mib": peak_mib,
            "eval_phases_ms": phases, "eval_time_ms": eval_ms, "scores": scores,
            "final": {"metric": final, "line": f"final_{qname}_{final}_exact", **scores[final]},
            "unigram_val_bpb": uni, "status": "complete"}
        write_atomic(log_path.with_suffix(".json"), json.dumps(summary, indent=1).encode())
    if over:
        log(f"error: artifact is {total_bytes} bytes, {total_bytes - ARTIFACT_LIMIT} over the {ARTIFACT_LIMIT}-byte "
            "limit; shrink the model (MODEL_DIM, NUM_LAYERS, MLP_MULT) or QUANT_BITS")
    if distributed:
        dist.destroy_process_group()
    return 1 if over else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
