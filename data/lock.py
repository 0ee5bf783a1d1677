"""One build of a dataset at a time: an exclusive lock per dataset name, and the clean-up of what an
interrupted build left behind.

Two ``python -m data.prepare --force`` runs of the same dataset would otherwise interleave: one build's shards
beside the other's tokenizer, under a manifest that hashes whichever tokenizer was on disk last. The lock is a
``flock`` on ``<data root>/datasets/.<dataset>.lock``: the kernel releases it when the holder exits, even by
``kill -9``, so a stale lock file never blocks a later run. A second build waits for the first (saying so on
stderr) and then decides afresh whether anything is left to do.

Files are written under hidden temporary names (``.<name>.<suffix>.tmp``) and renamed into place; a build killed
mid-write leaves such a file. The next build of the same dataset, holding the lock, removes them.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path


def lock_path(data_root: Path, dataset: str) -> Path:
    return Path(data_root) / "datasets" / f".{dataset}.lock"


@contextmanager
def dataset_lock(data_root: Path, dataset: str, *, wait_note=None):
    """Hold the exclusive build lock of ``dataset`` under ``data_root`` for the ``with`` block.

    Blocks while another process holds it (``wait_note`` is printed once, to stderr, when it has to wait). The
    lock file is removed on release; a holder re-checks after locking that the file it locked is still the one
    at the path (another holder may have removed it meanwhile), so two processes never hold it at once.
    """
    path = lock_path(data_root, dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not waited:
                print(wait_note or f"waiting for another build of {dataset} to finish ...", file=sys.stderr,
                      flush=True)
                waited = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the file was replaced or removed while we waited: lock the current one
        time.sleep(0.01)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)


def remove_stale_temps(folder: Path, names=None) -> list[Path]:
    """Remove hidden temporary files (``.<name>.<suffix>.tmp``, the suffix a pid or random letters) in ``folder``:
    all of them, or only those of the given file ``names``. Call it while holding the dataset's lock. Returns what
    was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.glob(".*.tmp"):
        if names is not None and not any(p.name.startswith(f".{n}.") for n in names):
            continue
        if p.is_file() or p.is_symlink():
            p.unlink()
            removed.append(p)
    return removed


def clean_interrupted(folder: Path, own_files: list[Path]) -> list[Path]:
    """What an interrupted build of a dataset left: every hidden temporary file in its ``folder``, and those of its
    ``own_files`` elsewhere (its tokenizer files, in the shared ``tokenizers/`` folder). Call it holding the lock."""
    removed = remove_stale_temps(folder)
    by_dir: dict[Path, set[str]] = {}
    for f in own_files:
        by_dir.setdefault(Path(f).parent, set()).add(Path(f).name)
    for d, names in by_dir.items():
        removed += remove_stale_temps(d, names)
    return removed
