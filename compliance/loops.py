"""Loop structure for the rules: loops two statements share, and epoch-like loops (whose variable does not pick
the data)."""

from __future__ import annotations

import ast

from .astutil import call_name, names_in
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


_PERMUTERS = {"range", "reversed", "sorted", "list", "tuple", "permutation", "randperm", "sample", "arange",
              "argsort", "flip", "roll", "shuffled", "permute", "iter"}
_POSITION_CALLS = {"range", "slice", "narrow", "islice", "arange", "min", "max", "clamp", "split", "chunk", "take",
                   "index_select", "get_batch", "next_batch", "load", "fromfile", "memmap", "open"}


def _permutation(e) -> bool:
    """`list(reversed(range(n)))`, `torch.randperm(n)`, `rng.sample(items, len(items))`: an ordering of a
    population, not a choice of part of it."""
    return isinstance(e, ast.Call) and call_name(e) in _PERMUTERS


def ordering_container(f, name: str) -> bool:
    """A variable holding orderings of one population: `[list(range(n)), list(reversed(range(n)))]` or
    `[torch.randperm(n) for _ in range(P)]`. Picking one of them by an index does not pick data."""
    g = f
    defs = []
    while g is not None and not defs:
        defs = g.defs.get(name, [])
        g = g.parent
    if not defs:
        return False
    for d in defs:
        v = getattr(d.node, "value", None)
        if isinstance(v, (ast.List, ast.Tuple)) and v.elts and all(_permutation(x) for x in v.elts):
            continue
        if isinstance(v, ast.ListComp) and _permutation(v.elt):
            continue
        return False
    return True


def _loop_vars(loop: Stmt) -> set:
    node = loop.node
    if isinstance(node, (ast.For, ast.AsyncFor)):
        return names_in(node.target)
    if isinstance(node, ast.While):       # the names its test reads that the body changes
        tested = names_in(node.test)
        changed = set()
        for st in loop.func.stmts:
            if loop in st.loops and isinstance(st.node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                tgts = st.node.targets if isinstance(st.node, ast.Assign) else [st.node.target]
                for t in tgts:
                    changed |= names_in(t)
        return tested & changed
    return set()


def is_epoch_loop(loop: Stmt) -> bool:
    """A loop whose iterations go over the same data again: its variable does not pick which data an iteration
    works on (`for epoch in range(E)`, `while done < passes`, `for p in range(len(orders))` with `orders[p]` an
    ordering of all the chunks). Data flow from the variable, inside the loop, into an index or slice of data, a
    position computation (range, slice, narrow, ...) or a loader call makes it a data loop (`for ci in
    range(n_chunks)`: `val[ci * c:(ci + 1) * c]`)."""
    node = loop.node
    f = loop.func
    tainted = _loop_vars(loop)
    if not tainted:
        return isinstance(node, (ast.For, ast.AsyncFor))
    if isinstance(node, (ast.For, ast.AsyncFor)):
        it = node.iter
        base = it.value if isinstance(it, ast.Subscript) else it
        if not (isinstance(it, ast.Call) and call_name(it) == "range") and not (
                isinstance(base, ast.Name) and ordering_container(f, base.id)):
            return False         # iterating over the data (docs, windows, batches) itself
    orders: set = set()      # names holding one ordering (orders[p]): iterating it visits the whole population
    body = [st for st in f.stmts if loop in st.loops]
    for _ in range(3):       # propagate the loop variable through the body's assignments
        grew = False
        for st in body:
            s = st.node
            if isinstance(s, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and s.value is not None:
                used = names_in(s.value) & tainted
                if not used:
                    continue
                tgts = s.targets if isinstance(s, ast.Assign) else [s.target]
                pick = isinstance(s.value, ast.Subscript) and isinstance(s.value.value, ast.Name) \
                    and ordering_container(f, s.value.value.id)
                for t in tgts:
                    for n in names_in(t) - tainted - orders:
                        (orders if pick else tainted).add(n)
                        grew = True
            elif isinstance(s, (ast.For, ast.AsyncFor)):
                it_names = names_in(s.iter)
                through_order = (it_names & orders) or (isinstance(s.iter, ast.Subscript)
                                                        and isinstance(s.iter.value, ast.Name)
                                                        and ordering_container(f, s.iter.value.id))
                if it_names & tainted and not through_order:
                    new = names_in(s.target) - tainted
                    if new:
                        tainted |= new
                        grew = True
        if not grew:
            break
    for st in body:
        for sub in st.nodes:
            if isinstance(sub, ast.Subscript) and names_in(sub.slice) & tainted:
                b = sub.value
                if isinstance(b, ast.Name) and ordering_container(f, b.id):
                    continue
                return False
            if isinstance(sub, ast.Call) and call_name(sub) in _POSITION_CALLS:
                args = list(sub.args) + [k.value for k in sub.keywords]
                if any(names_in(a) & tainted for a in args):
                    return False
    return True


def stmt_source(unit: SourceUnit, line: int, count: int = 1) -> str:
    return "\n".join(unit.line(i).rstrip() for i in range(line, line + count))
