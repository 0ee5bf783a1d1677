"""The FineWeb downloader (data/fineweb.py) against local folders laid out exactly like each remote repository:
willdepueoai/parameter-golf (sp1024, byte260), kevclark/parameter-golf (sp4096, sp8192) and
romeerp/parameter-golf-caseops-v1 (CaseOps: doubled ``datasets/datasets`` prefix, val byte sidecars)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data import fineweb, prepare
from data.bytes import count_bytes, load_byte_table
from data.errors import UserError
from data.hub import RemoteFile
from data.manifest import sha256_file
from data.shards import read_shard, write_shard

BOS = 1
CASEOPS_DIR = "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"
CASEOPS_TOK = "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved"


def listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


class FakeHub:
    """Serves a local folder laid out like a repository, through a cache folder beside it (as huggingface_hub
    does: a file already in the cache is not fetched again unless ``force``). ``damage[remote] = fn(bytes) ->
    bytes`` corrupts what the first download of that file returns (every download when ``persist``), as a bad
    cache entry or a cut transfer would."""

    def __init__(self, root: Path, damage=None, persist=False):
        self.root, self.calls, self.damage, self.persist = root, [], dict(damage or {}), persist
        self.cache = root.parent / "hf_cache"

    def check_reachable(self):
        self.calls.append("check")

    def list_files(self):
        self.calls.append("list")
        return {r: RemoteFile(p.stat().st_size, sha256_file(p)) for r in listing(self.root)
                for p in [self.root / r]}

    def download(self, remote, force=False):
        self.calls.append((remote, force))
        cached = self.cache / remote
        if force or not cached.exists():
            cached.parent.mkdir(parents=True, exist_ok=True)
            data = (self.root / remote).read_bytes()
            if remote in self.damage and (self.persist or not force):
                data = self.damage[remote](data)
            cached.unlink(missing_ok=True)  # a fresh file, as the hub writes it (never through a hard link)
            cached.write_bytes(data)
        return cached


# ----------------------------------------------------------------------------- fake repositories


def make_official_repo(root: Path, model: Path) -> list[str]:
    """willdepueoai/parameter-golf (tiny shards), plus an sp4096 folder that this repo does not really host."""
    base = root / "datasets"
    rng = np.random.default_rng(1)
    for variant, vocab, n_val, n_train in (("sp1024", 1024, 2, 5), ("sp4096", 4096, 1, 3), ("byte260", 260, 1, 2)):
        d = base / "datasets" / f"fineweb10B_{variant}"
        for split, n in (("val", n_val), ("train", n_train)):
            for i in range(n):
                toks = rng.integers(4, vocab, size=50 + i)
                toks[::10] = BOS
                write_shard(d / f"fineweb_{split}_{i:06d}.bin", toks)
    tok = base / "tokenizers"
    tok.mkdir(parents=True)
    shutil.copy(model, tok / "fineweb_1024_bpe.model")
    shutil.copy(model.with_suffix(".vocab"), tok / "fineweb_1024_bpe.vocab")
    (tok / "fineweb_4096_bpe.model").write_bytes(b"x")
    (tok / "fineweb_pure_byte_260.json").write_text(json.dumps(
        {"tokenizer_type": "pure_byte", "config": {"byte_offset": 4, "byte_count": 256}, "vocab_size": 260}))
    manifest = {
        "datasets": [{"name": "fineweb10B_sp1024", "tokenizer_name": "sp_bpe_1024",
                      "stats": {"files_val": 2, "files_train": 5}},
                     {"name": "fineweb10B_sp4096", "tokenizer_name": "sp_bpe_4096",
                      "stats": {"files_val": 1, "files_train": 3}}],
        "tokenizers": [{"name": "sp_bpe_1024", "model_path": "tokenizers/fineweb_1024_bpe.model",
                        "vocab_path": "tokenizers/fineweb_1024_bpe.vocab"},
                       {"name": "sp_bpe_4096", "model_path": "tokenizers/fineweb_4096_bpe.model"}],
    }
    (base / "manifest.json").write_text(json.dumps(manifest))
    (root / "README.md").write_text("fake")
    return listing(root)


def make_kevclark_repo(root: Path, model: Path) -> list[str]:
    """kevclark/parameter-golf: sp4096 and sp8192 folders, standard tokenizer names, no manifest entry needed."""
    base = root / "datasets"
    rng = np.random.default_rng(2)
    (base / "tokenizers").mkdir(parents=True)
    for variant, n_train in (("sp4096", 2), ("sp8192", 3)):
        d = base / "datasets" / f"fineweb10B_{variant}"
        for split, n in (("val", 1), ("train", n_train)):
            for i in range(n):
                toks = rng.integers(4, 1024, size=64)
                toks[::16] = BOS
                write_shard(d / f"fineweb_{split}_{i:06d}.bin", toks)
        shutil.copy(model, base / "tokenizers" / f"fineweb_{variant[2:]}_bpe.model")
    return listing(root)


@pytest.fixture(scope="module")
def caseops_source(tmp_path_factory):
    """A kit CaseOps build (600 embedded documents, vocabulary 400, 2 val + several train shards): the content
    served as romeerp/parameter-golf-caseops-v1."""
    from data.sources import load_wiki, wiki_summaries_path

    tmp = tmp_path_factory.mktemp("caseops_src")
    src = tmp / "docs.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        for d in load_wiki(wiki_summaries_path())[::16][:600]:
            f.write(json.dumps({"text": d}) + "\n")
    out = tmp / "out"
    assert prepare.main(["--input", str(src), "--out-dir", str(out), "--vocab-size", "400", "--caseops",
                         "--max-shard-tokens", "5000"]) == 0
    folder = out / "datasets/docs_sp400_caseops"
    return {"folder": folder, "manifest": json.loads((folder / "manifest.json").read_text()),
            "model": out / "tokenizers/docs_400_bpe_caseops.model"}


def make_caseops_repo(root: Path, source: dict, sidecars: bool = True) -> list[str]:
    """romeerp/parameter-golf-caseops-v1: datasets/datasets/<CASEOPS_DIR>/ with val, val_bytes and train shards,
    datasets/tokenizers/<CASEOPS_TOK>.model/.vocab, datasets/manifest.json as the record's exporter writes it."""
    base = root / "datasets"
    d = base / "datasets" / CASEOPS_DIR
    d.mkdir(parents=True)
    for p in sorted(source["folder"].glob("fineweb_*.bin")):
        if sidecars or "val_bytes" not in p.name:
            shutil.copy(p, d / p.name)
    (base / "tokenizers").mkdir()
    shutil.copy(source["model"], base / "tokenizers" / f"{CASEOPS_TOK}.model")
    shutil.copy(source["model"].with_suffix(".vocab"), base / "tokenizers" / f"{CASEOPS_TOK}.vocab")
    m = source["manifest"]
    n_val = len(list(d.glob("fineweb_val_0*.bin")))
    entry = {"name": CASEOPS_DIR, "tokenizer_name": "sp_bpe_8192_lossless_caps_caseops_v1_reserved",
             "train_glob": f"datasets/{CASEOPS_DIR}/fineweb_train_*.bin",
             "val_glob": f"datasets/{CASEOPS_DIR}/fineweb_val_*.bin",
             "stats": {"docs_val": m["docs_val"], "docs_train": m["docs_train"], "files_val": n_val,
                       "files_train": len(list(d.glob("fineweb_train_*.bin"))), "tokens_val": m["val_tokens"],
                       "tokens_train": m["train_tokens"]}}
    if sidecars:
        entry["val_bytes_glob"] = f"datasets/{CASEOPS_DIR}/fineweb_val_bytes_*.bin"
    manifest = {"version": "10B", "num_val_docs": m["docs_val"], "datasets": [entry],
                "tokenizers": [{"name": "sp_bpe_8192_lossless_caps_caseops_v1_reserved", "kind": "sentencepiece_bpe",
                                "model_path": f"tokenizers/{CASEOPS_TOK}.model",
                                "vocab_path": f"tokenizers/{CASEOPS_TOK}.vocab",
                                "text_transform": "lossless_caps_caseops_v1",
                                "reserve_text_transform_controls": True}]}
    (base / "manifest.json").write_text(json.dumps(manifest))
    return listing(root)


def args_for(out: Path, *extra) -> object:
    return prepare.parse_args(["--source", "fineweb", "--out-dir", str(out), *map(str, extra)])


# ----------------------------------------------------------------------------- variants and repositories


def test_variants_and_their_repositories(monkeypatch):
    monkeypatch.delenv(fineweb.REPO_ENV, raising=False)
    want = {"sp1024": ("willdepueoai/parameter-golf", "fineweb10B_sp1024", ["fineweb_1024_bpe.model", "fineweb_1024_bpe.vocab"]),
            "byte260": ("willdepueoai/parameter-golf", "fineweb10B_byte260", ["fineweb_pure_byte_260.json"]),
            "sp4096": ("kevclark/parameter-golf", "fineweb10B_sp4096", ["fineweb_4096_bpe.model", "fineweb_4096_bpe.vocab"]),
            "sp8192": ("kevclark/parameter-golf", "fineweb10B_sp8192", ["fineweb_8192_bpe.model", "fineweb_8192_bpe.vocab"]),
            "sp8192_caseops": ("romeerp/parameter-golf-caseops-v1", CASEOPS_DIR, [f"{CASEOPS_TOK}.model", f"{CASEOPS_TOK}.vocab"]),
            "sp8192_lossless_caps_caseops_v1_reserved": ("romeerp/parameter-golf-caseops-v1", CASEOPS_DIR, None),
            "sp2048": ("willdepueoai/parameter-golf", "fineweb10B_sp2048", ["fineweb_2048_bpe.model", "fineweb_2048_bpe.vocab"])}
    for name, (repo, folder, tok) in want.items():
        args = args_for(Path("/tmp/x"), "--variant", name)
        assert fineweb.resolve_repo(args) == (repo, "datasets"), name
        assert fineweb.dataset_dir_for_variant(name) == folder
        if tok:
            assert fineweb.default_tokenizer_files(name) == tok
    assert fineweb.resolve_variant("sp8192_lossless_caps_caseops_v1_reserved").caseops
    # --repo-id overrides, then upstream's MATCHED_FINEWEB_REPO_ID, then the variant's host
    assert fineweb.resolve_repo(args_for(Path("/t"), "--variant", "sp8192", "--repo-id", "me/mine"))[0] == "me/mine"
    monkeypatch.setenv(fineweb.REPO_ENV, "mirror/pg")
    assert fineweb.resolve_repo(args_for(Path("/t"), "--variant", "sp8192"))[0] == "mirror/pg"
    assert fineweb.resolve_repo(args_for(Path("/t"), "--variant", "sp8192", "--repo-id", "me/mine"))[0] == "me/mine"
    for bad in ("gpt2", "sp", "sp8192-x", "SP1024", ""):
        with pytest.raises(ValueError, match="unsupported --variant"):
            fineweb.resolve_variant(bad)


@pytest.mark.parametrize("argv, pattern", [
    (["--variant", "gpt2"], "unsupported --variant 'gpt2'"),
    (["--repo-id", "no-slash"], "--repo-id must be OWNER/NAME"),
    (["--train-shards", "-1"], "--train-shards must be >= 0"),
])
def test_bad_fineweb_flags_one_line(argv, pattern, capsys):
    with pytest.raises(SystemExit) as info:
        prepare.parse_args(["--source", "fineweb", *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and pattern in err


# ----------------------------------------------------------------------------- file selection


def test_selection_official_layout(dataset, tmp_path):
    _, model = dataset
    files = make_official_repo(tmp_path / "remote", model)
    manifest = json.loads((tmp_path / "remote/datasets/manifest.json").read_text())
    pre = "datasets/datasets/fineweb10B_sp1024/"
    for man in (manifest, None):
        sel = fineweb.select_fineweb_files(list(reversed(files)), "sp1024", 3, man)
        assert sel.val == [pre + "fineweb_val_000000.bin", pre + "fineweb_val_000001.bin"]
        assert sel.train == [pre + f"fineweb_train_00000{i}.bin" for i in range(3)]
        assert sel.tokenizer == ["datasets/tokenizers/fineweb_1024_bpe.model", "datasets/tokenizers/fineweb_1024_bpe.vocab"]
        assert sel.available_train == 5 and sel.val_bytes == []
    assert fineweb.select_fineweb_files(files, "sp1024", 0).train == []
    assert len(fineweb.select_fineweb_files(files, "sp1024", 5).train) == 5
    sel = fineweb.select_fineweb_files(files, "sp4096", 2, manifest)
    assert sel.tokenizer == ["datasets/tokenizers/fineweb_4096_bpe.model"] and len(sel.val) == 1
    sel = fineweb.select_fineweb_files(files, "byte260", 2, manifest)  # not in the manifest: standard names
    assert sel.tokenizer == ["datasets/tokenizers/fineweb_pure_byte_260.json"] and len(sel.train) == 2
    with pytest.raises(UserError, match="only 5 train shards"):
        fineweb.select_fineweb_files(files, "sp1024", 6, manifest)
    with pytest.raises(UserError, match="no shards for variant sp8192.*found: fineweb10B_byte260, fineweb10B_sp1024, fineweb10B_sp4096"):
        fineweb.select_fineweb_files(files, "sp8192", 1)
    with pytest.raises(UserError, match="lists 4 of the 5 train shards"):
        fineweb.select_fineweb_files([f for f in files if not f.endswith("train_000004.bin")], "sp1024", 1, manifest)
    with pytest.raises(ValueError):
        fineweb.select_fineweb_files(files, "gpt2", 1)
    assert fineweb.local_path_for_remote(pre + "fineweb_val_000000.bin", Path("/d")) == \
        Path("/d/datasets/fineweb10B_sp1024/fineweb_val_000000.bin")
    assert fineweb.local_path_for_remote("datasets/tokenizers/a.model", Path("/d")) == Path("/d/tokenizers/a.model")


def test_selection_kevclark_layout(dataset, tmp_path):
    files = make_kevclark_repo(tmp_path / "remote", dataset[1])
    sel = fineweb.select_fineweb_files(files, "sp8192", 2)
    pre = "datasets/datasets/fineweb10B_sp8192/"
    assert sel.val == [pre + "fineweb_val_000000.bin"] and sel.train == [pre + "fineweb_train_000000.bin",
                                                                          pre + "fineweb_train_000001.bin"]
    assert sel.tokenizer == ["datasets/tokenizers/fineweb_8192_bpe.model"]  # no .vocab in this repo: not asked
    with pytest.raises(UserError, match="no shards for variant sp1024.*found: fineweb10B_sp4096, fineweb10B_sp8192"):
        fineweb.select_fineweb_files(files, "sp1024", 1)


def test_selection_caseops_layout(caseops_source, tmp_path):
    files = make_caseops_repo(tmp_path / "remote", caseops_source)
    manifest = json.loads((tmp_path / "remote/datasets/manifest.json").read_text())
    pre = f"datasets/datasets/{CASEOPS_DIR}/"
    for man in (manifest, None):
        sel = fineweb.select_fineweb_files(files, "sp8192_caseops", 2, man)
        assert sel.val == [pre + "fineweb_val_000000.bin", pre + "fineweb_val_000001.bin"]
        assert sel.val_bytes == [pre + "fineweb_val_bytes_000000.bin", pre + "fineweb_val_bytes_000001.bin"]
        assert sel.train == [pre + "fineweb_train_000000.bin", pre + "fineweb_train_000001.bin"]
        assert sel.tokenizer == [f"datasets/tokenizers/{CASEOPS_TOK}.model", f"datasets/tokenizers/{CASEOPS_TOK}.vocab"]
        assert sel.text_transform == "lossless_caps_caseops_v1"
        assert sel.files == sel.val + sel.val_bytes + sel.train + sel.tokenizer
    assert fineweb.select_fineweb_files(files, "sp8192_lossless_caps_caseops_v1_reserved", 1).val_bytes == sel.val_bytes
    # a sidecar missing: refused, never a CaseOps dataset scored with the byte table
    without = [f for f in files if not f.endswith("val_bytes_000001.bin")]
    with pytest.raises(UserError, match="val byte sidecar .*fineweb_val_bytes_000001.bin for variant sp8192_caseops is not in the repo"):
        fineweb.select_fineweb_files(without, "sp8192_caseops", 1, manifest)


# ----------------------------------------------------------------------------- downloads


def test_fineweb_build_from_fake_repo(dataset, tmp_path, capsys):
    _, model = dataset
    remote = tmp_path / "remote"
    make_official_repo(remote, model)
    out = tmp_path / "data"
    (out / "tokenizers").mkdir(parents=True)
    (out / "tokenizers/fineweb_1024_bpe.model").write_bytes(b"a stale file of the same name")
    args = args_for(out, "--train-shards", 2)
    hub = FakeHub(remote)
    assert fineweb.build_from_fineweb(args, client=hub) == 0
    folder = out / "datasets/fineweb10B_sp1024"
    assert sorted(p.name for p in folder.iterdir()) == [
        "fineweb_train_000000.bin", "fineweb_train_000001.bin", "fineweb_val_000000.bin",
        "fineweb_val_000001.bin", "hf_manifest.json", "manifest.json"]
    assert (out / "tokenizers/fineweb_1024_bpe.model").read_bytes() == model.read_bytes()
    m = json.loads((folder / "manifest.json").read_text())
    val = np.concatenate([read_shard(folder / f"fineweb_val_00000{i}.bin") for i in range(2)])
    assert m["val_tokens"] == val.size and m["docs_val"] == int((val == BOS).sum())
    assert m["val_bytes"] == count_bytes(val, load_byte_table(out / "tokenizers/fineweb_1024_bpe.model"))
    assert m["val_bytes_source"] == "byte table" and "val_bytes_file" not in m
    assert m["tokenizer"]["file"] == "tokenizers/fineweb_1024_bpe.model"
    assert m["tokenizer"]["sha256"] == sha256_file(model)
    assert all(sha256_file(folder / n) == d for n, d in m["shards"].items())
    assert not (out / "datasets/.fineweb10B_sp1024.lock").exists()
    # re-run: up to date without touching the network
    offline = FakeHub(remote)
    offline.check_reachable = lambda: pytest.fail("network used for an up-to-date dataset")
    capsys.readouterr()
    assert fineweb.build_from_fineweb(args, client=offline) == 0
    assert capsys.readouterr().out.startswith("up to date: ")
    # --force: every local file checks out against the listing, nothing is downloaded again
    again = FakeHub(remote)
    assert fineweb.build_from_fineweb(args_for(out, "--train-shards", 2, "--force"), client=again) == 0
    assert [c for c in again.calls if isinstance(c, tuple) and c[0].endswith(".bin")] == []
    # fewer shards asked: the extra train shard goes away
    assert fineweb.build_from_fineweb(args_for(out, "--train-shards", 1), client=FakeHub(remote)) == 0
    assert not (folder / "fineweb_train_000001.bin").exists()
    # byte260 uses the pure-byte JSON tokenizer: every byte token is 1 byte, specials 0
    assert fineweb.build_from_fineweb(args_for(out, "--variant", "byte260", "--train-shards", 1),
                                      client=FakeHub(remote)) == 0
    mb = json.loads((out / "datasets/fineweb10B_byte260/manifest.json").read_text())
    vb = read_shard(out / "datasets/fineweb10B_byte260/fineweb_val_000000.bin")
    assert mb["val_bytes"] == int((vb >= 4).sum()) and mb["tokenizer"]["vocab_size"] == 260
    # a tokenizer that does not load, even when fetched again, is one clear error
    with pytest.raises(UserError, match="fineweb_4096_bpe.model from the repo is damaged even when fetched again"):
        fineweb.build_from_fineweb(args_for(tmp_path / "d2", "--variant", "sp4096", "--train-shards", 1,
                                            "--repo-id", "willdepueoai/parameter-golf"), client=FakeHub(remote))


def test_caseops_build_from_fake_repo(caseops_source, tmp_path, capsys):
    remote = tmp_path / "remote"
    make_caseops_repo(remote, caseops_source)
    out = tmp_path / "data"
    hub = FakeHub(remote)
    assert fineweb.build_from_fineweb(args_for(out, "--variant", "sp8192_caseops", "--train-shards", 2), client=hub) == 0
    folder = out / "datasets" / CASEOPS_DIR
    assert sorted(p.name for p in folder.iterdir()) == [
        "fineweb_train_000000.bin", "fineweb_train_000001.bin", "fineweb_val_000000.bin", "fineweb_val_000001.bin",
        "fineweb_val_bytes_000000.bin", "fineweb_val_bytes_000001.bin", "hf_manifest.json", "manifest.json"]
    m = json.loads((folder / "manifest.json").read_text())
    src = caseops_source["manifest"]
    assert m["val_bytes"] == src["val_bytes"] and m["val_tokens"] == src["val_tokens"]  # the sidecar's sum
    assert m["val_bytes_source"] == "sidecar" and m["val_bytes_file"] == ["fineweb_val_bytes_000000.bin",
                                                                         "fineweb_val_bytes_000001.bin"]
    assert m["val_bytes_sha256"] == [sha256_file(folder / n) for n in m["val_bytes_file"]]
    assert m["text_transform"] == "lossless_caps_caseops_v1" and m["tokenizer"]["reserved_ids"]["4"] == "\ue001"
    assert m["tokenizer"]["file"] == f"tokenizers/{CASEOPS_TOK}.model"
    assert m["source"]["repo_id"] == "romeerp/parameter-golf-caseops-v1" and m["source"]["variant"] == "sp8192_caseops"
    capsys.readouterr()
    assert fineweb.build_from_fineweb(args_for(out, "--variant", "sp8192_caseops", "--train-shards", 2),
                                      client=FakeHub(remote)) == 0
    assert capsys.readouterr().out.startswith("up to date: ")
    # a changed sidecar on disk: no longer up to date, fetched again
    side = folder / "fineweb_val_bytes_000001.bin"
    side.write_bytes(side.read_bytes()[:-2] + b"\x05\x00")
    hub = FakeHub(remote)
    assert fineweb.build_from_fineweb(args_for(out, "--variant", "sp8192_caseops", "--train-shards", 2), client=hub) == 0
    assert sha256_file(side) == sha256_file(remote / "datasets/datasets" / CASEOPS_DIR / side.name)
    # the local file was a hard link into the cache, so the cache copy was damaged too: fetched bypassing it
    assert [(c[0].rsplit("/", 1)[1], c[1]) for c in hub.calls if isinstance(c, tuple) and c[0].endswith(".bin")] == \
        [(side.name, False), (side.name, True)]


@pytest.mark.parametrize("damage", [
    lambda b: b"",  # a 0-byte cache entry (#82)
    lambda b: b[:-7],  # a cut transfer
    lambda b: b[:1024] + bytes(len(b) - 1024),  # right size, wrong content
])
def test_damaged_download_is_fetched_again(caseops_source, tmp_path, capsys, damage):
    remote = tmp_path / "remote"
    make_caseops_repo(remote, caseops_source)
    bad = f"datasets/datasets/{CASEOPS_DIR}/fineweb_val_bytes_000000.bin"
    hub = FakeHub(remote, damage={bad: damage})
    out = tmp_path / "data"
    assert fineweb.build_from_fineweb(args_for(out, "--variant", "sp8192_caseops", "--train-shards", 1), client=hub) == 0
    assert (bad, False) in hub.calls and (bad, True) in hub.calls
    assert "downloading it again" in capsys.readouterr().err
    assert sha256_file(out / "datasets" / CASEOPS_DIR / "fineweb_val_bytes_000000.bin") == sha256_file(remote / bad)


def test_persistently_damaged_download_is_refused(caseops_source, tmp_path, capsys, monkeypatch):
    remote = tmp_path / "remote"
    make_caseops_repo(remote, caseops_source)
    bad = f"datasets/datasets/{CASEOPS_DIR}/fineweb_train_000000.bin"
    out = tmp_path / "data"
    monkeypatch.setattr(fineweb, "HubClient", lambda repo_id: FakeHub(remote, damage={bad: lambda b: b[:-2]},
                                                                      persist=True))
    rc = prepare.main(["--source", "fineweb", "--variant", "sp8192_caseops", "--train-shards", "1",
                       "--out-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith(f"error: {bad} from the repo is damaged even when fetched again (")
    assert not (out / "datasets" / CASEOPS_DIR / "fineweb_train_000000.bin").exists()
    assert not (out / "datasets" / CASEOPS_DIR / "manifest.json").exists()


@pytest.mark.parametrize("case, pattern", [
    ("tokens_val", "holds {have:,} val tokens, the repo's manifest says {want:,}"),
    ("docs_val", "val documents, the repo's manifest says"),
    ("tokens_train", "train tokens, the repo's manifest says"),
    ("short_sidecar", "the val byte sidecar holds"),
    ("misaligned_sidecar", "(BOS or a CaseOps operator, which stand for 0 bytes)"),
    ("zero_tokens", "the header says 0 tokens"),
])
def test_remote_counts_and_sidecars_checked(caseops_source, tmp_path, case, pattern):
    remote = tmp_path / "remote"
    make_caseops_repo(remote, caseops_source)
    man_path = remote / "datasets/manifest.json"
    man = json.loads(man_path.read_text())
    folder = remote / "datasets/datasets" / CASEOPS_DIR
    stats = man["datasets"][0]["stats"]
    shards = len(list(folder.glob("fineweb_train_*.bin")))
    if case in ("tokens_val", "docs_val", "tokens_train"):
        stats[case] += 1
        pattern = pattern.format(have=stats["tokens_val"] - 1, want=stats["tokens_val"])
    elif case == "short_sidecar":
        write_shard(folder / "fineweb_val_bytes_000001.bin", read_shard(folder / "fineweb_val_bytes_000001.bin")[:-1])
    elif case == "misaligned_sidecar":
        write_shard(folder / "fineweb_val_bytes_000000.bin", np.roll(read_shard(folder / "fineweb_val_bytes_000000.bin"), 1))
    elif case == "zero_tokens":
        write_shard(folder / "fineweb_train_000000.bin", np.zeros(0, dtype=np.uint16))
    man_path.write_text(json.dumps(man))
    with pytest.raises(UserError, match=pattern.replace("(", r"\(").replace(")", r"\)")):
        fineweb.build_from_fineweb(args_for(tmp_path / "data", "--variant", "sp8192_caseops", "--train-shards",
                                            shards), client=FakeHub(remote))
    assert not (tmp_path / "data/datasets" / CASEOPS_DIR / "manifest.json").exists()


def test_caseops_tokenizer_without_sidecar_refused(caseops_source, tmp_path):
    """A variant the kit does not know as CaseOps, from a repo without sidecars, whose tokenizer reserves the
    operators: refused (its byte table would count every operator as 3 bytes)."""
    remote = tmp_path / "remote"
    make_caseops_repo(remote, caseops_source, sidecars=False)
    (remote / "datasets/datasets" / CASEOPS_DIR).rename(remote / "datasets/datasets/fineweb10B_sp8192_mine")
    man = json.loads((remote / "datasets/manifest.json").read_text())
    man["datasets"][0]["name"] = "fineweb10B_sp8192_mine"
    (remote / "datasets/manifest.json").write_text(json.dumps(man))
    assert not fineweb.resolve_variant("sp8192_mine").caseops
    with pytest.raises(UserError, match="reserves the CaseOps operators .* no val byte sidecar"):
        fineweb.build_from_fineweb(args_for(tmp_path / "data", "--variant", "sp8192_mine", "--train-shards", 1,
                                            "--repo-id", "me/mine"), client=FakeHub(remote))
    assert not (tmp_path / "data/datasets/fineweb10B_sp8192_mine/manifest.json").exists()


def test_fineweb_offline_one_line(tmp_path, capsys, monkeypatch):
    import socket

    import huggingface_hub

    monkeypatch.delenv(fineweb.REPO_ENV, raising=False)

    def no_dns(*a, **k):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_dns)
    for variant, repo in (("sp1024", "willdepueoai/parameter-golf"), ("sp8192_caseops", "romeerp/parameter-golf-caseops-v1")):
        rc = prepare.main(["--source", "fineweb", "--variant", variant, "--out-dir", str(tmp_path)])
        stdout, stderr = capsys.readouterr()
        assert rc == 1
        assert stderr == (f"error: cannot reach huggingface.co to download {repo}: "
                          "Name or service not known; check network or use the embedded default\n")
    # reachable host, but the hub call itself fails with a connection error
    monkeypatch.setattr(fineweb.HubClient, "check_reachable", lambda self: None)

    def refuse(*a, **k):
        raise ConnectionError("[Errno 111] Connection refused")

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_tree", refuse)
    rc = prepare.main(["--source", "fineweb", "--variant", "sp4096", "--out-dir", str(tmp_path)])
    stdout, stderr = capsys.readouterr()
    assert rc == 1 and stderr.count("\n") == 1
    assert stderr.startswith("error: cannot reach huggingface.co to download kevclark/parameter-golf: "
                             "ConnectionError: [Errno 111] Connection refused;")
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
