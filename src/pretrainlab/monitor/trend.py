"""Is a series going up or down? Least-squares slope with a Student-t significance test.

Used by the trend guards (loss rising / flat) and by the go/no-go gates (loss
decreasing). The t distribution's tail comes from the regularized incomplete
beta function (continued fraction, Numerical Recipes 6.4), so no SciPy is needed;
the fit itself is vectorized (numpy) because windows can hold 100k+ steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _betacf(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(ln_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t > 0 else 1.0 - tail


@dataclass
class Trend:
    n: int
    slope: float  # change of y per unit of x
    intercept: float
    stderr: float  # standard error of the slope
    t: float
    p_increase: float  # one-sided p-value of "slope > 0"
    p_decrease: float  # one-sided p-value of "slope < 0"
    mean: float
    x_span: float

    @property
    def change(self) -> float:
        """Fitted change of y across the window."""
        return self.slope * self.x_span

    @property
    def rel_change(self) -> float:
        """Fitted change across the window as a fraction of |mean y|."""
        return self.change / abs(self.mean) if self.mean else math.inf * (1 if self.change > 0 else -1)


def linear_trend(xs, ys) -> Trend | None:
    """Ordinary least squares y = a + b x with a t-test on b; None with < 3 points or constant x."""
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    if n < 3:
        return None
    mx, my = float(x.mean()), float(y.mean())
    dx = x - mx
    sxx = float(dx @ dx)
    if sxx <= 0:
        return None
    slope = float(dx @ (y - my)) / sxx
    intercept = my - slope * mx
    resid = y - intercept - slope * x
    sse = float(resid @ resid)
    df = n - 2
    stderr = math.sqrt(sse / df / sxx) if sse > 0 else 0.0
    if stderr > 0:
        t = slope / stderr
    else:
        t = math.inf if slope > 0 else (-math.inf if slope < 0 else 0.0)
    span = float(x.max() - x.min())
    return Trend(n, slope, intercept, stderr, t, t_sf(t, df), t_sf(-t, df), my, span)
