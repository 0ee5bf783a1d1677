"""Self-extracting wrapper for train_gpt.py (lzma + base85), and its static decoder.

The wrapper is a few lines of Python holding the readable source compressed (raw LZMA2,
preset 9e) and base85-encoded. Running or importing it behaves like the readable script:

- the source is executed in the wrapper's own module namespace, so ``__name__`` (``"__main__"``
  when run, the module name when imported), ``__file__``, ``__spec__``, ``__loader__``,
  ``sys.argv`` and the module docstring are what the readable script would see;
- the source is compiled under the file name ``<wrapper path>#inner`` and registered in
  ``linecache``, so ``inspect.getsource``, ``traceback.format_exc`` and logging show the
  readable lines (torch.compile, triton and friends that read source keep working). Only
  the interpreter's own last-resort traceback printer, which reads source from disk, shows
  file and line numbers without the source text;
- ``__file__`` is the WRAPPER's path. The kit's train_gpt.py hashes its own file
  (``open(__file__, "rb")``) for ``code_sha256``/``code_bytes``, so a run started from the
  wrapper reports the wrapper's sha256 and size: exactly the bytes that are submitted.
  Logs made by the readable script report the readable file's hash instead.

``decode_wrapper`` recovers the inner source without executing anything (it reads the
string literal with ``ast``), so ``check`` and auditors can compare it byte for byte.
"""

from __future__ import annotations

import ast
import base64
import lzma

_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]

_TEMPLATE = (
    "import lzma as L,base64 as B,linecache as C\n"
    's=L.decompress(B.b85decode("{payload}"),format=L.FORMAT_RAW,filters=[{{"id":L.FILTER_LZMA2}}])\n'
    'f=globals().get("__file__","train_gpt.py")+"#inner"\n'
    "C.cache[f]=(len(s),None,s.decode().splitlines(True),f)\n"
    'c=compile(s,f,"exec");del L,B,C,s,f\n'
    'exec(globals().pop("c"))\n'
)
# Every helper name is removed from the module namespace before the inner source runs
# (``globals().pop`` takes the code object out before ``exec`` starts), so the readable
# script sees the same globals it would see when run directly.


class WrapError(ValueError):
    pass


def compress(source: bytes) -> bytes:
    return lzma.compress(source, format=lzma.FORMAT_RAW, filters=_FILTERS)


def make_wrapper(source: bytes) -> bytes:
    """Wrapper bytes for ``source`` (UTF-8 Python). Verifies the round trip."""
    try:
        source.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WrapError(f"script is not UTF-8: {exc}") from exc
    payload = base64.b85encode(compress(source)).decode("ascii")
    assert '"' not in payload and "\\" not in payload  # b85 alphabet has neither
    wrapper = _TEMPLATE.format(payload=payload).encode("ascii")
    if decode_wrapper(wrapper) != source:
        raise WrapError("wrapper does not decode to the source")
    return wrapper


# train_gpt.py's CODE_FORM=minified: python-minifier with these options, then the wrapper (shipped_code there).
MINIFY_OPTIONS = dict(rename_locals=False, hoist_literals=False, remove_literal_statements=True, prefer_single_line=True)


def minified(source: bytes) -> bytes | None:
    """The source as CODE_FORM=minified minifies it before wrapping (None if python-minifier cannot read it)."""
    try:
        import python_minifier
        return python_minifier.minify(source.decode(), **MINIFY_OPTIONS).encode()
    except Exception:  # noqa: BLE001 - unreadable source: no minified form
        return None


def _literal_args(call: ast.Call) -> list:
    out = []
    for a in call.args:
        if isinstance(a, ast.Constant) and isinstance(a.value, (str, bytes)):
            out.append(a.value)
    return out


def decode_wrapper(data: bytes) -> bytes | None:
    """The inner source of an lzma/zlib + base85/base64 wrapper, or None if ``data`` is not one.

    Static: parses the file, finds a b85decode/b64decode call on a string literal, and tries
    the usual decompressors (raw LZMA2, xz/alone, zlib). Nothing is executed.
    """
    try:
        tree = ast.parse(data)
    except (SyntaxError, ValueError):
        return None
    blobs: list[tuple[str, bytes]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        name = fn.attr if isinstance(fn, ast.Attribute) else (fn.id if isinstance(fn, ast.Name) else "")
        if name in ("b85decode", "b64decode", "a85decode"):
            for lit in _literal_args(node):
                blobs.append((name, lit.encode("ascii", "ignore") if isinstance(lit, str) else lit))
    if not blobs or len(data) > 4 * 1024 * 1024:
        return None
    for name, lit in blobs:
        try:
            raw = getattr(base64, name)(lit)
        except (ValueError, TypeError):
            continue
        for attempt in (
            lambda r: lzma.decompress(r, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}]),
            lambda r: lzma.decompress(r),
            lambda r: __import__("zlib").decompress(r),
        ):
            try:
                return attempt(raw)
            except Exception:  # noqa: BLE001 - try the next format
                continue
    return None
