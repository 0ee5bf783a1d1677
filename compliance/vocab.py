"""What call and attribute names mean to the analysis (creators, losses, mutators, optimisers, data ops)."""

from __future__ import annotations

import re

# ---------------------------------------------------------------------------------------------------------------
# Vocabulary of calls
# ---------------------------------------------------------------------------------------------------------------
DROP_CALLS = {"len", "range", "isinstance", "issubclass", "hasattr", "id", "type", "print", "callable", "super",
              "numel", "size", "dim", "nelement", "element_size", "is_tensor", "perf_counter", "time", "monotonic",
              "log0", "logger", "info", "warning", "debug", "exists", "is_file", "is_dir", "makedirs", "mkdir",
              "synchronize", "barrier", "empty_cache", "manual_seed", "seed", "set_device", "get_rank",
              "get_world_size", "is_available", "is_initialized", "format", "startswith", "endswith",
              "count_nonzero", "stat", "getsize", "device", "dtype", "is_byte", "is_control", "is_unknown",
              "is_unused", "vocab_size", "get_piece_size", "hexdigest", "sha256", "write_text", "flush"}
DROP_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "grad_fn", "T_max", "__name__"}
CREATORS = {"zeros", "ones", "empty", "full", "arange", "zeros_like", "ones_like", "empty_like", "full_like", "eye",
            "linspace", "randn", "rand", "randint", "randperm", "randn_like", "rand_like", "normal", "tril", "triu"}
LOSS_FUNCS = {"cross_entropy", "nll_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits",
              "CrossEntropyLoss", "kl_div", "fused_cross_entropy", "chunked_cross_entropy", "softmax_cross_entropy",
              "softmax_cross_entropy_with_integer_labels", "linear_cross_entropy"}
MUTATORS = {"append", "extend", "add", "insert", "add_", "copy_", "index_add_", "scatter_add_", "scatter_",
            "index_copy_", "index_put_", "put_", "update", "sub_", "mul_", "div_", "fill_", "masked_fill_",
            "zero_", "appendleft", "setdefault", "__setitem__", "lerp_", "addcmul_", "addcdiv_", "clamp_"}
OPTIMIZER_NAMES = {"SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam", "LBFGS",
                   "SparseAdam", "ASGD", "Rprop", "Muon", "Lion", "Adafactor", "Shampoo", "SOAP", "NorMuon",
                   "DistributedMuon", "ParallelMuon", "sgd", "adam", "adamw"}
GENERIC_METHODS = {"forward", "__call__", "step", "zero_grad", "backward", "to", "cuda", "cpu", "float", "half",
                   "double", "bfloat16", "item", "append", "extend", "get", "update", "pop", "items", "keys",
                   "values", "copy", "clone", "detach", "view", "reshape", "sum", "mean", "add", "numel", "size",
                   "train", "eval", "state_dict", "load_state_dict", "parameters", "named_parameters", "apply",
                   "format", "join", "split", "strip", "write", "read", "close", "open", "encode", "decode",
                   "replace", "lower", "upper", "run", "start", "reset", "clear", "log", "info", "__init__",
                   "__len__", "__getitem__", "__iter__", "__next__", "sort", "index", "count", "contiguous",
                   "flatten", "squeeze", "unsqueeze", "expand", "permute", "transpose", "float32", "numpy",
                   "tolist", "max", "min", "abs", "exp", "sqrt", "norm", "round", "long", "int", "bool", "type"}
SCHEDULER_HINT = re.compile(r"sched|lr_|warmup|swa|ema|timer|pbar|progress|profil", re.I)
OPT_HINT = re.compile(r"opt|muon|adam|sgd|lion|solver", re.I)
DATA_OPS = {"cat", "stack", "concatenate", "where", "tensor", "from_numpy", "asarray", "array", "roll", "clamp",
            "clip", "minimum", "maximum", "full", "pad", "repeat", "tile", "narrow", "split", "chunk", "unique",
            "searchsorted", "bucketize", "isin", "eq", "ne", "masked_select", "take", "index_select", "flip"}

GRAD_TRANSFORMS = {"grad", "grad_and_value", "vjp", "jacrev", "jacfwd", "hessian"}
INPLACE_UPDATES = {"add_", "sub_", "copy_", "addcdiv_", "addcmul_", "lerp_", "mul_", "div_"}
VIEW_ATTRS = {"data", "T", "mT", "H", "mH", "real", "imag"}   # views of a tensor: what flows is the tensor itself
CLOCKS = {"time", "perf_counter", "monotonic", "perf_counter_ns", "time_ns", "monotonic_ns", "process_time"}
