"""The shared static analysis the rules stand on: an index of the program and a simple data flow.

* Index: every function (methods, nested functions and each module's top level as a pseudo-function), its
  statements in order with the loops, `if`-guards (early exits included) and `with` blocks around them, and the
  call graph (calls, class instantiations, and functions passed by reference, e.g. ``timed_eval(name, fn)``).
* Labels: a flow-insensitive taint over variables, attributes and function results, bit flags in one int:
  VAL (validation data: files, patterns, tokens), TRAIN (training data), TGT (the target tokens: ``y``, ``chunk[1:]``,
  ``tokens[i + 1]``, ``tokens[i]`` next to ``tokens[i - k]``), CTX (inputs ``[:-1]``), HASH (a lossy hash that mixes a
  target into a key: xor/shift, or arithmetic then ``& mask`` / ``% buckets``), LOSS (per-token losses), GRADVAR
  (tensors created with ``requires_grad=True`` outside modules), LOADER (objects built from data files).
  Function results are summarised in terms of their parameters (one bit per parameter), so a call site gets
  exactly the labels of the arguments that flow through; parameters are resolved to call-site labels on demand.
* Events: backward passes, optimiser steps and in-place parameter updates, score accumulations (what a function
  adds to the totals it returns or logs as val_loss/bpb), count-table increments and reads, optimiser
  constructions. Functions that contain events pass them up to their call sites ("lifted"), so a rule can
  reason at the level where the score loop and the training step meet.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from dataclasses import dataclass, field

from .source import SourceUnit

# ---------------------------------------------------------------------------------------------------------------
# Label bits
# ---------------------------------------------------------------------------------------------------------------
VAL, TGT, CTX, TRAIN, HASH, MIXT, LOADER, LOSS, GRADVAR, MIXP, MIXPS = (1 << i for i in range(11))
PARAM_SHIFT = 16
CONCRETE = (1 << PARAM_SHIFT) - 1
DATA = VAL | TGT | CTX | TRAIN
SUMMARY_ONLY = MIXP | MIXPS


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
_VAL_STR = re.compile(r"fineweb_val|(^|[/_\-.])val(idation)?([_\-.]?\d|[_\-.]?\*|\.bin|/|$)", re.I)
_TRAIN_STR = re.compile(r"fineweb_train|(^|[/_\-.])train([_\-.]?\d|[_\-.]?\*|\.bin|/|$)", re.I)
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
        _str_cache[s] = v
    return v


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

LOOPS = (ast.For, ast.AsyncFor, ast.While)
FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)


def call_name(node: ast.Call) -> str:
    f = node.func
    if isinstance(f, ast.Attribute):
        return f.attr
    if isinstance(f, ast.Name):
        return f.id
    return ""


def dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        d = dotted(node.value)
        return f"{d}.{node.attr}" if d else node.attr
    if isinstance(node, ast.Call):
        return dotted(node.func) + "()"
    if isinstance(node, ast.Subscript):
        return dotted(node.value) + "[]"
    return ""


def root_name(node: ast.expr) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


_NAMES_MEMO: dict[int, tuple] = {}


def names_in(node: ast.AST | None) -> set[str]:
    if node is None:
        return set()
    k = id(node)
    hit = _NAMES_MEMO.get(k)
    if hit is not None and hit[0] is node:
        return set(hit[1])
    out = frozenset(n.id for n in ast.walk(node) if isinstance(n, ast.Name))
    _NAMES_MEMO[k] = (node, out)
    return set(out)


def has_grad_attr(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr in ("grad", "main_grad") for n in ast.walk(node))


# ---------------------------------------------------------------------------------------------------------------
# Index structures
# ---------------------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Guard:
    test: ast.expr
    polarity: bool
    func: "FuncInfo"
    kind: str = "if"


@dataclass(eq=False)
class Stmt:
    node: ast.stmt
    func: "FuncInfo"
    index: int
    loops: tuple = ()        # enclosing loop Stmts, outer -> inner
    guards: tuple = ()       # Guards around it inside its function
    withs: tuple = ()        # context expressions of enclosing `with` blocks
    _own: list | None = None
    _nodes: list | None = None

    @property
    def line(self) -> int:
        return getattr(self.node, "lineno", 0)

    @property
    def own(self) -> list:
        if self._own is None:
            self._own = own_exprs(self.node)
        return self._own

    @property
    def nodes(self) -> list:
        """Every node of the statement's own expressions (computed once)."""
        if self._nodes is None:
            out = []
            for e in self.own:
                out.extend(ast.walk(e))
            self._nodes = out
        return self._nodes


@dataclass(eq=False)
class CallSite:
    caller: "FuncInfo"
    stmt: Stmt
    node: ast.AST               # ast.Call, or a Name/Attribute passed as a reference
    targets: list               # FuncInfo list
    guards: tuple = ()          # expression-level guards (IfExp / BoolOp) around the call
    kind: str = "call"          # call | ref | init
    receiver: ast.expr | None = None

    @property
    def line(self) -> int:
        return getattr(self.node, "lineno", self.stmt.line)


@dataclass(eq=False)
class Event:
    kind: str                   # backward | step | update | accum | incr | read | hashread | optdef | gradvar
    stmt: Stmt
    node: ast.AST
    labels: int = 0             # data labels of the event (loss, key, value ...)
    root: tuple | None = None   # for incr/read: table root
    extra: dict = field(default_factory=dict)
    via: CallSite | None = None  # set on lifted events: the call site in this function
    origin: "Event | None" = None


class FuncInfo:
    def __init__(self, name: str, qualname: str, node: ast.AST, unit: SourceUnit, cls: str | None,
                 parent: "FuncInfo | None", is_module: bool = False):
        self.name, self.qualname, self.node, self.unit = name, qualname, node, unit
        self.cls, self.parent, self.is_module = cls, parent, is_module
        self.params: list[str] = []
        self.defaults: dict[str, ast.expr] = {}
        self.vararg: str | None = None
        self.kwarg: str | None = None
        self.stmts: list[Stmt] = []
        self.stmt_of: dict[int, Stmt] = {}
        self.local_names: set[str] = set()
        self.local_defs: dict[str, FuncInfo] = {}
        self.labels: dict[str, int] = defaultdict(int)
        self.vdefs: dict[str, dict[int, list]] = defaultdict(dict)   # name -> stmt index -> [loop ids, labels]
        self.deps: dict[str, set[str]] = defaultdict(set)
        self.defs: dict[str, list[Stmt]] = defaultdict(list)
        self.types: dict[str, str] = {}          # var -> user class name
        self.ret_labels = 0
        self.ret_elems: list[int] | None = None
        self.calls: list[CallSite] = []
        self.def_stmt: Stmt | None = None
        self.events: list[Event] = []
        self.lifted: list[Event] = []
        self.report_vars: set[str] = set()
        self.ctx_index: set[tuple[str, str]] = set()
        self.memo: dict[int, int] = {}
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            allp = list(a.posonlyargs) + list(a.args)
            self.params = [p.arg for p in allp]
            defaults = list(a.defaults)
            for p, d in zip(allp[len(allp) - len(defaults):], defaults):
                self.defaults[p.arg] = d
            for p, d in zip(a.kwonlyargs, a.kw_defaults):
                self.params.append(p.arg)
                if d is not None:
                    self.defaults[p.arg] = d
            self.vararg = a.vararg.arg if a.vararg else None
            self.kwarg = a.kwarg.arg if a.kwarg else None
            if self.vararg:
                self.params.append(self.vararg)
            if self.kwarg:
                self.params.append(self.kwarg)
            self.local_names.update(self.params)

    def __repr__(self) -> str:
        return f"<FuncInfo {self.qualname}>"

    @property
    def is_method(self) -> bool:
        return self.cls is not None and bool(self.params) and self.params[0] in ("self", "cls")

    @property
    def line(self) -> int:
        return getattr(self.node, "lineno", 1)

    def events_of(self, *kinds: str, lifted: bool = True) -> list[Event]:
        evs = [e for e in self.events if e.kind in kinds]
        if lifted:
            evs += [e for e in self.lifted if e.kind in kinds]
        return evs


@dataclass
class ClassInfo:
    name: str
    node: ast.ClassDef
    unit: SourceUnit
    bases: list[str]
    methods: dict[str, FuncInfo] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Building the index
# ---------------------------------------------------------------------------------------------------------------
class Program:
    def __init__(self, units: list[SourceUnit]):
        self.units = units
        self.funcs: list[FuncInfo] = []
        self.modules: dict[int, FuncInfo] = {}          # id(unit) -> module pseudo-function
        self.module_defs: dict[str, dict[str, FuncInfo]] = defaultdict(dict)   # module -> name -> func
        self.global_defs: dict[str, list[FuncInfo]] = defaultdict(list)      # module-level functions by name
        self.classes: dict[str, list[ClassInfo]] = defaultdict(list)
        self.methods_by_name: dict[str, list[FuncInfo]] = defaultdict(list)
        self.aliases: dict[int, dict[str, str]] = {}     # id(unit) -> local name -> module[.attr]
        self.attr_labels: dict[str, int] = defaultdict(int)
        self.attr_types: dict[str, str] = {}
        self.callers: dict[FuncInfo, list[CallSite]] = defaultdict(list)
        self.optimizer_classes: set[str] = set(OPTIMIZER_NAMES)
        self.module_names = {u.module for u in units} | {u.path.stem for u in units}
        for u in units:
            self._index_unit(u)
        self._find_optimizer_classes()
        for f in self.funcs:
            self._structure(f)
        for f in self.funcs:
            self._resolve_calls(f)
        for f in self.funcs:
            for cs in f.calls:
                for t in cs.targets:
                    self.callers[t].append(cs)
        self._analyse_labels()
        self._events()
        self._lift()

    # -- indexing -------------------------------------------------------------------------------------------
    def _index_unit(self, unit: SourceUnit) -> None:
        mod = FuncInfo("<module>", f"{unit.module}.<module>", unit.tree, unit, None, None, is_module=True)
        self.modules[id(unit)] = mod
        self.funcs.append(mod)
        al: dict[str, str] = {}
        for node in unit.nodes:
            if isinstance(node, ast.Import):
                for a in node.names:
                    al[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module:
                for a in node.names:
                    al[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.ImportFrom) and node.level and not node.module:
                for a in node.names:
                    al[a.asname or a.name] = a.name
        self.aliases[id(unit)] = al
        self._index_body(unit.tree.body, unit, mod, None, prefix=unit.module)

    def _index_body(self, body, unit, owner: FuncInfo, cls: ClassInfo | None, prefix: str) -> None:
        for node in _iter_defs(body):
            if isinstance(node, FUNCS):
                qual = f"{prefix}.{node.name}"
                fi = FuncInfo(node.name, qual, node, unit, cls.name if cls else None,
                              owner if not owner.is_module else None)
                self.funcs.append(fi)
                if cls is not None:
                    cls.methods.setdefault(node.name, fi)
                    self.methods_by_name[node.name].append(fi)
                elif owner.is_module:
                    self.module_defs[unit.module][node.name] = fi
                    self.global_defs[node.name].append(fi)
                else:
                    owner.local_defs[node.name] = fi
                self._index_body(node.body, unit, fi, None, prefix=qual)
            elif isinstance(node, ast.ClassDef):
                ci = ClassInfo(node.name, node, unit, [dotted(b).split(".")[-1] for b in node.bases])
                self.classes[node.name].append(ci)
                self._index_body(node.body, unit, owner, ci, prefix=f"{prefix}.{node.name}")
                owner.local_names.add(node.name)

    def _find_optimizer_classes(self) -> None:
        changed = True
        while changed:
            changed = False
            for name, cis in self.classes.items():
                if name in self.optimizer_classes:
                    continue
                for ci in cis:
                    if any(b in self.optimizer_classes or b == "Optimizer" for b in ci.bases):
                        self.optimizer_classes.add(name)
                        changed = True

    # -- statements -----------------------------------------------------------------------------------------
    def _structure(self, f: FuncInfo) -> None:
        body = f.node.body if not isinstance(f.node, ast.Lambda) else []
        counter = [0]

        def visit_block(stmts, loops, guards, withs):
            guards = tuple(guards)
            for s in stmts:
                st = Stmt(s, f, counter[0], tuple(loops), guards, tuple(withs))
                counter[0] += 1
                f.stmts.append(st)
                f.stmt_of[id(s)] = st
                if isinstance(s, FUNCS):
                    f.local_names.add(s.name)
                    continue
                if isinstance(s, ast.ClassDef):
                    # class bodies at module level: their assignments are attributes (handled as statements)
                    visit_block([b for b in s.body if not isinstance(b, (FUNCS, ast.ClassDef))], loops,
                                guards, withs)
                    continue
                self._collect_names(f, s, st)
                if isinstance(s, ast.If):
                    visit_block(s.body, loops, guards + (Guard(s.test, True, f),), withs)
                    visit_block(s.orelse, loops, guards + (Guard(s.test, False, f),), withs)
                    if not s.orelse and s.body and _ends_block(s.body[-1]):
                        guards = guards + (Guard(s.test, False, f, "early-exit"),)
                    elif s.orelse and not s.body:
                        pass
                elif isinstance(s, LOOPS):
                    inner = guards + ((Guard(s.test, True, f, "while"),) if isinstance(s, ast.While) else ())
                    visit_block(s.body, tuple(loops) + (st,), inner, withs)
                    visit_block(s.orelse, loops, guards, withs)
                elif isinstance(s, (ast.With, ast.AsyncWith)):
                    visit_block(s.body, loops, guards, tuple(withs) + tuple(i.context_expr for i in s.items))
                elif isinstance(s, ast.Try) or type(s).__name__ == "TryStar":
                    visit_block(s.body, loops, guards, withs)
                    for h in s.handlers:
                        visit_block(h.body, loops, guards, withs)
                    visit_block(s.orelse, loops, guards, withs)
                    visit_block(s.finalbody, loops, guards, withs)
                elif type(s).__name__ == "Match":
                    for case in s.cases:
                        visit_block(case.body, loops, guards, withs)

        visit_block(body, (), (), ())
        # the `if __name__ == "__main__":` test, and loop/with heads, are own expressions of their statements
        for st in f.stmts:
            for sub in st.nodes:
                if True:
                    if isinstance(sub, ast.Subscript) and isinstance(sub.slice, ast.BinOp):
                        left = sub.slice
                        has_sub = False
                        while isinstance(left, ast.BinOp):
                            has_sub = has_sub or isinstance(left.op, ast.Sub)
                            left = left.left
                        if has_sub and isinstance(left, ast.Name):
                            f.ctx_index.add((ast.dump(sub.value), left.id))

    @staticmethod
    def _collect_names(f: FuncInfo, s: ast.stmt, st: Stmt) -> None:
        targets = []
        if isinstance(s, ast.Assign):
            targets = s.targets
        elif isinstance(s, (ast.AugAssign, ast.AnnAssign)):
            targets = [s.target]
        elif isinstance(s, (ast.For, ast.AsyncFor)):
            targets = [s.target]
        elif isinstance(s, (ast.With, ast.AsyncWith)):
            targets = [i.optional_vars for i in s.items if i.optional_vars is not None]
        elif isinstance(s, (ast.Import, ast.ImportFrom)):
            for a in s.names:
                f.local_names.add((a.asname or a.name).split(".")[0])
        for t in targets:
            for n in ast.walk(t):
                if isinstance(n, ast.Name):
                    f.local_names.add(n.id)
        for n in (0,):
            for sub in st.nodes:
                if isinstance(sub, ast.NamedExpr) and isinstance(sub.target, ast.Name):
                    f.local_names.add(sub.target.id)
                elif isinstance(sub, ast.comprehension):
                    pass   # comprehension variables live in the comprehension's own scope

    # -- call resolution ------------------------------------------------------------------------------------
    def lookup_name(self, f: FuncInfo, name: str) -> tuple[list[FuncInfo], bool]:
        """Functions a bare name refers to from inside f; bool: it is a class (instantiation)."""
        g = f
        while g is not None:
            if name in g.local_defs:
                return [g.local_defs[name]], False
            g = g.parent
        unit = f.unit
        if name in self.module_defs[unit.module]:
            return [self.module_defs[unit.module][name]], False
        al = self.aliases.get(id(unit), {})
        if name in al:
            mod, _, attr = al[name].rpartition(".")
            if mod and attr in self.module_defs.get(mod.split(".")[-1], {}):
                return [self.module_defs[mod.split(".")[-1]][attr]], False
            if mod and attr in self.classes:
                return self._class_init(attr), True
        if name in self.classes:
            return self._class_init(name), True
        if name in self.global_defs:   # exec()'d siblings share the caller's globals
            return list(self.global_defs[name]), False
        return [], False

    def _class_init(self, cname: str) -> list[FuncInfo]:
        out = []
        for ci in self.class_chain(cname):
            if "__init__" in ci.methods:
                out.append(ci.methods["__init__"])
                break
        return out

    def class_chain(self, cname: str, depth: int = 0) -> list[ClassInfo]:
        out = []
        for ci in self.classes.get(cname, []):
            out.append(ci)
            if depth < 6:
                for b in ci.bases:
                    if b != cname:
                        out.extend(self.class_chain(b, depth + 1))
        return out

    def methods_of(self, cname: str, mname: str) -> list[FuncInfo]:
        for ci in self.class_chain(cname):
            if mname in ci.methods:
                return [ci.methods[mname]]
        return []

    def resolve_call(self, f: FuncInfo, func: ast.expr) -> tuple[list[FuncInfo], str, ast.expr | None]:
        """(targets, kind, receiver) for the callee expression `func` evaluated in f."""
        if isinstance(func, ast.Name):
            ts, is_cls = self.lookup_name(f, func.id)
            return ts, ("init" if is_cls else "call"), None
        if isinstance(func, ast.Attribute):
            recv = func.value
            m = func.attr
            if isinstance(recv, ast.Name):
                al = self.aliases.get(id(f.unit), {})
                modname = al.get(recv.id, recv.id if recv.id in self.module_names else None)
                if modname is not None and (recv.id not in f.local_names or f.is_module):
                    mod = modname.split(".")[-1]
                    if m in self.module_defs.get(mod, {}):
                        return [self.module_defs[mod][m]], "call", None
                    if m in self.classes:
                        return self._class_init(m), "init", None
                if recv.id in ("self", "cls") and f.cls:
                    return self.methods_of(f.cls, m), "call", recv
                t = f.types.get(recv.id) or self._outer_type(f, recv.id)
                if t:
                    return self.methods_of(t, m), "call", recv
            if isinstance(recv, ast.Attribute) and recv.attr in self.attr_types:
                return self.methods_of(self.attr_types[recv.attr], m), "call", recv
            if isinstance(recv, ast.Call) and isinstance(recv.func, ast.Name) and recv.func.id == "super" and f.cls:
                for ci in self.classes.get(f.cls, []):
                    for b in ci.bases:
                        ms = self.methods_of(b, m)
                        if ms:
                            return ms, "call", ast.Name(id="self", ctx=ast.Load())
                return [], "call", None
            if m in GENERIC_METHODS or m.startswith("__"):
                return [], "call", recv
            return list(self.methods_by_name.get(m, [])), "call", recv
        return [], "call", None

    def _outer_type(self, f: FuncInfo, name: str) -> str | None:
        g = f.parent
        while g is not None:
            if name in g.types:
                return g.types[name]
            g = g.parent
        mod = self.modules.get(id(f.unit))
        return mod.types.get(name) if mod is not None else None

    def _resolve_calls(self, f: FuncInfo) -> None:
        # variable types first (x = ClassName(...)), so method calls on x resolve
        for st in f.stmts:
            s = st.node
            if isinstance(s, ast.Assign) and isinstance(s.value, ast.Call):
                cname = _class_name_of_call(s.value, self)
                if cname:
                    for t in s.targets:
                        if isinstance(t, ast.Name):
                            f.types[t.id] = cname
                        elif isinstance(t, ast.Attribute):
                            self.attr_types[t.attr] = cname
        for st in f.stmts:
            for expr in own_exprs(st.node):
                self._calls_in(f, st, expr, ())

    def _calls_in(self, f: FuncInfo, st: Stmt, node: ast.AST, guards: tuple, func_pos: bool = False) -> None:
        if isinstance(node, ast.IfExp):
            self._calls_in(f, st, node.test, guards)
            self._calls_in(f, st, node.body, guards + (Guard(node.test, True, f, "ifexp"),))
            self._calls_in(f, st, node.orelse, guards + (Guard(node.test, False, f, "ifexp"),))
            return
        if isinstance(node, ast.BoolOp):
            g = guards
            for v in node.values:
                self._calls_in(f, st, v, g)
                g = g + (Guard(v, isinstance(node.op, ast.And), f, "boolop"),)
            return
        if isinstance(node, ast.Call):
            ts, kind, recv = self.resolve_call(f, node.func)
            if ts:
                f.calls.append(CallSite(f, st, node, ts, guards, kind, recv))
            self._calls_in(f, st, node.func, guards, func_pos=True)
            for a in node.args:
                self._calls_in(f, st, a, guards)
            for k in node.keywords:
                self._calls_in(f, st, k.value, guards)
            return
        if isinstance(node, (ast.Lambda,)):
            self._calls_in(f, st, node.body, guards)
            return
        if not func_pos and isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            ts, is_cls = self.lookup_name(f, node.id)
            if ts and not is_cls:
                f.calls.append(CallSite(f, st, node, ts, guards, "ref", None))
            return
        if not func_pos and isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in ("self",) and f.cls:
            ms = self.methods_of(f.cls, node.attr)
            if ms:
                f.calls.append(CallSite(f, st, node, ms, guards, "ref", node.value))
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.expr, ast.comprehension, ast.keyword, ast.arguments, ast.arg)):
                self._calls_in(f, st, child, guards)

    # -- labels ---------------------------------------------------------------------------------------------
    def _analyse_labels(self) -> None:
        order = self._callee_first_order()
        self.version = 0
        self.attr_ver: dict[str, int] = {}
        self.glob_ver: dict[tuple, int] = {}
        for f in order:
            self._read_sets(f)
        for f in order:
            f.ran_at = self.version
            LabelPass(self, f).run()
        for _round in range(4):
            rerun = False
            for f in order:
                if any(self.attr_ver.get(a, 0) > f.ran_at for a in f.attr_reads) or \
                        any(self.glob_ver.get(k, 0) > f.ran_at for k in f.outer_reads) or \
                        any(getattr(c, "ret_ver", 0) > f.ran_at for c in f.callees):
                    f.ran_at = self.version
                    LabelPass(self, f).run()
                    rerun = True
            if not rerun:
                break

    def bump(self) -> int:
        self.version += 1
        return self.version

    def _read_sets(self, f: FuncInfo) -> None:
        attrs, outer = set(), set()
        for st in f.stmts:
            for n in st.nodes:
                if isinstance(n, ast.Attribute):
                    attrs.add(n.attr)
                elif isinstance(n, ast.Name) and n.id not in f.local_names:
                    g = f.parent
                    while g is not None and n.id not in g.local_names:
                        g = g.parent
                    scope = g if g is not None else self.modules.get(id(f.unit))
                    if scope is not None:
                        outer.add((id(scope), n.id))
        f.attr_reads, f.outer_reads = attrs, outer
        f.callees = {t for cs in f.calls for t in cs.targets if t is not f}
        f.ran_at = 0

    def _callee_first_order(self) -> list[FuncInfo]:
        # iterative DFS post-order over call edges; module pseudo-functions last
        seen: set[int] = set()
        order: list[FuncInfo] = []
        for root in self.funcs:
            if id(root) in seen:
                continue
            stack = [(root, iter([t for cs in root.calls for t in cs.targets]))]
            seen.add(id(root))
            while stack:
                node, it = stack[-1]
                nxt = None
                for t in it:
                    if id(t) not in seen:
                        nxt = t
                        break
                if nxt is None:
                    order.append(node)
                    stack.pop()
                else:
                    seen.add(id(nxt))
                    stack.append((nxt, iter([t for cs in nxt.calls for t in cs.targets])))
        return order

    # -- resolving parameter bits to call-site labels ---------------------------------------------------------
    def arg_expr(self, cs: CallSite, callee: FuncInfo, i: int) -> list[ast.expr]:
        """Expressions the call site passes for callee parameter i (several for *args)."""
        if i >= len(callee.params):
            return []
        pname = callee.params[i]
        node = cs.node
        bound = cs.kind == "init" or (cs.receiver is not None and callee.is_method)
        if cs.kind == "init" and callee.is_method and i == 0:
            return []
        if not isinstance(node, ast.Call):
            return []
        if bound and i == 0:
            return [cs.receiver] if cs.receiver is not None else []
        pos = i - (1 if (bound or (cs.kind == "init")) else 0)
        if pname == callee.vararg:
            start = len([p for p in callee.params if p not in (callee.vararg, callee.kwarg)])
            start -= (1 if bound else 0)
            return list(node.args[max(start, 0):])
        for k in node.keywords:
            if k.arg == pname:
                return [k.value]
        if 0 <= pos < len(node.args) and not any(isinstance(a, ast.Starred) for a in node.args[:pos + 1]):
            return [node.args[pos]]
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            return [a.value if isinstance(a, ast.Starred) else a for a in node.args] + \
                   [k.value for k in node.keywords if k.arg is None]
        return []

    def resolve(self, f: FuncInfo, labels: int, depth: int = 0, _seen: frozenset = frozenset()) -> int:
        """Replace parameter bits by the union of what call sites pass (context-insensitive, bounded)."""
        out = labels & CONCRETE
        if labels >> PARAM_SHIFT == 0 or depth > 5 or f in _seen:
            return out
        seen = _seen | {f}
        for i in param_indices(labels):
            for cs in self.callers.get(f, ()):
                if cs.kind == "ref":
                    continue
                for e in self.arg_expr(cs, f, i):
                    lab = cs.caller.memo.get(id(e))
                    if lab is None:
                        lab = LabelPass(self, cs.caller).label(e)
                    out |= self.resolve(cs.caller, lab, depth + 1, seen)
        return out

    def resolve_at(self, cs: CallSite, callee: FuncInfo, labels: int) -> int:
        """Labels of callee-relative `labels` as seen at one call site (still relative to the caller)."""
        out = labels & CONCRETE
        for i in param_indices(labels):
            for e in self.arg_expr(cs, callee, i):
                lab = cs.caller.memo.get(id(e))
                if lab is None:
                    lab = LabelPass(self, cs.caller).label(e)
                out |= lab
        return out

    # -- events ---------------------------------------------------------------------------------------------
    def _events(self) -> None:
        for f in self.funcs:
            EventScan(self, f).run()
        self._lift()   # so that tables a helper increments for its caller count as the caller's tables
        self.incr_roots = {e.root for f in self.funcs for e in f.events + f.lifted if e.kind == "incr" and e.root}
        for f in self.funcs:
            f.lifted = []
            EventScan(self, f).reads()

    def _lift(self) -> None:
        """Copy each function's events (direct and already lifted) onto its call sites, to a fixed point."""
        kinds = ("backward", "step", "update", "accum", "incr", "read", "score", "paccum")
        direct: dict[FuncInfo, list[Event]] = {f: [e for e in f.events if e.kind in kinds] for f in self.funcs}
        summary: dict[FuncInfo, set[str]] = {f: {e.kind for e in evs} for f, evs in direct.items()}
        # a call to a function that scores is a score event at the call site
        changed = True
        rounds = 0
        while changed and rounds < 12:
            changed = False
            rounds += 1
            for f in self.funcs:
                for cs in f.calls:
                    if cs.kind == "ref" and not _ref_is_called(cs):
                        continue
                    for t in cs.targets:
                        if t is f:
                            continue
                        ks = summary.get(t, set())
                        new = set()
                        if ks & {"accum", "score"} or ("paccum" in ks and self._paccum_site(f, cs, t)):
                            new.add("score")
                        new |= ks & {"backward", "step", "update", "incr", "read"}
                        if not new <= summary[f]:
                            summary[f] |= new
                            changed = True
        self.summary = summary
        for f in self._callee_first_order():
            seen_keys = set()
            for cs in f.calls:
                if cs.kind == "ref" and not _ref_is_called(cs):
                    continue
                for t in cs.targets:
                    if t is f:
                        continue
                    ks = summary.get(t, set())
                    for k in ("backward", "step", "update", "incr", "read"):
                        if k in ks:
                            for src in self._events_reaching(t, k):
                                key = (k, id(cs), src.root)
                                if key in seen_keys:
                                    continue
                                seen_keys.add(key)
                                root = self._map_root(src.root, t, cs)
                                lab = self.resolve_at(cs, t, src.labels) if src.labels else 0
                                f.lifted.append(Event(k, cs.stmt, cs.node, lab, root, dict(src.extra), via=cs,
                                                      origin=src.origin or src))
                    if ks & {"accum", "score"} or ("paccum" in ks and self._paccum_site(f, cs, t)):
                        key = ("score", id(cs))
                        if key not in seen_keys:
                            seen_keys.add(key)
                            f.lifted.append(Event("score", cs.stmt, cs.node, 0, None, {"callee": t}, via=cs))

    def _paccum_site(self, f: FuncInfo, cs: CallSite, t: FuncInfo) -> bool:
        """A helper that adds a loss into an accumulator it is given scores when the caller passes it a loss, or
        one of the caller's reported totals."""
        if not isinstance(cs.node, ast.Call):
            return False
        for e in t.events:
            if e.kind != "paccum":
                continue
            for a in self.arg_expr(cs, t, e.extra["param"]):
                if root_name(a) in f.report_vars:
                    return True
            for i in param_indices(e.labels):
                for a in self.arg_expr(cs, t, i):
                    if f.memo.get(id(a), 0) & LOSS:
                        return True
        return False

    def _events_reaching(self, t: FuncInfo, kind: str, depth: int = 0) -> list[Event]:
        out = [e for e in t.events if e.kind == kind]
        if not out and depth < 4:
            # through callees: the lifted copies in t already carry resolved labels
            out = [e for e in t.lifted if e.kind == kind]
        return out[:8]

    def _map_root(self, root, callee: FuncInfo, cs: CallSite):
        if root and root[0] == "n" and root[1] is callee and root[2] in callee.params:
            i = callee.params.index(root[2])
            exprs = self.arg_expr(cs, callee, i)
            if exprs:
                return expr_root(cs.caller, exprs[0])
        return root


def _ref_is_called(cs: CallSite) -> bool:
    """A function passed by reference (timed_eval(name, fn, ...), torch.compile(fn)) is assumed to be called."""
    return True


def _iter_defs(body):
    """Function and class definitions in a body, including those nested in if/try/with/for blocks."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.AsyncWith, ast.For, ast.While, ast.AsyncFor)) \
                or type(node).__name__ in ("TryStar", "Match"):
            for attr in ("body", "orelse", "finalbody"):
                yield from _iter_defs(getattr(node, attr, []) or [])
            for h in getattr(node, "handlers", []) or []:
                yield from _iter_defs(h.body)
            for c in getattr(node, "cases", []) or []:
                yield from _iter_defs(c.body)


def _ends_block(s: ast.stmt) -> bool:
    return isinstance(s, (ast.Return, ast.Raise, ast.Continue, ast.Break)) or (
        isinstance(s, ast.Expr) and isinstance(s.value, ast.Call)
        and dotted(s.value.func) in ("sys.exit", "exit", "quit", "os._exit"))


def own_exprs(s: ast.AST) -> list[ast.AST]:
    """The expressions a statement evaluates itself (not those of the statements nested in it)."""
    if isinstance(s, ast.If) or isinstance(s, ast.While):
        return [s.test]
    if isinstance(s, (ast.For, ast.AsyncFor)):
        return [s.iter, s.target]
    if isinstance(s, (ast.With, ast.AsyncWith)):
        out = []
        for i in s.items:
            out.append(i.context_expr)
            if i.optional_vars is not None:
                out.append(i.optional_vars)
        return out
    if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return list(s.decorator_list) + [d for d in s.args.defaults] + [d for d in s.args.kw_defaults if d]
    if isinstance(s, ast.ClassDef):
        return list(s.bases) + list(s.decorator_list)
    if isinstance(s, ast.Try) or type(s).__name__ in ("TryStar",):
        return []
    if type(s).__name__ == "Match":
        return [s.subject]
    return [c for c in ast.iter_child_nodes(s) if isinstance(c, ast.expr)]


def _class_name_of_call(call: ast.Call, prog: Program) -> str | None:
    f = call.func
    name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
    if name and name in prog.classes:
        return name
    return None


def expr_root(f: FuncInfo, node: ast.expr, depth: int = 0):
    """Identity of the table an expression indexes: ("a", attr) for attributes, ("n", func, name) for locals
    (following simple aliases such as `counts_n = self.counts[n]`)."""
    while isinstance(node, (ast.Subscript, ast.Call)):
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute):
                node = node.func.value
            else:
                return None
        else:
            node = node.value
    if isinstance(node, ast.Attribute):
        return ("a", node.attr)
    if isinstance(node, ast.Name):
        defs = f.defs.get(node.id, [])
        if depth < 3 and len(defs) == 1:
            s = defs[0].node
            if isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name) \
                    and isinstance(s.value, (ast.Subscript, ast.Attribute)):
                r = expr_root(f, s.value, depth + 1)
                if r is not None and r[0] == "a":
                    return r
        if node.id not in f.local_names:
            mod = None
            g = f.parent
            while g is not None:
                if node.id in g.local_names:
                    return ("n", g, node.id)
                g = g.parent
            return ("g", node.id)
        return ("n", f, node.id)
    return None


# ---------------------------------------------------------------------------------------------------------------
# Label pass: flow-insensitive taint inside one function
# ---------------------------------------------------------------------------------------------------------------
_TOKENISH = re.compile(r"tok|ids|seq|stream|data|_np$|^np_|input|chunk|window|buf|text|doc|ctx|context|hist", re.I)
_XORISH = (ast.BitXor, ast.LShift, ast.RShift, ast.BitOr)
_ARITH = (ast.Add, ast.Sub, ast.Mult)
_REDUCE = (ast.BitAnd, ast.Mod)


class LabelPass:
    def __init__(self, prog: Program, f: FuncInfo):
        self.p, self.f = prog, f
        self.memo = f.memo
        self.cur: Stmt | None = None
        self.comp_scopes: list[dict] = []

    # public: labels of one expression with the current variable state
    def label(self, node: ast.AST | None) -> int:
        if node is None:
            return 0
        k = id(node)
        v = self.memo.get(k)
        if v is None:
            v = self._label(node)
            self.memo[k] = v
        return v

    def run(self) -> None:
        f = self.f
        for i, p in enumerate(f.params):
            f.labels[p] |= pbit(i) | name_seed(p)
            f.vdefs[p][-1] = [None, pbit(i) | name_seed(p)]
        for _ in range(8):
            self.memo.clear()
            before = sum(f.labels.values()) + len(f.labels)
            snapshot = dict(f.labels)
            for st in f.stmts:
                self.cur = st
                self._stmt(st)
            if dict(f.labels) == snapshot and before == sum(f.labels.values()) + len(f.labels):
                break
        self.memo.clear()
        ret = 0
        elems: list[int] | None = None
        tuple_ok = True
        for st in f.stmts:
            self.cur = st
            s = st.node
            if isinstance(s, ast.Return) and s.value is not None:
                ret |= self.label(s.value)
                if isinstance(s.value, ast.Tuple) and not any(isinstance(e, ast.Starred) for e in s.value.elts):
                    labs = [self.label(e) for e in s.value.elts]
                    if elems is None:
                        elems = labs
                    elif len(elems) == len(labs):
                        elems = [a | b for a, b in zip(elems, labs)]
                    else:
                        tuple_ok = False
                else:
                    tuple_ok = False
            for n in (0,):
                for sub in st.nodes:
                    if isinstance(sub, (ast.Yield, ast.YieldFrom)) and sub.value is not None:
                        ret |= self.label(sub.value)
        if isinstance(f.node, ast.Lambda):
            ret |= self.label(f.node.body)
        # a method's attribute writes already went to attr_labels; a constructor returns its object
        new_elems = elems if (tuple_ok and elems is not None) else None
        if ret != f.ret_labels or new_elems != f.ret_elems:
            f.ret_ver = self.p.bump()
        f.ret_labels = ret
        f.ret_elems = new_elems
        # final memo for later queries: evaluate every own expression once
        for st in f.stmts:
            self.cur = st
            for n in own_exprs(st.node):
                self.label(n)
        self.cur = None

    # -- statements -----------------------------------------------------------------------------------------
    def _stmt(self, st: Stmt) -> None:
        s = st.node
        if isinstance(s, ast.Assign):
            v = self.label(s.value)
            for t in s.targets:
                self.assign(t, v, s.value, st)
        elif isinstance(s, ast.AnnAssign) and s.value is not None:
            self.assign(s.target, self.label(s.value), s.value, st)
        elif isinstance(s, ast.AugAssign):
            a = self.label_target_load(s.target)
            b = self.label(s.value)
            v = self._combine(s.op, a, b, s.target, s.value)
            self.assign(s.target, v, s.value, st, aug=True)
        elif isinstance(s, (ast.For, ast.AsyncFor)):
            self.assign(s.target, self.label(s.iter), s.iter, st)
        elif isinstance(s, (ast.With, ast.AsyncWith)):
            for i in s.items:
                if i.optional_vars is not None:
                    self.assign(i.optional_vars, self.label(i.context_expr), i.context_expr, st)
        elif isinstance(s, ast.ClassDef):
            return
        # comprehension targets, walrus, mutating calls inside the statement's own expressions
        specials = st.__dict__.get("_specials")
        if specials is None:
            specials = [n for n in st.nodes if isinstance(n, ast.NamedExpr) or (
                isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                and (n.func.attr in MUTATORS or n.func.attr in ("at", "requires_grad_")))]
            st.__dict__["_specials"] = specials
        for n in (0,):
            for sub in specials:
                if isinstance(sub, ast.comprehension):
                    continue
                elif isinstance(sub, ast.NamedExpr):
                    self.assign(sub.target, self.label(sub.value), sub.value, st)
                elif isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute):
                    m = sub.func.attr
                    if m in MUTATORS:
                        lab = 0
                        for a in sub.args:
                            lab |= self.label(a)
                        for kw in sub.keywords:
                            lab |= self.label(kw.value)
                        if m in ("copy_", "index_copy_", "scatter_", "fill_", "masked_fill_"):
                            pass
                        keep = ~MIXT if m in ("append", "extend", "insert", "add", "update", "setdefault",
                                              "appendleft", "__setitem__") else ~(HASH | MIXT)
                        self.assign(sub.func.value, lab & keep, sub, st, mutate=True)
                    elif m == "at" and isinstance(sub.func.value, ast.Attribute) and sub.func.value.attr == "add" \
                            and len(sub.args) >= 2:
                        lab = self.label(sub.args[1]) | (self.label(sub.args[2]) if len(sub.args) > 2 else 0)
                        self.assign(sub.args[0], lab & (VAL | TRAIN), sub, st, mutate=True)
                    elif m == "requires_grad_" and isinstance(sub.func.value, ast.Name) \
                            and self._fresh_tensor(sub.func.value.id):
                        self.f.labels[sub.func.value.id] |= GRADVAR

    def _fresh_tensor(self, name: str) -> bool:
        defs = self.f.defs.get(name, [])
        for d in defs:
            s = d.node
            v = getattr(s, "value", None)
            if isinstance(v, ast.Call) and call_name(v) in CREATORS | {"clone", "detach", "zeros", "tensor"}:
                return True
        return False

    def assign(self, target: ast.AST, lab: int, value: ast.AST | None, st: Stmt, aug: bool = False,
               mutate: bool = False) -> None:
        f = self.f
        if isinstance(target, ast.Name):
            n = target.id
            if n not in f.local_names and not f.is_module:
                # writing a global / closure variable from inside a function (global x; x = ...)
                g = f.parent
                while g is not None and n not in g.local_names:
                    g = g.parent
                tgt = g if g is not None else self.p.modules.get(id(f.unit))
                if tgt is not None:
                    old = tgt.labels.get(n, 0)
                    if old | (lab & CONCRETE) != old:
                        tgt.labels[n] = old | (lab & CONCRETE)
                        self.p.glob_ver[(id(tgt), n)] = self.p.bump()
                return
            old = f.labels.get(n, 0)
            if old | lab != old:
                f.labels[n] = old | lab
                self.p.glob_ver[(id(f), n)] = self.p.bump()
            ent = f.vdefs[n].get(st.index)
            if ent is None:
                f.vdefs[n][st.index] = [st, lab]
            else:
                ent[1] |= lab
            if value is not None:
                f.deps[n] |= names_in(value)
            if st not in f.defs[n]:
                f.defs[n].append(st)
        elif isinstance(target, (ast.Tuple, ast.List)):
            elts = target.elts
            per = self._tuple_call(value, len(elts)) if isinstance(value, ast.Call) else None
            if isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(elts) \
                    and not any(isinstance(e, ast.Starred) for e in elts + value.elts):
                for t, v in zip(elts, value.elts):
                    self.assign(t, self.label(v), v, st)
            elif per is not None and not any(isinstance(e, ast.Starred) for e in elts):
                for t, lab_i in zip(elts, per):
                    self.assign(t, lab_i, value, st)
            elif isinstance(value, ast.Call) and call_name(value) == "enumerate" and len(elts) == 2 and value.args:
                self.assign(elts[0], 0, None, st)
                self.assign(elts[1], self.label(value.args[0]), value.args[0], st)
            elif isinstance(value, ast.Call) and call_name(value) == "zip" and len(elts) == len(value.args) \
                    and not any(isinstance(a, ast.Starred) for a in value.args):
                for t, a in zip(elts, value.args):
                    self.assign(t, self.label(a), a, st)
            else:
                for t in elts:
                    self.assign(t, lab, value, st)
        elif isinstance(target, ast.Starred):
            self.assign(target.value, lab, value, st)
        elif isinstance(target, ast.Subscript):
            base = target.value
            while isinstance(base, ast.Subscript):
                base = base.value
            if isinstance(base, ast.Name):
                self.assign(base, lab, value, st, aug=aug, mutate=True)
            elif isinstance(base, ast.Attribute):
                self._set_attr(base.attr, lab & CONCRETE & ~(HASH | MIXT))
        elif isinstance(target, ast.Attribute):
            self._set_attr(target.attr, (lab & CONCRETE & ~(HASH | MIXT)) | name_seed(target.attr))
            if isinstance(target.value, ast.Name) and target.value.id not in ("self", "cls") \
                    and target.value.id in f.local_names:
                f.labels[target.value.id] |= lab & ~(HASH | MIXT)
        elif isinstance(target, ast.Call) and isinstance(target.func, ast.Attribute):   # mutate x.append(...)
            pass

    def _const(self, node):
        """A literal, or a module-level name bound once to a literal (minified `_B = True`)."""
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            mod = self.p.modules.get(id(self.f.unit))
            defs = mod.defs.get(node.id, []) if mod is not None else []
            if len(defs) == 1 and isinstance(defs[0].node, ast.Assign) and isinstance(defs[0].node.value, ast.Constant):
                return defs[0].node.value.value
            if not defs and mod is not None:
                for st in mod.stmts:
                    s = st.node
                    if isinstance(s, ast.Assign) and any(isinstance(t, ast.Name) and t.id == node.id for t in s.targets) \
                            and isinstance(s.value, ast.Constant):
                        return s.value.value
        return None

    def _tuple_call(self, node: ast.Call, n: int) -> list[int] | None:
        """Per-element labels of a call to user functions that all return n-tuples."""
        targets, kind, recv = self.p.resolve_call(self.f, node.func)
        if not targets or kind == "init":
            return None
        out = [0] * n
        for t in targets:
            if t.ret_elems is None or len(t.ret_elems) != n:
                return None
            cs = CallSite(self.f, None, node, [t], (), kind, recv)
            for k, s in enumerate(t.ret_elems):
                lab = s & CONCRETE & ~SUMMARY_ONLY
                flowing = []
                for i in param_indices(s):
                    a = 0
                    for e in self.p.arg_expr(cs, t, i):
                        a |= self.label(e)
                    flowing.append(a)
                    lab |= a & ~SUMMARY_ONLY
                if s & (MIXP | MIXPS) and len(flowing) >= 2 and any(x & TGT for x in flowing) \
                        and sum(1 for x in flowing if x) >= 2:
                    lab |= HASH if s & MIXPS else MIXT
                out[k] |= lab
        return out

    def _bind(self, target, it, scope: dict) -> None:
        """Bind a comprehension target to its iterable's labels (enumerate/zip element-wise)."""
        lab = self.label(it)
        if isinstance(target, ast.Name):
            scope[target.id] = lab
            return
        if isinstance(target, (ast.Tuple, ast.List)):
            elts = target.elts
            if isinstance(it, ast.Call) and call_name(it) == "enumerate" and len(elts) == 2 and it.args:
                parts = [0, self.label(it.args[0])]
            elif isinstance(it, ast.Call) and call_name(it) == "zip" and len(elts) == len(it.args):
                parts = [self.label(a) for a in it.args]
            else:
                parts = [lab] * len(elts)
            for e, p in zip(elts, parts):
                if isinstance(e, ast.Name):
                    scope[e.id] = p
                elif isinstance(e, (ast.Tuple, ast.List, ast.Starred)):
                    for m in ast.walk(e):
                        if isinstance(m, ast.Name):
                            scope[m.id] = p

    def _set_attr(self, attr: str, lab: int) -> None:
        old = self.p.attr_labels.get(attr, 0)
        if old | lab != old:
            self.p.attr_labels[attr] = old | lab
            self.p.attr_ver[attr] = self.p.bump()

    def label_target_load(self, t: ast.AST) -> int:
        if isinstance(t, ast.Name):
            return self.name_labels(t.id)
        return self.label(t) if isinstance(t, ast.expr) else 0

    # -- expressions ----------------------------------------------------------------------------------------
    def name_labels(self, n: str) -> int:
        for scope in reversed(self.comp_scopes):
            if n in scope:
                return _seeded(scope[n], n)
        f = self.f
        if n in f.local_names:
            cur = self.cur
            defs = f.vdefs.get(n)
            if cur is None or not defs:
                return _seeded(f.labels.get(n, 0), n)
            # definitions that can reach this use: from the last one that surely ran before it (same or enclosing
            # block, not under a condition the use is not under) onwards, plus loop-carried ones
            last = None
            for idx, (dst, lab) in defs.items():
                if idx < cur.index and (dst is None or _dominates(dst, cur)):
                    if last is None or idx > last:
                        last = idx
            out = 0
            hit = False
            for idx, (dst, lab) in defs.items():
                if idx < cur.index:
                    if last is None or idx >= last:
                        out |= lab
                        hit = True
                elif dst is not None and dst.loops:
                    common = [l for l in dst.loops if any(l is m for m in cur.loops)]
                    if common:
                        inner = common[-1]
                        if last is not None and last >= 0:
                            lst = defs[last][0]
                            if lst is not None and any(l is inner for l in lst.loops):
                                continue   # redefined earlier in the same iteration
                        out |= lab
                        hit = True
            return _seeded(out if hit else f.labels.get(n, 0), n)
        g = f.parent
        while g is not None:
            if n in g.local_names:
                return _seeded(g.labels.get(n, 0) & CONCRETE, n)
            g = g.parent
        mod = self.p.modules.get(id(f.unit))
        if mod is not None and mod is not f:
            return _seeded(mod.labels.get(n, 0) & CONCRETE, n)
        return name_seed(n) & ~TGT

    def _label(self, node: ast.AST) -> int:
        t = type(node)
        if t is ast.Name:
            return self.name_labels(node.id)
        if t is ast.Constant:
            return string_labels(node.value) if isinstance(node.value, str) else 0
        if t is ast.Attribute:
            if node.attr in DROP_ATTRS:
                return 0
            return (self.label(node.value) & ~GRADVAR) | self.p.attr_labels.get(node.attr, 0) | name_seed(node.attr)
        if t is ast.Subscript:
            return self._subscript(node)
        if t is ast.BinOp:
            return self._combine(node.op, self.label(node.left), self.label(node.right), node.left, node.right)
        if t is ast.Call:
            return self._call(node)
        if t is ast.UnaryOp:
            return self.label(node.operand)
        if t in (ast.BoolOp,):
            out = 0
            for v in node.values:
                out |= self.label(v)
            return out
        if t is ast.Compare:
            out = self.label(node.left)
            for c in node.comparators:
                out |= self.label(c)
            return out & ~(HASH | MIXT)
        if t is ast.IfExp:
            return self.label(node.body) | self.label(node.orelse)
        if t in (ast.List, ast.Tuple, ast.Set):
            out = 0
            for e in node.elts:
                out |= self.label(e)
            return out
        if t is ast.Dict:
            out = 0
            for v in node.values:
                out |= self.label(v)
            return out
        if t is ast.JoinedStr:
            out = 0
            consts = []
            for v in node.values:
                if isinstance(v, ast.FormattedValue):
                    out |= self.label(v.value)
                    consts.append("{")
                elif isinstance(v, ast.Constant) and isinstance(v.value, str):
                    consts.append(v.value)
            return out | string_labels("".join(consts))
        if t in (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp):
            scope: dict = {}
            self.comp_scopes.append(scope)
            try:
                for gen in node.generators:
                    self._bind(gen.target, gen.iter, scope)
                    for cond in gen.ifs:
                        self.label(cond)
                if t is ast.DictComp:
                    return self.label(node.key) | self.label(node.value)
                return self.label(node.elt)
            finally:
                self.comp_scopes.pop()
        if t is ast.Starred or t is ast.NamedExpr or t is ast.Await:
            return self.label(node.value)
        if t is ast.Slice:
            return self.label(node.lower) | self.label(node.upper) | self.label(node.step)
        if t is ast.Lambda:
            return 0
        return 0

    @staticmethod
    def _nontrivial(node: ast.AST, lab: int) -> bool:
        if lab & (DATA | ~CONCRETE):
            return True
        if isinstance(node, (ast.Name, ast.Attribute, ast.Subscript, ast.Call, ast.BinOp)):
            return True
        return isinstance(node, ast.Constant) and isinstance(node.value, int) and abs(node.value) >= 100

    def _combine(self, op: ast.operator, a: int, b: int, left: ast.AST, right: ast.AST) -> int:
        r = a | b
        if isinstance(op, _XORISH):
            if (a & (TGT | MIXT) and self._nontrivial(right, b)) or (b & (TGT | MIXT) and self._nontrivial(left, a)):
                r |= HASH
            if (a >> PARAM_SHIFT and self._nontrivial(right, b)) or (b >> PARAM_SHIFT and self._nontrivial(left, a)):
                r |= MIXPS
        elif isinstance(op, _ARITH):
            if (a & TGT and self._nontrivial(right, b)) or (b & TGT and self._nontrivial(left, a)):
                r |= MIXT
            if (a >> PARAM_SHIFT and b >> PARAM_SHIFT) or (a >> PARAM_SHIFT and self._nontrivial(right, b)) \
                    or (b >> PARAM_SHIFT and self._nontrivial(left, a)):
                r |= MIXP
        elif isinstance(op, _REDUCE):
            if r & MIXT:
                r |= HASH
            if r & MIXP:
                r |= MIXPS
        return r

    def _subscript(self, node: ast.Subscript) -> int:
        b = self.label(node.value)
        sl = node.slice
        data_base = b & (DATA | LOADER) or (b >> PARAM_SHIFT and _TOKENISH.search(root_name(node.value) or ""))
        if isinstance(sl, ast.Tuple) and sl.elts:
            idx = 0
            for e in sl.elts:
                idx |= self.label(e)
            r = b | (idx & (VAL | TRAIN | ~CONCRETE | TGT)) & ~(HASH | MIXT)
            last = sl.elts[-1]
            if isinstance(last, ast.Slice) and data_base:
                r |= self._slice_role(last)
            if idx & TGT and b & (VAL | LOSS | CTX) and not b & TGT:
                r = (r & ~TGT) | LOSS
            return r
        if isinstance(sl, ast.Slice):
            r = b | ((self.label(sl.lower) | self.label(sl.upper)) & (VAL | TRAIN | ~CONCRETE))
            if data_base:
                r |= self._slice_role(sl)
            return r
        k = self.label(sl)
        r = b | (k & ~(HASH | MIXT | LOSS))
        if data_base and not b & LOSS:
            if isinstance(sl, ast.BinOp) and isinstance(sl.op, ast.Add) and _const_pos(sl.right):
                r |= TGT
            elif isinstance(sl, ast.BinOp) and isinstance(sl.op, ast.Sub):
                r |= CTX
            elif isinstance(sl, ast.Name) and (ast.dump(node.value), sl.id) in self.f.ctx_index:
                r |= TGT
        return r

    @staticmethod
    def _slice_role(sl: ast.Slice) -> int:
        lo, hi = sl.lower, sl.upper
        if sl.step is not None:
            return 0
        if lo is not None and (_const_pos(lo) or (isinstance(lo, ast.BinOp) and isinstance(lo.op, ast.Add)
                                                   and _const_pos(lo.right))):
            if hi is None or not (isinstance(hi, ast.UnaryOp) and isinstance(hi.op, ast.USub)):
                return TGT
        if hi is not None and isinstance(hi, ast.UnaryOp) and isinstance(hi.op, ast.USub) and lo is None:
            return CTX
        if hi is not None and isinstance(hi, ast.Constant) and isinstance(hi.value, int) and hi.value < 0:
            return CTX
        return 0

    def _call(self, node: ast.Call) -> int:
        f = node.func
        name = call_name(node)
        argl = 0
        alist = []
        for a in node.args:
            v = self.label(a)
            alist.append(v)
            argl |= v
        for kw in node.keywords:
            argl |= self.label(kw.value)
        if name in DROP_CALLS:
            if isinstance(f, ast.Attribute):
                self.label(f.value)
            return 0
        if name in CREATORS and isinstance(f, (ast.Attribute, ast.Name)):
            r = 0
            for kw in node.keywords:
                if kw.arg == "requires_grad" and self._const(kw.value) is True:
                    r |= GRADVAR
            if isinstance(f, ast.Attribute):
                self.label(f.value)
            return r
        if name == "getattr" and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) \
                and isinstance(node.args[1].value, str):
            return alist[0] | self.p.attr_labels.get(node.args[1].value, 0) | name_seed(node.args[1].value)
        if name == "Parameter" and not (self.f.name == "__init__"):
            return argl | GRADVAR
        if name == "requires_grad_" and isinstance(f, ast.Attribute):
            base = self.label(f.value)
            if isinstance(f.value, ast.Call) and call_name(f.value) in CREATORS | {"clone", "detach"}:
                return base | GRADVAR
            return base
        if name in LOSS_FUNCS:
            return ((argl | (self.label(f.value) if isinstance(f, ast.Attribute) else 0)) & ~(TGT | HASH | MIXT)) \
                | LOSS
        if name == "gather" and isinstance(f, ast.Attribute):
            base = self.label(f.value)
            if argl & TGT:
                return ((base | argl) & ~(TGT | HASH | MIXT)) | LOSS
            return base | argl
        targets, kind, recv = self.p.resolve_call(self.f, f)
        if targets:
            r = 0
            for t in targets:
                s = t.ret_labels
                r |= s & CONCRETE & ~SUMMARY_ONLY
                flowing = []
                for i in param_indices(s):
                    lab = 0
                    cs = CallSite(self.f, None, node, [t], (), kind, recv)
                    for e in self.p.arg_expr(cs, t, i):
                        lab |= self.label(e)
                    flowing.append(lab)
                    r |= lab & ~SUMMARY_ONLY
                if s & (MIXP | MIXPS) and len(flowing) >= 2 and any(x & TGT for x in flowing) \
                        and sum(1 for x in flowing if x) >= 2:
                    r |= HASH if s & MIXPS else MIXT
                if kind == "init":
                    r |= argl & (DATA | ~CONCRETE)
                    if argl & (VAL | TRAIN):
                        r |= LOADER
            if isinstance(f, ast.Attribute) and kind != "init":
                self.label(f.value)
            return r & ~GRADVAR if not (argl & GRADVAR) else r
        if isinstance(f, ast.Attribute):
            base = self.label(f.value)
            if name in MUTATORS:
                return base
            r = base | argl
        else:
            r = argl
            if isinstance(f, ast.Name) and f.id in self.p.classes:
                r |= LOADER if argl & (VAL | TRAIN) else 0
            elif isinstance(f, ast.Name) and re.search(r"(Loader|Stream|Dataset)$", f.id) and argl & (VAL | TRAIN):
                r |= LOADER
        if isinstance(f, ast.Attribute) and re.search(r"(Loader|Stream|Dataset)$", name) and argl & (VAL | TRAIN):
            r |= LOADER
        # an unknown callable fed both data and targets (a model called as model(x, y)) returns a loss
        if name not in DATA_OPS and len(alist) >= 2 and any(a & TGT for a in alist) \
                and any(a & (VAL | CTX | TRAIN) and not a & TGT for a in alist):
            r = (r & ~(TGT | HASH | MIXT)) | LOSS
        if name in ("log", "log2", "log1p") and r & (TGT | LOSS):
            r |= LOSS
        if name in ("log_softmax", "log_probs", "logsumexp"):
            r = (r & ~TGT) | LOSS
        return r & ~(HASH | MIXT) if name in ("sum", "mean", "item", "float", "double") and not (r & HASH) else r


def _accumulates(name: str, value: ast.AST) -> bool:
    """`x = x + v`, `x = torch.cat([x, v])`, `x = x + [v]`: the new value extends the old one."""
    if isinstance(value, ast.BinOp) and isinstance(value.op, ast.Add):
        return name in names_in(value.left) or name in names_in(value.right)
    if isinstance(value, ast.Call) and call_name(value) in ("cat", "concatenate", "stack", "hstack", "vstack",
                                                            "append"):
        return any(name in names_in(a) for a in value.args)
    return False


def _seeded(lab: int, name: str) -> int:
    """Name seeds; the target seed (y, targets, tgt ...) only for names that hold data."""
    seed = name_seed(name)
    if seed & TGT and not lab & (DATA | LOADER | LOSS | ~CONCRETE):
        seed &= ~TGT
    return lab | seed


def _dominates(d: Stmt, u: Stmt) -> bool:
    if len(d.guards) > len(u.guards) or len(d.loops) > len(u.loops):
        return False
    if any(a is not b for a, b in zip(d.guards, u.guards)):
        return False
    return all(a is b for a, b in zip(d.loops, u.loops))


def _const_pos(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool) \
        and node.value > 0


# ---------------------------------------------------------------------------------------------------------------
# Event scan
# ---------------------------------------------------------------------------------------------------------------
_REPORT_STR = re.compile(r"val_loss|val_bpb|bpb|val_nll", re.I)
_REPORT_TARGET = re.compile(r"val_loss|val_bpb|bpb|val_nll", re.I)


class EventScan:
    def __init__(self, prog: Program, f: FuncInfo):
        self.p, self.f = prog, f
        self.lp = LabelPass(prog, f)

    def L(self, node) -> int:
        return self.lp.label(node)

    def add(self, kind, st, node, labels=0, root=None, **extra):
        self.f.events.append(Event(kind, st, node, labels, root, extra))

    def run(self) -> None:
        f = self.f
        opt_vars: dict[str, int] = {}
        for st in f.stmts:
            s = st.node
            if isinstance(s, ast.Assign) and isinstance(s.value, ast.Call) and self._is_optimizer_ctor(s.value):
                params = s.value.args[0] if s.value.args else next(
                    (k.value for k in s.value.keywords if k.arg in ("params", "param_groups")), None)
                plab = self.L(params) if params is not None else 0
                for t in s.targets:
                    for n in ast.walk(t):
                        if isinstance(n, (ast.Name, ast.Attribute)):
                            key = n.id if isinstance(n, ast.Name) else n.attr
                            opt_vars[key] = plab
                            self.add("optdef", st, s.value, plab, None, var=key,
                                     gradvar=bool(plab & GRADVAR), params=params)
        self.f.opt_vars = opt_vars
        for st in f.stmts:
            s = st.node
            for expr in (0,):
                for node in st.nodes:
                    if isinstance(node, ast.Call):
                        self._call_event(st, node, opt_vars)
            if isinstance(s, ast.AugAssign):
                if has_grad_attr(s.value) and not isinstance(s.target, ast.Name) or (
                        isinstance(s.target, ast.Name) and has_grad_attr(s.value)):
                    self.add("update", st, s, self.L(s.target) | self.L(s.value), None,
                             gradvar=bool(self.L(s.target) & GRADVAR))
                if isinstance(s.target, ast.Subscript):
                    self.add("incr", st, s, self.L(s.target.slice) | self.L(s.value), expr_root(f, s.target),
                             key=s.target.slice)
                elif isinstance(s.target, ast.Name) and isinstance(s.value, ast.Call) \
                        and call_name(s.value) in ("bincount",):
                    self.add("incr", st, s, self.L(s.value), expr_root(f, s.target), bulk=True)
            elif isinstance(s, ast.Assign):
                v = s.value
                for t in s.targets:
                    if isinstance(t, ast.Attribute) and t.attr == "data" and has_grad_attr(v):
                        self.add("update", st, s, self.L(v), None, gradvar=bool(self.L(t.value) & GRADVAR))
                    if isinstance(t, ast.Subscript) and self._is_increment(t, v):
                        self.add("incr", st, s, self.L(t.slice), expr_root(f, t), key=t.slice)
                if isinstance(v, ast.Call) and call_name(v) in ("bincount", "Counter", "unique") \
                        and self.L(v) & VAL:
                    for t in s.targets:
                        if isinstance(t, (ast.Name, ast.Attribute)):
                            self.add("incr", st, s, self.L(v), expr_root(f, t), bulk=True)
        self._accumulations()

    def _is_optimizer_ctor(self, call: ast.Call) -> bool:
        name = call_name(call)
        return name in self.p.optimizer_classes

    @staticmethod
    def _is_increment(t: ast.Subscript, v: ast.AST) -> bool:
        """`T[k] = T.get(k, 0) + 1` or `T[k] = T[k] + c`."""
        if not isinstance(v, ast.BinOp) or not isinstance(v.op, ast.Add):
            return False
        key = ast.dump(t)
        for side in (v.left, v.right):
            if ast.dump(side) == key.replace("ctx=Store()", "ctx=Load()"):
                return True
            if isinstance(side, ast.Call) and call_name(side) == "get" and isinstance(side.func, ast.Attribute) \
                    and ast.dump(side.func.value) == ast.dump(t.value) and side.args \
                    and ast.dump(side.args[0]) == ast.dump(t.slice):
                return True
        return False

    def _call_event(self, st: Stmt, node: ast.Call, opt_vars: dict) -> None:
        f = node.func
        name = call_name(node)
        if name == "backward":
            if isinstance(f, ast.Attribute) and not (isinstance(f.value, ast.Name) and f.value.id in ("torch",)):
                loss = f.value
                if isinstance(loss, ast.Attribute) and loss.attr == "autograd" and node.args:
                    loss = node.args[0]
                self.add("backward", st, node, self.L(loss), None, loss=loss)
            elif node.args:
                self.add("backward", st, node, self.L(node.args[0]), None, loss=node.args[0])
        elif name == "grad" and dotted(f).endswith("autograd.grad") and node.args:
            self.add("backward", st, node, self.L(node.args[0]), None, loss=node.args[0])
        elif name == "step" and isinstance(f, ast.Attribute):
            recv = f.value
            rname = dotted(recv)
            key = recv.id if isinstance(recv, ast.Name) else recv.attr if isinstance(recv, ast.Attribute) else ""
            if SCHEDULER_HINT.search(rname):
                return
            if key in opt_vars or OPT_HINT.search(rname):
                self.add("step", st, node, 0, None, opt=key, gradvar=bool(opt_vars.get(key, 0) & GRADVAR))
        elif name in ("add_", "sub_", "copy_", "addcdiv_", "addcmul_", "lerp_", "mul_") and isinstance(f, ast.Attribute):
            if any(has_grad_attr(a) for a in node.args) or any(has_grad_attr(k.value) for k in node.keywords):
                self.add("update", st, node, 0, None, gradvar=bool(self.L(f.value) & GRADVAR))
        elif name == "at" and isinstance(f, ast.Attribute) and isinstance(f.value, ast.Attribute) \
                and f.value.attr == "add" and len(node.args) >= 2:
            self.add("incr", st, node, self.L(node.args[1]) | (self.L(node.args[2]) if len(node.args) > 2 else 0),
                     expr_root(self.f, node.args[0]), key=node.args[1])
        elif name in ("index_add_", "scatter_add_", "index_put_", "put_", "scatter_add") and isinstance(f, ast.Attribute):
            acc = name in ("index_add_", "scatter_add_", "scatter_add") or any(
                k.arg == "accumulate" and isinstance(k.value, ast.Constant) and k.value.value for k in node.keywords)
            if acc:
                lab = 0
                for a in node.args:
                    lab |= self.L(a)
                self.add("incr", st, node, lab, expr_root(self.f, f.value), key=node.args[1] if len(node.args) > 1
                         else None)
        elif name == "update" and isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) \
                and self._is_counter(f.value.id) and node.args:
            self.add("incr", st, node, self.L(node.args[0]), expr_root(self.f, f.value), bulk=True)

    def _is_counter(self, name: str) -> bool:
        for d in self.f.defs.get(name, []):
            v = getattr(d.node, "value", None)
            if isinstance(v, ast.Call) and call_name(v) in ("Counter", "defaultdict"):
                return True
        return False

    # -- reads of count tables and target-hashed keys (needs program-wide increment roots) --------------------
    def reads(self) -> None:
        f = self.f
        roots = self.p.incr_roots
        update_lines = {id(e.stmt) for e in f.events if e.kind == "incr"}
        for st in f.stmts:
            s = st.node
            skip_nodes: set[int] = set()
            if isinstance(s, ast.Assign) and any(isinstance(t, ast.Subscript) for t in s.targets):
                # read-modify-write of the same table is an update, not a read
                for t in s.targets:
                    if isinstance(t, ast.Subscript) and EventScan._is_increment(t, s.value):
                        for n in ast.walk(s.value):
                            skip_nodes.add(id(n))
            for expr in (0,):
                for node in st.nodes:
                    if id(node) in skip_nodes:
                        continue
                    key = None
                    base = None
                    if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
                        key, base = node.slice, node.value
                    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                            and node.func.attr in ("get", "take", "index_select") and node.args:
                        key, base = node.args[0] if node.func.attr != "index_select" else node.args[-1], node.func.value
                    elif isinstance(node, ast.Call) and call_name(node) == "take" and len(node.args) >= 2:
                        key, base = node.args[1], node.args[0]
                    if key is None:
                        continue
                    klab = self.L(key)
                    root = expr_root(f, base)
                    if klab & HASH or (klab >> PARAM_SHIFT and root is not None and root[0] == "a"
                                       and root in roots):
                        self.add("hashread", st, node, klab, root, key=key)
                    if root is not None and root in roots and id(st) not in update_lines:
                        self.add("read", st, node, klab, root, key=key)

    # -- score accumulations ----------------------------------------------------------------------------------
    def _accumulations(self) -> None:
        f = self.f
        roots: set[str] = set()
        for st in f.stmts:
            s = st.node
            if isinstance(s, ast.Return) and s.value is not None:
                roots |= names_in(s.value)
            if isinstance(s, (ast.Assign, ast.AnnAssign)):
                tgts = s.targets if isinstance(s, ast.Assign) else [s.target]
                for t in tgts:
                    for n in ast.walk(t):
                        if isinstance(n, ast.Name) and _REPORT_TARGET.search(n.id):
                            roots |= names_in(s.value)
                        if isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant) \
                                and isinstance(n.slice.value, str) and _REPORT_TARGET.search(n.slice.value):
                            roots |= names_in(s.value)
            for expr in (0,):
                for node in st.nodes:
                    if isinstance(node, ast.JoinedStr):
                        text = "".join(v.value for v in node.values if isinstance(v, ast.Constant)
                                       and isinstance(v.value, str))
                        if _REPORT_STR.search(text):
                            for v in node.values:
                                if isinstance(v, ast.FormattedValue):
                                    roots |= names_in(v.value)
                    elif isinstance(node, ast.Dict):
                        for k, v in zip(node.keys, node.values):
                            if isinstance(k, ast.Constant) and isinstance(k.value, str) and \
                                    _REPORT_TARGET.search(k.value):
                                roots |= names_in(v)
        slice_vars = set()
        stack = list(roots)
        while stack:
            n = stack.pop()
            if n in slice_vars:
                continue
            slice_vars.add(n)
            stack.extend(f.deps.get(n, ()))
        f.report_vars = slice_vars
        params = set(f.params[1:] if f.is_method else f.params)
        for st in f.stmts:
            s = st.node
            pv = None
            if isinstance(s, ast.AugAssign) and root_name(s.target) in params:
                pv, val = root_name(s.target), s.value
            elif isinstance(s, ast.Expr) and isinstance(s.value, ast.Call) and isinstance(s.value.func, ast.Attribute) \
                    and s.value.func.attr in ("add_", "index_add_", "scatter_add_") \
                    and root_name(s.value.func.value) in params and s.value.args:
                pv, val = root_name(s.value.func.value), s.value.args[-1]
            if pv is not None:
                vl = self.L(val)
                if vl & LOSS or (vl >> PARAM_SHIFT):
                    self.add("paccum", st, s, vl, None, var=pv, param=f.params.index(pv), value=val)
        for st in f.stmts:
            s = st.node
            if isinstance(s, ast.AugAssign):
                var = root_name(s.target)
                if var in slice_vars and self.L(s.value) & LOSS:
                    self.add("accum", st, s, self.L(s.value), None, var=var, value=s.value)
            elif isinstance(s, ast.Assign):
                for t in s.targets:
                    var = root_name(t)
                    if var not in slice_vars:
                        continue
                    vl = self.L(s.value)
                    if not vl & LOSS:
                        continue
                    if isinstance(t, ast.Subscript) or (isinstance(t, ast.Name) and _accumulates(t.id, s.value)):
                        self.add("accum", st, s, vl, None, var=var, value=s.value)
            for expr in (0,):
                for node in st.nodes:
                    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                            and node.func.attr in ("append", "extend", "add_", "index_add_", "scatter_add_",
                                                   "index_copy_", "copy_") \
                            and root_name(node.func.value) in slice_vars:
                        lab = 0
                        for a in node.args:
                            lab |= self.L(a)
                        if lab & LOSS:
                            self.add("accum", st, node, lab, None, var=root_name(node.func.value),
                                     value=node.args[-1] if node.args else None)


# ---------------------------------------------------------------------------------------------------------------
# Helpers for rules
# ---------------------------------------------------------------------------------------------------------------
def common_loops(a: Stmt, b: Stmt) -> tuple:
    out = []
    for x, y in zip(a.loops, b.loops):
        if x is y:
            out.append(x)
        else:
            break
    return tuple(out)


def contains(outer: Stmt, inner: Stmt) -> bool:
    return outer in inner.loops or any(l is outer for l in inner.loops)


def loop_var_is_epoch(loop: Stmt) -> bool:
    """A `for` loop whose variable does not pick the data: `for epoch in range(E)` (used at most in logs or an
    LR schedule), as opposed to `for ci in range(num_chunks)` whose variable indexes the chunk."""
    node = loop.node
    if not isinstance(node, (ast.For, ast.AsyncFor)):
        return False
    names = names_in(node.target)
    if not names:
        return True
    it = node.iter
    if not (isinstance(it, ast.Call) and call_name(it) == "range"):
        return False
    for sub in ast.walk(ast.Module(body=node.body, type_ignores=[])):
        if isinstance(sub, ast.Subscript):
            if names & names_in(sub.slice):
                return False
        elif isinstance(sub, ast.Call) and call_name(sub) in ("range", "slice", "narrow", "min", "max"):
            if names & set().union(*(names_in(a) for a in sub.args)) if sub.args else set():
                return False
        elif isinstance(sub, (ast.Assign, ast.AugAssign)):
            val = sub.value
            targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
            tnames = set().union(*(names_in(t) for t in targets))
            if names & names_in(val) and any(re.search(r"start|end|pos|offset|idx|begin|ws|lo|hi|off", t)
                                             for t in tnames):
                return False
    return True


def stmt_source(unit: SourceUnit, line: int, count: int = 1) -> str:
    return "\n".join(unit.line(i).rstrip() for i in range(line, line + count))
