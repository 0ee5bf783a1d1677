"""TTT-PRE: adapting on validation tokens before scoring them (pre-quant / pre-eval TTT).

Detector: every loop (or function) that calls ``.backward()`` and an optimiser step / in-place parameter update
on validation data is followed up the call graph to the level where scores are accumulated. Legal score-first
TTT adds the chunk's scores to the totals earlier in the same iteration than the step (one forward pass may
serve both if the accumulation precedes the step). Flagged: training with no score accumulation before it in a
common loop (a separate training pass, then scoring) and adapt-then-score inside one iteration.
"""

from __future__ import annotations

from ..labels import LOADER, TRAIN
from .base import Context, Rule, judge
from .registry import register


@register
class TttPre(Rule):
    id = "TTT-PRE"
    title = "adapting on validation tokens before scoring them"
    fixtures = ("rules/ttt_pre",)

    def check(self, ctx: Context):
        out = []
        for site in ctx.train_sites():
            if site.delta:
                continue
            for j in judge(ctx, site):
                if j.kind not in ("pre", "after"):
                    continue
                if j.labels & (TRAIN | LOADER):
                    continue  # validation data inside the training data stream: VAL-TRAIN
                f = site.func
                hops = [(site.step.stmt, ())] + [(cs.stmt, cs.guards) for cs in j.chain]
                chain_txt = "".join(f" (called from {cs.caller.name}() line {cs.line})" for cs in j.chain[:2])
                if j.kind == "pre":
                    expl = (f"{f.name}() trains on validation tokens (backward at line {site.backward.stmt.line}, "
                            f"optimiser step at line {site.step.stmt.line}){chain_txt} without scoring them first "
                            f"in the same iteration")
                    expl += (f"; the adapted model is scored afterwards (line {j.A.line})." if j.A is not None
                             else "; the model it adapts is the one scored afterwards.")
                else:
                    expl = (f"Inside the loop at line {j.loop.line} of {j.func.name}(), the chunk is trained on "
                            f"(line {j.T.line}) before its scores are added to the totals (line {j.A.line}): "
                            f"adapt-then-score.")
                lines = list(site.lines) + [cs.line for cs in j.chain[:2]] + ([j.A.line] if j.A is not None else [])
                unit = f.unit
                ev = ctx.evidence(unit, lines)
                if j.chain and j.func.unit is not unit:
                    ev += "\n" + ctx.evidence(j.func.unit, [j.T.line])
                out.append(ctx.finding(self.id, j.func, hops, site.step.stmt, expl, ev))
                break
        return out
