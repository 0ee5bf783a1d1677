"""Loop structure for the rules: loops two statements share, and epoch-like loops (whose variable does not pick
the data)."""

from __future__ import annotations

import ast
import re

from .astutil import call_name, names_in, walk
from .index import Stmt
from .source import SourceUnit


def common_loops(a: Stmt, b: Stmt) -> tuple:
    out = []
    for x, y in zip(a.loops, b.loops):
        if x is y:
            out.append(x)
        else:
            break
    return tuple(out)


def contains(outer: Stmt, inner: Stmt) -> bool:
    return outer in inner.loops or any(l is outer for l in inner.loops)


def is_epoch_loop(loop: Stmt) -> bool:
    """A `for` loop whose variable does not pick the data: `for epoch in range(E)` (used at most in logs or an
    LR schedule), as opposed to `for ci in range(num_chunks)` whose variable indexes the chunk."""
    node = loop.node
    if not isinstance(node, (ast.For, ast.AsyncFor)):
        return False
    names = names_in(node.target)
    if not names:
        return True
    it = node.iter
    if not (isinstance(it, ast.Call) and call_name(it) == "range"):
        return False
    for sub in walk(ast.Module(body=node.body, type_ignores=[])):
        if isinstance(sub, ast.Subscript):
            if names & names_in(sub.slice):
                return False
        elif isinstance(sub, ast.Call) and call_name(sub) in ("range", "slice", "narrow", "min", "max"):
            if names & set().union(*(names_in(a) for a in sub.args)) if sub.args else set():
                return False
        elif isinstance(sub, (ast.Assign, ast.AugAssign)):
            val = sub.value
            targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
            tnames = set().union(*(names_in(t) for t in targets))
            if names & names_in(val) and any(re.search(r"start|end|pos|offset|idx|begin|ws|lo|hi|off", t)
                                             for t in tnames):
                return False
    return True


def stmt_source(unit: SourceUnit, line: int, count: int = 1) -> str:
    return "\n".join(unit.line(i).rstrip() for i in range(line, line + count))
