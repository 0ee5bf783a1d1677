"""CALIB-VAL: quantisation calibration on validation data, or calibration after the training budget.

Detectors: a calibration routine (GPTQ / Hessian collection: named so, or accumulating ``X^T X`` from forward
activations) fed validation data, or reading it itself; a calibration fed training data after the training loop
when no time is reserved for it inside the 600 s (no ``*reserve*`` setting, no wallclock cap below 600 s).
Self-generated calibration text uses no data and stays clean.
"""

from __future__ import annotations

import ast
import re

from ..astutil import call_name, own_exprs, walk

from ..index import FuncInfo

from ..labels import LOADER, PARAM_SHIFT, TRAIN, VAL
from .base import Context, Rule
from .registry import register

_CALIB_NAME = re.compile(r"calib|gptq|hessian|collect_h|awq|smoothquant", re.I)
_RESERVE = re.compile(r"reserve|gptq_time|calib_time|calib_budget|time_for_gptq|gptq_budget|quant_time_budget", re.I)
_WALLCLOCK = re.compile(r"wallclock|time_budget|train_seconds|max_train_time|time_limit|train_budget", re.I)


@register
class CalibVal(Rule):
    id = "CALIB-VAL"
    title = "calibration on validation data or after the training budget"
    fixtures = ("rules/calib_val",)

    def check(self, ctx: Context):
        prog = ctx.prog
        calib = {f for f in prog.funcs if not f.is_module and _is_calibration(f)}
        out = []
        reserve = None
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
                lab |= prog.resolve(f, lab) if lab >> PARAM_SHIFT else 0
                if lab & VAL:
                    expl = (f"{f.name}() runs the calibration routine {t.name}() on validation data "
                            f"(line {cs.line}).")
                    out.append(ctx.finding(self.id, f, [(cs.stmt, cs.guards)], cs.stmt, expl,
                                           ctx.evidence(f.unit, [cs.line])))
                elif lab & (TRAIN | LOADER):
                    if reserve is None:
                        reserve = _has_reserve(ctx)
                    if reserve or _inside_training_loop(ctx, f, cs.stmt):
                        continue
                    expl = (f"{f.name}() calibrates {t.name}() on training data at line {cs.line}, after the "
                            "training loop, and no time is reserved for it inside the 600 s training budget.")
                    out.append(ctx.finding(self.id, f, [(cs.stmt, cs.guards)], cs.stmt, expl,
                                           ctx.evidence(f.unit, [cs.line])))
        for f in calib:
            for st in f.stmts:
                s = st.node
                if isinstance(s, (ast.For, ast.AsyncFor)):
                    exprs = [s.iter]
                else:
                    exprs = own_exprs(s)
                for expr in exprs:
                    lab = f.memo.get(id(expr), 0)
                    if lab & VAL and not lab >> PARAM_SHIFT:
                        expl = f"The calibration routine {f.name}() reads validation data at line {st.line}."
                        out.append(ctx.finding(self.id, f, [(st, ())], st, expl, ctx.evidence(f.unit, [st.line])))
                        break
                else:
                    continue
                break
        return out


def _is_calibration(f: FuncInfo) -> bool:
    if _CALIB_NAME.search(f.name):
        return True
    for st in f.stmts:
        s = st.node
        if isinstance(s, ast.AugAssign) and _xtx(s.value):
            return True
        for expr in (0,):
            for n in st.nodes:
                if isinstance(n, ast.Call) and call_name(n) in ("addmm_", "addmm") and any(_xtx(a) for a in n.args):
                    return True
    return False


def _xtx(node) -> bool:
    """x.T @ x, x.t() @ x, torch.matmul(x.T, x), einsum over a transposed operand."""
    for n in walk(node):
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.MatMult):
            if _transposed(n.left) or _transposed(n.right):
                return True
        if isinstance(n, ast.Call) and call_name(n) in ("matmul", "mm") and n.args and _transposed(n.args[0]):
            return True
    return False


def _transposed(n) -> bool:
    if isinstance(n, ast.Attribute) and n.attr in ("T", "mT"):
        return True
    if isinstance(n, ast.Call) and call_name(n) in ("t", "transpose"):
        return True
    return False


def _has_reserve(ctx: Context) -> bool:
    for fds in ctx.flags.by_attr.values():
        for fd in fds:
            if _RESERVE.search(fd.attr) or (fd.env and _RESERVE.search(fd.env)):
                return True
            if _WALLCLOCK.search(fd.attr) and isinstance(fd.default, (int, float)) and 0 < fd.default < 600:
                return True
            if _WALLCLOCK.search(fd.attr) and fd.kind == "expr":
                v = ctx.base.ev.flag_value(fd)
                if isinstance(v, (int, float)) and 0 < v < 600:
                    return True
    for unit in ctx.prog.units:
        for n in unit.nodes:
            if isinstance(n, ast.Name) and _RESERVE.search(n.id):
                return True
            if isinstance(n, ast.Attribute) and _RESERVE.search(n.attr):
                return True
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and _RESERVE.search(n.value) \
                    and len(n.value) < 60:
                return True
    return False


def _inside_training_loop(ctx: Context, f: FuncInfo, st) -> bool:
    for site in ctx.train_sites():
        if site.func is f and any(l in st.loops for l in site.step.stmt.loops):
            return True
    return False
