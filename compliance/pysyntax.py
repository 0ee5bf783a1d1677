"""Parsing any entry's source on this interpreter: Python 3.12-3.13 syntax and very deep expressions.

The auditor runs on Python 3.11, whose parser rejects two things several entries use:
- PEP 701 f-strings (the enclosing quote reused inside a replacement field, backslashes, comments and line breaks
  in a field, any nesting depth), e.g. ``log(f"train_shards: {len(glob("fineweb_train_*.bin"))}")``;
- PEP 695 type parameters (``def f[T](x: T)``, ``class C[T]:``, ``type Alias = ...``).
When the plain parse fails, ``modernize`` rewrites the source into 3.11 syntax with the same meaning to the
analysis and the same line numbers: each f-string (with the plain strings it is implicitly concatenated with)
becomes a marker call ``__pg_fstring__('lit', __pg_fvalue__((expr), conversion, spec), ...)`` that is turned back
into the ``ast.JoinedStr`` / ``ast.FormattedValue`` nodes a 3.12 parser would build; type parameter lists are
dropped (they carry no data flow) and ``type X = v`` becomes ``X = v``.

Very long expressions (a 100,000-term ``a + b + ...``) exceed the parser's recursion limit when the tree is
built; ``parse`` runs the parser in a thread with a large stack and a raised limit, so such files parse whole.
"""

from __future__ import annotations

import ast
import re
import sys
import threading

FSTRING = "__pg_fstring__"
FVALUE = "__pg_fvalue__"
PARSE_STACK = 512 * 1024 * 1024      # bytes of stack for the parser thread
PARSE_RECURSION = 1_000_000


class Unsupported(Exception):
    """The rewriter met text it cannot read (an unterminated string, a stray quote): use the repair path."""


# ------------------------------------------------------------------------------------------------------------
# Parsing deep trees
# ------------------------------------------------------------------------------------------------------------

def parse(text: str, filename: str = "<entry>") -> ast.Module:
    """ast.parse in a thread with a large stack and recursion limit; raises what ast.parse raises."""
    box: dict = {}

    def run():
        old = sys.getrecursionlimit()
        sys.setrecursionlimit(max(old, PARSE_RECURSION))
        try:
            box["tree"] = ast.parse(text, filename=filename)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc
        finally:
            sys.setrecursionlimit(old)

    old_size = threading.stack_size()
    try:
        threading.stack_size(PARSE_STACK)
        t = threading.Thread(target=run, name="compliance-parse")
        t.start()
    finally:
        threading.stack_size(old_size)
    t.join()
    if "error" in box:
        raise box["error"]
    return box["tree"]


def parse_modern(text: str) -> tuple[ast.Module, bool]:
    """Parse 3.11 syntax, else the source rewritten by ``modernize``. Returns (tree, rewritten); raises the
    original SyntaxError when neither parses."""
    try:
        return parse(text), False
    except SyntaxError as first:
        try:
            new = modernize(text)
        except Unsupported:
            raise first from None
        if new == text:
            raise
        try:
            tree = parse(new)
        except SyntaxError:
            raise first from None
        restore_fstrings(tree)
        return tree, True


# ------------------------------------------------------------------------------------------------------------
# The rewriter
# ------------------------------------------------------------------------------------------------------------

_PREFIX = re.compile(r"""(?i)(rb|br|fr|rf|r|b|u|f)?('''|\"\"\"|'|")""")
_NAME = re.compile(r"[^\W\d]\w*")
_INTERESTING = re.compile(r"""["'#\[\](){}\\]|[^\W\d]""")
_INTERESTING_FIELD = re.compile(r"""["'#\[\](){}\\!:=]|[^\W\d]""")
_PLAIN_STOP = {q: re.compile(r"[\\\n]|" + re.escape(q)) for q in ("'", '"', "'''", '"""')}
_DEF_NAME = re.compile(r"[ \t]*([^\W\d]\w*)[ \t]*")
_CONVERSIONS = {"r": 114, "s": 115, "a": 97}


class _Scanner:
    def __init__(self, text: str):
        self.s = text
        self.n = len(text)

    # -- code ---------------------------------------------------------------------------------------------
    def code(self, i: int, stop: str = "") -> tuple[str, int]:
        """Rewrite code from i. With `stop` (inside an f-string field), end at a top-level character of `stop`
        and return (text, index of that character)."""
        s, out = self.s, []
        depth = 0
        line_start = True
        pattern = _INTERESTING_FIELD if stop else _INTERESTING
        while i < self.n:
            m = pattern.search(s, i)
            if m is None:
                out.append(s[i:])
                i = self.n
                break
            j = m.start()
            chunk = s[i:j]
            if chunk:
                out.append(chunk)
                if "\n" in chunk and depth == 0:
                    line_start = not chunk[chunk.rfind("\n") + 1:].strip(" \t;")
                elif chunk.strip():
                    line_start = False
            c = s[j]
            if stop and depth == 0 and c in stop and not self._is_operator(j):
                return "".join(out), j
            if c in "!:=":
                out.append(c)
                i = j + 1
                continue
            if c == "#":
                k = s.find("\n", j)
                k = self.n if k < 0 else k
                out.append(s[j:k])
                i = k
                continue
            if c == "\\":
                out.append(s[j:j + 2])
                i = j + 2
                continue
            if c in "([{":
                depth += 1
                out.append(c)
                i = j + 1
                line_start = False
                continue
            if c in ")]}":
                depth -= 1
                out.append(c)
                i = j + 1
                continue
            if _PREFIX.match(s, j) is not None:
                text, i = self.strings(j, in_brackets=depth > 0 or bool(stop))
                out.append(text)
                line_start = False
                continue
            nm = _NAME.match(s, j)
            word = nm.group(0)
            k = nm.end()
            if word in ("def", "class") or (word == "type" and line_start and depth == 0 and not stop):
                text, k = self._type_params(word, j, k)
                out.append(text)
                i = k
                line_start = False
                continue
            out.append(word)
            i = k
            line_start = False
        if stop:
            raise Unsupported("unterminated f-string field")
        return "".join(out), i

    def _is_operator(self, j: int) -> bool:
        """`!=` / `==` / `<=` / `>=` at a field's top level are operators, not a conversion or a debug `=`."""
        s = self.s
        c = s[j]
        nxt = s[j + 1] if j + 1 < self.n else ""
        prev = s[j - 1] if j else ""
        if c == "!":
            return nxt == "="
        if c == "=":
            if nxt == "=" or prev in "=!<>":
                return True
            rest = s[j + 1:j + 64].lstrip()
            return rest[:1] not in ("}", "!", ":")
        return False

    def _type_params(self, word: str, j: int, k: int) -> tuple[str, int]:
        """`def f[T](...)`, `class C[T]`, `type X[T] = v`: drop the type parameter list (and the `type`)."""
        s = self.s
        m = _DEF_NAME.match(s, k)
        if m is None or m.end() == k or not m.group(1):
            return word, k
        name_end = m.end()
        nxt = s[name_end:name_end + 1]
        if word == "type" and (nxt not in ("[", "=") or s[name_end:name_end + 2] == "=="):
            return word, k
        head = s[j:name_end] if word != "type" else s[k:name_end].lstrip(" \t")
        if nxt != "[":
            return head, name_end
        end = self._matching(name_end)
        filler = " \\\n" * s[name_end:end + 1].count("\n")
        return head + filler, end + 1

    def _matching(self, i: int) -> int:
        depth = 0
        s = self.s
        while i < self.n:
            c = s[i]
            if c in "([{":
                depth += 1
            elif c in ")]}":
                depth -= 1
                if depth == 0:
                    return i
            elif c in "'\"":
                _, i = self.strings(i, in_brackets=True)
                continue
            i += 1
        raise Unsupported("unbalanced brackets in a type parameter list")

    # -- strings ------------------------------------------------------------------------------------------
    def _one(self, i: int):
        """Read one string literal at i: (prefix, parts, end). Parts of f-strings are ("lit", raw) and
        ("field", rewritten expression, conversion, spec parts, debug text); a plain string is one ("lit", raw)."""
        m = _PREFIX.match(self.s, i)
        prefix, quote = (m.group(1) or ""), m.group(2)
        j = m.end()
        raw = "r" in prefix.lower()
        if "f" in prefix.lower():
            parts, j = self._fbody(j, quote, raw)
            return prefix, parts, j
        k = self._plain_end(j, quote)
        return prefix, [("lit", self.s[j:k])], k + len(quote)

    def _plain_end(self, j: int, quote: str) -> int:
        s, rx = self.s, _PLAIN_STOP[quote]
        while True:
            m = rx.search(s, j)
            if m is None:
                raise Unsupported("unterminated string")
            t = m.group(0)
            if t == "\\":
                j = m.start() + 2
            elif t == "\n":
                if len(quote) == 1:
                    raise Unsupported("unterminated string")
                j = m.start() + 1
            else:
                return m.start()

    def _fbody(self, j: int, quote: str, raw: bool, spec: bool = False):
        """The parts of an f-string body (or of a format spec when spec=True, ending at the field's `}`)."""
        s = self.s
        parts = []
        lit = []
        while j < self.n:
            c = s[j]
            if not spec and s.startswith(quote, j):
                break
            if spec and c == "}":
                break
            if c == "\\":
                if not raw and s[j + 1:j + 3] == "N{":
                    k = s.find("}", j)
                    if k < 0:
                        raise Unsupported("unterminated \\N{...} escape")
                    lit.append(s[j:k + 1])
                    j = k + 1
                    continue
                lit.append(s[j:j + 2])
                j += 2
                continue
            if c == "\n" and len(quote) == 1 and not spec:
                raise Unsupported("unterminated f-string")
            if c in "{}" and s[j + 1:j + 2] == c and not spec:
                lit.append(c)
                j += 2
                continue
            if c == "{":
                if lit:
                    parts.append(("lit", "".join(lit)))
                    lit = []
                part, j = self._field(j + 1, quote, raw)
                parts.append(part)
                continue
            if c == "}":
                raise Unsupported("single '}' in an f-string")
            lit.append(c)
            j += 1
        else:
            raise Unsupported("unterminated f-string")
        if lit:
            parts.append(("lit", "".join(lit)))
        return parts, (j if spec else j + len(quote))

    def _field(self, j: int, quote: str, raw: bool):
        start = j
        expr, k = self.code(j, stop="}!:=")
        s = self.s
        debug = ""
        conv = -1
        spec = None
        if s[k] == "=":
            k += 1
            while k < self.n and s[k] in " \t\n":
                k += 1
            debug = s[start:k]
        if k < self.n and s[k] == "!":
            conv = _CONVERSIONS.get(s[k + 1:k + 2], -1)
            k += 2
        if k < self.n and s[k] == ":":
            spec, k = self._fbody(k + 1, quote, raw, spec=True)
        if k >= self.n or s[k] != "}":
            raise Unsupported("f-string field not closed")
        if debug and conv == -1 and spec is None:
            conv = 114
        return ("field", expr, conv, spec, debug), k + 1

    def strings(self, i: int, in_brackets: bool) -> tuple[str, int]:
        """Rewrite a group of implicitly concatenated literals starting at i; groups without an f-string are
        copied as they are."""
        group = []       # (prefix, parts, start, end)
        j = i
        while True:
            prefix, parts, end = self._one(j)
            group.append((prefix, parts, j, end))
            k = self._next_literal(end, in_brackets)
            if k is None:
                break
            j = k
        end = group[-1][3]
        if not any("f" in g[0].lower() for g in group):
            return self.s[i:end], end
        if any("b" in g[0].lower() for g in group):
            raise Unsupported("bytes and f-string literals concatenated")
        pieces = []
        for n, (prefix, parts, a, b) in enumerate(group):
            raw = "r" in prefix.lower()
            if "f" not in prefix.lower():
                pieces.append(self._literal(parts[0][1], raw))
            else:
                pieces.extend(self._emit_parts(parts, raw) or ["''"])
            if n + 1 < len(group):
                pieces[-1] += "\n" * self.s[b:group[n + 1][2]].count("\n")
        return f"{FSTRING}(" + ", ".join(pieces) + ")", end

    def _next_literal(self, j: int, in_brackets: bool) -> int | None:
        """Index of a string literal that follows j (implicit concatenation), after blanks, line continuations
        and, inside brackets, line breaks and comments."""
        s = self.s
        k = j
        while k < self.n:
            c = s[k]
            if c in " \t\r\f":
                k += 1
            elif c == "\\" and s[k + 1:k + 2] == "\n":
                k += 2
            elif in_brackets and c == "\n":
                k += 1
            elif in_brackets and c == "#":
                e = s.find("\n", k)
                k = self.n if e < 0 else e
            else:
                break
        if k >= self.n or _PREFIX.match(s, k) is None:
            return None
        return k

    def _emit_parts(self, parts, raw) -> list[str]:
        out = []
        for p in parts:
            if p[0] == "lit":
                out.append(self._literal(p[1], raw))
            else:
                _, expr, conv, spec, debug = p
                if debug:
                    out.append(repr(debug))
                spec_txt = "None" if spec is None else f"{FSTRING}(" + ", ".join(
                    self._emit_parts(spec, raw) or ["''"]) + ")"
                out.append(f"{FVALUE}(({expr}), {conv}, {spec_txt})")
        return out

    @staticmethod
    def _literal(raw_text: str, raw: bool) -> str:
        """A literal part as a 3.11 literal with the same value; its line breaks follow it (same line count)."""
        nl = raw_text.count("\n")
        value = raw_text
        if not raw:
            body = []
            k = 0
            while k < len(raw_text):
                c = raw_text[k]
                if c == "\\":
                    body.append(raw_text[k:k + 2])
                    k += 2
                    continue
                body.append('\\"' if c == '"' else c)
                k += 1
            try:
                value = ast.literal_eval('"""' + "".join(body) + ' """')[:-1]
            except (SyntaxError, ValueError):
                value = raw_text
        return repr(value) + "\n" * nl


def modernize(text: str) -> str:
    """The source with PEP 701 f-strings and PEP 695 type parameters rewritten into 3.11 syntax (same lines)."""
    out, _ = _Scanner(text).code(0)
    return out


def restore_fstrings(tree: ast.Module) -> None:
    """Turn the marker calls left by ``modernize`` back into JoinedStr / FormattedValue nodes, in place."""
    from .astutil import postorder
    for node in postorder(tree):    # inner markers first: an f-string nested in a field is built before its host
        for name, value in ast.iter_fields(node):
            if isinstance(value, list):
                for i, v in enumerate(value):
                    if _is_marker(v, FSTRING):
                        value[i] = _joined(v)
            elif _is_marker(value, FSTRING):
                setattr(node, name, _joined(value))


def _is_marker(node, name: str) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name


def _joined(call: ast.Call) -> ast.JoinedStr:
    values = []
    for a in call.args:
        if _is_marker(a, FVALUE) and len(a.args) == 3:
            spec = a.args[2]
            fmt = _joined(spec) if _is_marker(spec, FSTRING) else spec if isinstance(spec, ast.JoinedStr) else None
            conv = a.args[1]
            conv_v = conv.value if isinstance(conv, ast.Constant) else -conv.operand.value \
                if isinstance(conv, ast.UnaryOp) else -1
            fv = ast.FormattedValue(value=a.args[0], conversion=conv_v, format_spec=fmt)
            values.append(ast.copy_location(fv, a))
        elif isinstance(a, ast.Constant) and isinstance(a.value, str):
            if values and isinstance(values[-1], ast.Constant):
                values[-1].value += a.value
            else:
                values.append(ast.copy_location(ast.Constant(value=a.value), a))
        else:
            values.append(a)
    return ast.copy_location(ast.JoinedStr(values=values), call)
