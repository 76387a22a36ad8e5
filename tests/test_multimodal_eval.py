"""Cross-modal evaluation, per-modality CE weights/logging, learned τ, governance counts and the real-data corpus."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import make_clean_corpus, tiny_overrides
from pretrainlab.cli import main
from pretrainlab.config import load_config
from pretrainlab.data.report import write_data_report
from pretrainlab.errors import UserError
from pretrainlab.fsio import iter_jsonl
from pretrainlab.multimodal.build import build_shards, mm_paths
from pretrainlab.multimodal.evaluate import caption_image_pairs, recall, retrieval_pools
from pretrainlab.multimodal.format import Sample, read_samples
from pretrainlab.multimodal.modality import MODALITIES, class_table, per_class_sums, token_classes, weighted_ce_term
from pretrainlab.multimodal.realdata import espeak_available, load_digits_data, write_real_data
from pretrainlab.tokenizer.shards import ShardReader
from pretrainlab.tokenizer.vocab import load_tokenizer
from pretrainlab.train import checkpoint as ckpt
from pretrainlab.recipes import train
from test_multimodal import mm_cfg, mm_work  # noqa: F401  (module fixture: tokenizer, demo data, shards)
from test_multimodal_train import ROWS, _InterruptAt


def _cfg(mm_work, run_dir, *extra):
    return mm_cfg(mm_work, f"train.tokens={mm_work / 'mm_tokens'}", f"run.dir={run_dir}", "train.log_every=1",
                  "train.val_every=100", "checkpoint.every=100", *ROWS, *extra)


def _train_records(run_dir):
    return [r for r in iter_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]


# --------------------------------------------------------------------------- pieces


def test_token_classes_cover_the_vocabulary_by_modality(mm_work):
    spec = load_tokenizer(mm_paths(mm_cfg(mm_work))["tokenizer"]).spec
    table = class_table(spec)
    assert table.size == spec.total_size
    assert table[spec.id_range("image").start] == MODALITIES.index("image")
    assert table[spec.id_range("action").stop - 1] == MODALITIES.index("action")
    assert table[2] == table[spec.token_id("<|image_start|>")] == MODALITIES.index("structure")  # eos, markers
    assert table[spec.text_size - 1] == MODALITIES.index("text")
    ids = torch.tensor([[spec.text_size - 1, spec.id_range("audio").start, -100]])
    assert token_classes(ids, torch.as_tensor(table)).tolist() == [[0, 2, -1]]
    sums, counts = per_class_sums(torch.tensor([1.0, 2.0, 5.0]), torch.tensor([0, 0, -1]))
    assert sums[0] == 3.0 and counts.tolist() == [2, 0, 0, 0, 0]


def test_caption_image_pairs_and_pools_keep_captions_distinct(mm_work):
    cfg = mm_cfg(mm_work)
    spec = load_tokenizer(mm_paths(cfg)["tokenizer"]).spec
    reader = ShardReader(mm_work / "mm_tokens", "multimodal", "train")
    pairs = [p for i in range(reader.num_docs) for p in caption_image_pairs(reader.doc(i), spec)]
    assert len(pairs) == reader.num_docs  # demo: one caption + overview image in the first group of each sample
    ts, start, end = spec.id_range("timestamp"), spec.token_id("<|image_start|>"), spec.token_id("<|image_end|>")
    for t, cap, img in pairs:
        assert t in ts and cap and all(c < spec.text_size for c in cap)
        assert img[0] == start and img[-1] == end and all(c in spec.id_range("image") for c in img[1:-1])
    fake = [(0, (i % 3,), (i,)) for i in range(10)]  # 3 distinct captions
    pools = retrieval_pools(fake, 3)
    assert all(len({p[1] for p in pool}) == len(pool) >= 2 for pool in pools)
    assert sorted(len(p) for p in pools) == [3, 3, 3]  # the 4th occurrence of caption 0 has no partner left
    assert all(len(p) == 2 for p in retrieval_pools(fake, 2))


def test_recall_counts_ties_against_the_model():
    scores = np.array([[3.0, 1.0, 0.0], [2.0, 2.0, 0.0], [0.0, 5.0, 1.0]])
    assert recall(scores, 1).tolist() == [True, False, False]  # row 1 ties with a wrong candidate
    assert recall(scores, 2).tolist() == [True, True, True]


# --------------------------------------------------------------------------- training


def test_per_modality_ce_is_logged_and_weights_reweight_the_token_ce(mm_work, tmp_path):
    plain = train(_cfg(mm_work, tmp_path / "plain", "train.steps=3"))
    ones = train(_cfg(mm_work, tmp_path / "ones", "train.steps=3", "multimodal.ce_weights={image: 1.0, text: 1.0}"))
    assert ones["losses"] == plain["losses"]  # weight 1 is the plain CE
    recs = _train_records(tmp_path / "plain")
    assert all(f"ce/{m}" in r for r in recs for m in ("text", "image", "audio", "action", "structure"))
    assert all("ce_loss" not in r for r in recs)  # no weights, no loss terms: only the per-modality logging

    train(_cfg(mm_work, tmp_path / "w", "train.steps=3", "multimodal.ce_weights={image: 0.0, audio: 0.0}"))
    for r in _train_records(tmp_path / "w"):
        assert r["loss/ce_weighting"] < 0 and r["loss"] == pytest.approx(r["ce_loss"] + r["loss/ce_weighting"], rel=1e-5)


def test_weighted_ce_term_makes_the_mean_ce_a_weighted_sum():
    ce = torch.tensor([1.0, 2.0, 3.0, 4.0, 9.0])
    classes = torch.tensor([0, 1, 1, 4, -1])  # text, image, image, structure, ignored
    weights = torch.tensor([1.0, 0.5, 1.0, 1.0, 2.0])
    plain = (1 + 2 + 3 + 4) / 4
    weighted = (1 * 1 + 0.5 * 2 + 0.5 * 3 + 2 * 4) / 4
    assert plain + float(weighted_ce_term(ce, classes, weights)) == pytest.approx(weighted)


def test_learned_temperature_moves_is_logged_and_resumes_exactly(mm_work, tmp_path):
    losses = ["multimodal.lambda_infonce=1.0", "multimodal.learn_temperature=true", "multimodal.action_head_lr=0.05",
              "train.steps=6"]
    full = train(_cfg(mm_work, tmp_path / "full", *losses))
    taus = [r["infonce/temperature"] for r in _train_records(tmp_path / "full")]
    assert taus[0] != pytest.approx(0.07, abs=1e-6) and len(set(taus)) > 1
    split = _cfg(mm_work, tmp_path / "split", *losses)
    with pytest.raises(KeyboardInterrupt):
        train(split, callbacks=[_InterruptAt(3)])
    model_state = torch.load(ckpt.latest_checkpoint(split.run_dir) / "model.pt", weights_only=True)
    assert "mm.tau.log_tau" in model_state  # τ is a model parameter, saved with the weights
    resumed = train(split, resume="auto")
    assert resumed["losses"] == full["losses"][3:]
    assert [r["infonce/temperature"] for r in _train_records(split.run_dir)] == taus


def test_action_loss_refuses_concat_packing(mm_work, tmp_path):
    cfg = _cfg(mm_work, tmp_path / "run", "train.steps=1", "multimodal.lambda_action=1.0", "packing.mode=concat")
    with pytest.raises(UserError, match="packing.mode=best_fit"):
        train(cfg)


def test_a_multimodal_run_ends_with_mm_eval_and_the_cli_reevaluates_it(mm_work, tmp_path, capsys):
    run = tmp_path / "run"
    train(_cfg(mm_work, run, "train.steps=2", "multimodal.lambda_action=1.0"))
    ev = json.loads((run / "mm_eval.json").read_text())
    assert ev["step"] == 2 and ev["docs"] > 0
    assert set(ev["perplexity"]) >= {"text", "image", "structure", "all"} and all(v > 1 for v in ev["perplexity"].values())
    assert ev["retrieval"]["pairs"] >= 2 and 0 <= ev["retrieval"]["caption_to_image"]["r1"] <= 1
    a = ev["action"]
    assert a["values"] > 0 and a["mse_head"] is not None and a["mse_baseline"] > 0 and len(a["baseline"]) == 2
    (run / "mm_eval.json").unlink()
    assert main(["mm", "eval", str(run)]) == 0
    again = json.loads((run / "mm_eval.json").read_text())
    assert again["perplexity"] == pytest.approx(ev["perplexity"]) and again["action"]["mse_head"] == pytest.approx(a["mse_head"])
    from pretrainlab.reporting import write_report

    html = write_report(run).read_text()
    assert "Cross-modal evaluation" in html and "chance R@1" in html and "constant baseline" in html
    capsys.readouterr()
    assert main(["mm", "eval", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a run directory" in err


# --------------------------------------------------------------------------- governance and real data


def test_build_manifest_and_data_report_count_segments_tokens_and_quarantine_per_modality(mm_work, tmp_path):
    manifest = json.loads((mm_work / "mm_tokens" / "manifest.json").read_text())
    mm = manifest["multimodal"]
    assert sum(mm["tokens_by_modality"].values()) == manifest["totals"]["all"]["tokens"]
    samples = [s for s in read_samples(mm_work / "mm_data") if isinstance(s, Sample)]
    for modality in ("text", "image", "video", "audio", "action"):
        assert mm["segments_by_modality"][modality] == sum(seg.modality == modality for s in samples for seg in s.segments)
    assert mm["quarantined_by_reason"] == {}
    clean = tmp_path / "clean"  # an empty text corpus: the text sections are tested in test_data_sources.py
    clean.mkdir()
    (clean / "manifest.json").write_text(json.dumps({"manifest_id": "t", "stages": []}))
    (clean / "stats.json").write_text(json.dumps({"sources": {}, "stages": {}, "totals": {}}))
    json_path, html_path = write_data_report(clean, tmp_path / "rep", mm_tokens=mm_work / "mm_tokens")
    data = json.loads(json_path.read_text())
    assert data["multimodal"]["tokens_by_modality"] == mm["tokens_by_modality"]
    assert "Multimodal data (per modality)" in html_path.read_text()
    assert main(["data", "report", str(clean), "--out", str(tmp_path / "cli"), "--mm-tokens", str(mm_work)]) == 2


def test_real_data_digits_with_captions_and_optional_speech(tmp_path):
    images, labels = load_digits_data()
    from sklearn.datasets import load_digits

    gray = load_digits().images  # 0..16
    assert images.dtype == np.uint8 and images.shape == (1797, 8, 8) and np.array_equal(images, np.minimum(gray * 16, 255))
    speech = 3 if espeak_available() else 0
    info = write_real_data(tmp_path / "real", digits=12, speech=speech, scenes=2)
    samples = {s.id: s for s in read_samples(tmp_path / "real") if isinstance(s, Sample)}
    assert len(samples) == 14 and info["speech"] == speech
    names = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    for i in range(12):
        segs = {seg.modality: seg for seg in samples[f"digit{i:05d}"].segments}
        assert segs["text"].text == f"a handwritten digit {names[labels[i]]}"
        assert np.array_equal(segs["image"].load(), images[i])
        assert ("audio" in segs) == (i < speech)
        if "audio" in segs:
            wave = segs["audio"].load()
            assert wave.dtype == np.float32 and 1600 < wave.size < 32000 and np.abs(wave).max() > 0.05


# --------------------------------------------------------------------------- the Done-when run


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """Real digits (captioned) + synthetic scenes (actions) -> shards -> a seeded 150-step CPU run with mm eval."""
    from pretrainlab.tokenizer.train import train_tokenizer

    work = tmp_path_factory.mktemp("mm_real")
    cfg = load_config(None, tiny_overrides(work) + [
        "tokenizer.image_codes=64", "tokenizer.audio_codes=16", "tokenizer.action_bins=16",
        f"multimodal.data={work / 'mm_data'}", "multimodal.patch_size=4", "multimodal.heldout_fraction=0.2",
        "multimodal.max_doc_tokens=129", "multimodal.lambda_action=2.0", "multimodal.action_head_lr=0.02",
        "multimodal.eval_max_docs=200", "packing.mode=best_fit", f"train.tokens={work / 'mm_tokens'}",
        f"run.dir={work / 'run'}", "model.d_model=64", "model.max_seq_len=128", "train.seq_len=128",
        "train.micro_batch=8", "train.global_batch_tokens=1024", "train.steps=150", "train.log_every=50",
        "train.val_every=1000", "checkpoint.every=1000", "optim.lr=5e-3", "optim.warmup_steps=10", "train.threads=2"])
    make_clean_corpus(work / "clean", {"prose": 40})
    train_tokenizer(cfg)
    write_real_data(work / "mm_data", digits=800, scenes=150, scene_groups=1)
    build_shards(cfg)
    train(cfg, resume="never")
    return json.loads((work / "run" / "mm_eval.json").read_text())


@pytest.mark.slow
def test_done_when_retrieval_beats_chance_and_the_action_head_beats_the_constant_baseline(digits_run):
    ret, act = digits_run["retrieval"], digits_run["action"]
    assert ret["pairs"] >= 100
    for direction in ("caption_to_image", "image_to_caption"):
        assert ret[direction]["r1"] > 2 * ret["chance"]["r1"], (direction, ret)  # measured 0.46-0.60 vs 0.134 (seeds 0-2)
    assert act["values"] >= 20 and act["mse_head"] < 0.6 * act["mse_baseline"], act  # measured 0.046-0.055 vs 0.205
