"""Fault-injection matrix: every fault a cluster produces, then `train --resume auto`; one line per case.

Usage:
  .venv/bin/python benchmarks/fault_matrix.py [--only PATTERN] [--markdown] [--workdir DIR]

Each case runs a tiny model on a synthetic corpus (12 steps, checkpoint every 4) as a
subprocess (``pretrainlab.cli train`` or ``torchrun --nproc_per_node 2``, gloo on CPU),
injects one fault, resumes with ``--resume auto`` and compares the losses in
metrics.jsonl with an uninterrupted run of the same launcher: "recovered, bit-identical"
means exactly equal floats for all 12 steps. Faults:

* kill -9 / SIGINT / SIGTERM x one process / FSDP2 / DDP, delivered after a seeded
  number of logged steps plus a random fraction of a step: kill -9 hits every process
  (workers first); SIGINT goes to the process group (a terminal's Ctrl-C); SIGTERM to the
  launcher only (torchrun forwards it to its workers);
* the newest checkpoint corrupted (bytes cut, emptied, or one byte flipped) in the full
  format (model.pt, optim.pt, state.json) and the sharded format (a .distcp shard, .metadata);
* the disk filling up during a save: the run directory on a tmpfs (in a private mount
  namespace) of several sizes, so a different save fails each time; then the space is
  grown and the run resumed;
* repeated bad batches: NaN-poisoned data regions wider than ``guard.skip_batches``, so
  one rollback is not enough (recovered = every step trained, no bad batch trained on,
  and a second run gives the same losses).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_distributed import process_tree  # noqa: E402  (the torchrun tests kill the same way)

STEPS = 12
PY = sys.executable
TINY = [
    "tokenizer.vocab_size=320", "model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2",
    "model.max_seq_len=32", "train.seq_len=32", "train.micro_batch=4", "train.global_batch_tokens=256",
    f"train.steps={STEPS}", "train.log_every=1", "train.val_every=100", "train.val_batches=2", "train.threads=1",
    "optim.warmup_steps=3", "checkpoint.every=4", "checkpoint.keep_last=3", "checkpoint.keep_best=false",
    "log.tensorboard=false", "log.peak_flops=1e11",
]
WORDS = ("the model reads tokens and predicts the next one while the optimizer lowers the loss "
         "def return import class self value data batch shard corpus token layer norm").split()


# --------------------------------------------------------------------------- data and launching


def build_data(workdir: Path) -> None:
    """A clean two-source corpus, a BPE tokenizer and token shards (as `data build`/`tokenize` would)."""
    from pretrainlab.config import load_config
    from pretrainlab.tokenizer.shards import tokenize_corpus
    from pretrainlab.tokenizer.train import train_tokenizer

    rng = random.Random(0)
    for source, n_docs in (("prose", 60), ("code", 40)):
        for split, n in (("train", n_docs), ("heldout", n_docs // 10)):
            path = workdir / "clean" / source / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w") as fh:
                for i in range(n):
                    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 120)))
                    fh.write(json.dumps({"id": f"{source}-{split}-{i}", "text": text, "source": source, "meta": {}}) + "\n")
    (workdir / "clean" / "manifest.json").write_text(json.dumps({"manifest_id": "fault-matrix"}))
    cfg = load_config(None, [f"workdir={workdir}", *TINY, "tokenize.workers=1"])
    train_tokenizer(cfg)
    tokenize_corpus(cfg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(workdir: Path, mode: str, run: Path, *extra: str) -> list[str]:
    sets = [f"workdir={workdir}", *TINY, f"run.dir={run}", *extra]
    if mode != "one":
        sets.append(f"train.parallel={mode}")
    cli = ["-m", "pretrainlab.cli", "train", "--resume", "auto"] + [a for s in sets for a in ("--set", s)]
    if mode == "one":
        return [PY, *cli]
    return [PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()), *cli]


def launch(cmd: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


def finish(cmd: list[str], timeout: float = 300) -> tuple[int, str]:
    proc = launch(cmd)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def losses(run: Path) -> list[float]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("kind") == "train":
            out.append(rec["loss"])
    return out


def events(run: Path, name: str) -> list[dict]:
    path = run / "events.jsonl"
    recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    return [r for r in recs if r.get("event") == name]


def checkpoints(run: Path) -> list[str]:
    d = run / "checkpoints"
    return sorted(p.name for p in d.iterdir() if p.name.startswith("step_")) if d.is_dir() else []


def wait_for_steps(proc: subprocess.Popen, run: Path, n: int, deadline_s: float = 240) -> bool:
    end = time.time() + deadline_s
    while time.time() < end:
        if proc.poll() is not None:
            return False
        if len(losses(run)) >= n and checkpoints(run):
            return True
        time.sleep(0.005)
    return False


def deliver(proc: subprocess.Popen, how: str) -> None:
    if how == "kill -9":
        for pid in reversed(process_tree(proc.pid)):  # workers first, then the launcher: nobody reacts
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    elif how == "SIGINT":
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground process group
    else:
        proc.send_signal(signal.SIGTERM)  # scancel / kubelet: the launcher (torchrun forwards to workers)


def compare(run: Path, reference: list[float]) -> str | None:
    got = losses(run)
    if got == reference:
        return None
    if len(got) != len(reference):
        return f"{len(got)} steps logged, {len(reference)} expected"
    worst = max(abs(a - b) for a, b in zip(got, reference))
    return f"losses differ (max |diff| {worst:.3g})"


def tail(out: str, n: int = 1) -> str:
    lines = [x for x in out.strip().splitlines() if x.strip()]
    return " | ".join(lines[-n:])[-300:]


# --------------------------------------------------------------------------- cases


def case_signal(ctx, mode: str, how: str, seed: int) -> str:
    run = ctx.fresh(f"{how.replace(' ', '')}-{mode}")
    rng = random.Random(f"{how}-{mode}-{seed}")
    after, extra_s = rng.randint(3, STEPS - 4), rng.uniform(0.0, 0.02)
    proc = launch(command(ctx.workdir, mode, run))
    if not wait_for_steps(proc, run, after):
        return "FAILED: the run ended or stalled before the fault: " + tail(proc.communicate()[0], 2)
    time.sleep(extra_s)
    deliver(proc, how)
    out, _ = proc.communicate(timeout=120)
    stopped = losses(run)
    note = f"fault after step {len(stopped)}"
    if how != "kill -9":
        ev = events(run, "interrupted")
        if not ev:
            return f"FAILED: no checkpoint on {how} ({note}, exit {proc.returncode}): {tail(out, 2)}"
        want = {"one": 130 if how == "SIGINT" else 99}.get(mode)
        if want is not None and proc.returncode != want:
            return f"FAILED: exit {proc.returncode}, expected {want}: {tail(out)}"
        if f"step_{ev[-1]['step']:08d}" not in checkpoints(run) or ev[-1]["step"] != len(stopped):
            return f"FAILED: interrupted at step {len(stopped)} but saved {ev[-1].get('checkpoint')}"
        note = f"stopped at step {ev[-1]['step']} with its checkpoint, exit {proc.returncode}"
    rc, out = finish(command(ctx.workdir, mode, run))
    if rc != 0:
        return f"FAILED: resume exit {rc}: {tail(out, 2)}"
    bad = compare(run, ctx.reference(mode))
    return f"FAILED: {bad} ({note})" if bad else f"recovered, bit-identical ({note})"


CORRUPTIONS = {  # kind -> (checkpoint format, file pattern, how)
    "truncate model.pt": ("full", "model.pt", "half"),
    "empty optim.pt": ("full", "optim.pt", "empty"),
    "half state.json": ("full", "state.json", "half"),
    "flip a byte in model.pt": ("full", "model.pt", "flip"),
    "truncate a .distcp shard": ("sharded", "*.distcp", "half"),
    "truncate .metadata": ("sharded", ".metadata", "half"),
}


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "half":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:
        mid = len(data) // 2
        path.write_bytes(data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1:])


def case_corrupt(ctx, kind: str) -> str:
    fmt, pattern, how = CORRUPTIONS[kind]
    run = ctx.fresh("corrupt-" + re.sub(r"\W+", "-", kind))
    cmd = command(ctx.workdir, "one", run, f"checkpoint.format={fmt}")
    proc = launch(cmd)
    if not wait_for_steps(proc, run, 6):
        return "FAILED: the run ended or stalled before the fault: " + tail(proc.communicate()[0], 2)
    deliver(proc, "SIGTERM")  # a clean stop leaves a checkpoint of the stop step: the one to corrupt
    proc.communicate(timeout=120)
    newest = run / "checkpoints" / checkpoints(run)[-1]
    target = sorted(newest.glob(pattern))[0]
    damage(target, how)
    rc, out = finish(cmd)
    if rc != 0:
        return f"FAILED: resume exit {rc}: {tail(out)}"
    skipped = [line for line in out.splitlines() if "skipped" in line and newest.name[5:].lstrip("0") in line]
    bad = compare(run, ctx.reference("one" if fmt == "full" else "one-sharded"))
    if bad:
        return f"FAILED: {bad}"
    said = f"said: {skipped[0].strip()[:120]}" if skipped else "WITHOUT saying which checkpoint was skipped"
    return f"recovered, bit-identical ({newest.name} {target.name} damaged; {said})"


def case_disk_full(ctx, size_kb: int) -> str:
    run = ctx.fresh(f"diskfull-{size_kb}k")
    script = f"""
set -u
mkdir -p {run}
mount -t tmpfs -o size={size_kb}k tmpfs {run} || exit 90
{subprocess.list2cmdline(command(ctx.workdir, 'one', run))} > {run}.first.log 2>&1
echo $? > {run}.first.rc
find {run}/checkpoints -maxdepth 1 -name '.*' > {run}.leftovers 2>/dev/null
mount -o remount,size=262144k {run}
{subprocess.list2cmdline(command(ctx.workdir, 'one', run))} > {run}.second.log 2>&1
echo $? > {run}.second.rc
cp -a {run} {run}.copy
"""
    unshare = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    done = subprocess.run([*unshare, "bash", "-c", script], capture_output=True, text=True)
    if done.returncode == 90 or not Path(f"{run}.first.rc").exists():
        return f"skipped: cannot mount a tmpfs here ({(done.stderr or '').strip()[:100]})"
    first_rc = int(Path(f"{run}.first.rc").read_text())
    first = Path(f"{run}.first.log").read_text()
    second_rc = int(Path(f"{run}.second.rc").read_text())
    copy = Path(f"{run}.copy")
    leftovers = Path(f"{run}.leftovers").read_text().split()
    errors = [x for x in first.splitlines() if x.startswith("error:")]
    if first_rc == 0:
        return f"FAILED: the disk never filled (size {size_kb} KiB too large)"
    if "Traceback" in first or not errors:
        return f"FAILED: exit {first_rc} with a traceback: {tail(first)}"
    if leftovers:
        return f"FAILED: partial save left behind: {', '.join(Path(x).name for x in leftovers)}"
    if second_rc != 0:
        return f"FAILED: resume exit {second_rc}: {tail(Path(f'{run}.second.log').read_text())}"
    bad = compare(copy, ctx.reference("one"))
    stopped = len(losses_from_log(first))
    return (f"FAILED: {bad}" if bad else
            f"recovered, bit-identical (disk full after step {stopped}, exit {first_rc}: {errors[0][:110]})")


def losses_from_log(text: str) -> list[str]:
    return re.findall(r"^step\s+\d+/\d+ \| loss", text, re.M)


def case_bad_batches(ctx) -> str:
    poisoned = "[5,6,7,8,9,10]"  # wider than skip_batches: one rollback lands in it again
    extra = (f"guard.inject_nan_at_steps={poisoned}", "guard.rollback_after=2", "guard.skip_batches=1",
             "guard.max_rollbacks=3")
    results = []
    for attempt in ("a", "b"):
        run = ctx.fresh(f"badbatches-{attempt}")
        rc, out = finish(command(ctx.workdir, "one", run, *extra))
        if rc != 0:
            return f"FAILED: exit {rc}: {tail(out)}"
        results.append((run, losses(run)))
    (run, got), (_, again) = results
    rollbacks = events(run, "rollback")
    trained_on_poison = events(run, "inject_nan")
    if len(got) != STEPS or not all(math.isfinite(x) for x in got):
        return f"FAILED: {len(got)} steps, non-finite losses: {got}"
    if got != again:
        return "FAILED: two identical runs recovered differently"
    skipped = "; ".join(f"rollback {i + 1} skipped batches {e.get('skipped_data_batches', e.get('skipped_batches'))}"
                        for i, e in enumerate(rollbacks))
    return (f"recovered, reproducible ({len(rollbacks)} rollbacks, {len(trained_on_poison)} poisoned steps "
            f"skipped; {skipped})")


# --------------------------------------------------------------------------- driver


class Context:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self._refs: dict[str, list[float]] = {}
        self.n = 0

    def fresh(self, name: str) -> Path:
        """An empty run directory (a previous invocation's, and its side files, removed)."""
        self.n += 1
        path = self.workdir / "runs" / f"{self.n:02d}-{name}"
        for old in [path, *path.parent.glob(path.name + ".*")]:
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink(missing_ok=True)
        return path

    def reference(self, mode: str) -> list[float]:
        if mode not in self._refs:
            run = self.fresh(f"reference-{mode}")
            launcher = "one" if mode.startswith("one") else mode
            extra = ["checkpoint.format=sharded"] if mode == "one-sharded" else []
            rc, out = finish(command(self.workdir, launcher, run, *extra))
            if rc != 0:
                raise SystemExit(f"the uninterrupted {mode} run failed: {tail(out, 3)}")
            self._refs[mode] = losses(run)
        return self._refs[mode]


def all_cases(ctx) -> list[tuple[str, object]]:
    cases = []
    for how in ("kill -9", "SIGINT", "SIGTERM"):
        for mode in ("one", "fsdp2", "ddp"):
            label = {"one": "one process", "fsdp2": "FSDP2 x2", "ddp": "DDP x2"}[mode]
            cases.append((f"{how} / {label}", lambda h=how, m=mode: case_signal(ctx, m, h, 0)))
    for kind in CORRUPTIONS:
        fmt = CORRUPTIONS[kind][0]
        cases.append((f"corrupt newest ({fmt}): {kind}", lambda k=kind: case_corrupt(ctx, k)))
    for size in (300, 900, 1500, 2100):
        cases.append((f"disk full: {size} KiB volume", lambda s=size: case_disk_full(ctx, s)))
    cases.append(("repeated bad batches (NaN data 5-10)", lambda: case_bad_batches(ctx)))
    return cases


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="run the cases whose name contains this (case-insensitive)")
    ap.add_argument("--markdown", action="store_true", help="also print a markdown table")
    ap.add_argument("--workdir", default=None, help="where data and runs go (default: a temporary directory)")
    args = ap.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fault_matrix_")).resolve()
    if not (workdir / "tokens").exists():
        build_data(workdir)
    ctx = Context(workdir)
    rows, failed = [], 0
    t0 = time.time()
    for name, run_case in all_cases(ctx):
        if args.only and args.only.lower() not in name.lower():
            continue
        started = time.time()
        try:
            result = run_case()
        except Exception as exc:  # a harness failure is a row too, not the end of the matrix
            result = f"FAILED: {type(exc).__name__}: {exc}"
        failed += result.startswith("FAILED")
        rows.append((name, result, time.time() - started))
        print(f"{name:<48} {result}  [{time.time() - started:.0f} s]", flush=True)
    print(f"{len(rows) - failed}/{len(rows)} cases recovered in {time.time() - t0:.0f} s; runs under {workdir}")
    if args.markdown:
        print("\n| case | result |\n|---|---|")
        for name, result, _ in rows:
            print(f"| {name} | {result.replace('|', '/')} |")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
