"""Tokenizer training and loading: byte-level BPE, fixed special ids, exact roundtrip, determinism."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pretrainlab.config import load_config
from pretrainlab.errors import DataError
from pretrainlab.fsio import read_json, sha256_file
from pretrainlab.tokenizer.train import train_tokenizer
from pretrainlab.tokenizer.vocab import load_tokenizer

WORDS = "the of and to in is that for it with as was on be by this are from or data model token".split()
CODE = [
    "def add(a, b):\n\treturn a + b\n",
    "for i in range(10):\n    print(i, i * i)\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n",
    "import os\nprint(os.path.join('a', 'b'))\n",
]
CHINESE = ["数据是模型的基础。", "我们训练一个小的语言模型。", "分词器把文本变成整数。"]


def write_corpus(root: Path, n_docs: int = 40, seed: int = 0) -> Path:
    """A tiny clean corpus: sources 'prose' and 'code', each with train/heldout JSONL and a manifest."""
    rng = random.Random(seed)
    clean = root / "clean"
    for source in ("prose", "code"):
        for split, n in (("train", n_docs), ("heldout", max(2, n_docs // 10))):
            path = clean / source / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", encoding="utf-8") as fh:
                for i in range(n):
                    if source == "prose":
                        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) + ". " + rng.choice(CHINESE)
                    else:
                        text = "".join(rng.choice(CODE) for _ in range(rng.randint(1, 4)))
                    rec = {"id": f"{source}-{split}-{i}", "text": text, "source": source, "meta": {}}
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    (clean / "manifest.json").write_text(json.dumps({"sources": ["prose", "code"]}))
    return clean


def make_cfg(workdir: Path, *extra: str):
    return load_config(None, [f"workdir={workdir}", "tokenizer.vocab_size=400", *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    write_corpus(root)
    cfg = make_cfg(root)
    manifest = train_tokenizer(cfg)
    return cfg, manifest, load_tokenizer(cfg.tokenizer_dir)


def test_special_tokens_have_fixed_ids(trained):
    cfg, manifest, tok = trained
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert [tok.id_to_token(i) for i in range(3)] == ["<|pad|>", "<|bos|>", "<|eos|>"]
    assert manifest["special_tokens"] == {"<|pad|>": 0, "<|bos|>": 1, "<|eos|>": 2}


def test_vocab_size_is_as_configured(trained):
    cfg, manifest, tok = trained
    assert tok.vocab_size == manifest["vocab_size"] == 400


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world! The quick brown fox.",
        "数据是模型的基础。我们训练一个小的语言模型。",
        "emoji 🚀🔥👩‍👩‍👧 and accents: naïve café Ωμέγα",
        "def f(x):\n\tif x:\n\t\treturn {'a': [1, 2]}\r\n",
        "control \x00\x01\x7f chars, spaces    and\n\n\nnewlines  ",
        "",
    ],
)
def test_encode_decode_roundtrip_is_exact(trained, text):
    _, _, tok = trained
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_every_byte_is_representable(trained):
    _, _, tok = trained
    text = "".join(chr(c) for c in range(1, 0x2FF)) + "\U0001F600\u200d\ufeff"
    assert tok.decode(tok.encode(text)) == text


def test_encode_adds_no_specials_and_decode_skips_them(trained):
    _, _, tok = trained
    ids = tok.encode("the data")
    assert not set(ids) & {0, 1, 2}
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id]) == "the data"


def test_special_token_text_in_data_is_plain_text(trained):
    """A document containing '<|eos|>' literally must not produce the eos id."""
    _, _, tok = trained
    text = "a <|eos|> b <|pad|>"
    ids = tok.encode(text)
    assert tok.eos_id not in ids and tok.pad_id not in ids
    assert tok.decode(ids) == text


def test_encode_batch_matches_encode(trained):
    _, _, tok = trained
    texts = ["the model", "数据", "", "\tx = 1\n"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_training_is_deterministic(tmp_path):
    write_corpus(tmp_path)
    a = train_tokenizer(make_cfg(tmp_path, f"tokenizer.out={tmp_path / 'a'}"))
    b = train_tokenizer(make_cfg(tmp_path, f"tokenizer.out={tmp_path / 'b'}"))
    assert a["tokenizer_sha256"] == b["tokenizer_sha256"]
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


def test_manifest_records_provenance(trained):
    cfg, manifest, tok = trained
    on_disk = read_json(cfg.tokenizer_dir / "manifest.json")
    assert on_disk["tokenizer_sha256"] == sha256_file(cfg.tokenizer_dir / "tokenizer.json") == tok.sha256
    assert on_disk["corpus_manifest_sha256"] == sha256_file(cfg.clean_dir / "manifest.json")
    assert on_disk["chars_trained"] == sum(s["chars"] for s in on_disk["sources"].values()) > 0
    assert set(on_disk["sources"]) == {"prose", "code"}
    assert on_disk["config"]["vocab_size"] == 400
    assert on_disk["code_version"] and on_disk["seconds"] >= 0


def test_sample_chars_caps_training_text_proportionally(tmp_path):
    write_corpus(tmp_path, n_docs=80)
    m = train_tokenizer(make_cfg(tmp_path, "tokenizer.sample_chars=2000"))
    assert m["chars_trained"] <= 2000
    sizes = {s: sum(len(json.loads(l)["text"]) for l in open(tmp_path / "clean" / s / "train.jsonl")) for s in ("prose", "code")}
    share = m["sources"]["prose"]["chars"] / m["chars_trained"]
    assert share == pytest.approx(sizes["prose"] / sum(sizes.values()), abs=0.1)


def test_missing_corpus_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="pretrainlab data build"):
        train_tokenizer(make_cfg(tmp_path))


def test_corpus_without_train_files_is_a_data_error(tmp_path):
    (tmp_path / "clean" / "prose").mkdir(parents=True)
    with pytest.raises(DataError, match="train.jsonl"):
        train_tokenizer(make_cfg(tmp_path))


def test_empty_corpus_is_a_data_error(tmp_path):
    (tmp_path / "clean" / "prose").mkdir(parents=True)
    (tmp_path / "clean" / "prose" / "train.jsonl").write_text(json.dumps({"id": "1", "text": "", "source": "prose"}) + "\n")
    with pytest.raises(DataError, match="no training text"):
        train_tokenizer(make_cfg(tmp_path))


def test_load_missing_tokenizer_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="pretrainlab tokenizer train"):
        load_tokenizer(tmp_path / "nope")
