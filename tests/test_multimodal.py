"""Multimodal data path: sample format, discretizers, sync check, token shards, and training on them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import make_clean_corpus, tiny_overrides
from pretrainlab.cli import main
from pretrainlab.config import load_config
from pretrainlab.errors import DataError
from pretrainlab.fsio import iter_jsonl
from pretrainlab.multimodal.build import build_shards, fit_discretizers, groups_of, mm_paths
from pretrainlab.multimodal.demo import write_demo_data
from pretrainlab.multimodal.discretize import (
    ActionBinner, Discretizers, ImageVQ, as_image, kmeans, log_mel, to_patches,
)
from pretrainlab.multimodal.format import BadSample, Sample, read_samples
from pretrainlab.multimodal.sync import check_sync
from pretrainlab.tokenizer.shards import ShardReader, read_tokens_manifest
from pretrainlab.tokenizer.spec import CAMERAS
from pretrainlab.tokenizer.vocab import load_tokenizer

CODES = ["tokenizer.image_codes=32", "tokenizer.audio_codes=16", "tokenizer.action_bins=8"]
N_SAMPLES, N_GROUPS = 16, 2


def mm_cfg(workdir: Path, *extra: str):
    return load_config(None, tiny_overrides(workdir) + CODES + [
        f"multimodal.data={workdir / 'mm_data'}", f"multimodal.demo_samples={N_SAMPLES}",
        f"multimodal.demo_groups={N_GROUPS}", "multimodal.heldout_fraction=0.25", *extra])


@pytest.fixture(scope="module")
def mm_work(tmp_path_factory) -> Path:
    """Tokenizer with image/audio/action code ranges, demo data, discretizers and shards."""
    from pretrainlab.tokenizer.train import train_tokenizer

    work = tmp_path_factory.mktemp("mm")
    make_clean_corpus(work / "clean", {"prose": 40})
    cfg = mm_cfg(work)
    train_tokenizer(cfg)
    write_demo_data(work / "mm_data", N_SAMPLES, N_GROUPS, 8, seed=0)
    build_shards(cfg)
    return work


def _write_samples(root: Path, records: list) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "img.npy", np.zeros((8, 8), np.uint8))
    (root / "samples.jsonl").write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return root


def _seg(**kw):
    return {"group": 0, "t_ns": 0, "modality": "image", "payload": "img.npy", **kw}


# --------------------------------------------------------------------------- format + sync


def test_demo_data_is_valid_in_sync_and_has_six_cameras_per_group(mm_work):
    samples = list(read_samples(mm_work / "mm_data"))
    assert len(samples) == N_SAMPLES and all(isinstance(s, Sample) for s in samples)
    for s in samples:
        assert check_sync(s) is None
        assert list(s.groups) == list(range(N_GROUPS))
        for segs in s.groups.values():
            assert sorted(x.camera for x in segs if x.modality == "video") == sorted(CAMERAS)
            assert {x.modality for x in segs} >= {"video", "audio", "action"}
            assert all(isinstance(x.t_ns, int) for x in segs)


def test_reader_quarantines_each_kind_of_bad_sample_with_a_reason(tmp_path):
    root = _write_samples(tmp_path / "ds", [
        {"id": "ok", "segments": [_seg()]},
        "{not json",
        {"segments": [_seg()]},
        {"id": "nosegs", "segments": []},
        {"id": "badmod", "segments": [_seg(modality="smell")]},
        {"id": "floatts", "segments": [_seg(t_ns=1.5)]},
        {"id": "missing", "segments": [_seg(payload="nope.npy")]},
        {"id": "escape", "segments": [_seg(payload="../ds/../../etc/passwd")]},
        {"id": "nocam", "segments": [_seg(modality="video", camera="roof")]},
        {"id": "badact", "segments": [_seg(modality="action", value=["x"])]},
        {"id": "ok", "segments": [_seg()]},
    ])
    got = list(read_samples(root))
    assert isinstance(got[0], Sample)
    bad = {b.id: b for b in got[1:]}
    assert all(isinstance(b, BadSample) for b in got[1:]) and len(got) == 11
    assert bad["line-2"].code == "bad_json"
    assert "'id'" in bad["line-3"].reason
    assert "segments" in bad["nosegs"].reason
    assert "smell" in bad["badmod"].reason
    assert "t_ns must be an integer" in bad["floatts"].reason
    assert "not found" in bad["missing"].reason
    assert "outside the dataset folder" in bad["escape"].reason
    assert "roof" in bad["nocam"].reason
    assert "action 'value'" in bad["badact"].reason
    assert got[-1].code == "duplicate_id"
    rec = bad["missing"].record("read")
    assert set(rec) >= {"id", "line", "stage", "code", "reason"} and "\n" not in rec["reason"]


def test_sync_check_catches_a_2ms_drift_and_accepts_half_a_ms(tmp_path):
    root = _write_samples(tmp_path / "ds", [
        {"id": "drift", "segments": [_seg(t_ns=0), _seg(modality="action", value=[1.0], t_ns=2_000_000)]},
        {"id": "fine", "segments": [_seg(t_ns=0), _seg(modality="action", value=[1.0], t_ns=500_000)]},
        {"id": "backwards", "segments": [_seg(t_ns=10**9), _seg(group=1, t_ns=0)]},
    ])
    drift, fine, backwards = read_samples(root)
    bad = check_sync(drift)
    assert bad.code == "out_of_sync" and bad.extra["drift_ns"] == 2_000_000 and "2.000 ms" in bad.reason
    assert check_sync(fine) is None
    assert check_sync(drift, tolerance_ns=3_000_000) is None
    assert check_sync(backwards).code == "time_order"


# --------------------------------------------------------------------------- discretizers


def _demo_patches(mm_work) -> np.ndarray:
    frames = sorted((mm_work / "mm_data" / "frames").glob("*.npy"))
    return np.concatenate([to_patches(as_image(np.load(f), 4), 4) for f in frames])


def test_image_reconstruction_error_falls_with_codebook_size(mm_work):
    frames = [np.load(f) for f in sorted((mm_work / "mm_data" / "frames").glob("*.npy"))]
    x = np.concatenate([to_patches(as_image(f, 4), 4) for f in frames])
    errors = []
    for k in (2, 8, 32):
        vq = ImageVQ(kmeans(x, k, iters=15, seed=0), patch=4, channels=1)
        codes = [vq.encode(f) for f in frames]
        assert all(c.shape == (4,) and 0 <= c.min() and c.max() < k for c in codes)  # 2x2 patches of 4x4
        recon = np.stack([vq.decode(c, 8, 8) for c in codes])
        errors.append(float(((recon - np.stack([as_image(f, 4) for f in frames])) ** 2).mean()))
    assert errors[0] > errors[1] > errors[2]
    assert np.array_equal(kmeans(x, 8, 5, seed=3), kmeans(x, 8, 5, seed=3))  # seeded


def test_audio_codes_follow_log_mel_frames_and_error_falls_with_codebook_size():
    sr, t = 16000, np.arange(1600) / 16000
    low, high = (log_mel(np.sin(2 * np.pi * f * t), sr, 256, 128, 20) for f in (300.0, 4000.0))
    assert low.shape == (11, 20)
    assert low.mean(0).argmax() < high.mean(0).argmax()  # pitch moves up the mel bands
    rng = np.random.default_rng(0)
    frames = np.concatenate([log_mel(np.sin(2 * np.pi * f * t), sr, 256, 128, 20) for f in rng.uniform(100, 7000, 40)])
    errs = []
    for k in (2, 8, 32):
        book = kmeans(frames, k, iters=15, seed=0)
        d = ((frames[:, None] - book[None]) ** 2).sum(-1).min(1)
        errs.append(d.mean())
    assert errs[0] > errs[1] > errs[2]


def test_action_bins_are_uniform_and_decode_within_half_a_bin():
    b = ActionBinner(np.array([-1.0, 0.0]), np.array([1.0, 1.0]), 8)
    assert b.encode([-1.0, 0.0]).tolist() == [0, 0]
    assert b.encode([1.0, 1.0]).tolist() == [7, 7]  # the top edge belongs to the last bin
    assert b.encode([5.0, -3.0]).tolist() == [7, 0]  # clipped
    v = np.array([0.33, 0.71])
    assert np.all(np.abs(b.decode(b.encode(v)) - v) <= (b.high - b.low) / 16 + 1e-12)
    with pytest.raises(ValueError, match="2"):
        b.encode([0.1])


def test_discretizers_round_trip_with_version_and_hash_and_refuse_tampering(mm_work, tmp_path):
    d = Discretizers.load(mm_work / "mm_discretizers")
    assert d.meta["version"] == 1 and len(d.sha256) == 64
    assert d.image.codebook.shape == (32, 16) and d.audio.codebook.shape == (16, 20) and d.action.bins == 8
    copy = tmp_path / "disc"
    shutil.copytree(mm_work / "mm_discretizers", copy)
    assert Discretizers.load(copy).sha256 == d.sha256
    np.save(copy / "image_codebook.npy", np.zeros((32, 16), np.float32))
    with pytest.raises(DataError, match="mm fit"):
        Discretizers.load(copy)


# --------------------------------------------------------------------------- shards


def test_shards_keep_every_time_slice_group_whole_and_ids_in_their_ranges(mm_work):
    cfg = mm_cfg(mm_work)
    tok = load_tokenizer(cfg.tokenize_tokenizer_dir)
    spec = tok.spec
    manifest = read_tokens_manifest(mm_work / "mm_tokens")
    assert manifest["tokenizer_sha256"] == tok.sha256 and manifest["multimodal"]["quarantined"] == 0
    T = spec.token_id
    disc = Discretizers.load(mm_work / "mm_discretizers")
    docs = 0
    for split in ("train", "heldout"):
        r = ShardReader(mm_work / "mm_tokens", "multimodal", split, tokenizer_sha256=tok.sha256)
        docs += r.num_docs
        for i in range(r.num_docs):
            groups = groups_of(r.doc(i), spec)
            assert len(groups) == N_GROUPS
            assert [g[0] for g in groups] == [spec.timestamp_id(0.5 * k) for k in range(N_GROUPS)]
            for g in groups:
                vs, ve = g.index(T("<|video_start|>")), g.index(T("<|video_end|>"))
                cams = [x for x in g[vs:ve] if x in {spec.camera_id(c) for c in CAMERAS}]
                assert cams == [spec.camera_id(c) for c in CAMERAS]
                assert g.count(T("<|image_start|>")) == g.count(T("<|image_end|>")) >= 6
                a0, a1 = g.index(T("<|action_start|>")), g.index(T("<|action_end|>"))
                assert all(x in spec.id_range("action") for x in g[a0 + 1 : a1]) and a1 - a0 == 3
                au0, au1 = g.index(T("<|audio_start|>")), g.index(T("<|audio_end|>"))
                assert all(x in spec.id_range("audio") for x in g[au0 + 1 : au1]) and au1 - au0 - 1 == 11
                for s in (j for j, x in enumerate(g) if x == T("<|image_start|>")):
                    assert all(x in spec.id_range("image") for x in g[s + 1 : s + 5]) and g[s + 5] == T("<|image_end|>")
        pos = np.load(mm_work / "mm_tokens" / "multimodal" / f"{split}.action_pos.npy")
        vals = np.load(mm_work / "mm_tokens" / "multimodal" / f"{split}.action_values.npy")
        ids = r.tokens(0, r.num_tokens)[pos].astype(np.int64)
        assert pos.size == r.num_docs * N_GROUPS * 2 and all(i in spec.id_range("action") for i in ids)
        bins = ids - spec.id_range("action").start
        dims = np.arange(pos.size) % 2
        expect = [disc.action.encode(np.where(dims[k] == np.arange(2), vals[k], disc.action.low))[dims[k]]
                  for k in range(pos.size)]
        assert bins.tolist() == [int(e) for e in expect]
    assert docs == N_SAMPLES and all(int(x) < tok.vocab_size for x in r.tokens(0, r.num_tokens))


def test_build_quarantines_drifted_and_unreadable_samples(mm_work, tmp_path):
    data = tmp_path / "mm_data"
    shutil.copytree(mm_work / "mm_data", data)
    lines = (data / "samples.jsonl").read_text().splitlines()
    first, second = json.loads(lines[0]), json.loads(lines[1])
    first["segments"][-1]["t_ns"] = first["segments"][-2]["t_ns"] + 2_000_000  # the action of group 1 late by 2 ms
    np.save(data / second["segments"][3]["payload"], np.zeros((7, 7)))  # 7x7 frame: not 4x4 patches
    lines[0], lines[1] = json.dumps(first), json.dumps(second)
    (data / "samples.jsonl").write_text("\n".join(lines) + "\n")
    cfg = mm_cfg(mm_work, f"multimodal.data={data}", f"multimodal.out={tmp_path / 'tok'}")
    manifest = build_shards(cfg)
    q = {r["id"]: r for r in iter_jsonl(tmp_path / "tok" / "quarantine.jsonl")}
    assert q[first["id"]]["code"] == "out_of_sync" and q[first["id"]]["drift_ns"] >= 2_000_000 - 200_000
    assert q[second["id"]]["code"] == "bad_payload" and "7x7" in q[second["id"]]["reason"]
    assert manifest["multimodal"]["samples"] == N_SAMPLES - 2 and manifest["multimodal"]["quarantined"] == 2


def test_fit_refuses_a_tokenizer_without_code_ranges(mm_work, tmp_path):
    from pretrainlab.tokenizer.train import train_tokenizer

    cfg = load_config(None, tiny_overrides(mm_work) + [
        f"tokenizer.out={tmp_path / 'tok'}", f"multimodal.data={mm_work / 'mm_data'}",
        f"multimodal.discretizers={tmp_path / 'disc'}"])
    train_tokenizer(cfg)
    with pytest.raises(DataError, match="reserves no image ids.*image-codes"):
        fit_discretizers(cfg)


def test_mm_cli_demo_build_and_errors(tmp_path, capsys, mm_work):
    assert main(["mm", "build", "--workdir", str(tmp_path), "--data", str(tmp_path / "nothing")]) == 2
    assert "tokenizer train" in capsys.readouterr().err
    args = ["--workdir", str(mm_work), *(f"--set={o}" for o in CODES + ["tokenizer.vocab_size=320"])]
    assert main(["mm", "build", *args, "--data", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "mm demo-data" in err
    assert main(["mm", "demo-data", str(tmp_path / "d"), "--demo-samples", "3", "--demo-groups", "1"]) == 0
    assert len(list(read_samples(tmp_path / "d"))) == 3
    assert mm_paths(mm_cfg(mm_work))["out"] == mm_work / "mm_tokens"


def test_the_existing_trainer_trains_on_multimodal_shards(mm_work, tmp_path):
    from pretrainlab.recipes import train

    cfg = mm_cfg(mm_work, f"train.tokens={mm_work / 'mm_tokens'}", "train.steps=5", "train.val_every=5",
                 f"run.dir={tmp_path / 'run'}", "checkpoint.every=5")
    summary = train(cfg)
    assert summary["steps"] == 5 and np.isfinite(summary["final_val_loss"])
    assert summary["final_val_loss"] < summary["first_val_loss"]


def test_best_fit_rows_of_group_capped_documents_never_split_a_time_slice_group(mm_work, tmp_path):
    from pretrainlab.train.packing import BestFitPacker

    seq_len = 128  # a demo group is ~70-100 tokens, a 2-group sample ~160
    cfg = mm_cfg(mm_work, f"multimodal.out={tmp_path / 'tok'}", f"multimodal.max_doc_tokens={seq_len + 1}")
    build_shards(cfg)
    spec = load_tokenizer(cfg.tokenize_tokenizer_dir).spec
    T = spec.token_id
    reader = ShardReader(tmp_path / "tok", "multimodal", "train")
    assert reader.num_docs > ShardReader(mm_work / "mm_tokens", "multimodal", "train").num_docs  # samples were cut
    assert max(np.diff(reader.index)) <= seq_len + 1
    packer, state = BestFitPacker(seq_len + 1, 8, 2, 0), {"doc": 0, "epochs": 0, "buffer": []}
    seen_groups = 0
    for _ in range(20):
        row, pieces, pad = packer.pack(reader, state)
        for p in set(pieces[~pad].tolist()):
            doc = row[pieces == p].tolist()
            assert doc[0] in spec.id_range("timestamp") and doc[-1] == 2  # a whole document
            for g in groups_of(doc[:-1], spec):
                seen_groups += 1
                assert g.count(T("<|video_start|>")) == g.count(T("<|video_end|>")) == 1
                assert g.count(T("<|action_start|>")) == g.count(T("<|action_end|>")) == 1
                assert g.count(T("<|audio_start|>")) == g.count(T("<|audio_end|>")) == 1
    assert seen_groups > 20


def test_documents_are_cut_only_between_groups():
    from pretrainlab.multimodal.build import doc_spans

    assert doc_spans(30, [0, 10, 20], 0) == [(0, 30)]
    assert doc_spans(30, [0, 10, 20], 21) == [(0, 20), (20, 30)]
    assert doc_spans(30, [0, 10, 20], 11) == [(0, 10), (10, 20), (20, 30)]
    with pytest.raises(ValueError, match="max_doc_tokens"):
        doc_spans(100, [0, 10], 50)
