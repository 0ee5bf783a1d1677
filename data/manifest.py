"""A dataset's ``manifest.json``: hashing, atomic JSON writes, shard names and the up-to-date check.

Shared by the document builder (``data/prepare.py``) and the FineWeb downloader (``data/fineweb.py``); it imports
neither of them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from data.shards import HEADER_BYTES
from kitlib.fileio import write_atomic

FORMAT = "parameter-golf-kit dataset manifest"
# Up-to-date checks re-hash every file when the dataset is at most this big (else sizes only).
VERIFY_HASH_LIMIT_BYTES = 1 << 30
SHARD_GLOB = "fineweb_*_[0-9][0-9][0-9][0-9][0-9][0-9].bin"  # token shards and val byte sidecars
PATHS_NOTE = ("tokenizer paths are relative to the data root (the folder holding datasets/ and tokenizers/); "
              "shard names are relative to this manifest's folder")


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def write_json_atomic(path: Path, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def shard_name(split: str, index: int) -> str:
    """``fineweb_{split}_{index:06d}.bin``; ``split`` is ``train``, ``val`` or ``val_bytes`` (the sidecar)."""
    return f"fineweb_{split}_{index:06d}.bin"


def existing_shards(folder: Path) -> list[Path]:
    """Regular files named like a shard (token shards and val byte sidecars) in ``folder``."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(SHARD_GLOB) if p.is_file())


def odd_shard_entries(folder: Path) -> list[Path]:
    """Entries named like a shard that are not regular files (a folder, a dangling or looping link)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(SHARD_GLOB) if not p.is_file())


def manifest_up_to_date(manifest_path: Path, inputs_sha256: str, data_root: Path) -> bool:
    """True when ``manifest_path`` records ``inputs_sha256`` and every file it lists (tokenizer, shards, val byte
    sidecars) is present and intact (sha256, or size only for datasets over 1 GiB), with no other shard files
    beside it."""
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("inputs_sha256") != inputs_sha256:
        return False
    try:
        folder = manifest_path.parent
        shards = manifest["shards"]
        shard_tokens = manifest["shard_tokens"]
        tok = manifest["tokenizer"]
        files = [(data_root / tok["file"], tok["sha256"], None)]
        if tok.get("vocab_file"):
            files.append((data_root / tok["vocab_file"], tok.get("vocab_sha256"), None))
        for name, digest in shards.items():
            files.append((folder / name, digest, HEADER_BYTES + 2 * int(shard_tokens[name])))
        if {p.name for p in existing_shards(folder)} != set(shards) or odd_shard_entries(folder):
            return False
        sizes = []
        for path, _, size in files:
            if not path.is_file():
                return False
            st = path.stat().st_size
            if size is not None and st != size:
                return False
            sizes.append(st)
        if sum(sizes) <= VERIFY_HASH_LIMIT_BYTES:
            for path, digest, _ in files:
                if digest is not None and sha256_file(path) != digest:
                    return False
    except (KeyError, TypeError, ValueError, OSError):
        return False
    return True
