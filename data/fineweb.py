"""The cached FineWeb shards and tokenizers from the Hugging Face dataset repositories the records used.

Every repository has the layout of the official export (type dataset, export rooted at ``datasets/``)::

    datasets/manifest.json                                   lists datasets[] (stats) and tokenizers[]
    datasets/datasets/fineweb10B_<remote>/fineweb_val_000000.bin ...
    datasets/datasets/fineweb10B_<remote>/fineweb_train_000000.bin ...
    datasets/datasets/fineweb10B_<remote>/fineweb_val_bytes_000000.bin ...  (CaseOps: per-token byte sidecar)
    datasets/tokenizers/fineweb_<V>_bpe[_<suffix>].model, .vocab           (sp<V>[_<suffix>] variants)
    datasets/tokenizers/fineweb_pure_byte_260.json                          (byte260)

Variants (``--variant``) and the repository each comes from by default (``--repo-id``, or upstream's
``MATCHED_FINEWEB_REPO_ID``, overrides it):

    sp1024, byte260       willdepueoai/parameter-golf           (the official export)
    sp4096, sp8192        kevclark/parameter-golf               (the records of 04-01 ... 04-16)
    sp8192_caseops        romeerp/parameter-golf-caseops-v1     (remote sp8192_lossless_caps_caseops_v1_reserved,
                                                                 the records since 04-18; also accepted by that name)
    sp<V>[_<suffix>]      willdepueoai/parameter-golf

Local layout (like upstream's downloader): ``<out>/datasets/fineweb10B_<remote>/`` (shards, sidecars, our
``manifest.json`` and the remote one as ``hf_manifest.json``) and ``<out>/tokenizers/``.

Every file is checked after download against the repository's listing (size, and sha256 for LFS files) and its
own header (``1024 + 2 * tokens`` bytes, at least one token); a bad file is fetched once more, bypassing the
cache, and refused if it is still bad (``data/hub.py``). The remote manifest's counts (files, val tokens, val
documents, and the train tokens when every train shard is fetched) must match what arrived; every sidecar must be
as long as its val shard and give 0 bytes to BOS and to the CaseOps operators.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from data.errors import UserError
from data.hub import HubClient, fetch_verified
from data.manifest import FORMAT, PATHS_NOTE, display_path, manifest_up_to_date, sha256_json, write_json_atomic

OFFICIAL_REPO = "willdepueoai/parameter-golf"
KEVCLARK_REPO = "kevclark/parameter-golf"
CASEOPS_REPO = "romeerp/parameter-golf-caseops-v1"
DEFAULT_REPO_ID = OFFICIAL_REPO
DEFAULT_REMOTE_ROOT = "datasets"
REPO_ENV = "MATCHED_FINEWEB_REPO_ID"  # upstream's downloader's names
ROOT_ENV = "MATCHED_FINEWEB_REMOTE_ROOT_PREFIX"
PREP_VERSION = 2
_VARIANT_RE = re.compile(r"^sp([0-9]+)(?:_([A-Za-z0-9][A-Za-z0-9_]*))?$")
_SHARD_RE = re.compile(r"^fineweb_(train|val|val_bytes)_([0-9]{6})\.bin$")


@dataclass(frozen=True)
class Variant:
    name: str  # the kit's name (--variant)
    remote: str  # the remote's name: folder fineweb10B_<remote>
    repo_id: str  # where it is hosted by default
    caseops: bool = False  # needs the val byte sidecar


KNOWN_VARIANTS = {
    "sp1024": Variant("sp1024", "sp1024", OFFICIAL_REPO),
    "byte260": Variant("byte260", "byte260", OFFICIAL_REPO),
    "sp4096": Variant("sp4096", "sp4096", KEVCLARK_REPO),
    "sp8192": Variant("sp8192", "sp8192", KEVCLARK_REPO),
    "sp8192_caseops": Variant("sp8192_caseops", "sp8192_lossless_caps_caseops_v1_reserved", CASEOPS_REPO, True),
}
VARIANT_ALIASES = {"sp8192_lossless_caps_caseops_v1_reserved": "sp8192_caseops"}


def resolve_variant(name: str) -> Variant:
    """The variant named ``name`` (a kit name, an alias, or any ``sp<V>[_<suffix>]``); ``ValueError`` else."""
    name = VARIANT_ALIASES.get(name, name)
    if name in KNOWN_VARIANTS:
        return KNOWN_VARIANTS[name]
    if _VARIANT_RE.match(name or ""):
        return Variant(name, name, OFFICIAL_REPO)
    raise ValueError(f"unsupported --variant {name!r}: expected one of {', '.join(KNOWN_VARIANTS)} "
                     "or sp<VOCAB_SIZE>[_<suffix>]")


def dataset_dir_for_variant(variant: str) -> str:
    return f"fineweb10B_{resolve_variant(variant).remote}"


def default_tokenizer_files(variant: str) -> list[str]:
    """Tokenizer file names (under ``tokenizers/``) when the remote manifest does not list them."""
    remote = resolve_variant(variant).remote
    if remote == "byte260":
        return ["fineweb_pure_byte_260.json"]
    vocab, suffix = _VARIANT_RE.match(remote).groups()
    stem = f"fineweb_{vocab}_bpe" + (f"_{suffix}" if suffix else "")
    return [f"{stem}.model", f"{stem}.vocab"]


@dataclass
class FinewebSelection:
    variant: str
    dataset_dir: str
    val: list[str] = field(default_factory=list)  # remote paths
    train: list[str] = field(default_factory=list)
    tokenizer: list[str] = field(default_factory=list)
    val_bytes: list[str] = field(default_factory=list)  # sidecars, aligned with val
    available_train: int = 0
    stats: dict = field(default_factory=dict)  # the remote manifest's counts for this dataset
    text_transform: str | None = None

    @property
    def files(self) -> list[str]:
        return self.val + self.val_bytes + self.train + self.tokenizer

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


def _shards_in(files: set[str], prefix: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"val": [], "train": [], "val_bytes": []}
    for path in files:
        if path.startswith(prefix):
            m = _SHARD_RE.match(path[len(prefix):])
            if m:
                found[m.group(1)].append(path)
    return {k: sorted(v) for k, v in found.items()}


def _select_sidecars(variant: Variant, found: dict, ds_entry: dict | None, prefix: str) -> list[str]:
    wanted = variant.caseops or bool((ds_entry or {}).get("val_bytes_glob")) or bool(found["val_bytes"])
    if not wanted:
        return []
    sidecars = [p.replace(f"{prefix}fineweb_val_", f"{prefix}fineweb_val_bytes_", 1) for p in found["val"]]
    missing = [p for p in sidecars if p not in found["val_bytes"]]
    if missing:
        raise UserError(f"val byte sidecar {missing[0]} for variant {variant.name} is not in the repo "
                        f"(it has {len(found['val_bytes'])} sidecars for {len(found['val'])} val shards)")
    return sidecars


def select_fineweb_files(
    repo_files: Iterable[str],
    variant: str,
    train_shards: int,
    manifest: dict | None = None,
    root: str = DEFAULT_REMOTE_ROOT,
) -> FinewebSelection:
    """Choose the remote files for ``variant``: all val shards (and their byte sidecars, when the variant has
    them), the first ``train_shards`` train shards in sorted order, and the tokenizer files (from the remote
    ``manifest`` when it names them, else by the standard names). Raises ``UserError`` when the repo lacks what is
    asked."""
    v = resolve_variant(variant)
    dataset_dir = f"fineweb10B_{v.remote}"
    if train_shards < 0:
        raise UserError("--train-shards must be >= 0")
    root = root.strip("/")
    base = f"{root}/" if root else ""
    files = set(repo_files)
    prefix = f"{base}datasets/{dataset_dir}/"
    found = _shards_in(files, prefix)
    val, train = found["val"], found["train"]
    if not val and not train:
        ds_prefix = f"{base}datasets/"
        known = sorted({p[len(ds_prefix):].split("/")[0] for p in files
                        if p.startswith(ds_prefix) and "/" in p[len(ds_prefix):]})
        hint = f" (found: {', '.join(known)})" if known else ""
        raise UserError(f"no shards for variant {variant} under {prefix} in the repo{hint}")
    if not val:
        raise UserError(f"no validation shards under {prefix} in the repo")

    ds_entry, tok_entry = _manifest_entries(manifest, dataset_dir)
    stats = dict((ds_entry or {}).get("stats") or {})
    for key, have in (("files_val", len(val)), ("files_train", len(train))):
        want = stats.get(key)
        if want is not None and int(want) > have:
            raise UserError(f"the repo lists {have} of the {int(want)} {key[6:]} shards its manifest names for {dataset_dir}")
    if train_shards > len(train):
        raise UserError(f"variant {variant} has only {len(train)} train shards in the repo, asked for {train_shards}")
    sidecars = _select_sidecars(v, found, ds_entry, prefix)

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
    transform = (tok_entry or {}).get("text_transform") or ("lossless_caps_caseops_v1" if v.caseops else None)
    return FinewebSelection(v.name, dataset_dir, val, train[:train_shards], tokenizer, sidecars, len(train), stats,
                            transform if transform != "identity" else None)


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


# ------------------------------------------------------------------------- build


def _scan_shard(path: Path, bos_id: int) -> tuple[str, int, int, np.ndarray]:
    """sha256, tokens, documents (BOS count) and the tokens of a shard."""
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


@dataclass
class _Tokenizer:
    path: Path
    sha256: str  # of the bytes loaded (what was used, not what is on disk later)
    table: object  # data.bytes.ByteTable
    bos_id: int
    operator_ids: dict  # CaseOps operators held as pieces of their own


def _load_tokenizer(path: Path) -> _Tokenizer:
    from data.bytes import byte_table_from_pure_byte_json, byte_table_from_sentencepiece

    blob = path.read_bytes()
    sha = hashlib.sha256(blob).hexdigest()
    if path.suffix == ".json":
        return _Tokenizer(path, sha, byte_table_from_pure_byte_json(json.loads(blob.decode("utf-8"))), 1, {})
    import sentencepiece as spm

    from data.caseops import reserved_operator_ids

    sp = spm.SentencePieceProcessor(model_proto=blob)
    return _Tokenizer(path, sha, byte_table_from_sentencepiece(sp), int(sp.bos_id()), reserved_operator_ids(sp))


def resolve_repo(args: argparse.Namespace) -> tuple[str, str]:
    """(repo id, remote root): ``--repo-id``, else upstream's ``MATCHED_FINEWEB_REPO_ID``, else the variant's."""
    repo = args.repo_id or os.environ.get(REPO_ENV) or resolve_variant(args.variant).repo_id
    root = os.environ.get(ROOT_ENV, DEFAULT_REMOTE_ROOT)
    return repo, root


def build_from_fineweb(args: argparse.Namespace, client=None) -> int:
    from data.lock import dataset_lock

    out = Path(args.out_dir)
    repo_id, root = resolve_repo(args)
    dataset_dir = dataset_dir_for_variant(args.variant)
    fingerprint = {"source": "fineweb", "repo_id": repo_id, "remote_root": root,
                   "variant": resolve_variant(args.variant).remote, "train_shards": int(args.train_shards),
                   "prep_version": PREP_VERSION}
    with dataset_lock(out, dataset_dir):
        return _fetch_locked(args, client, out, repo_id, root, dataset_dir, fingerprint)


def _remote_manifest(client, repo_files: dict, root: str) -> dict | None:
    remote = f"{root}/manifest.json" if root else "manifest.json"
    if remote not in repo_files:
        return None
    cached = Path(client.download(remote))
    try:
        return json.loads(cached.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        try:
            return json.loads(Path(client.download(remote, force=True)).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read the remote {remote}: {exc}") from None


def _fetch_locked(args, client, out: Path, repo_id: str, root: str, dataset_dir: str, fingerprint: dict) -> int:
    from tqdm import tqdm

    from data.lock import clean_interrupted
    from data.manifest import existing_shards

    t0 = time.time()
    folder = out / "datasets" / dataset_dir
    manifest_path = folder / "manifest.json"
    inputs_sha = sha256_json(fingerprint)
    if not args.force and manifest_up_to_date(manifest_path, inputs_sha, out):
        print(f"up to date: {display_path(manifest_path)}")
        return 0

    client = client or HubClient(repo_id)
    client.check_reachable()
    print(f"fetching {dataset_dir} from {repo_id}", flush=True)
    repo_files = client.list_files()
    remote_manifest = _remote_manifest(client, repo_files, root)
    sel = select_fineweb_files(list(repo_files), args.variant, args.train_shards, remote_manifest, root)
    tok_model = local_path_for_remote(sel.tokenizer_model, out, root)
    clean_interrupted(folder, [local_path_for_remote(p, out, root) for p in sel.tokenizer])

    manifest_path.unlink(missing_ok=True)
    if remote_manifest is not None:
        write_json_atomic(folder / "hf_manifest.json", remote_manifest)
    for remote in tqdm(sel.tokenizer + sel.val + sel.val_bytes + sel.train, desc=f"download {dataset_dir}",
                       unit="file", disable=None, leave=False):
        fetch_verified(client, remote, local_path_for_remote(remote, out, root), repo_files[remote])

    tok = _load_tokenizer(tok_model)
    if tok.operator_ids and not sel.val_bytes:
        raise UserError(f"{tok_model} reserves the CaseOps operators (ids {sorted(tok.operator_ids)}) but the repo "
                        "has no val byte sidecar (fineweb_val_bytes_*.bin): bits per byte would count each operator "
                        "as 3 bytes")
    selected = {Path(p).name for p in sel.val + sel.val_bytes + sel.train}
    for stale in existing_shards(folder):
        if stale.name not in selected:
            stale.unlink()  # shards beyond the asked --train-shards from an earlier run
    counts = _verify_contents(sel, out, root, tok)
    manifest = _fineweb_manifest(args, sel, out, root, repo_id, tok, counts, inputs_sha, fingerprint)
    write_json_atomic(manifest_path, manifest)
    bpt = counts["val_bytes"] / max(1, counts["val_tokens"])
    print(
        f"done: {dataset_dir}: {counts['docs_train']} train + {counts['docs_val']} val docs, "
        f"{counts['train_tokens']:,} train + {counts['val_tokens']:,} val tokens, {bpt:.3f} val bytes/token "
        f"({counts['val_bytes_source']}), {time.time() - t0:.1f} s -> {display_path(manifest_path)}"
    )
    return 0


def _check_sidecar(path: Path, side: np.ndarray, tokens: np.ndarray, tok: _Tokenizer) -> None:
    if side.size != tokens.size:
        raise UserError(f"{path}: the val byte sidecar holds {side.size} entries for {tokens.size} val tokens")
    zero = tokens == tok.bos_id
    for i in tok.operator_ids:
        zero |= tokens == i
    bad = np.flatnonzero(zero & (side != 0))
    if bad.size:
        raise UserError(f"{path}: entry {int(bad[0])} gives {int(side[bad[0]])} bytes to token {int(tokens[bad[0]])} "
                        "(BOS or a CaseOps operator, which stand for 0 bytes): the sidecar does not fit its shard")


def _verify_contents(sel: FinewebSelection, out: Path, root: str, tok: _Tokenizer) -> dict:
    """Hash and count every shard; byte total of the val split (sidecar, else the tokenizer's table); the remote
    manifest's counts checked against what arrived."""
    from tqdm import tqdm

    from data.bytes import token_bytes

    c = {"val_tokens": 0, "train_tokens": 0, "docs_val": 0, "docs_train": 0, "val_bytes": 0, "shards": {},
         "shard_tokens": {}, "val_bytes_source": "sidecar" if sel.val_bytes else "byte table"}
    prev = None
    sidecars = dict(zip(sel.val, sel.val_bytes))
    val = set(sel.val)
    for remote in tqdm(sel.val + sel.train, desc="verify shards", unit="shard", disable=None, leave=False):
        path = local_path_for_remote(remote, out, root)
        digest, n_tok, n_docs, tokens = _scan_shard(path, tok.bos_id)
        split = "val" if remote in val else "train"
        c["shards"][path.name], c["shard_tokens"][path.name] = digest, n_tok
        c[f"{split}_tokens"] += n_tok
        c[f"docs_{split}"] += n_docs
        if split == "val":
            if int(tokens.max()) >= tok.table.vocab_size:
                raise UserError(f"{path}: token id {int(tokens.max())} outside the tokenizer's {tok.table.vocab_size} ids")
            if remote in sidecars:
                spath = local_path_for_remote(sidecars[remote], out, root)
                sdigest, s_n, _, side = _scan_shard(spath, -1)
                _check_sidecar(spath, side, tokens, tok)
                c["shards"][spath.name], c["shard_tokens"][spath.name] = sdigest, s_n
                c["val_bytes"] += int(side.sum(dtype=np.int64))
            else:
                c["val_bytes"] += int(token_bytes(tokens, tok.table, prev).sum())
            prev = int(tokens[-1])
        del tokens
    _check_remote_counts(sel, c)
    return c


def _check_remote_counts(sel: FinewebSelection, c: dict) -> None:
    checks = [("tokens_val", c["val_tokens"], "val tokens"), ("docs_val", c["docs_val"], "val documents")]
    if len(sel.train) == sel.available_train:
        checks.append(("tokens_train", c["train_tokens"], "train tokens"))
    for key, have, what in checks:
        want = sel.stats.get(key)
        if want is not None and int(want) != have:
            raise UserError(f"the downloaded {sel.dataset_dir} holds {have:,} {what}, the repo's manifest says "
                            f"{int(want):,}: a shard is incomplete; run again with --force")


def _fineweb_manifest(args, sel: FinewebSelection, out: Path, root: str, repo_id: str, tok: _Tokenizer, c: dict,
                      inputs_sha: str, fingerprint: dict) -> dict:
    from data.manifest import sha256_file

    tok_files = [local_path_for_remote(p, out, root) for p in sel.tokenizer]
    vocab_file = next((p for p in tok_files if p.suffix == ".vocab"), None)
    manifest = {
        "format": FORMAT,
        "prep_version": PREP_VERSION,
        "dataset": sel.dataset_dir,
        "source": {
            "kind": "fineweb",
            "description": f"cached FineWeb shards: Hugging Face dataset {repo_id}, {root}/datasets/{sel.dataset_dir} "
                           f"(all val shards + first {args.train_shards} train shards)",
            "repo_id": repo_id,
            "variant": sel.variant,
            "remote_files": sel.files,
            "available_train_shards": sel.available_train,
        },
        "seed": None,
        "val_fraction": None,
        "docs_train": c["docs_train"],
        "docs_val": c["docs_val"],
        "train_tokens": c["train_tokens"],
        "val_tokens": c["val_tokens"],
        "val_bytes": c["val_bytes"],
        "val_bytes_source": c["val_bytes_source"],
        "bos_id": tok.bos_id,
        "append_eos": False,
        "tokenizer": {
            "file": tok.path.relative_to(out).as_posix(),
            "vocab_file": vocab_file.relative_to(out).as_posix() if vocab_file else None,
            "sha256": tok.sha256,
            "vocab_sha256": sha256_file(vocab_file) if vocab_file else None,
            "vocab_size": tok.table.vocab_size,
        },
        "shards": c["shards"],
        "shard_tokens": c["shard_tokens"],
        "inputs_sha256": inputs_sha,
        "inputs": fingerprint,
        "paths_relative_to": PATHS_NOTE,
    }
    if sel.val_bytes:
        names = [Path(p).name for p in sel.val_bytes]
        manifest["val_bytes_file"] = names
        manifest["val_bytes_sha256"] = [c["shards"][n] for n in names]
    if sel.text_transform or tok.operator_ids:
        manifest["text_transform"] = sel.text_transform
        manifest["tokenizer"]["text_transform"] = sel.text_transform
        manifest["tokenizer"]["reserved_ids"] = {str(i): op for i, op in sorted(tok.operator_ids.items())}
    return manifest
