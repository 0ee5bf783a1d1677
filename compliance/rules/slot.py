"""SLOT: a per-window delta / logit bias optimised on the very targets that are then scored.

Detector: a tensor created with ``requires_grad=True`` (or an ``nn.Parameter`` built outside a module) is
optimised with backward + step on validation targets, and the scores added to the totals are computed after
those steps in the same iteration. If the optimised loss only selects positions before the scored slice
(``nll[:, :s]``, a mask filled with ``[i, :s] = True``) the variant is context-only: an open question, reported as
needs-ruling.
"""

from __future__ import annotations

import ast

from ..astutil import names_in, walk
from ..events import EK

from ..labels import LOSS, TGT
from ..report import NEEDS_RULING
from .base import Context, Rule, judge
from .registry import register


@register
class Slot(Rule):
    id = "SLOT"
    title = "per-window delta / logit bias optimised on the scored targets"
    fixtures = ("rules/slot",)

    def check(self, ctx: Context):
        out = []
        for site in ctx.train_sites():
            if not site.delta:
                continue
            for j in judge(ctx, site):
                if j.kind not in ("pre", "after"):
                    continue
                f = site.func
                ctx_only = context_only(f, site.backward)
                hops = [(site.step.stmt, ())] + [(cs.stmt, cs.guards) for cs in j.chain]
                if ctx_only:
                    expl = (f"{f.name}() optimises a delta/bias (requires_grad tensor) with backward at line "
                            f"{site.backward.stmt.line} and a step at line {site.step.stmt.line}, on context "
                            "positions only (those before the scored slice), then scores the new positions with it: "
                            "context-only SLOT, an open question.")
                else:
                    expl = (f"{f.name}() optimises a delta/bias (requires_grad tensor) on the window's targets "
                            f"(backward line {site.backward.stmt.line}, step line {site.step.stmt.line}) and then "
                            f"adds the scores computed with it to the totals"
                            + (f" (line {j.A.line})." if j.A is not None else "."))
                ev = ctx.evidence(f.unit, list(site.lines) + ([j.A.line] if j.A is not None else []))
                out.append(ctx.finding(self.id, j.func, hops, site.step.stmt, expl, ev,
                                       when_active=NEEDS_RULING if ctx_only else "active"))
                break
        return out


def context_only(f, backward) -> bool:
    loss = backward.extra.get("loss")
    if loss is None or backward.via is not None:
        return False
    sels = []
    _selectors(f, loss, sels, depth=0, seen=set())
    if not sels:
        return False
    starts = _score_starts(f)
    return all(_is_prefix(f, s, starts) for s in sels)


def _score_starts(f) -> set:
    """ast dumps of the lower bounds of the slices the scores are taken from (`nll[i, s:wlen]` -> s)."""
    out = set()
    for e in f.events:
        if e.kind != EK.ACCUM:
            continue
        value = e.extra.get("value")
        for node in walk(value) if value is not None else ():
            if isinstance(node, ast.Slice) and node.lower is not None:
                out.add(ast.dump(node.lower))
        for n in names_in(value):
            for d in f.defs.get(n, [])[:3]:
                v = getattr(d.node, "value", None)
                for node in walk(v) if v is not None else ():
                    if isinstance(node, ast.Slice) and node.lower is not None:
                        out.add(ast.dump(node.lower))
    return out


def _selectors(f, expr, out, depth, seen):
    if depth > 5 or expr is None:
        return
    for node in walk(expr):
        if isinstance(node, ast.Subscript):
            base_lab = f.memo.get(id(node.value), 0)
            sl = node.slice
            if isinstance(sl, ast.Constant) and sl.value in (None, Ellipsis):
                continue
            if base_lab & (LOSS | TGT) or _looks_like_loss(node.value):
                out.append(sl)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult,)):
            for side in (node.left, node.right):
                if isinstance(side, ast.Name) and "mask" in side.id.lower():
                    out.append(side)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "masked_select", "masked_fill"):
            out.extend(node.args[:1])
    for n in names_in(expr):
        if n in seen:
            continue
        seen.add(n)
        if not f.labels.get(n, 0) & LOSS and "mask" not in n.lower():
            continue   # follow the loss (and masks), not the definitions of the inputs and targets
        for d in f.defs.get(n, []):
            v = getattr(d.node, "value", None)
            if v is not None and not isinstance(d.node, (ast.For,)):
                _selectors(f, v, out, depth + 1, seen)


def _looks_like_loss(node) -> bool:
    return isinstance(node, ast.Name) and ("nll" in node.id.lower() or "loss" in node.id.lower())


def _is_prefix(f, sel, starts: set) -> bool:
    """The selector keeps only positions before the scored slice: `[..., :s]` where the scores start at s."""
    if isinstance(sel, ast.Tuple) and sel.elts:
        sel = sel.elts[-1]
    if isinstance(sel, ast.Slice):
        lo_zero = sel.lower is None or (isinstance(sel.lower, ast.Constant) and sel.lower.value == 0)
        return lo_zero and sel.upper is not None and ast.dump(sel.upper) in starts
    if isinstance(sel, ast.Name):
        # a boolean mask: how is it filled?
        stores = []
        for st in f.stmts:
            s = st.node
            if isinstance(s, ast.Assign):
                for t in s.targets:
                    if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) and t.value.id == sel.id:
                        stores.append(t.slice)
        defs = f.defs.get(sel.id, [])
        for d in defs:
            v = getattr(d.node, "value", None)
            if isinstance(v, ast.Compare) and len(v.ops) == 1 and isinstance(v.ops[0], (ast.Lt, ast.LtE)) \
                    and ast.dump(v.comparators[0]) in starts:
                return True
        return bool(stores) and all(_is_prefix(f, s, starts) for s in stores)
    if isinstance(sel, ast.Compare) and len(sel.ops) == 1 and isinstance(sel.ops[0], (ast.Lt, ast.LtE)):
        return ast.dump(sel.comparators[0]) in starts
    return False
