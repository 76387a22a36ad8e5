"""Is a series going up or down? Least-squares slope with a Student-t significance test.

Used by the trend guards (loss rising / flat) and by the go/no-go gates (loss
decreasing). The t distribution's tail comes from the regularized incomplete
beta function (continued fraction, Numerical Recipes 6.4), so no SciPy is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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


def linear_trend(xs: list[float], ys: list[float]) -> Trend | None:
    """Ordinary least squares y = a + b x with a t-test on b; None with < 3 points or constant x."""
    pts = [(float(x), float(y)) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
    n = len(pts)
    if n < 3:
        return None
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if sxx <= 0:
        return None
    sxy = sum((x - mx) * (y - my) for x, y in pts)
    slope = sxy / sxx
    intercept = my - slope * mx
    sse = sum((y - intercept - slope * x) ** 2 for x, y in pts)
    df = n - 2
    stderr = math.sqrt(sse / df / sxx) if sse > 0 else 0.0
    if stderr > 0:
        t = slope / stderr
    else:
        t = math.inf if slope > 0 else (-math.inf if slope < 0 else 0.0)
    span = max(x for x, _ in pts) - min(x for x, _ in pts)
    return Trend(n, slope, intercept, stderr, t, t_sf(t, df), t_sf(-t, df), my, span)
