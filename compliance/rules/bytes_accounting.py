"""BYTES: wrong byte accounting in val_bpb.

Byte tables are found wherever they are built (a function, or module-level code): a loop over token ids that
measures `len(<piece>.encode())` of each piece (`id_to_piece`) or of each id decoded on its own. Flagged:
- byte-fallback pieces `<0xNN>` not special-cased (6 bytes instead of 1);
- the table built from `decode([i])` of single ids (the leading space of '▁' pieces is dropped, byte pieces become
  replacement characters);
- '▁' counted in the table (`+ 1` in its branch, `+ (1 if p.startswith('▁') else 0)`, `+ (p[0] == '▁')`,
  `replace('▁', ' ')`, or measured with its 3-byte '▁') while a leading-space flag is also produced for the
  evaluation to add (the double count); measured with the '▁' and no flag: 3 bytes for one space;
- a CaseOps tokenizer (capitalisation operators U+E001..U+E004 as pieces) scored with a piece table and no
  per-token byte sidecar: the operator pieces count bytes of text that does not exist;
- val_bpb computed with a bytes-per-token factor not derived from the scored text (a constant, a setting) instead
  of the bytes of the scored tokens (a byte table read at the targets, or a byte sidecar).
A lossless text transform scored with a per-token byte sidecar of the original bytes is legal.
"""

from __future__ import annotations

import ast
import math

from ..astutil import call_name, walk
from ..index import FuncInfo
from ..labels import BYTESRC, LOSS, TKEY
from .base import Context, Rule
from .registry import register

SPACE = "\u2581"
_PIECE_CALLS = ("id_to_piece", "IdToPiece", "convert_ids_to_tokens", "_convert_id_to_token")
_DECODE_CALLS = ("decode", "DecodeIds", "decode_ids", "Decode", "DecodePieces")
_OPERATORS = ("\ue001", "\ue002", "\ue003", "\ue004")


@register
class BytesAccounting(Rule):
    id = "BYTES"
    title = "wrong byte accounting in val_bpb"
    fixtures = ("rules/bytes",)

    def check(self, ctx: Context):
        out = []
        caseops = _caseops(ctx.prog)
        sidecar = _sidecar(ctx.prog)
        for f in ctx.prog.funcs:
            info = _lut(f, ctx.prog.modules.get(id(f.unit)))
            if info is not None:
                out.extend(self._table(ctx, f, info, caseops and not sidecar))
            out.extend(self._constant_ratio(ctx, f))
        return out

    def _table(self, ctx, f: FuncInfo, info: dict, caseops_no_sidecar: bool):
        out = []
        problems = []
        stmt = info["len_stmt"]
        lines = [stmt.line]
        if info["decode"]:
            problems.append("measures each id decoded on its own (decode([i])): the leading space of '▁' pieces is "
                            "dropped and byte-fallback pieces become 3-byte replacement characters")
        elif not info["byte_check"]:
            problems.append("never special-cases byte-fallback pieces (<0xNN>), so each counts 6 bytes "
                            "instead of 1")
        counts_space = info["plus_one"] or info["replace_space"] or (info["space_check"] and not info["stripped"])
        if info["space_check"] and not info["stripped"] and not info["plus_one"] and not info["replace_space"] \
                and not info["space_flag"] and not info["decode"]:
            problems.append("measures pieces with their leading '▁' (3 bytes in UTF-8) instead of counting the "
                            "space as 1 byte")
        elif counts_space and info["space_flag"]:
            how = ("adds 1 for '▁' pieces in the table" if info["plus_one"] else
                   "turns '▁' into a space before measuring" if info["replace_space"] else
                   "measures pieces with their '▁' still attached")
            problems.append(f"{how} and also returns a leading-space flag that the evaluation adds again, so "
                            "the '▁' byte is counted twice")
            lines += [info["plus_line"] or stmt.line, info["flag_line"]]
        elif info["plus_one"] and not info["space_flag"]:
            ctx.warnings.append(
                f"BYTES: {f.unit.display}:{info['plus_line']}: {f.name}() adds 1 byte for every '▁' piece in the "
                "table, also after boundary tokens (BOS); the rule counts the space only after a non-boundary "
                "token.")
        if caseops_no_sidecar and not info["operators"]:
            problems.append("is used with a CaseOps tokenizer (capitalisation operators U+E001..U+E004 as pieces) "
                            "without a per-token byte sidecar: each operator piece counts 3 bytes of text that "
                            "is not in the original")
        if problems:
            where = f"{f.name}()" if not f.is_module else "module-level code"
            expl = f"{where} builds the per-token byte table and " + "; it also ".join(problems) + \
                ": the byte total is wrong and val_bpb with it."
            out.append(ctx.finding(self.id, f, [(stmt, ())], stmt, expl, ctx.evidence(f.unit, lines)))
        return out

    def _constant_ratio(self, ctx, f: FuncInfo):
        """val_bpb = loss / ln 2 / C with C not the bytes of the scored tokens."""
        out = []
        memo = f.memo
        for st in f.stmts:
            for value in _bpb_values(st):
                leaves = _leaves(value)
                if not any(memo.get(id(x), 0) & LOSS for x in leaves):
                    continue
                if memo.get(id(value), 0) & (TKEY | BYTESRC):
                    continue
                others = [x for x in leaves if not memo.get(id(x), 0) & LOSS and not _log2(x)
                          and not (isinstance(x, ast.Constant) and x.value in (1, 1.0))]
                if not others:
                    continue          # bits per token are bits per byte (a byte-level model)
                if any(memo.get(id(x), 0) & (TKEY | BYTESRC) for x in others):
                    continue
                expl = (f"{f.name if not f.is_module else 'module code'}() computes val_bpb at line {st.line} from "
                        f"the loss and a bytes-per-token factor ({_src(others)}) that is not the bytes of the scored "
                        "tokens (no byte table read at the targets, no byte sidecar): the score is not bits per byte "
                        "of the validation text.")
                out.append(ctx.finding(self.id, f, [(st, ())], st, expl, ctx.evidence(f.unit, [st.line])))
                break
        return out


# ------------------------------------------------------------------------------------------------------------
# Byte tables
# ------------------------------------------------------------------------------------------------------------

def _space_consts(f: FuncInfo, module: FuncInfo | None) -> set:
    """Names bound to '▁' (SP = '\u2581') in f, its parent or its module, so SP counts as the constant."""
    out = set()
    scopes = [f] + ([f.parent] if f.parent else []) + ([module] if module is not None else [])
    for g in scopes:
        for name, defs in g.defs.items():
            for d in defs[:2]:
                v = getattr(d.node, "value", None)
                if isinstance(v, ast.Constant) and isinstance(v.value, str) and v.value.startswith(SPACE):
                    out.add(name)
    return out


def _is_space(node, names: set) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(SPACE):
        return True
    return isinstance(node, ast.Name) and node.id in names


def _space_test(node, names: set) -> bool:
    """A test of the leading '▁': p.startswith('▁'), p[0] == '▁', p[:1] == SP."""
    for n in walk(node):
        if isinstance(n, ast.Call) and call_name(n) in ("startswith",) and n.args and _is_space(n.args[0], names):
            return True
        if isinstance(n, ast.Compare) and any(_is_space(c, names) for c in [n.left] + n.comparators):
            return True
    return False


def _lut(f: FuncInfo, module: FuncInfo | None = None):
    """What f's byte-table code does, or None when f builds no table (pieces measured by len(...encode()))."""
    names = _space_consts(f, module) if f.stmts else set()
    piece_calls = decode_single = False
    len_stmt = None
    info = {"byte_check": False, "space_check": False, "stripped": False, "plus_one": False, "decode": False,
            "replace_space": False, "space_flag": False, "plus_line": 0, "flag_line": 0, "operators": False}
    for st in f.stmts:
        for n in st.nodes:
            if isinstance(n, ast.Call):
                name = call_name(n)
                if name in _PIECE_CALLS:
                    piece_calls = True
                if name in _DECODE_CALLS and n.args and isinstance(n.args[0], ast.List) and len(n.args[0].elts) == 1:
                    decode_single = True
                if name in ("is_byte", "IsByte"):
                    info["byte_check"] = True
                if name == "len" and n.args and _has_encode(n.args[0]) and len_stmt is None:
                    len_stmt = st
                if name == "startswith" and n.args and _is_space(n.args[0], names):
                    info["space_check"] = True
                if name in ("lstrip", "removeprefix", "strip") and n.args and _is_space(n.args[0], names):
                    info["stripped"] = True
                if name == "replace" and len(n.args) >= 2 and _is_space(n.args[0], names):
                    rep = n.args[1]
                    if isinstance(rep, ast.Constant) and rep.value == " ":
                        info["replace_space"] = True
                    else:
                        info["stripped"] = True
            elif isinstance(n, ast.Constant) and isinstance(n.value, str):
                if "<0x" in n.value or n.value.startswith("<0") or "0x" in n.value and "<" in n.value:
                    info["byte_check"] = True
                if any(c in n.value for c in _OPERATORS):
                    info["operators"] = True
            elif isinstance(n, ast.Compare) and any(_is_space(c, names) for c in [n.left] + n.comparators):
                info["space_check"] = True
            elif isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Slice) and \
                    isinstance(n.slice.lower, ast.Constant) and n.slice.lower.value == 1 and n.slice.upper is None:
                info["stripped"] = True
    if not (piece_calls or decode_single) or len_stmt is None:
        return None
    info["decode"] = decode_single and not piece_calls
    for st in f.stmts:
        s = st.node
        # a '▁' indicator added to the measured length: + (1 if sp_test else 0), + (p[0] == '▁'), + int(test)
        if isinstance(s, (ast.Assign, ast.AugAssign)) and _adds_space(s.value, names):
            info["plus_one"] = True
            info["plus_line"] = s.lineno
        if isinstance(s, ast.If) and _space_test(s.test, names):
            for b in ast.walk(ast.Module(body=s.body, type_ignores=[])):
                if isinstance(b, (ast.Assign, ast.AugAssign)):
                    v = b.value
                    if isinstance(v, ast.BinOp) and isinstance(v.op, ast.Add) and _has_len(v) and (
                            _is_one(v.right) or _is_one(v.left)):
                        info["plus_one"] = True
                        info["plus_line"] = b.lineno
                    if isinstance(b, ast.Assign) and isinstance(v, ast.Constant) and v.value is True:
                        info["space_flag"] = True
                        info["flag_line"] = b.lineno
        if isinstance(s, ast.Assign) and not _has_len(s.value) and _space_test(s.value, names) \
                and any(isinstance(t, (ast.Subscript, ast.Name)) for t in s.targets):
            info["space_flag"] = True           # lead[t] = p.startswith('▁'); flag = p[:1] == SP
            info["flag_line"] = s.lineno
    info["len_stmt"] = len_stmt
    return info


def _adds_space(value, names: set) -> bool:
    if value is None or not _has_len(value):
        return False
    for n in walk(value):
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Add):
            for side in (n.left, n.right):
                if isinstance(side, ast.IfExp) and _space_test(side.test, names):
                    return True
                if isinstance(side, ast.Compare) and _space_test(side, names):
                    return True
                if isinstance(side, ast.Call) and call_name(side) in ("int", "float") and side.args \
                        and _space_test(side.args[0], names):
                    return True
                if isinstance(side, ast.Call) and call_name(side) == "startswith" and _space_test(side, names):
                    return True
    return False


def _has_encode(node) -> bool:
    return any(isinstance(n, ast.Call) and call_name(n) == "encode" for n in walk(node))


def _has_len(node) -> bool:
    return any(isinstance(n, ast.Call) and call_name(n) == "len" for n in walk(node))


def _is_one(node) -> bool:
    return isinstance(node, ast.Constant) and node.value == 1


def _caseops(prog) -> bool:
    """Does the program use a CaseOps text transform (the U+E001..U+E004 operators, a lossless_caps module)?"""
    for u in prog.units:
        if "lossless_caps" in u.text or "caseops" in u.text.lower():
            return True
        for n in u.nodes:
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and any(c in n.value for c in _OPERATORS):
                return True
    return False


def _sidecar(prog) -> bool:
    """Does the program read a per-token byte sidecar?"""
    for u in prog.units:
        for n in u.nodes:
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and ("_bytes_" in n.value
                                                                             or "val_bytes" in n.value):
                return True
    return False


# ------------------------------------------------------------------------------------------------------------
# val_bpb arithmetic
# ------------------------------------------------------------------------------------------------------------

def _bpb_values(st) -> list:
    """Expressions a statement reports as val_bpb: `val_bpb = ...`, {"val_bpb": ...}, f"val_bpb:{...}"."""
    out = []
    s = st.node
    if isinstance(s, (ast.Assign, ast.AnnAssign)) and s.value is not None:
        tgts = s.targets if isinstance(s, ast.Assign) else [s.target]
        if any(isinstance(t, ast.Name) and "bpb" in t.id.lower() for t in tgts) and isinstance(s.value, ast.BinOp):
            out.append(s.value)
    for n in st.nodes:
        if isinstance(n, ast.Dict):
            for k, v in zip(n.keys, n.values):
                if isinstance(k, ast.Constant) and isinstance(k.value, str) and "bpb" in k.value \
                        and isinstance(v, ast.BinOp):
                    out.append(v)
        elif isinstance(n, ast.JoinedStr):
            prev = ""
            for v in n.values:
                if isinstance(v, ast.Constant) and isinstance(v.value, str):
                    prev = v.value
                elif isinstance(v, ast.FormattedValue):
                    if "bpb" in prev[-12:] and isinstance(v.value, ast.BinOp):
                        out.append(v.value)
                    prev = ""
    return out


def _leaves(e) -> list:
    """Operands of an arithmetic expression (through + - * / and .item()/float())."""
    out, stack = [], [e]
    while stack:
        x = stack.pop()
        if isinstance(x, ast.BinOp) and isinstance(x.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            stack += [x.left, x.right]
        elif isinstance(x, ast.Call) and call_name(x) in ("item", "float", "max", "min") and (
                isinstance(x.func, ast.Attribute) and call_name(x) == "item"):
            stack.append(x.func.value)
        elif isinstance(x, ast.Call) and call_name(x) in ("float", "max") and x.args:
            stack.append(x.args[0])
        else:
            out.append(x)
    return out


def _log2(x) -> bool:
    if isinstance(x, ast.Call) and call_name(x) == "log" and x.args and isinstance(x.args[0], ast.Constant) \
            and x.args[0].value == 2:
        return True
    if isinstance(x, ast.Constant) and isinstance(x.value, float) and abs(x.value - math.log(2)) < 1e-6:
        return True
    return isinstance(x, (ast.Name, ast.Attribute)) and (getattr(x, "id", "") or getattr(x, "attr", "")).lower() \
        in ("ln2", "log2", "_ln2", "log_2", "ln_2")


def _src(nodes) -> str:
    out = []
    for n in nodes[:3]:
        try:
            out.append(ast.unparse(n))
        except Exception:  # noqa: BLE001
            out.append("?")
    return ", ".join(out)
