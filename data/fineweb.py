"""The official cached FineWeb shards and tokenizers from the Hugging Face dataset repo.

Remote layout (repo ``willdepueoai/parameter-golf``, type dataset, export rooted at ``datasets/``)::

    datasets/manifest.json                                  lists datasets[] and tokenizers[]
    datasets/datasets/fineweb10B_<variant>/fineweb_val_000000.bin ...
    datasets/datasets/fineweb10B_<variant>/fineweb_train_000000.bin ...
    datasets/tokenizers/fineweb_<V>_bpe.model, .vocab       (sp<V> variants)
    datasets/tokenizers/fineweb_pure_byte_260.json          (byte260)

Local layout (like upstream's downloader): ``<out>/datasets/fineweb10B_<variant>/`` (shards, our
``manifest.json`` and the remote one as ``hf_manifest.json``) and ``<out>/tokenizers/``.

``select_fineweb_files`` is the pure selection logic: every val shard, the first N train shards
in sorted order and the variant's tokenizer files.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable
from urllib.parse import urlparse

import numpy as np

from data.errors import UserError

DEFAULT_REPO_ID = "willdepueoai/parameter-golf"
DEFAULT_REMOTE_ROOT = "datasets"
_VARIANT_RE = re.compile(r"^sp([0-9]+)$")
_SHARD_RE = re.compile(r"^fineweb_(train|val)_([0-9]{6})\.bin$")


def dataset_dir_for_variant(variant: str) -> str:
    if variant == "byte260" or _VARIANT_RE.match(variant or ""):
        return f"fineweb10B_{variant}"
    raise ValueError(f"unsupported --variant {variant!r}: expected byte260 or sp<VOCAB_SIZE> (sp1024, sp4096, sp8192)")


def default_tokenizer_files(variant: str) -> list[str]:
    """Tokenizer file names (under ``tokenizers/``) when the remote manifest does not list them."""
    if variant == "byte260":
        return ["fineweb_pure_byte_260.json"]
    vocab = _VARIANT_RE.match(variant).group(1)
    return [f"fineweb_{vocab}_bpe.model", f"fineweb_{vocab}_bpe.vocab"]


@dataclass
class FinewebSelection:
    variant: str
    dataset_dir: str
    val: list[str] = field(default_factory=list)  # remote paths
    train: list[str] = field(default_factory=list)
    tokenizer: list[str] = field(default_factory=list)
    available_train: int = 0

    @property
    def files(self) -> list[str]:
        return self.val + self.train + self.tokenizer

    @property
    def tokenizer_model(self) -> str:
        for path in self.tokenizer:
            if path.endswith((".model", ".json")):
                return path
        raise ValueError("no tokenizer model (.model or .json) in the selection")


def _manifest_entries(manifest: dict | None, dataset_dir: str) -> tuple[dict | None, dict | None]:
    if not isinstance(manifest, dict):
        return None, None
    ds = next((d for d in manifest.get("datasets", []) or [] if isinstance(d, dict) and d.get("name") == dataset_dir), None)
    tok = None
    if ds is not None:
        tok = next((t for t in manifest.get("tokenizers", []) or []
                    if isinstance(t, dict) and t.get("name") == ds.get("tokenizer_name")), None)
    return ds, tok


def select_fineweb_files(
    repo_files: Iterable[str],
    variant: str,
    train_shards: int,
    manifest: dict | None = None,
    root: str = DEFAULT_REMOTE_ROOT,
) -> FinewebSelection:
    """Choose the remote files for ``variant``: all val shards, the first ``train_shards`` train
    shards in sorted order, and the tokenizer files (from the remote ``manifest`` when it names
    them, else by the standard names). Raises ``UserError`` when the repo lacks what is asked."""
    dataset_dir = dataset_dir_for_variant(variant)
    if train_shards < 0:
        raise UserError("--train-shards must be >= 0")
    root = root.strip("/")
    base = f"{root}/" if root else ""
    files = set(repo_files)
    prefix = f"{base}datasets/{dataset_dir}/"
    val, train = [], []
    for path in files:
        if not path.startswith(prefix):
            continue
        m = _SHARD_RE.match(path[len(prefix):])
        if m:
            (val if m.group(1) == "val" else train).append(path)
    val.sort()
    train.sort()
    if not val and not train:
        ds_prefix = f"{base}datasets/"
        known = sorted({p[len(ds_prefix):].split("/")[0] for p in files
                        if p.startswith(ds_prefix) and "/" in p[len(ds_prefix):]})
        hint = f" (found: {', '.join(known)})" if known else ""
        raise UserError(f"no shards for variant {variant} under {prefix} in the repo{hint}")
    if not val:
        raise UserError(f"no validation shards under {prefix} in the repo")

    ds_entry, tok_entry = _manifest_entries(manifest, dataset_dir)
    if ds_entry is not None:
        stats = ds_entry.get("stats") or {}
        for key, have in (("files_val", len(val)), ("files_train", len(train))):
            want = stats.get(key)
            if want is not None and int(want) > have:
                raise UserError(f"the repo lists {have} of the {int(want)} {key[6:]} shards its manifest names for {dataset_dir}")
    if train_shards > len(train):
        raise UserError(f"variant {variant} has only {len(train)} train shards in the repo, asked for {train_shards}")

    tokenizer: list[str] = []
    if tok_entry is not None:
        for key in ("model_path", "vocab_path", "path"):
            value = tok_entry.get(key)
            if value:
                tokenizer.append(f"{base}{str(value).lstrip('/')}")
    if not tokenizer:
        tokenizer = [f"{base}tokenizers/{n}" for n in default_tokenizer_files(variant)]
        # a .vocab file is optional: keep it only when the repo has it
        tokenizer = [p for p in tokenizer if p in files or not p.endswith(".vocab")]
    missing = [p for p in tokenizer if p not in files]
    if missing:
        raise UserError(f"tokenizer file {missing[0]} for variant {variant} is not in the repo")
    return FinewebSelection(variant, dataset_dir, val, train[:train_shards], tokenizer, len(train))


def local_path_for_remote(remote: str, out_dir: Path, root: str = DEFAULT_REMOTE_ROOT) -> Path:
    """Where a remote file goes locally: ``<root>/datasets/X`` -> ``<out>/datasets/X``,
    ``<root>/tokenizers/X`` -> ``<out>/tokenizers/X``."""
    root = root.strip("/")
    parts = remote.split("/")
    if root and parts[: len(root.split("/"))] == root.split("/"):
        parts = parts[len(root.split("/")):]
    if not parts or any(p in ("", ".", "..") for p in parts):
        raise UserError(f"unexpected remote path {remote!r}")
    return Path(out_dir).joinpath(*parts)


# ------------------------------------------------------------------------- network access


def _unreachable(repo_id: str, reason: str) -> UserError:
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    reason = " ".join(str(reason).split())[:300] or "unknown error"
    return UserError(f"cannot reach {host} to download {repo_id}: {reason}; check network or use the embedded default")


class HubClient:
    """Thin wrapper over ``huggingface_hub`` (the one place that touches the network)."""

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

    def list_files(self) -> list[str]:
        from huggingface_hub import list_repo_files

        return list(self._call("listing files", list_repo_files, self.repo_id, repo_type="dataset"))

    def download(self, remote: str) -> Path:
        from huggingface_hub import hf_hub_download

        return Path(self._call(remote, hf_hub_download, repo_id=self.repo_id, filename=remote, repo_type="dataset"))


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


# ------------------------------------------------------------------------- build


def _scan_shard(path: Path, bos_id: int) -> tuple[str, int, int, np.ndarray]:
    """sha256, tokens, documents (BOS count) and the tokens of a shard."""
    import hashlib

    from data.shards import HEADER_BYTES, ShardError, read_header

    try:
        n = read_header(path)
    except ShardError as exc:
        raise UserError(str(exc)) from None
    data = path.read_bytes()
    if len(data) != HEADER_BYTES + 2 * n:
        raise UserError(f"{path}: file changed while reading")
    tokens = np.frombuffer(data, dtype="<u2", offset=HEADER_BYTES)
    return hashlib.sha256(data).hexdigest(), n, int(np.count_nonzero(tokens == bos_id)), tokens


def build_from_fineweb(args: argparse.Namespace, client: HubClient | None = None) -> int:
    from tqdm import tqdm

    from data.bytes import load_byte_table, token_bytes
    from data.prepare import display_path, manifest_up_to_date, sha256_json, write_json_atomic
    from data.shards import ShardError, read_header
    from data.sources import sha256_file

    t0 = time.time()
    out = Path(args.out_dir)
    repo_id = args.repo_id or DEFAULT_REPO_ID
    root = DEFAULT_REMOTE_ROOT
    dataset_dir = dataset_dir_for_variant(args.variant)
    folder = out / "datasets" / dataset_dir
    manifest_path = folder / "manifest.json"
    fingerprint = {"source": "fineweb", "repo_id": repo_id, "remote_root": root, "variant": args.variant,
                   "train_shards": int(args.train_shards), "prep_version": 1}
    inputs_sha = sha256_json(fingerprint)
    if not args.force and manifest_up_to_date(manifest_path, inputs_sha, out):
        print(f"up to date: {display_path(manifest_path)}")
        return 0

    client = client or HubClient(repo_id)
    client.check_reachable()
    repo_files = client.list_files()
    remote_manifest = None
    manifest_remote_path = f"{root}/manifest.json"
    if manifest_remote_path in repo_files:
        cached = client.download(manifest_remote_path)
        try:
            remote_manifest = json.loads(Path(cached).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read the remote {manifest_remote_path}: {exc}") from None
    sel = select_fineweb_files(repo_files, args.variant, args.train_shards, remote_manifest, root)

    if manifest_path.exists():
        manifest_path.unlink()
    if remote_manifest is not None:
        write_json_atomic(folder / "hf_manifest.json", remote_manifest)
    for remote in tqdm(sel.files, desc=f"download {dataset_dir}", unit="file", disable=None, leave=False):
        dest = local_path_for_remote(remote, out, root)
        if dest.suffix == ".bin" and dest.exists():
            try:
                read_header(dest)
                continue  # an intact shard from an earlier download
            except ShardError:
                pass
        cached = client.download(remote)
        if dest.suffix != ".bin" and dest.is_file() and dest.read_bytes() == Path(cached).read_bytes():
            continue  # tokenizer files are small: always compared with the repo's, never trusted by name
        _materialise(cached, dest)

    tok_path = local_path_for_remote(sel.tokenizer_model, out, root)
    try:
        table = load_byte_table(tok_path)
    except Exception as exc:  # a corrupt tokenizer file
        raise UserError(f"cannot load tokenizer {tok_path}: {exc}") from None
    bos_id = 1
    if tok_path.suffix == ".model":
        import sentencepiece as spm

        bos_id = int(spm.SentencePieceProcessor(model_file=str(tok_path)).bos_id())

    selected = {Path(p).name for p in sel.val + sel.train}
    for stale in folder.glob("fineweb_*_[0-9][0-9][0-9][0-9][0-9][0-9].bin"):
        if stale.name not in selected:
            stale.unlink()  # shards beyond the asked --train-shards from an earlier run

    shards, shard_tokens = {}, {}
    counts = {"val": [0, 0, 0], "train": [0, 0]}  # tokens, docs, (bytes)
    prev = None
    for remote in tqdm(sel.val + sel.train, desc="verify shards", unit="shard", disable=None, leave=False):
        path = local_path_for_remote(remote, out, root)
        digest, n_tok, n_docs, tokens = _scan_shard(path, bos_id)
        split = "val" if remote in sel.val else "train"
        shards[path.name] = digest
        shard_tokens[path.name] = n_tok
        counts[split][0] += n_tok
        counts[split][1] += n_docs
        if split == "val":
            if tokens.size and int(tokens.max()) >= table.vocab_size:
                raise UserError(f"{path}: token id {int(tokens.max())} outside the tokenizer's {table.vocab_size} ids")
            counts["val"][2] += int(token_bytes(tokens, table, prev).sum())
            prev = int(tokens[-1]) if tokens.size else prev
        del tokens

    tok_files = [local_path_for_remote(p, out, root) for p in sel.tokenizer]
    vocab_file = next((p for p in tok_files if p.suffix == ".vocab"), None)
    manifest = {
        "format": "parameter-golf-kit dataset manifest",
        "prep_version": 1,
        "dataset": dataset_dir,
        "source": {
            "kind": "fineweb",
            "description": f"official cached FineWeb shards: Hugging Face dataset {repo_id}, "
                           f"{root}/datasets/{dataset_dir} (all val shards + first {args.train_shards} train shards)",
            "repo_id": repo_id,
            "remote_files": sel.files,
            "available_train_shards": sel.available_train,
        },
        "seed": None,
        "val_fraction": None,
        "docs_train": counts["train"][1],
        "docs_val": counts["val"][1],
        "train_tokens": counts["train"][0],
        "val_tokens": counts["val"][0],
        "val_bytes": counts["val"][2],
        "bos_id": bos_id,
        "append_eos": False,
        "tokenizer": {
            "file": tok_path.relative_to(out).as_posix(),
            "vocab_file": vocab_file.relative_to(out).as_posix() if vocab_file else None,
            "sha256": sha256_file(tok_path),
            "vocab_sha256": sha256_file(vocab_file) if vocab_file else None,
            "vocab_size": table.vocab_size,
        },
        "shards": shards,
        "shard_tokens": shard_tokens,
        "inputs_sha256": inputs_sha,
        "inputs": fingerprint,
        "paths_relative_to": "tokenizer paths are relative to the data root (the folder holding datasets/ "
                             "and tokenizers/); shard names are relative to this manifest's folder",
    }
    write_json_atomic(manifest_path, manifest)
    secs = time.time() - t0
    bpt = counts["val"][2] / max(1, counts["val"][0])
    print(
        f"done: {dataset_dir}: {counts['train'][1]} train + {counts['val'][1]} val docs, "
        f"{counts['train'][0]:,} train + {counts['val'][0]:,} val tokens, {bpt:.3f} val bytes/token, "
        f"{secs:.1f} s -> {display_path(manifest_path)}",
        file=sys.stdout,
    )
    return 0
