"""CALIB-VAL: quantisation calibration on validation data, or calibration after the training budget.

A calibration routine is recognised by what it does, whatever it is called: it accumulates second-moment
statistics of activations (`H += x.T @ x`, `addmm_(x.t(), x)`, `einsum("ni,nj->ij", x, x)`, in the routine, in a
forward hook it registers or a helper it calls). Flagged: such a routine fed validation data (through the data flow
of its arguments, or reading it itself); and one fed training data after the training loop when the loop's time cap
(timecap.py: the time arithmetic of its stop test, evaluated under the configuration) leaves no time for it inside
the 600 s. A routine fed self-generated text reads no data and stays clean; a name containing "calib" or
"reserve" is no evidence either way.
"""

from __future__ import annotations

import ast
import re

from ..astutil import call_name, own_exprs
from ..index import FuncInfo
from ..labels import CONCRETE, LOADER, PARAM_SHIFT, TRAIN, VAL
from ..report import ACTIVE, Finding
from ..rulings import RULINGS
from ..timecap import loop_caps
from .base import Context, Rule, find_train_sites
from .registry import register

CAP_S = 600.0         # a loop that stops at 600 s (or later) keeps nothing back; any reserve below it counts


@register
class CalibVal(Rule):
    id = "CALIB-VAL"
    title = "calibration on validation data or after the training budget"
    fixtures = ("rules/calib_val", "folders/calib_reserve_zero_logged")

    def check(self, ctx: Context):
        prog = ctx.prog
        calib = calibration_routines(prog)
        out = []
        late = []
        for f in prog.funcs:
            for cs in f.calls:
                hit = [t for t in cs.targets if t in calib]
                if not hit or f in calib:
                    continue
                t = hit[0]
                lab = 0
                for i in range(len(t.params)):
                    for e in prog.arg_expr(cs, t, i):
                        lab |= f.memo.get(id(e), 0)
                lab = (lab & CONCRETE) | (prog.resolve(f, lab) if lab >> PARAM_SHIFT else 0)
                if lab & VAL:
                    expl = (f"{f.name}() runs {t.name}(), which gathers activation statistics for quantisation "
                            f"(second moments X^T X), on validation data (line {cs.line}).")
                    out.append(ctx.finding(self.id, f, [(cs.stmt, cs.guards)], cs.stmt, expl,
                                           ctx.evidence(f.unit, [cs.line])))
                elif lab & (TRAIN | LOADER) or _reads(t, TRAIN | LOADER):
                    late.append((f, cs, t))
        for f in calib:
            for st in f.stmts:
                exprs = [st.node.iter] if isinstance(st.node, (ast.For, ast.AsyncFor)) else own_exprs(st.node)
                if any(f.memo.get(id(e), 0) & VAL and not f.memo.get(id(e), 0) >> PARAM_SHIFT for e in exprs):
                    expl = (f"The calibration routine {f.name}() (it gathers activation statistics X^T X) reads "
                            f"validation data at line {st.line}.")
                    out.append(ctx.finding(self.id, f, [(st, ())], st, expl, ctx.evidence(f.unit, [st.line])))
                    break
        if late:
            out.extend(self._after_budget(ctx, late))
        return out

    def _after_budget(self, ctx: Context, late) -> list[Finding]:
        """Calibration on training data that runs after the training loop, when the loop's cap keeps nothing of
        the 600 s back for it (under the defaults or --set, or in a logged run's configuration)."""
        prog = ctx.prog
        loops = _training_loops(ctx)
        out = []
        for f, cs, t in late:
            after = [(tf, loop) for tf, loop in loops if _runs_after(prog, (tf, loop), (f, cs.stmt))]
            if not after:
                continue
            configs = [ctx.base] + list(ctx.runs)
            verdicts = []
            for cfg in configs:
                caps = [c for tf, loop in after for c in loop_caps(tf, loop, cfg.ev, prog)]
                known = [c for c in caps if c.seconds is not None]
                if not caps:
                    verdicts.append((cfg, None, None))
                    continue
                cap = max(known, key=lambda c: c.seconds) if known else None
                verdicts.append((cfg, cap, caps[0]))
            base_cfg, base_cap, base_any = verdicts[0]
            if base_cap is None and base_any is None:
                ctx.warnings.append(f"CALIB-VAL: {f.unit.display}:{cs.line}: {t.name}() calibrates on training data "
                                    "after the training loop, whose time cap could not be read from the code; "
                                    "whether it fits the 600 s was not checked")
                continue
            bad = [(cfg, cap) for cfg, cap, _ in verdicts if cap is not None and cap.seconds >= CAP_S]
            if not bad:
                continue
            status_path = ctx.path_status(ctx.base, f, [(cs.stmt, cs.guards)])
            cfg0, cap0 = bad[0]
            runs = [cfg.name for cfg, _ in bad if cfg is not ctx.base]
            base_bad = any(cfg is ctx.base for cfg, _ in bad)
            how = ("" if base_bad else f" (in the logged run(s) {', '.join(runs)})")
            expl = (f"{f.name}() calibrates {t.name}() on training data at line {cs.line}, after the training loop; "
                    f"that loop stops at {cap0.seconds:g} s ({cap0.text}, line {cap0.stmt.line}){how}, so no time of "
                    "the 600 s training budget is kept back for the calibration.")
            ev = ctx.evidence(f.unit, [cs.line]) + "\n" + ctx.evidence(cap0.stmt.func.unit, [cap0.stmt.line])
            flag = None
            if base_bad and status_path.level == 1 and not runs:
                # behind a setting: judge the cap under the setting that switches the calibration on (a reserve
                # kept only when it runs, as QUANT_METHOD=gptq does, is no violation)
                acts = [ctx.base.ev.activation(g) for g in status_path.blockers]
                flag = " ".join(dict.fromkeys(a for a in acts if a)) or None
                pairs = dict(w.split("=", 1) for a in acts for w in a.split() if re.fullmatch(r"[A-Z][A-Z0-9_]*=\S+", w))
                if pairs:
                    on = ctx.base.ev._with_env(pairs)
                    caps = [c for tf, loop in after for c in loop_caps(tf, loop, on, prog)]
                    known = [c for c in caps if c.seconds is not None]
                    if known and max(c.seconds for c in known) < CAP_S:
                        continue
                expl += f" Dormant: runs only with {flag}." if flag else ""
            status = ACTIVE if (base_bad and status_path.level == 0) or runs else "dormant"
            out.append(Finding(self.id, status, f.unit.display, cs.line, ev, expl, RULINGS[self.id], flag=flag,
                               runs=[] if base_bad else runs, decoded=f.unit.decoded))
        return out


def _reads(f: FuncInfo, labels: int) -> bool:
    """Does f (or a function nested in it) read data with these labels itself (a loader it builds or calls)?"""
    for st in f.stmts:
        exprs = [st.node.iter] if isinstance(st.node, (ast.For, ast.AsyncFor)) else own_exprs(st.node)
        for e in exprs:
            if f.memo.get(id(e), 0) & labels:
                return True
    return False


def calibration_routines(prog) -> set:
    """Functions that gather activation second moments: directly, or through functions nested in them (forward
    hooks). A hook is part of the routine that registers it, not a routine of its own."""
    direct = {f for f in prog.funcs if not f.is_module and _gathers_moments(f)}
    out = set()
    for f in direct:
        top = f
        while top.parent is not None and not top.parent.is_module:
            top = top.parent
        out.add(top)
    return out


def _gathers_moments(f: FuncInfo) -> bool:
    for st in f.stmts:
        s = st.node
        if isinstance(s, ast.AugAssign) and _gram(s.value):
            return True
        if isinstance(s, ast.Assign) and _gram(s.value) and _accumulates(s):
            return True
        for n in st.nodes:
            if isinstance(n, ast.Call) and call_name(n) in ("addmm_", "addmm", "add_", "addr_", "baddbmm_") \
                    and any(_gram(a) for a in n.args):
                return True
            if isinstance(n, ast.Call) and call_name(n) in ("addmm_", "addmm") and len(n.args) >= 2 \
                    and _transposed(n.args[-2]):
                return True
    return False


def _accumulates(s: ast.Assign) -> bool:
    """`H[k] = H.get(k, 0) + g`, `H = H + g`: the new value adds to the old."""
    if not isinstance(s.value, ast.BinOp) or not isinstance(s.value.op, ast.Add):
        return False
    tnames = set()
    for t in s.targets:
        for n in ast.walk(t):
            if isinstance(n, ast.Name):
                tnames.add(n.id)
    return any(isinstance(n, ast.Name) and n.id in tnames for n in ast.walk(s.value))


def _gram(node) -> bool:
    """x.T @ x, x.t() @ x, matmul/mm(x.T, x), einsum("ni,nj->ij", x, x)-like outer products over a shared axis."""
    for n in ast.walk(node):
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.MatMult):
            if _transposed(n.left) or _transposed(n.right):
                return True
        if isinstance(n, ast.Call):
            name = call_name(n)
            if name in ("matmul", "mm", "bmm") and n.args and _transposed(n.args[0]):
                return True
            if name in ("matmul", "mm") and isinstance(n.func, ast.Attribute) and _transposed(n.func.value):
                return True
            if name == "einsum" and n.args and isinstance(n.args[0], ast.Constant) and isinstance(n.args[0].value, str) \
                    and _outer_spec(n.args[0].value):
                return True
            if name in ("outer", "ger"):
                return True
    return False


def _outer_spec(spec: str) -> bool:
    """An einsum that sums two operands over shared axes into a matrix of their remaining axes (X^T X)."""
    spec = spec.replace(" ", "").replace("...", "")
    if "->" not in spec:
        return False
    ins, out = spec.split("->")
    parts = ins.split(",")
    if len(parts) != 2 or len(out) != 2:
        return False
    a, b = parts
    shared = set(a) & set(b)
    return bool(shared) and out[0] in a and out[1] in b and not shared & set(out)


def _transposed(n) -> bool:
    if isinstance(n, ast.Attribute) and n.attr in ("T", "mT"):
        return True
    if isinstance(n, ast.Call) and call_name(n) in ("t", "transpose", "permute"):
        return True
    return False


def _training_loops(ctx: Context) -> list:
    """(function, loop statement) of every loop that trains on training data: the loops around a training step,
    and the loops around the calls that lead to it (a step function called in the loop)."""
    out = []
    for site in find_train_sites(ctx.prog):
        lab = site.loss_labels
        lab = (lab & CONCRETE) | (ctx.prog.resolve(site.func, lab) if lab >> PARAM_SHIFT else 0)
        if lab & VAL and not lab & TRAIN:
            continue
        for loop in site.step.stmt.loops:
            out.append((site.func, loop))
        frontier = [site.func]
        for _ in range(3):
            nxt = []
            for g in frontier:
                for cs in ctx.prog.callers.get(g, []):
                    for loop in cs.stmt.loops:
                        out.append((cs.caller, loop))
                    nxt.append(cs.caller)
            frontier = nxt
    seen, uniq = set(), []
    for f, loop in out:
        if id(loop) not in seen:
            seen.add(id(loop))
            uniq.append((f, loop))
    return uniq


def _ancestry(prog, f: FuncInfo, stmt, depth: int = 4) -> dict:
    """function -> statement in it through which `stmt` of `f` is reached (f itself, then its callers)."""
    out = {f: [stmt]}
    frontier = [(f, stmt)]
    for _ in range(depth):
        nxt = []
        for g, _s in frontier:
            for cs in prog.callers.get(g, []):
                if cs.caller is g:
                    continue
                out.setdefault(cs.caller, []).append(cs.stmt)
                nxt.append((cs.caller, cs.stmt))
        frontier = nxt
    return out


def _runs_after(prog, train, calib) -> bool:
    """Does the calibration statement run after the training loop has finished (and not inside it)?"""
    tf, loop = train
    cf, cst = calib
    if cf is tf and loop in cst.loops:
        return False
    ta = _ancestry(prog, tf, loop)
    ca = _ancestry(prog, cf, cst)
    for g, tstmts in ta.items():
        if g in ca:
            for ts in tstmts:
                for c in ca[g]:
                    if c is ts or ts in c.loops or c in ts.loops:
                        continue
                    if c.index > ts.index:
                        return True
    return False
