"""The time cap a training loop stops at, read from the code's own time arithmetic under a configuration.

The loop's stop test compares a clock-derived value (elapsed time: `time.perf_counter() - t0`, an accumulated
`training_time_ms`, `time.monotonic()` against a deadline) with a budget (`max_wallclock_ms`, after
`max_wallclock_ms -= reserve * 1e3`; `start + cap - calib_seconds`). The budget is evaluated like a small program:
settings through the configuration (defaults, --set, a logged run), local variables by replaying their
assignments before the loop in order (an `if` whose test is false under the configuration does not apply), an
attribute `self.x` by the one assignment of it in the class's `__init__`, a call of a small helper (assignments,
`if ...: return`, `return`) by evaluating its body, clocks read as 0. A budget above 6,000 is taken as milliseconds. What is compared with the challenge's 600 s is
the number, not any name: `max_memory_reserved` or a variable called `reserve` prove nothing either way.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass

from .astutil import call_name, names_in
from .index import FuncInfo, Stmt
from .labels import TIME
from .reachability import UNKNOWN, Evaluator
from .vocab import CLOCKS

MS_THRESHOLD = 6000.0     # a budget above this is in milliseconds


@dataclass
class Cap:
    seconds: float | None     # the cap in seconds (None: the test disables it under this configuration)
    stmt: Stmt                # where the comparison is
    text: str                 # the budget expression


class _Arith:
    """The configuration's evaluator, with the program: helpers and `self` attributes are followed through it."""

    def __init__(self, ev: Evaluator, prog):
        self.evaluator, self.prog = ev, prog

    def ev(self, node, f):
        return self.evaluator.ev(node, f)


def loop_caps(f: FuncInfo, loop: Stmt, ev: Evaluator, prog=None) -> list[Cap]:
    """Time caps of one loop: every comparison of a clock-derived value with a budget in its test or body."""
    ev = _Arith(ev, prog)
    out = []
    stmts = [loop] + [st for st in f.stmts if loop in st.loops]
    for st in stmts:
        exprs = [st.node.test] if st is loop and isinstance(st.node, ast.While) else \
            ([] if st is loop else st.nodes)
        for n in _compares(exprs):
            sides = [n.left] + list(n.comparators)
            timed = [bool(f.memo.get(id(x), 0) & TIME) or _clocked(x) for x in sides]
            if not any(timed):
                continue
            vals = [_value(x, f, loop.index, ev, 0) for x in sides]
            budget = None
            for x, v in zip(sides, vals):
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
                    if budget is None or v > budget[1]:
                        budget = (x, v)
            if budget is None:
                if any(v is None for v in vals):
                    out.append(Cap(None, st, _src(sides[-1])))
                continue
            v = float(budget[1])
            out.append(Cap(v / 1000.0 if v > MS_THRESHOLD else v, st, _src(budget[0])))
    return out


def _compares(exprs) -> list:
    out = []
    for e in exprs:
        if isinstance(e, ast.Compare):
            out.append(e)
        elif isinstance(e, ast.AST):
            out.extend(n for n in ast.walk(e) if isinstance(n, ast.Compare) and n is not e)
    seen, uniq = set(), []
    for c in out:
        if id(c) not in seen:
            seen.add(id(c))
            uniq.append(c)
    return uniq


def _clocked(x) -> bool:
    return any(isinstance(n, ast.Call) and call_name(n) in CLOCKS for n in ast.walk(x))


def _src(node) -> str:
    try:
        s = ast.unparse(node)
    except Exception:  # noqa: BLE001
        return "?"
    return s if len(s) < 80 else s[:77] + "..."


def _value(node, f: FuncInfo, before: int, ev: Evaluator, depth: int):
    """The value of `node` in f just before statement `before` under the evaluator's configuration (UNKNOWN when
    it cannot tell; clocks read 0)."""
    if node is None or depth > 12:
        return UNKNOWN
    t = type(node)
    if t is ast.Constant:
        return node.value
    if t is ast.Name:
        if node.id in f.local_names and node.id not in f.params and not f.is_module:
            return _replay(node.id, f, before, ev, depth + 1)
        return ev.ev(node, f)
    if t is ast.Call:
        name = call_name(node)
        if name in CLOCKS:
            return 0.0
        if name in ("float", "int", "abs", "max", "min", "round") and isinstance(node.func, ast.Name):
            args = [_value(a, f, before, ev, depth + 1) for a in node.args]
            if any(a is UNKNOWN or a is None for a in args) or not args:
                return UNKNOWN
            try:
                return {"float": float, "int": int, "abs": abs, "max": max, "min": min, "round": round}[name](*args)
            except (TypeError, ValueError):
                return UNKNOWN
        helper = _helper_value(node, f, ev, depth)
        return helper if helper is not UNKNOWN else ev.ev(node, f)
    if t is ast.Attribute and isinstance(node.value, ast.Name) and node.value.id == "self" and f.cls:
        v = _self_attr(node.attr, f, ev, depth)
        if v is not UNKNOWN:
            return v
    if t is ast.BinOp:
        a, b = _value(node.left, f, before, ev, depth + 1), _value(node.right, f, before, ev, depth + 1)
        if not _num(a) or not _num(b):
            return UNKNOWN
        try:
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a - b
            if isinstance(node.op, ast.Mult):
                return a * b
            if isinstance(node.op, ast.Div):
                return a / b
            if isinstance(node.op, ast.FloorDiv):
                return a // b
        except ZeroDivisionError:
            return UNKNOWN
        return UNKNOWN
    if t is ast.UnaryOp and isinstance(node.op, ast.USub):
        v = _value(node.operand, f, before, ev, depth + 1)
        return -v if _num(v) else UNKNOWN
    if t is ast.IfExp:
        c = _truth(node.test, f, before, ev, depth + 1)
        if c is None:
            return UNKNOWN
        return _value(node.body if c else node.orelse, f, before, ev, depth + 1)
    if t in (ast.Compare, ast.BoolOp, ast.Attribute, ast.Subscript):
        if t is ast.Compare:
            left = _value(node.left, f, before, ev, depth + 1)
            right = _value(node.comparators[0], f, before, ev, depth + 1) if node.comparators else UNKNOWN
            if len(node.ops) == 1 and left is not UNKNOWN and right is not UNKNOWN:
                op = node.ops[0]
                try:
                    if isinstance(op, ast.Gt):
                        return left > right
                    if isinstance(op, ast.GtE):
                        return left >= right
                    if isinstance(op, ast.Lt):
                        return left < right
                    if isinstance(op, ast.LtE):
                        return left <= right
                    if isinstance(op, ast.Is):
                        return left is right
                    if isinstance(op, ast.IsNot):
                        return left is not right
                    if isinstance(op, ast.Eq):
                        return left == right
                    if isinstance(op, ast.NotEq):
                        return left != right
                except TypeError:
                    return UNKNOWN
        return ev.ev(node, f)
    return UNKNOWN


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v))


def _truth(node, f, before, ev, depth):
    v = _value(node, f, before, ev, depth)
    if v is UNKNOWN:
        return None
    try:
        return bool(v)
    except Exception:  # noqa: BLE001
        return None


def _replay(name: str, f: FuncInfo, before: int, ev: Evaluator, depth: int):
    """A local's value before statement `before`: its assignments in order, each under its `if`-guards."""
    val = UNKNOWN
    for st in f.stmts:
        if st.index >= before:
            break
        s = st.node
        if isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name) \
                and s.targets[0].id == name:
            kind = "set"
        elif isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name) and s.target.id == name \
                and s.value is not None:
            kind = "set"
        elif isinstance(s, ast.AugAssign) and isinstance(s.target, ast.Name) and s.target.id == name:
            kind = "aug"
        elif name in _assigned(s):
            return UNKNOWN           # unpacked, a loop variable, a with-target: not a plain value
        else:
            continue
        if st.loops:
            return UNKNOWN           # changed inside a loop: not a fixed budget
        applies = True
        for g in st.guards:
            c = _truth(g.test, f, st.index, ev, depth + 1)
            if c is None:
                return UNKNOWN
            if c != g.polarity:
                applies = False
                break
        if not applies:
            continue
        v = _value(s.value, f, st.index, ev, depth + 1)
        if kind == "set":
            val = v
        else:
            if not _num(val) or not _num(v):
                return UNKNOWN
            op = s.op
            val = val + v if isinstance(op, ast.Add) else val - v if isinstance(op, ast.Sub) else \
                val * v if isinstance(op, ast.Mult) else val / v if isinstance(op, ast.Div) and v else UNKNOWN
    return val


def _helper_value(node: ast.Call, f: FuncInfo, ev, depth: int):
    """The value a call of one user function returns, when its body is assignments, `if test: return x` and a
    final `return` (the test of each `if` known under the configuration); else UNKNOWN."""
    targets = [t for cs in f.calls if cs.node is node for t in cs.targets]
    if len(targets) != 1 or targets[0] is f or not isinstance(targets[0].node, ast.FunctionDef):
        return UNKNOWN
    t = targets[0]
    for s in t.node.body:
        st = t.stmt_of.get(id(s))
        if st is None:
            return UNKNOWN
        if isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant):
            continue
        if isinstance(s, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            continue                       # read back by _replay when a name is used
        if isinstance(s, ast.Return):
            return _value(s.value, t, st.index, ev, depth + 1)
        if isinstance(s, ast.If) and not s.orelse and len(s.body) == 1 and isinstance(s.body[0], ast.Return):
            c = _truth(s.test, t, st.index, ev, depth + 1)
            if c is None:
                return UNKNOWN
            if c:
                return _value(s.body[0].value, t, st.index, ev, depth + 1)
            continue
        return UNKNOWN
    return UNKNOWN


def _self_attr(attr: str, f: FuncInfo, ev, depth: int):
    """`self.attr` read in a method: the value of its one assignment, made in the class's `__init__` outside
    loops and `if`s; else UNKNOWN."""
    prog = getattr(ev, "prog", None)
    if prog is None:
        return UNKNOWN
    found = []
    for g in prog.funcs:
        if g.cls != f.cls or g.unit is not f.unit or g.is_module:
            continue
        for st in g.stmts:
            s = st.node
            if isinstance(s, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                tgts = s.targets if isinstance(s, ast.Assign) else [s.target]
                if any(isinstance(x, ast.Attribute) and x.attr == attr and isinstance(x.value, ast.Name)
                       and x.value.id == "self" for x in tgts):
                    found.append((g, st))
    if len(found) != 1:
        return UNKNOWN
    g, st = found[0]
    if g.name != "__init__" or st.loops or st.guards or not isinstance(st.node, ast.Assign):
        return UNKNOWN
    return _value(st.node.value, g, st.index, ev, depth + 1)


def _assigned(s) -> set:
    if isinstance(s, ast.Assign):
        out = set()
        for t in s.targets:
            if not isinstance(t, ast.Name):
                out |= names_in(t)
        return out
    if isinstance(s, (ast.For, ast.AsyncFor)):
        return names_in(s.target)
    if isinstance(s, (ast.With, ast.AsyncWith)):
        out = set()
        for i in s.items:
            if i.optional_vars is not None:
                out |= names_in(i.optional_vars)
        return out
    return set()
