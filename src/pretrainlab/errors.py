"""User-facing errors: a mistake in a path, config or data prints one clear line and exits 2."""


class UserError(Exception):
    """A problem the user can fix. The message says what is wrong and how to fix it."""

    exit_code = 2


class ConfigError(UserError):
    """A config file or override is malformed, misspelled or has a wrong type."""


class DataError(UserError):
    """Input data is missing, empty or unreadable."""


class TrainingStopped(UserError):
    """A guard stopped training for good (e.g. the rollback limit was reached); the message says why."""

    exit_code = 3


class TrainingPaused(Exception):
    """A trend rule paused training after saving a checkpoint; `train --resume auto` continues it."""

    exit_code = 75  # EX_TEMPFAIL: "try again later", distinct from errors (2, 3) and Ctrl-C (130)

    def __init__(self, message: str, checkpoint: str | None = None):
        super().__init__(message)
        self.checkpoint = checkpoint


class TrainingInterrupted(Exception):
    """A stop signal (Ctrl-C, SIGTERM, ...) ended training at a step boundary after a checkpoint was saved.

    ``exit_code`` is 130 after Ctrl-C and 99 after SIGTERM or another configured signal
    (train/interrupts.py): a requeue script resubmits on 99 and `--resume auto` continues.
    """

    def __init__(self, message: str, exit_code: int, checkpoint: str | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.checkpoint = checkpoint
