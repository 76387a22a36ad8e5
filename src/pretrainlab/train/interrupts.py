"""Stop signals: Ctrl-C, SIGTERM and configured signals end training at a step boundary, checkpointed.

Clusters stop jobs with signals: Slurm preemption, ``scancel`` and Kubernetes send
SIGTERM (then SIGKILL after a grace period), and Slurm's ``--signal=USR1@300`` warns
ahead of a time limit. ``StopSignals`` installs handlers that only *record* the
signal, so a signal can never land between the optimizer update and the step
counter; the loop asks ``requested`` at the step boundary. Under torchrun the
trainer OR-s that flag over the ranks in the same all-reduce as the guards'
flags, so every rank stops after the same step and the collective save happens
together. The run then exits with a documented code (``exit_code``):

* 130 after SIGINT (Ctrl-C): the user stopped it;
* 99 (``EXIT_PREEMPTED``) after SIGTERM or another configured signal: a checkpoint
  of the stop step is complete and ``--resume auto`` continues: requeue the job.

To abandon a run at once, send SIGKILL: the newest complete checkpoint stays.
"""

from __future__ import annotations

import signal
import threading

EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's code for Ctrl-C
EXIT_PREEMPTED = 99  # checkpointed on a stop signal other than SIGINT: requeue / resubmit with --resume auto
UNCATCHABLE = ("SIGKILL", "SIGSTOP")


def signal_number(name: str) -> signal.Signals:
    """``"SIGTERM"``, ``"TERM"`` or ``"15"`` -> ``signal.SIGTERM``; ValueError naming the choices otherwise."""
    text = str(name).strip().upper()
    if text.isdigit():
        try:
            sig = signal.Signals(int(text))
        except ValueError:
            raise ValueError(f"no signal number {text} on this system") from None
    else:
        sig = getattr(signal, text if text.startswith("SIG") else f"SIG{text}", None)
        if not isinstance(sig, signal.Signals):
            raise ValueError(f"unknown signal {name!r}; use names like SIGTERM, SIGUSR1, SIGUSR2")
    if sig.name in UNCATCHABLE:
        raise ValueError(f"{sig.name} cannot be caught; use SIGTERM, SIGUSR1 or SIGUSR2")
    return sig


class StopSignals:
    """Records the first of ``names`` that arrives while installed (use as a context manager).

    Handlers are installed only from the main thread (Python's rule); elsewhere
    this does nothing and signals keep their previous behaviour.
    """

    def __init__(self, names: list[str] | tuple[str, ...]):
        self.signals = list(dict.fromkeys(signal_number(n) for n in names))
        self.received: signal.Signals | None = None
        self.count = 0
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum, frame) -> None:
        self.count += 1
        if self.received is None:
            self.received = signal.Signals(signum)

    def install(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        """Put back the handlers that were there before ``install``."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def __enter__(self) -> "StopSignals":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def name(self) -> str:
        return self.received.name if self.received is not None else "a stop signal"

    @property
    def exit_code(self) -> int:
        return EXIT_INTERRUPTED if self.received == signal.SIGINT else EXIT_PREEMPTED

