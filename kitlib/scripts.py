"""Import a Python script by its path (e.g. a train_gpt.py: its ``main()`` runs only under ``__main__``).

    kit = load_script("train_gpt.py", "train_gpt")        # registered as sys.modules["train_gpt"]
    other = load_script("../parameter-golf/train_gpt.py")  # a private module name derived from the path

Every failure is a ``ScriptError`` with one line for the user: the file is missing, it cannot be read, importing it
raised, or it called ``sys.exit`` at import time. The script's folder is on ``sys.path`` while it is imported (so
that it can import its siblings) and taken off again afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path


class ScriptError(ImportError):
    """A script that cannot be imported; the message is one line."""


def module_name(path: str | Path) -> str:
    """A private module name for ``path``: ``_script_<stem>_<10 hex of the resolved path's sha1>``."""
    p = Path(path).resolve()
    stem = "".join(ch if ch.isalnum() else "_" for ch in p.stem)
    return f"_script_{stem}_{hashlib.sha1(str(p).encode()).hexdigest()[:10]}"


def load_script(path: str | Path, name: str | None = None):
    """The module made by executing ``path``, registered in ``sys.modules`` as ``name`` (default
    ``module_name(path)``). A module already registered under that name from the same file is returned as is."""
    p = Path(path).expanduser().resolve()
    name = name or module_name(p)
    old = sys.modules.get(name)
    if old is not None and getattr(old, "__file__", None) and Path(old.__file__).resolve() == p:
        return old
    if not p.is_file():
        raise ScriptError(f"{p} does not exist" if not p.exists() else f"{p} is not a file")
    spec = importlib.util.spec_from_file_location(name, p, loader=importlib.machinery.SourceFileLoader(name, str(p)))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    folder = str(p.parent)
    sys.path.insert(0, folder)
    loaded = False
    try:
        spec.loader.exec_module(mod)
        loaded = True
    except SystemExit as exc:
        raise ScriptError(f"importing {p} called sys.exit({exc.code}); its main() must run only under "
                          "`if __name__ == \"__main__\":`") from None
    except Exception as exc:  # noqa: BLE001 - any import failure is one line for the user
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ScriptError(f"importing {p} failed: {type(exc).__name__}: {first}") from None
    finally:
        if not loaded and sys.modules.get(name) is mod:
            del sys.modules[name]
        try:
            sys.path.remove(folder)
        except ValueError:
            pass
    return mod
