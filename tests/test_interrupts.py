"""Stop signals are recorded, not acted on, until the training loop reaches a step boundary; then it saves and exits."""

import os
import signal
import subprocess
import sys
import time

import pytest

from pretrainlab.errors import TrainingInterrupted
from pretrainlab.fsio import iter_jsonl
from pretrainlab.train import checkpoint as ckpt
from pretrainlab.train.callbacks import Callback
from pretrainlab.train.interrupts import EXIT_INTERRUPTED, EXIT_PREEMPTED, StopSignals, signal_number


def test_a_stop_signal_only_sets_a_flag_and_the_previous_handlers_come_back():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGTERM)}
    with StopSignals(["SIGTERM", "SIGUSR1"]) as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGUSR1)  # the default action would end the process
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.name == "SIGUSR1" and stop.count == 2  # the first one is remembered
        assert stop.exit_code == EXIT_PREEMPTED
    assert all(signal.getsignal(sig) is handler for sig, handler in before.items())


def test_ctrl_c_exits_130_and_no_keyboard_interrupt_is_raised_while_installed():
    with StopSignals(["SIGINT"]) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        total = sum(range(1000))  # Python would raise KeyboardInterrupt here without the handler
    assert total == 499500 and stop.exit_code == EXIT_INTERRUPTED == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_signal_names_are_parsed_and_uncatchable_ones_refused():
    assert signal_number("term") == signal_number("SIGTERM") == signal_number("15") == signal.SIGTERM
    with pytest.raises(ValueError, match="SIGKILL cannot be caught"):
        signal_number("KILL")
    with pytest.raises(ValueError, match="unknown signal 'SIGFOO'"):
        signal_number("SIGFOO")


# --------------------------------------------------------------------------- in the training loop

class SignalAfterUpdate(Callback):
    """Delivers ``sig`` to this process from inside AdamW.step's post-hook, after update number ``n``."""

    def __init__(self, n: int, sig=signal.SIGINT):
        self.n, self.sig, self.updates = n, sig, 0

    def on_train_start(self, ctx):
        def hook(optimizer, args, kwargs):
            self.updates += 1
            if self.updates == self.n:
                os.kill(os.getpid(), self.sig)  # without a handler: KeyboardInterrupt before the step counter moves

        ctx.optimizer.register_step_post_hook(hook)


def train_losses(run_dir):
    return [r["loss"] for r in iter_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]


def test_ctrl_c_right_after_the_optimizer_update_finishes_that_step_saves_it_and_resumes_exactly(tiny_cfg, tmp_path):
    from pretrainlab.recipes import train

    full = train(tiny_cfg(f"run.dir={tmp_path / 'full'}", "guard.enabled=false"))
    cfg = tiny_cfg(f"run.dir={tmp_path / 'split'}", "guard.enabled=false", "checkpoint.every=100")
    with pytest.raises(TrainingInterrupted) as info:
        train(cfg, callbacks=[SignalAfterUpdate(7)])
    assert info.value.exit_code == 130 and info.value.checkpoint.endswith("step_00000007")
    (event,) = [e for e in iter_jsonl(cfg.run_dir / "events.jsonl") if e["event"] == "interrupted"]
    assert (event["signal"], event["step"]) == ("SIGINT", 7)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is gone after the run
    assert train(cfg)["losses"] == full["losses"][7:]  # step 7 holds exactly 7 updates
    assert train_losses(cfg.run_dir) == full["losses"]


class RaiseInUpdate(Callback):
    """Raises KeyboardInterrupt from AdamW.step's post-hook at update ``n`` (the update is applied, the counter not)."""

    def __init__(self, n: int):
        self.n, self.updates = n, 0

    def on_train_start(self, ctx):
        def hook(optimizer, args, kwargs):
            self.updates += 1
            if self.updates == self.n:
                raise KeyboardInterrupt

        ctx.optimizer.register_step_post_hook(hook)


def test_a_keyboard_interrupt_inside_the_update_never_saves_a_checkpoint_with_more_updates_than_its_step(tiny_cfg,
                                                                                                         tmp_path):
    from pretrainlab.recipes import train

    full = train(tiny_cfg(f"run.dir={tmp_path / 'full'}", "guard.enabled=false"))
    cfg = tiny_cfg(f"run.dir={tmp_path / 'split'}", "guard.enabled=false")  # checkpoint.every=4
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[RaiseInUpdate(7)])
    assert ckpt.latest_checkpoint(cfg.run_dir).name == "step_00000004"  # not a "step 6" holding 7 updates
    assert train(cfg)["losses"] == full["losses"][4:]


@pytest.mark.slow
def test_sigterm_to_the_cli_saves_the_step_exits_99_in_one_line_and_resume_is_exact(tiny_data, tiny_cfg, tmp_path):
    from conftest import tiny_overrides
    from pretrainlab.recipes import train

    full = train(tiny_cfg(f"run.dir={tmp_path / 'full'}"))
    run = tmp_path / "split"
    args = [sys.executable, "-m", "pretrainlab.cli", "train", "--resume", "auto"]
    for o in tiny_overrides(tiny_data) + [f"run.dir={run}"]:
        args += ["--set", o]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while len(train_losses(run) if (run / "metrics.jsonl").exists() else []) < 5:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 99, err[-3000:]
    stopped = len(train_losses(run))
    assert err.strip().splitlines()[-1].startswith(f"interrupted: SIGTERM: stopped at step {stopped}")
    assert "Traceback" not in err and ckpt.latest_checkpoint(run).name == f"step_{stopped:08d}"
    resumed = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert train_losses(run) == full["losses"]
