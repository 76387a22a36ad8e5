"""Multiple-choice tasks: file formats, lm-eval's acc/acc_norm, log-likelihood scoring, built-in tasks."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pretrainlab.config import ModelConfig
from pretrainlab.errors import DataError, UserError
from pretrainlab.eval.builtin_tasks import BUILTIN_TASKS, build_examples
from pretrainlab.eval.tasks import Example, encode_pair, load_task, loglikelihoods, task_metrics
from pretrainlab.model.transformer import Transformer


def test_acc_and_acc_norm_follow_lm_eval_definitions():
    examples = [
        Example("Q1", (" a", " bbbbbbbb"), 1),  # raw ll prefers 0; per-char ll prefers 1
        Example("Q2", (" yes", " no"), 0),      # both prefer 0
        Example("Q3", (" é", " ee"), 0),        # chars: -2/2=-1 vs -2.2/3; bytes: -2/3 vs -2.2/3
    ]
    lls = [[-3.0, -8.0], [-1.0, -5.0], [-2.0, -2.2]]
    m = task_metrics(examples, lls)
    # acc: argmax ll -> [0, 0, 0] -> correct on 2 and 3
    assert m["acc"] == pytest.approx(2 / 3)
    # acc_norm: ll / len(chars): Q1 [-1.5, -0.889] -> 1 (right); Q2 [-0.25, -1.67] -> 0 (right); Q3 [-1.0, -0.733] -> 1 (wrong)
    assert m["acc_norm"] == pytest.approx(2 / 3)
    # acc_bytes: Q3 " é" is 3 bytes: [-0.667, -0.733] -> 0 (right)
    assert m["acc_bytes"] == pytest.approx(1.0)
    assert m["n"] == 3 and m["chance"] == pytest.approx(0.5)
    xs = [0.0, 1.0, 1.0]
    assert m["acc_stderr"] == pytest.approx(math.sqrt(sum((x - 2 / 3) ** 2 for x in xs) / 2) / math.sqrt(3))


def test_ties_go_to_the_first_choice():
    m = task_metrics([Example("c", (" x", " y"), 0), Example("c", (" x", " y"), 1)], [[-1.0, -1.0], [-1.0, -1.0]])
    assert m["acc"] == 0.5


def test_task_file_layouts_and_errors(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"context": "A", "choices": [" b", " c"], "gold": 1},
        {"ctx": "A man", "endings": ["runs", "flies"], "label": "0"},
        {"question": "2+2?", "choices": {"text": ["4", "5"], "label": ["A", "B"]}, "answerKey": "A"},
        {"question": "Sky?", "choices": ["blue", "green", "red"], "answer": 0},
    ]) + "\n\n")
    task = load_task(path)
    assert task.name == "t" and len(task.examples) == 4
    assert task.examples[1] == Example("A man", ("runs", "flies"), 0, " ")
    assert task.examples[2] == Example("Question: 2+2?\nAnswer:", ("4", "5"), 0, " ")
    assert task.examples[3].continuations == (" blue", " green", " red")
    assert task.examples[0].continuations == (" b", " c") and task.target_delimiter is None  # mixed layouts
    assert len(load_task(path, limit=2).examples) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": "A", "choices": [" b", " c"], "gold": 0}) + "\n"
                   + json.dumps({"context": "A", "choices": [" b", " c"], "gold": 5}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: .*gold must be an index"):
        load_task(bad)
    with pytest.raises(DataError, match="not found"):
        load_task(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no examples"):
        load_task(tmp_path / "empty.jsonl")


class CharTok:
    """One token per character (ids = code points mod 60 + 3), eos 2."""

    eos_id = 2

    def encode(self, text):
        return [3 + ord(c) % 60 for c in text]


def test_encode_pair_moves_trailing_space_to_the_continuation():
    tok = CharTok()
    ctx, cont = encode_pair(tok, "ab ", "c")
    assert ctx == tok.encode("ab") and cont == tok.encode(" c")
    assert encode_pair(tok, "", "xy") == ([2], tok.encode("xy"))


def test_loglikelihoods_equal_manual_sum_of_log_probs_in_any_batching():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=16)).eval()
    tok = CharTok()
    pairs = [("hello", " world"), ("a", "b"), ("the long context here", " x"), ("", "zz")]
    got = loglikelihoods(model, tok, pairs, batch_size=3)
    for (context, cont), (ll, greedy) in zip(pairs, got):
        c, t = encode_pair(tok, context, cont)
        seq = (c + t)[-17:]
        with torch.no_grad():
            logits, _ = model(torch.tensor([seq[:-1]]))
        logp = torch.log_softmax(logits[0], -1)
        n = len(t)
        want = sum(logp[len(seq) - 1 - n + k, seq[len(seq) - n + k]].item() for k in range(n))
        assert ll == pytest.approx(want, abs=1e-4)
        assert greedy == all(logp[len(seq) - 1 - n + k].argmax().item() == seq[len(seq) - n + k] for k in range(n))
    assert [round(x, 5) for x, _ in loglikelihoods(model, tok, pairs, batch_size=1)] == [round(x, 5) for x, _ in got]


def test_builtin_tasks_are_deterministic_four_way_and_gold_is_the_true_text():
    docs = {
        "prose": [f"document {i} says the model reads tokens and predicts the next word while training number {i} "
                  f"continues with more words about layers norms batches shards and corpus {i}" for i in range(12)],
        "tiny": ["only one document here, too few to make choices from at all"],
    }
    for task in BUILTIN_TASKS:
        a = build_examples(docs, task, 20, seed=1)
        assert a == build_examples(docs, task, 20, seed=1) and a != build_examples(docs, task, 20, seed=2)
        assert 0 < len(a) <= 20
        for ex in a:
            assert len(ex.choices) == 4 and len(set(ex.choices)) == 4
            true_text = ex.context + ex.choices[ex.gold]
            assert any(true_text in d for d in docs["prose"])  # the gold continuation is the document's own text
        golds = {ex.gold for ex in a}
        assert len(golds) > 1  # gold position is shuffled


def test_resolve_tasks_rejects_unknown_names(tmp_path):
    from pretrainlab.eval.suite import resolve_tasks

    with pytest.raises(UserError, match="neither a built-in task"):
        resolve_tasks(["nope.jsonl"], tmp_path, tmp_path, None, 10, 0)


def test_in_training_task_eval_logs_eval_records_to_metrics(tiny_cfg):
    from pretrainlab.recipes import train

    cfg = tiny_cfg("eval.every_steps=5", "eval.in_training_examples=6", "eval.task_examples=10")
    train(cfg)
    recs = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in recs if r.get("kind") == "eval"]
    assert [r["step"] for r in evals] == [5, 10, 12]  # every 5 steps and the last one
    assert all(0.0 <= r["acc/cloze"] <= 1.0 and "acc_norm/continuation" in r for r in evals)
    assert (cfg.run_dir / "tasks" / "builtin" / "cloze.jsonl").is_file()


def test_prompts_file_text_and_jsonl(tmp_path):
    from pretrainlab.eval.run import read_prompts

    (tmp_path / "p.txt").write_text("def \n\nclass A:\\n    \n")
    assert read_prompts(tmp_path / "p.txt") == ["def ", "class A:\n    "]
    (tmp_path / "p.jsonl").write_text('{"prompt": "import "}\n{"nope": 1}\n')
    with pytest.raises(UserError, match="p.jsonl:2"):
        read_prompts(tmp_path / "p.jsonl")
    with pytest.raises(UserError, match="not found"):
        read_prompts(tmp_path / "missing.txt")


# lm-eval task configs equivalent to our converted layouts (its ARC prompt; default target_delimiter " ").
LM_EVAL_LAYOUTS = {
    "arc": ({"doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_choice": "{{choices.text}}",
             "doc_to_target": "{{choices.label.index(answerKey)}}"},
            [{"question": "Which is a mammal?", "choices": {"text": ["a", "bbbb"], "label": ["A", "B"]}, "answerKey": "B"},
             {"question": "Sky?", "choices": {"text": ["blue", "grey", "x"], "label": ["1", "2", "3"]}, "answerKey": "1"}]),
    "hellaswag": ({"doc_to_text": "ctx", "doc_to_choice": "endings", "doc_to_target": "label"},
                  [{"ctx": "A man", "endings": ["a", "bbbb"], "label": 1},
                   {"ctx": "She", "endings": ["sings", "is", "z"], "label": 0}]),
    "mmlu": ({"doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_choice": "choices", "doc_to_target": "answer"},
             [{"question": "2+2?", "choices": ["a", "bbbb"], "answer": 1},
              {"question": "Red?", "choices": ["yes", "no", "q"], "answer": 0}]),
}
# per-choice log-likelihoods chosen so that dividing by len(" " + choice) instead of len(choice) flips the first item
LLS = [[-3.0, -9.0], [-5.0, -4.1, -2.2]]


@pytest.mark.parametrize("layout", sorted(LM_EVAL_LAYOUTS))
def test_converted_layouts_score_exactly_as_lm_eval(layout, tmp_path, monkeypatch):
    """Same requests (context, continuation) and the same acc / acc_norm as lm-eval's own process_results."""
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from lm_eval.api.task import ConfigurableTask

    fields, docs = LM_EVAL_LAYOUTS[layout]
    path = tmp_path / f"{layout}.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    task = ConfigurableTask(config={
        "task": f"t_{layout}", "dataset_path": "json", "test_split": "test", "output_type": "multiple_choice",
        "dataset_kwargs": {"data_files": {"test": str(path)}, "cache_dir": str(tmp_path / "cache")},
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}], **fields})
    ours = load_task(path)
    for doc, ex, ll in zip(task.dataset["test"], ours.examples, LLS):
        requests = task.construct_requests(doc, task.doc_to_text(doc), metadata=(task.config.task, 0, 1))
        assert [r.arguments for r in requests] == [(ex.context, c) for c in ex.continuations]
        theirs = task.process_results(doc, [(v, False) for v in ll])
        mine = task_metrics([ex], [ll])
        assert (mine["acc"], mine["acc_norm"]) == (theirs["acc"], theirs["acc_norm"])
    # -3/1 > -9/4 picks "bbbb" (gold); counting the delimiter, -3/2 > -9/5 would pick "a"
    assert task_metrics(ours.examples[:1], LLS[:1])["acc_norm"] == 1.0
