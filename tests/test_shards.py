"""Token shards: flat .bin + document index per (source, split), incremental and verifiable."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from pretrainlab.config import load_config
from pretrainlab.errors import DataError
from pretrainlab.fsio import sha256_file
from pretrainlab.tokenizer.shards import (
    ShardReader,
    check_tokenizer,
    list_sources,
    read_tokens_manifest,
    token_dtype,
    tokenize_corpus,
)
from pretrainlab.tokenizer.train import train_tokenizer
from pretrainlab.tokenizer.vocab import load_tokenizer

WORDS = "the of and to in is that for it with as was on be by this are from or data model token".split()
CODE = ["def add(a, b):\n\treturn a + b\n", "for i in range(3):\n    print(i)\n", "x = {'k': [1, 2]}\n"]


def write_source(clean: Path, source: str, n_train: int, n_heldout: int, seed: int) -> None:
    rng = random.Random(seed)
    for split, n in (("train", n_train), ("heldout", n_heldout)):
        path = clean / source / f"{split}-00000.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            for i in range(n):
                if source == "code":
                    text = "".join(rng.choice(CODE) for _ in range(rng.randint(1, 4)))
                else:
                    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) + " 模型🚀"
                fh.write(json.dumps({"id": f"{i}", "text": text, "source": source, "meta": {}}, ensure_ascii=False) + "\n")


@pytest.fixture
def cfg(tmp_path):
    clean = tmp_path / "clean"
    write_source(clean, "prose", 30, 4, seed=1)
    write_source(clean, "code", 25, 3, seed=2)
    (clean / "manifest.json").write_text("{}")
    cfg = load_config(None, [f"workdir={tmp_path}", "tokenizer.vocab_size=300", "tokenize.batch_docs=8"])
    train_tokenizer(cfg)
    return cfg


def texts(cfg, source, split):
    return [json.loads(line)["text"] for line in open(cfg.clean_dir / source / f"{split}-00000.jsonl", encoding="utf-8")]


def mtimes(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def test_small_vocab_uses_uint16(cfg):
    m = tokenize_corpus(cfg)
    assert m["dtype"] == "uint16" and ShardReader(cfg.tokens_dir, "prose", "train").dtype == np.uint16
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_layout_index_and_eos(cfg):
    tokenize_corpus(cfg)
    tok = load_tokenizer(cfg.tokenizer_dir)
    for source in ("prose", "code"):
        for split in ("train", "heldout"):
            d = cfg.tokens_dir / source
            idx = np.load(d / f"{split}-00000.idx.npy")
            flat = np.fromfile(d / f"{split}-00000.bin", dtype=np.uint16)
            n_docs = len(texts(cfg, source, split))
            assert idx.dtype == np.int64 and idx.shape == (n_docs + 1,)
            assert idx[0] == 0 and idx[-1] == flat.size and np.all(np.diff(idx) >= 1)
            assert np.all(flat[idx[1:] - 1] == tok.eos_id)  # every document ends with eos
            assert np.count_nonzero(flat == tok.eos_id) == n_docs  # and eos appears nowhere else


def test_reader_returns_exactly_the_encoded_documents(cfg):
    tokenize_corpus(cfg)
    tok = load_tokenizer(cfg.tokenizer_dir)
    for source in ("prose", "code"):
        for split in ("train", "heldout"):
            reader = ShardReader(cfg.tokens_dir, source, split)
            docs = texts(cfg, source, split)
            assert reader.num_docs == len(docs)
            for i, text in enumerate(docs):
                assert reader.doc(i).tolist() == tok.encode(text)
                assert reader.doc(i, with_eos=True).tolist() == tok.encode(text) + [tok.eos_id]
            assert tok.decode(reader.doc(-1)) == docs[-1]


def test_token_range_reads_match_the_flat_array(cfg):
    tokenize_corpus(cfg)
    reader = ShardReader(cfg.tokens_dir, "prose", "train")
    flat = np.concatenate([reader.doc(i, with_eos=True) for i in range(reader.num_docs)])
    assert reader.num_tokens == flat.size
    for start, end in [(0, 1), (3, 77), (flat.size - 10, flat.size), (5, 5)]:
        assert np.array_equal(reader.tokens(start, end), flat[start:end])
    assert isinstance(reader.tokens(0, 10), np.memmap)  # a view of the mapped file, not a copy
    with pytest.raises(IndexError):
        reader.tokens(0, flat.size + 1)


def test_reader_opens_from_prefix_and_pickles_by_reference(cfg):
    import pickle

    tokenize_corpus(cfg)
    reader = ShardReader.from_prefix(cfg.tokens_dir / "code" / "train.bin")
    assert (reader.source, reader.split) == ("code", "train")
    blob = pickle.dumps(reader)
    assert len(blob) < 1000  # a path, not the tokens
    again = pickle.loads(blob)
    assert np.array_equal(again.doc(0), reader.doc(0)) and again.num_tokens == reader.num_tokens


def test_manifest_counts_and_hashes(cfg):
    m = tokenize_corpus(cfg)
    on_disk = read_tokens_manifest(cfg.tokens_dir)
    assert list_sources(cfg.tokens_dir) == ["code", "prose"]
    assert on_disk["tokenizer_sha256"] == load_tokenizer(cfg.tokenizer_dir).sha256
    assert on_disk["corpus_manifest_sha256"] == sha256_file(cfg.clean_dir / "manifest.json")
    for source in ("prose", "code"):
        for split in ("train", "heldout"):
            part = on_disk["sources"][source][split]
            reader = ShardReader(cfg.tokens_dir, source, split)
            assert part["docs"] == reader.num_docs and part["tokens"] == reader.num_tokens
            assert part["chars"] == sum(len(t) for t in texts(cfg, source, split))
            assert part["bin_sha256"] == sha256_file(reader.bin_path)
    assert m["totals"]["all"]["tokens"] == sum(
        on_disk["sources"][s][sp]["tokens"] for s in ("prose", "code") for sp in ("train", "heldout")
    )
    assert m["status"] == "tokenized" and m["tokens_per_s"] > 0


def test_rerun_with_unchanged_inputs_is_a_noop(cfg):
    tokenize_corpus(cfg)
    before = mtimes(cfg.tokens_dir)
    m = tokenize_corpus(cfg)
    assert m["status"] == "up to date" and m["retokenized"] == []
    assert mtimes(cfg.tokens_dir) == before


def test_changed_source_retokenizes_only_that_part(cfg):
    tokenize_corpus(cfg)
    before = mtimes(cfg.tokens_dir)
    with open(cfg.clean_dir / "code" / "train-00000.jsonl", "w") as fh:
        for i in range(10):
            fh.write(json.dumps({"id": str(i), "text": f"y = {i}\n", "source": "code", "meta": {}}) + "\n")
    m = tokenize_corpus(cfg)
    assert m["retokenized"] == ["code/train-00000"]
    after = mtimes(cfg.tokens_dir)
    for name in ("prose/train-00000.bin", "prose/heldout-00000.bin", "code/heldout-00000.bin"):
        key = str(cfg.tokens_dir / name)
        assert after[key] == before[key]
    assert ShardReader(cfg.tokens_dir, "code", "train").num_docs == 10
    assert read_tokens_manifest(cfg.tokens_dir)["sources"]["code"]["train"]["docs"] == 10


def test_changed_tokenizer_retokenizes_everything(cfg):
    tokenize_corpus(cfg)
    train_tokenizer(load_config(None, [f"workdir={cfg.workdir}", "tokenizer.vocab_size=320"]))
    m = tokenize_corpus(cfg)
    assert sorted(m["retokenized"]) == ["code/heldout-00000", "code/train-00000", "prose/heldout-00000", "prose/train-00000"]
    assert m["tokenizer_sha256"] == load_tokenizer(cfg.tokenizer_dir).sha256


def test_worker_processes_and_threads_write_identical_shards(cfg, tmp_path):
    a = tokenize_corpus(cfg.model_copy(update={"tokenize": cfg.tokenize.model_copy(update={"backend": "threads", "out": tmp_path / "a"})}))
    b = tokenize_corpus(
        cfg.model_copy(update={"tokenize": cfg.tokenize.model_copy(update={"backend": "processes", "workers": 2, "out": tmp_path / "b"})})
    )
    assert a["backend"] == "threads" and b["backend"] == "processes"
    assert a["sources"] == b["sources"]


def test_empty_split_gives_an_empty_readable_part(cfg):
    (cfg.clean_dir / "code" / "heldout-00000.jsonl").write_text("")
    tokenize_corpus(cfg)
    reader = ShardReader(cfg.tokens_dir, "code", "heldout")
    assert reader.num_docs == 0 and reader.num_tokens == 0 and reader.tokens(0, 0).size == 0


def test_missing_tokenizer_is_a_data_error(cfg):
    shutil.rmtree(cfg.tokenizer_dir)
    with pytest.raises(DataError, match="pretrainlab tokenizer train"):
        tokenize_corpus(cfg)


def test_missing_corpus_is_a_data_error(cfg):
    shutil.rmtree(cfg.clean_dir)
    with pytest.raises(DataError, match="pretrainlab data build"):
        tokenize_corpus(cfg)


def test_malformed_record_is_a_data_error(cfg):
    with open(cfg.clean_dir / "prose" / "train-00000.jsonl", "a") as fh:
        fh.write("{not json\n")
    with pytest.raises(DataError, match="prose/train-00000.jsonl"):
        tokenize_corpus(cfg)


def test_missing_manifest_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="pretrainlab data tokenize"):
        read_tokens_manifest(tmp_path)


def test_truncated_bin_is_detected_and_repaired_by_rerun(cfg):
    tokenize_corpus(cfg)
    bin_path = cfg.tokens_dir / "prose" / "train-00000.bin"
    with open(bin_path, "r+b") as fh:
        fh.truncate(os.path.getsize(bin_path) - 6)
    with pytest.raises(DataError, match=r"train-00000\.bin.*pretrainlab data tokenize"):
        ShardReader(cfg.tokens_dir, "prose", "train")
    m = tokenize_corpus(cfg)
    assert m["retokenized"] == ["prose/train-00000"]
    assert ShardReader(cfg.tokens_dir, "prose", "train").num_docs == 30


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_sentencepiece_tokenizer_shards(cfg, tmp_path, backend):
    sp = load_config(None, [f"workdir={cfg.workdir}", "tokenizer.kind=sp_unigram", "tokenizer.vocab_size=320",
                            f"tokenizer.out={tmp_path / 'sp'}", f"tokenize.out={tmp_path / 'tokens'}",
                            f"tokenize.backend={backend}", "tokenize.batch_docs=8"])
    train_tokenizer(sp)
    m = tokenize_corpus(sp)
    tok = load_tokenizer(sp.tokenizer_dir)
    assert m["tokenizer_kind"] == "sp_unigram" and m["tokenizer_sha256"] == tok.sha256 and m["dtype"] == "uint16"
    for source in ("prose", "code"):
        reader = ShardReader(sp.tokens_dir, source, "train")
        for i, text in enumerate(texts(sp, source, "train")):
            assert reader.doc(i, with_eos=True).tolist() == tok.encode(text) + [tok.eos_id]


def test_vocabulary_over_65536_ids_uses_uint32(cfg):
    """Code ranges count: a 300-token text vocabulary plus 70,000 image codes needs uint32 ids."""
    big = load_config(None, [f"workdir={cfg.workdir}", "tokenizer.vocab_size=300", "tokenizer.image_codes=70000"])
    train_tokenizer(big)
    tok = load_tokenizer(big.tokenizer_dir)
    assert tok.vocab_size > 65536
    m = tokenize_corpus(big)
    reader = ShardReader(big.tokens_dir, "prose", "train")
    assert m["dtype"] == "uint32" and reader.dtype == np.uint32
    assert reader.bin_path.stat().st_size == 4 * reader.num_tokens
    assert reader.doc(3).tolist() == tok.encode(texts(big, "prose", "train")[3])


def test_shards_of_another_tokenizer_are_refused(cfg):
    tokenize_corpus(cfg)
    old = load_tokenizer(cfg.tokenizer_dir)
    assert check_tokenizer(cfg.tokens_dir, old)["tokenizer_sha256"] == old.sha256
    ShardReader(cfg.tokens_dir, "prose", "train", tokenizer_sha256=old.sha256)
    train_tokenizer(load_config(None, [f"workdir={cfg.workdir}", "tokenizer.vocab_size=320"]))
    new = load_tokenizer(cfg.tokenizer_dir)
    with pytest.raises(DataError, match=r"tokenized with tokenizer .* not with the tokenizer at .*pretrainlab data tokenize") as err:
        check_tokenizer(cfg.tokens_dir, new)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="was made with tokenizer"):
        ShardReader(cfg.tokens_dir, "prose", "train", tokenizer_sha256=new.sha256)


def test_a_shard_range_read_touches_only_its_pages(cfg):
    """The reader maps the file: reading a range allocates no copy of the shard."""
    tokenize_corpus(cfg)
    reader = ShardReader(cfg.tokens_dir, "prose", "train")
    view = reader.tokens(10, 20)
    assert isinstance(view, np.memmap) and not view.flags.owndata and view.base is not None
    assert isinstance(reader.index, np.memmap)


def test_manifest_locates_its_corpus_from_any_cwd_and_after_a_move(cfg, tmp_path, monkeypatch):
    """The corpus is recorded absolute and relative to the manifest, never relative to the cwd."""
    from pretrainlab.tokenizer.shards import corpus_dir_of

    monkeypatch.chdir(tmp_path)
    rel = load_config(None, ["workdir=.", "tokenizer.vocab_size=300"])  # paths relative to the cwd
    tokenize_corpus(rel)
    m = read_tokens_manifest(tmp_path / "tokens")
    assert m["corpus_dir"] == str((tmp_path / "clean").resolve()) and m["corpus_dir_relative"] == "../clean"
    assert Path(m["tokenizer_dir"]).is_absolute()
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert corpus_dir_of(tmp_path / "tokens").resolve() == (tmp_path / "clean").resolve()
    # moved together to another place, with a different corpus left at the old absolute path
    moved = elsewhere / "project"
    shutil.copytree(tmp_path / "tokens", moved / "tokens")
    shutil.copytree(tmp_path / "clean", moved / "clean")
    (tmp_path / "clean" / "manifest.json").write_text('{"other": "corpus"}')
    assert corpus_dir_of(moved / "tokens").resolve() == (moved / "clean").resolve()
    # a corpus whose manifest is not the one tokenized is never taken for it
    (moved / "clean" / "manifest.json").write_text('{"changed": true}')
    assert corpus_dir_of(moved / "tokens") is None
