"""VAL-TRAIN: validation data in training or in the artifact.

Detectors: (1) a training step whose data stream carries validation data: a loader built over ``val_files`` /
``fineweb_val_*`` or over a pattern that matches both splits (``fineweb_*.bin``), val files concatenated to the
train files; (2) validation tokens written into what is saved or compressed as the artifact ("paid prefix").
Train and val shards with identical bytes are found with ``--data DIR`` (ValTrainData below, scope ``data``).
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

from ..astutil import call_name

from ..index import FuncInfo

from ..labels import LOADER, PARAM_SHIFT, TRAIN, VAL, name_seed
from ..report import ACTIVE, Finding
from ..rulings import RULINGS
from .base import Context, DataContext, Rule
from .registry import register

_SINKS = {"save", "savez", "savez_compressed", "dump", "dumps", "tofile", "compress", "write", "write_bytes",
          "save_file", "pack_artifact"}
_CHAIN = {"cpu", "numpy", "to", "clone", "contiguous", "tobytes", "tolist", "astype", "view", "reshape", "detach",
          "int", "short", "flatten", "ravel"}


@register
class ValTrain(Rule):
    id = "VAL-TRAIN"
    title = "validation data in training or in the artifact"
    fixtures = ("rules/val_train",)

    def check(self, ctx: Context):
        out = []
        prog = ctx.prog
        for site in ctx.train_sites():
            if site.gradvar:
                continue
            lab = site.loss_labels | (prog.resolve(site.func, site.loss_labels) if site.loss_labels >> PARAM_SHIFT else 0)
            if not (lab & VAL and lab & (TRAIN | LOADER)):
                continue
            src = _val_source(ctx)
            expl = (f"The training step at line {site.step.stmt.line} of {site.func.name}() consumes a data stream "
                    "that includes validation data (a loader built over validation files or over a pattern that "
                    "matches both splits).")
            lines = list(site.lines)
            ev = ctx.evidence(site.func.unit, lines)
            if src is not None:
                ev = ctx.evidence(src[0].unit, [src[1]]) + "\n" + ev
            out.append(ctx.finding(self.id, site.func, [(site.step.stmt, ())], site.step.stmt, expl, ev))
        for f in prog.funcs:
            for st in f.stmts:
                for expr in (0,):
                    for node in st.nodes:
                        if not isinstance(node, ast.Call) or call_name(node) not in _SINKS:
                            continue
                        args = list(node.args) + [k.value for k in node.keywords]
                        for a in args:
                            line = _carries_val_tokens(f, a, 0)
                            if line:
                                expl = (f"Validation tokens reach what {f.name}() saves/compresses at line {st.line} "
                                        "(val tokens stored in the artifact: a 'paid prefix').")
                                ev = ctx.evidence(f.unit, [line, st.line])
                                out.append(ctx.finding(self.id, f, [(st, ())], st, expl, ev))
                                break
        return out


def _val_source(ctx: Context):
    for f in ctx.prog.funcs:
        for st in f.stmts:
            s = st.node
            if isinstance(s, ast.Assign):
                lab = f.memo.get(id(s.value), 0)
                if lab & VAL and lab & (TRAIN | LOADER):
                    return f, st.line
    return None


def _is_val_name(node) -> bool:
    if isinstance(node, ast.Name):
        return bool(name_seed(node.id) & VAL)
    if isinstance(node, ast.Attribute):
        return bool(name_seed(node.attr) & VAL) and "file" not in node.attr and "pattern" not in node.attr \
            and "path" not in node.attr
    return False


def _carries_val_tokens(f: FuncInfo, node, depth: int) -> int:
    """Line where validation token content enters `node` (0 if it does not, as far as simple aliases show)."""
    if depth > 3 or node is None:
        return 0
    n = node
    while isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in _CHAIN:
        n = n.func.value
    if isinstance(n, ast.Subscript):
        n = n.value
    if _is_val_name(n) and not (isinstance(n, ast.Name) and "file" in n.id):
        return getattr(node, "lineno", 0)
    if isinstance(n, (ast.Dict,)):
        for v in n.values:
            ln = _carries_val_tokens(f, v, depth + 1)
            if ln:
                return ln
    if isinstance(n, (ast.List, ast.Tuple)):
        for v in n.elts:
            ln = _carries_val_tokens(f, v, depth + 1)
            if ln:
                return ln
    if isinstance(n, ast.Name) and depth < 3:
        for d in f.defs.get(n.id, []):
            s = d.node
            if isinstance(s, ast.Assign):
                for t in s.targets:
                    if isinstance(t, ast.Name) and t.id == n.id or isinstance(t, ast.Subscript):
                        ln = _carries_val_tokens(f, s.value, depth + 1)
                        if ln:
                            return ln
    return 0


# ------------------------------------------------------------------------------------------------------------
# Data provenance (--data DIR): sha256 of every train and val shard; no train shard may equal a val shard.
# ------------------------------------------------------------------------------------------------------------
def shard_hashes(folder: Path) -> tuple[dict[str, str], dict[str, str]]:
    train, val = {}, {}
    for p in sorted(folder.rglob("*.bin")):
        name = p.name.lower()
        kind = "val" if ("_val_" in name or name.startswith("val")) else "train" if (
            "_train_" in name or name.startswith("train")) else None
        if kind is None:
            continue
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        (val if kind == "val" else train)[str(p.relative_to(folder))] = h.hexdigest()
    return train, val


def check_data(folder: Path, limits: dict, warnings: list[str]) -> list[Finding]:
    """VAL-TRAIN findings for train shards byte-identical to a val shard."""
    train, val = shard_hashes(folder)
    limits["data"] = {"folder": str(folder), "train_shards": len(train), "val_shards": len(val)}
    if not train and not val:
        warnings.append(f"--data {folder}: no fineweb_train_*/fineweb_val_* shards found")
        return []
    by_hash = {}
    for name, h in val.items():
        by_hash.setdefault(h, []).append(name)
    out = []
    for name, h in train.items():
        if h in by_hash:
            out.append(Finding("VAL-TRAIN", ACTIVE, name, 0, f"sha256 {h}\nequals {', '.join(by_hash[h])}",
                               f"Training shard {name} is byte-identical to validation shard "
                               f"{by_hash[h][0]}: the model trains on validation data.", RULINGS["VAL-TRAIN"]))
    return out


@register
class ValTrainData(Rule):
    id = "VAL-TRAIN"
    title = "a training shard identical to a validation shard"
    scope = "data"
    fixtures = ("folders/data_shared_shard", "folders/data_distinct_shards")

    def check(self, ctx: DataContext) -> list[Finding]:
        return check_data(Path(ctx.folder), ctx.limits, ctx.warnings)
