"""Compiled whole-volume variable-projection fit for the exponential bases (numba; numpy fallback in ``engine``).

One pass over blocks of voxels does everything per voxel: gather the samples straight from the (N, ...)
image stack (no transposed copy of the volume), score a log-spaced grid of the nonlinear parameter with the
orthonormalised bases (float64), then safeguarded Newton on the exact 1-D reduced cost
``cost(u) = |y|^2 - r^T A^-1 r`` (``u = log theta``, ``A = Phi^T Phi``, ``r = Phi^T y``) with analytic first and
second derivatives, kept inside the bracket of the best grid point (bisection when a Newton step leaves it), and
finally the goodness-of-fit values. Magnitude IR refines both polarity-restoration candidates (Barral 2010
RD-NLS-PR: the samples up to, or before, the smallest one negated) and keeps the lower RSS. Every voxel is
independent, so the result does not depend on the thread count. The kernels release the GIL and Python threads
share the voxels (cheaper to compile than a ``parallel=True`` loop, and no threading layer is needed).

Basis kinds (columns of Phi for rate r = 1/theta): 0 ``[e^(-t r)]``; 1 ``[e^(-t r), 1]``; 2 ``[1, e^(-t r)]``;
3 ``[1 + e^(-TR r), e^(-t r)]`` (IR with per-image TR).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

try:  # numba is a runtime dependency; without it the engine uses its numpy path
    import numba
except ImportError:  # pragma: no cover - declared dependency
    numba = None

KIND_EXP, KIND_EXP_OFFSET, KIND_IR, KIND_IR_TR = 0, 1, 2, 3

# status bits, the same values as engine.STATUS_* (engine imports this module; a test checks they agree)
_INVALID, _AT_BOUND, _NOT_CONVERGED, _DEGENERATE = 2, 4, 8, 16

# columns of the per-voxel result
OUT_U, OUT_RSS, OUT_C1, OUT_C2, OUT_STATUS, OUT_CUT, OUT_R2, OUT_RMSE, OUT_YMAX, OUT_MODEL_MIN = range(10)
N_OUT = 10

BLOCK = 256  # voxels gathered per parallel work item (a (BLOCK, N) float64 buffer stays in L2)
NEWTON_TOL = 1e-5  # last Newton step on log theta; the error left after it is ~step^2 (quadratic convergence)
MAX_ITERATIONS = 60
SECOND_CANDIDATE_RATIO = 1.5


def _jit(**options):
    def wrap(function):
        if numba is None:
            return function
        return numba.njit(cache=True, nogil=True, **options)(function)

    return wrap


@_jit()
def _decays(times, tr, kind, uniform, rate, es, gs):
    """Fill ``es[i] = e^(-t_i r)`` (powers of one exponential for equally spaced times) and, for kind 3,
    ``gs[i] = e^(-TR_i r)``."""
    n = times.shape[0]
    if uniform:  # four interleaved power chains: the multiplications do not wait on each other
        factor = math.exp(-(times[1] - times[0]) * rate)
        v0 = math.exp(-times[0] * rate)
        v1 = v0 * factor
        v2 = v1 * factor
        v3 = v2 * factor
        factor4 = (factor * factor) * (factor * factor)
        i = 0
        while i + 4 <= n:
            es[i] = v0
            es[i + 1] = v1
            es[i + 2] = v2
            es[i + 3] = v3
            v0 *= factor4
            v1 *= factor4
            v2 *= factor4
            v3 *= factor4
            i += 4
        if i < n:
            es[i] = v0
        if i + 1 < n:
            es[i + 1] = v1
        if i + 2 < n:
            es[i + 2] = v2
    else:
        for i in range(n):
            es[i] = math.exp(-times[i] * rate)
    if kind == 3:
        for i in range(n):
            gs[i] = math.exp(-tr[i] * rate)


@_jit(fastmath={"contract", "reassoc"})
def _pass(y, yy, times, tr, kind, uniform, u, es, gs):
    """Exact reduced cost at theta = e^u and its derivatives in u:
    (cost, c1, c2, d cost/du, d2 cost/du2, degenerate, d c1/du, d c2/du).

    With s = r^T A^-1 r (the explained energy) and c = A^-1 r:
    s' = 2 r'.c - c.A'.c and s'' = 2 r''.c - c.A''.c + 2 w.A^-1.w with w = r' - A'.c; c' = A^-1 w;
    cost = |y|^2 - s.
    Column derivatives need no extra exponential: d e/du = x e and d2 e/du2 = (x - 1) x e with x = t r.
    """
    n = y.shape[0]
    rate = math.exp(-u)
    _decays(times, tr, kind, uniform, rate, es, gs)
    if kind == 0:
        a = 0.0
        p = 0.0
        q = 0.0
        r = 0.0
        r1 = 0.0
        r2 = 0.0
        for i in range(n):
            e = es[i]
            x = times[i] * rate
            d1 = x * e
            d2 = (x - 1.0) * d1
            yi = y[i]
            a += e * e
            p += e * d1
            q += d1 * d1 + e * d2
            r += e * yi
            r1 += d1 * yi
            r2 += d2 * yi
        if a <= 1e-300:
            return yy, 0.0, 0.0, 0.0, 0.0, True, 0.0, 0.0
        c = r / a
        w = r1 - 2.0 * p * c
        s1 = 2.0 * r1 * c - 2.0 * p * c * c
        s2 = 2.0 * r2 * c - 2.0 * q * c * c + 2.0 * w * w / a
        return yy - c * r, c, 0.0, -s1, -s2, False, w / a, 0.0
    # two columns: per sample value f, first derivative g and second derivative h of each column
    a11 = 0.0
    a12 = 0.0
    a22 = 0.0
    p11 = 0.0
    p12 = 0.0
    p22 = 0.0
    q11 = 0.0
    q12 = 0.0
    q22 = 0.0
    b1 = 0.0
    b2 = 0.0
    g1y = 0.0
    g2y = 0.0
    h1y = 0.0
    h2y = 0.0
    for i in range(n):
        e = es[i]
        x = times[i] * rate
        de = x * e
        dde = (x - 1.0) * de
        if kind == 1:
            f1, g1, h1, f2, g2, h2 = e, de, dde, 1.0, 0.0, 0.0
        elif kind == 2:
            f1, g1, h1, f2, g2, h2 = 1.0, 0.0, 0.0, e, de, dde
        else:
            xt = tr[i] * rate
            dg = xt * gs[i]
            f1, g1, h1, f2, g2, h2 = 1.0 + gs[i], dg, (xt - 1.0) * dg, e, de, dde
        yi = y[i]
        a11 += f1 * f1
        a12 += f1 * f2
        a22 += f2 * f2
        p11 += f1 * g1
        p12 += g1 * f2 + f1 * g2
        p22 += f2 * g2
        q11 += g1 * g1 + f1 * h1
        q12 += h1 * f2 + 2.0 * g1 * g2 + f1 * h2
        q22 += g2 * g2 + f2 * h2
        b1 += f1 * yi
        b2 += f2 * yi
        g1y += g1 * yi
        g2y += g2 * yi
        h1y += h1 * yi
        h2y += h2 * yi
    det = a11 * a22 - a12 * a12
    if det <= 1e-12 * a11 * a22:
        c1 = b1 / a11 if a11 > 0 else 0.0
        return yy - c1 * b1, c1, 0.0, 0.0, 0.0, True, 0.0, 0.0
    c1 = (a22 * b1 - a12 * b2) / det
    c2 = (a11 * b2 - a12 * b1) / det
    # A' = [[2 p11, p12], [p12, 2 p22]], A'' = [[2 q11, q12], [q12, 2 q22]]
    w1 = g1y - (2.0 * p11 * c1 + p12 * c2)
    w2 = g2y - (p12 * c1 + 2.0 * p22 * c2)
    cac = 2.0 * p11 * c1 * c1 + 2.0 * p12 * c1 * c2 + 2.0 * p22 * c2 * c2
    caac = 2.0 * q11 * c1 * c1 + 2.0 * q12 * c1 * c2 + 2.0 * q22 * c2 * c2
    waw = (a22 * w1 * w1 - 2.0 * a12 * w1 * w2 + a11 * w2 * w2) / det
    s1 = 2.0 * (g1y * c1 + g2y * c2) - cac
    s2 = 2.0 * (h1y * c1 + h2y * c2) - caac + 2.0 * waw
    dc1 = (a22 * w1 - a12 * w2) / det
    dc2 = (a11 * w2 - a12 * w1) / det
    return yy - c1 * b1 - c2 * b2, c1, c2, -s1, -s2, False, dc1, dc2


@_jit()
def _newton(y, yy, times, tr, kind, uniform, u, lo, hi, es, gs):
    """Safeguarded Newton (rtsafe) on d cost/du inside [lo, hi]; returns (u, cost, c1, c2, degenerate, converged).

    A Newton step shorter than ``NEWTON_TOL`` is taken without another pass: convergence is quadratic, so the
    error left in u is of order step^2, and the amplitudes and cost move along their derivatives.
    """
    converged = False
    cost, c1, c2, grad, hess, degenerate = yy, 0.0, 0.0, 0.0, 0.0, False
    for _ in range(MAX_ITERATIONS):
        cost, c1, c2, grad, hess, degenerate, dc1, dc2 = _pass(y, yy, times, tr, kind, uniform, u, es, gs)
        if degenerate or not (math.isfinite(grad) and math.isfinite(hess)):
            break
        if grad > 0.0:
            hi = u
        elif grad < 0.0:
            lo = u
        else:
            converged = True
            break
        new = 0.5 * (lo + hi)
        if hess > 0.0:
            trial = u - grad / hess
            if lo <= trial <= hi:
                new = trial
                shift = trial - u
                if abs(shift) < NEWTON_TOL:
                    u = trial
                    c1 += dc1 * shift
                    c2 += dc2 * shift
                    cost += 0.5 * grad * shift
                    converged = True
                    break
        if hi - lo < NEWTON_TOL:
            converged = True
            break
        u = new
    return u, cost, c1, c2, degenerate, converged


@_jit(fastmath={"contract"})
def _grid_scores(ys, q, n_grid, n_cols, acc, scores, best):
    """Explained energy ``scores[g, v]`` of every grid point for every voxel (column) of ``ys`` (N, M), and the
    best grid index per voxel in ``best``.

    Voxels are the innermost loop (SIMD across voxels), four samples per sweep to keep the stores down; the
    running maximum has no branches.
    """
    n, m = ys.shape
    for v in range(m):
        best[v] = 0
    for g in range(n_grid):
        for v in range(m):
            scores[g, v] = 0.0
        for k in range(n_cols):
            column = k * n_grid + g
            for v in range(m):
                acc[v] = 0.0
            i = 0
            while i + 4 <= n:
                w0 = q[i, column]
                w1 = q[i + 1, column]
                w2 = q[i + 2, column]
                w3 = q[i + 3, column]
                for v in range(m):
                    acc[v] += w0 * ys[i, v] + w1 * ys[i + 1, v] + w2 * ys[i + 2, v] + w3 * ys[i + 3, v]
                i += 4
            while i < n:
                w0 = q[i, column]
                for v in range(m):
                    acc[v] += w0 * ys[i, v]
                i += 1
            for v in range(m):
                scores[g, v] += acc[v] * acc[v]
        if g > 0:
            for v in range(m):
                best[v] = g if scores[g, v] > scores[best[v], v] else best[v]


@_jit()
def _grid_best(scores, v, best):
    """(best grid index, parabola-vertex offset in grid steps, estimated best score) of voxel v."""
    n_grid = scores.shape[0]
    if best == 0 or best == n_grid - 1:
        return best, 0.0, scores[best, v]
    s_minus = scores[best - 1, v]
    s_zero = scores[best, v]
    s_plus = scores[best + 1, v]
    curvature = s_minus - 2.0 * s_zero + s_plus
    if curvature < 0.0:
        delta = min(max(0.5 * (s_minus - s_plus) / curvature, -0.5), 0.5)
        return best, delta, s_zero - 0.25 * (s_minus - s_plus) * delta
    return best, 0.0, s_zero


@_jit()
def _search(y, yy, best, delta, times, tr, kind, uniform, n_grid, log_lo, log_hi, step, es, gs, result):
    """Newton from grid point ``best`` (+ ``delta`` steps) inside its bracket; writes (u, cost, c1, c2, status)."""
    status = 0
    if best == 0 or best == n_grid - 1:
        bound = log_lo if best == 0 else log_hi
        cost, c1, c2, grad, hess, degenerate, _, _ = _pass(y, yy, times, tr, kind, uniform, bound, es, gs)
        outward = grad >= 0.0 if best == 0 else grad <= 0.0
        if outward or degenerate:
            result[0] = bound
            result[1] = max(cost, 0.0)
            result[2] = c1
            result[3] = c2
            result[4] = _AT_BOUND | (_DEGENERATE if degenerate else 0)
            return
        lo = log_lo if best == 0 else log_hi - step
        hi = log_lo + step if best == 0 else log_hi
        u0 = 0.5 * (lo + hi)
    else:  # start at the vertex of the parabola through the scores of the grid neighbours
        u0 = log_lo + step * (best + delta)
        lo = log_lo + step * (best - 1)
        hi = log_lo + step * (best + 1)
    u, cost, c1, c2, degenerate, converged = _newton(y, yy, times, tr, kind, uniform, u0, lo, hi, es, gs)
    if u <= log_lo + 1e-9 or u >= log_hi - 1e-9:
        status |= _AT_BOUND
    elif not converged:
        status |= _NOT_CONVERGED
    if degenerate:
        status |= _DEGENERATE
    result[0] = u
    result[1] = max(cost, 0.0)
    result[2] = c1
    result[3] = c2
    result[4] = status


@_jit()
def _model_min(times, tr, kind, uniform, u, c1, c2, es, gs):
    """Smallest |model| over the samples (near zero: a sample sits at the IR null)."""
    _decays(times, tr, kind, uniform, math.exp(-u), es, gs)
    smallest = math.inf
    for i in range(times.shape[0]):
        if kind == 0:
            model = c1 * es[i]
        elif kind == 1:
            model = c1 * es[i] + c2
        elif kind == 2:
            model = c1 + c2 * es[i]
        else:
            model = c1 * (1.0 + gs[i]) + c2 * es[i]
        smallest = min(smallest, abs(model))
    return smallest


@_jit()
def _fit_block(samples, q, times, tr, kind, uniform, polarity, n_grid, n_cols, log_lo, log_hi, out):
    """Fit the voxels (columns) of ``samples`` (N, M; magnitude already taken where asked); rows of ``out``.

    Polarity restoration: candidate A negates the samples up to the smallest one, B those before it. The one with
    the better grid estimate is refined; the other too unless its estimated RSS exceeds
    ``SECOND_CANDIDATE_RATIO`` times the refined RSS of the first (then it cannot win: the grid estimate is
    within a small fraction of its refined optimum).
    """
    n, m = samples.shape
    step = (log_hi - log_lo) / (n_grid - 1)
    total = np.zeros(m)
    yy = np.zeros(m)
    peak = np.zeros(m)
    for i in range(n):
        for v in range(m):
            value = samples[i, v]
            total[v] += value
            yy[v] += value * value
            peak[v] = max(peak[v], abs(value))
    k_min = np.zeros(m, dtype=np.int64)
    if polarity:
        for v in range(m):
            for i in range(1, n):
                if samples[i, v] < samples[k_min[v], v]:
                    k_min[v] = i
    valid = np.empty(m, dtype=np.bool_)
    for v in range(m):
        valid[v] = math.isfinite(yy[v]) and peak[v] > 0.0
        if not valid[v]:
            for i in range(n):
                samples[i, v] = 0.0
    signed_a = samples
    signed_b = samples
    if polarity:
        signed_a = np.empty((n, m))
        signed_b = np.empty((n, m))
        for i in range(n):
            for v in range(m):
                value = samples[i, v]
                signed_a[i, v] = -value if i <= k_min[v] else value
                signed_b[i, v] = -value if i < k_min[v] else value
    acc = np.empty(m)
    scores_a = np.empty((n_grid, m))
    scores_b = scores_a
    grid_a = np.empty(m, dtype=np.int64)
    grid_b = grid_a
    _grid_scores(signed_a, q, n_grid, n_cols, acc, scores_a, grid_a)
    if polarity:
        scores_b = np.empty((n_grid, m))
        grid_b = np.empty(m, dtype=np.int64)
        _grid_scores(signed_b, q, n_grid, n_cols, acc, scores_b, grid_b)
    y = np.empty(n)
    es = np.empty(n)
    gs = np.empty(n)
    result_a = np.empty(5)
    result_b = np.empty(5)
    for v in range(m):
        row = out[v]
        if not valid[v]:
            for j in range(row.shape[0]):
                row[j] = 0.0
            row[OUT_STATUS] = _INVALID
            continue
        best_a, delta_a, estimate_a = _grid_best(scores_a, v, grid_a[v])
        for i in range(n):
            y[i] = signed_a[i, v]
        if not polarity:
            _search(y, yy[v], best_a, delta_a, times, tr, kind, uniform, n_grid, log_lo, log_hi, step, es, gs, result_a)
            chosen = result_a
            cut = 0
        else:
            best_b, delta_b, estimate_b = _grid_best(scores_b, v, grid_b[v])
            first_is_a = estimate_a >= estimate_b
            if not first_is_a:
                y[k_min[v]] = -y[k_min[v]]
            first, second = (result_a, result_b) if first_is_a else (result_b, result_a)
            best_1, delta_1 = (best_a, delta_a) if first_is_a else (best_b, delta_b)
            best_2, delta_2 = (best_b, delta_b) if first_is_a else (best_a, delta_a)
            _search(y, yy[v], best_1, delta_1, times, tr, kind, uniform, n_grid, log_lo, log_hi, step, es, gs, first)
            second[1] = math.inf
            estimate_2 = yy[v] - min(estimate_a, estimate_b)
            if estimate_2 <= SECOND_CANDIDATE_RATIO * first[1] + 1e-12 * yy[v]:
                y[k_min[v]] = -y[k_min[v]]
                _search(
                    y, yy[v], best_2, delta_2, times, tr, kind, uniform, n_grid, log_lo, log_hi, step, es, gs, second
                )
            chosen = result_a
            cut = k_min[v] + 1
            if result_b[1] < result_a[1]:
                chosen = result_b
                cut = k_min[v]
        rss = chosen[1]
        for j in range(5):
            row[j] = chosen[j]
        row[OUT_CUT] = cut
        ss_tot = yy[v] - total[v] * total[v] / n
        row[OUT_R2] = 1.0 - rss / ss_tot if ss_tot > 0.0 else 0.0
        row[OUT_RMSE] = math.sqrt(rss / n)
        row[OUT_YMAX] = peak[v]
        row[OUT_MODEL_MIN] = (
            _model_min(times, tr, kind, uniform, chosen[0], chosen[2], chosen[3], es, gs) if polarity else 0.0
        )


@_jit()
def _fit_range(
    data, order, index, q, times, tr, kind, uniform, absolute, polarity, n_grid, n_cols, log_lo, log_hi, out
):
    """Fit the voxels ``index`` block by block into the rows of ``out`` (releases the GIL: threads share the work)."""
    n_vox = index.shape[0]
    n = order.shape[0]
    for start in range(0, n_vox, BLOCK):
        stop = min(start + BLOCK, n_vox)
        samples = np.empty((n, stop - start))
        for i in range(n):  # gather: one contiguous run of each image per block
            row = data[order[i]]
            for j in range(stop - start):
                value = row[index[start + j]]
                samples[i, j] = abs(value) if absolute else value
        _fit_block(samples, q, times, tr, kind, uniform, polarity, n_grid, n_cols, log_lo, log_hi, out[start:stop])


def thread_count() -> int:
    """Worker threads: NUMBA_NUM_THREADS (default: the CPUs this process may use)."""
    if numba is not None:
        return max(1, int(numba.config.NUMBA_NUM_THREADS))
    return max(1, os.cpu_count() or 1)


def is_uniform(times: np.ndarray) -> bool:
    """Equally spaced, increasing times (then the decays are powers of one exponential)."""
    spacing = np.diff(times)
    return bool(len(times) >= 3 and spacing[0] > 0 and np.all(np.abs(spacing - spacing[0]) <= 1e-9 * spacing[0]))


def fit_voxels(
    data: np.ndarray,
    order: np.ndarray,
    index: np.ndarray,
    q: np.ndarray,
    times: np.ndarray,
    tr: np.ndarray | None,
    kind: int,
    absolute: bool,
    polarity: bool,
    log_lo: float,
    log_hi: float,
    threads: int | None = None,
) -> np.ndarray:
    """Fit the voxels ``index`` of ``data`` (N images, flattened voxels; C-contiguous float64), image ``order[i]``
    being sample i.

    ``q`` is the (N, K*G) orthonormalised grid basis (k-major), ``times`` sorted. Returns (V, N_OUT) float64.
    The voxels are split between ``threads`` threads (every voxel is fitted on its own, so the answer does not
    depend on the split).
    """
    times = np.ascontiguousarray(times, dtype=np.float64)
    n_cols = 1 if kind == KIND_EXP else 2
    n_grid = q.shape[1] // n_cols
    index = np.ascontiguousarray(index, dtype=np.int64)
    out = np.empty((len(index), N_OUT))
    arguments = (
        np.ascontiguousarray(q, dtype=np.float64),
        times,
        np.ascontiguousarray(times if tr is None else tr, dtype=np.float64),
        int(kind),
        is_uniform(times),
        bool(absolute),
        bool(polarity),
        int(n_grid),
        int(n_cols),
        float(log_lo),
        float(log_hi),
    )
    order = np.ascontiguousarray(order, dtype=np.int64)
    threads = min(thread_count() if threads is None else max(1, int(threads)), max(1, len(index) // BLOCK))
    if threads == 1:
        _fit_range(data, order, index, *arguments, out)
        return out
    bounds = np.linspace(0, len(index), threads + 1).astype(np.int64) // BLOCK * BLOCK
    bounds[-1] = len(index)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        jobs = [
            pool.submit(_fit_range, data, order, index[lo:hi], *arguments, out[lo:hi])
            for lo, hi in zip(bounds[:-1], bounds[1:])
            if hi > lo
        ]
        for job in jobs:
            job.result()
    return out


AVAILABLE = numba is not None
