"""Training guards: the rules that skip bad steps, roll a run back, and pause it on bad trends.

``Guard`` is a trainer callback configured by ``GuardConfig`` (config section ``guard``):

* a step whose loss or gradient norm is not finite, or whose loss is a spike
  (above mean + z·std of the last ``spike_window`` accepted losses, once
  ``spike_warmup`` steps have passed), is a *bad step*: the optimizer update is
  skipped (``ctx.skip_step``);
* ``rollback_after`` consecutive bad steps, or ``rollback_max_in_window`` of them
  within ``rollback_window`` steps, ask the trainer to roll back to the newest
  complete checkpoint and skip the data past everything consumed up to the bad
  step plus ``skip_batches`` more (PaLM, §5.1), doubling that margin on each
  further rollback, so a rollback never replays the bad region;
  past ``max_rollbacks`` the run stops with ``TrainingStopped``;
* trend rules over a window of steps or wall-clock hours: the loss rising
  (significant positive slope) or flat (fitted decrease below ``flat_tolerance``)
  pauses the run or alerts; tokens/s below ``throughput_fraction`` of the
  median over the window (or over the history there is, while it is shorter) alerts.

On a step whose metrics are read later (not a log, checkpoint or validation step:
train/trainer.py ``read_metrics``) the bad-step test runs on the device against the
spike threshold of the losses read so far, and the update is skipped there (no
host sync); the skip's events, alerts and any rollback follow when the records
are read (``on_metrics_read``), at the next such step. With ``train.log_every=1``
every step is read at once, as before.

The guard decides; the trainer carries out rollbacks and pauses
(``ctx.request_rollback`` / ``ctx.request_pause``). Every decision is an event in
events.jsonl and, from warnings up, an alert (monitor/alerts.py).
``NanInjector`` poisons chosen batches for accident experiments and tests.
"""

from __future__ import annotations

import bisect
import math
import statistics
import time
from collections import deque
from typing import TYPE_CHECKING

import torch

from pretrainlab.config import GuardConfig, parse_window
from pretrainlab.errors import TrainingStopped
from pretrainlab.monitor.alerts import AlertManager
from pretrainlab.monitor.trend import linear_trend
from pretrainlab.train.callbacks import Callback

if TYPE_CHECKING:
    from pretrainlab.train.trainer import TrainContext

MIN_SPIKE_SAMPLES = 8  # losses needed in the window before a std means anything
MIN_TREND_POINTS = 8
MIN_THROUGHPUT_POINTS = 8  # logged tokens/s values before a median is a reference
MAX_SAVED_POINTS = 20_000  # trend points kept in a checkpoint (thinned beyond this)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


class Guard(Callback):
    def __init__(self, cfg: GuardConfig, alerts: AlertManager):
        self.cfg = cfg
        self.alerts = alerts
        self.losses: deque[float] = deque(maxlen=cfg.spike_window)
        self.bad_steps: deque[int] = deque()
        self.consecutive = 0
        self.rollbacks = 0
        self.skipped = 0
        # trend points: (step, unix time, loss) of accepted steps; throughput: (step, time, tokens/s)
        self.points: list[tuple[int, float, float]] = []
        self.tput: list[tuple[int, float, float]] = []
        self.tput_low = False
        self.last_alert_x: dict[str, float] = {}
        self.last_check_x: dict[str, float] = {}
        self.on_device: dict[int, tuple[torch.Tensor, float | None]] = {}  # step -> (bad flag, threshold), unread

    # ----------------------------------------------------------------- bad steps

    def spike_threshold(self, step: int) -> float | None:
        if step <= self.cfg.spike_warmup or len(self.losses) < MIN_SPIKE_SAMPLES:
            return None
        mean = statistics.fmean(self.losses)
        std = statistics.pstdev(self.losses, mean)
        return mean + self.cfg.spike_z * std

    def on_after_backward(self, ctx: "TrainContext", metrics: dict) -> None:
        step, loss, gnorm = metrics["step"], metrics["loss"], metrics["grad_norm"]
        if isinstance(loss, torch.Tensor):  # read later: decide on the device, settle in on_metrics_read
            self._decide_on_device(ctx, step, loss, gnorm)
            return
        if getattr(ctx, "rollback_request", None) is not None:  # asked for while reading earlier steps
            return
        reason, threshold = None, self.spike_threshold(step)
        if self.cfg.skip_nonfinite and not (_finite(loss) and _finite(gnorm)):
            reason = "nonfinite"
        elif threshold is not None and _finite(loss) and loss > threshold:
            reason = "spike"
        if reason is None:
            self.consecutive = 0
            if _finite(loss):
                self.losses.append(float(loss))
            return
        ctx.skip_step = True
        self._bad_step(ctx, metrics, reason, threshold)

    def _decide_on_device(self, ctx: "TrainContext", step: int, loss: torch.Tensor, gnorm: torch.Tensor) -> None:
        """The same test as on the host, as a device bool: non-finite loss or grad norm, or a spike."""
        threshold = self.spike_threshold(step)
        finite_loss = torch.isfinite(loss)
        bad = ~(finite_loss & torch.isfinite(gnorm)) if self.cfg.skip_nonfinite else torch.zeros_like(finite_loss)
        if threshold is not None:
            bad = bad | (finite_loss & (loss > threshold))
        self.on_device[step] = (bad, threshold)
        if ctx.skip_step is not True:  # another callback's host decision to skip stands
            ctx.skip_step = bad if ctx.skip_step is False else ctx.skip_step | bad

    def on_metrics_read(self, ctx: "TrainContext", records: list[dict]) -> None:
        """Steps decided on the device, now read: what ``on_after_backward`` would have done for each, in order."""
        pending = [(r, *self.on_device.pop(r["step"])) for r in records if r.get("step") in self.on_device]
        self.on_device.clear()
        if not pending:
            return
        flags = torch.stack([bad for _, bad, _ in pending]).tolist()
        for (r, _, threshold), bad in zip(pending, flags):
            if ctx.rollback_request is not None:  # a rollback discards the steps after it
                break
            loss, gnorm = r["loss"], r["grad_norm"]
            if bad:
                nonfinite = self.cfg.skip_nonfinite and not (_finite(loss) and _finite(gnorm))
                self._bad_step(ctx, r, "nonfinite" if nonfinite else "spike", threshold)
                continue
            self.consecutive = 0
            if _finite(loss):
                self.losses.append(float(loss))
                if not r.get("skipped"):  # the trend point on_step_end could not take from a device tensor
                    self.points.append((r["step"], r.get("time", time.time()), float(loss)))

    def _bad_step(self, ctx: "TrainContext", metrics: dict, reason: str, threshold: float | None) -> None:
        """A skipped update: count it, record it, alert, and ask for a rollback when the rules say so."""
        step, loss, gnorm = metrics["step"], metrics["loss"], metrics["grad_norm"]
        metrics["guard"] = reason
        self.skipped += 1
        self.consecutive += 1
        self.bad_steps.append(step)
        while self.bad_steps and self.bad_steps[0] <= step - self.cfg.rollback_window:
            self.bad_steps.popleft()
        details = {"reason": reason, "loss": loss if _finite(loss) else str(loss),
                   "grad_norm": gnorm if _finite(gnorm) else str(gnorm), "threshold": threshold,
                   "consecutive": self.consecutive, "in_window": len(self.bad_steps)}
        ctx.event("skip_step", step=step, **details)
        self.alerts.send("info", reason, f"skipped the update of step {step} ({reason}, loss {loss})", step)
        if self.consecutive >= self.cfg.rollback_after or len(self.bad_steps) >= self.cfg.rollback_max_in_window:
            self._rollback(ctx, step, reason)

    def _rollback(self, ctx: "TrainContext", step: int, reason: str) -> None:
        why = (f"{self.consecutive} consecutive bad steps" if self.consecutive >= self.cfg.rollback_after
               else f"{len(self.bad_steps)} bad steps within {self.cfg.rollback_window} steps")
        if self.rollbacks >= self.cfg.max_rollbacks:
            msg = (f"training stopped at step {step}: {why} ({reason}) after {self.rollbacks} rollback(s), the limit "
                   f"(guard.max_rollbacks={self.cfg.max_rollbacks}); lower optim.lr, check the data near this step, "
                   "or raise guard.max_rollbacks, then continue with --resume auto")
            ctx.event("stopped", step=step, reason=reason, rollbacks=self.rollbacks, message=msg)
            self.alerts.send("critical", "rollback_limit", msg, step)
            raise TrainingStopped(msg)
        self.rollbacks += 1
        self.consecutive = 0
        self.bad_steps.clear()
        extra = escalated_skip(self.cfg.skip_batches, self.rollbacks)
        resume_at = ctx.data_batches + extra
        ctx.request_rollback(reason=f"{reason}: {why}", skip_batches=extra, resume_at_batch=resume_at)
        self.alerts.send("warning", "rollback", f"{why} ({reason}): rolling back to the last checkpoint and skipping "
                         f"the data up to batch {resume_at}: past bad batch {ctx.data_batches} and {extra} more "
                         f"(rollback {self.rollbacks}/{self.cfg.max_rollbacks})", step)

    # ----------------------------------------------------------------- trends

    def on_step_end(self, ctx: "TrainContext", metrics: dict) -> None:
        step = metrics["step"]
        # After a rollback the step counter went back: drop the abandoned branch.
        while self.points and self.points[-1][0] >= step:
            self.points.pop()
        while self.tput and self.tput[-1][0] >= step:
            self.tput.pop()
        now = metrics.get("time", time.time())
        if _finite(metrics["loss"]) and not metrics.get("skipped"):  # a device tensor: added when read
            self.points.append((step, now, float(metrics["loss"])))
        prev = ctx.history[-1] if ctx.history else None  # the previous step, with its logged tokens/s
        if prev and _finite(prev.get("tokens_per_s")) and (not self.tput or self.tput[-1][0] < prev["step"]):
            self.tput.append((prev["step"], prev.get("time", now), float(prev["tokens_per_s"])))
            self._check_throughput(ctx, step)
        if step % ctx.cfg.train.log_every == 0:
            self._check_loss_trends(ctx, step)

    @staticmethod
    def _window(points, window: str, partial: bool = False):
        """Points inside the window ending at the last point; while history is shorter than the window,
        all of it if ``partial`` else None."""
        if not points:
            return None, None
        unit, size = parse_window(window)
        idx = 0 if unit == "steps" else 1
        scale = 1.0 if unit == "steps" else 3600.0
        last = points[-1][idx] / scale
        if last - points[0][idx] / scale < size:
            return (list(points) if partial else None), unit
        start = bisect.bisect_left(points, (last - size) * scale, key=lambda p: p[idx])  # x grows along the list
        return points[start:], unit

    def _fire(self, ctx, rule: str, action: str, message: str, step: int, x: float, **details) -> None:
        ctx.event("trend", step=step, rule=rule, action=action, message=message, **details)
        if action == "pause":
            self.alerts.send("critical", rule, message + "; training paused (continue with --resume auto)", step)
            self.points.clear()  # resuming acknowledges the alert: trends start over
            self.tput.clear()
            ctx.request_pause(rule, message)
        else:
            self.alerts.send("warning", rule, message, step)
            self.last_alert_x[rule] = x

    def _rearmed(self, rule: str, x: float, window: str) -> bool:
        """An alert-only rule fires again only a whole window after it last fired."""
        if rule not in self.last_alert_x:
            return True
        unit, size = parse_window(window)
        return (x - self.last_alert_x[rule]) / (1.0 if unit == "steps" else 3600.0) >= size

    def _due(self, rule: str, window: str) -> bool:
        """Check a window every 1/1000 of its length at most (a 72h window holds ~260k steps at 1 step/s)."""
        unit, size = parse_window(window)
        x = self.points[-1][0] if unit == "steps" else self.points[-1][1] / 3600.0
        if x - self.last_check_x.get(rule, -math.inf) < size / 1000:
            return False
        self.last_check_x[rule] = x
        return True

    def _check_loss_trends(self, ctx, step: int) -> None:
        cfg = self.cfg
        for rule, window, action in (("loss_rising", cfg.rising_window, cfg.rising_action),
                                     ("loss_flat", cfg.flat_window, cfg.flat_action)):
            if action == "off" or not self.points or not self._due(rule, window):
                continue
            pts, unit = self._window(self.points, window)
            if not pts or len(pts) < MIN_TREND_POINTS:
                continue
            xs = [p[0] if unit == "steps" else p[1] / 3600.0 for p in pts]
            trend = linear_trend(xs, [p[2] for p in pts])
            if trend is None:
                continue
            x_now = pts[-1][0] if unit == "steps" else pts[-1][1]
            if not self._rearmed(rule, x_now, window):
                continue
            rising = trend.slope > 0 and trend.p_increase < cfg.rising_alpha
            if rule == "loss_rising" and rising:
                msg = (f"loss rose over the last {window} (slope {trend.slope:.3g}/{unit[:-1]}, "
                       f"{100 * trend.rel_change:+.2f}%, p={trend.p_increase:.2g})")
            elif rule == "loss_flat" and not (rising and cfg.rising_action != "off") and trend.rel_change > -cfg.flat_tolerance:
                msg = (f"loss flat over the last {window}: fitted change {100 * trend.rel_change:+.3f}% "
                       f"(needs < -{100 * cfg.flat_tolerance:.3g}%)")
            else:
                continue
            self._fire(ctx, rule, action, msg, step, x_now, window=window, slope=trend.slope,
                       rel_change=trend.rel_change, p_increase=trend.p_increase, points=trend.n)
            if action == "pause":
                return

    def _check_throughput(self, ctx, step: int) -> None:
        cfg = self.cfg
        if cfg.throughput_action == "off":
            return
        # The reference is the median of the history there is, up to one window: a drop early in a run counts too.
        pts, unit = self._window(self.tput, cfg.throughput_window, partial=True)
        if not pts or len(pts) < MIN_THROUGHPUT_POINTS:
            return
        reference = statistics.median(p[2] for p in pts)
        current = statistics.median(p[2] for p in self.tput[-3:])
        low = current < cfg.throughput_fraction * reference
        if low and not self.tput_low:
            msg = (f"throughput {current:,.0f} tokens/s is below {cfg.throughput_fraction:.0%} of its median "
                   f"{reference:,.0f} over the last {cfg.throughput_window}")
            x_now = pts[-1][0] if unit == "steps" else pts[-1][1]
            self._fire(ctx, "throughput_drop", cfg.throughput_action, msg, step, x_now,
                       tokens_per_s=current, median=reference)
        elif not low and self.tput_low:
            ctx.event("trend", rule="throughput_recovered", action="none", tokens_per_s=current, median=reference)
        self.tput_low = low

    # ----------------------------------------------------------------- checkpointed state

    def state_dict(self) -> dict:
        pts = self.points
        if len(pts) > MAX_SAVED_POINTS:
            k = math.ceil(len(pts) / MAX_SAVED_POINTS)
            pts = pts[::k] + ([pts[-1]] if (len(pts) - 1) % k else [])
        return {"losses": list(self.losses), "bad_steps": list(self.bad_steps), "consecutive": self.consecutive,
                "rollbacks": self.rollbacks, "skipped": self.skipped, "points": [list(p) for p in pts],
                "tput": [list(p) for p in self.tput[-MAX_SAVED_POINTS:]], "tput_low": self.tput_low,
                "last_alert_x": dict(self.last_alert_x)}

    def load_state_dict(self, state: dict) -> None:
        self.losses = deque(state.get("losses", []), maxlen=self.cfg.spike_window)
        self.bad_steps = deque(state.get("bad_steps", []))
        self.consecutive = state.get("consecutive", 0)
        self.rollbacks = state.get("rollbacks", 0)
        self.skipped = state.get("skipped", 0)
        self.points = [tuple(p) for p in state.get("points", [])]
        self.tput = [tuple(p) for p in state.get("tput", [])]
        self.tput_low = state.get("tput_low", False)
        self.last_alert_x = dict(state.get("last_alert_x", {}))


def escalated_skip(skip_batches: int, rollback_number: int) -> int:
    """Batches skipped past the bad step's data on the ``rollback_number``-th rollback: doubles each time.

    The first rollback skips ``skip_batches`` beyond everything consumed up to the
    bad step; a further one means the bad region is wider than that, so the gap grows.
    """
    return skip_batches * 2 ** (rollback_number - 1)


class NanInjector(Callback):
    """Accident experiment: the data batches an uninterrupted run trains on at ``steps`` are poisoned.

    Poisoning follows the data, not the step counter (``ctx.data_batches``), so a
    rollback that skips those batches gets past it, as with a real bad batch:
    the gradients and the loss of a poisoned step become NaN.
    """

    def __init__(self, steps: list[int]):
        self.batches = set(steps)

    def on_after_backward(self, ctx: "TrainContext", metrics: dict) -> None:
        if ctx.data_batches not in self.batches:
            return
        for p in ctx.raw_model.parameters():
            if p.grad is not None:
                p.grad.fill_(math.nan)
        metrics["loss"] = math.nan
        metrics["grad_norm"] = math.nan
        ctx.event("inject_nan", step=metrics["step"], data_batch=ctx.data_batches)


def build_guard_callbacks(ctx: "TrainContext") -> list[Callback]:
    """The callbacks ``cfg.guard`` asks for (injector first, so the guard sees the poison)."""
    cfg = ctx.cfg
    out: list[Callback] = []
    if cfg.guard.inject_nan_at_steps:
        out.append(NanInjector(cfg.guard.inject_nan_at_steps))
    if cfg.guard.enabled:
        alerts = AlertManager(cfg.alerts, ctx.run_dir, cfg.run.name if cfg.run.dir is None else ctx.run_dir.name,
                              enabled=ctx.is_main)
        out.append(Guard(cfg.guard, alerts))
    return out
