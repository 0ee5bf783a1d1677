"""Files written whole or not at all, and paths checked before any work starts.

``write_atomic`` writes to a hidden temporary name beside the destination (``.<name>.<random>.tmp``), flushes and
fsyncs it, then renames it over the destination: a reader (or a crash, or kill -9) sees the old file or the new one,
never half of one. A failure removes the temporary file and re-raises.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike, *chunks: bytes, mode: int = 0o644) -> Path:
    """Write the concatenation of ``chunks`` to ``path`` atomically (parents created). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """``text`` as UTF-8, atomically."""
    return write_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj, indent: int | None = 2) -> Path:
    """``obj`` as JSON (a trailing newline), atomically. Non-finite floats are refused (ValueError): a file that says
    NaN is not JSON."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def unwritable(path: str | os.PathLike, *, folder: bool = False) -> str | None:
    """Why ``path`` cannot be written (``folder``: created or filled as a folder), or None when it can.

    Creates nothing: checks that the path is not the wrong kind of thing (a folder where a file goes, a file where a
    folder goes) and that its nearest existing ancestor is a folder this process may write into.
    """
    p = Path(path)
    if p.exists() or p.is_symlink():
        if folder and not p.is_dir():
            return f"{p} exists and is not a folder"
        if not folder and p.is_dir():
            return f"{p} is a folder; give a file name"
        target = p if folder else p.parent
        if not os.access(target, os.W_OK | os.X_OK):
            return f"no permission to write in {target}"
        if not folder and not os.access(p, os.W_OK):
            return f"no permission to overwrite {p}"
        return None
    parent = p.parent
    while not parent.exists():
        if parent.is_symlink():
            return f"{parent} is a broken link"
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a folder, so {p} cannot be created"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"no permission to create {p} (cannot write in {parent})"
    return None
