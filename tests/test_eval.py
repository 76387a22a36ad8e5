"""Perplexity, generation and whole-run evaluation (tiny CPU models)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrainlab.config import ModelConfig, ProjectConfig, dump_yaml
from pretrainlab.errors import UserError
from pretrainlab.eval.generate import filter_logits, generate
from pretrainlab.eval.perplexity import OVERALL, heldout_loss, perplexity_per_source
from pretrainlab.model.transformer import Transformer

VOCAB = 64


def tiny_model(vocab: int = VOCAB, max_seq_len: int = 64, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=max_seq_len)
    return Transformer(cfg).eval()


def write_part(tokens_dir: Path, source: str, split: str, docs: list[list[int]], eos: int = 2) -> None:
    """One shard part in the tokenizer/shards.py format (bin + idx.npy + done record)."""
    d = tokens_dir / source
    d.mkdir(parents=True, exist_ok=True)
    flat = [t for doc in docs for t in (*doc, eos)]
    np.asarray(flat, dtype=np.uint16).tofile(d / f"{split}.bin")
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(doc) + 1 for doc in docs])
    np.save(d / f"{split}.idx.npy", offsets)
    (d / f"{split}.json").write_text(json.dumps(
        {"format": "pretrainlab.tokens/1", "source": source, "split": split, "dtype": "uint16",
         "docs": len(docs), "tokens": len(flat)}))


def write_shards(tokens_dir: Path, heldout: dict[str, list[list[int]]], vocab: int = VOCAB) -> None:
    rng = np.random.default_rng(0)
    for source, docs in heldout.items():
        write_part(tokens_dir, source, "train", [list(rng.integers(3, vocab, 40)) for _ in range(3)])
        write_part(tokens_dir, source, "heldout", docs)
    (tokens_dir / "manifest.json").write_text(json.dumps(
        {"format": "pretrainlab.tokens/1", "dtype": "uint16", "vocab_size": vocab, "eos_id": 2,
         "sources": {s: {} for s in heldout}}))


class ArrayReader:
    """Duck-typed ShardReader over an in-memory array (num_tokens, tokens)."""

    def __init__(self, arr):
        self.arr = np.asarray(arr, dtype=np.uint16)
        self.calls: list[tuple[int, int]] = []

    @property
    def num_tokens(self) -> int:
        return int(self.arr.size)

    def tokens(self, start: int, end: int):
        self.calls.append((start, end))
        return self.arr[start:end]


# --------------------------------------------------------------------------- perplexity


def test_heldout_loss_untrained_is_about_ln_vocab_and_counts_tokens():
    model = tiny_model()
    reader = ArrayReader(np.random.default_rng(1).integers(0, VOCAB, 1000))
    out = heldout_loss(model, reader, seq_len=32, max_tokens=500, batch_size=4, device="cpu")
    assert out["tokens"] == 500  # 15 full windows of 32 + one of 20
    assert abs(out["loss"] - math.log(VOCAB)) < 0.15
    assert out["ppl"] == pytest.approx(math.exp(out["loss"]))
    # windows are consecutive, start at 0, and share only their boundary token
    starts = sorted(s for s, _ in reader.calls)
    assert starts[0] == 0 and starts[1] == 32
    assert reader.calls[-1] == (480, 501)


def test_heldout_loss_matches_manual_token_weighted_mean_and_restores_mode():
    model = tiny_model().train()
    arr = np.random.default_rng(2).integers(0, VOCAB, 100)
    out = heldout_loss(model, ArrayReader(arr), seq_len=16, max_tokens=10_000, batch_size=3, device="cpu")
    assert model.training  # previous mode restored
    assert out["tokens"] == 99
    model.eval()
    with torch.no_grad():
        total = 0.0
        for s in range(0, 99, 16):
            x = torch.tensor(arr[s : min(s + 17, 100)], dtype=torch.long)[None]
            logits, _ = model(x[:, :-1])
            total += torch.nn.functional.cross_entropy(logits[0], x[0, 1:], reduction="sum").item()
    assert out["loss"] == pytest.approx(total / 99, rel=1e-5)
    again = heldout_loss(model, ArrayReader(arr), seq_len=16, max_tokens=10_000, batch_size=5, device="cpu")
    assert again["loss"] == pytest.approx(out["loss"], rel=1e-6)  # batching does not change the result


def test_heldout_loss_short_and_empty_streams():
    model = tiny_model()
    short = heldout_loss(model, ArrayReader([5, 6, 7]), 32, 1000, 4, "cpu")
    assert short["tokens"] == 2 and math.isfinite(short["loss"])
    for arr in ([], [5]):
        empty = heldout_loss(model, ArrayReader(arr), 32, 1000, 4, "cpu")
        assert empty["tokens"] == 0 and empty["loss"] is None and "skipped" in empty


def test_seq_len_capped_at_model_context():
    model = tiny_model(max_seq_len=16)
    out = heldout_loss(model, ArrayReader(np.arange(100) % VOCAB), seq_len=256, max_tokens=50, batch_size=2, device="cpu")
    assert out["tokens"] == 50


def test_perplexity_per_source_covers_every_source(tmp_path):
    rng = np.random.default_rng(3)
    write_shards(tmp_path, {
        "a": [list(rng.integers(3, VOCAB, 50)) for _ in range(4)],
        "b": [list(rng.integers(3, VOCAB, 10))],
        "empty": [],
    })
    (tmp_path / "manifest.json").write_text(json.dumps({"dtype": "uint16", "sources": {"a": {}, "b": {}, "empty": {}, "gone": {}}}))
    model = tiny_model()
    res = perplexity_per_source(model, tmp_path, seq_len=32, max_tokens_per_source=120, batch_size=2, device="cpu")
    assert set(res) == {"a", "b", "empty", "gone", OVERALL}
    assert res["a"]["tokens"] == 120
    assert res["b"]["tokens"] == 10  # 11 tokens (10 + eos): 10 targets
    assert res["empty"]["tokens"] == 0 and res["empty"]["skipped"]
    assert res["gone"]["tokens"] == 0 and "cannot read" in res["gone"]["skipped"]
    total = res["a"]["tokens"] + res["b"]["tokens"]
    assert res[OVERALL]["tokens"] == total
    expected = (res["a"]["loss"] * 120 + res["b"]["loss"] * 10) / total
    assert res[OVERALL]["loss"] == pytest.approx(expected)
    only = perplexity_per_source(model, tmp_path, 32, 120, 2, "cpu", sources=["b"])
    assert set(only) == {"b", OVERALL}


# --------------------------------------------------------------------------- generation


def uncached_greedy(model, prompt: list[int], n: int) -> list[int]:
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([seq]))
            seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt):]


def test_cached_greedy_equals_uncached_recomputation():
    model = tiny_model()
    prompt = [5, 9, 17, 3, 40]
    assert generate(model, prompt, 20, greedy=True) == uncached_greedy(model, prompt, 20)


def test_generation_respects_max_seq_len():
    model = tiny_model(max_seq_len=16)
    out = generate(model, [1, 2, 3, 4, 5, 6], 100, greedy=True)
    assert len(out) == 16 - 6 + 1  # the last token is produced but never fed back
    assert out == uncached_greedy(model, [1, 2, 3, 4, 5, 6], 11)
    long_prompt = list(range(3, 40))
    assert len(generate(model, long_prompt, 5, greedy=True)) == 1


def test_generation_stops_at_eos():
    model = tiny_model()
    prompt = [5, 9, 17]
    free = generate(model, prompt, 10, greedy=True)
    eos = free[3]
    first = free.index(eos)
    stopped = generate(model, prompt, 10, greedy=True, eos_id=eos)
    assert stopped == free[:first]  # tokens before eos, eos itself not returned


def test_filter_logits_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])
    logits = probs.log()
    kept = lambda out: sorted(torch.nonzero(torch.isfinite(out)).flatten().tolist())  # noqa: E731
    assert kept(filter_logits(logits, 0, 0.5)) == [1, 3]  # 0.4 < 0.5, 0.4 + 0.3 >= 0.5
    assert kept(filter_logits(logits, 0, 0.7)) == [1, 3]  # exactly reaching p is enough
    assert kept(filter_logits(logits, 0, 0.71)) == [1, 3, 4]
    assert kept(filter_logits(logits, 0, 0.3)) == [1]  # the top token alone already reaches p
    assert kept(filter_logits(logits, 0, 1.0)) == [0, 1, 2, 3, 4]
    assert kept(filter_logits(logits, 2, 1.0)) == [1, 3]
    assert kept(filter_logits(logits, 3, 0.5)) == [1, 3]
    assert kept(filter_logits(logits, 1, 0.99)) == [1]
    # kept logits are unchanged; batched input works row by row
    out = filter_logits(torch.stack([logits, logits.flip(0)]), 0, 0.5)
    assert torch.equal(out[0][[1, 3]], logits[[1, 3]])
    assert kept(out[1]) == [1, 3]


def test_seeded_sampling_is_reproducible_and_respects_top_k():
    model = tiny_model()
    run = lambda seed, **kw: generate(  # noqa: E731
        model, [4, 8, 15], 24, temperature=1.0, generator=torch.Generator().manual_seed(seed), **kw)
    a, b = run(7, top_p=0.9), run(7, top_p=0.9)
    assert a == b and len(a) == 24
    assert run(7) != run(8)
    # top_k=1 sampling is greedy
    assert run(3, top_k=1) == generate(model, [4, 8, 15], 24, greedy=True)


# --------------------------------------------------------------------------- evaluate_run


def make_tokenizer(dir_: Path) -> None:
    """A real (tiny) trained tokenizer in ``dir_``, made by `tokenizer train` on a small clean corpus."""
    from conftest import make_clean_corpus

    from pretrainlab.config import load_config
    from pretrainlab.tokenizer.train import train_tokenizer

    clean = make_clean_corpus(dir_.parent / f"{dir_.name}_clean", {"prose": 30, "code": 20})
    train_tokenizer(load_config(None, [f"tokenizer.corpus={clean}", f"tokenizer.out={dir_}", "tokenizer.vocab_size=320"]))


def make_run(tmp_path: Path, with_checkpoint: bool = True) -> Path:
    from pretrainlab.tokenizer.vocab import load_tokenizer
    from pretrainlab.train.checkpoint import save_checkpoint

    make_tokenizer(tmp_path / "tok")
    vocab = load_tokenizer(tmp_path / "tok").vocab_size
    rng = np.random.default_rng(4)
    write_shards(tmp_path / "tokens", {
        "code": [list(rng.integers(3, vocab, 30)) for _ in range(5)],
        "docs": [list(rng.integers(3, vocab, 20)) for _ in range(2)],
    }, vocab=vocab)
    cfg = ProjectConfig.model_validate({
        "workdir": str(tmp_path),
        "tokenizer": {"out": str(tmp_path / "tok")},
        "train": {"tokens": str(tmp_path / "tokens"), "seq_len": 16, "micro_batch": 2, "global_batch_tokens": 32,
                  "device": "cpu", "seed": 11},
        "model": {"vocab_size": vocab, "d_model": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 32},
        "eval": {"max_tokens_per_source": 100, "prompts": ["def ", "The "], "max_new_tokens": 8},
    })
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_yaml(cfg))
    if with_checkpoint:
        torch.manual_seed(0)
        model = Transformer(cfg.model)
        save_checkpoint(run, 5, model.state_dict(), {}, {}, {"step": 5, "tokens": 160})
    return run


def test_evaluate_run_writes_eval_json_and_event(tmp_path, capsys):
    from pretrainlab.eval.run import evaluate_run

    run = make_run(tmp_path)
    res = evaluate_run(run)
    data = json.loads((run / "eval.json").read_text())
    assert data["step"] == 5 and data["tokens"] == 160
    assert set(data["perplexity"]) == {"code", "docs", OVERALL}
    assert data["perplexity"]["code"]["tokens"] == 100
    assert data["perplexity"]["docs"]["tokens"] == 41
    assert data["perplexity"][OVERALL]["tokens"] == 141
    assert all(math.isfinite(r["loss"]) and r["ppl"] > 1 for r in data["perplexity"].values())
    assert [s["prompt"] for s in data["samples"]] == ["def ", "The "]
    assert all(isinstance(s["greedy"], str) and isinstance(s["sampled"], str) for s in data["samples"])
    assert data["seconds"] >= 0 and res["step"] == 5
    events = [json.loads(l) for l in (run / "events.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "eval" and events[-1]["step"] == 5
    out = capsys.readouterr().out
    assert "code" in out and "overall" in out
    # deterministic: same seed, same samples; overrides reach the eval settings
    again = evaluate_run(run, ["eval.prompts=[\"def \"]"], checkpoint=5, print_results=False)
    assert again["samples"][0]["sampled"] == data["samples"][0]["sampled"]
    assert len(again["samples"]) == 1


def test_evaluate_run_user_errors(tmp_path):
    from pretrainlab.eval.run import evaluate_run

    with pytest.raises(UserError, match="not found"):
        evaluate_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a run directory"):
        evaluate_run(tmp_path / "empty")
    run = make_run(tmp_path, with_checkpoint=False)
    with pytest.raises(UserError, match="no (complete|intact) checkpoint"):
        evaluate_run(run)


@pytest.mark.parametrize("bad", ["tasks", "prompts"])
def test_a_bad_tasks_or_prompts_file_is_reported_before_any_model_work(tmp_path, monkeypatch, bad):
    import pretrainlab.eval.run as eval_run
    from pretrainlab.errors import DataError

    run = make_run(tmp_path)
    work = []
    monkeypatch.setattr(eval_run, "perplexity_per_source", lambda *a, **k: work.append("perplexity"))
    monkeypatch.setattr(eval_run, "load_checkpoint", lambda *a, **k: work.append("load model"))
    (tmp_path / "bad.jsonl").write_text('{"context": "a", "choices": [" b", " c"], "gold": 7}\n')
    (tmp_path / "prompts.jsonl").write_text('{"text": "no prompt field"}\n')
    override = {"tasks": f"eval.tasks=[{tmp_path / 'bad.jsonl'}]", "prompts": f"eval.prompts_file={tmp_path / 'prompts.jsonl'}"}
    with pytest.raises((DataError, UserError), match="bad.jsonl:1|prompts.jsonl:1"):
        eval_run.evaluate_run(run, [override[bad]], print_results=False)
    assert work == []
