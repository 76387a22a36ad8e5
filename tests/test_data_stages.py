"""The data pipeline's stages: quality rules (English and Chinese), language ID, PII, MinHash near-dedup."""

from __future__ import annotations

import random

import numpy as np
import pytest

from pretrainlab.config import load_config
from pretrainlab.data.minhash import LSHIndex, MinHasher, candidate_probability
from pretrainlab.data.pii import cn_id_valid, find_pii, luhn_valid, redact
from pretrainlab.data.stages import Document, Reject, build_stages

EN = ("The committee reviewed the proposal and agreed that the plan was sound. Members of the public have asked "
      "for more time to read it, and the chair said that this would be arranged with the help of the staff. ")
ZH = ("数据准备是大模型预训练的基础，也是最主要的瓶颈。我们在清洗流程中去除重复的网页和低质量的文本，"
      "并且对隐私信息进行脱敏处理。这些步骤都有详细的记录，以便审计人员随时检查。")


def _stage(name: str, *overrides: str):
    cfg = load_config(None, [f"data.stages=[{name}]", *overrides]).data
    return build_stages(cfg)[0]


def _run(stage, text: str, source: str = "s"):
    return stage.process(Document("d", text, source, {}))


def _code(result) -> str | None:
    return result.code if isinstance(result, Reject) else None


def _unique_en(n_sentences: int, seed: int = 0) -> str:
    """Sentences of random pseudo-words: no repetition beyond chance."""
    rng = random.Random(seed)

    def word() -> str:
        return "".join(rng.choice("abcdefghiklmnoprstuvwy") for _ in range(rng.randint(3, 8)))
    return " ".join(" ".join(word() for _ in range(10)).capitalize() + "." for _ in range(n_sentences))


# --------------------------------------------------------------------------- Gopher quality


def test_gopher_quality_keeps_ordinary_english_and_chinese_prose():
    stage = _stage("gopher_quality")
    assert _code(_run(stage, EN * 2)) is None
    assert _code(_run(stage, ZH * 2)) is None  # CJK: characters count as words, Chinese stop words


@pytest.mark.parametrize("text,code", [
    ("the and of " * 10, "gopher_too_few_words"),
    (("the " + "x" * 30 + " ") * 40, "gopher_word_length"),
    (("#tag the of " * 40), "gopher_symbols"),
    ("\n".join(["- the item of and that with"] * 60), "gopher_bullet_lines"),
    ("\n".join(["the thing of and that with more words here to make it long..."] * 60), "gopher_ellipsis_lines"),
    (("the of 1234 4567 7890 0000 1111 2222 3333 4444 " * 10), "gopher_non_alpha_words"),
    (("lorem ipsum dolor sit amet consectetur adipiscing " * 10), "gopher_stop_words"),
])
def test_gopher_quality_rules_each_reject_their_case(text, code):
    assert _code(_run(_stage("gopher_quality"), text)) == code


def test_gopher_quality_chinese_variant_counts_characters_and_chinese_stop_words():
    stage = _stage("gopher_quality")
    assert _code(_run(stage, "数据准备")) == "gopher_too_few_words"  # 4 characters < 50
    no_stop = "数据准备清洗流程去除网页低质量文本隐私信息进行脱敏处理步骤详细记录以便审计人员随时检查" * 2
    assert _code(_run(stage, no_stop)) == "gopher_stop_words"


# --------------------------------------------------------------------------- Gopher repetition


def test_gopher_repetition_rejects_repeated_lines_paragraphs_and_ngrams():
    stage = _stage("gopher_repetition")
    assert _code(_run(stage, _unique_en(30))) is None
    assert _code(_run(stage, "\n\n".join(["A paragraph that repeats itself here."] * 5 + [_unique_en(3)]))) == "gopher_dup_paragraphs"
    assert _code(_run(stage, "\n".join(["same line again and again"] * 5 + [_unique_en(2, s) for s in range(5)]))) == "gopher_dup_lines"
    assert _code(_run(stage, _unique_en(10) + " " + "buy cheap pills now " * 30)) in {"gopher_top_ngram", "gopher_dup_ngrams"}


def test_gopher_repetition_on_chinese_uses_character_ngrams():
    stage = _stage("gopher_repetition")
    assert _code(_run(stage, ZH)) is None
    spam = ZH + "点击这里领取免费大奖" * 20
    assert _code(_run(stage, spam)) in {"gopher_top_ngram", "gopher_dup_ngrams"}


# --------------------------------------------------------------------------- C4 and FineWeb


def test_c4_lines_drops_bad_lines_and_keeps_the_rest():
    stage = _stage("c4_lines", "data.quality.c4_min_sentences=2")
    text = "\n".join([
        "Home | About | Contact",
        "Please enable JavaScript to view this page.",
        "This website uses cookies to improve your experience.",
        "The river rose quickly after three days of rain.",
        "Ok.",
        "数据准备是大模型预训练的基础。",
        "Farmers moved their animals to higher ground before night fell.",
    ])
    doc = _run(stage, text)
    assert not isinstance(doc, Reject)
    assert doc.text.split("\n") == ["The river rose quickly after three days of rain.", "数据准备是大模型预训练的基础。",
                                    "Farmers moved their animals to higher ground before night fell."]
    assert stage.finish()["lines_removed"] == {"no_terminal_punct": 1, "javascript": 1, "policy": 1, "too_few_words": 1}


def test_c4_document_rules():
    assert _code(_run(_stage("c4_lines"), "Lorem ipsum dolor sit amet. " * 5)) == "c4_lorem_ipsum"
    assert _code(_run(_stage("c4_lines", "data.quality.c4_drop_curly_brace=true"), "int f() { return 1; }. " * 5)) == "c4_curly_brace"
    assert _code(_run(_stage("c4_lines"), "One sentence only here.")) == "c4_too_few_sentences"
    assert _code(_run(_stage("c4_lines"), "menu\nhome\nlogin")) == "c4_no_lines_left"
    assert _code(_run(_stage("c4_lines"), ZH)) is None  # three sentences ended by 。 with no space after


def test_fineweb_rules():
    stage = _stage("fineweb_quality")
    assert _code(_run(stage, EN + "\n" + EN)) == "fineweb_dup_line_chars"
    assert _code(_run(stage, _unique_en(12))) is None
    assert _code(_run(stage, "\n".join(f"item {i} without punctuation here" for i in range(30)))) == "fineweb_line_punct"
    assert _code(_run(stage, "\n".join(f"Short {i}." for i in range(30)))) == "fineweb_short_lines"
    listy = "\n".join(f"Entry{i} fine." for i in range(40))
    assert _code(_run(_stage("fineweb_quality", "data.quality.max_short_line_ratio=1"), listy)) == "fineweb_list_like"


# --------------------------------------------------------------------------- language ID


def test_langid_annotates_chinese_and_english_and_filters_by_allowlist():
    stage = _stage("langid", "data.langid.languages=[zh]")
    zh = _run(stage, ZH)
    assert not isinstance(zh, Reject) and zh.meta["lang"] == "zh" and zh.meta["lang_score"] > 0.9
    en = _run(stage, EN)
    assert isinstance(en, Reject) and en.code == "language" and "en" in en.reason
    assert _run(_stage("langid"), EN).meta["lang"] == "en"  # no allowlist: annotate only


@pytest.mark.parametrize("text,lang", [
    ("数据准备是大模型预训练的基础", "zh"),  # no punctuation: one long "word" to fastText unless split
    ("北京今天天气晴朗", "zh"),
    ("今日はとても良い天気ですね、散歩に行きましょう", "ja"),
    ("오늘은 날씨가 아주 좋네요 산책하러 갑시다", "ko"),
    ("The river rose quickly after three days of rain", "en"),
])
def test_langid_on_short_unpunctuated_cjk_and_english(text, lang):
    from pretrainlab.data.langid import identify

    assert identify(text)[0] == lang


# --------------------------------------------------------------------------- PII


def _kinds(text: str) -> list[str]:
    return [k for _, _, k in find_pii(text)]


def test_checksums():
    assert cn_id_valid("11010519491231002X")  # the GB 11643 example
    assert not cn_id_valid("110105194912310021")  # wrong check digit
    assert not cn_id_valid("123456789012345678")  # random 18 digits: bad date and checksum
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")


@pytest.mark.parametrize("text,kinds", [
    ("write to alice.w@example.co.uk today", ["email"]),
    ("call 13812345678 or +86 139-1234-5678", ["cn_mobile", "cn_mobile"]),
    ("office +1 415-555-2671", ["phone"]),
    ("server 192.168.10.254 and 2001:db8::8a2e:370:7334", ["ip", "ip"]),
    ("ID 11010519491231002X on file", ["cn_id"]),
    ("card 4111 1111 1111 1111 exp", ["bank_card"]),
    ("clone https://bob:s3cret@git.example.com/repo", ["url_credentials"]),
])
def test_pii_true_positives(text, kinds):
    assert _kinds(text) == kinds


@pytest.mark.parametrize("text", [
    "order number 123456789012345678 shipped",  # 18 digits, bad ID checksum
    "tracking 4111111111111112",  # fails Luhn
    "version 1.2.3.4.5 and 999.1.1.1",  # not IPv4
    "slice a[1::2] and ratio 3:4:5",  # not IPv6
    "see https://example.com/path and user@ at the desk",  # no credentials, no e-mail
    "in 2024 we had 12,000 users",
])
def test_pii_false_positives_are_left_alone(text):
    assert find_pii(text) == []


def test_pii_policies_redact_drop_keep_per_source(tmp_path):
    from pretrainlab.data.sources import SourceSpec

    stage = _stage("pii")
    stage.bind({n: SourceSpec(n, tmp_path, pii_policy=n) for n in ("redact", "drop", "keep")})
    text = "mail bob@example.com or call 13812345678."
    red = _run(stage, text, "redact")
    assert red.text == "mail <EMAIL> or call <CN_MOBILE>." and red.meta["pii"] == {"cn_mobile": 1, "email": 1}
    assert _code(_run(stage, text, "drop")) == "pii"
    assert _run(stage, text, "keep").text == text
    extra = stage.finish()
    assert extra["detections"] == {"cn_mobile": 3, "email": 3} and extra["batches"][0]["docs"] == 3
    assert redact("a x b", [(2, 3, "ip")]) == "a <IP> b"


# --------------------------------------------------------------------------- MinHash


def _near_pair(rng: random.Random, n_words: int, n_changes: int) -> tuple[str, str]:
    words = [f"w{rng.randrange(100000)}" for _ in range(n_words)]
    other = list(words)
    for i in rng.sample(range(n_words), n_changes):
        other[i] = f"x{rng.randrange(100000)}"
    return " ".join(words), " ".join(other)


def _jaccard(a: str, b: str, n: int = 5) -> float:
    def sh(t):
        w = t.split()
        return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}
    A, B = sh(a), sh(b)
    return len(A & B) / len(A | B)


def test_minhash_estimates_jaccard_within_sampling_error():
    rng = random.Random(0)
    hasher = MinHasher(num_perm=256)
    errors = []
    for changes in (2, 8, 20, 60):
        a, b = _near_pair(rng, 600, changes)
        est = float(np.mean(hasher.signature(a) == hasher.signature(b)))
        errors.append(abs(est - _jaccard(a, b)))
    assert max(errors) < 4 * (0.25 / 256) ** 0.5  # 4 standard deviations of the estimator


def test_default_lsh_banding_finds_0_8_similar_pairs():
    cfg = load_config(None, []).data.near_dedup
    assert candidate_probability(0.8, cfg.bands, cfg.rows) > 0.99
    assert candidate_probability(0.3, cfg.bands, cfg.rows) < 0.05


def test_lsh_index_returns_the_near_duplicate_and_not_a_different_text():
    rng = random.Random(1)
    hasher, index = MinHasher(120), LSHIndex(20, 6)
    a, b = _near_pair(rng, 500, 3)
    c, _ = _near_pair(rng, 500, 0)
    index.insert(hasher.signature(a), "a")
    hit = index.query(hasher.signature(b), 0.8)
    assert hit is not None and index.keys[hit[0]] == "a"
    assert index.query(hasher.signature(c), 0.8) is None


def test_chinese_documents_are_shingled_by_characters():
    hasher = MinHasher(120)
    a = ZH * 3
    b = a.replace("瓶颈", "难点", 1)
    assert float(np.mean(hasher.signature(a) == hasher.signature(b))) > 0.8


def test_numpy_tokenizer_finds_the_same_tokens_as_the_regex():
    from pretrainlab.data.textstats import token_arrays, words

    text = "Hello  wörld,\u3000数据准备 foo\tbar\u00a0baz\n\nhello wörld, 数 x"
    _, starts, ends, ratio = token_arrays(text)
    assert [text[s:e] for s, e in zip(starts, ends)] == words(text)
    hashes = token_arrays(text)[0]
    toks = words(text)
    for i, j in [(1, toks.index("wörld,", 2)), (2, len(toks) - 2)]:  # equal tokens hash equal wherever they are
        assert toks[i] == toks[j] and hashes[i] == hashes[j]
    assert 0 < ratio < 0.5


def test_normalize_repairs_mojibake_only_when_asked():
    text = "The cafÃ© served naÃ¯ve â€œcoffeeâ€\x9d to everyone who came in."
    assert _run(_stage("normalize"), text).text == text.replace("\x9d", "")  # control char stripped, rest untouched
    fixed = _run(_stage("normalize", "data.fix_mojibake=true"), text).text
    assert fixed == "The café served naïve “coffee” to everyone who came in."


@pytest.mark.parametrize("cjk_ngram", [5, 3])
def test_batched_minhash_gives_each_document_exactly_its_own_shingles_signature_and_unique_set(cjk_ngram):
    from pretrainlab.data.minhash import BatchMinHasher, unique_batch

    rng = random.Random(2)
    texts = [_near_pair(rng, rng.randint(1, 400), 3)[0] for _ in range(60)] + [ZH * rng.randint(1, 4) for _ in range(10)]
    texts += ["", "   ", "a b", "中文", "ΣΑΣ σ Σ İstanbul", "a\u3000b c d e f g", "短", " ".join(["w"] * 6000)]
    rng.shuffle(texts)
    one, many = MinHasher(120, 1, 5, cjk_ngram), BatchMinHasher(120, 1, 5, cjk_ngram)
    sh, off = many.shingles_batch(texts)
    sig = many.signatures_batch(sh, off)
    uniq, uoff = unique_batch(sh, off)
    for i, text in enumerate(texts):
        own = one.shingles(text)
        assert np.array_equal(sh[off[i]:off[i + 1]], own)
        assert np.array_equal(sig[i], one.signature_of(own))
        assert np.array_equal(uniq[uoff[i]:uoff[i + 1]], np.unique(own).astype(np.uint32))
