"""`pretrainlab eval RUN --harness TASKS`: run lm-eval (EleutherAI harness) on the exported model.

Local tasks ("builtin", "cloze", "continuation", or a task JSONL path) become
lm-eval task YAML files in ``<run>/harness/tasks/`` that read the same JSONL
through the ``json`` dataset builder (no download): ``doc_to_text: context``,
``doc_to_choice: choices``, ``doc_to_target: gold``, ``target_delimiter`` the
task's (``""`` for the canonical form, whose choices carry their own leading
space; ``" "`` for converted ARC/HellaSwag/MMLU layouts), metrics acc and acc_norm. The
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

import importlib.util
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from rich.table import Table

from pretrainlab.errors import UserError
from pretrainlab.eval.builtin_tasks import BUILTIN_TASKS
from pretrainlab.eval.suite import BUILTIN, resolve_tasks, run_tasks
from pretrainlab.eval.tasks import encode_pair, write_task
from pretrainlab.fsio import atomic_write_json, atomic_write_text
from pretrainlab.progress import console
from pretrainlab.provenance import code_version
from pretrainlab.rundir import load_checkpoint, open_run, run_device
from pretrainlab.tokenizer.vocab import load_tokenizer

# (run dir, --set overrides, checkpoint) -> the run's float32 Hugging Face folder; the caller passes
# pretrainlab.export.package.ensure_hf_export (export sits above eval, so eval does not import it)
ExportToHF = Callable[[Path, "list[str] | None", "str | int | None"], Path]

PREFIX = "pretrainlab_"
HARNESS_FILE = "harness.json"


def task_yaml(name: str, data_file: Path, target_delimiter: str = "") -> str:
    return yaml.safe_dump({
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(Path(data_file).resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "context",
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        "target_delimiter": target_delimiter,
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


@contextmanager
def _quiet_git_hash() -> Iterator[None]:
    """lm-eval records ``git describe`` of the cwd and lets git print "fatal: not a git repository" outside
    a checkout; have it record pretrainlab's code version instead, with git's stderr captured."""
    from lm_eval import evaluator

    if not hasattr(evaluator, "get_git_commit_hash"):  # another lm-eval version: nothing to replace
        yield
        return
    with mock.patch.object(evaluator, "get_git_commit_hash", lambda: code_version()["git_sha"]):
        yield


def run_harness(run_dir: str | Path, names: list[str], cfg_overrides: list[str] | None = None,
                checkpoint: str | int | None = None, limit: int | None = None, *,
                export_to_hf: ExportToHF) -> dict[str, Any]:
    """lm-eval on the run's HF export (made by ``export_to_hf``) of ``checkpoint``; writes RUN/harness.json."""
    if importlib.util.find_spec("lm_eval") is None:
        raise UserError("--harness needs lm-eval (the EleutherAI harness): pip install 'pretrainlab[eval]'")
    run_dir, cfg = open_run(run_dir, cfg_overrides)
    if not names:
        raise UserError("--harness needs task names, e.g. --harness builtin or --harness tasks/my_task.jsonl,hellaswag")
    tok = load_tokenizer(cfg.tokenizer_dir)
    n = limit or cfg.eval.task_examples
    local_names = [x for x in names if x == BUILTIN or x in BUILTIN_TASKS or x.endswith(".jsonl") or Path(x).is_file()]
    public = [x for x in names if x not in local_names]
    local = resolve_tasks(local_names, run_dir, cfg.train_tokens_dir, tok, n, cfg.eval.task_seed) if local_names else []

    yaml_dir = run_dir / "harness" / "tasks"
    yaml_dir.mkdir(parents=True, exist_ok=True)
    harness_names = []
    max_len = cfg.model.max_seq_len
    for t in local:
        # lm-eval refuses a continuation longer than the context window; leave such examples out of both scorers
        t.examples = [e for e in t.examples if all(len(encode_pair(tok, e.context, c)[1]) <= max_len for c in e.continuations)]
        if not t.examples:
            raise UserError(f"task {t.name}: every choice is longer than the model's {max_len}-token context")
        if t.target_delimiter is None:
            raise UserError(f"task {t.name} mixes layouts (canonical and ARC/HellaSwag/MMLU-like); lm-eval takes one "
                            "target_delimiter per task: put each layout in its own file")
        data = yaml_dir / f"{t.name}.jsonl"
        write_task(data, t.examples)  # exactly the examples we score (capped), in canonical form
        atomic_write_text(yaml_dir / f"{PREFIX}{t.name}.yaml", task_yaml(PREFIX + t.name, data, t.target_delimiter))
        harness_names.append(PREFIX + t.name)
    export_dir = export_to_hf(run_dir, cfg_overrides, checkpoint)

    device = run_device(cfg)
    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")}
    if not public:  # before lm_eval (and through it huggingface_hub) is first imported, which reads these
        os.environ.update({k: "1" for k in saved_env})
    t0 = time.time()
    try:
        lm_eval, HFLM, TaskManager = _import_lm_eval()
        lm = HFLM(pretrained=str(export_dir), device=str(device), batch_size=cfg.eval.task_batch_size,
                  dtype="float32", prefix_token_id=tok.eos_id, trust_remote_code=False)
        tm = TaskManager(include_path=str(yaml_dir), include_defaults=bool(public))
        with _quiet_git_hash():
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
        ours = run_tasks(load_checkpoint(run_dir, checkpoint, device).model, tok, local, cfg.eval.task_batch_size, device)
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
    table = Table(title="lm-eval harness (zero-shot)")
    for col in ("task", "acc", "acc_norm", "ours acc", "ours acc_norm"):
        table.add_column(col, justify="left" if col == "task" else "right")
    f = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    for key, e in results.items():
        o = e.get("ours") or {}
        table.add_row(key, f(e["acc"]), f(e["acc_norm"]), f(o.get("acc")), f(o.get("acc_norm")))
    console.print(table)
    return record
