"""NGRAM-TARGET: the target token used to form its own probability.

Detectors: (1) a table read whose key mixes the target token into a lossy hash (``ctx_hash ^ (tgt * prime)``,
``(h * 31 + y) % buckets``, or a helper returning such a mix) on a scoring path: the count read at the gold
token is not a normalised distribution over the vocabulary (p(gold) -> 1 under collisions); (2) a cache/count
table updated with the current targets before it is read to score them in the same iteration; (3) a
per-token choice between two scores made by comparing them (``if new_nll < old_nll``, ``minimum(nll_a, nll_b)``):
the selection looks at the target. Counting the target in an update that runs after the scoring, and hashes of
input tokens (BigramHash over ``t_i, t_{i-1}``), are legal and stay clean.
"""

from __future__ import annotations

import ast

from ..astutil import call_name, names_in, node_key, root_name, walk

from ..events import EK, expr_root
from ..index import FuncInfo

from ..labels import CTX, HASH, LOSS, MULTI, PARAM_SHIFT, TGT, TKEY, VAL

from ..loops import common_loops
from .base import Context, Rule
from .registry import register


@register
class NgramTarget(Rule):
    id = "NGRAM-TARGET"
    title = "the target token used to form its own probability"
    fixtures = ("rules/ngram_target", "folders/log_words_activate")

    def check(self, ctx: Context):
        out = []
        prog = ctx.prog
        scoring = _scoring_functions(ctx)
        for f in prog.funcs:
            for e in f.events:
                if e.kind != EK.HASHREAD:
                    continue
                local_hash = bool(e.labels & HASH)
                lab = e.labels | (prog.resolve(f, e.labels) if e.labels >> PARAM_SHIFT else 0)
                if not lab & HASH or not (lab & VAL or f in scoring):
                    continue
                if local_hash and not _computed_key(ctx, f, e.extra.get("key"), 0):
                    continue
                key_txt = _src(e.extra.get("key"))
                expl = (f"The lookup at line {e.stmt.line} of {f.name}() uses a key that hashes the target token "
                        f"together with its context ({key_txt}): the count read at the gold token is not a "
                        "probability normalised over the vocabulary, so the target shapes its own score.")
                ev = ctx.evidence(f.unit, [e.stmt.line] + _key_def_lines(f, e.extra.get("key")))
                out.append(ctx.finding(self.id, f, [(e.stmt, ())], e.stmt, expl, ev))
        for f in prog.funcs:
            out.extend(self._gated(ctx, f, scoring))
        for f in prog.funcs:
            accs = [a for a in f.events if a.kind == EK.ACCUM] + [a for a in f.lifted if a.kind == EK.SCORE]
            if not accs:
                continue
            out.extend(self._update_before_read(ctx, f, accs))
            out.extend(self._oracle(ctx, f, [a for a in accs if a.kind == EK.ACCUM]))
        return out

    def _gated(self, ctx, f: FuncInfo, scoring):
        """A value read at the gold token (a count keyed by context + target, exact or hashed) that decides whether
        the estimate is used (`if cnt > 0`, `where(c >= 2, ...)`) or how much it weighs (`w = c / (c + k)`, then
        `w * p_ng + (1 - w) * p_model`): the mixture then depends on the gold token beyond its own probability, so
        the scored values are not one distribution over the vocabulary."""
        out = []
        if not (f in scoring or _reaches_scoring(ctx, f)):
            return out
        memo = f.memo
        counts = ctx.prog.incr_roots

        def counted(x) -> bool:      # a count table's value (not a static table such as the byte LUT)
            return bool(memo.get(id(x), 0) & TKEY) and _from_counts(f, x, counts)
        for st in f.stmts:
            hit = None
            for n in st.nodes:
                if isinstance(n, ast.Compare):
                    if any(counted(x) for x in [n.left] + n.comparators):
                        hit = ("decides on it", n)
                        break
                elif isinstance(n, ast.BinOp) and isinstance(n.op, ast.Mult):
                    la, lb = memo.get(id(n.left), 0), memo.get(id(n.right), 0)
                    if (counted(n.left) and lb & LOSS and not lb & TKEY) or \
                            (counted(n.right) and la & LOSS and not la & TKEY):
                        hit = ("weighs the model's probability with it", n)
                        break
            if hit is None:
                continue
            how, node = hit
            expl = (f"{f.name}() reads a value addressed by the context and the gold token and {how} (line "
                    f"{st.line}): whether or how much the n-gram estimate counts depends on the gold token, so the "
                    "scored probabilities are not one normalised distribution over the vocabulary.")
            out.append(ctx.finding(self.id, f, [(st, ())], st, expl, ctx.evidence(f.unit, [st.line])))
            break
        return out

    def _update_before_read(self, ctx, f: FuncInfo, accs):
        out = []
        incs = [e for e in f.events + f.lifted if e.kind == EK.INCR and e.root is not None]
        reads = [e for e in f.events + f.lifted if e.kind == EK.READ and e.root is not None
                 and not e.extra.get("whole")]
        for inc in incs:
            lab = inc.labels | (ctx.prog.resolve(f, inc.labels) if inc.labels >> PARAM_SHIFT else 0)
            target_bearing = bool(lab & TGT) or (lab & VAL and not lab & CTX)
            if not target_bearing or inc.extra.get("bulk"):
                continue
            for r in reads:
                if r.root != inc.root or r.stmt.index <= inc.stmt.index:
                    continue
                cl = common_loops(inc.stmt, r.stmt)
                if not cl:
                    continue
                # the value read must reach a score accumulated later in the same iteration
                read_vars = {root_name(t) for t in _targets(r.stmt.node)} - {None}
                if r.via is not None or not read_vars:
                    read_vars |= {root_name(t) for t in _targets(r.stmt.node)} - {None}
                later = [a for a in accs if a.stmt.index > r.stmt.index and cl[-1] in a.stmt.loops]
                if not later:
                    continue
                if read_vars and not any(read_vars & f.dep_closure(names_in(a.extra.get("value"))
                                                             | {a.extra.get("var")}) for a in later
                                         if a.kind == EK.ACCUM):
                    if all(a.kind == EK.ACCUM for a in later):
                        continue
                expl = (f"In the scoring loop at line {cl[-1].line} of {f.name}(), the table is updated with the "
                        f"current targets (line {inc.stmt.line}) before it is read to score them (line "
                        f"{r.stmt.line}): the target's own count is in its probability.")
                ev = ctx.evidence(f.unit, [cl[-1].line, inc.stmt.line, r.stmt.line])
                out.append(ctx.finding(self.id, f, [(inc.stmt, ())], inc.stmt, expl, ev))
                break
        return out

    def _oracle(self, ctx, f: FuncInfo, accs):
        """A per-token choice between two scores by comparing them: `min(nll_a, nll_b)`, `torch.maximum(lp_a,
        lp_b)`, `where(a < b, a, b)`, or the min/max over a stack of several predictors' scores. Which is better is
        known only with the gold token."""
        out = []
        if not accs:
            return out
        feeding = set()
        for a in accs:
            feeding |= f.dep_closure(names_in(a.extra.get("value")) | {a.extra.get("var")})
        memo = f.memo
        for st in f.stmts:
            s = st.node
            if not any(common_loops(st, a.stmt) or a.stmt is st for a in accs):
                continue
            hit = None
            if isinstance(s, ast.If):
                sides = _loss_compare(f, s.test)
                if sides:
                    for b in s.body:
                        if isinstance(b, ast.Assign) and {root_name(t) for t in b.targets} & feeding \
                                and any(node_key(b.value) == node_key(x) for x in sides):
                            hit = s.test
            else:
                for n in st.nodes:
                    if not isinstance(n, ast.Call):
                        continue
                    name = call_name(n)
                    scores = [a for a in n.args if memo.get(id(a), 0) & LOSS]
                    if name in _PAIRWISE and len(scores) >= 2 and node_key(scores[0]) != node_key(scores[1]):
                        hit = n
                    elif name == "where" and len(n.args) == 3:
                        sides = _loss_compare(f, n.args[0])
                        if sides and {node_key(n.args[1]), node_key(n.args[2])} == {node_key(x) for x in sides}:
                            hit = n
                    elif name in _REDUCERS:
                        base = n.func.value if isinstance(n.func, ast.Attribute) else (n.args[0] if n.args else None)
                        if base is not None and memo.get(id(base), 0) & MULTI and memo.get(id(base), 0) & LOSS:
                            hit = n
                    if hit is not None:
                        break
                tgts = {root_name(t) for t in _targets(s)}
                if hit is not None and not (tgts & feeding or (isinstance(s, ast.AugAssign) and
                                                               root_name(s.target) in feeding)):
                    hit = None
            if hit is None:
                continue
            expl = (f"Line {st.line} of {f.name}() picks, per token, between scores of several predictors by "
                    "comparing them (a target-dependent choice: the better of two losses is known only with the "
                    "gold token), and the choice feeds the totals.")
            out.append(ctx.finding(self.id, f, [(st, ())], st, expl, ctx.evidence(f.unit, [st.line])))
        return out


def _from_counts(f: FuncInfo, node, counts: set, depth: int = 0) -> bool:
    """Is `node` computed from a read of a count table (a table some code increments)?"""
    if node is None or depth > 4:
        return False
    for n in walk(node):
        base = None
        if isinstance(n, ast.Subscript):
            base = n.value
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "get":
            base = n.func.value
        if base is not None and expr_root(f, base) in counts:
            return True
        if isinstance(n, ast.Name):
            for d in f.defs.get(n.id, [])[:4]:
                v = getattr(d.node, "value", None)
                if v is not None and v is not node and _from_counts(f, v, counts, depth + 1):
                    return True
    return False


_PAIRWISE = {"minimum", "maximum", "fmin", "fmax", "min", "max"}
_REDUCERS = {"min", "max", "amin", "amax", "nanmin", "nanmax"}


def _computed_key(ctx, f: FuncInfo, key, depth: int) -> bool:
    """The key is built here (arithmetic/bit operations, or a helper of the program), not merely passed along."""
    if key is None or depth > 3:
        return False
    for n in walk(key):
        if isinstance(n, ast.BinOp) and not isinstance(n.op, (ast.Div, ast.Pow, ast.MatMult)):
            return True
        if isinstance(n, ast.Call) and ctx.prog.resolve_call(f, n.func)[0]:
            return True
    for name in names_in(key):
        for d in f.defs.get(name, [])[:4]:
            v = getattr(d.node, "value", None)
            if isinstance(d.node, ast.AugAssign):
                return True
            if v is not None and _computed_key(ctx, f, v, depth + 1):
                return True
    return False


def _gate_using(f: FuncInfo, names: set):
    """The first statement whose condition compares one of `names` (if/while test, x if c else y, where(c, ..))."""
    for st in f.stmts:
        s = st.node
        tests = []
        if isinstance(s, (ast.If, ast.While)):
            tests.append(s.test)
        for n in st.nodes:
            if isinstance(n, ast.IfExp):
                tests.append(n.test)
            elif isinstance(n, ast.Call) and call_name(n) == "where" and n.args:
                tests.append(n.args[0])
        for t in tests:
            for c in walk(t):
                if isinstance(c, ast.Compare) and names & names_in(c):
                    return st
    return None


def _reaches_scoring(ctx: Context, f: FuncInfo, depth: int = 0) -> bool:
    if depth > 3:
        return False
    for cs in ctx.prog.callers.get(f, []):
        g = cs.caller
        if any(e.kind in (EK.ACCUM, EK.PACCUM) for e in g.events) or _reaches_scoring(ctx, g, depth + 1):
            return True
    return False


def _scoring_functions(ctx: Context) -> set:
    prog = ctx.prog
    direct = {f for f in prog.funcs if any(e.kind in (EK.ACCUM, EK.PACCUM) for e in f.events)}
    out = set(direct)
    frontier = list(direct)
    depth = 0
    while frontier and depth < 4:
        nxt = []
        for f in frontier:
            for cs in f.calls:
                for t in cs.targets:
                    if t not in out:
                        out.add(t)
                        nxt.append(t)
        frontier = nxt
        depth += 1
    return out


def _loss_compare(f: FuncInfo, test):
    """The two sides of a comparison between two per-token losses, else None."""
    for n in walk(test):
        if isinstance(n, ast.Compare) and len(n.ops) == 1 and isinstance(n.ops[0], (ast.Lt, ast.Gt, ast.LtE, ast.GtE)):
            a = f.memo.get(id(n.left), 0)
            b = f.memo.get(id(n.comparators[0]), 0)
            if a & LOSS and b & LOSS:
                return (n.left, n.comparators[0])
    return None


def _targets(s):
    if isinstance(s, ast.Assign):
        return s.targets
    if isinstance(s, (ast.AugAssign, ast.AnnAssign)):
        return [s.target]
    return []


def _src(node) -> str:
    if node is None:
        return "?"
    try:
        s = ast.unparse(node)
    except Exception:  # noqa: BLE001
        return "?"
    return s if len(s) < 90 else s[:87] + "..."


def _key_def_lines(f: FuncInfo, key) -> list[int]:
    out = []
    for n in names_in(key):
        for d in f.defs.get(n, [])[:2]:
            out.append(d.line)
    return out
