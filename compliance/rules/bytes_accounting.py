"""BYTES: wrong byte accounting in val_bpb.

Detector: the function that builds the per-token byte table from the tokenizer (it loops over ids calling
``id_to_piece`` and takes ``len(piece.encode())``). Flagged: byte-fallback pieces ``<0xNN>`` not special-cased (they
would count 6 bytes instead of 1); the '▁' counted in the table (``+ 1`` in the '▁' branch, ``replace('▁', ' ')``,
or the piece measured with its '▁', 3 bytes in UTF-8) while a leading-space flag is also produced for the
evaluation to add (the double count). A table-only '+1' without the boundary check is a warning.
"""

from __future__ import annotations

import ast

from ..astutil import call_name, walk

from ..index import FuncInfo
from .base import Context, Rule
from .registry import register

SPACE = "\u2581"


@register
class BytesAccounting(Rule):
    id = "BYTES"
    title = "wrong byte accounting in val_bpb"
    fixtures = ("rules/bytes",)

    def check(self, ctx: Context):
        out = []
        for f in ctx.prog.funcs:
            info = _lut_function(f)
            if info is None:
                continue
            len_line = info["len_line"]
            problems = []
            lines = [len_line]
            stmt = info["len_stmt"]
            if not info["byte_check"]:
                problems.append("never special-cases byte-fallback pieces (<0xNN>), so each counts 6 bytes "
                                "instead of 1")
            counts_space = info["plus_one"] or info["replace_space"] or (info["space_check"] and not info["stripped"])
            if info["space_check"] and not info["stripped"] and not info["plus_one"] and not info["replace_space"] \
                    and not info["space_flag"]:
                problems.append("measures pieces with their leading '▁' (3 bytes in UTF-8) instead of counting the "
                                "space as 1 byte")
            elif counts_space and info["space_flag"]:
                how = ("adds 1 for '▁' pieces in the table" if info["plus_one"] else
                       "turns '▁' into a space before measuring" if info["replace_space"] else
                       "measures pieces with their '▁' still attached")
                problems.append(f"{how} and also returns a leading-space flag that the evaluation adds again, so "
                                "the '▁' byte is counted twice")
                lines += [info["plus_line"] or len_line, info["flag_line"]]
                stmt = info["plus_stmt"] or stmt
            elif info["plus_one"] and not info["space_flag"]:
                ctx.warnings.append(
                    f"BYTES: {f.unit.display}:{info['plus_line']}: {f.name}() adds 1 byte for every '▁' piece in the "
                    "table, also after boundary tokens (BOS); the rule counts the space only after a non-boundary "
                    "token.")
            if problems:
                expl = f"{f.name}() builds the per-token byte table and " + "; it also ".join(problems) + \
                    ": the byte total is inflated and val_bpb understated."
                out.append(ctx.finding(self.id, f, [(stmt, ())], stmt, expl, ctx.evidence(f.unit, lines)))
        return out


def _lut_function(f: FuncInfo):
    if f.is_module:
        return None
    if not any(isinstance(n, ast.Attribute) and n.attr in ("id_to_piece", "IdToPiece", "convert_ids_to_tokens",
                                                           "_convert_id_to_token")
               for st in f.stmts for n in st.nodes):
        return None
    piece_calls = False
    len_stmt = None
    info = {"byte_check": False, "space_check": False, "stripped": False, "plus_one": False,
            "replace_space": False, "space_flag": False, "plus_line": 0, "plus_stmt": None, "flag_line": 0}
    for st in f.stmts:
        for n in walk(st.node) if not isinstance(st.node, (ast.If, ast.For, ast.While, ast.With, ast.Try)) \
                else _own_walk(st.node):
            if isinstance(n, ast.Call):
                name = call_name(n)
                if name in ("id_to_piece", "IdToPiece", "convert_ids_to_tokens", "_convert_id_to_token"):
                    piece_calls = True
                if name in ("is_byte", "IsByte"):
                    info["byte_check"] = True
                if name == "len" and n.args and _has_encode(n.args[0]) and len_stmt is None:
                    len_stmt = st
                if name in ("startswith",) and n.args and _is_space_const(n.args[0]):
                    info["space_check"] = True
                if name in ("lstrip", "removeprefix", "strip") and n.args and _is_space_const(n.args[0]):
                    info["stripped"] = True
                if name == "replace" and len(n.args) >= 2 and _is_space_const(n.args[0]):
                    rep = n.args[1]
                    if isinstance(rep, ast.Constant) and rep.value == " ":
                        info["replace_space"] = True
                    else:
                        info["stripped"] = True
            elif isinstance(n, ast.Constant) and isinstance(n.value, str):
                if "<0x" in n.value or n.value.startswith("<0") or "0x" in n.value and "<" in n.value:
                    info["byte_check"] = True
            elif isinstance(n, ast.Compare) and any(_is_space_const(c) for c in [n.left] + n.comparators):
                info["space_check"] = True
            elif isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Slice) and \
                    isinstance(n.slice.lower, ast.Constant) and n.slice.lower.value == 1 and n.slice.upper is None:
                info["stripped"] = True
    if not piece_calls or len_stmt is None:
        return None
    # inside the '▁' branch: +1 in the table, a flag set True
    for st in f.stmts:
        s = st.node
        if isinstance(s, ast.If) and any(_is_space_const(c) for c in walk(s.test)):
            for b in walk(ast.Module(body=s.body, type_ignores=[])):
                if isinstance(b, (ast.Assign, ast.AugAssign)):
                    v = b.value
                    if isinstance(v, ast.BinOp) and isinstance(v.op, ast.Add) and _has_len(v) and (
                            _is_one(v.right) or _is_one(v.left)):
                        info["plus_one"] = True
                        info["plus_line"] = b.lineno
                        info["plus_stmt"] = f.stmt_of.get(id(b))
                    if isinstance(b, ast.Assign) and isinstance(v, ast.Constant) and v.value is True:
                        info["space_flag"] = True
                        info["flag_line"] = b.lineno
        if isinstance(s, ast.Assign) and isinstance(s.value, ast.Call) and call_name(s.value) == "startswith" \
                and s.value.args and _is_space_const(s.value.args[0]):
            info["space_flag"] = True
            info["flag_line"] = s.lineno
    info["len_stmt"] = len_stmt
    info["len_line"] = len_stmt.line
    return info


def _own_walk(node):
    from ..astutil import own_exprs
    for e in own_exprs(node):
        yield from walk(e)


def _has_encode(node) -> bool:
    return any(isinstance(n, ast.Call) and call_name(n) == "encode" for n in walk(node))


def _has_len(node) -> bool:
    return any(isinstance(n, ast.Call) and call_name(n) == "len" for n in walk(node))


def _is_space_const(node) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(SPACE)


def _is_one(node) -> bool:
    return isinstance(node, ast.Constant) and node.value == 1
