"""Tokenizer training and loading for every kind (byte-level BPE, SentencePiece BPE and unigram):
fixed control ids, exact round trip on Chinese/English/code/emoji, special tokens never produced from
text, determinism, provenance, and one-line errors for a corpus too small for the vocabulary."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pretrainlab.config import load_config
from pretrainlab.errors import DataError
from pretrainlab.fsio import read_json, sha256_file
from pretrainlab.tokenizer.spec import CONTROL_TOKENS, SPEC_FILE
from pretrainlab.tokenizer.train import train_tokenizer
from pretrainlab.tokenizer.vocab import load_tokenizer

DATA = Path(__file__).parent / "data"
KINDS = ("bpe", "sp_bpe", "sp_unigram")
WORDS = "the of and to in is that for it with as was on be by this are from or data model token".split()
CODE = [
    "def add(a, b):\n\treturn a + b\n",
    "for i in range(10):\n    print(i, i * i)\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n",
    "import os\nprint(os.path.join('a', 'b'))\n",
]
ZH_LINES = (DATA / "zh_sample.txt").read_text(encoding="utf-8").splitlines()
VOCAB = 1200  # SentencePiece must hold every frequent Chinese character of the sample plus 262 control/byte pieces


def write_corpus(root: Path, n_docs: int = 60, seed: int = 0) -> Path:
    """A small clean corpus: sources 'prose' (English), 'zh' (Chinese plan text) and 'code', train + heldout."""
    rng = random.Random(seed)
    clean = root / "clean"
    for source in ("prose", "zh", "code"):
        for split, n in (("train", n_docs), ("heldout", max(2, n_docs // 10))):
            path = clean / source / f"{split}-00000.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", encoding="utf-8") as fh:
                for i in range(n):
                    if source == "prose":
                        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) + "."
                    elif source == "zh":
                        text = "\n".join(rng.choice(ZH_LINES) for _ in range(rng.randint(1, 3)))
                    else:
                        text = "".join(rng.choice(CODE) for _ in range(rng.randint(1, 4)))
                    rec = {"id": f"{source}-{split}-{i}", "text": text, "source": source, "meta": {}}
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    (clean / "manifest.json").write_text(json.dumps({"sources": ["prose", "zh", "code"]}))
    return clean


def make_cfg(workdir: Path, kind: str = "bpe", *extra: str):
    return load_config(None, [f"workdir={workdir}", f"tokenizer.kind={kind}", f"tokenizer.vocab_size={VOCAB}", *extra])


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokcorpus")
    write_corpus(root)
    return root


@pytest.fixture(scope="module", params=KINDS)
def trained(request, corpus_root):
    cfg = make_cfg(corpus_root, request.param, f"tokenizer.out={corpus_root / request.param}")
    manifest = train_tokenizer(cfg)
    return cfg, manifest, load_tokenizer(cfg.tokenizer_dir)


ROUNDTRIP = {
    "english": "Hello, world! The quick brown fox jumps over the lazy dog.",
    "chinese": "数据是模型的基础。我们训练一个小的语言模型，分词器把文本变成整数。",
    "rare_chinese": "龘靐齉爩 — characters the sample never saw",
    "emoji": "emoji 🚀🔥👩‍👩‍👧 and accents: naïve café Ωμέγα",
    "code": "def f(x):\n\tif x:\n\t\treturn {'a': [1, 2]}\r\n",
    "whitespace": "control \x00\x01\x7f chars, spaces    and\n\n\nnewlines  ",
    "leading_space": "  indented",
    "empty": "",
}


def test_control_tokens_have_fixed_ids(trained):
    _, manifest, tok = trained
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert [tok.id_to_token(i) for i in range(len(CONTROL_TOKENS))] == list(CONTROL_TOKENS)
    assert manifest["special_tokens"] == {t: i for i, t in enumerate(CONTROL_TOKENS)}


def test_sizes_text_vocab_as_configured_and_total_padded(trained):
    _, manifest, tok = trained
    assert tok.text_vocab_size == manifest["text_vocab_size"] == VOCAB
    assert tok.vocab_size == manifest["vocab_size"] == tok.spec.total_size
    assert tok.vocab_size % 64 == 0 and tok.vocab_size >= VOCAB + 14 + 64


@pytest.mark.parametrize("name", sorted(ROUNDTRIP))
def test_encode_decode_roundtrip_is_exact(trained, name):
    _, _, tok = trained
    text = ROUNDTRIP[name]
    ids = tok.encode(text)
    assert all(0 <= i < tok.text_vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_every_character_is_representable_without_unknowns(trained):
    _, _, tok = trained
    text = "".join(chr(c) for c in range(1, 0x2FF)) + "\U0001F600\u200d\ufeff\u9fa5"
    ids = tok.encode(text)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == text


def test_sentencepiece_space_symbol_is_the_one_documented_exception(trained):
    cfg, _, tok = trained
    text = "a \u2581 b"
    expected = text if cfg.tokenizer.kind == "bpe" else "a   b"
    assert tok.decode(tok.encode(text)) == expected


def test_named_tokens_are_single_ids_and_never_produced_from_text(trained):
    _, _, tok = trained
    names = list(tok.spec.tokens)
    assert "<|cam_front|>" in names and "<|timestamp_1.0s|>" in names and "<|action_end|>" in names
    for name in names:
        i = tok.token_to_id(name)
        assert isinstance(i, int) and tok.id_to_token(i) == name
    text = " ".join(names) + " <|eos|>x<|pad|>"
    ids = tok.encode(text)
    assert not set(ids) & tok.special_ids
    assert tok.decode(ids) == text


def test_decode_skips_control_modality_and_code_ids(trained):
    _, _, tok = trained
    ids = tok.encode("the data")
    noise = [tok.bos_id, tok.token_to_id("<|image_start|>"), tok.spec.timestamp_id(2.0), tok.vocab_size - 1]
    assert tok.decode([*noise, *ids, tok.eos_id, tok.pad_id]) == "the data"


def test_encode_batch_matches_encode(trained):
    _, _, tok = trained
    texts = ["the model", "数据", "", "\tx = 1\n", ROUNDTRIP["emoji"]]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_text_model_file_agrees_with_the_spec(trained):
    """tokenizer.json holds the modality tokens at the spec's ids (for Hugging Face export);
    a SentencePiece model holds exactly the text range."""
    cfg, _, tok = trained
    if cfg.tokenizer.kind == "bpe":
        from tokenizers import Tokenizer

        raw = Tokenizer.from_file(str(tok.path))
        assert {name: raw.token_to_id(name) for name in tok.spec.tokens} == tok.spec.tokens
    else:
        assert tok.backend.get_piece_size() == tok.text_vocab_size


@pytest.mark.parametrize("kind", KINDS)
def test_training_is_deterministic(corpus_root, tmp_path, kind):
    a = train_tokenizer(make_cfg(corpus_root, kind, f"tokenizer.out={tmp_path / 'a'}"))
    b = train_tokenizer(make_cfg(corpus_root, kind, f"tokenizer.out={tmp_path / 'b'}"))
    assert a["tokenizer_sha256"] == b["tokenizer_sha256"] and a["text_sha256"] == b["text_sha256"]
    name = a["tokenizer_file"]
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_manifest_records_provenance(trained):
    cfg, manifest, tok = trained
    on_disk = read_json(cfg.tokenizer_dir / "manifest.json")
    assert on_disk["tokenizer_sha256"] == sha256_file(cfg.tokenizer_dir / SPEC_FILE) == tok.sha256
    assert on_disk["text_sha256"] == sha256_file(tok.path) == tok.spec.text_sha256
    assert on_disk["corpus_manifest_sha256"] == sha256_file(cfg.clean_dir / "manifest.json")
    assert on_disk["chars_trained"] == sum(s["chars"] for s in on_disk["sources"].values()) > 0
    assert set(on_disk["sources"]) == {"prose", "zh", "code"}
    assert on_disk["tokenizer_kind"] == cfg.tokenizer.kind and on_disk["config"]["vocab_size"] == VOCAB


def test_load_from_spec_file_or_model_file(trained):
    cfg, _, tok = trained
    for path in (cfg.tokenizer_dir, cfg.tokenizer_dir / SPEC_FILE, tok.path):
        again = load_tokenizer(path)
        assert again.sha256 == tok.sha256 and again.encode("数据 data") == tok.encode("数据 data")


def test_retraining_with_another_kind_replaces_the_model_file(corpus_root, tmp_path):
    out = tmp_path / "tok"
    train_tokenizer(make_cfg(corpus_root, "bpe", f"tokenizer.out={out}"))
    train_tokenizer(make_cfg(corpus_root, "sp_unigram", f"tokenizer.out={out}"))
    assert not (out / "tokenizer.json").exists() and load_tokenizer(out).kind == "sp_unigram"


def test_edited_model_file_no_longer_matches_its_spec(corpus_root, tmp_path):
    out = tmp_path / "tok"
    train_tokenizer(make_cfg(corpus_root, "bpe", f"tokenizer.out={out}"))
    with open(out / "tokenizer.json", "a") as fh:
        fh.write(" ")
    with pytest.raises(DataError, match="does not match.*tokenizer train"):
        load_tokenizer(out)


def test_sample_chars_caps_training_text_proportionally(tmp_path):
    write_corpus(tmp_path, n_docs=80)
    m = train_tokenizer(make_cfg(tmp_path, "bpe", "tokenizer.sample_chars=30000", "tokenizer.vocab_size=400"))
    assert m["chars_trained"] <= 30000
    sizes = {s: sum(len(json.loads(l)["text"]) for l in open(tmp_path / "clean" / s / "train-00000.jsonl")) for s in ("prose", "zh", "code")}
    share = m["sources"]["prose"]["chars"] / m["chars_trained"]
    assert share == pytest.approx(sizes["prose"] / sum(sizes.values()), abs=0.1)


@pytest.mark.parametrize("kind", KINDS)
def test_corpus_too_small_for_the_vocabulary_is_a_data_error(tmp_path, kind):
    write_corpus(tmp_path, n_docs=4)
    with pytest.raises(DataError, match=r"too small for a 20000-token vocabulary.*lower tokenizer.vocab_size to at most \d+"):
        train_tokenizer(make_cfg(tmp_path, kind, "tokenizer.vocab_size=20000"))
    assert not (tmp_path / "tokenizer").exists()  # nothing half-written


def test_missing_corpus_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="pretrainlab data build"):
        train_tokenizer(make_cfg(tmp_path))


def test_corpus_without_train_files_is_a_data_error(tmp_path):
    (tmp_path / "clean" / "prose").mkdir(parents=True)
    with pytest.raises(DataError, match="train-00000.jsonl"):
        train_tokenizer(make_cfg(tmp_path))


@pytest.mark.parametrize("kind", KINDS)
def test_empty_corpus_is_a_data_error(tmp_path, kind):
    (tmp_path / "clean" / "prose").mkdir(parents=True)
    (tmp_path / "clean" / "prose" / "train-00000.jsonl").write_text(json.dumps({"id": "1", "text": "", "source": "prose"}) + "\n")
    with pytest.raises(DataError, match="no training text"):
        train_tokenizer(make_cfg(tmp_path, kind))


def test_load_missing_tokenizer_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="pretrainlab tokenizer train"):
        load_tokenizer(tmp_path / "nope")


def test_tokenizer_without_spec_is_a_data_error(corpus_root, tmp_path):
    out = tmp_path / "tok"
    train_tokenizer(make_cfg(corpus_root, "bpe", f"tokenizer.out={out}"))
    (out / SPEC_FILE).unlink()
    with pytest.raises(DataError, match="vocab_spec.json is missing"):
        load_tokenizer(out)


def test_manifest_names_the_corpus_by_absolute_path_whatever_the_cwd(corpus_root, tmp_path, monkeypatch):
    monkeypatch.chdir(corpus_root.parent)
    relative_root = Path(corpus_root.name)
    cfg = make_cfg(relative_root, "bpe", f"tokenizer.out={tmp_path / 'tok'}")
    train_tokenizer(cfg)
    recorded = Path(read_json(tmp_path / "tok" / "manifest.json")["corpus_dir"])
    assert recorded.is_absolute() and recorded == (corpus_root / "clean").resolve()
