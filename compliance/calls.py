"""Call resolution: which functions a call (or a function passed by reference) may reach, and which
expressions a call site passes for each parameter."""

from __future__ import annotations

import ast

from .astutil import assigned_calls, call_name, children, own_exprs, walk
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
            if isinstance(recv, ast.Call) and not (isinstance(recv.func, ast.Name) and recv.func.id == "super"):
                cname = _class_name_of_call(recv, self, f)
                if cname:
                    return self.methods_of(cname, m), "call", recv
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
        self._resolve_value_calls()
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
            self._resolve_value_calls()

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
        for t, call in assigned_calls(f.stmts):
            if isinstance(t, (ast.Name, ast.Attribute)):
                cname = _class_name_of_call(call, self, f)
                if cname and isinstance(t, ast.Name):
                    f.types[t.id] = cname
                elif cname:
                    self.attr_types[t.attr] = cname
        f.value_calls = []
        for st in f.stmts:
            nodes = st.nodes
            st.stored = _stored_refs(st.node)
            if any(type(n) in (ast.IfExp, ast.BoolOp) for n in nodes):
                for expr in own_exprs(st.node):
                    self._calls_in(f, st, expr, ())
            else:
                self._calls_flat(f, st, nodes)

    def _calls_flat(self, f: FuncInfo, st: Stmt, nodes: list) -> None:
        """`_calls_in` for a statement without expression-level guards: one pass over its nodes."""
        funcs = {id(n.func) for n in nodes if type(n) is ast.Call}
        stored = st.stored
        for node in nodes:
            t = type(node)
            if t is ast.Call:
                ts, kind, recv = self.resolve_call(f, node.func)
                if ts:
                    f.calls.append(CallSite(f, st, node, ts, (), kind, recv))
                elif type(node.func) in (ast.Name, ast.Subscript, ast.Call, ast.Attribute):
                    f.value_calls.append((st, node, ()))
            elif id(node) in funcs or id(node) in stored:
                continue
            elif t is ast.Lambda:
                f.calls.append(CallSite(f, st, node, [self.lambdas[id(node)]], (), "ref", None))
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
                elif type(node.func) in (ast.Name, ast.Subscript, ast.Call, ast.Attribute):
                    f.value_calls.append((st, node, guards))
                todo = [(node.func, guards, True)] + [(a, guards, False) for a in node.args] + \
                       [(k.value, guards, False) for k in node.keywords]
            elif id(node) in st.stored:
                continue
            elif isinstance(node, ast.Lambda):
                if not func_pos:
                    f.calls.append(CallSite(f, st, node, [self.lambdas[id(node)]], guards, "ref", None))
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

    # -- calls through values: variables, containers, partial, lambdas, bound methods ------------------------------
    def _refs(self, f: FuncInfo, e: ast.expr | None, depth: int = 0, call: bool = False) -> list:
        """The functions an expression evaluates to (not calls of them): [(function, receiver, partial call)].
        For a call (call=True) a parameter's functions are not followed: a function passed as an argument is
        judged at the call that passes it (context-insensitive resolution would mix the callers)."""
        if e is None or depth > 6:
            return []
        t = type(e)
        if t is ast.Name:
            if call and _is_param(f, e.id):
                return []
            vals = self._fvals_of(f, e.id)
            if vals:
                return list(vals)
            ts, is_cls = self.lookup_name(f, e.id)
            return [] if is_cls else [(x, None, None) for x in ts]
        if t is ast.Lambda:
            fi = self.lambdas.get(id(e))
            return [(fi, None, None)] if fi is not None else []
        if t is ast.Attribute:
            ts, kind, recv = self.resolve_call(f, e)
            if ts and kind == "call" and e.attr not in GENERIC_METHODS:
                return [(x, recv, None) for x in ts]
            return list(self.attr_fvals.get(e.attr, ()))
        if t is ast.Call:
            name = call_name(e)
            if name == "partial" and e.args:
                return [(x, r, e) for x, r, _ in self._refs(f, e.args[0], depth + 1, call)]
            if name in ("items", "values", "get", "pop", "copy", "setdefault") and isinstance(e.func, ast.Attribute):
                return self._refs(f, e.func.value, depth + 1, call)
            if name in ("zip", "enumerate", "reversed", "list", "tuple", "sorted", "iter", "compile", "wraps"):
                return [r for a in e.args for r in self._refs(f, a, depth + 1, call)]
            return []
        if t is ast.IfExp:
            return self._refs(f, e.body, depth + 1, call) + self._refs(f, e.orelse, depth + 1, call)
        if t in (ast.List, ast.Tuple, ast.Set):
            return [r for x in e.elts for r in self._refs(f, x, depth + 1, call)]
        if t is ast.Dict:
            return [r for x in e.values for r in self._refs(f, x, depth + 1, call)]
        if t in (ast.Subscript, ast.Starred):
            return self._refs(f, e.value, depth + 1, call)
        return []

    def _fvals_of(self, f: FuncInfo, name: str):
        g = f
        while g is not None:
            if name in g.fvals:
                return g.fvals[name]
            if name in g.local_names and not g.is_module:
                return None
            g = g.parent
        mod = self.modules.get(id(f.unit))
        return mod.fvals.get(name) if mod is not None else None

    def _store_fvals(self, f: FuncInfo, name: str, refs: list) -> bool:
        """Add refs to the functions variable `name` may hold (in the scope that owns it)."""
        g = f
        while g is not None and name not in g.local_names:
            g = g.parent
        scope = g if g is not None else self.modules.get(id(f.unit))
        if scope is None or not refs:
            return False
        return _add_refs(scope.fvals.setdefault(name, []), refs)

    def _scan_fvals(self, f: FuncInfo) -> bool:
        """Function values stored by f's statements: assignments, container stores, loop variables, decorators."""
        changed = False
        for st in f.stmts:
            s = st.node
            if isinstance(s, (ast.Assign, ast.AnnAssign)) and s.value is not None:
                refs = self._refs(f, s.value)
                if refs:
                    for t in (s.targets if isinstance(s, ast.Assign) else [s.target]):
                        root = _root_name(t)
                        if root:
                            changed |= self._store_fvals(f, root, refs)
                        elif isinstance(t, ast.Attribute):          # self.fwd = fn: by attribute name
                            changed |= _add_refs(self.attr_fvals.setdefault(t.attr, []), refs)
            elif isinstance(s, (ast.For, ast.AsyncFor)):
                refs = self._refs(f, s.iter)
                if refs:
                    for n in walk(s.target):
                        if isinstance(n, ast.Name):
                            changed |= self._store_fvals(f, n.id, refs)
            elif isinstance(s, ast.Expr) and isinstance(s.value, ast.Call) and isinstance(s.value.func, ast.Attribute) \
                    and s.value.func.attr in _CONTAINER_ADDS:
                root = _root_name(s.value.func.value)
                refs = [r for a in s.value.args for r in self._refs(f, a)]
                refs += [r for k in s.value.keywords for r in self._refs(f, k.value)]
                if root and refs:
                    changed |= self._store_fvals(f, root, refs)
            elif isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) and s.decorator_list:
                fi = self._def_of(f, s)
                for d in s.decorator_list:
                    for g, _, _ in self._refs(f, d.func if isinstance(d, ast.Call) else d):
                        if g.params:
                            changed |= self._store_fvals(g, g.params[0], [(fi, None, None)]) if fi else False
        for i, pname in enumerate(f.params):        # parameters: what the call sites pass
            refs = []
            for cs in self.callers.get(f, ()):
                if cs.kind == "ref" or not isinstance(cs.node, ast.Call):
                    continue
                for e in self.arg_expr(cs, f, i)[:1]:
                    refs += self._refs(cs.caller, e)
            if refs:
                changed |= self._store_fvals(f, pname, refs)
        return changed

    def _def_of(self, f: FuncInfo, node) -> FuncInfo | None:
        for g in self.funcs:
            if g.node is node:
                return g
        return None

    def _resolve_value_calls(self) -> None:
        """Calls through variables and containers (`fn(x)`, `phases[name](m)`, `for h in hooks: h()`, a stored
        partial or bound method): one call site per function the value may hold, in the container's order."""
        if not hasattr(self, "attr_fvals"):
            self.attr_fvals: dict[str, list] = {}
        for _ in range(4):
            changed = False
            for f in self.funcs:
                changed |= self._scan_fvals(f)
            if not changed:
                break
        for f in self.funcs:
            old = getattr(f, "value_sites", [])
            for cs in old:
                for t in cs.targets:
                    lst = self.callers.get(t)
                    if lst is not None and cs in lst:
                        lst.remove(cs)
                if cs in f.calls:
                    f.calls.remove(cs)
            f.value_sites = []
            for st, node, guards in getattr(f, "value_calls", ()):
                refs = self._refs(f, node.func, call=True)
                for k, (t, recv, partial) in enumerate(refs[:16]):
                    cs = CallSite(f, st, node, [t], guards, "call", recv, sub=k if len(refs) > 1 else 0,
                                  bound=partial)
                    f.calls.append(cs)
                    f.value_sites.append(cs)
                    self.callers[t].append(cs)

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
        if cs.bound is not None:      # functools.partial(fn, a, b, k=v)(x): a, b fill the first positions
            pre = cs.bound.args[1:]
            for k in cs.bound.keywords:
                if k.arg == pname:
                    return [k.value]
            if 0 <= pos < len(pre):
                return [pre[pos]]
            pos -= len(pre)
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



def callees(f: FuncInfo):
    """(call site, callee) for every call `f` makes, recursion into `f` itself left out. A function passed by
    reference (timed_eval(name, fn, ...), torch.compile(fn)) is assumed to be called."""
    for cs in f.calls:
        for t in cs.targets:
            if t is not f:
                yield cs, t



def _is_param(f: FuncInfo, name: str) -> bool:
    g = f
    while g is not None:
        if name in g.params:
            return True
        if name in g.local_names:
            return False
        g = g.parent
    return False


def _add_refs(cur: list, refs: list) -> bool:
    seen = {(id(a), id(b), id(c)) for a, b, c in cur}
    new = False
    for r in refs:
        k = (id(r[0]), id(r[1]), id(r[2]))
        if k not in seen and r[0] is not None:
            seen.add(k)
            cur.append(r)
            new = True
    return new


_CONTAINER_ADDS = {"append", "extend", "insert", "add", "update", "setdefault", "appendleft", "register"}


def _root_name(t: ast.AST) -> str | None:
    """The variable a store goes into: `x`, `x[k]`, `x[k][j]` (not attributes: see attr_fvals)."""
    while isinstance(t, ast.Subscript):
        t = t.value
    return t.id if isinstance(t, ast.Name) else None


def _stored_refs(s: ast.stmt) -> set:
    """Ids of the expressions a statement stores as values (assigned, put in a container, bound by partial):
    functions named there are not called there."""
    roots = []
    if isinstance(s, (ast.Assign, ast.AnnAssign)) and s.value is not None:
        roots.append(s.value)
    elif isinstance(s, ast.Expr) and isinstance(s.value, ast.Call) and isinstance(s.value.func, ast.Attribute) \
            and s.value.func.attr in _CONTAINER_ADDS:
        roots.extend(s.value.args)
        roots.extend(k.value for k in s.value.keywords)
    elif isinstance(s, (ast.For, ast.AsyncFor)):
        roots.append(s.iter)
    out = set()
    while roots:
        e = roots.pop()
        t = type(e)
        if t in (ast.Name, ast.Lambda, ast.Attribute):
            out.add(id(e))
        elif t in (ast.List, ast.Tuple, ast.Set):
            roots.extend(e.elts)
        elif t is ast.Dict:
            roots.extend(e.values)
        elif t is ast.IfExp:
            roots.extend((e.body, e.orelse))
        elif t is ast.Call and (getattr(e.func, "attr", None) or getattr(e.func, "id", None)) == "partial" and e.args:
            roots.append(e.args[0])
    return out


def _class_name_of_call(call: ast.Call, prog: CallResolver, caller: FuncInfo | None = None) -> str | None:
    """The user class a call builds: `ClassName(...)`, or a factory function that returns one."""
    f = call.func
    name = call_name(call)
    if name and name in prog.classes:
        return name
    if caller is not None and isinstance(f, ast.Name):
        ts, is_cls = prog.lookup_name(caller, f.id)
        kinds = {getattr(t, "ret_type", None) for t in ts}
        if ts and not is_cls and len(kinds) == 1:
            return kinds.pop()
    return None

