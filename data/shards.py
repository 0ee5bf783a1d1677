"""Token shards in the challenge's binary format.

A shard is a header of 256 little-endian int32 (1024 bytes) with ``[0] = 20240520`` (magic),
``[1] = 1`` (version) and ``[2] = num_tokens``, followed by ``num_tokens`` little-endian uint16
token ids. The file size is exactly ``1024 + 2 * num_tokens``. The CaseOps val byte sidecar
(``fineweb_val_bytes_NNNNNN.bin``) has the same format, one uint16 byte count per val token. Files are written with
``kitlib.fileio.write_atomic`` (a temporary name, then a rename).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kitlib.fileio import write_atomic

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")


class ShardError(ValueError):
    """A shard file that is not in the expected format (the message names the file)."""


def encode_shard(tokens, name: str | os.PathLike = "shard") -> bytes:
    """The bytes of a shard holding ``tokens`` (ids in [0, 65535]): header then uint16 ids. ``name`` is only
    used in error messages."""
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"{name}: tokens must be a 1-D array, got shape {arr.shape}")
    if arr.size and arr.dtype != TOKEN_DTYPE:
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name}: tokens must be integers, got dtype {arr.dtype}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 0xFFFF:
            raise ValueError(f"{name}: token ids must lie in [0, 65535], got range [{lo}, {hi}]")
    arr = arr.astype(TOKEN_DTYPE, copy=False)
    if arr.size >= 2**31:
        raise ValueError(f"{name}: {arr.size} tokens do not fit the int32 header")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0] = MAGIC
    header[1] = VERSION
    header[2] = arr.size
    return header.tobytes() + arr.tobytes()


def write_shard(path: str | os.PathLike, tokens) -> Path:
    """Write ``tokens`` (ids in [0, 65535]) to ``path`` atomically (temp name, then ``os.replace``)."""
    path = Path(path)
    write_atomic(path, encode_shard(tokens, path))
    return path


def read_header(path: str | os.PathLike) -> int:
    """Validate the header and size of a shard and return its number of tokens."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except FileNotFoundError:
        raise ShardError(f"{path}: shard file not found") from None
    except OSError as exc:
        raise ShardError(f"{path}: cannot read shard: {exc.strerror or exc}") from None
    if len(raw) < HEADER_BYTES:
        raise ShardError(f"{path}: file is {size} bytes, shorter than the {HEADER_BYTES}-byte shard header")
    header = np.frombuffer(raw, dtype="<i4", count=HEADER_INTS)
    if int(header[0]) != MAGIC:
        raise ShardError(f"{path}: bad magic number {int(header[0])} (expected {MAGIC}); not a token shard")
    if int(header[1]) != VERSION:
        raise ShardError(f"{path}: unsupported shard version {int(header[1])} (expected {VERSION})")
    num_tokens = int(header[2])
    if num_tokens < 0:
        raise ShardError(f"{path}: negative token count {num_tokens} in header")
    expected = HEADER_BYTES + 2 * num_tokens
    if size != expected:
        raise ShardError(
            f"{path}: file size {size} bytes does not match header ({num_tokens} tokens -> {expected} bytes)"
            + ("; file is truncated" if size < expected else "; file has trailing bytes")
        )
    return num_tokens


def read_shard(path: str | os.PathLike) -> np.ndarray:
    """Read a shard and return its tokens as a ``uint16`` array (validates magic, version, size)."""
    path = Path(path)
    num_tokens = read_header(path)
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES)
        data = f.read(2 * num_tokens)
    if len(data) != 2 * num_tokens:
        raise ShardError(f"{path}: file changed while reading (got {len(data)} of {2 * num_tokens} token bytes)")
    return np.frombuffer(data, dtype=TOKEN_DTYPE).astype(np.uint16, copy=True)
