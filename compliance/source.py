"""Reading an entry without running it: files, self-extracting wrappers, sibling modules, broken syntax.

An entry is a script or a record folder. The program to audit is the entry script (train_gpt.py, else the
only script, else every script with a ``__main__`` block) plus every sibling file it reaches: imported
modules, files it exec()s / runpy-runs / launches, and the sources hidden inside self-extracting wrappers
(``exec(lzma.decompress(base64.b85decode(...)))`` and relatives, raw LZMA2 filter chains included, nested).
Wrappers are decoded by interpreting the decode chain over constant payloads with the standard library's
decompressors (size-capped); nothing from the audited entry is executed.
"""

from __future__ import annotations

import ast
import base64
import binascii
import bz2
import codecs
import dataclasses
import lzma
import re
import zlib
from pathlib import Path

from .astutil import call_name, import_aliases, walk
from .pysyntax import parse, parse_modern

MAX_DECODED = 64 * 1024 * 1024   # bytes a single payload may inflate to
MAX_DEPTH = 6                    # wrapper nesting followed
MAX_FILE = 32 * 1024 * 1024      # bytes of one source file read


class InputError(Exception):
    """The path cannot be audited at all (missing, unreadable, not Python): exit status 2."""


@dataclasses.dataclass
class SourceUnit:
    """One body of Python source: a file, or the source decoded out of a wrapper in a file."""
    path: Path                 # the file on disk
    display: str               # file name as reported (relative to the entry folder)
    text: str                  # the source that was parsed
    tree: ast.Module
    module: str                # module name used for import resolution
    decoded: str = ""          # "" for plain files, else the chain, e.g. "lzma(raw)+b85"
    is_entry: bool = False     # its `if __name__ == "__main__":` block runs
    parse_note: str = ""       # how the source was read (e.g. as 3.12 syntax)
    problems: list[str] = dataclasses.field(default_factory=list)   # parts that could not be analysed
    lines: list[str] = dataclasses.field(default_factory=list)

    _nodes: list | None = None

    def __post_init__(self):
        if not self.lines:
            self.lines = self.text.splitlines()

    @property
    def nodes(self) -> list:
        """Every node of the tree, computed once."""
        if self._nodes is None:
            self._nodes = walk(self.tree)
        return self._nodes

    def line(self, n: int) -> str:
        return self.lines[n - 1] if 0 < n <= len(self.lines) else ""


# ------------------------------------------------------------------------------------------------------------
# Reading text and parsing it whatever it holds
# ------------------------------------------------------------------------------------------------------------

def read_text(path: Path, problems: list[str] | None = None) -> str:
    """The file as text (UTF-8, errors replaced); refuses binary files. Past MAX_FILE bytes the rest is not read,
    which is recorded in `problems`."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE + 1)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE:
        data = data[:MAX_FILE]
        if problems is not None:
            problems.append(f"{path.name}: only the first {MAX_FILE:,} bytes were read; the rest was not analysed")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    head = data[:65536]
    ctrl = sum(1 for b in head if b < 9 or 13 < b < 32)
    if head.count(b"\x00") > 16 or (head and ctrl > len(head) // 10):
        raise InputError(f"{path} is a binary file, not Python source")
    return data.decode("utf-8", errors="replace").replace("\x00", " ")


def tolerant_parse(text: str) -> tuple[ast.Module, str, list[str]]:
    """Parse whatever the text holds. Python 3.12-3.13 syntax (PEP 701 f-strings, PEP 695 type parameters) is read
    through pysyntax.modernize, very deep expressions through a large-stack parse. Only when neither reads it is
    the offending line blanked (keeping its indentation) and the parse retried, so one bad line does not hide the
    rest of the program; what was blanked or cut is returned as a problem: it was not analysed.
    Returns (tree, note, problems): note says how the source was read, problems what could not be analysed."""
    try:
        tree, rewritten = parse_modern(text)
        return tree, ("read as Python 3.12+ syntax (PEP 701 f-strings / PEP 695 type parameters)"
                      if rewritten else ""), []
    except SyntaxError:
        pass
    except (ValueError, MemoryError, OverflowError, RecursionError) as exc:
        return ast.Module(body=[], type_ignores=[]), "", [f"the source could not be parsed ({type(exc).__name__})"]
    lines = text.split("\n")
    total = len(lines)
    blanked: list[int] = []
    for _ in range(80):
        try:
            tree, _rw = parse_modern("\n".join(lines))
            cut = f"; lines {len(lines) + 1}-{total} were cut" if len(lines) < total else ""
            return tree, "", [f"line(s) {_fmt_lines(blanked)}: syntax the auditor cannot read; blanked, not "
                              f"analysed{cut}"]
        except SyntaxError as exc:
            n = min(max(exc.lineno or len(lines), 1), len(lines))
            if n in blanked:  # blanking did not help: cut the file here
                lines = lines[:max(n - 1, 0)]
                continue
            blanked.append(n)
            old = lines[n - 1]
            indent = old[:len(old) - len(old.lstrip())]
            # a broken block header keeps its block: `if True:` in its place, else `pass`
            nxt = next((x for x in lines[n:] if x.strip()), "")
            deeper = len(nxt) - len(nxt.lstrip()) > len(indent)
            lines[n - 1] = (indent + ("if True:" if deeper else "pass")) if old.strip() else old
        except (ValueError, RecursionError, MemoryError, OverflowError):
            break
    for cut in range(len(lines), -1, -max(1, len(lines) // 8)):
        try:
            return parse("\n".join(lines[:cut])), "", [
                f"only the first {cut} of {total} line(s) could be parsed; the rest was not analysed"]
        except Exception:  # noqa: BLE001 - any parser failure: try a shorter prefix
            continue
    return ast.Module(body=[], type_ignores=[]), "", ["the source could not be parsed; nothing in it was analysed"]


def _fmt_lines(ns: list[int]) -> str:
    ns = sorted(set(ns))
    return ", ".join(map(str, ns[:8])) + (f" (+{len(ns) - 8} more)" if len(ns) > 8 else "")


# ------------------------------------------------------------------------------------------------------------
# Self-extracting wrappers
# ------------------------------------------------------------------------------------------------------------

_DECOMPRESS_MODULES = {"lzma", "zlib", "gzip", "bz2"}
_ENCODING_FUNCS = {
    "b64decode": "b64", "standard_b64decode": "b64", "urlsafe_b64decode": "b64u", "decodebytes": "b64",
    "b85decode": "b85", "a85decode": "a85", "b32decode": "b32", "b16decode": "b16",
    "unhexlify": "hex", "a2b_hex": "hex", "a2b_base64": "b64", "fromhex": "hex",
}


class _Unknown(Exception):
    pass


class _Truncated(Exception):
    """A decompressor stopped before the end of its payload (size cap)."""


def _module_constants(tree: ast.Module) -> dict[str, ast.expr]:
    out: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            out[node.target.id] = node.value
    return out


class _PayloadEval:
    """Evaluates the small expression language of decode chains; raises _Unknown for anything else."""

    def __init__(self, tree: ast.Module, nodes: list | None = None):
        self.aliases = import_aliases(walk(tree) if nodes is None else nodes)
        self.consts = _module_constants(tree)
        self.steps: list[str] = []
        self.depth = 0

    def qual(self, node: ast.expr) -> str:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            return f"{self.qual(node.value)}.{node.attr}"
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__"
                and node.args and isinstance(node.args[0], ast.Constant)):
            return str(node.args[0].value)
        raise _Unknown

    def ev(self, node: ast.expr):
        self.depth += 1
        if self.depth > 200:
            raise _Unknown
        try:
            return self._ev(node)
        finally:
            self.depth -= 1

    def _ev(self, node: ast.expr):
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes, int, float, type(None), bool)):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in self.consts:
                return self.ev(self.consts[node.id])
            raise _Unknown
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            terms = []
            while isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):   # a + b + c ...: no recursion
                terms.append(node.right)
                node = node.left
            terms.append(node)
            parts = [self.ev(t) for t in reversed(terms)]
            if all(isinstance(x, str) for x in parts):
                return "".join(parts)
            if all(isinstance(x, bytes) for x in parts):
                return b"".join(parts)
            raise _Unknown
        if isinstance(node, ast.List):
            return [self.ev(e) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(self.ev(e) for e in node.elts)
        if isinstance(node, ast.Dict):
            return {self.ev(k): self.ev(v) for k, v in zip(node.keys, node.values) if k is not None}
        if isinstance(node, ast.Attribute):
            q = self.qual(node)
            mod, _, name = q.rpartition(".")
            if mod == "lzma" and (name.startswith("FORMAT_") or name.startswith("FILTER_")
                                  or name.startswith("CHECK_") or name.startswith("PRESET_")
                                  or name.startswith("MF_") or name.startswith("MODE_")):
                return getattr(lzma, name)
            if mod == "zlib" and name in ("MAX_WBITS",):
                return zlib.MAX_WBITS
            raise _Unknown
        if isinstance(node, ast.Call):
            return self.call(node)
        raise _Unknown

    def call(self, node: ast.Call):
        f = node.func
        # bytes.fromhex(s), "..".encode(), x.decode()
        if isinstance(f, ast.Attribute) and f.attr in ("decode", "encode") and not _is_module_ref(f.value, self):
            obj = self.ev(f.value)
            args = [self.ev(a) for a in node.args]
            enc = args[0] if args else "utf-8"
            if f.attr == "encode" and isinstance(obj, str):
                return obj.encode(enc if isinstance(enc, str) else "utf-8")
            if f.attr == "decode" and isinstance(obj, bytes):
                return obj.decode(enc if isinstance(enc, str) else "utf-8")
            raise _Unknown
        q = self.qual(f)
        mod, _, name = q.rpartition(".")
        args = [self.ev(a) for a in node.args]
        kw = {k.arg: self.ev(k.value) for k in node.keywords if k.arg}
        if name == "fromhex" and args and isinstance(args[0], str):
            self.steps.append("hex")
            return bytes.fromhex(args[0])
        if name in ("str", "bytes") and not mod and args and isinstance(args[0], (bytes, str)):
            if name == "str" and isinstance(args[0], bytes):
                return args[0].decode(args[1] if len(args) > 1 and isinstance(args[1], str) else "utf-8")
            return args[0]
        if mod in ("base64", "binascii") and name in _ENCODING_FUNCS and args:
            data = args[0]
            data = data.encode("ascii") if isinstance(data, str) else data
            if not isinstance(data, bytes):
                raise _Unknown
            self.steps.append(_ENCODING_FUNCS[name])
            fn = getattr(base64 if mod == "base64" else binascii, name)
            try:
                return fn(data)
            except (ValueError, binascii.Error, TypeError):
                raise _Unknown from None
        if mod == "codecs" and name == "decode" and args:
            data, enc = args[0], (args[1] if len(args) > 1 else kw.get("encoding", "utf-8"))
            try:
                out = codecs.decode(data.encode() if isinstance(data, str) and enc in ("hex", "base64") else data, enc)
            except Exception:  # noqa: BLE001
                raise _Unknown from None
            self.steps.append(str(enc))
            return out
        if mod in _DECOMPRESS_MODULES and name == "decompress" and args and isinstance(args[0], bytes):
            return self.decompress(mod, args[0], args[1:], kw)
        raise _Unknown

    def decompress(self, mod: str, data: bytes, args: list, kw: dict) -> bytes:
        try:
            if mod == "lzma":
                fmt = kw.get("format", args[0] if args else lzma.FORMAT_AUTO)
                filters = kw.get("filters", args[2] if len(args) > 2 else None)
                if filters is not None:
                    filters = [dict(f) for f in filters]
                d = lzma.LZMADecompressor(format=fmt, filters=filters) if filters else lzma.LZMADecompressor(format=fmt)
                out = d.decompress(data, max_length=MAX_DECODED)
                if len(out) >= MAX_DECODED and not d.eof:
                    raise _Truncated(f"inflates past the {MAX_DECODED:,}-byte cap")
                self.steps.append("lzma(raw)" if fmt == lzma.FORMAT_RAW else "lzma")
            elif mod == "bz2":
                d = bz2.BZ2Decompressor()
                out = d.decompress(data, max_length=MAX_DECODED)
                if len(out) >= MAX_DECODED and not d.eof:
                    raise _Truncated(f"inflates past the {MAX_DECODED:,}-byte cap")
                self.steps.append("bz2")
            else:
                wbits = kw.get("wbits", args[0] if args else (31 if mod == "gzip" else zlib.MAX_WBITS))
                if mod == "gzip":
                    wbits = 31
                d = zlib.decompressobj(wbits)
                out = d.decompress(data, MAX_DECODED)
                if d.unconsumed_tail:
                    raise _Truncated(f"inflates past the {MAX_DECODED:,}-byte cap")
                self.steps.append(mod)
        except (lzma.LZMAError, OSError, zlib.error, ValueError, TypeError, EOFError):
            raise _Unknown from None
        return out


def _is_module_ref(node: ast.expr, ev: _PayloadEval) -> bool:
    return isinstance(node, ast.Name) and node.id in ev.aliases


_DECODERS = ("lzma", "zlib", "gzip", "bz2", "b64", "b64u", "b85", "a85", "b32", "b16", "hex", "base64")
_CODE_RUNNERS = ("exec", "eval", "compile")


def decode_payloads(tree: ast.Module, nodes: list | None = None, problems: list[str] | None = None,
                    siblings: set[str] | None = None) -> list[tuple[str, str, int]]:
    """Every Python source hidden in this module behind a decode/decompress chain over constants:
    (source, chain description, line of the call). Only chains with at least one decompression or one
    binary-to-text decoding count; the result must decode as UTF-8 text that parses as Python. A builtin
    exec/eval/compile of anything else (not a constant string, not a decodable chain, not a sibling file the
    loader reads itself) is code the audit cannot see: it is appended to `problems`, as is a payload the decoders
    gave up on (over the size cap, corrupt)."""
    out: list[tuple[str, str, int]] = []
    problems = [] if problems is None else problems
    seen: set[int] = set()
    nodes = walk(tree) if nodes is None else nodes
    aliases = import_aliases(nodes)
    shadowed = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    runners = [n for n in nodes if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
               and n.func.id in _CODE_RUNNERS and n.func.id not in aliases and n.func.id not in shadowed]
    wrappers = any(isinstance(n, ast.Attribute) and n.attr in (
        "decompress", "b85decode", "b64decode", "a85decode", "b32decode", "b16decode", "unhexlify", "fromhex",
        "decodebytes", "a2b_base64", "a2b_hex", "urlsafe_b64decode")
        or isinstance(n, ast.Name) and n.id in ("decompress", "b85decode", "b64decode", "a85decode", "unhexlify",
                                                  "__import__") for n in nodes)
    if not wrappers and not runners:
        return out
    ev = _PayloadEval(tree, nodes)
    calls = [n for n in nodes if isinstance(n, ast.Call)] if wrappers else runners
    runner_ids = {id(n) for n in runners}
    for node in calls:
        name = call_name(node)
        is_exec = name in _CODE_RUNNERS
        if not (is_exec or name == "decompress" or name == "decode"):
            continue
        if is_exec and id(node) not in runner_ids:
            continue
        target = node.args[0] if (is_exec and node.args) else node
        if id(target) in seen:
            continue
        ev.steps = []
        value = None
        try:
            value = ev.ev(target)
        except _Truncated as exc:
            problems.append(f"line {node.lineno}: a wrapper payload {exc}; the code inside was not analysed")
            for sub in walk(target):
                seen.add(id(sub))
            continue
        except (_Unknown, RecursionError, MemoryError):
            value = None
        literal = is_exec and isinstance(value, str) and not ev.steps
        if value is None or not (literal or (ev.steps and any(x.split("(")[0] in _DECODERS for x in ev.steps))):
            if is_exec and not _names_sibling(target, siblings):
                problems.append(f"line {node.lineno}: {name}() of code the auditor cannot decode without running it; "
                                "that code was not analysed")
            continue
        for sub in walk(target):
            seen.add(id(sub))
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                if is_exec:
                    problems.append(f"line {node.lineno}: {name}() of a payload that is not UTF-8 source; "
                                    "not analysed")
                continue
        if not isinstance(value, str) or not value.strip():
            continue
        if not is_exec and not _looks_like_python(value):
            continue
        chain = "+".join(reversed(ev.steps)) or "literal"
        out.append((value, chain, node.lineno))
    return out


def _names_sibling(node: ast.AST, siblings: set[str] | None) -> bool:
    """The exec'd expression names a sibling .py file (exec(open(... 'x.py' ...).read())): the loader reads it."""
    for n in walk(node):
        if isinstance(n, ast.Constant) and isinstance(n.value, str):
            for m in _PY_NAME.finditer(n.value):
                if siblings is None or Path(m.group(1)).name in siblings:
                    return True
    return False


def _looks_like_python(text: str) -> bool:
    try:
        tree = ast.parse(text)
    except Exception:  # noqa: BLE001
        return False
    return any(isinstance(s, (ast.FunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom, ast.Assign, ast.Expr,
                              ast.If, ast.For)) for s in tree.body) and len(text) > 20


# ------------------------------------------------------------------------------------------------------------
# Program assembly: entry scripts and the sibling files they reach
# ------------------------------------------------------------------------------------------------------------

_ENTRY_NAMES = ("train_gpt.py",)


def entry_scripts(folder: Path) -> list[Path]:
    pys = sorted(p for p in folder.glob("*.py") if p.is_file())
    for name in _ENTRY_NAMES:
        if (folder / name).is_file():
            return [folder / name]
    if len(pys) == 1:
        return pys
    mains = [p for p in pys if "__main__" in _safe_read(p)]
    trains = [p for p in mains if p.name.startswith("train")]
    return trains or mains or pys


def _safe_read(p: Path) -> str:
    try:
        return read_text(p)
    except InputError:
        return ""


@dataclasses.dataclass
class LoadedProgram:
    root: Path                    # folder holding the entry
    units: list[SourceUnit]
    notes: list[str]              # warnings about reading and decoding
    entry_files: list[Path]
    ran_files: list[Path] = dataclasses.field(default_factory=list)   # siblings run as scripts (exec/runpy/...)
    incomplete: list[str] = dataclasses.field(default_factory=list)   # code that could not be analysed


def load_program(path: Path) -> LoadedProgram:
    path = Path(path)
    if not path.exists():
        raise InputError(f"no such file or folder: {path}")
    if path.is_dir():
        root = path
        entries = entry_scripts(path)
        if not entries:
            if any(p.suffix in (".log", ".txt", ".json") for p in path.iterdir()):
                return LoadedProgram(root=path, units=[], notes=[], entry_files=[], incomplete=[
                    f"{path.name}: no Python script in the folder; only its logs and submission.json were audited, "
                    "no code rule was checked"])
            raise InputError(f"{path} holds no Python script to audit")
    else:
        root = path.parent
        if not path.is_file():
            raise InputError(f"{path} is not a regular file (a device, pipe or socket): give a script or a folder")
        if path.stat().st_size == 0:
            raise InputError(f"{path} is empty: there is no code to audit")
        if path.suffix not in (".py", "") and not _safe_read(path).lstrip().startswith(("import", "from", "#", '"""')):
            raise InputError(f"{path} is not a Python script")
        entries = [path]
    units: list[SourceUnit] = []
    notes: list[str] = []
    problems: list[str] = []
    done: set[Path] = set()
    ran: list[Path] = []
    queue: list[tuple[Path, bool]] = [(p, True) for p in entries]
    while queue:
        file, is_entry = queue.pop(0)
        rp = file.resolve()
        if rp in done:
            continue
        done.add(rp)
        if is_entry and file not in entries:
            ran.append(file)
        text = read_text(file, problems)
        display = _display(file, root)
        siblings = {p.name for p in file.parent.glob("*.py")}     # listed once a file: decoder and imports
        file_units = _units_from_text(file, display, text, is_entry, notes, problems, siblings)
        units.extend(file_units)
        for u in file_units:
            for sib, runs_main in _sibling_refs(u, siblings):
                if sib.resolve() not in done:
                    queue.append((sib, runs_main))
    if path.is_file() and not any(u.tree.body for u in units) and not problems:
        raise InputError(f"{path} holds no Python statements (only comments or blank lines): nothing to audit")
    for e in entries if path.is_dir() else ():
        if not any(u.tree.body for u in units if u.path == e) and not any(p.startswith(e.name) for p in problems):
            problems.append(f"{_display(e, root)} is empty or holds only comments: the entry's code is not there to "
                            "audit")
    return LoadedProgram(root=root, units=units, notes=notes, entry_files=entries, ran_files=ran,
                         incomplete=problems)


def _display(file: Path, root: Path) -> str:
    try:
        return str(file.resolve().relative_to(root.resolve()))
    except ValueError:
        return file.name


def _units_from_text(file: Path, display: str, text: str, is_entry: bool, notes: list[str], problems: list[str],
                     siblings: set[str], chain: str = "", depth: int = 0) -> list[SourceUnit]:
    tree, note, unread = tolerant_parse(text)
    where = f"{display}{' (decoded ' + chain + ')' if chain else ''}"
    if note:
        notes.append(f"{where}: {note}")
    module = file.stem if not chain else f"{file.stem}__decoded{depth}"
    unit = SourceUnit(path=file, display=display, text=text, tree=tree, module=module, decoded=chain,
                      is_entry=is_entry, parse_note=note, problems=[f"{where}: {u}" for u in unread])
    problems.extend(unit.problems)
    out = [unit]
    found: list[str] = []
    payloads = decode_payloads(tree, unit.nodes, found, siblings)
    problems.extend(f"{where}: {x}" for x in found)
    if depth >= MAX_DEPTH:
        if payloads:
            problems.append(f"{where}: wrappers nested deeper than {MAX_DEPTH} levels were not followed")
        return out
    for inner, how, line in payloads:
        full = f"{how}>{chain}" if chain else how
        notes.append(f"{display}: decoded a self-extracting wrapper ({how}) at line {line}"
                     + (f" inside {chain}" if chain else ""))
        out.extend(_units_from_text(file, display, inner, is_entry, notes, problems, siblings, full, depth + 1))
    return out


_PY_NAME = re.compile(r"([A-Za-z0-9_.\-]+\.py)\b")


def _sibling_refs(unit: SourceUnit, siblings: set[str]) -> list[tuple[Path, bool]]:
    """Sibling .py files this unit imports (module level runs, __main__ does not) or runs as a script
    (exec(open(...)), runpy, subprocess, os.system: __main__ runs)."""
    folder = unit.path.parent
    if not siblings - {unit.path.name}:
        return []
    out: list[tuple[Path, bool]] = []
    docstrings = {id(n.value) for n in unit.nodes if isinstance(n, ast.Expr)}
    for node in unit.nodes:
        if isinstance(node, ast.Import):
            for a in node.names:
                p = folder / (a.name.split(".")[0] + ".py")
                if p.name in siblings:
                    out.append((p, False))
        elif isinstance(node, ast.ImportFrom):
            if node.module:
                p = folder / (node.module.split(".")[0] + ".py")
                if p.name in siblings:
                    out.append((p, False))
            if node.level and not node.module:
                for a in node.names:
                    p = folder / (a.name + ".py")
                    if p.name in siblings:
                        out.append((p, False))
        elif isinstance(node, ast.Call):
            fname = call_name(node)
            if fname == "import_module" and node.args and isinstance(node.args[0], ast.Constant):
                p = folder / (str(node.args[0].value).split(".")[0] + ".py")
                if p.name in siblings:
                    out.append((p, False))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and ".py" in node.value \
                and id(node) not in docstrings:
            for m in _PY_NAME.finditer(node.value):
                p = folder / Path(m.group(1)).name
                if p.name in siblings and p.resolve() != unit.path.resolve():
                    out.append((p, True))
    return out
