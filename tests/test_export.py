"""Hugging Face export: transformers loads it offline and reproduces our logits; card, examples, bundle."""

from __future__ import annotations

import json
import pytest
import torch
import yaml

from conftest import tiny_overrides
from pretrainlab.cli import main
from pretrainlab.config import ModelConfig, load_config
from pretrainlab.errors import UserError
from pretrainlab.eval.generate import generate
from pretrainlab.export.adapters import LlamaAdapter, adapter_for
from pretrainlab.export.hf import export_hf, load_hf_state
from pretrainlab.model.transformer import Transformer
from pretrainlab.tokenizer.vocab import load_tokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def trained_run(tiny_data, tmp_path_factory):
    """A 12-step tiny run with checkpoints at steps 4, 8, 12 (keep_last 3)."""
    from pretrainlab.recipes import train

    run = tmp_path_factory.mktemp("exp") / "run"
    cfg = load_config(None, tiny_overrides(tiny_data) + [f"run.dir={run}", "checkpoint.keep_last=3",
                                                        "eval.task_examples=12", "eval.max_tokens_per_source=300"])
    train(cfg)
    return run


def tiny_model(vocab: int, tie: bool, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64, tie_embeddings=tie)
    return Transformer(cfg).eval()


@pytest.mark.parametrize("tie", [True, False])
def test_transformers_loads_the_export_offline_with_equal_logits_and_greedy_tokens(tiny_data, tmp_path, tie, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = load_tokenizer(tiny_data / "tokenizer")
    model = tiny_model(tok.vocab_size + 5, tie)  # embedding rows beyond the tokenizer are kept
    with torch.no_grad():  # make every layer matter (the init scales residual paths down)
        for p in model.parameters():
            p.mul_(3.0) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    out = tmp_path / "hf"
    export_hf(model, tok, out, shard_bytes=40_000)  # small shards: exercises the index file too
    assert (out / "model.safetensors.index.json").is_file()
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True, dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    text = "def f(x):\n    return the model reads tokens"
    ids = tok.encode(text)
    assert hf_tok(text)["input_ids"] == ids
    assert (hf_tok.eos_token_id, hf_tok.bos_token_id, hf_tok.pad_token_id) == (tok.eos_id, tok.bos_id, tok.pad_id)
    x = torch.tensor([ids, ids[::-1]])
    with torch.no_grad():
        diff = (model(x)[0] - hf(x).logits).abs().max().item()
    assert diff < 1e-4
    greedy_hf = hf.generate(torch.tensor([ids[:5]]), max_new_tokens=20, min_new_tokens=20, do_sample=False,
                            eos_token_id=None, pad_token_id=tok.pad_id)[0, 5:].tolist()
    assert generate(model, ids[:5], 20, greedy=True) == greedy_hf
    assert (hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()) == tie


def test_adapter_round_trip_restores_every_tensor(tiny_data, tmp_path):
    model = tiny_model(100, tie=True)
    adapter = adapter_for(model.cfg)
    assert isinstance(adapter, LlamaAdapter)
    tok = load_tokenizer(tiny_data / "tokenizer")
    model = tiny_model(tok.vocab_size, tie=False)
    export_hf(model, tok, tmp_path / "hf")
    back = adapter_for(model.cfg).from_hf(load_hf_state(tmp_path / "hf"))
    state = model.state_dict()
    assert set(back) == {k for k in state if not k.startswith("rope_")}
    assert all(torch.equal(back[k], state[k]) for k in back)


def test_export_refuses_a_foreign_non_empty_folder(tiny_data, tmp_path):
    tok = load_tokenizer(tiny_data / "tokenizer")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a pretrainlab export"):
        export_hf(tiny_model(tok.vocab_size, True), tok, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    export_hf(tiny_model(tok.vocab_size, True), tok, tmp_path / "ok")
    export_hf(tiny_model(tok.vocab_size, True, seed=1), tok, tmp_path / "ok")  # re-export replaces its own folder


def test_export_command_writes_card_examples_and_reproduction_bundle(trained_run, tmp_path, capsys):
    from pretrainlab.eval.run import evaluate_run

    evaluate_run(trained_run, print_results=False)
    out = tmp_path / "delivery"
    assert main(["export", str(trained_run), "--out", str(out)]) == 0
    for name in ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "README.md", "MODEL_CARD.md", "examples/inference.py",
                 "examples/heldout_sample.jsonl", "examples/tasks/cloze.jsonl", "repro/config.yaml", "repro/commands.sh",
                 "repro/meta.json", "repro/data_manifest.json", "repro/tokenizer_manifest.json",
                 "repro/tokens_manifest.json", "repro/eval.json", "verification.json"]:
        assert (out / name).is_file(), name
    assert f"export: {out}" in capsys.readouterr().out
    check = json.loads((out / "verification.json").read_text())
    assert check["max_abs_logit_diff"] < 1e-4 and check["greedy_equal"]
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "transformers" and front["model-index"][0]["results"]
    for section in ["## Model Details", "## Uses", "## Bias, Risks, and Limitations", "## How to Get Started",
                    "## Training Details", "### Training Data", "## Evaluation", "## Environmental Impact",
                    "## Technical Specifications"]:
        assert section in card, section
    # filled from the run: sources with their license and approval, token counts, results, compute
    data = json.loads((out / "repro" / "data_manifest.json").read_text())
    for source in ("prose", "code"):
        assert f"| {source} |" in card
    assert "| cloze |" in card and "| overall |" in card and "kWh" in card
    assert "LlamaForCausalLM" in card and "step 12" in card
    assert isinstance(data, dict)


def test_all_checkpoints_sweep_writes_one_record_per_checkpoint_and_charts(trained_run):
    from pretrainlab.eval.sweep import SWEEP_FILE, SWEEP_HTML, evaluate_all_checkpoints

    records = evaluate_all_checkpoints(trained_run)
    assert [r["step"] for r in records] == [4, 8, 12]
    assert [r["tokens"] for r in records] == [4 * 256, 8 * 256, 12 * 256]
    saved = json.loads((trained_run / SWEEP_FILE).read_text())["checkpoints"]
    assert [r["step"] for r in saved] == [4, 8, 12]
    assert all(set(r["tasks"]) == {"cloze", "continuation"} for r in saved)
    assert records[-1]["perplexity"]["overall"]["loss"] < records[0]["perplexity"]["overall"]["loss"]
    assert (trained_run / SWEEP_HTML).read_text().count("<svg") == 2
    from pretrainlab.reporting import build_report_html

    assert "Evaluation across training" in build_report_html(trained_run)


def test_all_checkpoints_sweep_skips_a_damaged_checkpoint_and_says_why(trained_run, tmp_path, capsys):
    import shutil

    from pretrainlab.eval.sweep import evaluate_all_checkpoints
    from pretrainlab.train.integrity import corrupt

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    damaged = run / "checkpoints" / "step_00000008"
    corrupt(damaged, "truncate-model")
    records = evaluate_all_checkpoints(run)
    assert [r["step"] for r in records] == [4, 12]
    said = "".join(capsys.readouterr().err.split())
    assert "skipped" in said and "step_00000008" in said and damaged.is_dir()


@pytest.mark.slow
def test_lm_eval_harness_offline_on_the_export_equals_our_accuracy(trained_run, tmp_path, monkeypatch, capfd):
    pytest.importorskip("lm_eval")
    from pretrainlab.eval.harness import run_harness
    from pretrainlab.export.package import ensure_hf_export

    arc = tmp_path / "arc_like.jsonl"  # a converted layout: lm-eval's target_delimiter " ", acc_norm over the bare text
    words = ["the model", "a token", "data", "return value", "the layer norm", "shard", "import class", "self"]
    arc.write_text("".join(json.dumps({"question": f"What is {w}?", "answerKey": "B", "choices": {
        "label": ["A", "B", "C"], "text": [words[(i + 1) % 8], w, words[(i + 3) % 8] + " x"]}}) + "\n"
        for i, w in enumerate(words)))
    monkeypatch.chdir(tmp_path)  # not a git checkout: git must not print "fatal: not a git repository"
    capfd.readouterr()
    record = run_harness(trained_run, ["builtin", str(arc)], export_to_hf=ensure_hf_export)
    assert "fatal" not in capfd.readouterr().err
    assert set(record["tasks"]) == {"cloze", "continuation", "arc_like"}
    for name, r in record["tasks"].items():
        assert r["acc"] == pytest.approx(r["ours"]["acc"]) and r["acc_norm"] == pytest.approx(r["ours"]["acc_norm"]), name
    assert json.loads((trained_run / "harness.json").read_text())["tasks"]["cloze"]["acc"] == record["tasks"]["cloze"]["acc"]


def test_verification_of_a_capacity_limited_moe_export_compares_dropless_routing(tiny_data, tmp_path):
    from pretrainlab.export.package import verify_export

    tok = load_tokenizer(tiny_data / "tokenizer")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64,
                      moe={"num_experts": 4, "top_k": 2, "capacity_factor": 0.5, "num_shared_experts": 1})
    model = Transformer(cfg).eval()
    record = export_hf(model, tok, tmp_path / "hf")
    assert record["architecture"] == "Qwen2MoeForCausalLM"
    check = verify_export(model, tok, tmp_path / "hf")
    assert check["max_abs_logit_diff"] < 1e-4 and check["greedy_equal"]
    assert "capacity" not in vars(next(m for m in model.modules() if type(m).__name__ == "MoE"))  # patch undone


def test_export_command_errors_are_one_line(trained_run, tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    assert main(["export", str(trained_run), "--to", "onnx", str(tmp_path / "o")]) == 2
    assert "the one format is hf" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    assert main(["export", str(trained_run), "--out", str(tmp_path / "busy")]) == 2
    assert "not a pretrainlab export" in capsys.readouterr().err


def test_card_lists_each_source_with_license_approval_tokens_and_mixture(trained_run):
    from pretrainlab.export.card import gather_card_facts, render_card
    from pretrainlab.train.checkpoint import latest_checkpoint

    cfg = load_config(trained_run / "config.yaml")
    facts = gather_card_facts(trained_run, cfg, latest_checkpoint(trained_run), 12, 3072,
                              {"architecture": "LlamaForCausalLM", "dtype": "float32"})
    facts["data_manifest"] = {"manifest_id": "abc", "stages": ["normalize", "exact_dedup"], "counts": {"docs_out": 90},
                              "sources": {"prose": {"license": "CC-BY-4.0",
                                                    "approval": {"status": "approved", "by": "legal", "date": "2026-11-01"}},
                                          "code": {"license": "PSF-2.0", "approval": {"status": "approved"}}}}
    card = render_card(facts, "apache-2.0")
    train_tokens = facts["tokens_manifest"]["sources"]["prose"]["train"]["tokens"]
    weight = facts["meta"]["mix_stages"][0]["weights"]["prose"]
    assert f"| prose | CC-BY-4.0 | approved legal 2026-11-01 | {train_tokens:,} |" in card
    assert f"| {weight:.3f} |" in card and "| code | PSF-2.0 | approved |" in card
    assert card.startswith("---\nlicense: apache-2.0\n") and "manifest `abc`" in card and "90 documents kept" in card


def test_card_data_section_is_the_same_from_any_working_directory(tmp_path, monkeypatch):
    """A run made with a relative workdir exports the same data section from elsewhere, and never reads the
    `work/clean` that happens to lie in the current directory."""
    from conftest import make_clean_corpus
    from pretrainlab.tokenizer.shards import tokenize_corpus
    from pretrainlab.tokenizer.train import train_tokenizer
    from pretrainlab.recipes import train

    proj, other = tmp_path / "proj", tmp_path / "other"
    sources = {"prose": {"license": "CC-BY-4.0", "approval": {"status": "approved", "by": "legal", "date": "2026-11-01"}},
               "code": {"license": "PSF-2.0", "approval": {"status": "approved", "by": "legal", "date": "2026-11-02"}}}
    make_clean_corpus(proj / "work" / "clean", {"prose": 30, "code": 20})
    (proj / "work" / "clean" / "manifest.json").write_text(json.dumps({"manifest_id": "real", "sources": sources}))
    decoy = {s: {"license": "DECOY-LICENSE", "approval": {"status": "approved", "by": "x"}} for s in sources}
    (other / "work" / "clean").mkdir(parents=True)
    (other / "work" / "clean" / "manifest.json").write_text(json.dumps({"manifest_id": "decoy", "sources": decoy}))
    monkeypatch.chdir(proj)
    cfg = load_config(None, tiny_overrides(proj / "work")[1:] + ["workdir=work", "train.steps=2", "checkpoint.every=2",
                                                                 "export.verify=false", "tokenize.workers=1"])
    train_tokenizer(cfg)
    tokenize_corpus(cfg)
    train(cfg)
    monkeypatch.chdir(other)
    out = tmp_path / "delivery"
    assert main(["export", str(proj / "work" / "runs" / "quickstart"), "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "| prose | CC-BY-4.0 | approved legal 2026-11-01 |" in card and "| code | PSF-2.0 |" in card
    assert "DECOY" not in card and "manifest `real`" in card
    assert "Nothing truncates by itself" in card and "`truncation=True`" in card  # as the exported tokenizer does
    assert json.loads((out / "repro" / "data_manifest.json").read_text())["manifest_id"] == "real"


def test_readme_lm_eval_command_scores_empty_contexts_after_eos_like_pretrainlab(tiny_data, tmp_path, monkeypatch):
    """The README's plain `lm_eval --model hf` command, run on an export, prefixes empty contexts as we do."""
    pytest.importorskip("lm_eval")
    import re
    from pathlib import Path

    from lm_eval.models.huggingface import HFLM
    from lm_eval.utils import simple_parse_args_string

    from pretrainlab.eval.tasks import encode_pair

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    commands = re.findall(r"`(lm_eval --model hf --model_args (\S+) [^`]*)`", readme)
    assert commands, "README shows no plain lm_eval command"
    tok = load_tokenizer(tiny_data / "tokenizer")
    export_hf(tiny_model(tok.vocab_size, True), tok, tmp_path / "hf")
    ours = encode_pair(tok, "", " x")[0]
    for _, model_args in commands:
        args = simple_parse_args_string(model_args.replace("out/model", str(tmp_path / "hf")))
        lm = HFLM(**{"device": "cpu", **args})
        assert [lm.prefix_token_id] == ours == [tok.eos_id], model_args


def test_every_exported_file_has_ordinary_permissions(tiny_data, tmp_path):
    """0666 less the umask, like any file the user writes (safetensors alone used to be 0600)."""
    import os

    tok = load_tokenizer(tiny_data / "tokenizer")
    export_hf(tiny_model(tok.vocab_size, True), tok, tmp_path / "one")
    export_hf(tiny_model(tok.vocab_size, True), tok, tmp_path / "sharded", shard_bytes=20_000)
    umask = os.umask(0)
    os.umask(umask)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name.startswith("model-00002") for p in files)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(0o666 & ~umask) for p in files}


def test_exported_tokenizer_truncates_long_prompts_to_their_last_context_tokens(tiny_data, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = load_tokenizer(tiny_data / "tokenizer")
    model = tiny_model(tok.vocab_size, True)
    export_hf(model, tok, tmp_path / "hf")
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = " ".join(f"word{i} def return" for i in range(200))
    full = hf_tok(text).input_ids
    assert len(full) > model.cfg.max_seq_len and full == tok.encode(text)
    assert hf_tok(text, truncation=True).input_ids == full[-model.cfg.max_seq_len:]
