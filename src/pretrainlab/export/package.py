"""`pretrainlab export RUN --out DIR`: the delivery package of a run.

Into ``DIR`` (default ``<run>/export/hf``): the Hugging Face folder
(``export.hf``), the model card as ``README.md`` (the Hub's card file) and
``MODEL_CARD.md``, ``examples/`` (inference script, a held-out sample, the task
files), and ``repro/`` (resolved config, run metadata with the code version,
data / tokenizer / token manifests, ``commands.sh``). With ``export.verify`` and
transformers installed, the folder is then loaded with
``AutoModelForCausalLM.from_pretrained`` and its logits and greedy generation
are compared with ours; the result goes to ``verification.json``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from pretrainlab.config import dump_yaml
from pretrainlab.errors import DataError
from pretrainlab.eval.builtin_tasks import heldout_documents
from pretrainlab.eval.generate import generate
from pretrainlab.eval.suite import builtin_dir, ensure_builtin_tasks
from pretrainlab.export.adapters import adapter_for
from pretrainlab.export.card import gather_card_facts, render_card, training_corpus_dir
from pretrainlab.export.hf import EXPORT_MARKER, export_hf
from pretrainlab.fsio import atomic_write_json, atomic_write_jsonl, atomic_write_text
from pretrainlab.model.moe import MoE
from pretrainlab.progress import console
from pretrainlab.rundir import load_checkpoint, open_run, resolve_checkpoint
from pretrainlab.tokenizer.vocab import load_tokenizer

INFERENCE_EXAMPLE = '''"""Load this folder with transformers, generate, and score one multiple-choice example."""

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

here = Path(__file__).resolve().parent.parent
tok = AutoTokenizer.from_pretrained(here)
model = AutoModelForCausalLM.from_pretrained(here).eval()

prompt = sys.argv[1] if len(sys.argv) > 1 else "def "
ids = tok(prompt, return_tensors="pt").input_ids
out = model.generate(ids, max_new_tokens=40, do_sample=False)
print(tok.decode(out[0], skip_special_tokens=True))


def loglikelihood(context: str, continuation: str) -> float:
    ctx = tok(context).input_ids
    whole = tok(context + continuation).input_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0, :-1], -1)
    return sum(logp[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))


tasks = sorted((here / "examples" / "tasks").glob("*.jsonl"))
if tasks:
    ex = json.loads(tasks[0].read_text().splitlines()[0])
    scores = [loglikelihood(ex["context"], ex.get("target_delimiter", "") + c) for c in ex["choices"]]
    print(f"{tasks[0].stem}: picked {scores.index(max(scores))}, gold {ex['gold']}")
'''


def _commands(cfg, run_dir: Path, out_dir: Path) -> str:
    return "\n".join([
        "#!/usr/bin/env bash",
        "# Rebuild this model from the same sources with the resolved config (paths inside it are absolute;",
        "# edit workdir / run.dir in config.yaml to rebuild elsewhere).",
        "set -euo pipefail",
        'CFG="$(dirname "$0")/config.yaml"',
        'pretrainlab data build -c "$CFG"',
        'pretrainlab tokenizer train -c "$CFG"',
        'pretrainlab data tokenize -c "$CFG"',
        'pretrainlab train -c "$CFG"',
        f"pretrainlab eval {run_dir}",
        f"pretrainlab export {run_dir} --out {out_dir}",
        "",
    ])


def _write_examples(tmp: Path, cfg, run_dir: Path, tok) -> list[str]:
    files = []
    ex = tmp / "examples"
    ex.mkdir()
    atomic_write_text(ex / "inference.py", INFERENCE_EXAMPLE)
    files.append("examples/inference.py")
    if cfg.export.example_docs:
        try:
            docs = heldout_documents(cfg.train_tokens_dir, tok, max_docs_per_source=cfg.export.example_docs)
        except DataError:
            docs = {}
        recs = [{"source": s, "text": t} for s, texts in sorted(docs.items()) for t in texts][: cfg.export.example_docs]
        if recs:
            atomic_write_jsonl(ex / "heldout_sample.jsonl", recs)
            files.append("examples/heldout_sample.jsonl")
    if cfg.eval.tasks:
        ensure_builtin_tasks(run_dir, cfg.train_tokens_dir, tok, cfg.eval.task_examples, cfg.eval.task_seed)
    tasks_src = builtin_dir(run_dir)
    for path in sorted(tasks_src.glob("*.jsonl")):
        (ex / "tasks").mkdir(exist_ok=True)
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)[:20]
        atomic_write_text(ex / "tasks" / path.name, "".join(lines))
        files.append(f"examples/tasks/{path.name}")
    return files


def _write_repro(tmp: Path, cfg, run_dir: Path, out_dir: Path) -> list[str]:
    r = tmp / "repro"
    r.mkdir()
    atomic_write_text(r / "config.yaml", dump_yaml(cfg))
    atomic_write_text(r / "commands.sh", _commands(cfg, run_dir, out_dir))
    files = ["repro/config.yaml", "repro/commands.sh"]
    tokens_dir = Path(cfg.train_tokens_dir)
    tok_dir = Path(cfg.tokenizer_dir) if Path(cfg.tokenizer_dir).is_dir() else Path(cfg.tokenizer_dir).parent
    try:
        tokens_manifest = json.loads((tokens_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        tokens_manifest = {}
    corpus_dir = training_corpus_dir(cfg, tokens_manifest if isinstance(tokens_manifest, dict) else {})
    for src, name in ((run_dir / "meta.json", "meta.json"), (run_dir / "eval.json", "eval.json"),
                      *(((corpus_dir / "manifest.json", "data_manifest.json"),) if corpus_dir else ()),
                      (tok_dir / "manifest.json", "tokenizer_manifest.json"),
                      (tokens_dir / "manifest.json", "tokens_manifest.json")):
        if src.is_file():
            shutil.copyfile(src, r / name)
            files.append(f"repro/{name}")
    return files


def verify_export(model, tok, out_dir: Path, device="cpu") -> dict[str, Any]:
    """Load ``out_dir`` with transformers and compare logits and greedy tokens with ``model``."""
    from transformers import AutoModelForCausalLM  # optional dependency (pretrainlab[export]): imported when used

    hf = AutoModelForCausalLM.from_pretrained(out_dir, local_files_only=True, dtype=torch.float32).eval()
    moe = [m for m in model.modules() if isinstance(m, MoE)]
    for m in moe:  # transformers' MoE is dropless: compare with our dropless routing
        m.capacity = lambda num_tokens: None
    try:
        return _compare(model, hf, tok)
    finally:
        for m in moe:
            del m.capacity


def _compare(model, hf, tok) -> dict[str, Any]:
    ids = (tok.encode("def main():\n    return the value of the model\n") or [tok.bos_id])[: model.cfg.max_seq_len]
    x = torch.tensor([ids])
    with torch.no_grad():
        ours = model.float().cpu()(x)[0]
        theirs = hf(x).logits
    n = min(16, model.cfg.max_seq_len - len(ids[:8]))
    g_ours = generate(model, ids[:8], n, greedy=True)
    with torch.no_grad():
        g_hf = hf.generate(torch.tensor([ids[:8]]), max_new_tokens=n, do_sample=False, min_new_tokens=n,
                           eos_token_id=None, pad_token_id=tok.pad_id)[0, 8:].tolist()
    return {"max_abs_logit_diff": float((ours - theirs).abs().max()), "tokens": len(ids),
            "greedy_equal": g_ours == g_hf, "greedy_tokens": n, "time": time.time()}


def export_run(run_dir: str | Path, out_dir: str | Path | None = None, cfg_overrides: list[str] | None = None,
               checkpoint: str | int | None = None) -> dict[str, Any]:
    run_dir, cfg = open_run(run_dir, cfg_overrides)
    out = Path(out_dir) if out_dir else run_dir / "export" / "hf"
    loaded = load_checkpoint(run_dir, checkpoint, "cpu")
    model, ckpt, step, tokens = loaded.model, loaded.path, loaded.step, loaded.tokens
    tok = load_tokenizer(cfg.tokenizer_dir)
    ec = cfg.export
    gen = cfg.eval.model_dump()
    provenance = {"run": str(run_dir.resolve()), "checkpoint": str(ckpt), "step": step, "tokens": tokens,
                  "exported_at": time.time()}

    def extras(tmp: Path) -> list[str]:
        files = _write_examples(tmp, cfg, run_dir, tok) + _write_repro(tmp, cfg, run_dir, out)
        record = {"architecture": adapter_for(model.cfg).architecture, "dtype": ec.dtype}
        card = render_card(gather_card_facts(run_dir, cfg, ckpt, step, tokens, record), ec.license)
        atomic_write_text(tmp / "README.md", card)
        atomic_write_text(tmp / "MODEL_CARD.md", card)
        return files + ["README.md", "MODEL_CARD.md"]

    record = export_hf(model, tok, out, dtype=ec.dtype, generation=gen, shard_bytes=int(ec.shard_gb * 2**30),
                       extra_files=extras, provenance=provenance)
    console.print(f"exported {record['architecture']} ({record['parameters']:,} parameters, {ec.dtype}) to {out}")
    if ec.verify:
        try:
            import transformers  # noqa: F401
        except ImportError:
            console.print("verification skipped: transformers is not installed (pip install 'pretrainlab[export]')")
        else:
            check = verify_export(model, tok, out)
            atomic_write_json(out / "verification.json", check)
            record["verification"] = check
            console.print(f"verified with transformers: max |logit difference| {check['max_abs_logit_diff']:.2e}, "
                          f"greedy generation {'identical' if check['greedy_equal'] else 'DIFFERENT'}")
            if ec.dtype == "float32" and (check["max_abs_logit_diff"] > 1e-4 or not check["greedy_equal"]):
                raise DataError(f"exported model in {out} does not reproduce ours (max logit diff "
                                f"{check['max_abs_logit_diff']:.2e}); this is a bug in the exporter, please report it")
    record["out"] = str(out)
    return record


def ensure_hf_export(run_dir: str | Path, cfg_overrides: list[str] | None = None,
                     checkpoint: str | int | None = None) -> Path:
    """``RUN/export/hf`` holding the float32 export of ``checkpoint``, exported now if missing or stale."""
    run_dir = Path(run_dir)
    out = run_dir / "export" / "hf"
    ckpt = resolve_checkpoint(run_dir, checkpoint)
    try:
        marker = json.loads((out / EXPORT_MARKER).read_text())
    except (OSError, ValueError):
        marker = {}
    if marker.get("checkpoint") != str(ckpt) or marker.get("dtype") != "float32":
        export_run(run_dir, out, list(cfg_overrides or []) + ["export.dtype=float32"], checkpoint=str(ckpt))
    return out
