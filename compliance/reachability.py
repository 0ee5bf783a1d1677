"""Reachability: which code runs with the default configuration, and which only behind a flag.

Flags are found wherever entries define them: ``os.environ.get(NAME, default)`` (and ``os.getenv``,
``environ[...]``, ``env.get`` in a ``from_env(env)``, small helper functions around them) wrapped in
``int``/``float``/``bool``/``str``; class attributes (``Hyperparameters.x``), ``self.x`` and module constants that
carry them; tables of ``(NAME, type, default, ...)`` tuples; dataclass-style fields; argparse options.
Guards (``if args.flag:``, early ``return``s, ``x if flag else y``, ``flag and f()``) are evaluated under a
configuration (defaults, a logged run's settings, or ``--set``); a function is active when some call path
from the entry point passes only guards that are not false, dormant when every path crosses a false guard.
"""

from __future__ import annotations

import ast
import heapq
import itertools
import os
import re
from dataclasses import dataclass

from .astutil import call_name, dotted, walk

from .index import FuncInfo, Guard, Stmt

from .program import Program

UNKNOWN = object()
_ENV_FUNCS = {"os.environ.get", "environ.get", "os.getenv", "getenv", "os.environ.setdefault"}
_ENV_RECEIVERS = {"env", "environ", "_env", "ENV", "e", "environment", "os_env", "cfg_env"}
_TRUTHY = {"1", "true", "yes", "on", "y", "t"}


@dataclass
class FlagDef:
    attr: str
    env: str | None
    kind: str                       # expr | table | field | argparse | const
    expr: ast.expr | None = None
    typ: str | None = None
    default: object = None
    scope: FuncInfo | None = None   # where `expr` is evaluated (module pseudo-function)
    cls: str | None = None
    option: str | None = None       # argparse option string


@dataclass
class Status:
    level: int                       # 0 active, 1 dormant (behind false guards), 2 never called
    blockers: tuple = ()             # Guards that are false on the best path

    @property
    def active(self) -> bool:
        return self.level == 0


def env_read(node: ast.AST, helpers: set[str]) -> tuple[str, ast.expr | None] | None:
    """(NAME, default expression) when node reads one environment variable."""
    if isinstance(node, ast.Call):
        d = dotted(node.func)
        f = node.func
        is_env = d in _ENV_FUNCS or (isinstance(f, ast.Attribute) and f.attr in ("get", "setdefault") and
                                    isinstance(f.value, ast.Name) and f.value.id in _ENV_RECEIVERS) or \
            (isinstance(f, ast.Name) and f.id in helpers) or \
            (isinstance(f, ast.Attribute) and f.attr in helpers)
        if is_env and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            default = node.args[1] if len(node.args) > 1 else next(
                (k.value for k in node.keywords if k.arg in ("default", "d")), None)
            return node.args[0].value, default
    if isinstance(node, ast.Subscript) and dotted(node.value) in ("os.environ", "environ", "env") \
            and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
        return node.slice.value, None
    return None


def first_env_read(expr: ast.AST, helpers: set[str]) -> tuple[str, ast.expr | None] | None:
    for n in walk(expr):
        r = env_read(n, helpers)
        if r:
            return r
    return None


def _literal(node: ast.AST | None):
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except Exception:  # noqa: BLE001
        return UNKNOWN


class FlagTable:
    def __init__(self, prog: Program):
        self.prog = prog
        self.by_attr: dict[str, list[FlagDef]] = {}
        self.by_env: dict[str, list[FlagDef]] = {}
        self.module_consts: dict[tuple[str, str], FlagDef] = {}
        self.helpers = self._env_helpers()
        self.env_writes: list[tuple] = []      # (key expr, value expr, loop dict expr | None, kind, func, stmt)
        for unit in prog.units:
            self._scan_unit(unit)
        self._scan_env_writes()
        self._scan_config_ctors()

    def _scan_env_writes(self) -> None:
        """Writes to os.environ that set the defaults later reads see: `os.environ.setdefault(K, V)`,
        `os.environ[K] = V`, `os.environ.update({...})`, also in a loop over a preset's items."""
        for f in self.prog.funcs:
            if "environ" not in f.unit.text:
                continue
            for st in f.stmts:
                s = st.node
                loop_dict = None
                if st.loops and isinstance(st.loops[-1].node, ast.For):
                    it = st.loops[-1].node.iter
                    if isinstance(it, ast.Call) and isinstance(it.func, ast.Attribute) and it.func.attr == "items":
                        loop_dict = (it.func.value, st.loops[-1].node.target)
                if isinstance(s, ast.Expr) and isinstance(s.value, ast.Call) and \
                        dotted(s.value.func) in ("os.environ.setdefault", "environ.setdefault") and len(s.value.args) >= 2:
                    self.env_writes.append((s.value.args[0], s.value.args[1], loop_dict, "setdefault", f, st))
                elif isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Subscript) \
                        and dotted(s.targets[0].value) in ("os.environ", "environ"):
                    self.env_writes.append((s.targets[0].slice, s.value, loop_dict, "set", f, st))
                elif isinstance(s, ast.Expr) and isinstance(s.value, ast.Call) and \
                        dotted(s.value.func) in ("os.environ.update", "environ.update") and s.value.args:
                    self.env_writes.append((None, s.value.args[0], None, "update", f, st))

    def _scan_config_ctors(self) -> None:
        """`Cfg(flag=True)` for a config class with a field `flag`: that instance's value is the argument."""
        fields = {}
        for fds in self.by_attr.values():
            for fd in fds:
                if fd.kind == "field" and fd.cls:
                    fields.setdefault(fd.cls, set()).add(fd.attr)
        if not fields:
            return
        for f in self.prog.funcs:
            for st in f.stmts:
                for n in st.nodes:
                    if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in fields:
                        for k in n.keywords:
                            if k.arg in fields[n.func.id]:
                                self.add(FlagDef(k.arg, None, "ctor", k.value, scope=f, cls=n.func.id))

    def _env_helpers(self) -> set[str]:
        out = set()
        for f in self.prog.funcs:
            if f.is_module or not f.params or ("environ" not in f.unit.text and "getenv" not in f.unit.text):
                continue
            for n in walk(f.node):
                r = env_read(n, set())
                if r is None and isinstance(n, ast.Call) and dotted(n.func) in _ENV_FUNCS and n.args \
                        and isinstance(n.args[0], ast.Name) and n.args[0].id in f.params:
                    out.add(f.name)
                    break
        return out

    def add(self, fd: FlagDef) -> None:
        self.by_attr.setdefault(fd.attr, []).append(fd)
        if fd.env:
            self.by_env.setdefault(fd.env, []).append(fd)

    def _scan_unit(self, unit) -> None:
        mod = self.prog.modules[id(unit)]
        for node in unit.tree.body:
            self._scan_assign(node, mod, None, module=unit.module)
        for node in unit.nodes:
            if isinstance(node, ast.ClassDef):
                is_cfg = bool(re.search(r"hyper|config|args|settings|params|options|hparams|cfg", node.name, re.I)) \
                    or any("dataclass" in dotted(d) for d in node.decorator_list)
                for s in node.body:
                    self._scan_assign(s, mod, node.name, field_like=is_cfg)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                tgts = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in tgts:
                    if isinstance(t, ast.Attribute) and node.value is not None:
                        r = first_env_read(node.value, self.helpers)
                        if r:
                            self.add(FlagDef(t.attr, r[0], "expr", node.value, scope=mod))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "add_argument" and node.args \
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                self._argparse(node, mod)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr",) \
                    and len(node.args) == 3:
                pass

    def _scan_assign(self, node, mod: FuncInfo, cls: str | None, module: str | None = None,
                     field_like: bool = False, guarded: frozenset | None = None) -> None:
        """Settings defined by an assignment. Under an `if` (guarded: the names its test reads) a definition does
        not replace an unconditional one, and one assigned inside its own guard (`if X: X = True`) is not a
        definition at all: it does not switch the setting on."""
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign):
            targets, value = [node.target], node.value
        else:
            if isinstance(node, (ast.If, ast.Try)):
                names = frozenset(n.id for n in walk(node.test) if isinstance(n, ast.Name)) \
                    if isinstance(node, ast.If) else frozenset()
                inner = (guarded or frozenset()) | names
                for s in getattr(node, "body", []) + getattr(node, "orelse", []):
                    self._scan_assign(s, mod, cls, module, field_like, inner)
            return
        if value is None:
            return
        self._scan_table(value, mod)
        for t in targets:
            if not isinstance(t, ast.Name):
                if isinstance(t, ast.Tuple) and isinstance(value, ast.Tuple) and len(t.elts) == len(value.elts):
                    for te, ve in zip(t.elts, value.elts):
                        if isinstance(te, ast.Name):
                            self._one(te.id, ve, mod, cls, module, field_like, guarded)
                continue
            self._one(t.id, value, mod, cls, module, field_like, guarded)

    def _one(self, name: str, value: ast.expr, mod: FuncInfo, cls: str | None, module: str | None,
             field_like: bool, guarded: frozenset | None = None) -> None:
        if guarded is not None:
            if name in guarded:
                return                   # `if X: X = True` does not make X true
            if cls is None and module is not None and (module, name) in self.module_consts:
                return                   # a conditional definition does not replace the unconditional one
        r = first_env_read(value, self.helpers)
        if r:
            fd = FlagDef(name, r[0], "expr", value, scope=mod, cls=cls)
        else:
            lit = _literal(value)
            if lit is UNKNOWN or isinstance(lit, (list, dict, tuple, set)) and len(str(lit)) > 20000:
                if not isinstance(value, ast.Call):
                    return
                if dotted(value.func) in ("field", "dataclasses.field"):
                    dflt = next((k.value for k in value.keywords if k.arg == "default"), None)
                elif cls and field_like and value.args:
                    dflt = value.args[0]   # a declaration helper in a config class: `x: float = S(600.0, "doc")`
                else:
                    return
                lit = _literal(dflt)
                if lit is UNKNOWN or isinstance(lit, (list, dict, tuple, set)):
                    return
            if cls and field_like:
                typ = type(lit).__name__ if lit is not None else None
                fd = FlagDef(name, name.upper(), "field", value, typ=typ, default=lit, scope=mod, cls=cls)
            else:
                fd = FlagDef(name, None, "const", value, default=lit, scope=mod, cls=cls)
        if cls is None and module is not None:
            self.module_consts[(module, name)] = fd
            if fd.kind == "expr":
                self.add(fd)
        else:
            self.add(fd)

    def _scan_table(self, value: ast.expr, mod: FuncInfo) -> None:
        if isinstance(value, (ast.List, ast.Tuple)) and value.elts and all(
                isinstance(e, (ast.Tuple, ast.List)) for e in value.elts):
            for e in value.elts:
                el = e.elts
                if len(el) >= 3 and isinstance(el[0], ast.Constant) and isinstance(el[0].value, str) \
                        and re.fullmatch(r"[A-Z][A-Z0-9_]*", el[0].value) and isinstance(el[1], ast.Name):
                    lit = _literal(el[2])
                    if lit is UNKNOWN:
                        continue
                    name = el[0].value
                    self.add(FlagDef(name.lower(), name, "table", el[2], typ=el[1].id, default=lit, scope=mod))
        elif isinstance(value, ast.Dict) and value.keys and all(
                isinstance(k, ast.Constant) and isinstance(k.value, str) and re.fullmatch(r"[A-Z][A-Z0-9_]*", k.value)
                for k in value.keys):
            for k, v in zip(value.keys, value.values):
                lit = _literal(v)
                if lit is UNKNOWN:
                    continue
                self.add(FlagDef(k.value.lower(), k.value, "table", v, typ=type(lit).__name__, default=lit,
                                 scope=mod))

    def _argparse(self, node: ast.Call, mod: FuncInfo) -> None:
        opts = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        longs = [o for o in opts if o.startswith("--")] or opts
        if not longs:
            return
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        dest = _literal(kw["dest"]) if "dest" in kw else longs[0].lstrip("-").replace("-", "_")
        if not isinstance(dest, str):
            return
        action = _literal(kw.get("action")) if "action" in kw else None
        default = _literal(kw.get("default")) if "default" in kw else (
            False if action == "store_true" else True if action == "store_false" else None)
        typ = dotted(kw["type"]) if "type" in kw else ("bool" if action in ("store_true", "store_false") else "str")
        self.add(FlagDef(dest, None, "argparse", None, typ=typ, default=default, scope=mod, option=longs[0]))


def convert(raw: str, typ: str | None, default):
    try:
        if typ in ("int",):
            return int(float(raw))
        if typ == "float":
            return float(raw)
        if typ == "bool" or isinstance(default, bool):
            return raw.strip().lower() in _TRUTHY
        if typ == "str":
            return raw
        if isinstance(default, int):
            return int(float(raw))
        if isinstance(default, float):
            return float(raw)
        return raw
    except (ValueError, TypeError):
        return UNKNOWN


class Evaluator:
    """Evaluates guard expressions under a configuration; UNKNOWN where it cannot tell."""

    def __init__(self, table: FlagTable, env: dict[str, str] | None = None, attrs: dict[str, object] | None = None):
        self.t = table
        self.prog = table.prog
        self.env = dict(env or {})
        self.attrs = dict(attrs or {})
        self.cache: dict[tuple, object] = {}
        self._flag_cache: dict[int, object] = {}

    # -- flags ---------------------------------------------------------------------------------------------
    def flag_value(self, fd: FlagDef, depth: int = 0):
        k = id(fd)
        if k in self._flag_cache:
            return self._flag_cache[k]
        self._flag_cache[k] = UNKNOWN          # cycle guard
        v = self._flag_value(fd, depth)
        self._flag_cache[k] = v
        return v

    def _flag_value(self, fd: FlagDef, depth: int):
        if fd.attr in self.attrs:
            return self.attrs[fd.attr]
        if fd.kind in ("table", "field"):
            if fd.env and fd.env in self.env:
                return convert(self.env[fd.env], fd.typ, fd.default)
            return fd.default
        if fd.kind == "argparse":
            return fd.default
        if fd.kind == "const":
            return fd.default
        if fd.kind == "ctor":
            return self.ev(fd.expr, fd.scope, depth + 1)
        return self.ev(fd.expr, fd.scope, depth + 1, cls=fd.cls)

    def _written_env(self, name: str, depth: int):
        """The value the script itself writes into os.environ[name] (a preset's default), or UNKNOWN."""
        if not self.t.env_writes or depth > 8 or getattr(self, "_in_writes", False):
            return UNKNOWN
        self._in_writes = True
        try:
            for key, value, loop, kind, func, st in self.t.env_writes:
                if any(self.truth(g) is False for g in st.guards):
                    continue
                if kind == "update":
                    d = self.ev(value, func, depth + 1)
                    if isinstance(d, dict) and name in d:
                        return d[name]
                    continue
                if loop is not None:
                    d = self.ev(loop[0], func, depth + 1)
                    tgt = loop[1]
                    if isinstance(d, dict) and name in d and isinstance(tgt, ast.Tuple) and len(tgt.elts) == 2 \
                            and isinstance(key, ast.Name) and isinstance(tgt.elts[0], ast.Name) \
                            and key.id == tgt.elts[0].id:
                        v = d[name]
                        if isinstance(value, ast.Name) and isinstance(tgt.elts[1], ast.Name) \
                                and value.id == tgt.elts[1].id:
                            return v
                        if isinstance(value, ast.Call) and call_name(value) == "str" and value.args \
                                and isinstance(value.args[0], ast.Name) and value.args[0].id == tgt.elts[1].id:
                            return str(v)
                    continue
                k = self.ev(key, func, depth + 1)
                if k == name:
                    return self.ev(value, func, depth + 1)
            return UNKNOWN
        finally:
            self._in_writes = False

    def attr_value(self, attr: str, depth: int = 0):
        if attr in self.attrs:
            return self.attrs[attr]
        fds = self.t.by_attr.get(attr)
        if not fds:
            return UNKNOWN
        ctors = [fd for fd in fds if fd.kind == "ctor"]
        if ctors:
            fds = ctors        # the instances the program builds say what the value is, not the field default
        vals = [self.flag_value(fd, depth) for fd in fds]
        known = [v for v in vals if v is not UNKNOWN]
        if not known:
            return UNKNOWN
        if all(_same(known[0], v) for v in known):
            return known[0]
        return UNKNOWN

    # -- expressions ---------------------------------------------------------------------------------------
    def truth(self, g: Guard):
        key = (id(g.test), g.func.qualname if g.func else "")
        v = self.cache.get(key)
        if v is None:
            v = self.ev(g.test, g.func, 0)
            self.cache[key] = v
        if v is UNKNOWN:
            return None
        try:
            return bool(v) == g.polarity
        except Exception:  # noqa: BLE001
            return None

    def ev(self, node: ast.AST | None, func: FuncInfo | None, depth: int = 0, cls: str | None = None):
        if node is None or depth > 12:
            return UNKNOWN
        try:
            return self._ev(node, func, depth, cls)
        except (RecursionError, MemoryError):
            return UNKNOWN
        except Exception:  # noqa: BLE001 - evaluation of untrusted expressions: anything odd is unknown
            return UNKNOWN

    def _ev(self, node, func, depth, cls):
        ev = lambda n: self.ev(n, func, depth + 1, cls)  # noqa: E731
        if isinstance(node, ast.Constant):
            return node.value
        r = env_read(node, self.t.helpers)
        if r is not None:
            name, dflt = r
            if name in self.env:
                return self.env[name]
            written = self._written_env(name, depth)
            if written is not UNKNOWN:
                return written
            if name in ("RANK", "LOCAL_RANK"):
                return "0"
            if name == "WORLD_SIZE":
                return "1"
            if dflt is None:
                return None if isinstance(node, ast.Call) else UNKNOWN
            return ev(dflt)
        if isinstance(node, ast.Name):
            return self.name_value(node.id, func, depth, cls)
        if isinstance(node, ast.Attribute):
            if dotted(node) in ("os.environ",):
                return UNKNOWN
            v = self.attr_value(node.attr, depth + 1)
            return v
        if isinstance(node, ast.BoolOp):
            if isinstance(node.op, ast.And):
                res = True
                for v in node.values:
                    x = ev(v)
                    if x is UNKNOWN:
                        res = UNKNOWN
                    elif not x:
                        return x
                    elif res is not UNKNOWN:
                        res = x
                return res
            res = False
            for v in node.values:
                x = ev(v)
                if x is UNKNOWN:
                    res = UNKNOWN
                elif x:
                    return x
                elif res is not UNKNOWN:
                    res = x
            return res
        if isinstance(node, ast.UnaryOp):
            x = ev(node.operand)
            if x is UNKNOWN:
                return UNKNOWN
            if isinstance(node.op, ast.Not):
                return not x
            if isinstance(node.op, ast.USub):
                return -x
            if isinstance(node.op, ast.UAdd):
                return +x
            return UNKNOWN
        if isinstance(node, ast.Compare):
            left = ev(node.left)
            if left is UNKNOWN:
                return UNKNOWN
            for op, c in zip(node.ops, node.comparators):
                right = ev(c)
                if right is UNKNOWN:
                    return UNKNOWN
                if not _cmp(op, left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.BinOp):
            a, b = ev(node.left), ev(node.right)
            if a is UNKNOWN or b is UNKNOWN:
                return UNKNOWN
            return _binop(node.op, a, b)
        if isinstance(node, ast.IfExp):
            c = ev(node.test)
            if c is UNKNOWN:
                a, b = ev(node.body), ev(node.orelse)
                return a if a is not UNKNOWN and _same(a, b) else UNKNOWN
            return ev(node.body) if c else ev(node.orelse)
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            vals = [ev(e) for e in node.elts]
            if any(v is UNKNOWN for v in vals):
                return UNKNOWN
            return tuple(vals) if isinstance(node, ast.Tuple) else (set(vals) if isinstance(node, ast.Set) else vals)
        if isinstance(node, ast.Call):
            return self._call(node, func, depth, cls)
        if isinstance(node, ast.Dict):
            keys = [ev(k) if k is not None else UNKNOWN for k in node.keys]
            vals = [ev(v) for v in node.values]
            if any(k is UNKNOWN for k in keys):
                return UNKNOWN
            try:
                return dict(zip(keys, vals))
            except TypeError:
                return UNKNOWN
        if isinstance(node, ast.Subscript):
            base = ev(node.value)
            key = ev(node.slice)
            if base is UNKNOWN or key is UNKNOWN:
                return UNKNOWN
            try:
                return base[key]
            except (KeyError, IndexError, TypeError):
                return UNKNOWN
        if isinstance(node, ast.JoinedStr):
            return UNKNOWN
        return UNKNOWN

    def _call(self, node: ast.Call, func, depth, cls):
        ev = lambda n: self.ev(n, func, depth + 1, cls)  # noqa: E731
        f = node.func
        name = call_name(node)
        args = [ev(a) for a in node.args]
        if isinstance(f, ast.Name) and name in ("int", "float", "bool", "str", "abs", "len", "max", "min", "round"):
            if any(a is UNKNOWN for a in args):
                return UNKNOWN
            if name == "int":
                return int(float(args[0])) if isinstance(args[0], str) and args[0].strip() and \
                    not args[0].strip().lstrip("-").isdigit() else int(args[0]) if args else 0
            if name == "float":
                return float(args[0]) if args else 0.0
            if name == "bool":
                return bool(args[0]) if args else False
            if name == "str":
                return str(args[0]) if args else ""
            if name == "abs":
                return abs(args[0])
            if name == "len":
                return len(args[0])
            if name == "round":
                return round(*args)
            return max(*args) if name == "max" else min(*args)
        if isinstance(f, ast.Attribute) and name in ("lower", "upper", "strip", "lstrip", "rstrip", "startswith",
                                                     "endswith", "split"):
            obj = ev(f.value)
            if obj is UNKNOWN or not isinstance(obj, str) or any(a is UNKNOWN for a in args):
                return UNKNOWN
            return getattr(obj, name)(*args)
        if dotted(f) in ("os.path.join",):
            if any(a is UNKNOWN or not isinstance(a, str) for a in args):
                return UNKNOWN
            return os.path.join(*args)
        if name == "getattr" and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
            v = self.attr_value(str(node.args[1].value), depth + 1)
            if v is UNKNOWN and len(node.args) > 2:
                return UNKNOWN
            return v
        return UNKNOWN

    def name_value(self, name: str, func: FuncInfo | None, depth: int, cls: str | None):
        if name in ("True", "False", "None"):
            return {"True": True, "False": False, "None": None}[name]
        if name == "__name__":
            if func is None:
                return UNKNOWN
            return "__main__" if func.unit.is_entry else func.unit.module
        if cls is not None:
            for fd in self.t.by_attr.get(name, []):
                if fd.cls == cls:
                    return self.flag_value(fd, depth + 1)
        if func is not None and not func.is_module and name in func.local_names:
            if name in func.params:
                return self.param_value(func, name, depth)
            defs = func.defs.get(name, [])
            if len(defs) == 1:
                s = defs[0].node
                if isinstance(s, (ast.Assign, ast.AnnAssign)) and s.value is not None:
                    tg = s.targets if isinstance(s, ast.Assign) else [s.target]
                    if len(tg) == 1 and isinstance(tg[0], ast.Name):
                        return self.ev(s.value, func, depth + 1)
                    if len(tg) == 1 and isinstance(tg[0], ast.Tuple) and isinstance(s.value, ast.Tuple) \
                            and len(tg[0].elts) == len(s.value.elts):
                        for te, ve in zip(tg[0].elts, s.value.elts):
                            if isinstance(te, ast.Name) and te.id == name:
                                return self.ev(ve, func, depth + 1)
            return UNKNOWN
        if func is not None and func.parent is not None and name not in func.local_names:
            return self.name_value(name, func.parent, depth + 1, None)
        module = func.unit.module if func is not None else None
        fd = self.t.module_consts.get((module, name)) if module else None
        if fd is None:
            cands = [v for (m, n), v in self.t.module_consts.items() if n == name]
            fd = cands[0] if len(cands) == 1 else None
        if fd is not None:
            return self.flag_value(fd, depth + 1)
        return UNKNOWN

    def param_value(self, func: FuncInfo, name: str, depth: int):
        i = func.params.index(name)
        sites = [cs for cs in self.prog.callers.get(func, []) if cs.kind != "ref"]
        vals = []
        for cs in sites[:12]:
            exprs = self.prog.arg_expr(cs, func, i)
            if exprs:
                vals.append(self.ev(exprs[0], cs.caller, depth + 2) if depth < 6 else UNKNOWN)
            elif name in func.defaults:
                vals.append(self.ev(func.defaults[name], func.parent or self.prog.modules.get(id(func.unit)),
                                    depth + 1))
            else:
                vals.append(UNKNOWN)
        if not sites:
            if name in func.defaults:
                return self.ev(func.defaults[name], func.parent or self.prog.modules.get(id(func.unit)), depth + 1)
            return UNKNOWN
        if any(v is UNKNOWN for v in vals):
            return UNKNOWN
        if any(bool(v) for v in vals):
            return next(v for v in vals if bool(v))
        return vals[0]

    # -- which settings a guard reads ------------------------------------------------------------------------
    def guard_flags(self, node: ast.AST, func: FuncInfo | None, depth: int = 0) -> list[tuple[str, object]]:
        """[(label, FlagDef | ('param', func, name))] of the settings an expression depends on."""
        out = []
        if depth > 6 or node is None:
            return out
        for n in walk(node):
            r = env_read(n, self.t.helpers)
            if r is not None:
                fds = self.t.by_env.get(r[0]) or [FlagDef(r[0].lower(), r[0], "expr", n, scope=None)]
                out.append((r[0], fds[0]))
            elif isinstance(n, ast.Attribute) and n.attr in self.t.by_attr:
                fd = self.t.by_attr[n.attr][0]
                out.append((fd.env or fd.option or n.attr, fd))
            elif isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "getattr" \
                    and len(n.args) >= 2 and isinstance(n.args[1], ast.Constant) and n.args[1].value in self.t.by_attr:
                fd = self.t.by_attr[n.args[1].value][0]
                out.append((fd.env or fd.option or fd.attr, fd))
            elif isinstance(n, ast.Name) and func is not None:
                if n.id in func.params and not func.is_module:
                    out.append((n.id, ("param", func, n.id)))
                elif n.id in func.local_names and not func.is_module:
                    defs = func.defs.get(n.id, [])
                    if len(defs) == 1 and isinstance(defs[0].node, (ast.Assign, ast.AnnAssign)):
                        out.extend(self.guard_flags(defs[0].node.value, func, depth + 1))
                else:
                    fd = self.t.module_consts.get((func.unit.module, n.id))
                    if fd is not None:
                        out.append((fd.env or n.id, fd))
        out.sort(key=lambda x: isinstance(x[1], tuple))
        seen = set()
        uniq = []
        for label, fd in out:
            if label not in seen:
                seen.add(label)
                uniq.append((label, fd))
        return uniq

    def activation(self, g: Guard) -> str:
        """A setting that makes guard g pass, as 'NAME=value' (or a description when none is found)."""
        deps = self.guard_flags(g.test, g.func)
        if not deps:
            return f"condition `{_short(g.test)}` {'true' if g.polarity else 'false'}"
        env_deps = [(lab, fd) for lab, fd in deps if isinstance(fd, FlagDef) and fd.env]
        attr_deps = [(lab, fd) for lab, fd in deps if isinstance(fd, FlagDef) and not fd.env]
        cands = {lab: _candidates(fd, g.test) for lab, fd in env_deps}
        for lab, fd in env_deps:
            for c in cands[lab]:
                if self._with_env({fd.env: c}).truth(g):
                    return f"{fd.env}={c}"
        for (l1, f1), (l2, f2) in itertools.combinations(env_deps, 2):
            for c1 in cands[l1][:4]:
                for c2 in cands[l2][:4]:
                    if self._with_env({f1.env: c1, f2.env: c2}).truth(g):
                        return f"{f1.env}={c1} {f2.env}={c2}"
        for lab, fd in attr_deps:
            for c in _value_candidates(fd.default, g.test):
                e = Evaluator(self.t, self.env, {**self.attrs, fd.attr: c})
                if e.truth(g):
                    where = f"option {fd.option}" if fd.option else f"{fd.attr}"
                    return f"{where}={c}"
        params = [fd for lab, fd in deps if isinstance(fd, tuple)]
        if params:
            _, func, name = params[0]
            return f"parameter {name} of {func.name}() set so that `{_short(g.test)}` is {'true' if g.polarity else 'false'}"
        return f"condition `{_short(g.test)}` {'true' if g.polarity else 'false'}"

    def _with_env(self, extra: dict[str, str]) -> "Evaluator":
        return Evaluator(self.t, {**self.env, **extra}, self.attrs)


def _candidates(fd: FlagDef, test: ast.AST) -> list[str]:
    out = ["1", "0", "true", "2", "3", "8", "64"]
    for n in walk(test):
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float, str)) and not isinstance(n.value, bool):
            v = n.value
            out.insert(0, str(v))
            if isinstance(v, (int, float)):
                out.insert(1, str(v + 1))
    if fd.default is not None and isinstance(fd.default, (int, float)) and not isinstance(fd.default, bool):
        out.append(str(fd.default + 1))
    seen, uniq = set(), []
    for c in out:
        if c not in seen:
            seen.add(c)
            uniq.append(c)
    return uniq[:14]


def _value_candidates(default, test) -> list:
    out = [True, False, 1, 0, 2]
    for n in walk(test):
        if isinstance(n, ast.Constant) and not isinstance(n.value, bool) and n.value is not None:
            out.insert(0, n.value)
    return out


def _short(node: ast.AST) -> str:
    try:
        s = ast.unparse(node)
    except Exception:  # noqa: BLE001
        s = "?"
    return s if len(s) <= 80 else s[:77] + "..."


def _same(a, b) -> bool:
    try:
        return a == b and type(a) is type(b) or (a == b and isinstance(a, (int, float)) and isinstance(b, (int, float)))
    except Exception:  # noqa: BLE001
        return False


def _cmp(op, a, b) -> bool:
    if isinstance(op, ast.Eq):
        return a == b
    if isinstance(op, ast.NotEq):
        return a != b
    if isinstance(op, ast.Lt):
        return a < b
    if isinstance(op, ast.LtE):
        return a <= b
    if isinstance(op, ast.Gt):
        return a > b
    if isinstance(op, ast.GtE):
        return a >= b
    if isinstance(op, ast.In):
        return a in b
    if isinstance(op, ast.NotIn):
        return a not in b
    if isinstance(op, ast.Is):
        return a is b
    if isinstance(op, ast.IsNot):
        return a is not b
    raise TypeError


def _binop(op, a, b):
    ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b, ast.Div: lambda: a / b,
           ast.FloorDiv: lambda: a // b, ast.Mod: lambda: a % b, ast.Pow: lambda: a ** b if abs(b) < 64 else UNKNOWN,
           ast.BitAnd: lambda: a & b, ast.BitOr: lambda: a | b, ast.BitXor: lambda: a ^ b}
    fn = ops.get(type(op))
    if fn is None:
        return UNKNOWN
    if isinstance(a, str) and isinstance(b, int) or isinstance(b, str) and isinstance(a, int):
        if isinstance(op, ast.Mult):
            return UNKNOWN
    return fn()


# ---------------------------------------------------------------------------------------------------------------
# Reachability over the call graph
# ---------------------------------------------------------------------------------------------------------------
class Reachability:
    def __init__(self, prog: Program, ev: Evaluator):
        self.prog, self.ev = prog, ev
        self.status: dict[FuncInfo, Status] = {}
        self._def_guards = self._definition_guards()
        self._compute()

    def _definition_guards(self) -> dict[FuncInfo, tuple]:
        out: dict[FuncInfo, tuple] = {}
        by_node = {id(f.node): f for f in self.prog.funcs}
        for f in self.prog.funcs:
            for st in f.stmts:
                if isinstance(st.node, (ast.FunctionDef, ast.AsyncFunctionDef)) and id(st.node) in by_node:
                    out[by_node[id(st.node)]] = st.guards
        return out

    def false_guards(self, guards) -> list[Guard]:
        return [g for g in guards if self.ev.truth(g) is False]

    def _compute(self) -> None:
        counter = itertools.count()
        heap = []
        for f in self.prog.funcs:
            if f.is_module:
                heapq.heappush(heap, (0, next(counter), f, ()))
        best: dict[FuncInfo, tuple] = {}
        while heap:
            cost, _, f, blockers = heapq.heappop(heap)
            if f in best:
                continue
            best[f] = (cost, blockers)
            for cs in f.calls:
                fg = self.false_guards(tuple(cs.stmt.guards) + tuple(cs.guards))
                for t in cs.targets:
                    if t in best:
                        continue
                    tg = fg + self.false_guards(self._def_guards.get(t, ()))
                    nb = blockers + tuple(tg)
                    heapq.heappush(heap, (cost + len(tg), next(counter), t, nb))
                    if cs.kind == "init" and t.cls:
                        for ci in self.prog.class_chain(t.cls):
                            for m in ci.methods.values():
                                if m not in best:
                                    heapq.heappush(heap, (cost + len(tg), next(counter), m, nb))
            if f.is_module:
                # classes defined at module level: their methods may be called by frameworks (forward, hooks)
                pass
        for f in self.prog.funcs:
            if f in best:
                cost, blockers = best[f]
                self.status[f] = Status(0 if cost == 0 else 1, blockers)
            else:
                self.status[f] = Status(2, ())

    def stmt_status(self, st: Stmt, extra_guards: tuple = ()) -> Status:
        fs = self.status.get(st.func, Status(2))
        local = self.false_guards(tuple(st.guards) + tuple(extra_guards))
        if fs.level == 2:
            return fs
        if fs.level == 0 and not local:
            return Status(0)
        return Status(1, tuple(fs.blockers) + tuple(local))
