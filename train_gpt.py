"""Parameter Golf training script: train a compact GPT, export it (int6 + brotli), score the reloaded artifact.

Runs as `torchrun --standalone --nproc_per_node=K train_gpt.py` (CUDA: NCCL, bf16, torch.compile; CPU: gloo, fp32,
eager) or as plain `python train_gpt.py`. Every setting is an environment variable declared once in Hyperparameters.
Sections follow the data: hyperparameters, data, model, optimiser, evaluation, export, training loop, main.
Layout as modded-nanogpt's: one blank line between definitions, two before a section.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import difflib
import glob
import hashlib
import json
import lzma
import math
import os
import platform
import re
import struct
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import sentencepiece as spm
import torch
import torch.distributed as dist
import torch.nn.functional as F
import zstandard
from torch import Tensor, nn

# ----------------------------------------------------------------------------------------------------------------
# Hyperparameters: every setting declared once (env name, type, default, meaning, allowed values, architecture).

ARTIFACT_LIMIT = 16_000_000
KNOWN_ENV = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK",
             "ROLE_RANK", "ROLE_WORLD_SIZE", "GROUP_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "OMP_NUM_THREADS"}

class ConfigError(ValueError):
    """A configuration or input problem, reported as one line (exit 2) before any work starts."""

class RunError(RuntimeError):
    """A run that cannot finish honestly (disk full, non-finite score): one line, exit 1."""

class Setting(NamedTuple):
    """One environment variable. `arch`: the artifact's computation depends on it (EVAL_ONLY refuses another value).
    `on`: the values that switch a technique on (benchmark and test grids), with `requires` (e.g. "TTT=1").
    `aliases`: other names (the records', upstream's); one given as (NAME, {raw: raw}) translates its values."""
    default: Any
    meaning: str
    choices: tuple = ()
    rng: str = ""
    arch: bool = False
    aliases: tuple = ()
    on: tuple = ()
    requires: str = ""
    name: str = ""
    type: type = str

    def bounds(self) -> tuple[float, float, bool, bool]:
        m = re.fullmatch(r"([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])", self.rng)
        return float(m[2]), float(m[3]), m[1] == "[", m[4] == "]"

    def allowed(self) -> str:
        return " | ".join(map(str, self.choices)) if self.choices else self.rng

    def parse(self, raw: str, given: str) -> Any:
        """The value of `given`=raw, or ConfigError naming this setting and what it accepts."""
        value = raw
        if self.type is not str:
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"{given}={raw!r} is not a valid {self.type.__name__}") from None
            if self.type is int and not value.is_integer():
                raise ConfigError(f"{given}={raw!r} must be a whole number")
            if not math.isfinite(value):
                raise ConfigError(f"{given}={raw!r} must be a finite number")
            value = int(value) if self.type is int else value
        self.check(value, given)
        return value

    def check(self, value: Any, given: str = "") -> None:
        given = given or self.name
        if self.choices and value not in self.choices:
            raise ConfigError(f"{given}={value!r}: use one of {', '.join(map(str, self.choices))}")
        if self.rng:
            lo, hi, lo_in, hi_in = self.bounds()
            if value < lo or value > hi or (value == lo and not lo_in) or (value == hi and not hi_in):
                raise ConfigError(f"{given}={value!r} is out of range: it must be in {self.rng}")

S = Setting  # declares a setting in Hyperparameters; name and type come from the annotated attribute (declared())
BOOL = dict(choices=(0, 1))
TECH = dict(choices=(0, 1), arch=True, on=(1,))

class Hyperparameters:
    """Every setting, declared once (env name: the attribute upper-cased); check_config checks their relations."""
    # ---- run and data
    data_path: str = S("./data/datasets/fineweb10B_sp1024", "folder with fineweb_{train,val}_*.bin shards")
    tokenizer_path: str = S("./data/tokenizers/fineweb_1024_bpe.model", "SentencePiece model of the shards")
    caseops_enabled: int = S(0, "1: require the val byte sidecar (CaseOps); 0: use one if DATA_PATH has it", **BOOL)
    run_id: str = S("", "name of logs/<RUN_ID>.txt|json and artifacts/<RUN_ID>.ptz (default: a uuid)")
    seed: int = S(1337, "random seed (init and nothing else: the data order is fixed)", rng="[0, 4294967295]")
    device: str = S("auto", "where to run", choices=("auto", "cuda", "cpu"))
    compile: int = S(1, "torch.compile the model on CUDA (never on the CPU)", **BOOL)
    compile_mode: str = S("default", "torch.compile mode", choices=(
        "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))
    # ---- model shape
    vocab_size: int = S(1024, "vocabulary size; must equal the tokenizer's", rng="[2, 65536]", arch=True)
    num_layers: int = S(9, "blocks (U-Net skips: first half pushes, second pops)", rng="[1, inf)", arch=True, on=(11,))
    model_dim: int = S(512, "residual width", rng="[2, inf)", arch=True)
    num_heads: int = S(8, "query heads", rng="[1, inf)", arch=True)
    num_kv_heads: int = S(4, "key/value heads (GQA)", rng="[1, inf)", arch=True)
    mlp_mult: float = S(2.0, "MLP hidden width = MLP_MULT * MODEL_DIM", rng="(0, 64]", arch=True, on=(3,))
    tie_embeddings: int = S(1, "share the token embedding with the output head", choices=(0, 1), arch=True)
    tied_embed_init_std: float = S(0.005, "init std of the tied embedding", rng="[0, inf)")
    rope_base: float = S(10000.0, "RoPE base", rng="(0, inf)", arch=True)
    logit_softcap: float = S(30.0, "logits = c * tanh(z / c)", rng="(0, inf)", arch=True)
    qk_gain_init: float = S(1.5, "init of the per-head query gain", rng="(-inf, inf)")
    # ---- techniques (TECHNIQUES.md): all off by default
    value_residual: int = S(0, "mix layer 0's values into every later layer (two scalars a layer, 0.5/0.5)", **TECH)
    gated_attention: int = S(0, "sigmoid gate on the attention output: 1 = W = 0, b = GATED_ATTENTION_BIAS; 2 = the "
                             "1.0611 record's sparse gate sigma(SPARSE_ATTN_GATE_SCALE * W a[:GATE_WINDOW]), per head",
                             choices=(0, 1, 2), arch=True, on=(1, 2),
                             aliases=(("SPARSE_ATTN_GATE_ENABLED", {"0": "0", "1": "2"}),))
    gated_attention_bias: float = S(4.0, "gate bias init (4: sigma = 0.982, near no-op)", rng="(-inf, inf)")
    gated_attention_mode: str = S("head", "head: one gate per head; element: one per channel", arch=True,
                                  choices=("head", "element"), on=("element",), requires="GATED_ATTENTION=1")
    review_residual: int = S(0, "x + sigma(W[rms(x); rms(u)] + b) * u on both sublayers", **TECH)
    highway: int = S(0, "x + sigma(W x + b) * u on both sublayers (Review's state-only baseline)", **TECH)
    review_gate: str = S("lowrank", "gate size of REVIEW_RESIDUAL/HIGHWAY", choices=("full", "lowrank", "head",
                         "scalar"), arch=True, on=("full",), requires="REVIEW_RESIDUAL=1")
    review_rank: int = S(16, "rank of the lowrank gate", rng="[1, inf)", arch=True)
    review_bias_init: float = S(0.0, "gate bias init (0: 0.5, published; 4: ~1, plain-like)", rng="(-inf, inf)")
    smear_gate: int = S(0, "blend each position with the previous one, never across a BOS: 1 = (1-g) x_t + g x_t-1 "
                        "after the norm (g = 0.5 at init); 2 = the 1.0611 record's x_t + lam sigma(W x_t[:GATE_WINDOW])"
                        " x_t-1 before it (identity at init)", choices=(0, 1, 2), arch=True, on=(1, 2),
                        aliases=(("SMEAR_GATE_ENABLED", {"0": "0", "1": "2"}),))
    bigram_hash: int = S(0, "add a hashed embedding of (previous, current) input token", **TECH)
    bigram_buckets: int = S(2048, "hash buckets of BIGRAM_HASH", rng="[2, inf)", arch=True)
    bigram_dim: int = S(128, "embedding width of BIGRAM_HASH before its projection", rng="[1, inf)", arch=True)
    ortho_init: int = S(0, "orthogonal init of every non-zero Linear with both dims >= 64", choices=(0, 1), on=(1,))
    xsa_last_n: int = S(0, "exclusive self attention on the last N layers", rng="[0, inf)", arch=True, on=(4,))
    rope_dims: int = S(0, "RoPE on the first ROPE_DIMS dims of each head (0: all)", rng="[0, inf)", arch=True, on=(16,))
    ln_scale: int = S(0, "scale each sublayer's normalised input by 1/sqrt(layer+1)", **TECH)
    ema: int = S(0, "exponential moving average of the weights, swapped in before export", choices=(0, 1), on=(1,))
    ema_decay: float = S(0.997, "EMA decay per step", rng="[0, 1]")
    muon_wd: float = S(0.0, "Muon decoupled weight decay: p *= 1 - lr * wd", rng="[0, inf)", on=(0.04,))
    adam_wd: float = S(0.0, "AdamW weight decay of embeddings, head and scalars", rng="[0, inf)", on=(0.04,))
    mlp_act: str = S("relu2", "MLP activation", choices=("relu2", "leaky_relu2"), arch=True, on=("leaky_relu2",))
    mlp_leaky_slope: float = S(0.5, "negative slope of leaky_relu2", rng="(-inf, inf)", arch=True)
    # ---- the 1.0611 record's model (FRONTIER.md section 1): all off by default
    skip_gates: int = S(0, "U-Net skips as lerp(w * skip, x, sigma(g)), g per channel from 0", **TECH,
                        aliases=("SKIP_GATES_ENABLED",))
    num_loops: int = S(0, "depth recurrence: once looping is on, blocks LOOP_START..LOOP_END run 1 + NUM_LOOPS "
                       "times in a row", rng="[0, inf)", arch=True, on=(1,), requires="LOOP_START=1 LOOP_END=2")
    loop_start: int = S(3, "first looped block", rng="[0, inf)", arch=True)
    loop_end: int = S(5, "last looped block", rng="[0, inf)", arch=True)
    enable_looping_at: float = S(0.35, "fraction of training (of the wallclock cap, else of ITERATIONS) at which "
                                 "looping switches on; evaluation always loops", rng="[0, 1]")
    parallel_start_layer: int = S(0, "two residual lanes from the decoder block of this index on (0: off)",
                                  rng="[0, inf)", arch=True, on=(3,))
    parallel_final_lane: str = S("mean", "what leaves the two lanes", choices=("mean", "attn", "mlp"), arch=True,
                                 on=("attn",), requires="PARALLEL_START_LAYER=3")
    gate_window: int = S(12, "input channels of SMEAR_GATE=2 and GATED_ATTENTION=2", rng="[1, inf)", arch=True)
    sparse_attn_gate_scale: float = S(1.0, "GATED_ATTENTION=2: scale inside the sigmoid", rng="(-inf, inf)", arch=True)
    varlen_attn: int = S(0, "attention never crosses a BOS (FlashAttention varlen on CUDA, else SDPA with a "
                         "block-diagonal mask); a training micro-batch is one packed row", **TECH)
    # ---- training length and batch
    iterations: int = S(20000, "training steps (the wallclock cap may stop earlier)", rng="[0, inf)")
    warmup_steps: int = S(20, "compile warm-up steps, then weights and optimisers are reset", rng="[0, inf)")
    warmdown_iters: int = S(1200, "LR warmdown steps (under a cap: estimated from the step time)", rng="[0, inf)")
    warmdown_frac: float = S(0.0, "linear LR warmdown over this last fraction of training (of the wallclock cap, "
                             "else of ITERATIONS); 0: WARMDOWN_ITERS", rng="[0, 1]", on=(0.85,))
    min_lr: float = S(0.0, "floor of the LR multiplier", rng="[0, 1]", on=(0.1,))
    train_batch_tokens: int = S(524288, "tokens per optimiser step, all ranks together", rng="[1, inf)")
    train_seq_len: int = S(1024, "training sequence length", rng="[1, inf)")
    max_wallclock_seconds: float = S(600.0, "training time cap, validation excluded (0: none)", rng="[0, inf)")
    val_loss_every: int = S(1000, "validate every N steps (0: only at the end)", rng="[0, inf)")
    val_batch_size: int = S(524288, "tokens per validation batch in training, all ranks together", rng="[1, inf)")
    train_log_every: int = S(200, "log the train loss every N steps (and the first 10)", rng="[0, inf)")
    # ---- optimiser
    embed_lr: float = S(0.6, "Adam LR of an untied embedding", rng="[0, inf)")
    head_lr: float = S(0.008, "Adam LR of an untied output head", rng="[0, inf)")
    tied_embed_lr: float = S(0.05, "Adam LR of the tied embedding", rng="[0, inf)")
    matrix_lr: float = S(0.04, "Muon LR of block matrices", rng="[0, inf)")
    scalar_lr: float = S(0.04, "Adam LR of vectors, scalars and control tensors", rng="[0, inf)")
    muon_momentum: float = S(0.95, "Muon momentum after warm-up", rng="[0, 1)")
    muon_backend_steps: int = S(5, "Newton-Schulz iterations", rng="[1, inf)")
    muon_ns: str = S("classic", "Newton-Schulz coefficients: classic (3.4445, -4.775, 2.0315) or polar (the "
                     "Polar-Express tuple of each step; at most 5 steps)", choices=("classic", "polar"), on=("polar",))
    muon_row_normalize: int = S(0, "MuonEq-R: update rows to unit norm before Newton-Schulz", choices=(0, 1), on=(1,))
    muon_momentum_warmup_start: float = S(0.85, "Muon momentum at step 0", rng="[0, 1)")
    muon_momentum_warmup_steps: int = S(500, "steps of the momentum warm-up", rng="[0, inf)")
    beta1: float = S(0.9, "Adam beta1", rng="[0, 1)")
    beta2: float = S(0.95, "Adam beta2", rng="[0, 1)")
    adam_eps: float = S(1e-8, "Adam epsilon", rng="(0, inf)")
    grad_clip_norm: float = S(0.0, "global gradient clip (0: off)", rng="[0, inf)")
    embed_wd: float = S(-1.0, "AdamW weight decay of the token embeddings (< 0: ADAM_WD)", rng="[-1, inf)", on=(0.085,))
    control_tensor_name_patterns: str = S("", "upstream's: comma-separated name parts of extra control tensors "
                                          "(Adam at SCALAR_LR, fp32 in the artifact)")
    # ---- export and evaluation
    quant_bits: int = S(6, "bits per weight of large matrices", choices=(5, 6, 7, 8), aliases=("MATRIX_BITS",))
    quant_embed_bits: int = S(8, "bits per weight of the token embedding", choices=(5, 6, 7, 8), on=(7,),
                              aliases=("EMBED_BITS",))
    quant_mlp_bits: int = S(0, "bits per weight of MLP matrices (0: QUANT_BITS)", choices=(0, 5, 6, 7, 8))
    quant_method: str = S("rtn", "large matrices: rtn (per-row clip search) | gptq (full-Hessian GPTQ, SD clip)",
                          choices=("rtn", "gptq"), on=("gptq",))
    gptq_calibration_batches: int = S(16, "GPTQ: training batches (one step's tokens) for the Hessians", rng="[1, inf)")
    gptq_reserve_seconds: float = S(8.0, "GPTQ: seconds of MAX_WALLCLOCK_SECONDS kept from the training loop for "
                                    "the calibration", rng="[0, inf)")
    matrix_clip_sigmas: float = S(12.85, "GPTQ: row scale k * std(row) / q_max; k of other matrices", rng="(0, inf)")
    attn_clip_sigmas: float = S(13.0, "GPTQ: k of attention matrices", rng="(0, inf)")
    mlp_clip_sigmas: float = S(11.5, "GPTQ: k of MLP matrices", rng="(0, inf)")
    embed_clip_sigmas: float = S(14.0, "GPTQ: k of the token embedding", rng="(0, inf)")
    lqer_enabled: int = S(0, "LQER: low-rank correction of the LQER_TOP_K largest quantisation errors", **BOOL, on=(1,))
    lqer_rank: int = S(4, "LQER: rank of the correction", rng="[1, inf)")
    lqer_top_k: int = S(3, "LQER: tensors corrected", rng="[1, inf)")
    lqer_factor_bits: int = S(4, "LQER: bits of both factors when not asymmetric", rng="[2, 8]")
    lqer_asym_enabled: int = S(1, "LQER: A at 2 bits with one scale, B at 4 bits with a scale per group", **BOOL)
    lqer_asym_group: int = S(64, "LQER: group size of B's scales", rng="[1, inf)")
    gated_attn_quant_gate: int = S(0, "2-D gates of 32..8192 elements: int8 per row instead of fp32", **BOOL, on=(1,))
    compressor: str = S("brotli", "artifact compressor (streams per matrix group, codes column-major)",
                        choices=("brotli", "zstd", "lzma"), on=("zstd", "lzma"))
    zstd_level: int = S(22, "zstd compression level of the artifact (COMPRESSOR=zstd)", rng="[1, 22]")
    code_form: str = S("raw", "code counted and shipped: raw | wrapped (lzma + base85 self-extractor) | minified "
                       "(python-minifier, then wrapped)", choices=("raw", "wrapped", "minified"))
    int8_keep_float_fp32_name_patterns: str = S("", "upstream's: comma-separated name parts of small tensors "
                                                "stored fp32 (not fp16) in the artifact")
    eval_seq_len: int = S(0, "sliding-window length, and the longest context of TTT_MODE=lora_phased (0: "
                          "TRAIN_SEQ_LEN)", rng="[0, inf)", aliases=("TTT_EVAL_SEQ_LEN",))
    eval_stride: int = S(64, "sliding-window stride (= EVAL_SEQ_LEN: plain non-overlapping evaluation)", rng="[1, inf)")
    eval_batch_seqs: int = S(64, "windows per evaluation batch and rank", rng="[1, inf)")
    float_eval: int = S(1, "also score the float model before quantisation (diagnostic)", **BOOL)
    # ---- evaluation-time methods
    ppmc: int = S(0, "mix an online PPM-C token model with the network: a * p_net + (1 - a) * p_ppm", **BOOL, on=(1,))
    ppmc_order: int = S(2, "longest PPM context, in tokens", rng="[0, 16]")
    ppmc_alpha: float = S(0.95, "weight of the network (0: PPM alone)", rng="[0, 1]")
    ppmc_exclusion: int = S(1, "PPM-C exclusion (0: blend the orders instead)", **BOOL)
    ppmc_reset: str = S("never", "doc: clear the PPM counts after each scored BOS", choices=("never", "doc"))
    eval_mode: str = S("stream", "stream: windows over the concatenated val stream; doc: each document scored alone "
                       "from its BOS, windows inside it", choices=("stream", "doc"), on=("doc",))
    ttt: int = S(0, "legal score-first test-time training on the reloaded artifact (TTT_MODE says which)",
                 choices=(0, 1), on=(1,), aliases=("TTT_ENABLED",))
    ttt_mode: str = S("chunked", "chunked: full-model SGD over chunks of the sliding windows; lora_phased: per-"
                      "document LoRA with global-SGD phases (the 1.0611 record)", choices=("chunked", "lora_phased"),
                      on=("lora_phased",), requires="TTT=1",
                      aliases=(("PHASED_TTT_ENABLED", {"0": "chunked", "1": "lora_phased"}),))
    ttt_chunk_tokens: int = S(32768, "targets per TTT chunk (score the chunk, then train on it)", rng="[1, inf)")
    ttt_lr: float = S(0.002, "TTT SGD learning rate (cosine decay over chunks)", rng="[0, inf)")
    ttt_momentum: float = S(0.9, "TTT SGD momentum", rng="[0, 1)")
    ttt_epochs: int = S(3, "TTT steps per chunk", rng="[1, inf)")
    ttt_grad_clip: float = S(1.0, "TTT gradient clip (0: off)", rng="[0, inf)")
    ttt_lora_rank: int = S(80, "lora_phased: adapter rank", rng="[1, inf)")
    ttt_lora_alpha: float = S(144.0, "lora_phased: outputs scaled by TTT_LORA_ALPHA / TTT_LORA_RANK", rng="(0, inf)")
    ttt_lora_lr: float = S(1e-4, "lora_phased: AdamW LR of the adapters", rng="[0, inf)")
    ttt_beta1: float = S(0.0, "lora_phased: AdamW beta1", rng="[0, 1)")
    ttt_beta2: float = S(0.99, "lora_phased: AdamW beta2", rng="[0, 1)")
    ttt_weight_decay: float = S(0.5, "lora_phased: AdamW weight decay of the adapters", rng="[0, inf)")
    ttt_warm_start_a: int = S(1, "lora_phased: A carried from batch to batch (B and the optimiser restart)", **BOOL)
    ttt_k_lora: int = S(1, "lora_phased: adapters on K (Q, V and the head always have them)", **BOOL)
    ttt_o_lora: int = S(1, "lora_phased: adapters on the attention output (input: the attention input)", **BOOL)
    ttt_mlp_lora: int = S(1, "lora_phased: adapters on the MLP output (input: the MLP input)", **BOOL)
    ttt_batch_size: int = S(64, "lora_phased: documents per batch", rng="[1, inf)")
    ttt_doc_order: str = S("length", "lora_phased: length: batches of similar length, longest first (the record); "
                           "stream: stream order (scores depend on earlier tokens only)", choices=("length", "stream"))
    ttt_chunk_size: int = S(48, "lora_phased: targets per document chunk (score it, then one step)", rng="[1, inf)")
    ttt_short_chunks: str = S("", "lora_phased: 'LEN:CHUNK,...': chunks of CHUNK in a batch whose longest document "
                              "has <= LEN tokens (PR #2014: 256:8,2000:24)", aliases=("TTT_SHORT_SCORE_FIRST_STEPS",))
    ttt_grad_steps: int = S(1, "lora_phased: optimiser steps per chunk", rng="[1, inf)")
    phased_ttt_prefix_docs: int = S(2500, "lora_phased: the phases train on the first N documents scored (0: none)",
                                    rng="[0, inf)")
    phased_ttt_num_phases: int = S(3, "lora_phased: phases, after N/K, 2N/K, ..., N scored documents", rng="[1, inf)")
    global_ttt_lr: float = S(0.001, "phases: SGD LR of all weights (cosine over the chunks)", rng="[0, inf)")
    global_ttt_momentum: float = S(0.9, "phases: SGD momentum", rng="[0, 1)")
    global_ttt_epochs: int = S(1, "phases: passes over each chunk", rng="[0, inf)")
    global_ttt_chunk_tokens: int = S(32768, "phases: tokens per LR chunk (the last is not trained on)", rng="[1, inf)")
    global_ttt_batch_seqs: int = S(32, "phases: sequences of EVAL_SEQ_LEN per step, all ranks", rng="[1, inf)")
    global_ttt_grad_clip: float = S(1.0, "phases: gradient clip (0: off)", rng="[0, inf)")
    global_ttt_warmup_chunks: int = S(0, "phases: chunks of linear LR warm-up before the cosine", rng="[0, inf)")
    global_ttt_warmup_start_lr: float = S(0.0, "phases: LR of the first warm-up chunk", rng="[0, inf)")
    eval_only: str = S("", "path of an artifact: skip training, load it and run the final evaluation")

    def __init__(self, values: dict):
        self.__dict__.update(values)

    @classmethod
    def from_env(cls, env=None) -> "Hyperparameters":
        env = os.environ if env is None else env
        refuse_unknown(env)
        args = cls({s.name.lower(): read_setting(s, env) for s in SETTINGS})
        args.run_id = args.run_id or str(uuid.uuid4())
        args.eval_seq_len = args.eval_seq_len or args.train_seq_len
        return args

    def as_dict(self) -> dict:
        return {s.name: getattr(self, s.name.lower()) for s in SETTINGS}

def declared(cls) -> tuple[Setting, ...]:
    """The Settings of a class body, with their env names and types filled in from the annotations."""
    types = {"int": int, "float": float, "str": str}
    for attr, annotation in cls.__annotations__.items():
        setattr(cls, attr, cls.__dict__[attr]._replace(name=attr.upper(), type=types[annotation]))
    return tuple(cls.__dict__[attr] for attr in cls.__annotations__)

SETTINGS = declared(Hyperparameters)
FLAGS = [(s.name, s.type, s.default, s.meaning) for s in SETTINGS]  # (name, type, default, meaning) for tools
ARCH_KEYS = tuple(s.name for s in SETTINGS if s.arch)
TECHNIQUES = [f"{s.name}={v}" + (f" {s.requires}" if s.requires else "") for s in SETTINGS for v in s.on]
ALIASES = {(a if isinstance(a, str) else a[0]): (s, None if isinstance(a, str) else a[1])
           for s in SETTINGS for a in s.aliases}

def read_setting(s: Setting, env) -> Any:
    """The setting's value from its own name or an alias (two different values for one setting are refused)."""
    given = [(s.name, env[s.name], env[s.name])] if env.get(s.name, "") != "" else []
    for alias, (target, mapping) in ALIASES.items():
        if target is s and env.get(alias, "") != "":
            raw = env[alias] if mapping is None else mapping.get(env[alias])
            if raw is None:
                raise ConfigError(f"{alias}={env[alias]!r}: use one of {', '.join(mapping)}")
            given.append((alias, env[alias], raw))
    if not given:
        return s.default
    values = {s.parse(raw, name if raw == typed else f"{name}={typed!r}, i.e. {s.name}") for name, typed, raw in given}
    if len(values) > 1:
        raise ConfigError(f"{' and '.join(f'{n}={t!r}' for n, t, _ in given)} set {s.name} to different values; "
                          "set one")
    return values.pop()

def abbreviates(key: str, name: str) -> bool:
    """GATED_ATTN -> GATED_ATTENTION: same first word, every later word a same-initial subsequence of the name's."""
    a, b = key.split("_"), name.split("_")
    if len(a) != len(b) or a[0] != b[0] or key == name or len(key) < 0.6 * len(name):
        return False
    return all(x[:1] == y[:1] and re.fullmatch(".*".join(map(re.escape, x)) + ".*", y) for x, y in zip(a, b))

def refuse_unknown(env) -> None:
    """A near-miss, an abbreviation or a lower-case spelling of a known name is a mistake, not a new setting."""
    names = [s.name for s in SETTINGS] + list(ALIASES)
    for key in env:
        if key in names or key in KNOWN_ENV:
            continue
        if key.upper() in names:
            raise ConfigError(f"setting {key}={env[key]!r} is not upper case: use {key.upper()}")
        if not key.isupper():
            continue
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.88) or [n for n in names if abbreviates(key, n)]
        if close:
            raise ConfigError(f"unknown setting {key}={env[key]!r}: did you mean {close[0]}?")

def check_config(args: Hyperparameters, world_size: int) -> None:
    """The relations between settings (each setting's own range was checked when it was read)."""
    a, head_dim = args, args.model_dim // max(args.num_heads, 1)
    relations = [
        (world_size >= 1 and 8 % world_size == 0, f"WORLD_SIZE={world_size} must divide 8 (grad_accum_steps = "
         "8 // WORLD_SIZE)"),
        (a.model_dim % a.num_heads == 0 and a.num_heads % a.num_kv_heads == 0 and head_dim % 2 == 0,
         f"MODEL_DIM={a.model_dim}, NUM_HEADS={a.num_heads}, NUM_KV_HEADS={a.num_kv_heads}: heads must divide "
         "MODEL_DIM with an even head dim, and NUM_KV_HEADS must divide NUM_HEADS"),
        (int(a.mlp_mult * a.model_dim) >= 1, f"MLP_MULT={a.mlp_mult} * MODEL_DIM={a.model_dim} gives no hidden unit"),
        (a.train_batch_tokens % (8 * a.train_seq_len) == 0, f"TRAIN_BATCH_TOKENS={a.train_batch_tokens} must be "
         f"a multiple of 8 * TRAIN_SEQ_LEN = {8 * a.train_seq_len} (8 micro-batches of whole sequences per step)"),
        (a.val_batch_size >= 8 * a.train_seq_len, f"VAL_BATCH_SIZE={a.val_batch_size} must hold at least one "
         f"sequence per micro-batch: >= 8 * TRAIN_SEQ_LEN = {8 * a.train_seq_len}"),
        (a.eval_stride <= a.eval_seq_len, f"EVAL_STRIDE={a.eval_stride} must be in 1..EVAL_SEQ_LEN={a.eval_seq_len}"),
        (a.xsa_last_n <= a.num_layers, f"XSA_LAST_N={a.xsa_last_n} must be in 0..NUM_LAYERS={a.num_layers}"),
        (a.rope_dims % 2 == 0 and a.rope_dims <= head_dim, f"ROPE_DIMS={a.rope_dims} must be even and at most "
         f"the head dim {head_dim}"),
        (not (a.review_residual and a.highway), "REVIEW_RESIDUAL=1 and HIGHWAY=1 are alternatives: set one"),
        (not a.num_loops or a.loop_start <= a.loop_end < a.num_layers, f"LOOP_START={a.loop_start}, LOOP_END="
         f"{a.loop_end}: the looped blocks must satisfy LOOP_START <= LOOP_END < NUM_LAYERS={a.num_layers}"),
        (a.parallel_start_layer < a.num_layers and (not a.num_loops or not a.parallel_start_layer or
                                                    a.parallel_start_layer > a.loop_end),
         f"PARALLEL_START_LAYER={a.parallel_start_layer} must be below NUM_LAYERS={a.num_layers} and, with "
         f"NUM_LOOPS, after the looped blocks (> LOOP_END={a.loop_end}), or 0"),
        (a.gate_window <= a.model_dim or not (a.smear_gate == 2 or a.gated_attention == 2),
         f"GATE_WINDOW={a.gate_window} must be at most MODEL_DIM={a.model_dim}"),
        (re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", a.run_id) is not None, f"RUN_ID={a.run_id!r} must be "
         "a name (letters, digits, '.', '_', '-'; no path)"),
        (a.device != "cuda" or torch.cuda.is_available(), "DEVICE=cuda but no CUDA device is visible; use "
         "DEVICE=cpu"),
        (a.ttt or a.ttt_mode == "chunked", f"TTT_MODE={a.ttt_mode} (PHASED_TTT_ENABLED=1) needs TTT=1 (the "
         "record's TTT_ENABLED=1)"),
        (short_chunks(a.ttt_short_chunks) is not None, f"TTT_SHORT_CHUNKS={a.ttt_short_chunks!r} must be LEN:CHUNK "
         "pairs of whole numbers >= 1, e.g. 256:8,2000:24"),
        (not a.eval_only or Path(a.eval_only).is_file(), f"EVAL_ONLY={a.eval_only} is not a file; give the path of "
         "an artifacts/<RUN_ID>.ptz"),
    ]
    for ok, message in relations:
        if not ok:
            raise ConfigError(message)


# ----------------------------------------------------------------------------------------------------------------
# Data: shards of uint16 tokens behind a 256 x int32 header, the tokenizer's byte table, the training stream.

SHARD_MAGIC, SHARD_VERSION, HEADER_INTS = 20240520, 1, 256
BOS_ID = 1  # every document starts with this token
CASEOPS_OPERATORS = "\ue001\ue002\ue003\ue004"  # TITLE, ALLCAPS, CAPNEXT, ESC of the records' CaseOps transform

def load_shard(path: Path, header_only: bool = False) -> np.ndarray:
    try:
        if not path.is_file():
            raise ConfigError(f"shard {path} is not a regular file")
        size = path.stat().st_size
        if size < HEADER_INTS * 4:
            raise ConfigError(f"shard {path} is {size} bytes, shorter than its 1024-byte header")
        header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    except OSError as exc:
        raise ConfigError(f"shard {path} cannot be read ({exc.strerror or exc})") from None
    if header[0] != SHARD_MAGIC or header[1] != SHARD_VERSION:
        raise ConfigError(f"shard {path} has magic {header[0]} version {header[1]}; expected {SHARD_MAGIC} "
                          f"version {SHARD_VERSION} (rebuild it with python -m data.prepare)")
    if header[2] < 1 or size != HEADER_INTS * 4 + 2 * int(header[2]):
        raise ConfigError(f"shard {path} is {size} bytes but its header promises {header[2]} tokens "
                          f"({HEADER_INTS * 4 + 2 * max(int(header[2]), 0)} bytes): empty, truncated or corrupted")
    return header if header_only else np.fromfile(path, dtype="<u2", count=int(header[2]), offset=HEADER_INTS * 4)

def checked_tokens(path: Path, vocab_size: int) -> np.ndarray:
    """A shard's tokens, refused when one is not an id of the vocabulary."""
    tokens = load_shard(path)
    if int(tokens.max()) >= vocab_size:
        raise ConfigError(f"shard {path} holds token id {int(tokens.max())} >= VOCAB_SIZE={vocab_size}: it was made "
                          "with another tokenizer")
    return tokens

def shard_files(data_path: str, split: str, required: bool = True) -> list[Path]:
    """The shards of one split ("train", "val", or "val_bytes": the val byte sidecar) in DATA_PATH, sorted."""
    pattern = f"fineweb_{split}_*.bin"
    if not Path(data_path).is_dir():
        raise ConfigError(f"DATA_PATH={data_path} is not a folder; build shards with `python -m data.prepare` "
                          "or point DATA_PATH at them")
    files = sorted(Path(p) for p in glob.glob(os.path.join(glob.escape(data_path), pattern))
                   if re.fullmatch(rf"fineweb_{split}_\d+\.bin", Path(p).name))  # val: not the val_bytes sidecar
    if not files and required:
        raise ConfigError(f"no {pattern} shards in {data_path}")
    return files

def load_tokenizer(args: Hyperparameters) -> spm.SentencePieceProcessor:
    if not Path(args.tokenizer_path).is_file():
        raise ConfigError(f"TOKENIZER_PATH={args.tokenizer_path} does not exist")
    try:
        sp = spm.SentencePieceProcessor(model_file=args.tokenizer_path)
    except (RuntimeError, OSError):
        raise ConfigError(f"TOKENIZER_PATH={args.tokenizer_path} is not a SentencePiece model") from None
    if sp.vocab_size() != args.vocab_size:
        raise ConfigError(f"tokenizer {args.tokenizer_path} has {sp.vocab_size()} pieces but VOCAB_SIZE="
                          f"{args.vocab_size}; set VOCAB_SIZE={sp.vocab_size()} or use the matching tokenizer")
    return sp

def check_manifest(args: Hyperparameters, val_bytes_total: int) -> None:
    """A DATA_PATH/manifest.json (data.prepare's) must name this tokenizer's sha256 and val byte total (true bpb)."""
    path = Path(args.data_path) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} cannot be read ({exc}); rebuild the data with python -m data.prepare") from None
    want = (manifest.get("tokenizer") or {}).get("sha256") if isinstance(manifest, dict) else None
    if want and hashlib.sha256(Path(args.tokenizer_path).read_bytes()).hexdigest() != want:
        raise ConfigError(f"TOKENIZER_PATH={args.tokenizer_path} is not the tokenizer that made the shards in "
                          f"{args.data_path} (sha256 differs from its manifest.json); use that tokenizer")
    if want and manifest.get("val_bytes") not in (None, val_bytes_total):
        raise ConfigError(f"the val shards of {args.data_path} hold {val_bytes_total} bytes by this tokenizer but "
                          f"{manifest['val_bytes']} by their manifest.json: rebuild the data")

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

def val_byte_counts(args: Hyperparameters, ids: np.ndarray, sp: spm.SentencePieceProcessor) -> tuple[np.ndarray, str]:
    """Bytes of each val target ids[1:] and their source: the val byte sidecar (fineweb_val_bytes_*.bin: per token the
    original bytes it stands for, 0 for BOS and CaseOps operators) if any, else the byte table (an operator: 3)."""
    files = shard_files(args.data_path, "val_bytes", required=False)
    ops = [i for ch in CASEOPS_OPERATORS for i in [sp.piece_to_id(ch)] if sp.id_to_piece(i) == ch]
    if not files:
        if ops or args.caseops_enabled:
            why = f"TOKENIZER_PATH={args.tokenizer_path} holds the CaseOps operators (ids {ops})" if ops else \
                "CASEOPS_ENABLED=1"
            raise ConfigError(f"{why} but DATA_PATH={args.data_path} has no val byte sidecar (fineweb_val_bytes_*.bin)"
                              "; fetch the CaseOps data with it: python -m data.prepare --source fineweb --variant "
                              "sp8192_caseops")
        return target_bytes(ids, byte_tables(sp)), "byte_table"
    side = np.concatenate([load_shard(f) for f in files])
    if side.size != ids.size or side[np.isin(ids, [sp.bos_id(), *ops])].any():
        raise ConfigError(f"the val byte sidecar of DATA_PATH={args.data_path} ({len(files)} file(s), {side.size} "
                          f"entries) does not fit its {ids.size} val tokens: rebuild or fetch the data again")
    return side[1:].astype(np.int64), "sidecar " + ",".join(f.name for f in files)

class TokenLoader:
    """The training shards in order, forever; rank r trains on span r of each micro-step (any GPU count: same data)."""

    def __init__(self, files: list[Path], rank: int, world_size: int, device: torch.device, vocab_size: int = 65536):
        self.files, self.rank, self.world_size, self.device = files, rank, world_size, device
        self.vocab_size = vocab_size
        self.file_idx, self.tokens, self.pos = 0, checked_tokens(files[0], vocab_size), 0

    def take(self, n: int) -> np.ndarray:
        parts = []
        while n > 0:
            if self.pos == len(self.tokens):
                self.file_idx = (self.file_idx + 1) % len(self.files)
                self.tokens, self.pos = checked_tokens(self.files[self.file_idx], self.vocab_size), 0
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
# Model: GPT with GQA attention, RoPE, QK-norm, relu^2 MLP, U-Net skips, tied embeddings, logit softcap. A disabled
# technique is None. A parameter's role (role(), set by its module; unmarked: 2-D matrix, else control) is its
# optimiser and export precision: matrix (Muon; quantised when large), control (Adam at SCALAR_LR; fp32), embed, head.

def role(p: nn.Parameter, kind: str) -> nn.Parameter:
    p.kit_role = kind
    return p

def param_roles(model: nn.Module, patterns: str = "") -> dict[str, str]:
    """{parameter name: role}; upstream's CONTROL_TENSOR_NAME_PATTERNS (comma-separated) adds control tensors."""
    extra = [x for x in patterns.split(",") if x]
    return {name: "control" if any(x in name for x in extra) else
            getattr(p, "kit_role", "matrix" if p.ndim == 2 else "control") for name, p in model.named_parameters()}

class Kernel(NamedTuple):
    """Causal attention over (B, T, H, D): attend(q, k, v, docs), docs None (dense) or, for VARLEN_ATTN, what
    docs(cu_seqlens, (B, T), max_len) made: no position attends across a cut of the rows laid end to end."""
    name: str
    attend: Callable
    docs: Callable

def sdpa_attend(q: Tensor, k: Tensor, v: Tensor, docs: Tensor | None = None) -> Tensor:
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=docs,
                                       is_causal=docs is None, enable_gqa=k.size(2) != q.size(2))
    return y.transpose(1, 2)

def sdpa_docs(cu_seqlens: Tensor, shape: tuple, max_len: int) -> Tensor:
    """The block-diagonal causal mask (B, 1, T, T): i sees j iff j <= i in the same segment."""
    B, T = shape
    seg = torch.searchsorted(cu_seqlens.long(), torch.arange(B * T, device=cu_seqlens.device), right=True).view(B, 1, T)
    return (seg[..., :, None] == seg[..., None, :]) & torch.ones(T, T, dtype=torch.bool, device=seg.device).tril()

def flash_kernel(name: str, dense: Callable, varlen: Callable) -> Kernel:
    def attend(q: Tensor, k: Tensor, v: Tensor, docs: tuple | None = None) -> Tensor:
        q16, k16, v16 = q.bfloat16(), k.bfloat16(), v.bfloat16()
        if docs is None:
            out = dense(q16, k16, v16, causal=True)
        else:  # the rows as one flat sequence of documents
            (cu, L), flat = docs, [t.flatten(0, 1) for t in (q16, k16, v16)]
            out = varlen(*flat, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=L, max_seqlen_k=L, causal=True)
        return (out[0] if isinstance(out, tuple) else out).view_as(q).to(q.dtype)
    return Kernel(name, attend, lambda cu_seqlens, shape, max_len: (cu_seqlens, max_len))

def attention_kernel(device: torch.device) -> Kernel:
    """flash-attn 3, then 2, on CUDA; PyTorch SDPA otherwise."""
    if device.type == "cuda":
        for module, name in (("flash_attn_interface", "flash_attn_3"), ("flash_attn", "flash_attn_2")):
            try:
                mod = __import__(module)
                return flash_kernel(name, mod.flash_attn_func, mod.flash_attn_varlen_func)
            except (ImportError, AttributeError):
                continue
    return Kernel("sdpa", sdpa_attend, sdpa_docs)

def doc_bounds(idx: Tensor, max_len: int, bucket: int = 64) -> Tensor:
    """cu_seqlens (int32) of idx's rows laid end to end, cut as the 1.0611 record cuts: at each row start, each BOS
    and every max_len tokens of a document; padded with B * T to a multiple of `bucket` (few compiled shapes)."""
    B, T = idx.shape
    pos = torch.arange(T, device=idx.device).expand(B, T)
    start = (idx == BOS_ID) | (pos == 0)
    doc_start = torch.cummax(torch.where(start, pos, 0), dim=1).values
    cuts = torch.nonzero((start | ((pos - doc_start) % max_len == 0)).flatten()).flatten()
    padded = -(-(cuts.numel() + 1) // bucket) * bucket
    return F.pad(cuts, (0, padded - cuts.numel()), value=B * T).to(torch.int32)

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
    """sigma(W z + b) broadcast to `width` channels, W full, low-rank (width x k)(k x n_in), per head or scalar; W
    (low-rank: its output factor) starts at 0 and b at `bias`: sigma(bias) at init. All control tensors."""

    def __init__(self, n_in: int, width: int, kind: str, rank: int, heads: int, bias: float):
        super().__init__()
        out = {"full": width, "lowrank": width, "head": heads, "scalar": 1}[kind]
        self.down = CastedLinear(n_in, rank) if kind == "lowrank" else None
        self.w = CastedLinear(rank if kind == "lowrank" else n_in, out, zero_init=True)
        self.b = nn.Parameter(torch.full((out,), float(bias)))
        self.expand = width // out if 1 < out < width else 1
        for p in self.parameters():
            role(p, "control")

    def forward(self, z: Tensor) -> Tensor:
        g = torch.sigmoid(self.w(z if self.down is None else self.down(z)) + self.b.to(z.dtype))
        return g.repeat_interleave(self.expand, dim=-1) if self.expand > 1 else g

class Review(nn.Module):
    """REVIEW_RESIDUAL: x + sigma(W_r [rms(x); rms(u)] + b_r) * u, the gate conditioned on the update itself."""

    def __init__(self, args: Hyperparameters, n_in: int = 2):
        super().__init__()
        d = args.model_dim
        self.gate = Gate(n_in * d, d, args.review_gate, args.review_rank, args.num_heads, args.review_bias_init)

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        return x + self.gate(torch.cat((rms(x), rms(u)), dim=-1)) * u

class Highway(Review):
    """HIGHWAY: the state-only additive gate x + sigma(W_g x + b_g) * u."""

    def __init__(self, args: Hyperparameters):
        super().__init__(args, 1)

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        return x + self.gate(x) * u

def residual_rule(args: Hyperparameters) -> nn.Module | None:
    """The gated residual update of both sublayers; None: the plain x + u."""
    return Review(args) if args.review_residual else Highway(args) if args.highway else None

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

def exclusive(y: Tensor, v: Tensor) -> Tensor:
    """XSA: remove from each head's output its component along its own (normalised) value vector."""
    v_hat = F.normalize(v, dim=-1).repeat_interleave(y.size(2) // v.size(2), dim=2)
    return y - (y * v_hat).sum(-1, keepdim=True) * v_hat

class SparseGate(nn.Module):
    """GATED_ATTENTION=2 (the 1.0611 record's sparse gate): head h's output times sigma(s * W_h . a[:GATE_WINDOW]),
    s = SPARSE_ATTN_GATE_SCALE, W (heads x GATE_WINDOW) from 0, no bias: 0.5 at init."""

    def __init__(self, args: Hyperparameters):
        super().__init__()
        self.w = role(nn.Parameter(torch.zeros(args.num_heads, args.gate_window)), "control")
        self.window, self.scale = args.gate_window, args.sparse_attn_gate_scale
        self.expand = args.model_dim // args.num_heads

    def forward(self, a: Tensor) -> Tensor:
        g = torch.sigmoid(self.scale * F.linear(a[..., :self.window], self.w.to(a.dtype)))
        return g.repeat_interleave(self.expand, dim=-1)

def out_gate(args: Hyperparameters) -> nn.Module | None:
    if args.gated_attention == 2:
        return SparseGate(args)
    mode = {"head": "head", "element": "full"}[args.gated_attention_mode]
    return Gate(args.model_dim, args.model_dim, mode, 0, args.num_heads, args.gated_attention_bias) \
        if args.gated_attention else None

class Attention(nn.Module):
    def __init__(self, args: Hyperparameters, layer: int, max_len: int, kernel):
        super().__init__()
        d, self.h, self.kv = args.model_dim, args.num_heads, args.num_kv_heads
        self.hd, self.kernel = d // self.h, kernel
        self.c_q = CastedLinear(d, d)
        self.c_k = CastedLinear(d, self.kv * self.hd)
        self.c_v = CastedLinear(d, self.kv * self.hd)
        self.proj = CastedLinear(d, d, zero_init=True)
        self.q_gain = role(nn.Parameter(torch.full((self.h,), args.qk_gain_init)), "control")
        self.rotary = Rotary(args.rope_dims or self.hd, args.rope_base, max_len)
        self.values = ValueResidual() if args.value_residual else None
        self.xsa = layer >= args.num_layers - args.xsa_last_n
        self.out_gate = out_gate(args)

    def forward(self, a: Tensor, v0: Tensor | None, docs=None) -> tuple[Tensor, Tensor]:
        """a: the normalised sublayer input. Returns the projected output and this layer's raw values."""
        B, T, _ = a.shape
        q = rms(self.c_q(a).view(B, T, self.h, self.hd))
        k = rms(self.c_k(a).view(B, T, self.kv, self.hd))
        raw_v = self.c_v(a).view(B, T, self.kv, self.hd)
        v = raw_v if self.values is None else self.values(raw_v, v0)
        q = self.rotary(q) * self.q_gain.to(a.dtype)[:, None]
        y = self.kernel.attend(q, self.rotary(k), v, docs)
        if self.xsa:
            y = exclusive(y, v)
        y = y.reshape(B, T, -1)
        return self.proj(y if self.out_gate is None else y * self.out_gate(a)), raw_v

class MLP(nn.Module):
    def __init__(self, args: Hyperparameters):
        super().__init__()
        hidden = int(args.mlp_mult * args.model_dim)
        self.fc = CastedLinear(args.model_dim, hidden)
        self.proj = CastedLinear(hidden, args.model_dim, zero_init=True)
        self.slope = args.mlp_leaky_slope if args.mlp_act == "leaky_relu2" else None  # None: relu^2

    def act(self, z: Tensor) -> Tensor:
        return (torch.relu(z) if self.slope is None else F.leaky_relu(z, self.slope)).square()

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.act(self.fc(x)))

def residual(rule: nn.Module | None, x: Tensor, u: Tensor) -> Tensor:
    return x + u if rule is None else rule(x, u)

class Block(nn.Module):
    def __init__(self, args: Hyperparameters, layer: int, max_len: int, kernel):
        super().__init__()
        d = args.model_dim
        self.attn, self.mlp = Attention(args, layer, max_len, kernel), MLP(args)
        self.attn_scale = role(nn.Parameter(torch.ones(d)), "control")
        self.mlp_scale = role(nn.Parameter(torch.ones(d)), "control")
        self.resid_mix = role(nn.Parameter(torch.stack((torch.ones(d), torch.zeros(d)))), "control")
        self.attn_res, self.mlp_res = residual_rule(args), residual_rule(args)
        self.ln = 1 / math.sqrt(layer + 1) if args.ln_scale else 1.0  # LN_SCALE

    def attend(self, x: Tensor, x0: Tensor, v0: Tensor | None, docs) -> tuple[Tensor, Tensor, Tensor]:
        """(the input mixed with x0, the scaled attention update, this layer's raw values)."""
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        u, v = self.attn(rms(x) * self.ln, v0, docs)
        return x, self.attn_scale.to(x.dtype) * u, v

    def feed(self, x: Tensor) -> Tensor:
        return self.mlp_scale.to(x.dtype) * self.mlp(rms(x) * self.ln)

    def forward(self, x: Tensor, x0: Tensor, v0: Tensor | None, docs=None) -> tuple[Tensor, Tensor]:
        x, u, v = self.attend(x, x0, v0, docs)
        x = residual(self.attn_res, x, u)
        return residual(self.mlp_res, x, self.feed(x)), v

class Lanes(nn.Module):
    """PARALLEL_START_LAYER (the 1.0611 record's): from the first decoder block of index >= start, attention reads
    lane 0 (mixed with x0), the MLP lane 1, both write both: lane_k <- r[i,k] lane_k + P[i,0,k] a + P[i,1,k] f (r from
    1.1, P from 1; attn_res gates lane 0, mlp_res lane 1). One (r, P) per block, as the record counts them."""

    def __init__(self, args: Hyperparameters):
        super().__init__()
        self.start, self.final = args.parallel_start_layer, args.parallel_final_lane
        self.post = role(nn.Parameter(torch.ones(args.num_layers, 2, 2)), "control")
        self.resid = role(nn.Parameter(torch.full((args.num_layers, 2), 1.1)), "control")

    def forward(self, block: Block, i: int, lanes: tuple, x0: Tensor, v0: Tensor | None, docs):
        _, a, v = block.attend(lanes[0], x0, v0, docs)
        f = block.feed(lanes[1])
        r, p = self.resid[i].to(a.dtype), self.post[i].to(a.dtype)
        return (residual(block.attn_res, r[0] * lanes[0], p[0, 0] * a + p[1, 0] * f),
                residual(block.mlp_res, r[1] * lanes[1], p[0, 1] * a + p[1, 1] * f)), v

    def merge(self, lanes: tuple) -> Tensor:
        return lanes[0] if self.final == "attn" else lanes[1] if self.final == "mlp" else 0.5 * (lanes[0] + lanes[1])

class BigramHash(nn.Module):
    """BIGRAM_HASH: bucket (36313 t_i XOR 27191 t_{i-1}) mod (B-1) (position 0, and a BOS with VARLEN_ATTN: B-1) ->
    Embedding(B, dim) from 0 -> Linear(dim, d) -> times a scale (init 0.05), added to the token embedding."""

    def __init__(self, args: Hyperparameters):
        super().__init__()
        self.buckets, self.isolate = args.bigram_buckets, bool(args.varlen_attn)
        self.embed = nn.Embedding(self.buckets, args.bigram_dim)
        nn.init.zeros_(self.embed.weight)
        role(self.embed.weight, "embed")
        self.proj = CastedLinear(args.bigram_dim, args.model_dim)
        self.scale = role(nn.Parameter(torch.tensor(0.05)), "control")

    def forward(self, x: Tensor, idx: Tensor) -> Tensor:
        h = torch.bitwise_xor(36313 * idx[:, 1:], 27191 * idx[:, :-1]) % (self.buckets - 1)
        h = torch.cat((torch.full_like(idx[:, :1], self.buckets - 1), h), dim=1)
        if self.isolate:
            h = torch.where(idx == BOS_ID, self.buckets - 1, h)
        return x + self.scale.to(x.dtype) * self.proj(self.embed(h).to(x.dtype))

class SmearGate(nn.Module):
    """SMEAR_GATE: x_t = (1 - g) x_t + g x_{t-1}, g = sigma(w) per channel (w = 0: g = 0.5). The previous position
    is zero at position 0 and at every BOS, so nothing smears across a document start."""

    def __init__(self, args: Hyperparameters):
        super().__init__()
        self.smear = role(nn.Parameter(torch.zeros(args.model_dim)), "control")

    def forward(self, x: Tensor, idx: Tensor) -> Tensor:
        prev = F.pad(x[:, :-1], (0, 0, 1, 0)) * (idx != BOS_ID)[..., None].to(x.dtype)
        g = torch.sigmoid(self.smear.to(x.dtype))
        return (1 - g) * x + g * prev

class ContentSmear(nn.Module):
    """SMEAR_GATE=2 (the 1.0611 record's), on the embedding before the first norm: for t >= 1 and no BOS at t,
    x_t += lam * sigma(W x_t[:GATE_WINDOW]) * x_{t-1}; W and lam start at 0 (identity)."""

    def __init__(self, args: Hyperparameters):
        super().__init__()
        self.window, self.gate = args.gate_window, CastedLinear(args.gate_window, 1, zero_init=True)
        role(self.gate.weight, "control")
        self.lam = role(nn.Parameter(torch.zeros(1)), "control")

    def forward(self, x: Tensor, idx: Tensor) -> Tensor:
        g = self.lam.to(x.dtype) * torch.sigmoid(self.gate(x[:, 1:, :self.window]))
        keep = (idx[:, 1:] != BOS_ID).to(x.dtype).unsqueeze(-1)
        return torch.cat((x[:, :1], x[:, 1:] + g * x[:, :-1] * keep), dim=1)

def layer_order(args: Hyperparameters, looped: bool) -> tuple[list[int], list[int]]:
    """Block indices of the encoder (pushes U-Net skips) and decoder (pops them) halves; looped: LOOP_START..LOOP_END
    run 1 + NUM_LOOPS times in a row, then the sequence is halved."""
    L, s, e = args.num_layers, args.loop_start, args.loop_end
    order = [*range(s), *list(range(s, e + 1)) * (args.num_loops + 1), *range(e + 1, L)] if looped else [*range(L)]
    return order[:len(order) // 2], order[len(order) // 2:]

class GPT(nn.Module):
    def __init__(self, args: Hyperparameters, kernel=None):
        super().__init__()
        max_len = max(args.train_seq_len, args.eval_seq_len, args.train_batch_tokens // 8 if args.varlen_attn else 0)
        self.kernel = kernel or attention_kernel(torch.device("cpu"))
        self.softcap, self.seq_len, self.varlen = args.logit_softcap, args.train_seq_len, bool(args.varlen_attn)
        self.tok_emb = nn.Embedding(args.vocab_size, args.model_dim)
        role(self.tok_emb.weight, "embed")
        self.bigram = BigramHash(args) if args.bigram_hash else None
        self.content_smear = ContentSmear(args) if args.smear_gate == 2 else None
        self.smear = SmearGate(args) if args.smear_gate == 1 else None
        self.blocks = nn.ModuleList(Block(args, i, max_len, self.kernel) for i in range(args.num_layers))
        self.orders = {False: layer_order(args, False), True: layer_order(args, args.num_loops > 0)}
        self.looping = False  # switched on at ENABLE_LOOPING_AT in training, and for evaluation
        n_skip = min(map(len, self.orders[True]))
        self.skip_weights = role(nn.Parameter(torch.ones(n_skip, args.model_dim)), "control")
        self.skip_gates = role(nn.Parameter(torch.zeros(n_skip, args.model_dim)), "control") \
            if args.skip_gates else None
        self.lanes = Lanes(args) if args.parallel_start_layer else None
        self.lm_head = None if args.tie_embeddings else CastedLinear(args.model_dim, args.vocab_size, True)
        if args.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, std=args.tied_embed_init_std)
        else:
            role(self.lm_head.weight, "head")
        for m in self.modules():
            if isinstance(m, CastedLinear) and m.zero_init:
                nn.init.zeros_(m.weight)
            elif isinstance(m, CastedLinear) and args.ortho_init and min(m.weight.shape) >= 64:
                nn.init.orthogonal_(m.weight)  # output projections are zero-initialised: no 1/sqrt(2L) needed

    def hidden(self, idx: Tensor, cu_seqlens: Tensor | None = None) -> Tensor:
        """Final normalised hidden states (B, T, d), the head apart (evaluation sends only scored positions through
        it). VARLEN_ATTN: attention stays inside documents cut at cu_seqlens (default: each row's, uncut)."""
        x = self.tok_emb(idx)
        if torch.is_autocast_enabled(x.device.type):  # bf16 residual stream under autocast (fp32 master weights)
            x = x.to(torch.get_autocast_dtype(x.device.type))
        if self.bigram is not None:
            x = self.bigram(x, idx)
        if self.content_smear is not None:
            x = self.content_smear(x, idx)
        x = rms(x)
        if self.smear is not None:
            x = self.smear(x, idx)
        docs = None
        if self.varlen:
            docs = self.kernel.docs(doc_bounds(idx, idx.size(1)) if cu_seqlens is None else cu_seqlens, idx.shape,
                                    idx.size(1) if cu_seqlens is None else self.seq_len)
        encoder, decoder = self.orders[self.looping]
        x0, skips, v0, lanes = x, [], None, None
        for i in encoder:
            x, v = self.blocks[i](x, x0, v0, docs)
            v0 = v if v0 is None else v0
            skips.append(x)
        for j, i in enumerate(decoder):
            if self.lanes is not None and lanes is None and i >= self.lanes.start:
                lanes = (x, x)
            if skips and lanes is None:
                x = self.skip(x, j, skips.pop())
            elif skips:
                lanes = (self.skip(lanes[0], j, skips.pop()), lanes[1])
            if lanes is None:
                x, v = self.blocks[i](x, x0, v0, docs)
            else:
                lanes, v = self.lanes(self.blocks[i], i, lanes, x0, v0, docs)
            v0 = v if v0 is None else v0
        return rms(x if lanes is None else self.lanes.merge(lanes))

    def skip(self, x: Tensor, j: int, s: Tensor) -> Tensor:
        """U-Net skip j: x + w_j s, or with SKIP_GATES lerp(w_j s, x, sigma(g_j)) (the mean at init)."""
        w = self.skip_weights[j].to(x.dtype)
        return x + w * s if self.skip_gates is None else torch.lerp(w * s, x, torch.sigmoid(self.skip_gates[j].to(
            x.dtype)))

    def logits(self, h: Tensor, extra: Tensor | None = None) -> Tensor:
        """Softcapped logits; `extra` (TTT's head adapter) is added before the softcap."""
        z = F.linear(h, self.tok_emb.weight.to(h.dtype)) if self.lm_head is None else self.lm_head(h)
        z = z if extra is None else z + extra
        z = z.float() if z.dtype in (torch.bfloat16, torch.float16) else z  # float64 stays float64 (probes)
        return self.softcap * torch.tanh(z / self.softcap)

    def forward(self, idx: Tensor, targets: Tensor | None = None, cu_seqlens: Tensor | None = None) -> Tensor:
        logits = self.logits(self.hidden(idx, cu_seqlens))
        return logits if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

def build_model(args: Hyperparameters, device: torch.device | None = None) -> GPT:
    """The model of a configuration, seeded; the attention kernel is the best one for `device` (default: CPU)."""
    torch.manual_seed(args.seed)
    return GPT(args, attention_kernel(device or torch.device("cpu")))

def count_params(env) -> int:
    """Exact parameter count of a configuration, built on the meta device (no memory, no GPU)."""
    with torch.device("meta"):
        return sum(p.numel() for p in GPT(Hyperparameters.from_env(env)).parameters())


# ----------------------------------------------------------------------------------------------------------------
# Optimiser: Muon (Newton-Schulz orthogonalised Nesterov momentum) for block matrices, Adam for the rest.

POLAR_EXPRESS = ((8.156554524902461, -22.48329292557795, 15.878769915207462),  # (a, b, c) of steps 1..5
                 (4.042929935166739, -2.808917465908714, 0.5000178451051316),
                 (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
                 (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
                 (2.3465413258596377, -1.7097828382687081, 0.42323551169305323))

def ns_coefficients(kind: str, steps: int) -> tuple:
    """MUON_NS: classic, the fixed quintic `steps` times; polar, the Polar-Express tuples (at most 5, as the record)."""
    return ((3.4445, -4.7750, 2.0315),) * steps if kind == "classic" else POLAR_EXPRESS[:steps]

def newton_schulz(G: Tensor, coeffs: tuple) -> Tensor:
    X = G.to(torch.bfloat16 if G.is_cuda else torch.float32)
    X = X / (X.norm() + 1e-7)
    transposed = X.size(0) > X.size(1)
    if transposed:
        X = X.T
    for a, b, c in coeffs:
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if transposed else X

class Muon(torch.optim.Optimizer):
    """Each rank orthogonalises every WORLD_SIZE-th matrix; one all-reduce shares the updates."""

    def __init__(self, params, lr: float, momentum: float, coeffs: tuple, wd: float = 0.0, row_norm: bool = False):
        super().__init__(params, dict(lr=lr, base_lr=lr, momentum=momentum, coeffs=coeffs, wd=wd, row_norm=row_norm))

    @torch.no_grad()
    def step(self):
        distributed = dist.is_available() and dist.is_initialized()
        world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        for group in self.param_groups:
            params = group["params"]
            flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device,
                               dtype=torch.bfloat16 if params[0].is_cuda else torch.float32)
            parts = flat.split([p.numel() for p in params])  # views: the all-reduce fills them
            for i, (p, part) in enumerate(zip(params, parts)):
                if i % world == rank and p.grad is not None:
                    buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                    buf.mul_(group["momentum"]).add_(p.grad)
                    u = p.grad.add(buf, alpha=group["momentum"])
                    if group["row_norm"]:  # MUON_ROW_NORMALIZE (MuonEq-R): unit rows before Newton-Schulz
                        u = u / u.float().norm(dim=-1, keepdim=True).clamp_min(1e-7).to(u.dtype)
                    g = newton_schulz(u, group["coeffs"])
                    part.copy_(g.flatten() * max(1, p.size(0) / p.size(1)) ** 0.5)
            if distributed:
                dist.all_reduce(flat)
            for p, part in zip(params, parts):
                if group["wd"]:
                    p.mul_(1 - group["lr"] * group["wd"])
                p.add_(part.view_as(p).to(p.dtype), alpha=-group["lr"])

def build_optimizers(model: GPT, args: Hyperparameters) -> tuple[list[torch.optim.Optimizer], Muon]:
    """By role: embeddings (token, bigram) and the untied head: Adam at their LRs; matrices: Muon; control: Adam."""
    roles = param_roles(model, args.control_tensor_name_patterns)
    groups = {"embed": [], "head": [], "matrix": [], "control": []}
    for name, p in model.named_parameters():
        groups[roles[name]].append(p)
    fused = next(model.parameters()).is_cuda

    def adam(params, lr, wd=args.adam_wd):
        return torch.optim.AdamW([dict(params=params, lr=lr, base_lr=lr)], betas=(args.beta1, args.beta2),
                                 eps=args.adam_eps, weight_decay=wd, fused=fused)
    muon = Muon(groups["matrix"], args.matrix_lr, args.muon_momentum,
                ns_coefficients(args.muon_ns, args.muon_backend_steps), args.muon_wd, bool(args.muon_row_normalize))
    embed_wd = args.adam_wd if args.embed_wd < 0 else args.embed_wd
    opts = [adam(groups["embed"], args.tied_embed_lr if args.tie_embeddings else args.embed_lr, embed_wd), muon,
            adam(groups["control"], args.scalar_lr)]
    if groups["head"]:
        opts.append(adam(groups["head"], args.head_lr))
    return opts, muon


# ----------------------------------------------------------------------------------------------------------------
# Evaluation: exact sliding windows of length L. Every target tokens[1..N-1] is scored once, by the first window that
# reaches it (at most `stride` new ones a window), with at least L - stride tokens of context; only scored positions
# go through the output head.

def windows(n_tokens: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(input start, first scored target, last scored target + 1) in target positions of the token stream."""
    out, done, end = [], 1, min(seq_len, n_tokens - 1)
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
    ar = torch.arange(int((w[:, 2] - 1 - w[:, 0]).max()) if len(wins) else 0, device=device)  # the longest window
    for i in range(0, len(w), batch_seqs):
        s, a, e = w[i:i + batch_seqs].unbind(1)
        if len(w) > batch_seqs and s.numel() < batch_seqs:  # pad the last batch (one shape for compiled code)
            s, a, e = (F.pad(t, (0, batch_seqs - t.numel()), value=int(t[-1])) for t in (s, a, e))
            a = torch.where(torch.arange(batch_seqs, device=device) < len(w) - i, a, e)  # pads score nothing
        idx = (s[:, None] + ar).clamp_max(tokens.numel() - 2)  # a shorter window: later tokens pad it (causal)
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
    """Full log-probabilities (float64, [P, V]) of each target position in the scorer's own context (probe API)."""
    model.eval()
    wins, out = windows(tokens.numel(), seq_len, stride), []
    for p in positions:
        s, a, e = next(w for w in wins if w[1] <= p < w[2])
        with autocast(tokens.device):
            h = model.hidden(tokens[None, s:e - 1])[0, p - 1 - s]
        out.append(torch.log_softmax(model.logits(h).double(), dim=-1))
    return torch.stack(out)

def sliding_eval(model: GPT, tokens: Tensor, args: Hyperparameters, rank: int, world_size: int,
                 seq_len: int = 0, stride: int = 0, batch_seqs: int = 0) -> tuple[Tensor, Tensor]:
    """(target positions, NLLs) of this rank's share of EVAL_MODE's windows (or the stream's of seq_len/stride)."""
    model.eval()
    wins = windows(tokens.numel(), seq_len, stride) if seq_len else eval_windows(tokens, args)
    mine = wins[len(wins) * rank // world_size:len(wins) * (rank + 1) // world_size]
    nll = window_nll(model, tokens, mine, batch_seqs or args.eval_batch_seqs)
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
    """No-op ledger; the compliance probe and the tests pass one that records every scored and trained position."""

    def scored(self, positions: Tensor) -> None: ...

    def trained(self, positions: Tensor) -> None: ...

def sgd_step(model: GPT, params: list, opt: torch.optim.Optimizer, tokens: Tensor, rows: list, n_targets: int,
             clip: float, ledger: TTTLedger, packed: int = 0) -> None:
    """One full-model TTT step on `rows`, (input, target) position tensors (n, T) into the val stream: loss summed /
    n_targets (all ranks'), gradients summed over ranks; target position 0 (never scored) is skipped. packed > 0
    (VARLEN_ATTN): a pair's rows as one row cut at each BOS and every `packed` tokens (the record's layout)."""
    opt.zero_grad(set_to_none=False)
    for inp, tgt in rows:
        if tgt.numel() == 0:
            continue
        x = tokens[inp].view(1, -1) if packed else tokens[inp]
        with autocast(tokens.device):
            logits = model(x, cu_seqlens=doc_bounds(x, packed)) if packed else model(x)
        y = torch.where(tgt > 0, tokens[tgt], -100)
        (F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum") / n_targets).backward()
        ledger.trained(tgt[tgt > 0])
    if dist.is_available() and dist.is_initialized():  # one all-reduce of all gradients
        flat = torch.cat([p.grad.flatten() for p in params])
        dist.all_reduce(flat)
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad.copy_(g.view_as(p))
    if clip > 0:
        nn.utils.clip_grad_norm_(params, clip)
    opt.step()

def full_model_sgd(model: GPT, lr: float, momentum: float) -> tuple[list, torch.optim.SGD]:
    params = list(model.parameters())
    for p in params:  # explicit zeros: a rank with nothing to train still joins the gradient all-reduce
        p.requires_grad_(True)
        p.grad = torch.zeros_like(p)
    return params, torch.optim.SGD(params, lr=lr, momentum=momentum)

def chunked_ttt(model: GPT, tokens: Tensor, args: Hyperparameters, rank: int, world_size: int,
                ledger: TTTLedger) -> tuple[Tensor, Tensor]:
    """TTT_MODE=chunked: EVAL_MODE's windows in chunks of TTT_CHUNK_TOKENS targets; each is scored (no_grad), then,
    but the last, trained on: TTT_EPOCHS SGD steps on exactly its targets, cosine LR over chunks."""
    chunks: dict[int, list] = {}
    for w in eval_windows(tokens, args):
        chunks.setdefault((w[1] - 1) // args.ttt_chunk_tokens, []).append(w)
    chunks = list(chunks.values())
    params, opt = full_model_sgd(model, args.ttt_lr, args.ttt_momentum)
    all_pos, all_nll, L = [], [], args.eval_seq_len
    ar = torch.arange(L, device=tokens.device)
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
        n_tail = hi - int(tail.max()) if tail.numel() else 0
        rows = [(t - 1, t) for t in (full[:, None] + ar, tail[:, None] + ar[:n_tail])]
        for g in opt.param_groups:
            g["lr"] = args.ttt_lr * 0.5 * (1 + math.cos(math.pi * c / max(len(chunks) - 1, 1)))
        model.train()
        for _ in range(args.ttt_epochs):
            sgd_step(model, params, opt, tokens, rows, hi - lo, args.ttt_grad_clip, ledger)
    model.eval()
    return torch.cat(all_pos), torch.cat(all_nll)

# TTT_MODE=lora_phased, the 1.0611 record's evaluation (FRONTIER.md 1.13): batches of documents, each with its own
# LoRA adapters trained chunk by chunk, score first; phases of full-model SGD on documents already scored.

def split_docs(tokens: Tensor) -> tuple[Tensor, Tensor]:
    """The val stream's documents (starts, lengths) on the CPU: each from its BOS to the next BOS inclusive (its last
    target), the last to the end, tokens before the first BOS one of their own: every target in exactly one."""
    bos = torch.nonzero(tokens == BOS_ID).flatten().cpu()
    starts = torch.cat((torch.zeros(1, dtype=torch.long), bos[bos > 0]))
    lengths = torch.cat((starts[1:] + 1, torch.tensor([tokens.numel()]))) - starts
    return starts[lengths >= 2], lengths[lengths >= 2]

def eval_windows(tokens: Tensor, args: Hyperparameters) -> list[tuple[int, int, int]]:
    """The stream's sliding windows, or with EVAL_MODE=doc each document's: a target sees only its own document."""
    L, stride = args.eval_seq_len, args.eval_stride
    if args.eval_mode == "stream":
        return windows(tokens.numel(), L, stride)
    return [(s0 + s, s0 + a, s0 + e) for s0, n in zip(*(t.tolist() for t in split_docs(tokens)))
            for s, a, e in windows(n, L, stride)]

def short_chunks(text: str) -> list[tuple[int, int]] | None:
    """TTT_SHORT_CHUNKS as (longest document, chunk) pairs, shortest first; None when malformed."""
    try:
        pairs = sorted(tuple(int(v) for v in item.split(":")) for item in text.split(",") if item.strip())
    except ValueError:
        return None
    return pairs if all(len(p) == 2 and min(p) >= 1 for p in pairs) else None

def doc_batches(lengths: Tensor, args: Hyperparameters) -> list[tuple[int, Tensor]]:
    """(batch number, document indices) of batches of TTT_BATCH_SIZE documents in processing order. TTT_DOC_ORDER:
    length, sorted by length (stable), longest batch first (the record); stream, in stream order."""
    if args.ttt_doc_order == "stream":
        return list(enumerate(torch.arange(lengths.numel()).split(args.ttt_batch_size)))
    batches = list(enumerate(torch.sort(lengths, stable=True).indices.split(args.ttt_batch_size)))
    return sorted(batches, key=lambda b: -int(lengths[b[1]].max()))

def phase_plan(batches: list, args: Hyperparameters) -> list[tuple[int, int]]:
    """Segments of the batch queue as (end, documents the phase after it trains on; 0: none, as the last). A phase
    follows the batch where the documents scored reach PHASED_TTT_PREFIX_DOCS * k / PHASED_TTT_NUM_PHASES."""
    n = min(args.phased_ttt_prefix_docs, sum(len(d) for _, d in batches))
    bounds = [n * (k + 1) // args.phased_ttt_num_phases for k in range(args.phased_ttt_num_phases)] if n else []
    plan, done = [], 0
    for q, (_, docs) in enumerate(batches):
        done += len(docs)
        if len(plan) < len(bounds) and done >= bounds[len(plan)]:
            plan.append((q + 1, bounds[len(plan)]))
    return plan + [(len(batches), 0)]

def batch_queue(key: str, start: int):
    """A claim() handing out queue positions start, start + 1, ... first come first served (one store.add a claim)."""
    store, n = dist.distributed_c10d._get_default_store() if dist.is_initialized() else None, iter(range(1, 1 << 62))
    return lambda: start + (store.add(key, 1) if store is not None else next(n)) - 1

def lora_generator(seed: int, key: int, device: torch.device) -> torch.Generator:
    """The generator of the adapters' A: the same on every rank for a given (SEED, key)."""
    return torch.Generator(device).manual_seed(hash((seed, key)) & (2 ** 62 - 1))

class Adapters:
    """Per-document adapters (x A_b^T) B_b^T * TTT_LORA_ALPHA / rank, A ~ U(+-1/sqrt(d)), B = 0, on Q, K, V, attention
    and MLP outputs of every block pass (fed the sublayer input) and the head; one set per batch size."""

    def __init__(self, model: GPT, args: Hyperparameters):
        attn = next(m for m in model.modules() if isinstance(m, Attention))
        P = sum(map(len, model.orders[model.looping]))  # block passes: a looped block once per pass
        d, kv, a = attn.c_q.weight.size(1), attn.c_k.weight.size(0), args
        sizes = {"head": model.tok_emb.num_embeddings, "q": d, "v": kv, "k": kv * a.ttt_k_lora,
                 "mlp": d * a.ttt_mlp_lora, "o": d * a.ttt_o_lora}  # the record's order of draws
        self.shapes = {k: (1 if k == "head" else P, n) for k, n in sizes.items() if n}
        self.d, self.args, self.scale, self.sets, self.cur = d, args, a.ttt_lora_alpha / a.ttt_lora_rank, {}, {}

    def fresh(self, bsz: int, gen: torch.Generator) -> None:
        r, bound = self.args.ttt_lora_rank, self.d ** -0.5
        self.cur = self.sets[bsz] = {k: (
            torch.empty(p, bsz, r, self.d, device=gen.device).uniform_(-bound, bound, generator=gen).requires_grad_(),
            torch.zeros(p, bsz, n, r, device=gen.device, requires_grad=True)) for k, (p, n) in self.shapes.items()}

    def use(self, bsz: int, gen: torch.Generator, keep_a: bool) -> list[Tensor]:
        """The next batch's tensors: the kept set of TTT_BATCH_SIZE restarted (B = 0; A kept or redrawn), else fresh."""
        if bsz not in self.sets or bsz != self.args.ttt_batch_size:
            self.fresh(bsz, gen)
        else:
            self.cur = self.sets[bsz]
            with torch.no_grad():
                for A, B in self.cur.values():
                    B.zero_()
                    if not keep_a:
                        A.uniform_(-self.d ** -0.5, self.d ** -0.5, generator=gen)
        return [t for pair in self.cur.values() for t in pair]

    def __call__(self, kind: str, i: int, x: Tensor) -> Tensor:
        A, B = self.cur[kind]
        return (x @ A[i].transpose(1, 2).to(x.dtype)) @ B[i].transpose(1, 2).to(x.dtype) * self.scale

    @contextlib.contextmanager
    def hooked(self, model: GPT):
        """Inside the `with`, the model's forward passes (each after begin()) add the current set's outputs."""
        def count(sub):
            return lambda module, inputs: self.at.__setitem__(sub, self.at[sub] + 1)

        def add(kind, sub):
            def post(module, inputs, out):
                delta = self(kind, self.at[sub], inputs[0])
                return (out[0] + delta, *out[1:]) if isinstance(out, tuple) else out + delta
            return post
        handles = []
        for m in model.modules():
            sub = "attn" if isinstance(m, Attention) else "mlp" if isinstance(m, MLP) else None
            targets = [("q", m.c_q), ("k", m.c_k), ("v", m.c_v), ("o", m)] if sub == "attn" else [("mlp", m)]
            if sub is not None:
                handles += [m.register_forward_pre_hook(count(sub))] + [
                    t.register_forward_hook(add(k, sub)) for k, t in targets if k in self.shapes]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def begin(self) -> None:
        self.at = {"attn": -1, "mlp": -1}

def chunk_rows(tokens: Tensor, starts: Tensor, lengths: Tensor, ci: int, C: int, L: int, causal: bool):
    """Chunk ci (targets ci*C..) of a batch's documents, context at most L tokens back from the chunk's end (`causal`:
    a full chunk's end, so no score depends on where a document ends): rows x (bsz, W) padded with 0, the targets'
    row positions `sel` (bsz, C), stream positions `pos`, which are real, and which rows train (a chunk follows)."""
    dev, pred = tokens.device, lengths - 1
    nc = (pred + C - 1) // C
    end = torch.where(nc - 1 == ci, pred, (ci + 1) * C)  # the chunk's end, in targets of the document
    ws = torch.full_like(end, max((ci + 1) * C - L, 0)) if causal else (end - L).clamp_min(0)  # its first token
    width, cnt = (torch.where(nc > ci, v, 0).to(dev)[:, None] for v in (end - ws, end - ci * C))
    cols, j = torch.arange(min((ci + 1) * C, L), device=dev), torch.arange(C, device=dev)
    x = torch.where(cols < width, tokens[((starts + ws).to(dev)[:, None] + cols).clamp_max(tokens.numel() - 1)], 0)
    sel = ((ci * C - ws).to(dev)[:, None] + j).clamp(0, cols.numel() - 1)
    pos = (starts + 1 + ci * C).to(dev)[:, None] + j
    return x, sel, pos, j < cnt, (nc - 1 > ci).to(dev)

def lora_nll(hidden, model: GPT, ad: Adapters, x: Tensor, sel: Tensor, y: Tensor) -> Tensor:
    """Per-target NLL (bsz, C) at the row positions sel of the windows x, through the current adapters."""
    ad.begin()
    with autocast(x.device):
        h = hidden(x)
        h = h.gather(1, sel[..., None].expand(-1, -1, h.size(-1)))
        logits = model.logits(h, ad("head", 0, h))
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)

def lora_batch(hidden, model: GPT, ad: Adapters, params: list, tokens: Tensor, starts: Tensor, lengths: Tensor,
               args: Hyperparameters, ledger: TTTLedger) -> tuple[Tensor, Tensor]:
    """Score-first TTT of one batch of documents, chunk by chunk: each chunk is scored, then (same forward pass)
    TTT_GRAD_STEPS AdamW steps on those targets of documents with a later chunk. Returns (positions, NLLs)."""
    C = next((c for n, c in short_chunks(args.ttt_short_chunks) if int(lengths.max()) <= n), args.ttt_chunk_size)
    opt = torch.optim.AdamW(params, lr=args.ttt_lora_lr, betas=(args.ttt_beta1, args.ttt_beta2),
                            eps=1e-10, weight_decay=args.ttt_weight_decay, fused=tokens.is_cuda)
    out_pos, out_nll = [], []
    for ci in range(int((lengths.max() - 2) // C) + 1):
        x, sel, pos, real, train = chunk_rows(tokens, starts, lengths, ci, C, args.eval_seq_len,
                                              args.ttt_doc_order == "stream")
        y = tokens[pos.clamp_max(tokens.numel() - 1)]
        nll = lora_nll(hidden, model, ad, x, sel, y)
        out_pos.append(pos[real])  # 1. score: added to the totals
        out_nll.append(nll.detach()[real].double())
        ledger.scored(pos[real])
        for step in range(args.ttt_grad_steps if bool(train.any()) else 0):  # 2. train on the scored targets
            if step:
                nll = lora_nll(hidden, model, ad, x, sel, y)
            opt.zero_grad(set_to_none=True)
            (nll.mean(1) * train).sum().backward()
            ledger.trained(pos[train].flatten())
            opt.step()
    return torch.cat(out_pos), torch.cat(out_nll)

def global_sgd(model: GPT, tokens: Tensor, src: Tensor, tgt: Tensor, args: Hyperparameters, rank: int,
               world_size: int, ledger: TTTLedger) -> None:
    """A phase: SGD of all weights on documents laid end to end (src: stream positions; tgt: same, 0 at document
    starts), GLOBAL_TTT_CHUNK_TOKENS chunks (the last skipped), LR warm-up then cosine. VARLEN_ATTN: a rank's
    sequences as one row cut at BOS and every min(EVAL_SEQ_LEN, TRAIN_SEQ_LEN) tokens (the record's layout)."""
    params, opt = full_model_sgd(model, args.global_ttt_lr, args.global_ttt_momentum)
    L, T, total, a = args.eval_seq_len, args.global_ttt_chunk_tokens, src.numel() - 1, args
    n_chunks = max(-(-total // T), 0)
    warm, ar = max(0, min(a.global_ttt_warmup_chunks, n_chunks - 1)), torch.arange(L, device=src.device)
    model.train()
    for ci in range(n_chunks - 1):  # the last chunk is not trained on
        n_seqs = (min((ci + 1) * T, total) - ci * T) // L
        t = ci / max(warm - 1, 1) if ci < warm else max(ci - warm, 0) / max(n_chunks - 1 - warm, 1)
        for g in opt.param_groups:
            g["lr"] = a.global_ttt_warmup_start_lr + (a.global_ttt_lr - a.global_ttt_warmup_start_lr) * t \
                if ci < warm else a.global_ttt_lr * 0.5 * (1 + math.cos(math.pi * t))
        for _ in range(a.global_ttt_epochs):
            for b0 in range(0, n_seqs, a.global_ttt_batch_seqs):
                j = ci * T + torch.arange(b0, min(b0 + a.global_ttt_batch_seqs, n_seqs), device=src.device)[:, None] \
                    * L + ar  # inputs at j, targets at j + 1 of the laid-out documents
                mine = j[rank::world_size]
                sgd_step(model, params, opt, tokens, [(src[mine], tgt[mine + 1])], int((tgt[j + 1] > 0).sum()),
                         a.global_ttt_grad_clip, ledger, min(L, model.seq_len) if model.varlen else 0)
    model.eval()

def lora_phased_eval(model: GPT, tokens: Tensor, args: Hyperparameters, rank: int, world_size: int,
                     ledger: TTTLedger, log) -> tuple[Tensor, Tensor]:
    """TTT_MODE=lora_phased: ranks claim batches and run lora_batch with restarted adapters; at a phase, once every
    batch before it is done, global_sgd trains on the first documents scored. This rank's (positions, NLLs)."""
    starts, lengths = split_docs(tokens)
    batches, dev, t0 = doc_batches(lengths, args), tokens.device, time.perf_counter()
    hidden = type(model).hidden.__get__(model)  # eager: a compiled hidden has one fixed shape
    model.requires_grad_(False)
    ad, out, q0 = Adapters(model, args), [], 0
    if tokens.is_cuda and args.compile:  # compiled for any shape, warmed up on random tokens (never val tokens)
        hidden, B, L, g = torch.compile(hidden, dynamic=True), args.ttt_batch_size, args.eval_seq_len, \
            torch.Generator(dev).manual_seed(0)
        fake = torch.randint(2, args.vocab_size, (B * (L + 1),), generator=g, device=dev).index_fill(
            0, torch.arange(0, B * (L + 1), L + 1, device=dev), BOS_ID)
        ad.fresh(B, g)
        with ad.hooked(model):  # every window width of a chunk loop, forward and backward, AdamW
            lora_batch(hidden, model, ad, ad.use(B, g, True), fake, torch.arange(B) * (L + 1),
                       torch.full((B,), L + 1), args, TTTLedger())
        log(f"ttt_lora: compile warm-up on random tokens {time.perf_counter() - t0:.1f}s")
    for s, (q1, boundary) in enumerate(phase_plan(batches, args)):
        gen = lora_generator(args.seed, s, dev)
        ad.sets = {}
        ad.fresh(args.ttt_batch_size, gen)  # drawn first, as the record's reusable adapters
        claim = batch_queue(f"ttt/{args.run_id}/{s}", q0)
        with ad.hooked(model):
            while (q := claim()) < q1:
                b, docs = batches[q]
                params = ad.use(len(docs), gen if args.ttt_warm_start_a else lora_generator(args.seed, -1 - b, dev),
                                bool(args.ttt_warm_start_a))
                out.append(lora_batch(hidden, model, ad, params, tokens, starts[docs], lengths[docs], args, ledger))
        if boundary:
            docs = [int(d) for _, ds in sorted(batches[:q1], key=lambda b: b[0]) for d in ds][:boundary]
            src = torch.cat([torch.arange(int(starts[d]), int(starts[d] + lengths[d])) for d in docs]).to(dev)
            tgt = src.index_fill(0, (lengths[docs].cumsum(0) - lengths[docs]).to(dev), 0)  # no BOS -> BOS pairs
            global_sgd(model, tokens, src, tgt, args, rank, world_size, ledger)
            model.requires_grad_(False)
        log(f"ttt_lora: batches {q0}..{q1 - 1} of {len(batches)}" + (f", then phase {s + 1} on {boundary} "
            f"documents ({src.numel()} tokens)" if boundary else "") + f"; {time.perf_counter() - t0:.1f}s")
        q0 = q1
    model.requires_grad_(True)
    out.append((torch.zeros(0, dtype=torch.long, device=dev), torch.zeros(0, dtype=torch.float64, device=dev)))
    return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])  # (a rank may have had no batch)

def ttt_eval(model: GPT, tokens: Tensor, args: Hyperparameters, rank: int, world_size: int,
             ledger: TTTLedger = TTTLedger(), log=lambda msg: None) -> tuple[Tensor, Tensor]:
    """Legal score-first test-time training (TTT_MODE): this rank's (target positions, NLLs)."""
    if args.ttt_mode == "lora_phased":
        return lora_phased_eval(model, tokens, args, rank, world_size, ledger, log)
    return chunked_ttt(model, tokens, args, rank, world_size, ledger)

def ttt_score_nll(model: GPT, tokens: Tensor, args: Hyperparameters, ledger: TTTLedger = TTTLedger()) -> Tensor:
    """Single-process TTT scoring (probe API; a run calls ttt_eval): NLL of tokens[1:] in stream order (float64)."""
    pos, nll = ttt_eval(model, tokens, args, 0, 1, ledger)
    return torch.empty_like(nll).index_copy_(0, pos - 1, nll)

# PPM-C context mixer (PPMC=1): p = alpha * p_net + (1 - alpha) * p_ppm over the val stream, causally. Token t uses
# orders min(ORDER, t')..0 (t': tokens counted since the last reset), then order -1 (uniform over the vocabulary). A
# seen context with counts c, total n and q distinct symbols gives P(x) = c(x)/(n+q) and escape q/(n+q); an unseen
# order, or one left empty by exclusion, is skipped at no cost. Exclusion: symbols of the higher orders used leave c,
# n and q of the lower ones; an order that with those above covers the whole vocabulary gets no escape, so every
# distribution sums to 1. PPMC_EXCLUSION=0 blends instead: P_k(x) = (c_k(x) + q_k P_{k-1}(x)) / (n_k + q_k). Counts
# are updated after the token is scored; token 0 is counted, never scored; PPMC_RESET=doc clears all counts after a
# scored BOS, then counts it.
#
# How (exact, vectorised, no per-token loop): the order-k context of t is an integer id: order 0 = the segment (0
# unless PPMC_RESET=doc; a BOS counts in the new one), order k = the dense id of the order-(k-1) (context, symbol)
# pair at t-1. One sort of (context * V + symbol, position) per order gives c_k(t) (earlier occurrences of the pair),
# the pair ids and, shifted by one, every order-(k+1) context's occurrences in time order: n_{k+1}(t) = c_k(t-1),
# q_{k+1}(t) = first occurrences of pairs so far in that context's run. Exclusion needs X_k(t) = sum of c_k(y; t) over
# y in S_{k+1}(t), the order-(k+1) context's symbols (by nesting, order k's whole exclusion set): n'_k = n_k - X_k,
# q'_k = q_k - q_{k+1}, where that context was seen but did not offer x_t, i.e. at its new symbols: q^2/2 look-ups
# for a context ending with q symbols (text: 5-10 a token at ORDER=2; i.i.d. random tokens: ~40), answered chunk by
# chunk by one sort of occurrences and look-ups together (_lookup_sums). Orders fold into p bottom-up (_fold) as soon
# as X and the next q are known: at most two orders in memory.
# ----------------------------------------------------------------------------------------------------------------

PPM_LOOKUP_CHUNK = 1 << 20  # elements (queries' pairs + events) sorted at once by _lookup_sums

def _sort_by_key(key: np.ndarray, pos: np.ndarray, nb: int):
    """Positions (increasing, < 2**nb) sorted by (key, position), and flags at each run start. Overwrites key."""
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

def _chunks(cost: np.ndarray, chunk: int) -> list[tuple[int, int]]:
    """Query ranges [i0, i1) whose cumulative `cost` grows by at most `chunk` (at least one query each)."""
    out, i0 = [], 0
    while i0 < cost.size:
        i1 = max(i0 + 1, int(np.searchsorted(cost, (cost[i0 - 1] if i0 else 0) + chunk, "right")))
        out.append((i0, i1))
        i0 = i1
    return out

def _lookup_sums(ev_pos, ev_pair, n_pairs, tq, rank, lp, o, cnt, nb):
    """For each query i (positions tq, increasing): the occurrences before tq[i] of the pairs lp[o_i .. o_i + cnt_i)
    among the events (positions ev_pos, increasing; pair ids ev_pair). Per chunk of queries (`seen`: every pair's
    events before it), one sort of events (pair, 2*local rank) and look-ups (pair, 2*local query + 1) puts each
    look-up just after its pair's earlier events (rank[j]: queries at positions <= j)."""
    X, seen = np.zeros(tq.size), np.zeros(n_pairs, np.int64)
    evb = np.searchsorted(ev_pos, tq)  # events before each query
    e0 = 0
    for i0, i1 in _chunks(np.cumsum(cnt + np.diff(evb, prepend=0)), PPM_LOOKUP_CHUNK):
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
        e0 = e1
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

class PPMOrder:
    """One order's counts, indexed by position t (0..N; N is a never-valid dummy) unless said otherwise. Mutable:
    arrays are dropped (None) as soon as they are used up, to keep at most two orders in memory."""

    def __init__(self, count, total, distinct, valid_pos, sorted_pos, run_start, pair_id, seen_before, n_pairs):
        self.count, self.total, self.distinct = count, total, distinct  # c_k(t), n_k(t), q_k(t) of (context, x_t)
        self.valid_pos = valid_pos  # positions whose order-k context lies inside their segment (increasing)
        self.sorted_pos, self.run_start = sorted_pos, run_start  # valid_pos sorted by (pair, position); run starts
        self.pair_id, self.seen_before = pair_id, seen_before  # (context, x_t) id; in sorted order: earlier occurrences
        self.n_pairs = n_pairs

def _pair_counts(sorted_pos: np.ndarray, run_start: np.ndarray, N: int):
    """From the occurrences of order k's (context, symbol) pairs, sorted by (pair, position): each pair's dense id
    and earlier occurrences (in sorted order, and scattered to time order), and the number of pairs."""
    gid = np.cumsum(run_start, dtype=np.int32) - 1  # the dense id of each (context, symbol) pair
    starts = np.flatnonzero(run_start).astype(np.int32)
    seen_before = np.arange(sorted_pos.size, dtype=np.int32) - starts[gid]
    n_pairs = starts.size
    del starts
    packed = np.zeros(N + 1, np.int64)  # (pair id, count) packed: one scatter into time order
    packed[sorted_pos] = (gid.astype(np.int64) << 32) | seen_before
    del gid
    pair_id, count = _unpack(packed)
    return pair_id, seen_before, count, n_pairs

def _context_counts(prev: PPMOrder, first: np.ndarray, valid: np.ndarray, N: int, nb: int, exclusion: bool):
    """n_k and q_k of order k's contexts (= order k-1's pairs at t-1), from order k-1's sorted occurrences. With
    exclusion, also subtracts from order k-1's totals (in place) X_{k-1}(t): the order-(k-1) counts of the symbols
    the order-k context offers, where that context was seen and did not offer x_t."""
    tt = prev.sorted_pos + 1  # occurrences of each order-k context in time order
    f = first[tt]
    cs = np.cumsum(f, dtype=np.int32)
    cs -= f  # first occurrences of (context, symbol) pairs before, running over contexts
    base = np.maximum.accumulate(np.where(prev.run_start, cs, 0))  # ... at the start of this context's run
    packed = np.zeros(N + 1, np.int64)  # (n, q) packed, scattered to time order
    packed[tt] = (prev.seen_before.astype(np.int64) << 32) | (cs - base)
    del cs
    prev.sorted_pos = prev.run_start = prev.seen_before = None  # used up
    packed *= valid  # (a pair that straddles a reset is no context)
    total, distinct = _unpack(packed)
    del packed
    if exclusion:
        need = first & (total > 0)
        tq = np.flatnonzero(need)
        symbols = prev.pair_id[tt[f]]  # each order-k context's symbols in first-seen order, as order-(k-1) pairs
        offset = np.zeros(N + 1, np.int32)
        offset[tt] = base  # where each context's list starts in `symbols`
        offset = offset[tq].astype(np.int64)
        del tt, f, base
        prev.total[tq] -= _lookup_sums(prev.valid_pos, prev.pair_id[prev.valid_pos], prev.n_pairs, tq,
                                       np.cumsum(need, dtype=np.int32), symbols, offset,
                                       distinct[tq].astype(np.int64), nb).astype(np.int32)
    prev.valid_pos = prev.pair_id = None
    return total, distinct

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
    seg, ctx = 0, np.zeros(N, np.int32)  # segment start of token t; order-0 context of a count at t: its segment
    if reset_doc:
        isb = (x == bos_id) & (pos[:N] >= 1)
        seg = np.concatenate(([0], np.maximum.accumulate(np.where(isb, pos[:N], 0)))).astype(np.int32)
        ctx = np.cumsum(isb, dtype=np.int32)  # (a scored BOS opens the next segment)
    prev = None
    for k in range(order + 1):
        valid = pos - k >= seg  # the order-k context of t lies inside t's segment
        valid[N] = False
        vp = np.flatnonzero(valid).astype(np.int32)
        key = ctx[vp].astype(np.int64)
        del ctx
        key *= V
        key += x[vp]
        sp, run_start = _sort_by_key(key, vp, nb)
        del key
        pair_id, seen_before, count, n_pairs = _pair_counts(sp, run_start, N)
        first = valid & (count == 0)  # the pair's first occurrence: its context gains a symbol
        if k == 0:
            cs = np.concatenate(([0], np.cumsum(first[:N], dtype=np.int32)))
            total, distinct = pos - seg, cs - cs[seg]
            if reset_doc:  # a scored BOS still sees the old segment: its count is of BOS tokens in [seg, t)
                cb = np.concatenate(([0], np.cumsum(x == bos_id, dtype=np.int32)))
                count[:N][isb] = (cb[:N] - cb[seg[:N]])[isb]
            R = np.full(N + 1, 1.0 / V) if not exclusion else 1.0 / np.maximum(V - distinct, 1)  # order -1
            del cs
        else:
            total, distinct = _context_counts(prev, first, valid, N, nb, exclusion)
            R = _fold(R, prev.count, prev.total, prev.distinct, distinct, V, exclusion)  # order k-1, now complete
        ctx = np.concatenate(([0], pair_id[:N])).astype(np.int32)  # order-(k+1) context of t = order-k pair at t-1
        prev = PPMOrder(count, total, distinct, vp, sp, run_start, pair_id, seen_before, n_pairs)
        del count, total, distinct, vp, sp, run_start, pair_id, seen_before  # prev holds them (and drops them early)
    return _fold(R, prev.count, prev.total, prev.distinct, 0, V, exclusion)[1:N]

def ppm_distribution(tokens: np.ndarray, t: int, vocab_size: int, order: int = 2, exclusion: bool = True,
                     reset_doc: bool = False, bos_id: int = 1) -> np.ndarray:
    """The full PPM distribution (float64 [V]) for token t >= 1 from tokens < t (direct, slow; probe API)."""
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
# Export: large matrices as int8 codes + fp16 row scales, by QUANT_METHOD: rtn (per-row clip search) or gptq
# (full-Hessian GPTQ with SD clipping, Hessians from training shards inside the time cap); optional LQER low-rank
# correction and int8 gates; control and small tensors fp32/fp16. File: b"PGKIT002", compressor id, 8 bytes of
# sha256 of the rest, stream lengths, then the compressed streams (the header and small arrays; the codes of each
# matrix group, column-major); their concatenation is u32 header length + JSON header + raw arrays. No pickle.

ARTIFACT_MAGIC = b"PGKIT002"
COMPRESSORS = ("zstd", "brotli", "lzma")
CLIP_PERCENTILES = (0.999, 0.9995, 0.9999, 0.99999, 1.0)
SMALL_TENSOR = 65_536
STREAMS = ("tok_emb", "attn.c_q", "attn.c_k", "attn.c_v", "attn.proj", "mlp.fc", "mlp.proj")  # int8 codes by group
LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
CODE_WRAPPER = (  # what `records pack` ships for CODE_FORM wrapped/minified: runs the lzma'd source as __main__
    "import lzma as L,base64 as B,linecache as C\n"
    's=L.decompress(B.b85decode("{payload}"),format=L.FORMAT_RAW,filters=[{{"id":L.FILTER_LZMA2}}])\n'
    'f=globals().get("__file__","train_gpt.py")+"#inner"\n'
    "C.cache[f]=(len(s),None,s.decode().splitlines(True),f)\n"
    'c=compile(s,f,"exec");del L,B,C,s,f\n'
    'exec(globals().pop("c"))\n')

def quantize_rows(w: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """QUANT_METHOD=rtn: per-row symmetric quantisation; each row keeps the clip percentile of least squared error."""
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

def gptq_rows(w: Tensor, H: Tensor | None, k: float, bits: int, block: int = 128) -> tuple[Tensor, Tensor]:
    """QUANT_METHOD=gptq: row scale s = fp16(k * std(row) / q_max), then full-Hessian GPTQ: columns by descending
    diag(H), each rounded, its error spread over the later ones by the upper Cholesky factor of H^-1, `block` columns
    at a time; dead columns (H_ii = 0) zeroed, damping 1% of mean diag(H). H None: rounding at the same scale."""
    qmax = 2 ** (bits - 1) - 1
    scale = (k * w.float().std(dim=1) / qmax).clamp_min(1e-7).half()
    s, W = scale.float(), w.float().clone()
    if H is None:
        return torch.clamp(torch.round(W / s[:, None]), -qmax, qmax).to(torch.int8), scale
    H = H.float().clone()
    dead = H.diag() == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H.diagonal().add_(0.01 * H.diag().mean())
    perm = torch.argsort(H.diag(), descending=True)
    W, H = W[:, perm], H[perm][:, perm]
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q, n = torch.empty_like(W), W.shape[1]
    for i in range(0, n, block):
        j = min(i + block, n)
        err = torch.empty_like(W[:, i:j])
        for c in range(i, j):
            Q[:, c] = torch.clamp(torch.round(W[:, c] / s), -qmax, qmax)
            err[:, c - i] = e = (W[:, c] - Q[:, c] * s) / U[c, c]
            W[:, c:j] -= e[:, None] * U[c, c:j]
        W[:, j:] -= err @ U[i:j, j:]
    return Q[:, torch.argsort(perm)].to(torch.int8), scale

def lqer_factors(E: Tensor, args: Hyperparameters) -> dict[str, Tensor]:
    """LQER: E = W - W_hat ~ A B, rank-LQER_RANK SVD (A = U S, B = V^T). Asymmetric (B.numel % LQER_ASYM_GROUP == 0):
    A in [-2, 1], one fp16 scale max|A| / 1.5; B in [-8, 7], scale max|B_g| / 7.5 per group. Else per row, same bits."""
    U, S, Vh = torch.linalg.svd(E.float(), full_matrices=False)
    r = min(args.lqer_rank, S.numel())
    A, B, g = U[:, :r] * S[:r], Vh[:r], args.lqer_asym_group
    if args.lqer_asym_enabled and B.numel() % g == 0:
        sA = (A.abs().amax().clamp_min(1e-10) / 1.5).half().reshape(1)
        qA = torch.clamp(torch.round(A / sA.float()), -2, 1)
        sB = (B.reshape(-1, g).abs().amax(dim=1).clamp_min(1e-10) / 7.5).half()
        qB = torch.clamp(torch.round(B.reshape(-1, g) / sB.float()[:, None]), -8, 7).reshape(B.shape)
    else:
        m = 2 ** (args.lqer_factor_bits - 1) - 1
        sA, sB = ((X.abs().amax(dim=1).clamp_min(1e-10) / m).half() for X in (A, B))
        qA, qB = (torch.clamp(torch.round(X / s.float()[:, None]), -m, m) for X, s in ((A, sA), (B, sB)))
    return {"lqA": qA.to(torch.int8), "lqAs": sA, "lqB": qB.to(torch.int8), "lqBs": sB}

def dequantize(a: dict[str, Tensor]) -> Tensor:
    """One tensor in float32 from its stored arrays: data, or q * scale per row plus the LQER product."""
    if "q" not in a:
        return a["data"].float()
    W = a["q"].float() * a["scale"].float()[:, None]
    if "lqA" in a:
        A = a["lqA"].float() * a["lqAs"].float()[:, None]
        B = (a["lqB"].float().reshape(a["lqBs"].numel(), -1) * a["lqBs"].float()[:, None]).reshape(a["lqB"].shape)
        W = W + A @ B
    return W

def quantised_names(state: dict[str, Tensor]) -> set[str]:
    return {n for n, t in state.items() if t.ndim == 2 and t.numel() > SMALL_TENSOR}

def export_arrays(name: str, t: Tensor, role_: str, args: Hyperparameters,
                  H: Tensor | None = None) -> dict[str, Tensor]:
    """How one tensor is stored: large 2-D ones as codes + row scales (bits and GPTQ k by group), 2-D gates int8 per
    row (GATED_ATTN_QUANT_GATE), control tensors and tensors of <= 4096 elements fp32, the rest fp16."""
    if t.ndim == 2 and t.numel() > SMALL_TENSOR:
        emb, mlp = name == "tok_emb.weight", ".mlp." in name
        bits = args.quant_embed_bits if emb else args.quant_mlp_bits or args.quant_bits if mlp else args.quant_bits
        k = (args.embed_clip_sigmas if emb else args.mlp_clip_sigmas if mlp else args.attn_clip_sigmas
             if ".attn." in name else args.matrix_clip_sigmas)
        q, scale = gptq_rows(t, H, k, bits) if args.quant_method == "gptq" else quantize_rows(t, bits)
        return {"q": q, "scale": scale}
    if args.gated_attn_quant_gate and "gate" in name and t.ndim == 2 and 32 <= t.numel() <= 8192:
        s = (t.abs().amax(dim=1).clamp_min(1e-7) / 127).half()
        return {"q": torch.clamp(torch.round(t / s.float()[:, None]), -127, 127).to(torch.int8), "scale": s}
    keep = [x for x in args.int8_keep_float_fp32_name_patterns.split(",") if x]
    keep32 = role_ == "control" or t.numel() <= 4096 or any(x in name for x in keep)
    return {"data": t.float() if keep32 else t.half()}

def quantize_state(state: dict[str, Tensor], roles: dict[str, str], args: Hyperparameters,
                   hessians: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """{name: {array: tensor}} of every tensor; LQER_ENABLED: factors for the LQER_TOP_K largest error norms."""
    out = {n: export_arrays(n, t.detach().cpu().float(), roles.get(n, "control"), args, hessians.get(n))
           for n, t in state.items()}
    if args.lqer_enabled:
        errs = {n: state[n].detach().cpu().float() - dequantize(out[n]) for n in quantised_names(state)}
        for n in sorted(errs, key=lambda n: -float(errs[n].norm()))[:args.lqer_top_k]:
            out[n].update(lqer_factors(errs[n], args))
    return out

def compress(data: bytes, name: str, level: int = 22) -> bytes:
    if name == "zstd":
        return zstandard.ZstdCompressor(level=level).compress(data)
    if name == "brotli":
        import brotli
        return brotli.compress(data, quality=11, lgwin=24)
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=LZMA_FILTERS)

def decompress(data: bytes, name: str) -> bytes:
    if name == "zstd":
        dec = zstandard.ZstdDecompressor().decompressobj()
        out = dec.decompress(data)
        if not dec.eof or dec.unused_data:
            raise ValueError("a zstd frame is incomplete or followed by other bytes")
        return out
    if name == "brotli":
        import brotli
        return brotli.decompress(data)
    return lzma.decompress(data, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}])

def encode_artifact(entries: dict[str, dict], meta: dict, compressor: str, level: int = 22) -> bytes:
    """The file of `entries` (see the section's header). Stream 0: the header and the small arrays; stream 1 + i:
    the int8 codes of matrix group STREAMS[i] (all layers), each matrix transposed (column-major)."""
    streams, records = [[] for _ in range(1 + len(STREAMS))], []
    for name, arrays in entries.items():
        rec = {"name": name, "arrays": {}}
        for key, t in arrays.items():
            arr = t.numpy() if key != "q" else t.numpy().T
            info = rec["arrays"][key] = {"dtype": arr.dtype.str, "shape": list(t.shape), "T": key == "q"}
            s = next((1 + i for i, g in enumerate(STREAMS) if g in name), 0) if key == "q" else 0
            streams[s].append((info, np.ascontiguousarray(arr).tobytes()))
        records.append(rec)
    offset = 0
    for info, raw in (x for s in streams for x in s):
        info.update(offset=offset, nbytes=len(raw))
        offset += len(raw)
    header = json.dumps({"format": 2, "meta": meta, "tensors": records}).encode()
    raws = [struct.pack("<I", len(header)) + header] + [b""] * len(STREAMS)
    raws = [r + b"".join(raw for _, raw in s) for r, s in zip(raws, streams)]
    packed = [compress(r, compressor, level) if r else b"" for r in raws]
    body = struct.pack(f"<B{len(packed)}I", len(packed), *map(len, packed)) + b"".join(packed)
    return ARTIFACT_MAGIC + bytes([COMPRESSORS.index(compressor)]) + hashlib.sha256(body).digest()[:8] + body

def pack_artifact(state: dict[str, Tensor], args: Hyperparameters, meta: dict, roles: dict[str, str] | None = None,
                  hessians: dict[str, Tensor] | None = None) -> bytes:
    """The artifact of a state dict; `roles` (param_roles of the model) default to those of build_model(args);
    `hessians` (collect_hessians) feed QUANT_METHOD=gptq (a matrix without one is rounded at the GPTQ scale)."""
    if roles is None:
        with torch.device("meta"):
            roles = param_roles(GPT(args), args.control_tensor_name_patterns)
    entries = quantize_state(state, roles, args, hessians or {})
    return encode_artifact(entries, meta, args.compressor, args.zstd_level)

def artifact_payload(blob: bytes) -> bytes:
    """The streams of an artifact, checked against its checksum, decompressed and concatenated."""
    if blob[:8] != ARTIFACT_MAGIC:
        raise ValueError(f"bad magic {blob[:8]!r}")
    comp, check, body = COMPRESSORS[blob[8]], blob[9:17], blob[17:]
    if hashlib.sha256(body).digest()[:8] != check:
        raise ValueError("checksum mismatch")
    lengths, pos, parts = struct.unpack_from(f"<{body[0]}I", body, 1), 1 + 4 * body[0], []
    for length in lengths:
        parts.append(decompress(body[pos:pos + length], comp) if length else b"")
        pos += length
    if pos != len(body):
        raise ValueError(f"{len(body) - pos} bytes follow the last stream")
    return b"".join(parts)

def decode_tensor(payload: bytes, base: int, e: dict) -> Tensor:
    arrays = {}
    for key, a in e["arrays"].items():
        if base + a["offset"] + a["nbytes"] > len(payload):
            raise ValueError(f"tensor {e['name']} runs past the end of the payload")
        dt = np.dtype(a["dtype"])
        arr = np.frombuffer(payload, dtype=dt, count=a["nbytes"] // dt.itemsize, offset=base + a["offset"])
        arr = arr.reshape(a["shape"][::-1]).T if a["T"] else arr.reshape(a["shape"])
        arrays[key] = torch.from_numpy(np.array(arr))
    return dequantize(arrays)

def unpack_artifact(blob: bytes, where: str = "artifact") -> tuple[dict[str, Tensor], dict]:
    """Inverse of pack_artifact (dequantised float32 tensors, meta). Any damage raises ConfigError: a wrong magic
    or checksum, a broken or truncated stream, bytes after it, a payload longer or shorter than its header says."""
    if blob[:8] != ARTIFACT_MAGIC:
        old = " (made by an older train_gpt.py: score it with that version)" if blob[:8] == b"PGKIT001" else ""
        raise ConfigError(f"{where} is not a train_gpt.py artifact (bad magic {blob[:8]!r}){old}")
    try:
        payload = artifact_payload(blob)
        (hlen,) = struct.unpack_from("<I", payload)
        header = json.loads(payload[4:4 + hlen])
        sizes = sum(a["nbytes"] for e in header["tensors"] for a in e["arrays"].values())
        if 4 + hlen + sizes != len(payload):
            raise ValueError(f"payload is {len(payload)} bytes, its header describes {4 + hlen + sizes}")
        state = {e["name"]: decode_tensor(payload, 4 + hlen, e) for e in header["tensors"]}
        return state, header["meta"]
    except Exception as exc:  # checksum, decompression, struct, json and shape errors all mean a damaged file
        raise ConfigError(f"{where} is truncated or corrupted ({type(exc).__name__}: {exc})") from None

def collect_hessians(model: GPT, names: set[str], loader: TokenLoader, args: Hyperparameters, grad_accum: int,
                     budget_s: float | None, device: torch.device) -> tuple[dict[str, Tensor], int]:
    """(Hessians, batches): H = sum of X^T X of the inputs of each CastedLinear in `names` (tied embedding: the final
    hidden states) over training batches of a step (never val), summed over ranks; none would end past `budget_s`."""
    hs, hooks = {}, []

    def add(key: str, x: Tensor) -> None:
        x = x.detach().float().reshape(-1, x.size(-1))
        hs[key] = hs[key].addmm_(x.T, x) if key in hs else x.T @ x
    for mname, m in model.named_modules():
        if isinstance(m, CastedLinear) and f"{mname}.weight" in names:
            hooks.append(m.register_forward_hook(lambda mod, inp, out, k=f"{mname}.weight": add(k, inp[0])))
    was_training, t0, n = model.training, time.perf_counter(), 0
    model.eval()
    with torch.no_grad(), autocast(device):
        while n < args.gptq_calibration_batches:
            for _ in range(grad_accum):
                h = model.hidden(loader.next_batch(args.train_batch_tokens, args.train_seq_len, grad_accum)[0])
                if model.lm_head is not None:
                    model.logits(h)  # the untied head's input reaches its hook
                elif "tok_emb.weight" in names:
                    add("tok_emb.weight", h)
            n += 1
            sync(device)
            if budget_s is not None and (time.perf_counter() - t0) * (n + 1) / n > budget_s:
                break
    for hook in hooks:
        hook.remove()
    model.train(was_training)
    if dist.is_available() and dist.is_initialized():
        for key in sorted(hs):
            dist.all_reduce(hs[key])
    return hs, n

def train_cap_seconds(args: Hyperparameters) -> float:
    """The training loop's cap: MAX_WALLCLOCK_SECONDS less GPTQ_RESERVE_SECONDS with QUANT_METHOD=gptq (0: none)."""
    if args.max_wallclock_seconds <= 0:
        return 0.0
    return args.max_wallclock_seconds - (args.gptq_reserve_seconds if args.quant_method == "gptq" else 0.0)

def plan_model_bytes(args: Hyperparameters, state: dict[str, Tensor]) -> dict[str, float]:
    """Model bytes by group from the shapes: codes priced by exporting and compressing Gaussian rows (trained weights
    compress better: errs high); scales, LQER factors, small tensors (fp32) and header records at raw size."""
    price, out, gen = {}, {}, torch.Generator().manual_seed(0)
    for name, t in state.items():
        group = next((g for g in STREAMS if g in name), "other")
        if t.ndim == 2 and t.numel() > SMALL_TENSOR:
            key = (name == "tok_emb.weight", ".mlp." in name, ".attn." in name, t.shape[1])
            if key not in price:
                w = torch.randn(max(1, (1 << 18) // t.shape[1]), t.shape[1], generator=gen)
                q = export_arrays(name, w, "matrix", args, None)["q"]
                price[key] = len(compress(q.T.contiguous().numpy().tobytes(), args.compressor, args.zstd_level))
                price[key] /= q.numel()
            nbytes = t.numel() * price[key] + 2 * t.shape[0]
        else:
            nbytes = 4 * t.numel()
        out[group] = out.get(group, 0) + nbytes + 120
    if args.lqer_enabled:  # the LQER_TOP_K largest factor pairs: int8 codes and fp16 scales
        sizes = sorted((1.1 * args.lqer_rank * sum(t.shape) for n, t in state.items() if n in quantised_names(state)),
                       reverse=True)
        out["lqer"] = sum(sizes[:args.lqer_top_k])
    return out

def shipped_code(source: bytes, form: str) -> bytes:
    """The code bytes shipped for CODE_FORM: raw, wrapped (CODE_WRAPPER, as `records pack --wrap` writes) or minified
    (python-minifier: docstrings dropped, names kept; then wrapped). A wrapper already ships as it is."""
    if form == "raw" or source.startswith(CODE_WRAPPER[:43].encode()):
        return source
    if form == "minified":
        import python_minifier
        source = python_minifier.minify(source.decode(), rename_locals=False, hoist_literals=False,
                                        remove_literal_statements=True, prefer_single_line=True).encode()
    payload = base64.b85encode(lzma.compress(source, format=lzma.FORMAT_RAW, filters=LZMA_FILTERS)).decode()
    return CODE_WRAPPER.format(payload=payload).encode()

def plan(args: Hyperparameters, shipped: bytes) -> tuple[list[str], int, int]:
    """(report lines, predicted model bytes, counted code bytes) of the configuration, before any training;
    `shipped`: the code as counted (shipped_code)."""
    with torch.random.fork_rng(devices=[]):  # on the CPU: a meta model's first ops cost a process 1-2 s of imports
        model = GPT(args)
    groups = plan_model_bytes(args, model.state_dict())
    model_b, code_b = int(sum(groups.values())), len(shipped)
    lines = [f"plan: {sum(p.numel() for p in model.parameters()):,} parameters, QUANT_METHOD={args.quant_method} "
             f"bits {args.quant_bits} (MLP {args.quant_mlp_bits or args.quant_bits}, embedding "
             f"{args.quant_embed_bits}), COMPRESSOR={args.compressor}, CODE_FORM={args.code_form}"]
    lines += [f"plan: {g:<9} {b:>12,.0f} bytes" for g, b in groups.items()] + [f"plan: code      {code_b:>12,} bytes"]
    over = model_b + code_b - ARTIFACT_LIMIT
    lines.append(f"plan: {model_b + code_b:,} bytes predicted (Gaussian weights; trained ones come out smaller), "
                 + (f"over the {ARTIFACT_LIMIT}-byte limit by {over:,}" if over > 0 else f"{-over:,} under the limit"))
    return lines, model_b, code_b

def calibrate(run: Run, model: GPT, train_files: list[Path], train_ms: float) -> dict[str, Tensor]:
    """QUANT_METHOD=gptq: the Hessians, from training shards in the time the cap leaves after the training loop."""
    a = run.args
    if a.quant_method != "gptq":
        return {}
    cap_ms = 1000.0 * a.max_wallclock_seconds
    loader = TokenLoader(train_files, run.rank, run.world_size, run.device, a.vocab_size)
    budget_s = (cap_ms - train_ms) / 1000 if cap_ms > 0 else None
    (hs, n), ms = timed(run.device, lambda: collect_hessians(model, quantised_names(model.state_dict()), loader, a,
                                                             8 // run.world_size, budget_s, run.device))
    run.log(f"gptq_calibration batches:{n}/{a.gptq_calibration_batches} hessians:{len(hs)} time:{ms:.0f}ms "
            f"train_time:{train_ms:.0f}ms train_plus_calibration:{train_ms + ms:.0f}ms cap:{cap_ms:.0f}ms "
            f"train_cap:{1000 * train_cap_seconds(a):.0f}ms")
    if 0 < cap_ms < train_ms + ms:
        run.log(f"warning: training + calibration took {train_ms + ms:.0f}ms, past MAX_WALLCLOCK_SECONDS="
                f"{a.max_wallclock_seconds:g}; raise GPTQ_RESERVE_SECONDS")
    return {k: v.cpu() for k, v in hs.items()}


# ----------------------------------------------------------------------------------------------------------------
# Training loop: grad accumulation to 8 micro-batches, wallclock cap and warmdown, optional EMA.

def versions() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "sentencepiece": spm.__version__, "zstandard": zstandard.__version__}

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()

def write_atomic(path: Path, data: bytes) -> None:
    """Write under a temporary name, then rename: `path` is whole or absent. A failed write leaves nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RunError(f"cannot write {path} ({exc.strerror or exc}); free some space or run elsewhere") from None

class Run:
    """Where a run executes and what it writes to: settings, ranks, device, compile mode, code and log."""

    def __init__(self, args: Hyperparameters, rank: int, world_size: int, device: torch.device, distributed: bool,
                 compile_mode: str, code: bytes, log_path: Path):
        self.args, self.rank, self.world_size, self.device = args, rank, world_size, device
        self.distributed, self.compile_mode, self.code, self.log_path = distributed, compile_mode, code, log_path

    @property
    def master(self) -> bool:
        return self.rank == 0

    def log(self, msg: str) -> None:
        if self.master:
            print(msg, flush=True)
            with open(self.log_path, "a", encoding="utf-8") as f:
                print(msg, file=f)

    def all_max(self, flag: bool) -> bool:
        """True on every rank when it is true on one."""
        if not self.distributed:
            return flag
        t = torch.tensor(int(flag), device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

def training_frac(args: Hyperparameters, step: int, elapsed_ms: float) -> float:
    """Training done: elapsed / the loop's cap (train_cap_seconds, as the record's 599.5 s), else step / ITERATIONS."""
    cap_ms = 1000.0 * train_cap_seconds(args)
    return elapsed_ms / cap_ms if cap_ms > 0 else step / max(args.iterations, 1)

def lr_multiplier(args: Hyperparameters, step: int, elapsed_ms: float) -> float:
    """The LR scale of every optimiser, at least MIN_LR. WARMDOWN_FRAC: 1, then linear to 0 over that last fraction
    of training_frac. Else WARMDOWN_ITERS steps, under a cap estimated from the mean step time so far."""
    a, cap_ms = args, 1000.0 * train_cap_seconds(args)
    if a.warmdown_frac > 0:
        frac = training_frac(a, step, elapsed_ms)
        scale = 1.0 if frac < 1 - a.warmdown_frac else (1 - frac) / a.warmdown_frac
    elif a.warmdown_iters <= 0:
        scale = 1.0
    elif cap_ms <= 0:
        scale = min(1.0, max(a.iterations - step, 0) / a.warmdown_iters)
    else:
        warmdown_ms, remaining_ms = a.warmdown_iters * elapsed_ms / max(step, 1), max(cap_ms - elapsed_ms, 0.0)
        scale = remaining_ms / max(warmdown_ms, 1e-9) if remaining_ms <= warmdown_ms else 1.0
    return max(scale, a.min_lr)

def looping_due(args: Hyperparameters, step: int, elapsed_ms: float) -> bool:
    return args.num_loops > 0 and training_frac(args, step, elapsed_ms) >= args.enable_looping_at

class Trainer:
    """Owns the optimisers, the data stream, the schedule and the EMA of one training run."""

    def __init__(self, run: Run, base_model: GPT, model: nn.Module, train_files: list[Path], validate):
        self.run, self.args, self.base_model, self.model = run, run.args, base_model, model
        self.train_files, self.validate, self.grad_accum = train_files, validate, 8 // run.world_size
        self.optimizers, self.muon = build_optimizers(base_model, run.args)
        cap = train_cap_seconds(run.args)
        self.cap_ms = 1000.0 * cap if cap > 0 else None

    def loader(self) -> TokenLoader:
        return TokenLoader(self.train_files, self.run.rank, self.run.world_size, self.run.device, self.args.vocab_size)

    def micro_steps(self, loader: TokenLoader) -> Tensor:
        """Forward and backward over the step's micro-batches (DDP syncs gradients on the last); the mean loss."""
        total = torch.zeros((), device=self.run.device)
        for micro in range(self.grad_accum):
            x, y = loader.next_batch(self.args.train_batch_tokens, self.args.train_seq_len, self.grad_accum)
            cu = None
            if self.args.varlen_attn:  # one packed row, its documents cut as the record cuts them
                x, y = x.reshape(1, -1), y.reshape(1, -1)
                cu = doc_bounds(x, self.args.train_seq_len)
                torch._dynamo.mark_dynamic(cu, 0)  # one compiled graph for any number of documents
            last = not self.run.distributed or micro == self.grad_accum - 1
            with autocast(self.run.device), (contextlib.nullcontext() if last else self.model.no_sync()):
                loss = self.model(x, y, cu)
                (loss / self.grad_accum).backward()
            total += loss.detach()
        return total / self.grad_accum

    def optimizer_step(self) -> None:
        if self.args.grad_clip_norm > 0:
            nn.utils.clip_grad_norm_(self.base_model.parameters(), self.args.grad_clip_norm)
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)

    def warmup(self) -> None:
        """Prime the compiled paths with WARMUP_STEPS real steps, then restore the true initial state."""
        init_state = copy.deepcopy(self.base_model.state_dict())
        init_opt = [copy.deepcopy(o.state_dict()) for o in self.optimizers]
        loader = self.loader()
        for looping in (False, True) if self.args.num_loops else (False,):  # both graphs compiled before the clock
            self.base_model.looping = looping
            for _ in range(self.args.warmup_steps):
                self.micro_steps(loader)
                self.optimizer_step()
        self.base_model.looping = False
        self.base_model.load_state_dict(init_state)
        for opt, state in zip(self.optimizers, init_opt):
            opt.load_state_dict(state)
        self.run.log(f"warmup_steps:{self.args.warmup_steps} done; weights and optimisers reset")

    def set_schedule(self, step: int, elapsed_ms: float) -> None:
        """Depth recurrence when due, momentum warm-up, LR multiplier: set every step, none frozen by compile."""
        a, scale = self.args, lr_multiplier(self.args, step, elapsed_ms)
        if not self.base_model.looping and looping_due(a, step, elapsed_ms):
            self.base_model.looping = True  # a module attribute: compiled code is guarded on it, never frozen
            self.run.log(f"layer_loop:enabled step:{step} frac:{training_frac(a, step, elapsed_ms):.3f}")
        frac = min(step / a.muon_momentum_warmup_steps, 1.0) if a.muon_momentum_warmup_steps > 0 else 1.0
        for g in self.muon.param_groups:
            g["momentum"] = (1 - frac) * a.muon_momentum_warmup_start + frac * a.muon_momentum
        for opt in self.optimizers:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * scale

    def log_step(self, step: int, loss: Tensor, approx_ms: float, stopping: bool) -> float | None:
        a = self.args
        if a.train_log_every <= 0 or not (step <= 10 or step % a.train_log_every == 0 or stopping):
            return None
        if self.run.distributed:
            dist.all_reduce(loss, op=dist.ReduceOp.AVG)
        self.run.log(f"step:{step}/{a.iterations} train_loss:{loss.item():.4f} train_time:{approx_ms:.0f}ms "
                     f"step_avg:{approx_ms / step:.2f}ms")
        return loss.item()

    def train(self) -> dict:
        """The loop: validate when due, stop at ITERATIONS or the first step past the cap (agreed by all ranks)."""
        a, run = self.args, self.run
        if a.warmup_steps > 0:
            self.warmup()
        loader, params = self.loader(), list(self.base_model.parameters())
        ema = [p.detach().clone() for p in params] if a.ema else None
        train_ms, step, stop_after, train_loss = 0.0, 0, None, float("nan")
        sync(run.device)
        t0 = time.perf_counter()
        while True:
            last = step == a.iterations or (stop_after is not None and step >= stop_after)
            if last or (a.val_loss_every > 0 and step % a.val_loss_every == 0):
                sync(run.device)
                train_ms += 1000 * (time.perf_counter() - t0)
                vl, vb = self.validate()
                run.log(f"step:{step}/{a.iterations} val_loss:{vl:.4f} val_bpb:{vb:.4f} train_time:{train_ms:.0f}ms "
                        f"step_avg:{train_ms / max(step, 1):.2f}ms")
                sync(run.device)
                t0 = time.perf_counter()
            if last:
                break
            self.set_schedule(step, train_ms + 1000 * (time.perf_counter() - t0))
            loss = self.micro_steps(loader)
            self.optimizer_step()
            if ema is not None:
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - a.ema_decay)
            step += 1
            approx_ms = train_ms + 1000 * (time.perf_counter() - t0)
            logged = self.log_step(step, loss, approx_ms, stop_after is not None)
            train_loss = train_loss if logged is None else logged
            if stop_after is None and self.cap_ms is not None and run.all_max(approx_ms >= self.cap_ms):
                stop_after = step
        stopped_early = stop_after is not None and step < a.iterations
        if stopped_early:
            run.log(f"stopping_early: wallclock_cap train_time:{train_ms:.0f}ms step:{step}/{a.iterations}")
        if ema is not None:
            with torch.no_grad():
                torch._foreach_copy_(params, ema)
            run.log(f"ema: swapped in the EMA weights (decay {a.ema_decay})")
        self.base_model.looping = bool(a.num_loops)  # evaluation (and export) always loop
        peak_mib = torch.cuda.max_memory_allocated() / 2**20 if run.device.type == "cuda" else 0.0
        run.log(f"peak memory allocated: {peak_mib:.0f} MiB")
        return {"steps": step, "iterations": a.iterations, "stopped_early": stopped_early, "train_time_ms": train_ms,
                "step_avg_ms": train_ms / max(step, 1), "train_loss": train_loss,
                "tokens_per_step": a.train_batch_tokens, "peak_mem_mib": peak_mib}


# ----------------------------------------------------------------------------------------------------------------
# Orchestration: check every input, train (or load an artifact), export, reload, score, write the summary.

def read_eval_artifact(args: Hyperparameters) -> tuple[dict, dict]:
    """EVAL_ONLY: the artifact's tensors and meta, if made with this model configuration and its exact tensors."""
    state, meta = unpack_artifact(Path(args.eval_only).read_bytes(), args.eval_only)
    made, now = meta.get("config", {}), args.as_dict()
    diff = [f"{k}={made.get(k)} (this run: {now[k]})" for k in ARCH_KEYS if made.get(k) != now[k]]
    if diff:
        raise ConfigError(f"EVAL_ONLY={args.eval_only} was made with a different model: {', '.join(diff)}; "
                          "set the same values to score it")
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in GPT(args).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != want:
        bad = sorted(set(want) ^ set(got)) or [k for k in want if want[k] != got[k]]
        raise ConfigError(f"EVAL_ONLY={args.eval_only} does not hold this model's tensors (missing, extra or "
                          f"reshaped: {', '.join(bad[:4])}); it is damaged or made by another script")
    return state, meta

def read_val(args: Hyperparameters) -> tuple[np.ndarray, np.ndarray, str]:
    """The val token ids, each target's bytes and their source; the tokenizer checked against shards and manifest."""
    sp = load_tokenizer(args)
    ids = np.concatenate([load_shard(f) for f in shard_files(args.data_path, "val")])
    if ids.size < 2 or int(ids.max()) >= args.vocab_size:
        raise ConfigError(f"the val shards of {args.data_path} hold {ids.size} token(s), the largest id "
                          f"{int(ids.max())}: too few to score, or ids >= VOCAB_SIZE={args.vocab_size}")
    byte_counts, source = val_byte_counts(args, ids, sp)
    check_manifest(args, int(byte_counts.sum()))
    return ids, byte_counts, source

def read_train_files(args: Hyperparameters) -> list[Path]:
    """The train shards' headers, and the first shard's ids (later shards: as the loader reaches them)."""
    files = [] if args.eval_only else shard_files(args.data_path, "train")
    for f in files:
        load_shard(f, header_only=True)
    if files:
        checked_tokens(files[0], args.vocab_size)
    return files

def check_inputs(args: Hyperparameters, world_size: int) -> None:
    """Every check that can fail, before anything is written (what main() reads first, and --check)."""
    check_config(args, world_size)
    if args.eval_only:
        read_eval_artifact(args)
    read_val(args)
    read_train_files(args)

def start_run(args: Hyperparameters, world_size: int) -> Run:
    """Device, process group and the log's first lines (the log of an EVAL_ONLY run is <RUN_ID>_eval.txt)."""
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
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
    compile_mode = args.compile_mode if use_cuda and args.compile else "none"
    log_path = Path("logs") / f"{args.run_id}{'_eval' if args.eval_only else ''}.txt"
    run = Run(args, rank, world_size, device, distributed, compile_mode, Path(__file__).read_bytes(), log_path)
    if run.master:
        log_path.parent.mkdir(exist_ok=True)
        log_path.write_text("")
        for stale in [*Path("artifacts").glob(f"{args.run_id}.ptz.*.tmp"), *Path("logs").glob(f"{args.run_id}*.tmp")]:
            stale.unlink(missing_ok=True)  # left by a run that was killed while writing
    gpu = torch.cuda.get_device_name(device).replace(" ", "_") if use_cuda else "none"
    run.log(f"run_id:{args.run_id}")
    run.log(f"code_sha256:{hashlib.sha256(run.code).hexdigest()} code_bytes:{len(run.code)}")
    run.shipped = shipped_code(run.code, args.code_form)
    run.log(f"code_form:{args.code_form} counted_bytes:{len(run.shipped)} "
            f"counted_sha256:{hashlib.sha256(run.shipped).hexdigest()}")
    if run.master:  # the prediction only feeds this warning
        lines, model_b, code_b = plan(args, run.shipped)
        if model_b + code_b > ARTIFACT_LIMIT:
            run.log(f"warning: {lines[-1][6:]}")
    run.log("versions: " + " ".join(f"{k}:{v}" for k, v in versions().items()))
    run.log(f"device:{device.type} gpu:{gpu} world_size:{world_size} grad_accum_steps:{8 // world_size} "
            f"attention:{attention_kernel(device)[0]} compile:{compile_mode}")
    run.log("config:" + json.dumps(args.as_dict()))
    return run

def timed(device: torch.device, fn):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, 1000 * (time.perf_counter() - t)

class Scores:
    """The final lines (val_loss, val_bpb over every rank's positions) and the time of each evaluation phase."""

    def __init__(self, run: Run, val_bytes: Tensor, qname: str):
        self.run, self.val_bytes, self.qname, self.scores, self.phases = run, val_bytes, qname, {}, {}

    def line(self, name: str) -> str:
        return f"final_{name}_exact" if name.startswith("float_") else f"final_{self.qname}_{name}_exact"

    def add(self, name: str, pos: Tensor, nll: Tensor, ms: float) -> None:
        vl, vb = reduce_score(pos, nll, self.val_bytes)
        self.scores[name] = {"val_loss": vl, "val_bpb": vb}
        self.run.log(f"{self.line(name)} val_loss:{vl:.8f} val_bpb:{vb:.8f}")
        self.phase(name, ms)

    def phase(self, name: str, ms: float) -> None:
        """A timed phase on the artifact; eval_time_total is their sum (float_* diagnostics excepted)."""
        self.phases[name] = ms
        self.run.log(f"eval_phase:{name} time:{ms:.0f}ms")

def compile_hidden(run: Run, base_model: GPT) -> None:
    """The final evaluation runs a compiled forward too (one shape: padded batches)."""
    if run.compile_mode != "none":
        base_model.hidden = torch.compile(base_model.hidden, dynamic=False, mode=run.compile_mode)

def train_and_export(run: Run, base_model: GPT, train_files: list[Path], val_tokens: Tensor, scores: Scores) -> tuple:
    """Train, score the float model (FLOAT_EVAL), write the artifact atomically and reload it into base_model."""
    a = run.args
    model = base_model if run.compile_mode == "none" else torch.compile(base_model, dynamic=False, fullgraph=True,
                                                                        mode=run.compile_mode)
    if run.distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[run.device.index] if run.device.type == "cuda"
                                                    else None, broadcast_buffers=False)
    val_seqs = a.val_batch_size // (8 * a.train_seq_len)  # per rank and batch, as upstream's VAL_BATCH_SIZE

    def validate() -> tuple[float, float]:
        L = a.train_seq_len
        pos, nll = sliding_eval(base_model, val_tokens, a, run.rank, run.world_size, L, L, val_seqs)
        return reduce_score(pos, nll, scores.val_bytes)
    stats = Trainer(run, base_model, model, train_files, validate).train()
    hessians = calibrate(run, base_model, train_files, stats["train_time_ms"])
    compile_hidden(run, base_model)
    if a.float_eval:
        (pos, nll), ms = timed(run.device, lambda: sliding_eval(base_model, val_tokens, a, run.rank, run.world_size))
        scores.add(f"float_{window_name(a)}", pos, nll, ms)
    path = Path("artifacts") / f"{a.run_id}.ptz"
    meta = {"config": a.as_dict(), "code_sha256": hashlib.sha256(run.code).hexdigest()}
    if run.master:  # one rank quantises and compresses; every rank then reads what was written
        write_atomic(path, pack_artifact(base_model.state_dict(), a, meta,
                                         param_roles(base_model, a.control_tensor_name_patterns), hessians))
    if run.distributed:
        dist.barrier()
    _, ms = timed(run.device, lambda: base_model.load_state_dict(unpack_artifact(path.read_bytes(), str(path))[0]))
    scores.phase("deserialize", ms)
    return stats, path.stat().st_size, path

def load_eval_only(run: Run, base_model: GPT, state: dict, meta: dict, scores: Scores, read_ms: float) -> tuple:
    _, ms = timed(run.device, lambda: base_model.load_state_dict(state))
    scores.phase("deserialize", read_ms + ms)
    base_model.looping = bool(run.args.num_loops)
    made_by = meta.get("code_sha256")
    if made_by != hashlib.sha256(run.code).hexdigest():
        run.log(f"warning: {run.args.eval_only} was made by a different train_gpt.py (code_sha256 "
                f"{str(made_by)[:12]}...); scoring it with this one")
    compile_hidden(run, base_model)
    path = Path(run.args.eval_only)
    return {}, path.stat().st_size, path

def ppm_probs(run: Run, val_np: np.ndarray) -> Tensor:
    """One CPU PPM pass over the whole stream on rank 0, shared with the other ranks."""
    a = run.args
    p = torch.empty(val_np.size - 1, dtype=torch.float64, device=run.device)
    if run.master:
        p.copy_(torch.from_numpy(ppm_target_probs(val_np, a.vocab_size, a.ppmc_order, bool(a.ppmc_exclusion),
                                                  a.ppmc_reset == "doc")))
    if run.distributed:
        dist.broadcast(p, 0)
    return p

def window_name(args: Hyperparameters) -> str:
    return "sliding_window" if args.eval_mode == "stream" else "doc_window"

def final_evaluation(run: Run, base_model: GPT, val_np: np.ndarray, val_tokens: Tensor, scores: Scores) -> None:
    """The reloaded artifact: sliding windows (EVAL_MODE's), then PPM mixing and/or score-first TTT."""
    a, win = run.args, window_name(run.args)
    (pos, nll), ms = timed(run.device, lambda: sliding_eval(base_model, val_tokens, a, run.rank, run.world_size))
    scores.add(win, pos, nll, ms)
    if f"float_{win}" in scores.scores:
        gap = scores.scores[win]["val_bpb"] - scores.scores[f"float_{win}"]["val_bpb"]
        run.log(f"quant_gap_bpb:{gap:.6f}")
    if a.ppmc:
        p_ppm, ms_ppm = timed(run.device, lambda: ppm_probs(run, val_np))
        scores.add(f"{win}_ppmc", pos, mix_nll(nll, p_ppm[pos - 1], a.ppmc_alpha), ms_ppm)
    if a.ttt:
        (pos, nll), ms = timed(run.device, lambda: ttt_eval(base_model, val_tokens, a, run.rank, run.world_size,
                                                            log=run.log))
        scores.add("ttt", pos, nll, ms)
        if a.ppmc:
            scores.add("ttt_ppmc", pos, mix_nll(nll, p_ppm[pos - 1], a.ppmc_alpha), 0.0)

def unigram_bpb(train_files: list[Path], val: np.ndarray, val_bytes: np.ndarray, vocab: int) -> float:
    """Reference: an add-one unigram model fitted on the first train shard, scored like the network."""
    counts = np.bincount(load_shard(train_files[0]), minlength=vocab).astype(np.float64) + 1
    nll = -np.log(counts / counts.sum())[val[1:].astype(np.int64)]
    return float(nll.sum() / math.log(2) / val_bytes.sum())

def finish(run: Run, scores: Scores, summary: dict, uni: float | None) -> int:
    """The closing lines and logs/<RUN_ID>.json; 1 (not complete) when over the limit or a score is not finite."""
    a, final = run.args, list(scores.scores)[-1]
    eval_ms = sum(v for k, v in scores.phases.items() if not k.startswith("float"))
    run.log(f"eval_time_total:{eval_ms:.0f}ms")
    if uni is not None:
        run.log(f"unigram_val_bpb:{uni:.4f} (add-one unigram of the first train shard, for reference)")
    over = summary["artifact_bytes"] > ARTIFACT_LIMIT
    bad = [k for k, v in scores.scores.items() if not all(map(math.isfinite, v.values()))]
    status = "nonfinite_score" if bad else "over_budget" if over else "complete"
    summary.update({"over_budget": over, "eval_phases_ms": scores.phases, "eval_time_ms": eval_ms,
                    "scores": scores.scores, "unigram_val_bpb": uni, "status": status,
                    "final": {"metric": final, "line": scores.line(final), **scores.scores[final]}})
    if run.master:
        write_atomic(run.log_path.with_suffix(".json"), json.dumps(summary, indent=1).encode())
    if over:
        run.log(f"error: artifact is {summary['artifact_bytes']} bytes, {summary['artifact_bytes'] - ARTIFACT_LIMIT} "
                f"over the {ARTIFACT_LIMIT}-byte limit; shrink the model (MODEL_DIM, NUM_LAYERS, MLP_MULT) or "
                "QUANT_BITS")
    if bad:
        run.log(f"error: score {', '.join(bad)} is not finite (training diverged or the artifact is damaged); "
                "lower the learning rates or check the data")
    return 1 if over or bad else 0

def main() -> int:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    args = Hyperparameters.from_env()
    check_config(args, world_size)
    t0 = time.perf_counter()  # EVAL_ONLY: reading the artifact is the evaluation's deserialize phase
    eval_state, eval_meta = read_eval_artifact(args) if args.eval_only else (None, {})
    read_ms = 1000 * (time.perf_counter() - t0)
    val_np, val_bytes, byte_source = read_val(args)
    train_files = read_train_files(args)
    run = start_run(args, world_size)
    val_tokens = torch.from_numpy(val_np.astype(np.int64)).to(run.device)
    qname = f"int{eval_meta.get('config', {}).get('QUANT_BITS', args.quant_bits)}"
    scores = Scores(run, torch.from_numpy(val_bytes).to(run.device), qname)
    run.log(f"val_tokens:{val_np.size} val_bytes:{int(val_bytes.sum())} train_shards:{len(train_files)}")
    run.log(f"val_byte_source:{byte_source}")
    base_model = build_model(args, run.device).to(run.device)
    num_params = sum(p.numel() for p in base_model.parameters())
    run.log(f"model_params:{num_params}")
    if args.eval_only:
        stats, model_bytes, path = load_eval_only(run, base_model, eval_state, eval_meta, scores, read_ms)
    else:
        stats, model_bytes, path = train_and_export(run, base_model, train_files, val_tokens, scores)
    total, cname = model_bytes + len(run.shipped), f"{qname}+{args.compressor}"
    run.log(f"Serialized model {cname}: {model_bytes} bytes")
    run.log(f"Code size: {len(run.code)} bytes" if args.code_form == "raw" else f"Code size (uncompressed): "
            f"{len(run.code)} bytes\nCode size (compressed, CODE_FORM={args.code_form}): {len(run.shipped)} bytes")
    run.log(f"Total submission size {cname}: {total} bytes")
    final_evaluation(run, base_model, val_np, val_tokens, scores)
    gpu = torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else None
    summary = {"run_id": args.run_id, "seed": args.seed, "code_sha256": hashlib.sha256(run.code).hexdigest(),
               "code_bytes": len(run.code), "counted_code_bytes": len(run.shipped),
               "counted_code_sha256": hashlib.sha256(run.shipped).hexdigest(), "model_bytes": model_bytes,
               "artifact_bytes": total, "artifact_path": str(path), "eval_only": bool(args.eval_only),
               "config": args.as_dict(), "world_size": world_size, "device": run.device.type, "gpu_name": gpu,
               "versions": versions(), "attention_kernel": attention_kernel(run.device)[0],
               "compile_mode": run.compile_mode, "num_params": num_params, **stats}
    uni = unigram_bpb(train_files, val_np, val_bytes, args.vocab_size) if train_files else None
    rc = finish(run, scores, summary, uni)
    if run.distributed:
        dist.barrier()  # leave together: gloo aborts if a peer tears down while the other is still finishing
        dist.destroy_process_group()
    return rc

def cli(argv: list[str]) -> int:
    """A run, or --count-params, --check (configuration and inputs) or --plan. Errors: one `error:` line (rank 0
    only); exit 2 for settings and inputs, 1 for a run that could not finish honestly."""
    try:
        if argv == ["--count-params"]:
            print(count_params(os.environ))
            return 0
        if argv == ["--plan"]:
            args = Hyperparameters.from_env()
            check_config(args, int(os.environ.get("WORLD_SIZE", "1")))
            lines, model_b, code_b = plan(args, shipped_code(Path(__file__).read_bytes(), args.code_form))
            print("\n".join(lines) + f"\nartifact_estimate bytes:{model_b + code_b} model:{model_b} code:{code_b}")
            return 0
        if argv == ["--check"]:
            check_inputs(Hyperparameters.from_env(), int(os.environ.get("WORLD_SIZE", "1")))
            print("config ok")
            return 0
        if argv:
            raise ConfigError(f"unknown arguments {argv}: settings are environment variables; the options are "
                              "--count-params, --check and --plan")
        return main()
    except (ConfigError, RunError) as err:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {err}", file=sys.stderr, flush=True)
        else:  # every rank fails alike: leave after rank 0 has printed, before torchrun stops the group
            time.sleep(2)
        return 2 if isinstance(err, ConfigError) else 1

if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
