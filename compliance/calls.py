"""Call resolution: which functions a call (or a function passed by reference) may reach, and which
expressions a call site passes for each parameter."""

from __future__ import annotations

import ast

from .astutil import children, own_exprs
from .index import CallSite, ClassInfo, FuncInfo, Guard, Stmt
from .vocab import GENERIC_METHODS


class CallResolver:
    # -- call resolution ------------------------------------------------------------------------------------
    def lookup_name(self, f: FuncInfo, name: str) -> tuple[list[FuncInfo], bool]:
        """Functions a bare name refers to from inside f; bool: it is a class (instantiation)."""
        g = f
        while g is not None:
            if name in g.local_defs:
                return [g.local_defs[name]], False
            g = g.parent
        unit = f.unit
        if name in self.module_defs[unit.module]:
            return [self.module_defs[unit.module][name]], False
        al = self.aliases.get(id(unit), {})
        if name in al:
            mod, _, attr = al[name].rpartition(".")
            if mod and attr in self.module_defs.get(mod.split(".")[-1], {}):
                return [self.module_defs[mod.split(".")[-1]][attr]], False
            if mod and attr in self.classes:
                return self._class_init(attr), True
        if name in self.classes:
            return self._class_init(name), True
        if name in self.global_defs:   # exec()'d siblings share the caller's globals
            return list(self.global_defs[name]), False
        return [], False

    def _class_init(self, cname: str) -> list[FuncInfo]:
        out = []
        for ci in self.class_chain(cname):
            if "__init__" in ci.methods:
                out.append(ci.methods["__init__"])
                break
        return out

    def class_chain(self, cname: str, depth: int = 0) -> list[ClassInfo]:
        out = []
        for ci in self.classes.get(cname, []):
            out.append(ci)
            if depth < 6:
                for b in ci.bases:
                    if b != cname:
                        out.extend(self.class_chain(b, depth + 1))
        return out

    def methods_of(self, cname: str, mname: str) -> list[FuncInfo]:
        for ci in self.class_chain(cname):
            if mname in ci.methods:
                return [ci.methods[mname]]
        return []

    def resolve_call(self, f: FuncInfo, func: ast.expr) -> tuple[list[FuncInfo], str, ast.expr | None]:
        """(targets, kind, receiver) for the callee expression `func` evaluated in f."""
        if isinstance(func, ast.Name):
            ts, is_cls = self.lookup_name(f, func.id)
            return ts, ("init" if is_cls else "call"), None
        if isinstance(func, ast.Attribute):
            recv = func.value
            m = func.attr
            if isinstance(recv, ast.Name):
                al = self.aliases.get(id(f.unit), {})
                modname = al.get(recv.id, recv.id if recv.id in self.module_names else None)
                if modname is not None and (recv.id not in f.local_names or f.is_module):
                    mod = modname.split(".")[-1]
                    if m in self.module_defs.get(mod, {}):
                        return [self.module_defs[mod][m]], "call", None
                    if m in self.classes:
                        return self._class_init(m), "init", None
                if recv.id in ("self", "cls") and f.cls:
                    return self.methods_of(f.cls, m), "call", recv
                t = f.types.get(recv.id) or self._outer_type(f, recv.id)
                if t:
                    return self.methods_of(t, m), "call", recv
            if isinstance(recv, ast.Attribute) and recv.attr in self.attr_types:
                return self.methods_of(self.attr_types[recv.attr], m), "call", recv
            if isinstance(recv, ast.Call) and isinstance(recv.func, ast.Name) and recv.func.id == "super" and f.cls:
                for ci in self.classes.get(f.cls, []):
                    for b in ci.bases:
                        ms = self.methods_of(b, m)
                        if ms:
                            return ms, "call", ast.Name(id="self", ctx=ast.Load())
                return [], "call", None
            if m in GENERIC_METHODS or m.startswith("__"):
                return [], "call", recv
            return list(self.methods_by_name.get(m, [])), "call", recv
        return [], "call", None

    def _outer_type(self, f: FuncInfo, name: str) -> str | None:
        g = f.parent
        while g is not None:
            if name in g.types:
                return g.types[name]
            g = g.parent
        mod = self.modules.get(id(f.unit))
        return mod.types.get(name) if mod is not None else None

    def resolve_all(self) -> None:
        """Call sites of every function, then what the calls tell about types: a function that returns an
        instance of a class (a factory), and parameters whose arguments are of one class at every call site (an
        object handed to the evaluation). Calls of functions whose types changed are resolved again (twice at
        most), so `upd.step()` on an `Updater` argument reaches `Updater.step`."""
        for f in self.funcs:
            self._resolve_calls(f)
        self._link_callers(self.funcs)
        for _ in range(2):
            dirty = self._infer_types()
            if not dirty:
                break
            for f in dirty:
                for cs in f.calls:
                    for t in cs.targets:
                        lst = self.callers.get(t)
                        if lst is not None and cs in lst:
                            lst.remove(cs)
                f.calls = []
                self._resolve_calls(f)
            self._link_callers(dirty)

    def _link_callers(self, funcs) -> None:
        for f in funcs:
            for cs in f.calls:
                for t in cs.targets:
                    self.callers[t].append(cs)

    def _type_of(self, f: FuncInfo, e: ast.expr) -> str | None:
        if isinstance(e, ast.Name):
            return f.types.get(e.id) or (self._outer_type(f, e.id) if e.id not in f.params else None)
        if isinstance(e, ast.Call):
            return _class_name_of_call(e, self, f)
        if isinstance(e, ast.Attribute):
            return self.attr_types.get(e.attr)
        return None

    def _infer_types(self) -> set:
        dirty: set = set()
        for f in self.funcs:        # factories: every `return` gives an instance of one class
            if f.is_module or getattr(f, "ret_type", None):
                continue
            rets = [st.node.value for st in f.stmts if isinstance(st.node, ast.Return) and st.node.value is not None]
            kinds = {self._type_of(f, r) for r in rets}
            if rets and len(kinds) == 1 and None not in kinds:
                f.ret_type = kinds.pop()
                dirty.update(cs.caller for cs in self.callers.get(f, ()))
        for f in self.funcs:        # parameters of one class at every call site
            if f.is_module:
                continue
            sites = [cs for cs in self.callers.get(f, ()) if cs.kind != "ref" and isinstance(cs.node, ast.Call)]
            if not sites:
                continue
            for i, pname in enumerate(f.params):
                if pname in ("self", "cls") or pname in f.types:
                    continue
                kinds = set()
                for cs in sites:
                    for e in self.arg_expr(cs, f, i)[:1]:
                        kinds.add(self._type_of(cs.caller, e))
                kinds.discard(None)
                if len(kinds) == 1:
                    f.types[pname] = kinds.pop()
                    dirty.add(f)
        return dirty

    def _resolve_calls(self, f: FuncInfo) -> None:
        # variable types first (x = ClassName(...), x = factory()), so method calls on x resolve
        for st in f.stmts:
            s = st.node
            if isinstance(s, ast.Assign) and isinstance(s.value, ast.Call):
                cname = _class_name_of_call(s.value, self, f)
                if cname:
                    for t in s.targets:
                        if isinstance(t, ast.Name):
                            f.types[t.id] = cname
                        elif isinstance(t, ast.Attribute):
                            self.attr_types[t.attr] = cname
        for st in f.stmts:
            nodes = st.nodes
            if any(type(n) in (ast.IfExp, ast.BoolOp) for n in nodes):
                for expr in own_exprs(st.node):
                    self._calls_in(f, st, expr, ())
            else:
                self._calls_flat(f, st, nodes)

    def _calls_flat(self, f: FuncInfo, st: Stmt, nodes: list) -> None:
        """`_calls_in` for a statement without expression-level guards: one pass over its nodes."""
        funcs = {id(n.func) for n in nodes if type(n) is ast.Call}
        for node in nodes:
            t = type(node)
            if t is ast.Call:
                ts, kind, recv = self.resolve_call(f, node.func)
                if ts:
                    f.calls.append(CallSite(f, st, node, ts, (), kind, recv))
            elif id(node) in funcs:
                continue
            elif t is ast.Name and type(node.ctx) is ast.Load:
                ts, is_cls = self.lookup_name(f, node.id)
                if ts and not is_cls:
                    f.calls.append(CallSite(f, st, node, ts, (), "ref", None))
            elif t is ast.Attribute and f.cls and type(node.value) is ast.Name and node.value.id == "self":
                ms = self.methods_of(f.cls, node.attr)
                if ms:
                    f.calls.append(CallSite(f, st, node, ms, (), "ref", node.value))

    def _calls_in(self, f: FuncInfo, st: Stmt, node: ast.AST, guards: tuple, func_pos: bool = False) -> None:
        """Call sites (and functions passed by reference) in one expression, with the expression-level guards
        (`x if c else y`, `c and f()`) around them; iterative (explicit stack), in source order."""
        stack = [(node, guards, func_pos)]
        while stack:
            node, guards, func_pos = stack.pop()
            todo = []
            if isinstance(node, ast.IfExp):
                todo = [(node.test, guards, False),
                        (node.body, guards + (Guard(node.test, True, f, "ifexp"),), False),
                        (node.orelse, guards + (Guard(node.test, False, f, "ifexp"),), False)]
            elif isinstance(node, ast.BoolOp):
                g = guards
                for i, v in enumerate(node.values):
                    todo.append((v, g, False))
                    if i < 16:    # a call after 10,000 `and`s: the first 16 operands guard it (bounded, not n^2)
                        g = g + (Guard(v, isinstance(node.op, ast.And), f, "boolop"),)
            elif isinstance(node, ast.Call):
                ts, kind, recv = self.resolve_call(f, node.func)
                if ts:
                    f.calls.append(CallSite(f, st, node, ts, guards, kind, recv))
                todo = [(node.func, guards, True)] + [(a, guards, False) for a in node.args] + \
                       [(k.value, guards, False) for k in node.keywords]
            elif isinstance(node, ast.Lambda):
                todo = [(node.body, guards, False)]
            elif not func_pos and isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                ts, is_cls = self.lookup_name(f, node.id)
                if ts and not is_cls:
                    f.calls.append(CallSite(f, st, node, ts, guards, "ref", None))
            else:
                if not func_pos and isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                        and node.value.id in ("self",) and f.cls:
                    ms = self.methods_of(f.cls, node.attr)
                    if ms:
                        f.calls.append(CallSite(f, st, node, ms, guards, "ref", node.value))
                todo = [(c, guards, False) for c in children(node)
                        if isinstance(c, (ast.expr, ast.comprehension, ast.keyword, ast.arguments, ast.arg))]
            stack.extend(reversed(todo))

    # -- resolving parameter bits to call-site labels ---------------------------------------------------------
    def arg_expr(self, cs: CallSite, callee: FuncInfo, i: int) -> list[ast.expr]:
        """Expressions the call site passes for callee parameter i (several for *args)."""
        if i >= len(callee.params):
            return []
        pname = callee.params[i]
        node = cs.node
        bound = cs.kind == "init" or (cs.receiver is not None and callee.is_method)
        if cs.kind == "init" and callee.is_method and i == 0:
            return []
        if not isinstance(node, ast.Call):
            return []
        if bound and i == 0:
            return [cs.receiver] if cs.receiver is not None else []
        pos = i - (1 if (bound or (cs.kind == "init")) else 0)
        if pname == callee.vararg:
            start = len([p for p in callee.params if p not in (callee.vararg, callee.kwarg)])
            start -= (1 if bound else 0)
            return list(node.args[max(start, 0):])
        for k in node.keywords:
            if k.arg == pname:
                return [k.value]
        if 0 <= pos < len(node.args) and not any(isinstance(a, ast.Starred) for a in node.args[:pos + 1]):
            return [node.args[pos]]
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            return [a.value if isinstance(a, ast.Starred) else a for a in node.args] + \
                   [k.value for k in node.keywords if k.arg is None]
        return []



def _ref_is_called(cs: CallSite) -> bool:
    """A function passed by reference (timed_eval(name, fn, ...), torch.compile(fn)) is assumed to be called."""
    return True



def _class_name_of_call(call: ast.Call, prog: CallResolver, caller: FuncInfo | None = None) -> str | None:
    """The user class a call builds: `ClassName(...)`, or a factory function that returns one."""
    f = call.func
    name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
    if name and name in prog.classes:
        return name
    if caller is not None and isinstance(f, ast.Name):
        ts, is_cls = prog.lookup_name(caller, f.id)
        kinds = {getattr(t, "ret_type", None) for t in ts}
        if ts and not is_cls and len(kinds) == 1:
            return kinds.pop()
    return None

