"""Label bits of the taint (one int per value) and the seeds: names and strings that denote validation data,
training data, targets and per-token losses before any data flow is followed."""

from __future__ import annotations

import re

# Label bits
# ---------------------------------------------------------------------------------------------------------------
VAL, TGT, CTX, TRAIN, HASH, MIXT, LOADER, LOSS, GRADVAR, MIXP, MIXPS = (1 << i for i in range(11))
GRAD = 1 << 11      # a gradient: p.grad, torch.autograd.grad(...), torch.func.grad(f)(...), and what is computed from it
WEIGHT = 1 << 12    # model parameters: .parameters(), .named_parameters(), nn.Parameter, .data, state_dict()
OPTIM = 1 << 13     # an optimiser object (constructed from an optimiser class), also inside lists, dicts, returns
GRADFN = 1 << 14    # a gradient transform: torch.func.grad(f), grad_and_value(f), vjp: calling it gives a GRAD
TKEY = 1 << 15      # a value read from a table with a key that includes the target token (a count at the gold token)
MULTI = 1 << 16     # several per-token scores stacked together (one row per predictor)
TIME = 1 << 17      # a clock reading (time.perf_counter(), time.time(), ...) and what is computed from it
BYTESRC = 1 << 18   # a per-token byte sidecar (fineweb_val_bytes_*.bin): bytes of the original text
PARAM_SHIFT = 24
CONCRETE = (1 << PARAM_SHIFT) - 1
DATA = VAL | TGT | CTX | TRAIN
SUMMARY_ONLY = MIXP | MIXPS
OBJECTS = OPTIM | GRADFN    # labels of objects, not of data: they do not flow into what is computed with them


def pbit(i: int) -> int:
    return 1 << (PARAM_SHIFT + i)


def param_indices(labels: int):
    x = labels >> PARAM_SHIFT
    i = 0
    while x:
        if x & 1:
            yield i
        x >>= 1
        i += 1


# ---------------------------------------------------------------------------------------------------------------
# Seeds: names and strings that denote validation / training data and targets
# ---------------------------------------------------------------------------------------------------------------
_VAL_NAME = re.compile(r"^_*(val|valid|validation)_?(tokens?|toks?|ids|data|np|arr|array|seq|stream|buf|set|shards?|"
                       r"files?|pattern|path|bin|loader|ds|dataset|iter|batches|chunks?|text|docs?|u64|u32|u16|i64|"
                       r"i32|int|long|tensor|t|flat|cpu|gpu|dev|all|full|gpu|cuda|idx)(_\w+)?$", re.I)
_VAL_NAME2 = re.compile(r"^(val_tokens|valid_tokens|val_data|val_ids|val_np)$", re.I)
_TRAIN_NAME = re.compile(r"^_*train_?(tokens?|files?|pattern|shards?|data|loader|stream|bin|ds|dataset|np)(_\w+)?$",
                         re.I)
_TGT_NAME = re.compile(r"^(y|ys|yb|y_b|yy|y_batch|y_true|y_ids|y_cpu|y_np|y_flat|y_u64|y_i64|tgt\w*|targets?(_\w+)?|"
                       r"gold\w*|labels?|label_ids|next_toks?|next_tokens?|next_ids)$", re.I)
_LOSS_NAME = re.compile(r"^(per_?tok(en)?_?(loss|nll)s?|ptl|tok_loss(es)?|token_loss(es)?|nlls?|scored_nll|seg_nll|"
                        r"\w*_nlls?|nll_\w+|losses|loss_per_tok(en)?)$", re.I)
_SPLIT_TAIL = r"([_\-.]?\d|[_\-.]?\*|[_\-.](tokens?|toks|data|ids|set|split|shards?|docs?|stream)\b|\.(bin|pt|npy|npz|txt|jsonl?)\b|/|$)"
_VAL_STR = re.compile(r"fineweb_val|(^|[/_\-.])val(id|idation)?" + _SPLIT_TAIL, re.I)
_BYTES_STR = re.compile(r"_bytes_|val_bytes|bytes_\d{3,}|byte_sidecar", re.I)
_TRAIN_STR = re.compile(r"fineweb_train|(^|[/_\-.])train" + _SPLIT_TAIL, re.I)
_BOTH_STR = re.compile(r"fineweb_?\*|(^|/)\*\.bin$", re.I)

_seed_cache: dict[str, int] = {}
_str_cache: dict[str, int] = {}


def name_seed(name: str) -> int:
    v = _seed_cache.get(name)
    if v is None:
        v = 0
        if _VAL_NAME.match(name) or _VAL_NAME2.match(name):
            v |= VAL
        if _TRAIN_NAME.match(name):
            v |= TRAIN
        if _TGT_NAME.match(name):
            v |= TGT
        if _LOSS_NAME.match(name) and not re.search(r"sum|count|total|mean|avg|best|min|max", name, re.I):
            v |= LOSS
        _seed_cache[name] = v
    return v


def string_labels(s: str) -> int:
    if len(s) > 400:
        return 0
    v = _str_cache.get(s)
    if v is None:
        v = 0
        if _VAL_STR.search(s):
            v |= VAL
        if _TRAIN_STR.search(s):
            v |= TRAIN
        if _BOTH_STR.search(s):
            v |= VAL | TRAIN
        if _BYTES_STR.search(s):
            v |= BYTESRC
        _str_cache[s] = v
    return v


