"""The index of a program: every function (methods, nested functions and each module's top level as a
pseudo-function), its statements in order with the loops, `if`-guards (early exits included) and `with` blocks
around them, classes and import aliases."""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .astutil import FUNCS, LOOPS, _ends_block, _iter_defs, dotted, import_aliases, own_exprs, walk
from .source import SourceUnit
from .vocab import OPTIMIZER_NAMES

if TYPE_CHECKING:
    from .events import Event

# ---------------------------------------------------------------------------------------------------------------
# Index structures
# ---------------------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Guard:
    test: ast.expr
    polarity: bool
    func: "FuncInfo"
    kind: str = "if"


@dataclass(eq=False)
class Stmt:
    node: ast.stmt
    func: "FuncInfo"
    index: int
    loops: tuple = ()        # enclosing loop Stmts, outer -> inner
    guards: tuple = ()       # Guards around it inside its function
    withs: tuple = ()        # context expressions of enclosing `with` blocks
    _own: list | None = None
    _nodes: list | None = None
    stored: set = field(default_factory=set)   # ids of function references the statement stores, not calls

    @property
    def line(self) -> int:
        return getattr(self.node, "lineno", 0)

    @property
    def own(self) -> list:
        if self._own is None:
            self._own = own_exprs(self.node)
        return self._own

    @property
    def nodes(self) -> list:
        """Every node of the statement's own expressions (computed once); a lambda is there, its body is not (the
        lambda is a function of its own)."""
        if self._nodes is None:
            out = []
            for e in self.own:
                out.extend(walk(e, lambdas=False))
            self._nodes = out
        return self._nodes


@dataclass(eq=False)
class CallSite:
    caller: "FuncInfo"
    stmt: Stmt
    node: ast.AST               # ast.Call, or a Name/Attribute passed as a reference
    targets: list               # FuncInfo list
    guards: tuple = ()          # expression-level guards (IfExp / BoolOp) around the call
    kind: str = "call"          # call | ref | init
    receiver: ast.expr | None = None
    sub: int = 0                # order among the functions one call reaches through a container (phase tables)
    bound: ast.Call | None = None   # functools.partial(...) that bound some arguments

    @property
    def pos(self) -> tuple:
        return (self.stmt.index, self.sub)

    @property
    def line(self) -> int:
        return getattr(self.node, "lineno", self.stmt.line)



class FuncInfo:
    def __init__(self, name: str, qualname: str, node: ast.AST, unit: SourceUnit, cls: str | None,
                 parent: "FuncInfo | None", is_module: bool = False):
        self.name, self.qualname, self.node, self.unit = name, qualname, node, unit
        self.cls, self.parent, self.is_module = cls, parent, is_module
        self.params: list[str] = []
        self.defaults: dict[str, ast.expr] = {}
        self.vararg: str | None = None
        self.kwarg: str | None = None
        self.stmts: list[Stmt] = []
        self.stmt_of: dict[int, Stmt] = {}
        self.local_names: set[str] = set()
        self.local_defs: dict[str, FuncInfo] = {}
        self.labels: dict[str, int] = defaultdict(int)
        self.vdefs: dict[str, dict[int, list]] = defaultdict(dict)   # name -> stmt index -> [loop ids, labels]
        self.deps: dict[str, set[str]] = defaultdict(set)
        self.defs: dict[str, list[Stmt]] = defaultdict(list)
        self.types: dict[str, str] = {}          # var -> user class name
        self.ret_type: str | None = None         # the user class every `return` of a factory builds
        self.fvals: dict[str, list] = {}         # var -> [(function, receiver, partial call)] it may hold
        self.value_calls: list = []              # calls through values, resolved after fvals
        self.value_sites: list = []
        self.ret_labels = 0
        self.ret_elems: list[int] | None = None
        self.calls: list[CallSite] = []
        self.def_stmt: Stmt | None = None
        self.events: list[Event] = []
        self.lifted: list[Event] = []
        self.report_vars: set[str] = set()
        self.ctx_index: set[tuple[str, str]] = set()
        self.memo: dict[int, int] = {}
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            allp = list(a.posonlyargs) + list(a.args)
            self.params = [p.arg for p in allp]
            defaults = list(a.defaults)
            for p, d in zip(allp[len(allp) - len(defaults):], defaults):
                self.defaults[p.arg] = d
            for p, d in zip(a.kwonlyargs, a.kw_defaults):
                self.params.append(p.arg)
                if d is not None:
                    self.defaults[p.arg] = d
            self.vararg = a.vararg.arg if a.vararg else None
            self.kwarg = a.kwarg.arg if a.kwarg else None
            if self.vararg:
                self.params.append(self.vararg)
            if self.kwarg:
                self.params.append(self.kwarg)
            self.local_names.update(self.params)

    def __repr__(self) -> str:
        return f"<FuncInfo {self.qualname}>"

    @property
    def is_method(self) -> bool:
        return self.cls is not None and bool(self.params) and self.params[0] in ("self", "cls")

    @property
    def line(self) -> int:
        return getattr(self.node, "lineno", 1)

    def dep_closure(self, names) -> set[str]:
        """The names given (empty ones dropped) and every variable they are computed from in this function
        (transitively through self.deps)."""
        out: set[str] = set()
        stack = [n for n in names if n]
        while stack:
            n = stack.pop()
            if n in out:
                continue
            out.add(n)
            stack.extend(self.deps.get(n, ()))
        return out

    def events_of(self, *kinds: str, lifted: bool = True) -> list[Event]:
        evs = [e for e in self.events if e.kind in kinds]
        if lifted:
            evs += [e for e in self.lifted if e.kind in kinds]
        return evs


@dataclass
class ClassInfo:
    name: str
    node: ast.ClassDef
    unit: SourceUnit
    bases: list[str]
    methods: dict[str, FuncInfo] = field(default_factory=dict)




class ProgramIndex:
    def __init__(self, units: list[SourceUnit]):
        self.units = units
        self.funcs: list[FuncInfo] = []
        self.modules: dict[int, FuncInfo] = {}          # id(unit) -> module pseudo-function
        self.module_defs: dict[str, dict[str, FuncInfo]] = defaultdict(dict)   # module -> name -> func
        self.global_defs: dict[str, list[FuncInfo]] = defaultdict(list)      # module-level functions by name
        self.classes: dict[str, list[ClassInfo]] = defaultdict(list)
        self.methods_by_name: dict[str, list[FuncInfo]] = defaultdict(list)
        self.aliases: dict[int, dict[str, str]] = {}     # id(unit) -> local name -> module[.attr]
        self.attr_types: dict[str, str] = {}
        self.callers: dict[FuncInfo, list[CallSite]] = defaultdict(list)
        self.optimizer_classes: set[str] = set(OPTIMIZER_NAMES)
        self.module_names = {u.module for u in units} | {u.path.stem for u in units}
        self.lambdas: dict[int, FuncInfo] = {}             # id(ast.Lambda) -> its function
        for u in units:
            self._index_unit(u)
        self._find_optimizer_classes()
        todo = list(self.funcs)
        while todo:
            f = todo.pop()
            self._structure(f)
            todo.extend(self._index_lambdas(f))

    # -- indexing -------------------------------------------------------------------------------------------
    def _index_unit(self, unit: SourceUnit) -> None:
        mod = FuncInfo("<module>", f"{unit.module}.<module>", unit.tree, unit, None, None, is_module=True)
        self.modules[id(unit)] = mod
        self.funcs.append(mod)
        self.aliases[id(unit)] = import_aliases(unit.nodes, relative=True)
        self._index_body(unit.tree.body, unit, mod, None, prefix=unit.module)

    def _index_body(self, body, unit, owner: FuncInfo, cls: ClassInfo | None, prefix: str) -> None:
        for node in _iter_defs(body):
            if isinstance(node, FUNCS):
                qual = f"{prefix}.{node.name}"
                fi = FuncInfo(node.name, qual, node, unit, cls.name if cls else None,
                              owner if not owner.is_module else None)
                self.funcs.append(fi)
                if cls is not None:
                    cls.methods.setdefault(node.name, fi)
                    self.methods_by_name[node.name].append(fi)
                elif owner.is_module:
                    self.module_defs[unit.module][node.name] = fi
                    self.global_defs[node.name].append(fi)
                else:
                    owner.local_defs[node.name] = fi
                self._index_body(node.body, unit, fi, None, prefix=qual)
            elif isinstance(node, ast.ClassDef):
                ci = ClassInfo(node.name, node, unit, [dotted(b).split(".")[-1] for b in node.bases])
                self.classes[node.name].append(ci)
                self._index_body(node.body, unit, owner, ci, prefix=f"{prefix}.{node.name}")
                owner.local_names.add(node.name)

    def _find_optimizer_classes(self) -> None:
        changed = True
        while changed:
            changed = False
            for name, cis in self.classes.items():
                if name in self.optimizer_classes:
                    continue
                for ci in cis:
                    if any(b in self.optimizer_classes or b == "Optimizer" for b in ci.bases):
                        self.optimizer_classes.add(name)
                        changed = True

    def _index_lambdas(self, f: FuncInfo) -> list[FuncInfo]:
        """Each lambda written in f's statements becomes a function (nested in f) whose body returns its
        expression."""
        out = []
        for st in f.stmts:
            for n in st.nodes:
                if type(n) is ast.Lambda and id(n) not in self.lambdas:
                    fi = FuncInfo("<lambda>", f"{f.qualname}.<lambda:{n.lineno}>", n, f.unit, None, f)
                    self.lambdas[id(n)] = fi
                    self.funcs.append(fi)
                    out.append(fi)
        return out

    # -- statements -----------------------------------------------------------------------------------------
    def _structure(self, f: FuncInfo) -> None:
        if isinstance(f.node, ast.Lambda):
            body = [ast.copy_location(ast.Return(value=f.node.body), f.node.body)]
        else:
            body = f.node.body
        counter = [0]

        def visit_block(stmts, loops, guards, withs):
            guards = tuple(guards)
            for s in stmts:
                st = Stmt(s, f, counter[0], tuple(loops), guards, tuple(withs))
                counter[0] += 1
                f.stmts.append(st)
                f.stmt_of[id(s)] = st
                if isinstance(s, FUNCS):
                    f.local_names.add(s.name)
                    continue
                if isinstance(s, ast.ClassDef):
                    # class bodies at module level: their assignments are attributes (handled as statements)
                    visit_block([b for b in s.body if not isinstance(b, (FUNCS, ast.ClassDef))], loops,
                                guards, withs)
                    continue
                self._collect_names(f, s, st)
                if isinstance(s, ast.If):
                    visit_block(s.body, loops, guards + (Guard(s.test, True, f),), withs)
                    visit_block(s.orelse, loops, guards + (Guard(s.test, False, f),), withs)
                    if not s.orelse and s.body and _ends_block(s.body[-1]):
                        guards = guards + (Guard(s.test, False, f, "early-exit"),)
                elif isinstance(s, LOOPS):
                    inner = guards + ((Guard(s.test, True, f, "while"),) if isinstance(s, ast.While) else ())
                    visit_block(s.body, tuple(loops) + (st,), inner, withs)
                    visit_block(s.orelse, loops, guards, withs)
                elif isinstance(s, (ast.With, ast.AsyncWith)):
                    visit_block(s.body, loops, guards, tuple(withs) + tuple(i.context_expr for i in s.items))
                elif isinstance(s, ast.Try) or type(s).__name__ == "TryStar":
                    visit_block(s.body, loops, guards, withs)
                    for h in s.handlers:
                        visit_block(h.body, loops, guards, withs)
                    visit_block(s.orelse, loops, guards, withs)
                    visit_block(s.finalbody, loops, guards, withs)
                elif type(s).__name__ == "Match":
                    for case in s.cases:
                        visit_block(case.body, loops, guards, withs)

        visit_block(body, (), (), ())
        # (x, i) for each `x[i - k]` / `x[i + j - k]`: x is read behind index i, so x[i] is a target (taint.py)
        for st in f.stmts:
            for sub in st.nodes:
                if isinstance(sub, ast.Subscript) and isinstance(sub.slice, ast.BinOp):
                    left = sub.slice
                    has_sub = False
                    while isinstance(left, ast.BinOp):
                        has_sub = has_sub or isinstance(left.op, ast.Sub)
                        left = left.left
                    if has_sub and isinstance(left, ast.Name):
                        f.ctx_index.add((ast.dump(sub.value), left.id))

    @staticmethod
    def _collect_names(f: FuncInfo, s: ast.stmt, st: Stmt) -> None:
        targets = []
        if isinstance(s, ast.Assign):
            targets = s.targets
        elif isinstance(s, (ast.AugAssign, ast.AnnAssign)):
            targets = [s.target]
        elif isinstance(s, (ast.For, ast.AsyncFor)):
            targets = [s.target]
        elif isinstance(s, (ast.With, ast.AsyncWith)):
            targets = [i.optional_vars for i in s.items if i.optional_vars is not None]
        elif isinstance(s, (ast.Import, ast.ImportFrom)):
            for a in s.names:
                f.local_names.add((a.asname or a.name).split(".")[0])
        for t in targets:
            for n in walk(t):
                if isinstance(n, ast.Name):
                    f.local_names.add(n.id)
        for sub in st.nodes:     # comprehension variables live in the comprehension's own scope: not collected
            if isinstance(sub, ast.NamedExpr) and isinstance(sub.target, ast.Name):
                f.local_names.add(sub.target.id)
