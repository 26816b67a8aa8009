"""FPFH of organized point clouds in plain torch, batched, on any device: Open3D's normals + FPFH on a pixel window.

Open3D (the BTF recipe of :func:`patchbank.features.fpfh.fpfh_map`) finds neighbours with a KD-tree hybrid search:
the ``max_nn`` nearest points, of which those strictly within ``radius``. On an organized cloud the nearest 3-D
neighbours of a pixel lie in a small pixel window around it, so here the same search runs over the
``(2 * window + 1) ** 2`` pixels around each point (gather + topk), which is what makes it a GPU workload. After
the search, every step is Open3D's arithmetic ported operation by operation in float64 (covariance cumulants,
``FastEigen3x3``, pair features, SPFH, FPFH weighting), so where the window holds Open3D's neighbourhoods the
result equals Open3D's to rounding, including the sign of each normal as Open3D's eigen solver returns it (FPFH
depends on it). Float64 throughout: in float32 the cumulant covariance cancels (E[zz] - E[z]^2 at z ~ 0.5 m) and
no FPFH of a demo cloud stays within 1e-4 of Open3D's. It imports only torch: the GPU machines have no Open3D,
FAISS or numba.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FPFH_BINS = 11  # bins per angle feature
FPFH_DIM = 3 * FPFH_BINS
DEFAULT_CHUNK = 8192  # query points per step: the working set, ~0.45 GB at window 8 and max_nn 100
_TWO_THIRDS_PI = 2.09439510239319549  # Open3D's literal


@dataclass(frozen=True)
class _Grid:
    """A batch of clouds padded by ``window`` invalid pixels and flattened, so a window is a set of index offsets.

    The padding keeps every window inside its own cloud and row; missing pixels never become neighbours.
    """

    points: torch.Tensor  # (B * Hp * Wp, 3) float64
    valid: torch.Tensor  # (B * Hp * Wp,) bool
    offsets: torch.Tensor  # (K,) flat index offsets of the window, K = (2 * window + 1) ** 2
    queries: torch.Tensor  # (N,) flat indices of the valid pixels
    shape: tuple[int, int, int]  # (B, H, W) before padding
    window: int

    def unpad(self, values: torch.Tensor) -> torch.Tensor:
        """(B * Hp * Wp, C) per padded pixel -> (B, H, W, C) on the original grid."""
        batch, height, width = self.shape
        pad = self.window
        padded = values.reshape(batch, height + 2 * pad, width + 2 * pad, -1)
        return padded[:, pad : pad + height, pad : pad + width]


def _make_grid(xyz: torch.Tensor, window: int) -> _Grid:
    """Pad, flatten and index the (B, H, W, 3) clouds; a pixel is missing when any coordinate is 0 (as BTF)."""
    pts = torch.nn.functional.pad(xyz.to(torch.float64), (0, 0, window, window, window, window))
    wp = pts.shape[2]
    valid = (pts != 0).all(-1).reshape(-1)
    span = torch.arange(-window, window + 1, device=xyz.device)
    offsets = (span[:, None] * wp + span[None, :]).reshape(-1)
    batch, height, width, _ = xyz.shape
    return _Grid(
        pts.reshape(-1, 3), valid, offsets, valid.nonzero().squeeze(1), (batch, height, width), window
    )


def _neighbours(
    grid: _Grid, query: torch.Tensor, radius: float, max_nn: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Open3D's hybrid search within the window: the ``max_nn`` nearest, ascending, kept where d2 < radius^2.

    Returns (P, M) neighbour indices, squared distances and the keep mask; slot 0 is the point itself (d2 = 0).
    The squared distance is summed as nanoflann does, ((dx^2 + dy^2) + dz^2), so the radius cut is the same.
    """
    cand = query[:, None] + grid.offsets
    diff = grid.points[cand] - grid.points[query][:, None]
    sq = diff * diff
    d2 = torch.where(grid.valid[cand], sq[..., 0] + sq[..., 1] + sq[..., 2], math.inf)
    d2, slot = d2.topk(min(max_nn, cand.shape[1]), dim=1, largest=False, sorted=True)
    return cand.gather(1, slot), d2, d2 < radius * radius


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dot product over the last axis, summed left to right as Eigen's 3-vectors."""
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cross product over the last axis, with Eigen's operand order."""
    ax, ay, az = a.unbind(-1)
    bx, by, bz = b.unbind(-1)
    return torch.stack((ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx), -1)


def _eigenvector0(a: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Open3D's ComputeEigenvector0: the largest cross product of two rows of A - value * I, normalised."""
    rows = a - value[:, None, None] * torch.eye(3, dtype=a.dtype, device=a.device)
    crosses = torch.stack(
        (_cross(rows[:, 0], rows[:, 1]), _cross(rows[:, 0], rows[:, 2]), _cross(rows[:, 1], rows[:, 2])), 1
    )
    d = _dot(crosses, crosses)
    pick = torch.where(d[:, 1] > d[:, 0], 1, 0)
    pick = torch.where(d[:, 2] > torch.maximum(d[:, 0], d[:, 1]), 2, pick)[:, None]
    return crosses.gather(1, pick[..., None].expand(-1, 1, 3)).squeeze(1) / d.gather(1, pick).sqrt()


def _eigenvector1(a: torch.Tensor, evec0: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Open3D's ComputeEigenvector1: the eigenvector of ``value`` in the plane orthogonal to ``evec0``.

    Open3D's four pivoting branches share one form: the pivot is m00 or m11 (the larger), and the ratio is taken
    so that its magnitude is at most 1.
    """
    x, y, z = evec0.unbind(-1)
    wide = x.abs() > y.abs()
    inv = torch.where(wide, 1 / (x * x + z * z).sqrt(), 1 / (y * y + z * z).sqrt())
    zero = torch.zeros_like(x)
    u = torch.where(
        wide[:, None], torch.stack((-z * inv, zero, x * inv), -1), torch.stack((zero, z * inv, -y * inv), -1)
    )
    v = _cross(evec0, u)
    au = _dot(a, u[:, None])
    av = _dot(a, v[:, None])
    m00 = _dot(u, au) - value
    m01 = _dot(u, av)
    m11 = _dot(v, av) - value
    first = m00.abs() >= m11.abs()
    pivot = torch.where(first, m00, m11)
    lead = pivot.abs() >= m01.abs()
    ratio = torch.where(lead, m01 / pivot, pivot / m01)
    scale = 1 / (1 + ratio * ratio).sqrt()
    along_pivot = torch.where(lead, scale, ratio * scale)[:, None]
    along_m01 = torch.where(lead, ratio * scale, scale)[:, None]
    vec = torch.where(first[:, None], along_m01 * u - along_pivot * v, along_pivot * u - along_m01 * v)
    return torch.where((torch.maximum(pivot.abs(), m01.abs()) > 0)[:, None], vec, u)


def _fast_eigen3x3(cov: torch.Tensor) -> torch.Tensor:
    """Open3D's FastEigen3x3 on (P, 3, 3) covariances: the eigenvector of the smallest eigenvalue, sign included.

    Both branches of Open3D's ``half_det`` test run vectorised: the first eigenvector computed is that of eval2
    (half_det >= 0) or eval0 (otherwise), the second that of eval1, the third their cross product.
    """
    max_coeff = cov.amax((1, 2))
    a = cov / max_coeff[:, None, None]
    a00, a11, a22 = a[:, 0, 0], a[:, 1, 1], a[:, 2, 2]
    a01, a02, a12 = a[:, 0, 1], a[:, 0, 2], a[:, 1, 2]
    norm = a01 * a01 + a02 * a02 + a12 * a12
    q = (a00 + a11 + a22) / 3
    b00, b11, b22 = a00 - q, a11 - q, a22 - q
    p = ((b00 * b00 + b11 * b11 + b22 * b22 + norm * 2) / 6).sqrt()
    c00 = b11 * b22 - a12 * a12
    c01 = a01 * b22 - a12 * a02
    c02 = a01 * a12 - b11 * a02
    half_det = ((b00 * c00 - a01 * c01 + a02 * c02) / (p * p * p) * 0.5).clamp(-1.0, 1.0)
    angle = half_det.acos() / 3
    beta2 = angle.cos() * 2
    beta0 = (angle + _TWO_THIRDS_PI).cos() * 2
    eval0, eval1, eval2 = q + p * beta0, q + p * -(beta0 + beta2), q + p * beta2
    upper = half_det >= 0
    first_value = torch.where(upper, eval2, eval0)
    first_min = (first_value < torch.where(upper, eval0, eval1)) & (
        first_value < torch.where(upper, eval1, eval2)
    )
    middle_min = (eval1 < eval0) & (eval1 < eval2)
    first = _eigenvector0(a, first_value)
    second = _eigenvector1(a, first, eval1)
    third = torch.where(upper[:, None], _cross(second, first), _cross(first, second))
    general = torch.where(first_min[:, None], first, torch.where(middle_min[:, None], second, third))
    d00, d11, d22 = cov[:, 0, 0], cov[:, 1, 1], cov[:, 2, 2]
    axis = torch.where((d00 < d11) & (d00 < d22), 0, torch.where((d11 < d00) & (d11 < d22), 1, 2))
    diagonal = torch.nn.functional.one_hot(axis, 3).to(cov.dtype)
    vec = torch.where((norm > 0)[:, None], general, diagonal)
    return torch.where((max_coeff == 0)[:, None], 0.0, vec)


def _normals(nbr: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Open3D's estimate_normals (fast, no prior normals) from (P, M, 3) neighbour points and their keep mask.

    The covariance comes from cumulants, E[ab] - E[a]E[b], summed neighbour by neighbour in search order as
    Open3D does (identity under 3 neighbours); a zero eigenvector becomes (0, 0, 1). The sequential sum matters:
    FPFH bins are comparisons and floors that the last bits of a normal can flip (a tree-ordered sum changed the
    FPFH of ~2% of a demo cloud's points).
    """
    pts = torch.where(keep[..., None], nbr, 0.0)
    x, y, z = pts.unbind(-1)
    terms = torch.stack((x, y, z, x * x, x * y, x * z, y * y, y * z, z * z), -1)
    cumulants = torch.zeros_like(terms[:, 0])
    for slot in terms.unbind(1):
        cumulants = cumulants + slot
    count = keep.sum(1)
    mx, my, mz, xx, xy, xz, yy, yz, zz = (cumulants / count[:, None].to(cumulants.dtype)).unbind(-1)
    cxy, cxz, cyz = xy - mx * my, xz - mx * mz, yz - my * mz
    cov = torch.stack((xx - mx * mx, cxy, cxz, cxy, yy - my * my, cyz, cxz, cyz, zz - mz * mz), -1)
    eye = torch.eye(3, dtype=cov.dtype, device=cov.device)
    cov = torch.where((count >= 3)[:, None, None], cov.reshape(-1, 3, 3), eye)
    normal = _fast_eigen3x3(cov)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=normal.dtype, device=normal.device)
    return torch.where((_dot(normal, normal).sqrt() == 0)[:, None], up, normal)


def _pair_features(
    p1: torch.Tensor, n1: torch.Tensor, p2: torch.Tensor, n2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Open3D's ComputePairFeatures (f0, f1, f2): zeros for coincident points or a degenerate frame."""
    dp = p2 - p1
    dist = _dot(dp, dp).sqrt()
    angle1 = _dot(n1, dp) / dist
    angle2 = _dot(n2, dp) / dist
    # Older Open3D sources swap when acos(|angle1|) > acos(|angle2|); Open3D 0.20 decides as |angle1| < |angle2|
    # (as newer sources write it), which differs where acos rounds both to one double: measured, this matches.
    swap = (angle1.abs() < angle2.abs())[..., None]
    src, dst = torch.where(swap, n2, n1), torch.where(swap, n1, n2)
    v = _cross(torch.where(swap, -dp, dp), src)
    v_norm = _dot(v, v).sqrt()
    v = v / v_norm[..., None]
    w = _cross(src, v)
    degenerate = (dist == 0) | (v_norm == 0)
    f0 = torch.atan2(_dot(w, dst), _dot(src, dst))
    f2 = torch.where(swap[..., 0], -angle2, angle1)
    f1 = _dot(v, dst)
    return (
        torch.where(degenerate, 0.0, f0),
        torch.where(degenerate, 0.0, f1),
        torch.where(degenerate, 0.0, f2),
    )


def _bin(scaled: torch.Tensor) -> torch.Tensor:
    """Open3D's histogram index: floor, clamped to [0, 10]; NaN -> 0 as Open3D's int cast on x86 ends there."""
    return scaled.floor().nan_to_num(0.0).clamp(0, FPFH_BINS - 1).long()


def _spfh(
    point: torch.Tensor, normal: torch.Tensor, nbr: torch.Tensor, nbr_normal: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    """Open3D's SPFH, (P, 33): each kept neighbour but slot 0 adds 100 / (count - 1) to one bin per feature."""
    f0, f1, f2 = _pair_features(point[:, None], normal[:, None], nbr[:, 1:], nbr_normal[:, 1:])
    bins = torch.cat(
        (
            _bin(FPFH_BINS * (f0 + math.pi) / (2.0 * math.pi)),
            _bin(FPFH_BINS * (f1 + 1.0) * 0.5) + FPFH_BINS,
            _bin(FPFH_BINS * (f2 + 1.0) * 0.5) + 2 * FPFH_BINS,
        ),
        1,
    )
    hits = keep[:, 1:].to(point.dtype).repeat(1, 3)
    counts = torch.zeros(len(point), FPFH_DIM, dtype=point.dtype, device=point.device).scatter_add_(
        1, bins, hits
    )
    pairs = (keep.sum(1) - 1).clamp(min=1).to(point.dtype)
    return counts * (100.0 / pairs)[:, None]


def _fpfh(spfh: torch.Tensor, nbr_spfh: torch.Tensor, d2: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Open3D's FPFH, (P, 33): neighbours' SPFH weighted by 1 / d2, each 11-bin group scaled to sum to 100, plus
    the point's own SPFH; zeros without neighbours. Slot 0 and coincident points (d2 = 0) are skipped.

    The weighted sum is a batched matmul rather than Open3D's divide-and-add loop: it is continuous in the SPFH,
    so the different rounding stays at 1e-13, and it avoids a second (P, max_nn, 33) temporary."""
    use = keep[:, 1:] & (d2[:, 1:] != 0)
    weights = torch.where(use, 1 / d2[:, 1:], 0.0)
    weighted = torch.bmm(weights[:, None], nbr_spfh[:, 1:]).squeeze(1)
    sums = weighted.reshape(-1, 3, FPFH_BINS).sum(2)
    scale = torch.where(sums != 0, 100.0 / sums, 0.0).repeat_interleave(FPFH_BINS, 1)
    return torch.where((keep.sum(1) > 1)[:, None], weighted * scale + spfh, 0.0)


def _check(xyz: torch.Tensor, window: int, chunk: int) -> None:
    if xyz.ndim != 4 or xyz.shape[-1] != 3:
        raise ValueError(f"expected (B, H, W, 3) clouds, got shape {tuple(xyz.shape)}")
    if window < 0 or chunk < 1:
        raise ValueError(f"window must be >= 0 and chunk >= 1, got window={window}, chunk={chunk}")


def _grid_normals(grid: _Grid, radius: float, max_nn: int, chunk: int) -> torch.Tensor:
    """(B * Hp * Wp, 3) normals of the valid pixels of a padded grid, zeros elsewhere."""
    normals = torch.zeros_like(grid.points)
    for query in grid.queries.split(chunk):
        idx, _, keep = _neighbours(grid, query, radius, max_nn)
        normals[query] = _normals(grid.points[idx], keep)
    return normals


def grid_normals_torch(
    xyz: torch.Tensor, radius: float, max_nn: int, window: int, chunk: int = DEFAULT_CHUNK
) -> torch.Tensor:
    """(B, H, W, 3) organized clouds -> (B, H, W, 3) float64 normals as Open3D's estimate_normals (hybrid search,
    fast eigen solver, sign as returned), neighbours from the pixel window; zeros where a point is missing."""
    _check(xyz, window, chunk)
    grid = _make_grid(xyz, window)
    return grid.unpad(_grid_normals(grid, radius, max_nn, chunk))


def grid_fpfh_torch(
    xyz: torch.Tensor,
    normal_radius: float,
    normal_max_nn: int,
    feature_radius: float,
    feature_max_nn: int,
    window: int,
    chunk: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """(B, H, W, 3) organized clouds on any device (metres; a pixel is missing when any coordinate is 0) ->
    (B, 33, H, W) float64 FPFH on the same device, zeros where a point is missing.

    Neighbours of a pixel are searched among the valid pixels at most ``window`` rows and columns away, for the
    normals and the features alike; ``chunk`` query points are processed at a time to bound memory. The SPFH and
    FPFH passes each redo the window search rather than keep (N, max_nn) neighbour lists between them.
    """
    _check(xyz, window, chunk)
    grid = _make_grid(xyz, window)
    normals = _grid_normals(grid, normal_radius, normal_max_nn, chunk)
    spfh = grid.points.new_zeros(len(grid.points), FPFH_DIM)
    for query in grid.queries.split(chunk):
        idx, _, keep = _neighbours(grid, query, feature_radius, feature_max_nn)
        spfh[query] = _spfh(grid.points[query], normals[query], grid.points[idx], normals[idx], keep)
    fpfh = torch.zeros_like(spfh)
    for query in grid.queries.split(chunk):
        idx, d2, keep = _neighbours(grid, query, feature_radius, feature_max_nn)
        fpfh[query] = _fpfh(spfh[query], spfh[idx], d2, keep)
    return grid.unpad(fpfh).permute(0, 3, 1, 2).contiguous()
