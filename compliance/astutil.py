"""Small helpers over the syntax tree: names of calls, dotted names, the expressions a statement evaluates itself,
definitions nested in blocks."""

from __future__ import annotations

import ast

LOOPS = (ast.For, ast.AsyncFor, ast.While)
FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)


def call_name(node: ast.Call) -> str:
    f = node.func
    if isinstance(f, ast.Attribute):
        return f.attr
    if isinstance(f, ast.Name):
        return f.id
    return ""


def dotted(node: ast.expr) -> str:
    """`a.b().c[]` for a.b().c[...]: the name path of an expression (iterative)."""
    parts = []
    while True:
        if isinstance(node, ast.Name):
            parts.append(node.id)
            break
        if isinstance(node, ast.Attribute):
            parts.append("." + node.attr)
            node = node.value
        elif isinstance(node, ast.Call):
            parts.append("()")
            node = node.func
        elif isinstance(node, ast.Subscript):
            parts.append("[]")
            node = node.value
        else:
            break
    out = "".join(reversed(parts))
    return out[1:] if out.startswith(".") else out


def root_name(node: ast.expr) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def import_aliases(nodes, relative: bool = False) -> dict[str, str]:
    """local name -> module or module.attr the import statements among `nodes` bind (`import lzma as L`,
    `from base64 import b85decode as d`); with relative=True also `from . import x` (x -> x)."""
    out: dict[str, str] = {}
    for node in nodes:
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
        elif relative and isinstance(node, ast.ImportFrom) and node.level:
            for a in node.names:
                out[a.asname or a.name] = a.name
    return out


_NAMES_MEMO: dict[int, tuple] = {}


def names_in(node: ast.AST | None) -> set[str]:
    if node is None:
        return set()
    k = id(node)
    hit = _NAMES_MEMO.get(k)
    if hit is not None and hit[0] is node:
        return set(hit[1])
    out = frozenset(n.id for n in walk(node) if isinstance(n, ast.Name))
    _NAMES_MEMO[k] = (node, out)
    return set(out)


def assigned_calls(stmts):
    """(target, call) for every `target = call(...)` among the statements (each target of a chained assignment)."""
    for st in stmts:
        s = st.node
        if isinstance(s, ast.Assign) and isinstance(s.value, ast.Call):
            for t in s.targets:
                yield t, s.value


def _is_grad_attr(n: ast.AST) -> bool:
    return type(n) is ast.Attribute and n.attr in ("grad", "main_grad")


def has_grad_attr(node: ast.AST) -> bool:
    return any(_is_grad_attr(n) for n in walk(node))


def grad_attr_subtrees(node: ast.AST) -> set[int]:
    """ids of the nodes under `node` whose subtree reads a `.grad` / `.main_grad` attribute, in one pass (asking
    has_grad_attr of every node of a long `a + b + ...` chain would walk it quadratically)."""
    marked: set[int] = set()
    for n in reversed(walk(node)):
        if _is_grad_attr(n) or any(id(c) in marked for c in children(n)):
            marked.add(id(n))
    return marked



def _iter_defs(body):
    """Function and class definitions in a body, including those nested in if/try/with/for blocks."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.AsyncWith, ast.For, ast.While, ast.AsyncFor)) \
                or type(node).__name__ in ("TryStar", "Match"):
            for attr in ("body", "orelse", "finalbody"):
                yield from _iter_defs(getattr(node, attr, []) or [])
            for h in getattr(node, "handlers", []) or []:
                yield from _iter_defs(h.body)
            for c in getattr(node, "cases", []) or []:
                yield from _iter_defs(c.body)


def _ends_block(s: ast.stmt) -> bool:
    return isinstance(s, (ast.Return, ast.Raise, ast.Continue, ast.Break)) or (
        isinstance(s, ast.Expr) and isinstance(s.value, ast.Call)
        and dotted(s.value.func) in ("sys.exit", "exit", "quit", "os._exit"))


def own_exprs(s: ast.AST) -> list[ast.AST]:
    """The expressions a statement evaluates itself (not those of the statements nested in it)."""
    if isinstance(s, ast.If) or isinstance(s, ast.While):
        return [s.test]
    if isinstance(s, (ast.For, ast.AsyncFor)):
        return [s.iter, s.target]
    if isinstance(s, (ast.With, ast.AsyncWith)):
        out = []
        for i in s.items:
            out.append(i.context_expr)
            if i.optional_vars is not None:
                out.append(i.optional_vars)
        return out
    if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return list(s.decorator_list) + [d for d in s.args.defaults] + [d for d in s.args.kw_defaults if d]
    if isinstance(s, ast.ClassDef):
        return list(s.bases) + list(s.decorator_list)
    if isinstance(s, ast.Try) or type(s).__name__ in ("TryStar",):
        return []
    if type(s).__name__ == "Match":
        return [s.subject]
    return [c for c in ast.iter_child_nodes(s) if isinstance(c, ast.expr)]



_AST = ast.AST
_DISPLAYS = (ast.List, ast.Tuple, ast.Set, ast.Dict)
_FIELDS: dict[type, tuple] = {}
_SKIP_FIELDS = {"ctx", "op", "id", "attr", "arg", "kind", "type_comment", "level", "module", "conversion", "is_async"}


def _fields_of(n: ast.AST) -> tuple:
    """The fields of a node type that may hold sub-nodes (not ctx / operator singletons or plain values)."""
    t = type(n)
    f = _FIELDS.get(t)
    if f is None:
        f = _FIELDS[t] = tuple(x for x in t._fields if x not in _SKIP_FIELDS)
    return f


_LITERAL_MIN = 32
_CONST = ast.Constant


def const_literal(n: ast.AST) -> bool:
    """A list/tuple/set/dict display of at least 32 constants (a data table): its elements carry no data flow,
    so walks do not enter it (the display node itself is kept)."""
    if type(n) in (ast.List, ast.Tuple, ast.Set):
        elts = n.elts
    elif type(n) is ast.Dict:
        elts = n.values
        if len(elts) >= _LITERAL_MIN and not all(type(k) is _CONST for k in n.keys):
            return False
    else:
        return False
    return len(elts) >= _LITERAL_MIN and all(type(e) is _CONST for e in elts)


def walk(node: ast.AST, lambdas: bool = True) -> list[ast.AST]:
    """Every node under `node` (itself first), iteratively: no recursion limit on deep trees. Data tables (see
    const_literal) are not entered; with lambdas=False neither are lambda bodies (a lambda is a function of its
    own: its code runs where it is called, not where it is written)."""
    out = []
    stack = [node]
    push = stack.append
    while stack:
        n = stack.pop()
        out.append(n)
        if type(n) in _DISPLAYS and const_literal(n):
            continue
        if not lambdas and type(n) is ast.Lambda and n is not node:
            continue
        for name in _fields_of(n):
            v = getattr(n, name, None)
            if isinstance(v, list):
                for x in reversed(v):
                    if isinstance(x, _AST):
                        push(x)
            elif isinstance(v, _AST):
                push(v)
    return out


def children(n: ast.AST) -> list[ast.AST]:
    if type(n) in _DISPLAYS and const_literal(n):
        return []
    out = []
    for name in _fields_of(n):
        v = getattr(n, name, None)
        if isinstance(v, list):
            out.extend(x for x in v if isinstance(x, _AST))
        elif isinstance(v, _AST):
            out.append(v)
    return out


def postorder(node: ast.AST, skip=()) -> list[ast.AST]:
    """Nodes under `node` children-first (node last), iteratively; subtrees of the types in `skip` are returned
    as single nodes (not entered)."""
    out = []
    stack = [(node, False)]
    while stack:
        n, done = stack.pop()
        if done or (skip and isinstance(n, skip) and n is not node):
            out.append(n)
            continue
        stack.append((n, True))
        for c in reversed(children(n)):
            stack.append((c, False))
    return out


def node_key(node: ast.AST | None) -> tuple:
    """A structural key of an expression (what ast.dump compares), built iteratively; ignores positions and ctx."""
    if node is None:
        return ()
    out = []
    for n in walk(node):
        vals = []
        for name in n._fields:
            if name == "ctx":
                continue
            v = getattr(n, name, None)
            if isinstance(v, list):
                vals.append(len(v))
            elif isinstance(v, (ast.operator, ast.unaryop, ast.cmpop, ast.boolop)):
                vals.append(type(v).__name__)
            elif not isinstance(v, ast.AST):
                vals.append(v)
        if isinstance(n, ast.Compare):
            vals.append(tuple(type(o).__name__ for o in n.ops))
        out.append((type(n).__name__, tuple(vals)))
    return tuple(out)
