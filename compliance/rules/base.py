"""What rules share: the audit context (program, flags, reachability per configuration), the way a finding's
status is decided, and the training-site judgement (is a backward+step on validation data preceded, in the same
iteration, by the scoring of that data?) used by TTT-PRE, SLOT and RESCORE."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from ..astutil import names_in, walk

from ..events import EK, Event

from ..index import FuncInfo, Stmt

from ..labels import CONCRETE, GRADVAR, LOADER, PARAM_SHIFT, TRAIN, VAL

from ..loops import common_loops, is_epoch_loop

from ..program import Program
from ..reachability import Evaluator, FlagTable, Reachability, Status
from ..report import ACTIVE, DORMANT, Finding
from ..rulings import RULINGS


class Rule:
    """One registered check (see registry.py): a rule id, the context it reads, its fixtures, a detector."""
    id = ""
    title = ""
    scope = "program"            # program | logs | data
    fixtures: tuple[str, ...] = ()   # fixture folders under tests/fixtures/compliance/

    @property
    def ruling(self) -> str:
        return RULINGS[self.id]

    def check(self, ctx) -> list[Finding]:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class LogContext:
    """What a record folder's logs and submission.json say, for the rules over logs (LIMITS, STATS)."""
    logs: list                   # logparse.RunLog
    script_bytes: int | None     # bytes of the submitted script(s)
    script_name: str
    submission: dict | None
    submission_name: str
    non_record: bool
    limits: dict
    reference_loss: float | None = None
    reference_bpb: float | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class DataContext:
    """The shard folder given with --data, for the rules over data (VAL-TRAIN provenance)."""
    folder: object               # pathlib.Path
    limits: dict
    warnings: list[str] = field(default_factory=list)


@dataclass
class Config:
    name: str                    # "defaults", "--set", or a log file name
    ev: Evaluator
    reach: Reachability


class Context:
    def __init__(self, prog: Program, flags: FlagTable, base: Config, runs: list[Config]):
        self.prog, self.flags, self.base, self.runs = prog, flags, base, runs
        self.warnings: list[str] = []
        self._sites: list[TrainSite] | None = None

    # -- status of a code path ---------------------------------------------------------------------------------
    def path_status(self, cfg: Config, top: FuncInfo, hops: list[tuple[Stmt, tuple]]) -> Status:
        fs = cfg.reach.status.get(top, Status(2))
        if fs.level == 2:
            return fs
        blockers = list(fs.blockers)
        for st, extra in hops:
            blockers += cfg.reach.false_guards(tuple(st.guards) + tuple(extra))
        return Status(0 if not blockers else 1, tuple(blockers))

    def finding(self, rule: str, top: FuncInfo, hops: list[tuple[Stmt, tuple]], line_stmt: Stmt | None,
                explanation: str, evidence: str, line: int | None = None, when_active: str = ACTIVE,
                unit=None) -> Finding:
        st0 = self.path_status(self.base, top, hops)
        unit = unit or (line_stmt.func.unit if line_stmt is not None else top.unit)
        ln = line if line is not None else (line_stmt.line if line_stmt is not None else top.line)
        flag = None
        runs = []
        if st0.level == 0:
            status = when_active
        else:
            status = DORMANT
            if st0.level == 2:
                explanation += " The code is never called (dead code)."
                flag = None
            else:
                acts = [self.base.ev.activation(g) for g in st0.blockers]
                flag = " ".join(dict.fromkeys(a for a in acts if a))
                explanation += f" Dormant: runs only with {flag}."
            for cfg in self.runs:
                if self.path_status(cfg, top, hops).level == 0:
                    runs.append(cfg.name)
            if runs:
                status = when_active
                explanation += f" The logged run(s) {', '.join(runs)} switched it on."
        return Finding(rule=rule, status=status, file=unit.display, line=ln, evidence=evidence,
                       explanation=explanation, ruling=RULINGS[rule], flag=flag, runs=runs, decoded=unit.decoded)

    @staticmethod
    def evidence(unit, lines: list[int], limit: int = 5) -> str:
        out = []
        seen = set()
        for ln in sorted(set(l for l in lines if l)):
            if ln in seen:
                continue
            seen.add(ln)
            text = unit.line(ln).strip()
            if len(text) > 160:
                text = text[:157] + "..."
            out.append(f"{ln}: {text}")
            if len(out) >= limit:
                break
        return "\n".join(out)

    # -- training sites ------------------------------------------------------------------------------------------
    def train_sites(self) -> list["TrainSite"]:
        if self._sites is None:
            self._sites = find_train_sites(self.prog)
        return self._sites


@dataclass(eq=False)
class TrainSite:
    func: FuncInfo
    step: Event
    backward: Event
    loss_labels: int
    gradvar: bool                # what is trained is a requires-grad tensor, not a module's parameters
    lines: list[int] = field(default_factory=list)
    delta: bool = False          # ... added directly to hidden states or logits (a SLOT delta / logit bias)


def find_train_sites(prog: Program) -> list[TrainSite]:
    sites = []
    for f in prog.funcs:
        steps = [e for e in f.events if e.kind in (EK.STEP, EK.UPDATE)]
        steps += [e for e in f.lifted if e.kind in (EK.STEP, EK.UPDATE)]
        if not steps:
            continue
        backs = [e for e in f.events if e.kind == EK.BACKWARD] + [e for e in f.lifted if e.kind == EK.BACKWARD]
        if not backs:
            continue
        done = set()
        for s in steps:
            if s.via is not None and any(b.via is s.via for b in backs):
                # backward and step both inside the same callee: that callee is the site
                continue
            inner = s.stmt.loops[-1] if s.stmt.loops else None
            cand = [b for b in backs if inner is not None and inner in b.stmt.loops] or \
                   [b for b in backs if b.stmt.index <= s.stmt.index] or backs
            b = cand[-1] if cand[-1].stmt.index <= s.stmt.index else cand[0]
            key = id(s.stmt)
            if key in done:
                continue
            done.add(key)
            gv = bool(s.extra.get("gradvar")) or bool(b.labels & GRADVAR and not _model_params(f, s))
            lines = [b.stmt.line, s.stmt.line] + ([inner.line] if inner is not None else [])
            sites.append(TrainSite(f, s, b, b.labels, gv, lines, gv and _additive(f)))
    return sites


def trained_roots(site: "TrainSite") -> set[str] | None:
    """Local names of what the training moves (the optimiser's parameters, the tensor an update writes), when that
    is known; None when it is not (an optimiser from elsewhere, parameters of the model the caller passed)."""
    f = site.func
    if site.step.via is not None:
        return None
    params = None
    if site.step.kind == EK.STEP:
        opt = site.step.extra.get("opt")
        for e in f.events:
            if e.kind == EK.OPTDEF and e.extra.get("var") == opt:
                params = e.extra.get("params")
    else:
        node = site.step.node
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            params = node.func.value
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            params = node.targets[0] if isinstance(node, ast.Assign) else node.target
    if params is None:
        return None
    roots = {n.id for n in walk(params) if isinstance(n, ast.Name)} - {"self", "cls"}
    return roots or None


def trained_locally(site: "TrainSite") -> bool:
    """What the training moves is created in this function (a probe, an adapter, a LoRA, a delta) and never leaves
    it: not returned or yielded, not stored in an attribute, a container or a global. Then the training can only
    change scores computed in this function (or returned from it), not the model scored elsewhere."""
    roots = trained_roots(site)
    if not roots:
        return False
    f = site.func
    for r in roots:
        if r in f.params or r not in f.local_names:
            return False
        defs = f.defs.get(r, [])
        if not defs or not all(isinstance(d.node, (ast.Assign, ast.AnnAssign)) and isinstance(d.node.value, ast.Call)
                               for d in defs):
            return False
    for st in f.stmts:
        s = st.node
        if isinstance(s, (ast.Return, ast.Expr)) and s.value is not None:
            v = s.value.value if isinstance(s.value, (ast.Yield, ast.YieldFrom)) else s.value
            if isinstance(s, ast.Return) or isinstance(s.value, (ast.Yield, ast.YieldFrom)):
                if _handed_on(v) & roots:
                    return False
            if isinstance(s.value, ast.Call) and isinstance(s.value.func, ast.Attribute) \
                    and s.value.func.attr in ("append", "extend", "insert", "add", "update", "setdefault") \
                    and any(_bare_names(x) & roots for x in s.value.args):
                return False
        elif isinstance(s, (ast.Assign, ast.AnnAssign)) and s.value is not None:
            tgts = s.targets if isinstance(s, ast.Assign) else [s.target]
            if any(not isinstance(t, ast.Name) for t in tgts) and _bare_names(s.value) & roots:
                return False
        elif isinstance(s, (ast.Global, ast.Nonlocal)) and set(s.names) & roots:
            return False
    return True


def _handed_on(e) -> set:
    """Names a returned expression hands on as objects or views (`A`, `A.detach()`, `(A, B)`, `{"a": A}`): every
    name in it except those only called (`probe(x)` returns an output, not the probe)."""
    if e is None:
        return set()
    called = {id(n.func) for n in walk(e) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    return {n.id for n in walk(e) if isinstance(n, ast.Name) and id(n) not in called}


def _bare_names(e) -> set:
    """Names an expression hands on as objects (itself, or inside a tuple/list/dict display), not through calls."""
    out = set()
    stack = [e]
    while stack:
        x = stack.pop()
        if isinstance(x, ast.Name):
            out.add(x.id)
        elif isinstance(x, (ast.Tuple, ast.List, ast.Set)):
            stack.extend(x.elts)
        elif isinstance(x, ast.Dict):
            stack.extend(v for v in x.values if v is not None)
        elif isinstance(x, ast.Starred):
            stack.append(x.value)
    return out


def names_in_own(node) -> set:
    from ..astutil import own_exprs
    out = set()
    for e in own_exprs(node):
        out |= names_in(e)
    return out


_VIEWS = {"unsqueeze", "expand", "expand_as", "view", "reshape", "detach", "to", "float", "half", "bfloat16",
          "squeeze", "repeat", "contiguous", "clone", "type_as"}


def _additive(f: FuncInfo) -> bool:
    """A requires-grad tensor of f is added as it is (or a view of it) to something: `hidden + delta`,
    `logits + bias[None]`: a SLOT delta or logit bias, not the factors of an adapter (`h @ A @ B`)."""
    for st in f.stmts:
        for n in st.nodes:
            if isinstance(n, ast.BinOp) and isinstance(n.op, (ast.Add, ast.Sub)):
                for side in (n.left, n.right):
                    while True:
                        if isinstance(side, ast.Subscript):
                            side = side.value
                        elif isinstance(side, ast.Call) and isinstance(side.func, ast.Attribute) \
                                and side.func.attr in _VIEWS:
                            side = side.func.value
                        else:
                            break
                    if isinstance(side, ast.Name) and f.labels.get(side.id, 0) & GRADVAR:
                        return True
    return False


def _model_params(f: FuncInfo, step: Event) -> bool:
    opt = step.extra.get("opt")
    for e in f.events:
        if e.kind == EK.OPTDEF and e.extra.get("var") == opt:
            return not e.extra.get("gradvar")
    return False


@dataclass
class Judgement:
    kind: str          # legal | pre | after | epoch | notval | local
    func: FuncInfo     # level where it was decided
    T: Stmt            # the training statement at that level
    A: Stmt | None     # the score statement involved
    chain: list        # CallSites from the site up to `func`
    loop: Stmt | None = None
    labels: int = 0


def _pos(e: Event) -> tuple:
    return (e.stmt.index, e.via.sub if e.via is not None else 0)


def judge(ctx: Context, site: TrainSite, max_depth: int = 5) -> list[Judgement]:
    """Walk from a training site up the call graph to the level where scores are accumulated, and say how
    the training relates to the scoring there. Positions are (statement, order of the function among those one
    call reaches through a container), so a table of phases is judged in its order. What is trained only inside
    the function (trained_locally) is judged there: it cannot change the model scored elsewhere."""
    prog = ctx.prog
    out: list[Judgement] = []
    frontier = [(site.func, site.step.stmt, _pos(site.step)[1], site.loss_labels, [])]
    local = trained_locally(site)
    roots = trained_roots(site) if local else None
    seen = set()
    while frontier:
        f, T, tsub, lab, chain = frontier.pop(0)
        if (id(f), id(T), tsub) in seen or len(chain) > max_depth:
            continue
        seen.add((id(f), id(T), tsub))
        tpos = (T.index, tsub)
        scores = [e for e in f.events if e.kind == EK.ACCUM] + [e for e in f.lifted if e.kind == EK.SCORE]
        scores = [a for a in scores if not (a.via is not None and _pos(a) == tpos)]
        if local and not chain:       # only scores computed with the locally trained object can depend on it
            scores = [a for a in scores if _uses(f, a, roots)]
        resolved = (lab & CONCRETE) | (prog.resolve(f, lab) if lab >> PARAM_SHIFT else 0)
        if scores:
            if not resolved & VAL:
                out.append(Judgement("notval", f, T, None, chain, labels=resolved))
                continue
            out.append(_decide(f, T, tpos, scores, chain, resolved))
            continue
        if local and not chain:
            out.append(Judgement("local", f, T, None, chain, labels=resolved))
            continue
        callers = prog.callers.get(f, [])
        if not callers or len(chain) >= max_depth:
            out.append(Judgement("pre" if resolved & VAL else "notval", f, T, None, chain, labels=resolved))
            continue
        for cs in callers:
            if cs.caller is f:
                continue
            nlab = prog.resolve_at(cs, f, lab) if cs.kind != "ref" else (lab & CONCRETE)
            nlab |= lab & CONCRETE
            frontier.append((cs.caller, cs.stmt, cs.sub, nlab, chain + [cs]))
    return out


def _uses(f: FuncInfo, a: Event, roots: set) -> bool:
    """Does the score event use one of `roots` (directly or through the variables its value is computed from)?"""
    if a.kind == EK.ACCUM:
        names = names_in(a.extra.get("value")) | {a.extra.get("var")}
    else:
        names = names_in(a.node)
    seen, stack = set(), [n for n in names if n]
    while stack:
        n = stack.pop()
        if n in roots:
            return True
        if n in seen:
            continue
        seen.add(n)
        stack.extend(f.deps.get(n, ()))
    return False


def _decide(f: FuncInfo, T: Stmt, tpos: tuple, scores: list[Event], chain, labels) -> Judgement:
    first = None
    after = None
    for a in sorted(scores, key=_pos):
        cl = common_loops(a.stmt, T)
        if not cl:
            continue
        if _pos(a) < tpos or (a.kind == EK.ACCUM and _value_before(f, a, T)):
            if first is None:
                first = (a, cl)
        elif after is None:
            after = (a, cl)
    if first is not None:
        a, cl = first
        for loop in cl:
            if is_epoch_loop(loop):
                return Judgement("epoch", f, T, a.stmt, chain, loop, labels)
        return Judgement("legal", f, T, a.stmt, chain, cl[-1], labels)
    if after is not None:
        a, cl = after
        for loop in cl:
            if is_epoch_loop(loop):
                return Judgement("epoch", f, T, a.stmt, chain, loop, labels)
        return Judgement("after", f, T, a.stmt, chain, cl[-1], labels)
    later = sorted((a for a in scores if _pos(a) > tpos), key=_pos)
    return Judgement("pre", f, T, (later[0].stmt if later else None), chain, None, labels)


def _value_before(f: FuncInfo, a: Event, T: Stmt) -> bool:
    """The accumulated value was computed before the training statement (one forward pass serving both)."""
    if a.stmt.index < T.index:
        return True
    value = a.extra.get("value")
    names = names_in(value)
    if not names:
        return False
    for n in names:
        for d in f.defs.get(n, []):
            if T.index < d.index < a.stmt.index:
                return False
    return True


def data_labels_text(labels: int) -> str:
    parts = []
    if labels & VAL:
        parts.append("validation")
    if labels & TRAIN:
        parts.append("training")
    if labels & LOADER:
        parts.append("loader")
    return "+".join(parts) or "other"
