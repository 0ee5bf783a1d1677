"""RESCORE: validation tokens scored more than once, or scored with statistics built over all of them.

Detectors: (1) a score accumulation and a training step on validation data that share an epoch-like loop
(``for epoch in range(E)`` whose variable does not pick the data): every epoch re-scores tokens already trained
on; (2) a count table / cache incremented with validation data outside any scoring loop (a pass over the whole
val set, ``np.bincount(val_tokens)``, ``cache.build(val_tokens)``) and read later by the scoring.
"""

from __future__ import annotations

from ..events import EK, Event

from ..astutil import root_name
from ..index import FuncInfo

from ..labels import PARAM_SHIFT, VAL

from ..loops import common_loops
from .base import Context, Rule, judge
from .registry import register


@register
class Rescore(Rule):
    id = "RESCORE"
    title = "scoring validation tokens more than once / statistics over the whole val set"
    fixtures = ("rules/rescore",)

    def check(self, ctx: Context):
        out = []
        for site in ctx.train_sites():
            for j in judge(ctx, site):
                if j.kind != "epoch":
                    continue
                hops = [(site.step.stmt, ())] + [(cs.stmt, cs.guards) for cs in j.chain]
                expl = (f"The loop at line {j.loop.line} repeats both the scoring (line {j.A.line}) and the "
                        f"training on the same validation tokens (line {j.T.line}): every pass after the first "
                        "re-scores tokens the model has already trained on (multi-epoch scoring).")
                ev = ctx.evidence(j.func.unit, [j.loop.line, j.A.line, j.T.line])
                out.append(ctx.finding(self.id, j.func, hops, j.loop, expl, ev))
                break
        out.extend(self._precomputed(ctx))
        out.extend(self._second_pass(ctx))
        return out

    def _second_pass(self, ctx: Context):
        """A scoring function called again over a state its first call changed: the first call counts the
        validation tokens into an object it was given (after scoring each window: legal within that call), the
        second call scores all the tokens again with those counts."""
        prog = ctx.prog
        out = []
        for f in prog.funcs:
            scores = sorted((e for e in f.lifted if e.kind == EK.SCORE), key=lambda e: e.stmt.index)
            if len(scores) < 2:
                continue
            for inc in f.lifted:
                if inc.kind != EK.INCR or not inc.extra.get("holder"):
                    continue
                lab = inc.labels | (prog.resolve(f, inc.labels) if inc.labels >> PARAM_SHIFT else 0)
                if not lab & VAL:
                    continue
                holder = inc.extra["holder"]
                first = next((a for a in scores if a.stmt is inc.stmt), None)
                if first is None:
                    continue
                for a in scores:
                    if a.stmt.index <= inc.stmt.index or common_loops(a.stmt, inc.stmt):
                        continue
                    call = a.via.node if a.via is not None else None
                    args = list(getattr(call, "args", [])) + [k.value for k in getattr(call, "keywords", [])]
                    recv = a.via.receiver if a.via is not None else None
                    if any(root_name(x) == holder for x in args) or (recv is not None and root_name(recv) == holder):
                        expl = (f"The scoring call at line {inc.stmt.line} of {f.name}() adds the validation tokens "
                                f"to `{holder}` as it scores them; the scoring call at line {a.stmt.line} then scores "
                                f"the tokens again with `{holder}` holding the counts of all of them (two passes: "
                                "only the first score of a token counts).")
                        ev = ctx.evidence(f.unit, [inc.stmt.line, a.stmt.line])
                        out.append(ctx.finding(self.id, f, [(a.stmt, ())], a.stmt, expl, ev))
                        break
        return out

    def _precomputed(self, ctx: Context):
        prog = ctx.prog
        out = []
        for f in prog.funcs:
            incs = [e for e in f.events + f.lifted if e.kind == EK.INCR and e.root is not None]
            if not incs:
                continue
            scores = _scores(f)
            if not scores:
                continue   # a helper that fills a table: judged where it is called (the event is lifted there)
            for inc in incs:
                if inc.via is not None and any(_scores(t) for t in inc.via.targets):
                    continue   # updated inside the callee's own scoring: judged there
                lab = inc.labels
                if not ((lab | (prog.resolve(f, lab) if lab >> PARAM_SHIFT else 0)) & VAL):
                    continue
                if any(common_loops(a.stmt, inc.stmt) for a in scores):
                    continue   # updated inside the scoring loop: NGRAM-TARGET judges the order
                hit = self._later_reader(ctx, f, inc, scores, depth=0)
                if hit is None:
                    continue
                func, reader = hit
                expl = (f"A table is filled from validation data at line {inc.stmt.line} of {f.name}() outside "
                        f"any scoring loop, and the scoring (line {reader.line} of {func.name}()) reads it: "
                        "statistics built over validation tokens before they are scored.")
                ev = ctx.evidence(f.unit, [inc.stmt.line]) + "\n" + ctx.evidence(func.unit, [reader.line])
                out.append(ctx.finding(self.id, f, [(inc.stmt, ())], inc.stmt, expl, ev))
        return out

    def _later_reader(self, ctx, f: FuncInfo, inc: Event, scores, depth: int):
        if depth and any(common_loops(a.stmt, inc.stmt) for a in scores):
            return None   # the update happens inside this level's scoring loop
        for a in scores:
            if a.stmt.index <= inc.stmt.index:
                continue
            if _reads_root(ctx, f, a, inc.root):
                return f, a.stmt
        # reads of the table inside scoring loops of this function, after the increment
        for r in [e for e in f.events + f.lifted if e.kind == EK.READ and e.root == inc.root]:
            if r.stmt.index > inc.stmt.index and any(common_loops(a.stmt, r.stmt) for a in scores):
                return f, r.stmt
        if not scores and depth < 3:
            for cs in ctx.prog.callers.get(f, []):
                g = cs.caller
                if g is f:
                    continue
                mapped = ctx.prog._map_root(inc.root, f, cs)
                fake = Event(EK.INCR, cs.stmt, cs.node, inc.labels, mapped)
                hit = self._later_reader(ctx, g, fake, _scores(g), depth + 1)
                if hit:
                    return hit
        return None


def _scores(f: FuncInfo):
    return [e for e in f.events if e.kind == EK.ACCUM] + [e for e in f.lifted if e.kind == EK.SCORE]


def _reads_root(ctx: Context, f: FuncInfo, a: Event, root) -> bool:
    if a.kind == EK.ACCUM:
        return any(r.root == root and common_loops(r.stmt, a.stmt)
                   for r in f.events + f.lifted if r.kind == EK.READ)
    callee = a.extra.get("callee")
    if callee is None:
        return False
    reads = [r for r in callee.events + callee.lifted if r.kind == EK.READ]
    if root[0] in ("a", "g"):
        return any(r.root == root for r in reads)
    # a local table (or the object holding it) handed to the scoring function
    call = a.via.node if a.via is not None else None
    if call is not None and hasattr(call, "args"):
        for arg in list(call.args) + [k.value for k in call.keywords]:
            if root_name(arg) == root[2]:
                return True
    return False
