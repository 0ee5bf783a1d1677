"""Events: backward passes, optimiser steps and in-place parameter updates, score accumulations, count-table
increments and reads, optimiser constructions; and their lifting to call sites, so a rule can reason at the level
where the score loop and the training step meet."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from . import budget
from .astutil import call_name, dotted, grad_attr_subtrees, has_grad_attr, names_in, node_key, root_name, walk
from .index import CallSite, FuncInfo, Stmt
from .labels import CONCRETE, GRAD, GRADFN, GRADVAR, HASH, LOSS, OPTIM, PARAM_SHIFT, VAL, WEIGHT, param_indices
from .taint import LabelPass, _accumulates
from .calls import callees
from .vocab import INPLACE_UPDATES, OPT_HINT, SCHEDULER_HINT

if TYPE_CHECKING:
    from .program import Program



class EventKind(str, Enum):
    """What happened at a statement (a function's own events, or lifted from a call)."""
    BACKWARD = "backward"      # loss.backward(), autograd.grad(...)
    STEP = "step"              # optimiser.step()
    UPDATE = "update"          # an in-place parameter update from a gradient
    ACCUM = "accum"            # a per-token loss added to the totals a function returns or logs
    PACCUM = "paccum"          # a loss added into an accumulator the function was given
    SCORE = "score"            # a call of a function that accumulates scores (lifted)
    INCR = "incr"              # a count table incremented
    READ = "read"              # a count table read
    HASHREAD = "hashread"      # a table read with a key that hashes the target
    OPTDEF = "optdef"          # an optimiser constructed


EK = EventKind


@dataclass(eq=False)
class Event:
    kind: EventKind
    stmt: Stmt
    node: ast.AST
    labels: int = 0             # data labels of the event (loss, key, value ...)
    root: tuple | None = None   # for incr/read: table root
    extra: dict = field(default_factory=dict)
    via: CallSite | None = None  # set on lifted events: the call site in this function
    origin: "Event | None" = None



class EventLifter:
    # -- events ---------------------------------------------------------------------------------------------
    def _events(self) -> None:
        for f in self.funcs:
            budget.check()
            EventScan(self, f).run()
        self._lift()   # so that tables a helper increments for its caller count as the caller's tables
        self.incr_roots = {e.root for f in self.funcs for e in f.events + f.lifted if e.kind == EK.INCR and e.root}
        for f in self.funcs:
            f.lifted = []
            EventScan(self, f).reads()

    def _lift(self) -> None:
        """Copy each function's events (direct and already lifted) onto its call sites, to a fixed point."""
        kinds = (EK.BACKWARD, EK.STEP, EK.UPDATE, EK.ACCUM, EK.INCR, EK.READ, EK.SCORE, EK.PACCUM)
        direct: dict[FuncInfo, list[Event]] = {f: [e for e in f.events if e.kind in kinds] for f in self.funcs}
        summary: dict[FuncInfo, set[EventKind]] = {f: {e.kind for e in evs} for f, evs in direct.items()}
        # a call to a function that scores is a score event at the call site
        changed = True
        rounds = 0
        while changed and rounds < 12:
            changed = False
            rounds += 1
            for f in self.funcs:
                for cs, t in callees(f):
                    ks = summary.get(t, set())
                    new = set()
                    if ks & {EK.ACCUM, EK.SCORE} or (EK.PACCUM in ks and self._paccum_site(f, cs, t)):
                        new.add(EK.SCORE)
                    new |= ks & {EK.BACKWARD, EK.STEP, EK.UPDATE, EK.INCR, EK.READ}
                    if not new <= summary[f]:
                        summary[f] |= new
                        changed = True
        self.summary = summary
        for f in self._callee_first_order():
            seen_keys = set()
            for cs, t in callees(f):
                ks = summary.get(t, set())
                for k in (EK.BACKWARD, EK.STEP, EK.UPDATE, EK.INCR, EK.READ):
                    if k in ks:
                        for src in self._events_reaching(t, k):
                            key = (k, id(cs), src.root)
                            if key in seen_keys:
                                continue
                            seen_keys.add(key)
                            root = self._map_root(src.root, t, cs)
                            lab = self.resolve_at(cs, t, src.labels) if src.labels else 0
                            extra = dict(src.extra)
                            if k == EK.INCR:
                                extra["holder"] = self._holder(src, t, cs, root)
                            f.lifted.append(Event(k, cs.stmt, cs.node, lab, root, extra, via=cs,
                                                  origin=src.origin or src))
                if ks & {EK.ACCUM, EK.SCORE} or (EK.PACCUM in ks and self._paccum_site(f, cs, t)):
                    key = (EK.SCORE, id(cs))
                    if key not in seen_keys:
                        seen_keys.add(key)
                        f.lifted.append(Event(EK.SCORE, cs.stmt, cs.node, 0, None, {"callee": t}, via=cs))

    def _paccum_site(self, f: FuncInfo, cs: CallSite, t: FuncInfo) -> bool:
        """A helper that adds a loss into an accumulator it is given scores when the caller passes it a loss, or
        one of the caller's reported totals."""
        if not isinstance(cs.node, ast.Call):
            return False
        for e in t.events:
            if e.kind != EK.PACCUM:
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

    def _holder(self, src: Event, callee: FuncInfo, cs: CallSite, mapped):
        """The caller's variable that holds the state a callee's increment changed: the table itself (a parameter
        or a returned table, mapped), or the object whose method incremented its attribute (`cache.add(...)` with
        `cache` a parameter). None when it is not a variable of the caller (a fresh object, an attribute)."""
        if mapped and mapped[0] == "n" and mapped[1] is cs.caller:
            return mapped[2]
        name = src.extra.get("holder")
        if name is None and src.via is not None and src.via.receiver is not None:
            name = root_name(src.via.receiver)
        if name and name in callee.params:
            exprs = self.arg_expr(cs, callee, callee.params.index(name))
            if exprs and isinstance(exprs[0], ast.Name):
                return exprs[0].id
        return None

    def _map_root(self, root, callee: FuncInfo, cs: CallSite):
        """The table `root` of the callee as the caller sees it: a parameter is what the call passes; a local
        table the callee returns (`return counts`, `return (h + 1) / h.sum()`) is what the call's result is
        assigned to."""
        if root and root[0] == "n" and root[1] is callee and root[2] not in callee.params \
                and root[2] in _returned_names(callee):
            s = cs.stmt.node
            if isinstance(s, (ast.Assign, ast.AnnAssign)) and s.value is not None and _contains(s.value, cs.node):
                tgts = s.targets if isinstance(s, ast.Assign) else [s.target]
                if len(tgts) == 1 and isinstance(tgts[0], (ast.Name, ast.Attribute)):
                    return expr_root(cs.caller, tgts[0])
        return self._map_param_root(root, callee, cs)

    def _map_param_root(self, root, callee: FuncInfo, cs: CallSite):
        if root and root[0] == "n" and root[1] is callee and root[2] in callee.params:
            i = callee.params.index(root[2])
            exprs = self.arg_expr(cs, callee, i)
            if exprs:
                return expr_root(cs.caller, exprs[0])
        return root


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
            g = f.parent
            while g is not None:
                if node.id in g.local_names:
                    return ("n", g, node.id)
                g = g.parent
            return ("g", node.id)
        return ("n", f, node.id)
    return None



# ---------------------------------------------------------------------------------------------------------------
# Event scan
# ---------------------------------------------------------------------------------------------------------------
_REPORT_STR = re.compile(r"val_loss|val_bpb|bpb|val_nll", re.I)
_REPORT_TARGET = re.compile(r"val_loss|val_bpb|bpb|val_nll", re.I)


_COUNTERS = {"bincount", "histc", "histogram", "histogramdd", "histogram2d", "unique", "Counter", "value_counts",
             "unique_consecutive"}


def _counting(v) -> bool:
    """The value is (built from) a count over data: bincount, histc, histogram, unique(return_counts), Counter."""
    return v is not None and any(isinstance(n, ast.Call) and call_name(n) in _COUNTERS for n in walk(v))


def _returned_names(f: FuncInfo) -> set:
    out = set()
    for st in f.stmts:
        if isinstance(st.node, ast.Return) and st.node.value is not None:
            out |= names_in(st.node.value)
    return out


def _contains(tree, node) -> bool:
    return any(n is node for n in walk(tree))


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
                    for n in walk(t):
                        if isinstance(n, (ast.Name, ast.Attribute)):
                            key = n.id if isinstance(n, ast.Name) else n.attr
                            opt_vars[key] = plab
                            self.add(EK.OPTDEF, st, s.value, plab, None, var=key,
                                     gradvar=bool(plab & GRADVAR), params=params)
        self.f.opt_vars = opt_vars
        for st in f.stmts:
            s = st.node
            for expr in (0,):
                for node in st.nodes:
                    if isinstance(node, ast.Call):
                        self._call_event(st, node, opt_vars)
            if isinstance(s, ast.AugAssign):
                if self._updates(s.target, s.value, inplace=True):
                    self.add(EK.UPDATE, st, s, self.L(s.target) | self.L(s.value), None,
                             gradvar=bool(self.L(s.target) & GRADVAR))
                if isinstance(s.target, ast.Subscript):
                    self.add(EK.INCR, st, s, self.L(s.target.slice) | self.L(s.value), expr_root(f, s.target),
                             key=s.target.slice)
                elif isinstance(s.target, (ast.Name, ast.Attribute)) and _counting(s.value):
                    self.add(EK.INCR, st, s, self.L(s.value), expr_root(f, s.target), bulk=True)
            elif isinstance(s, ast.Assign):
                v = s.value
                for t in s.targets:
                    if self._updates(t, v, inplace=False):
                        self.add(EK.UPDATE, st, s, self.L(v), None,
                                 gradvar=bool((self.L(t.value) if isinstance(t, ast.Attribute) else self.L(v))
                                              & GRADVAR))
                    if isinstance(t, ast.Subscript) and self._is_increment(t, v):
                        self.add(EK.INCR, st, s, self.L(t.slice), expr_root(f, t), key=t.slice)
                if _counting(v) and self.L(v) & (VAL | ~CONCRETE):
                    for t in s.targets:
                        if isinstance(t, (ast.Name, ast.Attribute)):
                            self.add(EK.INCR, st, s, self.L(v), expr_root(f, t), bulk=True)
        self._accumulations()

    def _is_optimizer_ctor(self, call: ast.Call) -> bool:
        name = call_name(call)
        return name in self.p.optimizer_classes

    def _is_increment(self, t: ast.Subscript, v: ast.AST) -> bool:
        """`T[k] = T.get(k, 0) + 1`, `T[k] = T[k] + c`, or `T[k] = c + 1` with c read from T just before."""
        if not isinstance(v, ast.BinOp) or not isinstance(v.op, ast.Add):
            return False
        key = node_key(t)
        table = node_key(t.value)
        for side in (v.left, v.right):
            if node_key(side) == key:
                return True
            if isinstance(side, ast.Call) and call_name(side) == "get" and isinstance(side.func, ast.Attribute) \
                    and node_key(side.func.value) == table:
                return True
            if isinstance(side, ast.Name):
                for d in self.f.defs.get(side.id, [])[:4]:
                    dv = getattr(d.node, "value", None)
                    for n in walk(dv) if dv is not None else ():
                        if (isinstance(n, ast.Subscript) and node_key(n.value) == table) or (
                                isinstance(n, ast.Call) and call_name(n) == "get"
                                and isinstance(n.func, ast.Attribute) and node_key(n.func.value) == table):
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
                self.add(EK.BACKWARD, st, node, self.L(loss), None, loss=loss)
            elif node.args:
                self.add(EK.BACKWARD, st, node, self.L(node.args[0]), None, loss=node.args[0])
        elif name == "grad" and dotted(f).endswith("autograd.grad") and node.args:
            self.add(EK.BACKWARD, st, node, self.L(node.args[0]), None, loss=node.args[0])
        elif name == "step" and isinstance(f, ast.Attribute):
            recv = f.value
            rname = dotted(recv)
            key = recv.id if isinstance(recv, ast.Name) else recv.attr if isinstance(recv, ast.Attribute) else ""
            optim = bool(self.L(recv) & OPTIM) or any(self.L(a) & OPTIM for a in node.args)   # scaler.step(opt)
            if SCHEDULER_HINT.search(rname) and not optim:
                return
            if optim or key in opt_vars or OPT_HINT.search(rname):
                self.add(EK.STEP, st, node, 0, None, opt=key,
                         gradvar=bool((opt_vars.get(key, 0) | self.L(recv)) & GRADVAR))
        elif name in INPLACE_UPDATES and isinstance(f, ast.Attribute):
            args = list(node.args) + [k.value for k in node.keywords]
            if self._updates(f.value, args, inplace=True, method=True):
                self.add(EK.UPDATE, st, node, 0, None, gradvar=bool(self.L(f.value) & GRADVAR))
        elif name.startswith("_foreach_") and name.endswith("_") and len(node.args) >= 2:
            rest = list(node.args[1:]) + [k.value for k in node.keywords]
            if self._updates(node.args[0], rest, inplace=True, method=True):
                self.add(EK.UPDATE, st, node, 0, None, gradvar=bool(self.L(node.args[0]) & GRADVAR))
        elif isinstance(f, (ast.Name, ast.Call)) and self.L(f) & GRADFN:
            lab = 0
            for a in node.args:
                lab |= self.L(a)
            self.add(EK.BACKWARD, st, node, lab & ~(GRAD | WEIGHT), None, loss=None)
        elif name == "at" and isinstance(f, ast.Attribute) and isinstance(f.value, ast.Attribute) \
                and f.value.attr == "add" and len(node.args) >= 2:
            self.add(EK.INCR, st, node, self.L(node.args[1]) | (self.L(node.args[2]) if len(node.args) > 2 else 0),
                     expr_root(self.f, node.args[0]), key=node.args[1])
        elif name in ("index_add_", "scatter_add_", "index_put_", "put_", "scatter_add") and isinstance(f, ast.Attribute):
            acc = name in ("index_add_", "scatter_add_", "scatter_add") or any(
                k.arg == "accumulate" and isinstance(k.value, ast.Constant) and k.value.value for k in node.keywords)
            if acc:
                lab = 0
                for a in node.args:
                    lab |= self.L(a)
                self.add(EK.INCR, st, node, lab, expr_root(self.f, f.value), key=node.args[1] if len(node.args) > 1
                         else None)
        elif name == "update" and isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) \
                and self._is_counter(f.value.id) and node.args:
            self.add(EK.INCR, st, node, self.L(node.args[0]), expr_root(self.f, f.value), bulk=True)

    def _updates(self, target, value, inplace: bool, method: bool = False) -> bool:
        """Does writing `value` (an expression or a list of them) into `target` move a parameter by a gradient?
        In place (`p.sub_(lr * g)`, `w -= eta * gw`, `_foreach_add_(ps, gs)`): the value is a gradient (or a
        parameter step) and the target is not a gradient or a gradient buffer itself (a plain local name must hold
        parameters). Rebinding (`params = {k: params[k] - lr * g[k]}`, `p.data = p.data - lr * p.grad`): the new
        value is a parameter step, parameters plus or minus a gradient (activations computed with updated
        parameters are not)."""
        values = value if isinstance(value, list) else [value]
        step = any(self._step_expr(v) for v in values)
        pure = step or any(has_grad_attr(v) for v in values) or any(
            self.L(v) & GRAD and not self.L(v) & (WEIGHT | GRADVAR) for v in values)
        if not pure:
            return False
        if isinstance(target, ast.Attribute) and target.attr in ("grad", "main_grad"):
            return False
        tlab = self.L(target) if isinstance(target, ast.expr) else 0
        if inplace:
            if isinstance(target, ast.Name) and self._gradient_alias(target.id):
                return False          # `g = p.grad; g.mul_(c)`: a gradient being scaled, not a parameter
            if isinstance(target, ast.Name) and not method:
                return bool(tlab & (WEIGHT | GRADVAR))      # `w -= eta * g`: w holds parameters
            return True
        if isinstance(target, ast.Attribute) and target.attr == "data":
            return True
        return step and isinstance(target, (ast.Name, ast.Attribute, ast.Subscript))

    def _gradient_alias(self, name: str) -> bool:
        defs = self.f.defs.get(name, [])
        return bool(defs) and all(
            isinstance(d.node, ast.Assign) and (has_grad_attr(d.node.value) or (
                isinstance(d.node.value, ast.Call) and dotted(d.node.value.func).endswith("autograd.grad")))
            for d in defs)

    def _step_expr(self, v) -> bool:
        """Parameters plus or minus a gradient term: `w - lr * g`, `params[k] - lr * g[k]`."""
        if v is None:
            return False
        grads = None
        for n in walk(v):
            if isinstance(n, ast.BinOp) and isinstance(n.op, (ast.Add, ast.Sub)):
                if grads is None:
                    grads = grad_attr_subtrees(v)
                a, b = self.L(n.left), self.L(n.right)
                pure_a = (a & GRAD and not a & (WEIGHT | GRADVAR)) or id(n.left) in grads
                pure_b = (b & GRAD and not b & (WEIGHT | GRADVAR)) or id(n.right) in grads
                if (a & (WEIGHT | GRADVAR) and pure_b) or (b & (WEIGHT | GRADVAR) and pure_a):
                    return True
        return False

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
        root_names = self.p.__dict__.get("_incr_names")
        if root_names is None:
            root_names = self.p._incr_names = {r[-1] for r in roots if isinstance(r[-1], str)}
        update_lines = {id(e.stmt) for e in f.events if e.kind == EK.INCR}
        for st in f.stmts:
            s = st.node
            skip_nodes: set[int] = set()
            if isinstance(s, ast.Assign) and any(isinstance(t, ast.Subscript) for t in s.targets):
                # read-modify-write of the same table is an update, not a read
                for t in s.targets:
                    if isinstance(t, ast.Subscript) and self._is_increment(t, s.value):
                        for n in walk(s.value):
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
                        if id(st) not in update_lines and isinstance(node, (ast.Name, ast.Attribute)) \
                                and (node.id if isinstance(node, ast.Name) else node.attr) in root_names \
                                and isinstance(node.ctx, ast.Load) and not isinstance(s, ast.Delete):
                            root = expr_root(f, node)
                            if root is not None and root in roots:      # the table used whole (prior[None])
                                self.add(EK.READ, st, node, 0, root, whole=True)
                        continue
                    klab = self.L(key)
                    root = expr_root(f, base)
                    if klab & HASH or (klab >> PARAM_SHIFT and root is not None and root[0] == "a"
                                       and root in roots):
                        self.add(EK.HASHREAD, st, node, klab, root, key=key)
                    if root is not None and root in roots and id(st) not in update_lines:
                        self.add(EK.READ, st, node, klab, root, key=key)

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
                    for n in walk(t):
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
        slice_vars = f.report_vars = f.dep_closure(roots)
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
                    self.add(EK.PACCUM, st, s, vl, None, var=pv, param=f.params.index(pv), value=val)
        for st in f.stmts:
            s = st.node
            if isinstance(s, ast.AugAssign):
                var = root_name(s.target)
                if var in slice_vars and self.L(s.value) & LOSS:
                    self.add(EK.ACCUM, st, s, self.L(s.value), None, var=var, value=s.value)
            elif isinstance(s, ast.Assign):
                for t in s.targets:
                    var = root_name(t)
                    if var not in slice_vars:
                        continue
                    vl = self.L(s.value)
                    if not vl & LOSS:
                        continue
                    if isinstance(t, ast.Subscript) or (isinstance(t, ast.Name) and _accumulates(t.id, s.value)):
                        self.add(EK.ACCUM, st, s, vl, None, var=var, value=s.value)
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
                            self.add(EK.ACCUM, st, node, lab, None, var=root_name(node.func.value),
                                     value=node.args[-1] if node.args else None)


