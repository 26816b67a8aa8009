"""Open3D's FPFH on an organized cloud, with neighbours found in a pixel window instead of a KD-tree.

Why: Open3D spends most of its ~0.6 s per 224 x 224 cloud building and querying KD-trees, yet on an organized
cloud the nearest neighbours of a pixel lie in the pixels around it. Here the candidates of a valid pixel are
the valid pixels within ``window`` rows and columns (a (2 * window + 1)^2 square, itself included); among them
the ``max_nn`` nearest in 3-D that lie strictly within the radius are kept, nearest first, as Open3D's hybrid
search does (k nearest, then distance^2 < radius^2). Everything after the search is a line-by-line port of
Open3D 0.20 in float64 (``EstimateNormals.cpp``: cumulant covariance and ``FastEigen3x3`` with its
unoriented sign; ``Feature.cpp``: pair features, SPFH, FPFH), so wherever the window holds Open3D's
neighbours the descriptor equals Open3D's to rounding. No fastmath: it would change the rounding on which
histogram bins and normal signs depend.

Where the port departs from Open3D's code it does so without changing a result beyond rounding: SPFH
bins are counted and scaled once (every increment is the same 100 / (count - 1)); FPFH sums are reassociated
for vectorisation; atan2 is replaced by a polynomial except near bin edges, where the exact atan2 decides.
Results on Open3D's own neighbourhoods: normals bit-identical, FPFH within ~3e-15 relative.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from patchbank.preprocess import valid_points

FPFH_BINS = 33
_SPFH_ROW = 36  # SPFH rows are zero-padded to this length (see _spfh)
_TWO_THIRDS_PI = 2.09439510239319549

# What a point needs computed (``need`` arrays, levels in order): a normal (its normal-neighbour list), an SPFH
# (also its feature-neighbour list, whose normals it uses), its FPFH (its neighbours' SPFHs).
NEED_NOTHING, NEED_NORMAL, NEED_SPFH, NEED_FPFH = 0, 1, 2, 3

# OpenMP first (libgomp is a system dependency already): numba's default probes TBB first and warns when the
# installed TBB is too old.
numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]

# error_model="numpy": division by zero gives inf / nan as in Open3D's C++ (Python's model raises, and its
# checks keep loops from vectorising).
_jit = numba.njit(cache=True, nogil=True, error_model="numpy")
_pjit = numba.njit(parallel=True, cache=True, nogil=True, error_model="numpy")


@_jit
def _cross(ax: float, ay: float, az: float, bx: float, by: float, bz: float) -> tuple[float, float, float]:
    """a x b, in Eigen's order of operations."""
    return ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx


@_jit
def _dist2(points: np.ndarray, i: int, j: int) -> float:
    """Squared distance from query i to point j, summed as nanoflann does: ((dx^2 + dy^2) + dz^2), d = q - p."""
    dx, dy, dz = points[i, 0] - points[j, 0], points[i, 1] - points[j, 1], points[i, 2] - points[j, 2]
    return dx * dx + dy * dy + dz * dz


@_jit
def _eigenvector0(
    a00: float, a01: float, a02: float, a11: float, a12: float, a22: float, ev: float
) -> tuple[float, float, float]:
    """Open3D's ComputeEigenvector0: the longest cross product of two rows of A - ev I, normalised."""
    r0 = (a00 - ev, a01, a02)
    r1 = (a01, a11 - ev, a12)
    r2 = (a02, a12, a22 - ev)
    c01 = _cross(r0[0], r0[1], r0[2], r1[0], r1[1], r1[2])
    c02 = _cross(r0[0], r0[1], r0[2], r2[0], r2[1], r2[2])
    c12 = _cross(r1[0], r1[1], r1[2], r2[0], r2[1], r2[2])
    d0 = c01[0] * c01[0] + c01[1] * c01[1] + c01[2] * c01[2]
    d1 = c02[0] * c02[0] + c02[1] * c02[1] + c02[2] * c02[2]
    d2 = c12[0] * c12[0] + c12[1] * c12[1] + c12[2] * c12[2]
    dmax, best = d0, c01
    if d1 > dmax:
        dmax, best = d1, c02
    if d2 > dmax:
        dmax, best = d2, c12
    s = math.sqrt(dmax)
    return best[0] / s, best[1] / s, best[2] / s


@_jit
def _eigenvector1(
    a00: float,
    a01: float,
    a02: float,
    a11: float,
    a12: float,
    a22: float,
    e0: tuple[float, float, float],
    ev: float,
) -> tuple[float, float, float]:
    """Open3D's ComputeEigenvector1: the eigenvector of ``ev`` in the plane orthogonal to ``e0``."""
    x, y, z = e0
    if abs(x) > abs(y):
        inv = 1 / math.sqrt(x * x + z * z)
        u = (-z * inv, 0.0, x * inv)
    else:
        inv = 1 / math.sqrt(y * y + z * z)
        u = (0.0, z * inv, -y * inv)
    v = _cross(x, y, z, u[0], u[1], u[2])
    au = (
        a00 * u[0] + a01 * u[1] + a02 * u[2],
        a01 * u[0] + a11 * u[1] + a12 * u[2],
        a02 * u[0] + a12 * u[1] + a22 * u[2],
    )
    av = (
        a00 * v[0] + a01 * v[1] + a02 * v[2],
        a01 * v[0] + a11 * v[1] + a12 * v[2],
        a02 * v[0] + a12 * v[1] + a22 * v[2],
    )
    m00 = u[0] * au[0] + u[1] * au[1] + u[2] * au[2] - ev
    m01 = u[0] * av[0] + u[1] * av[1] + u[2] * av[2]
    m11 = v[0] * av[0] + v[1] * av[1] + v[2] * av[2] - ev
    if abs(m00) >= abs(m11):
        if max(abs(m00), abs(m01)) > 0:
            if abs(m00) >= abs(m01):
                m01 /= m00
                m00 = 1 / math.sqrt(1 + m01 * m01)
                m01 *= m00
            else:
                m00 /= m01
                m01 = 1 / math.sqrt(1 + m00 * m00)
                m00 *= m01
            return m01 * u[0] - m00 * v[0], m01 * u[1] - m00 * v[1], m01 * u[2] - m00 * v[2]
        return u
    if max(abs(m11), abs(m01)) > 0:
        if abs(m11) >= abs(m01):
            m01 /= m11
            m11 = 1 / math.sqrt(1 + m01 * m01)
            m01 *= m11
        else:
            m11 /= m01
            m01 = 1 / math.sqrt(1 + m11 * m11)
            m11 *= m01
        return m11 * u[0] - m01 * v[0], m11 * u[1] - m01 * v[1], m11 * u[2] - m01 * v[2]
    return u


@_jit
def _fast_eigen3x3(
    c00: float, c01: float, c02: float, c11: float, c12: float, c22: float
) -> tuple[float, float, float]:
    """Open3D's FastEigen3x3 (Geometric Tools' robust solver): an eigenvector of the smallest eigenvalue.

    Its sign is whatever the solver yields; Open3D keeps it unoriented and FPFH depends on it.
    """
    m = max(c00, c01, c02, c11, c12, c22)
    if m == 0:
        return 0.0, 0.0, 0.0
    a00, a01, a02, a11, a12, a22 = c00 / m, c01 / m, c02 / m, c11 / m, c12 / m, c22 / m
    norm = a01 * a01 + a02 * a02 + a12 * a12
    if not norm > 0:
        # Open3D compares the diagonal after scaling A back by max_coeff.
        d0, d1, d2 = a00 * m, a11 * m, a22 * m
        if d0 < d1 and d0 < d2:
            return 1.0, 0.0, 0.0
        if d1 < d0 and d1 < d2:
            return 0.0, 1.0, 0.0
        return 0.0, 0.0, 1.0
    q = (a00 + a11 + a22) / 3
    b00, b11, b22 = a00 - q, a11 - q, a22 - q
    p = math.sqrt((b00 * b00 + b11 * b11 + b22 * b22 + norm * 2) / 6)
    d00 = b11 * b22 - a12 * a12
    d01 = a01 * b22 - a12 * a02
    d02 = a01 * a12 - b11 * a02
    half_det = min(max((b00 * d00 - a01 * d01 + a02 * d02) / (p * p * p) * 0.5, -1.0), 1.0)
    angle = math.acos(half_det) / 3
    beta2 = math.cos(angle) * 2
    beta0 = math.cos(angle + _TWO_THIRDS_PI) * 2
    beta1 = -(beta0 + beta2)
    ev0, ev1, ev2 = q + p * beta0, q + p * beta1, q + p * beta2
    if half_det >= 0:
        e2 = _eigenvector0(a00, a01, a02, a11, a12, a22, ev2)
        if ev2 < ev0 and ev2 < ev1:
            return e2
        e1 = _eigenvector1(a00, a01, a02, a11, a12, a22, e2, ev1)
        if ev1 < ev0 and ev1 < ev2:
            return e1
        return _cross(e1[0], e1[1], e1[2], e2[0], e2[1], e2[2])
    e0 = _eigenvector0(a00, a01, a02, a11, a12, a22, ev0)
    if ev0 < ev1 and ev0 < ev2:
        return e0
    e1 = _eigenvector1(a00, a01, a02, a11, a12, a22, e0, ev1)
    if ev1 < ev0 and ev1 < ev2:
        return e1
    return _cross(e0[0], e0[1], e0[2], e1[0], e1[1], e1[2])


@_pjit
def _normals(points: np.ndarray, nbr: np.ndarray, count: np.ndarray, need: np.ndarray) -> np.ndarray:
    """(N, 3) Open3D normals: point i's neighbourhood is ``nbr[i, :count[i]]`` (its hybrid search result).

    Fewer than 3 neighbours give the identity covariance; a zero eigenvector becomes (0, 0, 1). Only points
    with ``need[i] >= NEED_NORMAL`` are computed (the others stay zero).
    """
    n = points.shape[0]
    out = np.zeros((n, 3))
    for i in prange(n):
        if need[i] < NEED_NORMAL:
            continue
        k = count[i]
        c00, c01, c02, c11, c12, c22 = 1.0, 0.0, 0.0, 1.0, 0.0, 1.0
        if k >= 3:
            sx = sy = sz = sxx = sxy = sxz = syy = syz = szz = 0.0
            for t in range(k):
                j = nbr[i, t]
                x, y, z = points[j, 0], points[j, 1], points[j, 2]
                sx += x
                sy += y
                sz += z
                sxx += x * x
                sxy += x * y
                sxz += x * z
                syy += y * y
                syz += y * z
                szz += z * z
            sx, sy, sz = sx / k, sy / k, sz / k
            c00, c01, c02 = sxx / k - sx * sx, sxy / k - sx * sy, sxz / k - sx * sz
            c11, c12, c22 = syy / k - sy * sy, syz / k - sy * sz, szz / k - sz * sz
        nx, ny, nz = _fast_eigen3x3(c00, c01, c02, c11, c12, c22)
        if math.sqrt(nx * nx + ny * ny + nz * nz) == 0.0:
            nx, ny, nz = 0.0, 0.0, 1.0
        out[i, 0], out[i, 1], out[i, 2] = nx, ny, nz
    return out


# atan(t) ~ t * P(t^2) on [0, 1], max error 3.8e-8: decides the f0 bin unless f0 lies within _BIN_MARGIN of a bin
# edge (in bin units, ~15x the error), where the exact atan2 decides as in Open3D.
_ATAN_P = (
    0.999999335621425,
    -0.3332986087340959,
    0.1994656622998414,
    -0.13908631182173653,
    0.09642199428814524,
    -0.055912336062263285,
    0.021862954710675495,
    -0.004054564379705664,
)
_BIN_MARGIN = 1e-6


@_jit
def _bin(u: float) -> int:
    """Open3D's histogram index: floor(u) clamped to [0, 10]."""
    return min(max(math.floor(u), 0), 10)


@_jit
def _approx_atan2(y: float, x: float) -> float:
    """atan2 to ~4e-8 from a polynomial, cheap and vectorisable (the f0 bin is checked against its margin)."""
    ax, ay = abs(x), abs(y)
    t = min(ax, ay) / max(ax, ay)
    s = t * t
    p = _ATAN_P
    r = t * (p[0] + s * (p[1] + s * (p[2] + s * (p[3] + s * (p[4] + s * (p[5] + s * (p[6] + s * p[7])))))))
    r = math.pi / 2 - r if ay > ax else r
    r = math.pi - r if x < 0 else r
    return -r if y < 0 else r


@_jit
def _spfh_of(
    points: np.ndarray,
    normals: np.ndarray,
    nbr: np.ndarray,
    i: int,
    k: int,
    scratch: np.ndarray,
    bins: np.ndarray,
    hist: np.ndarray,
) -> None:
    """Count point i's pair-feature bins with its neighbours ``nbr[i, 1:k]`` into ``hist`` (33 ints).

    Open3D's ComputePairFeatures, evaluated for all neighbours in branch-free loops (IEEE sqrt and division
    vectorise without changing a bit). Open3D writes acos(|angle1|) > acos(|angle2|); its build decides
    exactly as |angle1| < |angle2| (glibc's acos would tie near-equal angles and flip f2's sign; checked
    bit-for-bit against Open3D 0.20). Only atan2 is approximated, and the exact one decides near bin edges.
    """
    px, py, pz = points[i, 0], points[i, 1], points[i, 2]
    ax, ay, az = normals[i, 0], normals[i, 1], normals[i, 2]
    dx, dy, dz, bx, by, bz = scratch[0], scratch[1], scratch[2], scratch[3], scratch[4], scratch[5]
    ys, xs = scratch[6], scratch[7]
    h0s, h1s, h2s = bins[0], bins[1], bins[2]
    for t in range(1, k):
        j = nbr[i, t]
        dx[t], dy[t], dz[t] = points[j, 0] - px, points[j, 1] - py, points[j, 2] - pz
        bx[t], by[t], bz[t] = normals[j, 0], normals[j, 1], normals[j, 2]
    for t in range(1, k):
        ex, ey, ez, mx, my, mz = dx[t], dy[t], dz[t], bx[t], by[t], bz[t]
        f3 = math.sqrt(ex * ex + ey * ey + ez * ez)
        angle1 = (ax * ex + ay * ey + az * ez) / f3
        angle2 = (mx * ex + my * ey + mz * ez) / f3
        swap = abs(angle1) < abs(angle2)
        ux, uy, uz = (mx if swap else ax), (my if swap else ay), (mz if swap else az)
        qx, qy, qz = (ax if swap else mx), (ay if swap else my), (az if swap else mz)
        ex, ey, ez = (-ex if swap else ex), (-ey if swap else ey), (-ez if swap else ez)
        f2 = -angle2 if swap else angle1
        vx, vy, vz = _cross(ex, ey, ez, ux, uy, uz)
        v_norm = math.sqrt(vx * vx + vy * vy + vz * vz)
        vx, vy, vz = vx / v_norm, vy / v_norm, vz / v_norm
        wx, wy, wz = _cross(ux, uy, uz, vx, vy, vz)
        f1 = vx * qx + vy * qy + vz * qz
        y = wx * qx + wy * qy + wz * qz
        x = ux * qx + uy * qy + uz * qz
        # Open3D returns all-zero features when the points coincide or the normal is parallel to their offset.
        degenerate = f3 == 0.0 or v_norm == 0.0
        f1 = 0.0 if degenerate else f1
        f2 = 0.0 if degenerate else f2
        ys[t], xs[t] = (0.0 if degenerate else y), (1.0 if degenerate else x)
        u0 = 11 * (_approx_atan2(ys[t], xs[t]) + math.pi) / (2.0 * math.pi)
        # np.floor keeps nan a float (u0 is nan when x = y = 0), which fails the test and goes exact
        h0s[t] = _bin(u0) if abs(u0 - np.floor(u0 + 0.5)) >= _BIN_MARGIN else -1
        h1s[t] = _bin(11 * (f1 + 1.0) * 0.5)
        h2s[t] = _bin(11 * (f2 + 1.0) * 0.5)
    for t in range(1, k):
        if h0s[t] < 0:
            h0s[t] = _bin(11 * (math.atan2(ys[t], xs[t]) + math.pi) / (2.0 * math.pi))
    # Count bin by bin (vectorised compares) rather than incrementing hist[h] per pair, a serial chain.
    for b in range(11):
        c0 = c1 = c2 = 0
        for t in range(1, k):
            c0 += h0s[t] == b
            c1 += h1s[t] == b
            c2 += h2s[t] == b
        hist[b], hist[11 + b], hist[22 + b] = c0, c1, c2


@_pjit
def _spfh(
    points: np.ndarray, normals: np.ndarray, nbr: np.ndarray, count: np.ndarray, need: np.ndarray
) -> np.ndarray:
    """(N, 36) Open3D SPFH (33 bins, zero-padded): histograms of point i's pair features with
    ``nbr[i, 1:count[i]]``, for the points with ``need[i] >= NEED_SPFH`` (the others stay zero). The padding
    makes FPFH's weighted row sums ~10% faster (measured; 40 is not).

    Every increment is the same 100 / (count - 1), so bins are counted and scaled once (Open3D's repeated
    additions differ by rounding). Points run in blocks that share scratch buffers.
    """
    n, max_nn = points.shape[0], nbr.shape[1]
    out = np.zeros((n, _SPFH_ROW))
    n_blocks = min(n, 256)
    for blk in prange(n_blocks):
        scratch = np.empty((8, max_nn))
        bins = np.empty((3, max_nn), dtype=np.int64)
        hist = np.empty(FPFH_BINS, dtype=np.int64)
        for i in range(blk * n // n_blocks, (blk + 1) * n // n_blocks):
            k = count[i]
            if k > 1 and need[i] >= NEED_SPFH:
                _spfh_of(points, normals, nbr, i, k, scratch, bins, hist)
                incr = 100.0 / (k - 1)
                for b in range(FPFH_BINS):
                    out[i, b] = hist[b] * incr
    return out


@_pjit
def _fpfh(
    points: np.ndarray,
    spfh: np.ndarray,
    nbr: np.ndarray,
    count: np.ndarray,
    slots: np.ndarray,
    need: np.ndarray,
    out: np.ndarray,
) -> None:
    """Open3D FPFH from ``_spfh``'s rows into ``out[:, slots[i]]`` of a zeroed (33, M) array (a map's pixel,
    or a rank among the computed points): own SPFH plus
    the neighbours' weighted by 1 / distance^2, each 11-bin group scaled to sum 100; only for the points with
    ``need[i] == NEED_FPFH``.

    Same terms as Open3D but summed in another order (group sums over the accumulated bins, 1 / d2 taken
    once per neighbour) so the loop vectorises; results move by rounding (~1e-15 relative). Writing the
    output directly saves an (N, 33) array and a scatter. Points run in blocks that share an accumulator.
    """
    n, row = spfh.shape  # a run-time row length keeps LLVM vectorising instead of fully unrolling
    n_blocks = min(n, 256)
    for blk in prange(n_blocks):
        acc = np.empty(row)
        for i in range(blk * n // n_blocks, (blk + 1) * n // n_blocks):
            k = count[i]
            if k <= 1 or need[i] < NEED_FPFH:
                continue
            for b in range(row):  # a loop, not acc[:] = 0, which costs a view per point
                acc[b] = 0.0
            for t in range(1, k):
                j = nbr[i, t]
                d2 = _dist2(points, i, j)
                if d2 != 0.0:
                    weight = 1.0 / d2
                    for b in range(row):
                        acc[b] += spfh[j, b] * weight
            for g in range(0, FPFH_BINS, 11):
                total = 0.0
                for b in range(g, g + 11):
                    total += acc[b]
                scale = 100.0 / total if total != 0.0 else 0.0
                for b in range(g, g + 11):
                    out[b, slots[i]] = acc[b] * scale + spfh[i, b]


@_jit
def _argmax(d: np.ndarray, m: int) -> int:
    """First index of the largest of d[:m] (four running maxima for speed)."""
    m0 = m1 = m2 = m3 = -np.inf
    t = 0
    while t + 4 <= m:
        m0, m1, m2, m3 = max(m0, d[t]), max(m1, d[t + 1]), max(m2, d[t + 2]), max(m3, d[t + 3])
        t += 4
    for s in range(t, m):
        m0 = max(m0, d[s])
    top = max(max(m0, m1), max(m2, m3))
    for s in range(m):
        if d[s] == top:
            return s
    return 0


@_jit
def _nearest_sorted(
    d: np.ndarray, idx: np.ndarray, m: int, radius2: float, k: int, buf: np.ndarray, out: np.ndarray, row: int
) -> int:
    """Write the <= k nearest of candidates (d[:m], idx[:m]) with d < radius2 to out[row], nearest first.

    Sorted insertion; ties keep candidate order. Returns how many were written.
    """
    c = 0
    for t in range(m):
        x = d[t]
        if x < radius2 and (c < k or x < buf[c - 1]):
            s = c if c < k else k - 1
            while s > 0 and buf[s - 1] > x:
                buf[s] = buf[s - 1]
                out[row, s] = out[row, s - 1]
                s -= 1
            buf[s] = x
            out[row, s] = idx[t]
            c = min(c + 1, k)
    return c


@_pjit
def _grid_neighbours(
    coords: np.ndarray,
    index: np.ndarray,
    ring: np.ndarray,
    window: int,
    normal_r2: float,
    normal_k: int,
    feature_r2: float,
    feature_k: int,
    todo: np.ndarray,
    nbr_n: np.ndarray,
    cnt_n: np.ndarray,
    nbr_f: np.ndarray,
    cnt_f: np.ndarray,
) -> None:
    """Both hybrid searches among the window of each point with ``todo[i]``, written into (normal nbr, count,
    feature nbr, count) (rows of the other points are left as they are).

    ``coords`` (3, H + 2 * window, W + 2 * window) holds x, y, z (inf where missing or padding) and
    ``index`` the point numbers (-1 there); ``ring`` lists the window's cells (row-major in the square)
    nearest pixel first. Distances are nanoflann's ((dx^2 + dy^2) + dz^2) of query minus candidate. In ring
    order, candidates within the larger radius fill a set of the larger k; as that order is nearly by
    distance, the rest rarely beat the set's farthest member, which each such one replaces. The feature
    list is that set itself when it is the larger search (the point first; the order does not matter to
    FPFH); the normal list is the set's nearest, sorted as Open3D's, since the covariance sums in that
    order and normal signs hang on its last bits.
    """
    wp = index.shape[1]
    h, w = index.shape[0] - 2 * window, wp - 2 * window
    side = 2 * window + 1
    xs, ys, zs, flat = coords[0].ravel(), coords[1].ravel(), coords[2].ravel(), index.ravel()
    ring_flat = (ring // side - window) * wp + ring % side - window
    n_ring = ring.shape[0]
    radius2, k_max = max(normal_r2, feature_r2), max(normal_k, feature_k)
    features_are_set = feature_k == k_max and feature_r2 == radius2
    for r in prange(h):
        cand = np.empty(n_ring)
        set_d, set_o, set_j = (
            np.empty(k_max),
            np.empty(k_max, dtype=np.int64),
            np.empty(k_max, dtype=np.int64),
        )
        buf = np.empty(k_max)
        for c in range(w):
            base = (r + window) * wp + c + window
            i = flat[base]
            if i < 0 or not todo[i]:
                continue
            qx, qy, qz = xs[base], ys[base], zs[base]
            for o in range(n_ring):
                p = base + ring_flat[o]
                dx, dy, dz = qx - xs[p], qy - ys[p], qz - zs[p]
                cand[o] = dx * dx + dy * dy + dz * dz
            m = o = 0
            while o < n_ring and m < k_max:  # fill
                d2 = cand[o]
                if d2 < radius2:
                    set_d[m] = d2
                    set_o[m] = o
                    m += 1
                o += 1
            if m == k_max:  # replace the farthest
                far = _argmax(set_d, m)
                worst = set_d[far]
                while o < n_ring:
                    d2 = cand[o]
                    if d2 < worst:
                        set_d[far] = d2
                        set_o[far] = o
                        far = _argmax(set_d, m)
                        worst = set_d[far]
                    o += 1
            for t in range(m):
                set_j[t] = flat[base + ring_flat[set_o[t]]]
            cnt_n[i] = _nearest_sorted(set_d, set_j, m, normal_r2, normal_k, buf, nbr_n, i)
            if features_are_set:
                for t in range(m):
                    nbr_f[i, t] = set_j[t]
                cnt_f[i] = m
            else:
                cnt_f[i] = _nearest_sorted(set_d, set_j, m, feature_r2, feature_k, buf, nbr_f, i)


@_jit
def _spread(nbr: np.ndarray, count: np.ndarray, need: np.ndarray, source: int, target: int) -> None:
    """Raise to ``target`` the level of every neighbour (``nbr[i, :count[i]]``) of the points at level
    ``source``."""
    for i in range(need.shape[0]):
        if need[i] == source:
            for t in range(count[i]):
                j = nbr[i, t]
                if need[j] < target:
                    need[j] = target


def _padded_grids(xyz: np.ndarray, mask: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Float64 coordinates (3, H + 2 * window, W + 2 * window), inf off the valid pixels, and the int64
    point number of each valid pixel (row-major, as ``xyz[mask]``), -1 elsewhere."""
    h, w = mask.shape
    inner = (slice(window, window + h), slice(window, window + w))
    coords = np.full((3, h + 2 * window, w + 2 * window), np.inf)
    coords[(slice(None), *inner)] = np.where(mask, np.moveaxis(xyz, -1, 0), np.inf)
    index = np.full((h + 2 * window, w + 2 * window), -1, dtype=np.int64)
    index[inner][mask] = np.arange(np.count_nonzero(mask))
    return coords, index


def _ring_order(window: int) -> np.ndarray:
    """Cells of the (2 * window + 1)^2 square (row-major numbers) by distance from its centre, centre first."""
    d = np.arange(-window, window + 1)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    return np.argsort((dy * dy + dx * dx).ravel(), kind="stable").astype(np.int64)


@_pjit
def _pool(
    values: np.ndarray,
    pixels: np.ndarray,
    width: int,
    rows: np.ndarray,
    cols: np.ndarray,
    first_col: np.ndarray,
    last_col: np.ndarray,
    out: np.ndarray,
) -> None:
    """``out[a, b] += rows[a, y] * cols[b, x] * values[m]`` for every point m, at flat pixel ``pixels[m]`` =
    y * width + x (ascending): the (G, G', 33) pooled map. ``cols[b, x]`` is zero outside ``first_col[x]`` to
    ``last_col[x]``. Grid rows run in parallel, each thread adding into its own."""
    g_rows, h = rows.shape
    start = np.searchsorted(pixels, np.arange(h + 1) * width)  # each image row's first point
    for a in prange(g_rows):
        for y in range(h):
            ra = rows[a, y]
            if ra == 0.0:
                continue
            for m in range(start[y], start[y + 1]):
                x = pixels[m] - y * width
                for b in range(first_col[x], last_col[x] + 1):
                    weight = ra * cols[b, x]
                    for c in range(values.shape[1]):
                        out[a, b, c] += weight * values[m, c]


def _check(
    xyz: np.ndarray, normal_max_nn: int, feature_max_nn: int, radii: tuple[float, float], window: int
) -> None:
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) organized cloud, got shape {xyz.shape}")
    if not (radii[0] > 0 and radii[1] > 0):
        raise ValueError(f"radii must be positive, got {radii[0]} and {radii[1]}")
    if normal_max_nn < 1 or feature_max_nn < 1 or window < 1:
        raise ValueError(
            f"neighbour caps and window must be >= 1, got {normal_max_nn}, {feature_max_nn}, {window}"
        )


def _fpfh_points(
    xyz: np.ndarray,
    normal_radius: float,
    normal_max_nn: int,
    feature_radius: float,
    feature_max_nn: int,
    window: int,
    wanted: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(33, M) float64 FPFH of the M points computed (every valid one, or the wanted ones) and their flat
    pixel numbers, ascending. See :func:`grid_fpfh`."""
    _check(xyz, normal_max_nn, feature_max_nn, (normal_radius, feature_radius), window)
    mask = valid_points(xyz)
    if wanted is not None and wanted.shape != mask.shape:
        raise ValueError(f"wanted pixels {wanted.shape} do not match the cloud's {mask.shape}")
    if not mask.any() or (wanted is not None and not (wanted & mask).any()):
        return np.zeros((FPFH_BINS, 0)), np.zeros(0, dtype=np.int64)
    points = np.ascontiguousarray(xyz[mask], dtype=np.float64)
    n = points.shape[0]
    coords, index = _padded_grids(xyz, mask, window)
    ring = _ring_order(window)
    nbr_n, cnt_n = np.zeros((n, normal_max_nn), dtype=np.int32), np.zeros(n, dtype=np.int32)
    nbr_f, cnt_f = np.zeros((n, feature_max_nn), dtype=np.int32), np.zeros(n, dtype=np.int32)
    # Squared as Open3D squares them (radius * radius); hybrid results keep distance^2 strictly below.
    search = (window, normal_radius * normal_radius, normal_max_nn, feature_radius * feature_radius)
    need = np.full(n, NEED_FPFH if wanted is None else NEED_NOTHING, dtype=np.int8)
    if wanted is not None:
        need[wanted[mask]] = NEED_FPFH
    # What the wanted points depend on, found from their own neighbour lists: their neighbours' SPFHs,
    # then the normals of those SPFHs' neighbours. Each point is searched once.
    for level in (NEED_FPFH, NEED_SPFH, NEED_NORMAL):
        _grid_neighbours(
            coords, index, ring, *search, feature_max_nn, need == level, nbr_n, cnt_n, nbr_f, cnt_f
        )
        if level > NEED_NORMAL and wanted is not None:
            _spread(nbr_f, cnt_f, need, level, level - 1)
    normals = _normals(points, nbr_n, cnt_n, need)
    spfh = _spfh(points, normals, nbr_f, cnt_f, need)
    on = need == NEED_FPFH
    values = np.zeros((FPFH_BINS, np.count_nonzero(on)))
    _fpfh(points, spfh, nbr_f, cnt_f, np.where(on, np.cumsum(on) - 1, -1), need, values)
    return values, np.flatnonzero(mask)[on]


def grid_fpfh(
    xyz: np.ndarray,
    normal_radius: float,
    normal_max_nn: int,
    feature_radius: float,
    feature_max_nn: int,
    window: int,
    wanted: np.ndarray | None = None,
) -> np.ndarray:
    """(H, W, 3) organized cloud (float32 or float64, metres; a pixel is missing when any coordinate is 0 — see
    patchbank.preprocess.valid_points) -> (33, H, W) float64 FPFH, zeros where a point is missing.

    Normals use the hybrid (normal_radius, normal_max_nn) neighbourhood, FPFH the (feature_radius,
    feature_max_nn) one, both searched among the valid pixels within ``window`` rows and columns.
    ``wanted``: (H, W) bool, the pixels whose FPFH is needed (None: all); the others are zeros, and only what
    the wanted ones depend on is computed (their neighbours' SPFHs, the normals those use), so theirs equal
    the full computation's exactly.
    Raises ValueError for a cloud that is not (H, W, 3) or a non-positive radius, neighbour cap or window.
    """
    values, pixels = _fpfh_points(
        xyz, normal_radius, normal_max_nn, feature_radius, feature_max_nn, window, wanted
    )
    h, w = xyz.shape[:2]
    out = np.zeros((FPFH_BINS, h * w))
    out[:, pixels] = values
    return out.reshape(FPFH_BINS, h, w)


def pooled_fpfh(
    xyz: np.ndarray,
    normal_radius: float,
    normal_max_nn: int,
    feature_radius: float,
    feature_max_nn: int,
    window: int,
    rows: np.ndarray,
    cols: np.ndarray,
    wanted: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`grid_fpfh`'s map pooled as ``rows @ map @ cols.T`` (``rows`` (G, H), ``cols`` (G', W)), without
    making the map: (33, G, G') float64. Each computed point adds its FPFH to the few cells that read it (the
    matrix products' sums in another order: equal to rounding). Raises ValueError as :func:`grid_fpfh`, and
    for pooling matrices that do not fit the cloud."""
    _check(xyz, normal_max_nn, feature_max_nn, (normal_radius, feature_radius), window)
    h, w = xyz.shape[:2]
    if rows.ndim != 2 or cols.ndim != 2 or rows.shape[1] != h or cols.shape[1] != w:
        raise ValueError(f"pooling matrices {rows.shape} and {cols.shape} do not fit an {h} x {w} cloud")
    values, pixels = _fpfh_points(
        xyz, normal_radius, normal_max_nn, feature_radius, feature_max_nn, window, wanted
    )
    out = np.zeros((rows.shape[0], cols.shape[0], FPFH_BINS))
    read = cols != 0
    first, last = read.argmax(axis=0), cols.shape[0] - 1 - read[::-1].argmax(axis=0)
    rows, cols = (np.ascontiguousarray(m, dtype=np.float64) for m in (rows, cols))
    _pool(np.ascontiguousarray(values.T), pixels, w, rows, cols, first, last, out)
    return out.transpose(2, 0, 1)
