"""The network side of the FineWeb downloader: the Hugging Face hub client (the one place that touches the
network), and files fetched whole and verified.

``fetch_verified`` keeps a local copy that matches the repository's listing (size; sha256 for LFS files, the git blob
id for small files) and its own checks (a shard's header: ``1024 + 2 * tokens`` bytes and at least one token; a
tokenizer that loads); otherwise it downloads, and a download that fails the same checks (a 0-byte cache entry, a cut
transfer, a damaged cache blob) is fetched once more bypassing the cache, then refused with one line.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from data.errors import UserError
from data.manifest import display_path


@dataclass(frozen=True)
class RemoteFile:
    size: int | None = None  # bytes, from the repository listing
    sha256: str | None = None  # of the content (LFS files)
    git_oid: str | None = None  # git blob id (small files stored in git)

    def problem(self, path: Path) -> str | None:
        """Why the local ``path`` is not this file, or None."""
        st = path.stat().st_size
        if self.size is not None and st != self.size:
            return f"{st} bytes, the repository lists {self.size}"
        if self.sha256 is None and self.git_oid is None:
            return None
        data = path.read_bytes()
        if self.sha256 is not None and hashlib.sha256(data).hexdigest() != self.sha256:
            return "sha256 differs from the repository's"
        if self.sha256 is None and hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() != self.git_oid:
            return "git blob id differs from the repository's"
        return None


def _unreachable(repo_id: str, reason: str) -> UserError:
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    reason = " ".join(str(reason).split())[:300] or "unknown error"
    return UserError(f"cannot reach {host} to download {repo_id}: {reason}; check network or use the embedded default")


class HubClient:
    """Thin wrapper over ``huggingface_hub`` (the one place that touches the network). Tests pass an object with
    the same three methods that serves a local folder laid out like the repository."""

    def __init__(self, repo_id: str, timeout: float = 10.0):
        self.repo_id = repo_id
        self.timeout = timeout

    def check_reachable(self) -> None:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        url = urlparse(endpoint)
        host = url.hostname or "huggingface.co"
        port = url.port or (443 if url.scheme != "http" else 80)
        try:
            socket.create_connection((host, port), timeout=self.timeout).close()
        except OSError as exc:
            raise _unreachable(self.repo_id, exc.strerror or exc) from None

    def _call(self, what: str, fn, *a, **kw):
        from huggingface_hub.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # no retry chatter: failures become one line
        try:
            return fn(*a, **kw)
        except Exception as exc:  # the hub raises many types (httpx, OSError, HfHubHTTPError ...)
            name = type(exc).__name__
            if name in ("RepositoryNotFoundError", "GatedRepoError"):
                raise UserError(f"dataset repo {self.repo_id} not found or not accessible on Hugging Face") from None
            if name in ("EntryNotFoundError", "RemoteEntryNotFoundError") or (
                "EntryNotFound" in name and "Local" not in name
            ):
                raise UserError(f"{what}: not found in {self.repo_id}") from None
            raise _unreachable(self.repo_id, f"{name}: {exc}") from None

    def list_files(self) -> dict[str, RemoteFile]:
        """Every file of the repository with its size and hash as listed."""
        from huggingface_hub import HfApi

        def listing():
            out = {}
            for entry in HfApi().list_repo_tree(self.repo_id, recursive=True, repo_type="dataset"):
                if not hasattr(entry, "size"):
                    continue  # a folder
                lfs = getattr(entry, "lfs", None)
                out[entry.path] = RemoteFile(int(entry.size), getattr(lfs, "sha256", None) if lfs else None,
                                             None if lfs else getattr(entry, "blob_id", None))
            return out

        return self._call("listing files", listing)

    def download(self, remote: str, force: bool = False) -> Path:
        from huggingface_hub import hf_hub_download

        return Path(self._call(remote, hf_hub_download, repo_id=self.repo_id, filename=remote, repo_type="dataset",
                               force_download=force))


def _materialise(cached: Path, dest: Path) -> None:
    """Hard-link (or copy) a downloaded file into place under a temporary name, then rename."""
    src = Path(cached).resolve(strict=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        if tmp.exists():
            tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


# ------------------------------------------------------------------------- verified files


def _shard_problem(path: Path) -> str | None:
    from data.shards import ShardError, read_header

    try:
        n = read_header(path)
    except ShardError as exc:
        return str(exc).removeprefix(f"{path}: ")
    return "the header says 0 tokens" if n == 0 else None


def _tokenizer_problem(path: Path) -> str | None:
    from data.bytes import load_byte_table

    try:
        load_byte_table(path)
    except Exception as exc:  # noqa: BLE001 - a corrupt tokenizer file, whatever the parser raises
        return f"does not load as a tokenizer ({' '.join(str(exc).split())[:200]})"
    return None


def fetch_verified(client, remote: str, dest: Path, expect: RemoteFile) -> None:
    """Make ``dest`` an intact copy of ``remote``: keep a local copy that checks out, else download; a download
    that fails the checks (size and hash against the listing, shard header, tokenizer load) is fetched once more
    bypassing the cache, then refused."""
    check = _shard_problem if dest.suffix == ".bin" else _tokenizer_problem if dest.suffix in (".model", ".json") \
        else (lambda p: None)

    def problem() -> str | None:
        if not dest.is_file():
            return "missing"
        return expect.problem(dest) or check(dest)

    if problem() is None:
        return  # an intact file from an earlier run
    why = None
    for force in (False, True):
        _materialise(client.download(remote, force=force), dest)
        why = problem()
        if why is None:
            return
        if not force:
            print(f"warning: {display_path(dest)}: {why}; downloading it again", file=sys.stderr, flush=True)
    dest.unlink(missing_ok=True)
    raise UserError(f"{remote} from the repo is damaged even when fetched again ({why}); try later or report it "
                    "to the repository's owner")
