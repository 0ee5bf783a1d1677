"""The flow-sensitive taint inside each function (LabelPass), function results summarised in terms of their
parameters, and the resolution of parameter bits to what call sites pass."""

from __future__ import annotations

import ast
import re
from typing import TYPE_CHECKING

from . import budget
from .astutil import call_name, const_literal, dotted, names_in, own_exprs, postorder, root_name, walk
from .index import CallSite, FuncInfo, Stmt
from .labels import (BYTESRC, CONCRETE, CTX, DATA, GRAD, GRADFN, GRADVAR, HASH, LOADER, LOSS, MIXP, MIXPS, MIXT, OBJECTS,
                     MULTI, OPTIM, PARAM_SHIFT, SUMMARY_ONLY, TIME, TKEY, WEIGHT,
                     TGT, TRAIN, VAL, name_seed, param_indices, pbit, string_labels)
from .vocab import CLOCKS, CREATORS, DATA_OPS, DROP_ATTRS, DROP_CALLS, GRAD_TRANSFORMS, LOSS_FUNCS, MUTATORS, VIEW_ATTRS

if TYPE_CHECKING:
    from .program import Program


class TaintAnalysis:
    # -- labels ---------------------------------------------------------------------------------------------
    def _analyse_labels(self) -> None:
        """Every function once, callee first (constructors first of all: they set the attributes others read),
        then again while what a function reads (attributes, outer variables, callee results) changed after its
        last pass (its own writes do not count: each pass runs to its own fixed point)."""
        order = self._callee_first_order()
        order = [f for f in order if f.name == "__init__"] + [f for f in order if f.name != "__init__"]
        self.version = 0
        self.attr_ver: dict[str, int] = {}
        self.glob_ver: dict[tuple, int] = {}
        for f in order:
            self._read_sets(f)
        for f in order:
            budget.check()
            LabelPass(self, f).run()
            f.ran_at = self.version
        for _round in range(4):
            rerun = False
            for f in order:
                if any(self.attr_ver.get(a, 0) > f.ran_at for a in f.attr_reads) or \
                        any(self.glob_ver.get(k, 0) > f.ran_at for k in f.outer_reads) or \
                        any(getattr(c, "ret_ver", 0) > f.ran_at for c in f.callees):
                    budget.check()
                    LabelPass(self, f).run()
                    f.ran_at = self.version
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
        self._nested = 0
        self._min_read: dict[str, int] = {}     # per pass: first statement index that read a local
        self._max_change: dict[str, int] = {}   # per pass: last statement index whose definition grew

    # public: labels of one expression with the current variable state
    def label(self, node: ast.AST | None) -> int:
        if node is None:
            return 0
        k = id(node)
        v = self.memo.get(k)
        if v is None:
            if self._nested:
                v = self._label(node)
            else:
                self._nested += 1
                try:
                    v = self._label(node)
                except RecursionError:       # a very deep expression: children first, iteratively, then again
                    self._prelabel(node)
                    v = self._label(node)
                finally:
                    self._nested -= 1
            self.memo[k] = v
        return v

    def _prelabel(self, node: ast.AST) -> None:
        """Label a deep expression children-first with an explicit stack, so that the recursive `_label` of each
        node only meets labelled children (no recursion limit on 100,000-term expressions). Comprehensions and
        lambdas (own scopes) are labelled when their parent needs them."""
        for sub in postorder(node, skip=_SCOPED):
            if sub is not node and id(sub) not in self.memo and isinstance(sub, ast.expr):
                self.memo[id(sub)] = self._label(sub)

    def run(self) -> None:
        f = self.f
        for i, p in enumerate(f.params):
            f.labels[p] |= pbit(i) | name_seed(p)
            f.vdefs[p][-1] = [None, pbit(i) | name_seed(p)]
        for _ in range(8):
            self.memo.clear()
            self._min_read, self._max_change = {}, {}
            before = sum(f.labels.values()) + len(f.labels)
            snapshot = dict(f.labels)
            for st in f.stmts:
                self.cur = st
                self._stmt(st)
            if dict(f.labels) == snapshot and before == sum(f.labels.values()) + len(f.labels):
                break
            # another pass only helps a read that came before (or at) a definition that changed in this pass
            if not any(self._min_read.get(n, 1 << 60) <= i for n, i in self._max_change.items()):
                break
        # the last pass's memo holds the converged labels: the passes below reuse it
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

    def _several_scores(self, arg) -> bool:
        """[score_a, score_b] or [score(m) for m in models]: per-token scores of several predictors."""
        if isinstance(arg, (ast.List, ast.Tuple)):
            return sum(1 for e in arg.elts if self.label(e) & LOSS) >= 2
        if isinstance(arg, (ast.ListComp, ast.GeneratorExp)):
            return bool(self.label(arg) & LOSS)
        return False

    def _is_func_transform(self, f: ast.expr) -> bool:
        """`grad` / `grad_and_value` / `vjp` ... of torch.func or functorch (not some other `grad`)."""
        d = dotted(f)
        if d.startswith(("torch.func.", "functorch.", "func.")):
            return True
        if isinstance(f, ast.Name):
            target = self.p.aliases.get(id(self.f.unit), {}).get(f.id, "")
            return target.startswith(("torch.func.", "functorch."))
        return False

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
            if ent is None or ent[1] | lab != ent[1]:
                if self._max_change.get(n, -2) < st.index:
                    self._max_change[n] = st.index
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
                self._set_attr(base.attr, self._attr_value(lab) & ~(HASH | MIXT))
        elif isinstance(target, ast.Attribute) and target.attr in VIEW_ATTRS:
            self.assign(target.value, lab & ~(HASH | MIXT), value, st, mutate=True)   # p.data = v: p holds v
        elif isinstance(target, ast.Attribute):
            self._set_attr(target.attr, (self._attr_value(lab) & ~(HASH | MIXT)) | name_seed(target.attr))
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
                out[k] |= self._apply_summary(cs, t, s)
        return out

    def _apply_summary(self, cs: CallSite, t, s: int) -> int:
        """The labels a call site gets from the callee's result summary `s`: its concrete labels, plus what the
        arguments passed for its parameter bits carry; a result that mixes two or more labelled arguments, one a
        target, is a target mix (HASH when the callee hashes, else MIXT)."""
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
        return lab

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
                    for m in walk(e):
                        if isinstance(m, ast.Name):
                            scope[m.id] = p

    @staticmethod
    def _attr_value(lab: int) -> int:
        """What an attribute written with `lab` holds program-wide: its concrete labels. A constructor's
        arguments stored on self are not resolved into it (all instances would share them); they reach a method's
        results through the receiver, whose labels at each call site include what its constructor was given."""
        return lab & CONCRETE

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
            r = cur.index if cur is not None else -1
            if r < self._min_read.get(n, 1 << 60):
                self._min_read[n] = r
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
            if node.attr in ("grad", "main_grad"):
                return (self.label(node.value) & ~(WEIGHT | GRADVAR | OBJECTS | LOSS)) | GRAD
            if node.attr in VIEW_ATTRS:
                return self.label(node.value)
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
        if t in (ast.List, ast.Tuple, ast.Set, ast.Dict) and const_literal(node):
            out = 0        # a data table: only its strings can carry labels (file names, patterns)
            for e in (node.elts if t is not ast.Dict else node.values):
                if isinstance(e.value, str) and len(e.value) <= 400:
                    out |= string_labels(e.value)
            return out
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
            if idx & TGT and not b & TGT:
                # p(gold) out of the model's scores, or a count addressed by the gold token
                r = (r & ~TGT) | (LOSS if b & (LOSS | CTX) else TKEY)
            return r
        if isinstance(sl, ast.Slice):
            r = b | ((self.label(sl.lower) | self.label(sl.upper)) & (VAL | TRAIN | ~CONCRETE))
            if data_base:
                r |= self._slice_role(sl)
            return r
        k = self.label(sl)
        r = b | (k & ~(HASH | MIXT | LOSS | WEIGHT | GRADVAR | GRAD | OBJECTS))   # a key is no parameter
        if k & TGT and not b & (TGT | DATA | LOSS | LOADER):
            r = (r & ~TGT) | TKEY        # table[key with the target]: a count at the gold token
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
        if name in CLOCKS and (dotted(f).startswith("time.") or self.p.aliases.get(id(self.f.unit), {}).get(
                dotted(f), "").startswith("time.")):
            return TIME
        if name == "len" and node.args and isinstance(node.args[0], ast.Call) and call_name(node.args[0]) == "encode":
            return BYTESRC        # len(piece.encode()): a byte length of text (byte tables are built from these)
        if name in DROP_CALLS:
            if isinstance(f, ast.Attribute):
                self.label(f.value)
            return 0
        if _HASH_CALL.search(name) and argl & (TGT | MIXT) and not self.p.resolve_call(self.f, f)[0]:
            return (argl & ~(MIXT | LOSS)) | HASH | MIXT          # hash((ctx, y)), crc32(f"{ctx}|{y}".encode())
        if name in _XOR_FUNCS and len(alist) >= 2:
            return self._combine(ast.BitXor(), alist[0], alist[1], node.args[0], node.args[1])
        if name in _REDUCE_FUNCS and len(alist) >= 2:
            return self._combine(ast.Mod(), alist[0], alist[1], node.args[0], node.args[1])
        if name == "ravel_multi_index" and alist:
            return (alist[0] | MIXT) if alist[0] & TGT and alist[0] & ~TGT & (DATA | ~CONCRETE) else alist[0]
        if name == "get" and isinstance(f, ast.Attribute) and alist and alist[0] & TGT:
            base = self.label(f.value)
            if not base & (TGT | DATA | LOSS | LOADER):
                return (base | (argl & ~(TGT | HASH | MIXT | LOSS))) | TKEY     # counts.get(key with y, 0)
        if name in _STACKS and node.args and self._several_scores(node.args[0]):
            return argl | MULTI
        if isinstance(f, (ast.Name, ast.Call)) and self.label(f) & GRADFN:
            return (argl & ~(OBJECTS | LOSS | WEIGHT | GRADVAR)) | GRAD      # torch.func.grad(fn)(params, x, y)
        if name in GRAD_TRANSFORMS and self._is_func_transform(f):
            return GRADFN
        if name in ("vmap", "compile", "partial") and argl & GRADFN:
            return GRADFN
        if name == "grad" and dotted(f).endswith("autograd.grad"):
            return (argl & ~(OBJECTS | LOSS | WEIGHT | GRADVAR)) | GRAD
        if name in ("parameters", "named_parameters", "state_dict") and isinstance(f, ast.Attribute):
            self.label(f.value)
            return WEIGHT
        if name in self.p.optimizer_classes:
            if isinstance(f, ast.Attribute):
                self.label(f.value)
            return OPTIM | (argl & GRADVAR)
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
        if name == "Parameter":
            return argl | WEIGHT | (GRADVAR if self.f.name != "__init__" else 0)
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
                r |= self._apply_summary(CallSite(self.f, None, node, [t], (), kind, recv), t, t.ret_labels)
                if kind == "init":
                    r |= argl & (DATA | ~CONCRETE)
                    if argl & (VAL | TRAIN):
                        r |= LOADER
            if isinstance(f, ast.Attribute) and kind != "init":
                self.label(f.value)
            return r & ~GRADVAR if not (argl & GRADVAR) else r
        argl &= ~OBJECTS      # a scheduler or scaler built around an optimiser is not an optimiser
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
        if name in ("log_softmax", "log_probs", "logsumexp", "softmax"):
            r = (r & ~TGT) | LOSS
        return r & ~(HASH | MIXT) if name in ("sum", "mean", "item", "float", "double") and not (r & HASH) else r


_HASH_CALL = re.compile(r"^(hash|crc32|adler32|md5|sha\d*|sha3_\d+|blake2[bs]|xxh\w*|fnv\w*|murmur\w*|digest|"
                        r"hexdigest|intdigest|mmh3\w*|cityhash\w*|farmhash\w*)$", re.I)
_XOR_FUNCS = {"bitwise_xor", "bitwise_or", "bitwise_left_shift", "bitwise_right_shift", "left_shift", "right_shift",
              "logical_xor"}
_REDUCE_FUNCS = {"remainder", "fmod", "mod", "bitwise_and", "floor_divide"}
_STACKS = {"stack", "vstack", "hstack", "cat", "concatenate", "array", "tensor", "column_stack", "dstack"}
_SCOPED = (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp, ast.Lambda)
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

