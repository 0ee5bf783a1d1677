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

from ..loops import common_loops, loop_var_is_epoch

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
    gradvar: bool
    lines: list[int] = field(default_factory=list)


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
            sites.append(TrainSite(f, s, b, b.labels, gv, lines))
    return sites


def throwaway(site: "TrainSite") -> bool:
    """The optimiser trains an object built in this function (an adapter, a LoRA) that is deleted or never used
    after the training: nothing learned survives to the scoring (e.g. a compile warm-up on a throwaway LoRA)."""
    f = site.func
    if site.step.via is not None:
        return False
    opt = site.step.extra.get("opt")
    params = None
    for e in f.events:
        if e.kind == EK.OPTDEF and e.extra.get("var") == opt:
            params = e.extra.get("params")
    if params is None:
        return False
    roots = {n.id for n in walk(params) if isinstance(n, ast.Name)} - {"self"}
    if not roots:
        return False
    step_idx = site.step.stmt.index
    loop = site.step.stmt.loops[0] if site.step.stmt.loops else None
    for r in roots:
        defs = f.defs.get(r, [])
        if not defs or not all(isinstance(getattr(d.node, "value", None), ast.Call) for d in defs):
            return False
        for st in f.stmts:
            if st.index <= step_idx or (loop is not None and loop in st.loops) or st is loop:
                continue
            if isinstance(st.node, ast.Delete):
                continue
            if r in names_in_own(st.node):
                return False
    return True


def names_in_own(node) -> set:
    from ..astutil import own_exprs
    out = set()
    for e in own_exprs(node):
        out |= names_in(e)
    return out


def _model_params(f: FuncInfo, step: Event) -> bool:
    opt = step.extra.get("opt")
    for e in f.events:
        if e.kind == EK.OPTDEF and e.extra.get("var") == opt:
            return not e.extra.get("gradvar")
    return False


@dataclass
class Judgement:
    kind: str          # legal | pre | after | epoch | notval
    func: FuncInfo     # level where it was decided
    T: Stmt            # the training statement at that level
    A: Stmt | None     # the score statement involved
    chain: list        # CallSites from the site up to `func`
    loop: Stmt | None = None
    labels: int = 0


def judge(ctx: Context, site: TrainSite, max_depth: int = 5) -> list[Judgement]:
    """Walk from a training site up the call graph to the level where scores are accumulated, and say how
    the training relates to the scoring there."""
    prog = ctx.prog
    out: list[Judgement] = []
    frontier = [(site.func, site.step.stmt, site.loss_labels, [])]
    seen = set()
    while frontier:
        f, T, lab, chain = frontier.pop(0)
        if (id(f), id(T)) in seen or len(chain) > max_depth:
            continue
        seen.add((id(f), id(T)))
        scores = [e for e in f.events if e.kind == EK.ACCUM] + [e for e in f.lifted if e.kind == EK.SCORE]
        scores = [a for a in scores if not (a.via is not None and T is a.stmt)]
        resolved = (lab & CONCRETE) | (prog.resolve(f, lab) if lab >> PARAM_SHIFT else 0)
        if scores:
            if not resolved & VAL:
                out.append(Judgement("notval", f, T, None, chain, labels=resolved))
                continue
            out.append(_decide(f, T, scores, chain, resolved))
            continue
        callers = [cs for cs in prog.callers.get(f, []) if cs.kind != "ref" or True]
        if not callers or len(chain) >= max_depth:
            out.append(Judgement("pre" if resolved & VAL else "notval", f, T, None, chain, labels=resolved))
            continue
        for cs in callers:
            if cs.caller is f:
                continue
            nlab = prog.resolve_at(cs, f, lab) if cs.kind != "ref" else (lab & CONCRETE)
            nlab |= lab & CONCRETE
            frontier.append((cs.caller, cs.stmt, nlab, chain + [cs]))
    return out


def _decide(f: FuncInfo, T: Stmt, scores: list[Event], chain, labels) -> Judgement:
    first = None
    after = None
    for a in scores:
        cl = common_loops(a.stmt, T)
        if not cl:
            continue
        if a.stmt.index < T.index or (a.kind == EK.ACCUM and _value_before(f, a, T)):
            if first is None:
                first = (a, cl)
        elif after is None:
            after = (a, cl)
    if first is not None:
        a, cl = first
        for loop in cl:
            if loop_var_is_epoch(loop):
                return Judgement("epoch", f, T, a.stmt, chain, loop, labels)
        return Judgement("legal", f, T, a.stmt, chain, cl[-1], labels)
    if after is not None:
        a, cl = after
        for loop in cl:
            if loop_var_is_epoch(loop):
                return Judgement("epoch", f, T, a.stmt, chain, loop, labels)
        return Judgement("after", f, T, a.stmt, chain, cl[-1], labels)
    later = [a for a in scores if a.stmt.index > T.index]
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
