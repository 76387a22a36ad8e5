"""`pretrainlab eval RUN --harness TASKS`: run lm-eval (EleutherAI harness) on the exported model.

Local tasks ("builtin", "cloze", "continuation", or a task JSONL path) become
lm-eval task YAML files in ``<run>/harness/tasks/`` that read the same JSONL
through the ``json`` dataset builder (no download): ``doc_to_text: context``,
``doc_to_choice: choices``, ``doc_to_target: gold``, ``target_delimiter: ""``
(our choices carry their own leading space), metrics acc and acc_norm. The
model is the run's Hugging Face export (``<run>/export/hf``, made or refreshed
first), loaded by lm-eval's ``HFLM`` in float32 with ``prefix_token_id`` = eos
(what our documents start after). For local tasks the Hub and datasets are
forced offline and our own scorer runs on the same file, so ``harness.json``
shows both accuracies side by side.

Any other name is passed to lm-eval as one of its registered tasks
(``hellaswag``, ``arc_easy``, ``mmlu``, ...): those download their data from the
Hugging Face Hub, so they work only where the network allows.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from pretrainlab.errors import UserError
from pretrainlab.fsio import atomic_write_json, atomic_write_text

PREFIX = "pretrainlab_"
HARNESS_FILE = "harness.json"


def task_yaml(name: str, data_file: Path) -> str:
    return yaml.safe_dump({
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(Path(data_file).resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "context",
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        "target_delimiter": "",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }, sort_keys=False)


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise UserError(f"--harness needs lm-eval with its HF backend ({exc}); pip install 'pretrainlab[eval]'") from None
    return lm_eval, HFLM, TaskManager


def _export_dir(run_dir: Path, cfg_overrides, checkpoint) -> Path:
    """The run's HF export of the requested checkpoint, made if missing or stale."""
    from pretrainlab.export.hf import EXPORT_MARKER
    from pretrainlab.export.package import export_run
    from pretrainlab.train.checkpoint import resolve_checkpoint

    out = run_dir / "export" / "hf"
    ckpt = resolve_checkpoint(run_dir, checkpoint)
    try:
        marker = json.loads((out / EXPORT_MARKER).read_text())
    except (OSError, ValueError):
        marker = {}
    if marker.get("checkpoint") != str(ckpt) or marker.get("dtype") != "float32":
        export_run(run_dir, out, list(cfg_overrides or []) + ["export.dtype=float32"], checkpoint=str(ckpt))
    return out


def run_harness(run_dir: str | Path, names: list[str], cfg_overrides: list[str] | None = None,
                checkpoint: str | int | None = None, limit: int | None = None) -> dict[str, Any]:
    from pretrainlab.config import load_run_config
    from pretrainlab.eval.builtin_tasks import BUILTIN_TASKS
    from pretrainlab.eval.run import _check_run_dir, _device
    from pretrainlab.eval.suite import BUILTIN, resolve_tasks, run_tasks
    from pretrainlab.progress import console
    from pretrainlab.tokenizer.vocab import load_tokenizer
    from pretrainlab.train.checkpoint import load_model

    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise UserError("--harness needs lm-eval (the EleutherAI harness): pip install 'pretrainlab[eval]'")
    run_dir = Path(run_dir)
    _check_run_dir(run_dir)
    if not names:
        raise UserError("--harness needs task names, e.g. --harness builtin or --harness tasks/my_task.jsonl,hellaswag")
    cfg = load_run_config(run_dir, cfg_overrides or None)
    tok = load_tokenizer(cfg.tokenizer_dir)
    n = limit or cfg.eval.task_examples
    local_names = [x for x in names if x == BUILTIN or x in BUILTIN_TASKS or x.endswith(".jsonl") or Path(x).is_file()]
    public = [x for x in names if x not in local_names]
    local = resolve_tasks(local_names, run_dir, cfg.train_tokens_dir, tok, n, cfg.eval.task_seed) if local_names else []

    yaml_dir = run_dir / "harness" / "tasks"
    yaml_dir.mkdir(parents=True, exist_ok=True)
    harness_names = []
    from pretrainlab.eval.tasks import encode_pair, write_task

    max_len = cfg.model.max_seq_len
    for t in local:
        # lm-eval refuses a continuation longer than the context window; leave such examples out of both scorers
        t.examples = [e for e in t.examples if all(len(encode_pair(tok, e.context, c)[1]) <= max_len for c in e.choices)]
        if not t.examples:
            raise UserError(f"task {t.name}: every choice is longer than the model's {max_len}-token context")
        data = yaml_dir / f"{t.name}.jsonl"
        write_task(data, t.examples)  # exactly the examples we score (capped), in canonical form
        atomic_write_text(yaml_dir / f"{PREFIX}{t.name}.yaml", task_yaml(PREFIX + t.name, data))
        harness_names.append(PREFIX + t.name)
    export_dir = _export_dir(run_dir, cfg_overrides, checkpoint)

    device = _device(cfg)
    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")}
    if not public:  # before lm_eval (and through it huggingface_hub) is first imported, which reads these
        os.environ.update({k: "1" for k in saved_env})
    t0 = time.time()
    try:
        lm_eval, HFLM, TaskManager = _import_lm_eval()
        lm = HFLM(pretrained=str(export_dir), device=str(device), batch_size=cfg.eval.task_batch_size,
                  dtype="float32", prefix_token_id=tok.eos_id, trust_remote_code=False)
        tm = TaskManager(include_path=str(yaml_dir), include_defaults=bool(public))
        out = lm_eval.simple_evaluate(model=lm, tasks=harness_names + public, task_manager=tm, num_fewshot=0,
                                      limit=limit if public else None, log_samples=False, bootstrap_iters=0)
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    raw = (out or {}).get("results", {})

    ours: dict[str, Any] = {}
    if local:
        model, _, _ = load_model(run_dir, checkpoint, device)
        ours = run_tasks(model, tok, local, cfg.eval.task_batch_size, device)
    results = {}
    for name, r in raw.items():
        key = name[len(PREFIX):] if name.startswith(PREFIX) else name
        entry = {"acc": r.get("acc,none"), "acc_norm": r.get("acc_norm,none"),
                 "acc_stderr": r.get("acc_stderr,none"), "acc_norm_stderr": r.get("acc_norm_stderr,none")}
        if key in ours:
            entry["ours"] = {"acc": ours[key]["acc"], "acc_norm": ours[key]["acc_norm"], "n": ours[key]["n"]}
        results[key] = entry
    record = {"run": run_dir.resolve().name, "export": str(export_dir), "tasks": results,
              "lm_eval_version": getattr(lm_eval, "__version__", None), "seconds": round(time.time() - t0, 3),
              "time": time.time()}
    atomic_write_json(run_dir / HARNESS_FILE, record)
    from rich.table import Table

    table = Table(title="lm-eval harness (zero-shot)")
    for col in ("task", "acc", "acc_norm", "ours acc", "ours acc_norm"):
        table.add_column(col, justify="left" if col == "task" else "right")
    f = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    for key, e in results.items():
        o = e.get("ours") or {}
        table.add_row(key, f(e["acc"]), f(e["acc_norm"]), f(o.get("acc")), f(o.get("acc_norm")))
    console.print(table)
    return record
