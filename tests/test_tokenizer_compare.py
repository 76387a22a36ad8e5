"""`tokenizer compare`: compression per source and language, fertility, fallback rates, table + offline HTML."""

from __future__ import annotations

import json

import pytest

from pretrainlab.cli import main
from pretrainlab.errors import DataError
from pretrainlab.tokenizer.compare import HAN_RUN, compare_tokenizers, guess_language, load_eval_docs
from pretrainlab.tokenizer.train import train_tokenizer
from pretrainlab.tokenizer.vocab import load_tokenizer
from test_tokenizer import VOCAB, make_cfg, write_corpus


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    write_corpus(root, n_docs=60)
    dirs = []
    for kind in ("bpe", "sp_unigram"):
        out = root / f"tok-{kind}"
        train_tokenizer(make_cfg(root, kind, f"tokenizer.out={out}"))
        dirs.append(out)
    cfg = make_cfg(root)
    return cfg, dirs, compare_tokenizers(cfg, dirs)


def test_rows_and_groups(setup):
    cfg, dirs, result = setup
    assert [r["name"] for r in result["tokenizers"]] == [f"bpe-{VOCAB}", f"sp_unigram-{VOCAB}"]
    for r in result["tokenizers"]:
        assert set(r["by_source"]) == {"prose", "zh", "code"}
        assert {"en", "zh"} <= set(r["by_language"])
    assert result["split"] == "heldout" and result["languages"]["zh"] > 0


def test_compression_figures_match_a_direct_count(setup):
    cfg, dirs, result = setup
    docs = load_eval_docs(cfg.clean_dir, "heldout", cfg.tokenizer.compare_max_chars)
    for path, row in zip(dirs, result["tokenizers"]):
        tok = load_tokenizer(path)
        for source in ("prose", "zh", "code"):
            texts = [d.text for d in docs if d.source == source]
            tokens = sum(len(tok.encode(t)) for t in texts)
            got = row["by_source"][source]
            assert got["tokens"] == tokens
            assert got["chars_per_token"] == pytest.approx(sum(map(len, texts)) / tokens)
            assert got["bytes_per_token"] == pytest.approx(sum(len(t.encode()) for t in texts) / tokens)
        zh = row["by_language"]["zh"]
        assert zh["bytes_per_token"] > 2 * zh["chars_per_token"]  # Chinese characters are 3 bytes in UTF-8


def test_fertility_definitions(setup):
    cfg, dirs, result = setup
    docs = load_eval_docs(cfg.clean_dir, "heldout", cfg.tokenizer.compare_max_chars)
    tok = load_tokenizer(dirs[0])
    runs = [r for d in docs for r in HAN_RUN.findall(d.text)]
    expect_zh = sum(len(tok.encode(r)) for r in runs) / sum(map(len, runs))
    row = result["tokenizers"][0]
    assert row["fertility_zh"] == pytest.approx(expect_zh)
    assert 1.0 <= row["fertility_en"] < 3.0  # the prose vocabulary is small: most words are whole tokens


def test_fallback_rates(setup):
    _, _, result = setup
    bpe, uni = result["tokenizers"]
    assert bpe["unk_rate"] == uni["unk_rate"] == 0.0  # byte-level / byte fallback: nothing is unknown
    # Held-out Chinese characters missing from a 1,200 vocabulary become partial-UTF-8 byte tokens in BPE
    assert 0 < bpe["byte_fallback_rate"] < 1 and 0 <= uni["byte_fallback_rate"] < 1


def test_writes_json_and_offline_html(setup):
    cfg, _, result = setup
    out = cfg.tokenizer_compare_dir
    assert json.loads((out / "compare.json").read_text())["tokenizers"][0]["name"] == result["tokenizers"][0]["name"]
    page = (out / "compare.html").read_text()
    assert "<script" not in page and "http" not in page
    for r in result["tokenizers"]:
        assert r["name"] in page
    assert "Characters per token, per language" in page


def test_cli_trains_the_grid_and_reuses_it(tmp_path, capsys):
    write_corpus(tmp_path, n_docs=30)
    args = ["tokenizer", "compare", "--workdir", str(tmp_path), "--kinds", "bpe,sp_bpe", "--vocab-sizes", "1000,1100"]
    assert main(args) == 0
    result = json.loads((tmp_path / "tokenizer_compare" / "compare.json").read_text())
    assert [r["name"] for r in result["tokenizers"]] == ["bpe-1000", "bpe-1100", "sp_bpe-1000", "sp_bpe-1100"]
    for kind in ("bpe", "sp_bpe"):
        small, big = [r for r in result["tokenizers"] if r["kind"] == kind]
        assert big["overall"]["chars_per_token"] > small["overall"]["chars_per_token"]
    before = (tmp_path / "tokenizer_compare" / "bpe-1000" / "tokenizer.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    assert "reusing" in capsys.readouterr().err
    assert (tmp_path / "tokenizer_compare" / "bpe-1000" / "tokenizer.json").stat().st_mtime_ns == before


def test_language_field_of_records_wins_over_the_script_guess(tmp_path):
    src = tmp_path / "clean" / "mixed"
    src.mkdir(parents=True)
    recs = [{"text": "hello there", "lang": "de"}, {"text": "数据模型", "meta": {"language": "zh-Hans"}}, {"text": "数据 plain"}]
    (src / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    docs = load_eval_docs(tmp_path / "clean", "train", 100)
    assert [d.lang for d in docs] == ["de", "zh", "zh"]


def test_guess_language():
    assert guess_language("数据是模型的基础 with a few English words") == "zh"
    assert guess_language("def f(x): return x") == "en"
    assert guess_language("12345 !!!") == "other"


def test_empty_split_is_a_data_error(tmp_path):
    write_corpus(tmp_path, n_docs=20)
    for p in (tmp_path / "clean").glob("*/heldout-*.jsonl"):
        p.write_text("")
    with pytest.raises(DataError, match="compare_split=train"):
        compare_tokenizers(make_cfg(tmp_path), [tmp_path / "nope"])


def test_missing_tokenizer_is_a_one_line_cli_error(tmp_path, capsys):
    write_corpus(tmp_path, n_docs=20)
    assert main(["tokenizer", "compare", "--workdir", str(tmp_path), str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tokenizer not found" in err[0]
