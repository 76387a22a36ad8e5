"""Vocabulary spec v1: id layout, ranges sized from config, no collisions, self-validation, loading."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pretrainlab.cli import main
from pretrainlab.errors import DataError
from pretrainlab.tokenizer.spec import (
    CAMERAS,
    CODE_RANGES,
    CONTROL_TOKENS,
    RANGE_ORDER,
    SPEC_FILE,
    STRUCTURE_TOKENS,
    VocabSpec,
)
from pretrainlab.tokenizer.train import train_tokenizer
from pretrainlab.tokenizer.vocab import load_tokenizer
from test_tokenizer import make_cfg, write_corpus

SIZES = dict(timestamps=40, timestamp_step_s=0.25, image_codes=8192, audio_codes=2048, action_bins=256)


def build(**kw) -> VocabSpec:
    args = dict(text_kind="bpe", text_file="tokenizer.json", text_sha256="0" * 64, text_size=4096, pad_vocab_multiple=128)
    return VocabSpec.build(**{**args, **SIZES, **kw})


def test_ranges_are_contiguous_in_order_and_sized_from_config():
    spec = build()
    expected = {"text": 4096, "structure": len(STRUCTURE_TOKENS), "timestamp": 40, "image": 8192, "audio": 2048, "action": 256}
    start = 0
    for name in RANGE_ORDER:
        r = spec.id_range(name)
        assert r.start == start
        if name in expected:
            assert len(r) == expected[name]
        start = r.stop
    assert spec.total_size == start and spec.total_size % 128 == 0 and len(spec.id_range("reserved")) < 128


def test_every_id_belongs_to_exactly_one_range_and_named_ids_never_collide():
    spec = build()
    owner = np.full(spec.total_size, -1)
    for k, name in enumerate(RANGE_ORDER):
        r = spec.id_range(name)
        assert np.all(owner[r.start : r.stop] == -1)
        owner[r.start : r.stop] = k
    assert np.all(owner >= 0)
    assert len(set(spec.tokens.values())) == len(spec.tokens)
    code_ids = set().union(*(spec.id_range(m) for m in CODE_RANGES))
    assert not code_ids & set(spec.tokens.values())


def test_control_structure_and_camera_tokens():
    spec = build()
    assert [spec.token_id(t) for t in CONTROL_TOKENS] == [0, 1, 2, 3, 4, 5]
    assert (spec.token_id("<|pad|>"), spec.token_id("<|bos|>"), spec.token_id("<|eos|>")) == (0, 1, 2)
    cams = [spec.camera_id(c) for c in CAMERAS]
    assert len(CAMERAS) == 6 and len(set(cams)) == 6 and all(i in spec.id_range("structure") for i in cams)
    assert spec.name_of(spec.camera_id("back_left")) == "<|cam_back_left|>"
    for t in ("<|image_start|>", "<|video_end|>", "<|audio_start|>", "<|action_start|>", "<|action_end|>"):
        assert spec.token_id(t) in spec.id_range("structure")
    with pytest.raises(KeyError, match="cameras are"):
        spec.camera_id("left")


def test_timestamp_tokens():
    spec = build()
    r = spec.id_range("timestamp")
    assert spec.timestamp_id(0) == r.start and spec.name_of(r.start) == "<|timestamp_0.0s|>"
    assert spec.timestamp_id(1.0) == r.start + 4 and spec.name_of(r.start + 4) == "<|timestamp_1.0s|>"
    assert spec.timestamp_id(0.3) == r.start + 1  # rounded down to the 0.25 s step
    assert spec.name_of(r.start + 1) == "<|timestamp_0.25s|>"
    with pytest.raises(ValueError, match="raise tokenizer.timestamps"):
        spec.timestamp_id(10.0)


def test_code_ranges_map_codes_both_ways():
    spec = build()
    img = spec.id_range("image")
    assert spec.code_to_id("image", 0) == img.start and spec.code_to_id("image", 8191) == img.stop - 1
    codes = np.array([[0, 5], [17, 2047]])
    ids = spec.code_to_id("audio", codes)
    assert ids.shape == codes.shape and ids.dtype == np.int64 and ids[0, 0] == spec.id_range("audio").start
    assert spec.id_to_code(int(ids[1, 1])) == ("audio", 2047)
    assert spec.range_of(spec.code_to_id("action", 3)) == "action" and spec.name_of(img.start + 9) == "<|image_code_9|>"
    with pytest.raises(ValueError, match=r"image codes must lie in \[0, 8192\)"):
        spec.code_to_id("image", 8192)
    with pytest.raises(ValueError, match="not in a code range"):
        spec.id_to_code(5)


def test_text_only_config_has_empty_code_ranges():
    spec = build(image_codes=0, audio_codes=0, action_bins=0, pad_vocab_multiple=1)
    assert all(len(spec.id_range(m)) == 0 for m in CODE_RANGES) and len(spec.id_range("reserved")) == 0
    assert spec.total_size == 4096 + len(STRUCTURE_TOKENS) + 40


def test_json_round_trip(tmp_path):
    spec = build()
    spec.save(tmp_path)
    assert VocabSpec.load(tmp_path, check_text_file=False) == spec


def _write_bad(tmp_path, edit) -> None:
    d = build().to_dict()
    edit(d)
    (tmp_path / SPEC_FILE).write_text(json.dumps(d))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["ranges"]["audio"].update(start=d["ranges"]["audio"]["start"] - 5), "'image' .* and 'audio' .* overlap"),
        (lambda d: d["ranges"]["image"].update(size=d["ranges"]["image"]["size"] - 1), "gap between range 'image'"),
        (lambda d: d["tokens"].update({"<|eos|>": 7}), "control token <\\|eos\\|> must have id 2"),
        (lambda d: d["tokens"].update({"<|cam_front|>": d["tokens"]["<|cam_back|>"]}), "given to more than one token"),
        (lambda d: d.update(version=2), "version 2 is not supported"),
        (lambda d: d["ranges"].pop("audio"), "ranges must be"),
        (lambda d: d.update(total_size=1), "total_size 1 does not match"),
        (lambda d: d.pop("text"), "malformed vocabulary spec"),
    ],
)
def test_invalid_spec_files_are_one_line_data_errors(tmp_path, edit, message):
    _write_bad(tmp_path, edit)
    with pytest.raises(DataError, match=message) as err:
        VocabSpec.load(tmp_path, check_text_file=False)
    assert "\n" not in str(err.value) and SPEC_FILE in str(err.value)


def test_trained_tokenizer_reserves_code_ranges_from_config(tmp_path):
    write_corpus(tmp_path, n_docs=20)
    cfg = make_cfg(tmp_path, "bpe", "tokenizer.vocab_size=400", "tokenizer.image_codes=1000",
                   "tokenizer.audio_codes=300", "tokenizer.action_bins=50", "tokenizer.timestamps=10")
    train_tokenizer(cfg)
    tok = load_tokenizer(cfg.tokenizer_dir)
    spec = tok.spec
    assert len(spec.id_range("image")) == 1000 and len(spec.id_range("audio")) == 300 and len(spec.id_range("action")) == 50
    assert tok.vocab_size == spec.total_size >= 400 + 14 + 10 + 1350
    assert tok.id_to_token(spec.code_to_id("image", 3)) == "<|image_code_3|>"


def test_overlapping_spec_fails_the_cli_with_one_line(tmp_path, capsys):
    write_corpus(tmp_path, n_docs=20)
    cfg = make_cfg(tmp_path, "bpe", "tokenizer.vocab_size=400")
    train_tokenizer(cfg)
    path = cfg.tokenizer_dir / SPEC_FILE
    d = json.loads(path.read_text())
    d["ranges"]["timestamp"]["start"] -= 3
    path.write_text(json.dumps(d))
    capsys.readouterr()
    code = main(["data", "tokenize", "--workdir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "overlap" in err and len(err.splitlines()) == 1
