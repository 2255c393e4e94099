"""Subspace geometry for pullback directions (Park et al.'s local latent basis of the Jacobian J = dh/dx_t).

Conventions shared by every function here:

* A *basis* is a tensor [n, d] whose rows are orthonormal vectors. Any real tensor [n, *shape] is accepted
  and its rows are flattened to d = prod(shape) entries; float32 (or any real dtype) is accepted and all
  arithmetic runs in float64, so every returned tensor is float64, on the device of the first tensor argument.
* A function that returns a single vector returns it in the shape of one row of the basis it lies in
  (for a basis [n, C, H, W], a vector [C, H, W]); bases are returned flattened, [n, d].
* Angles are in radians, frequencies in cycles per pixel.
* Bad input raises :class:`~pipeline.io.errors.ConfigError` with a one-line message naming the argument.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch

from pipeline.io.errors import ConfigError
from pipeline.linalg import canonical_signs

RANK_TOLERANCE = 1e-10
"""A row is linearly dependent on the previous ones when |r_ii| <= RANK_TOLERANCE * max_j |r_jj| in QR."""

ZERO_TOLERANCE = 1e-12
"""A vector to normalise counts as zero when its norm is <= ZERO_TOLERANCE times the norm of its source."""

_SMALL_ANGLE_COSINE = 1 / math.sqrt(2)


def _real_tensor(value: object, name: str) -> torch.Tensor:
    """``value`` itself, after checking that it is a real (not complex) tensor."""
    if not isinstance(value, torch.Tensor):
        raise ConfigError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.is_complex():
        raise ConfigError(f"{name}: expected a real tensor, got dtype {value.dtype}")
    return value


def _finite(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """``tensor`` itself, after checking that every entry is finite."""
    if not torch.isfinite(tensor).all():
        raise ConfigError(f"{name}: contains NaN or inf")
    return tensor


def _rows(value: object, name: str, device: torch.device | None = None) -> torch.Tensor:
    """``value`` [n, *shape] as a finite float64 matrix [n, d] (d = prod(shape)) on ``device`` (default: its own)."""
    tensor = _real_tensor(value, name)
    if tensor.ndim < 2 or tensor.numel() == 0:
        raise ConfigError(f"{name} shape {tuple(tensor.shape)}: expected a non-empty tensor [n, *shape] of n >= 1 rows")
    matrix = tensor.to(device=device or tensor.device, dtype=torch.float64).reshape(tensor.shape[0], -1)
    return _finite(matrix, name)


def _vector(value: object, name: str, size: int, owner: str, device: torch.device) -> torch.Tensor:
    """``value`` (any shape with ``size`` entries) as a finite float64 vector [size] on ``device``."""
    tensor = _real_tensor(value, name)
    if tensor.numel() != size:
        shape = tuple(tensor.shape)
        raise ConfigError(f"{name} shape {shape}: has {tensor.numel()} entries, but the rows of {owner} have {size}")
    return _finite(tensor.to(device=device, dtype=torch.float64).reshape(size), name)


def _unit(vector: torch.Tensor, source_norm: torch.Tensor, message: str) -> torch.Tensor:
    """``vector`` / ||vector||; ConfigError(``message``) when ||vector|| <= ZERO_TOLERANCE * ``source_norm``."""
    norm = torch.linalg.vector_norm(vector)
    if norm <= ZERO_TOLERANCE * source_norm:
        raise ConfigError(message)
    return vector / norm


def _same_dimension(matrix: torch.Tensor, name: str, dimension: int, owner: str) -> None:
    """Check that the rows of ``matrix`` [n, d] have the ``dimension`` of the rows of ``owner``."""
    if matrix.shape[1] != dimension:
        raise ConfigError(f"{name}: rows have {matrix.shape[1]} entries, but the rows of {owner} have {dimension}")


def _orthonormal(matrix: torch.Tensor, name: str) -> torch.Tensor:
    """Orthonormal rows [n, d] spanning the rows of ``matrix`` [n, d] (see :func:`orthonormal_rows`)."""
    count, dimension = matrix.shape
    if count > dimension:
        raise ConfigError(f"{name}: {count} rows of {dimension} entries cannot be linearly independent (n > d)")
    q, r = torch.linalg.qr(matrix.T, mode="reduced")
    diagonal = r.diagonal()
    magnitude = diagonal.abs()
    dependent = (magnitude <= RANK_TOLERANCE * magnitude.max()).nonzero()
    if len(dependent):
        raise ConfigError(f"{name}: linearly dependent rows (row {int(dependent[0])} is in the span of earlier rows)")
    return (q * torch.sign(diagonal)).T.contiguous()


def _angles(basis_a: torch.Tensor, basis_b: torch.Tensor) -> torch.Tensor:
    """Principal angles [min(n_a, n_b)] (ascending, radians) between orthonormal row bases [n_a, d], [n_b, d]."""
    if basis_a.shape[0] > basis_b.shape[0]:
        basis_a, basis_b = basis_b, basis_a
    cross = basis_a @ basis_b.T
    cosines = torch.linalg.svdvals(cross).clamp(0, 1)  # descending: cos of the ascending angles
    sines = torch.linalg.svdvals(basis_a - cross @ basis_b).clamp(0, 1).flip(0)  # ascending: sin of the same
    angles = torch.where(cosines > _SMALL_ANGLE_COSINE, torch.arcsin(sines), torch.arccos(cosines))
    return angles.sort().values


def _bases(value: object, name: str, minimum: int) -> list[torch.Tensor]:
    """The subspaces in ``value`` (a sequence of [n, *shape] tensors or one tensor [N, n, *shape]) as
    orthonormal float64 row bases [n, d] on the device of the first, all of the same n and d."""
    if isinstance(value, torch.Tensor):
        if value.ndim < 3:
            raise ConfigError(f"{name} shape {tuple(value.shape)}: expected a tensor [N, n, *shape] of N bases")
        members = list(value)
    elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
        members = list(value)
    else:
        raise ConfigError(f"{name}: expected a list of [n, d] tensors or one [N, n, d], got {type(value).__name__}")
    if len(members) < minimum:
        raise ConfigError(f"{name}: {len(members)} bases given, need at least {minimum}")
    first = _orthonormal(_rows(members[0], f"{name}[0]"), f"{name}[0]")
    bases = [first]
    for index, member in enumerate(members[1:], start=1):
        basis = _orthonormal(_rows(member, f"{name}[{index}]", first.device), f"{name}[{index}]")
        if basis.shape != first.shape:
            raise ConfigError(
                f"{name}[{index}]: flattened shape {tuple(basis.shape)} differs from {name}[0]'s {tuple(first.shape)}"
            )
        bases.append(basis)
    return bases


def _images(value: object, name: str) -> torch.Tensor:
    """``value`` [n, C, H, W] as a finite, non-empty float64 tensor."""
    tensor = _real_tensor(value, name)
    if tensor.ndim != 4 or tensor.numel() == 0:
        raise ConfigError(f"{name} shape {tuple(tensor.shape)}: expected non-empty images [n, C, H, W]")
    return _finite(tensor.to(torch.float64), name)


def _ring_radii(height: int, width: int, device: torch.device) -> torch.Tensor:
    """Ring index [H, W] (int64) of each unshifted 2-D FFT frequency: round(min(H, W) * |f|), |f| in cycles/pixel."""
    fy = torch.fft.fftfreq(height, dtype=torch.float64, device=device)
    fx = torch.fft.fftfreq(width, dtype=torch.float64, device=device)
    radius = torch.sqrt(fy[:, None].square() + fx[None, :].square())
    return torch.round(min(height, width) * radius).long()


def orthonormal_rows(vectors: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the span of the rows of ``vectors``, row by row in the same order (QR).

    Row i of the result is the unit component of input row i orthogonal to rows 0..i-1 (Gram-Schmidt order),
    its sign chosen so that its dot product with input row i is positive.

    Args:
        vectors: [n, d] or [n, *shape] real tensor, n <= d linearly independent rows (any units).

    Returns:
        [n, d] float64, orthonormal rows (unitless).

    Raises:
        ConfigError: n > d, non-finite or empty input, or rank deficiency (|r_ii| <= 1e-10 * max_j |r_jj|).
    """
    return _orthonormal(_rows(vectors, "vectors"), "vectors")


def principal_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Principal angles between the span of the rows of ``a`` and the span of the rows of ``b``.

    Both are orthonormalised with :func:`orthonormal_rows`. With A the smaller basis and B the other, the
    cosines are the singular values of A B^T and the sines those of the residual A - (A B^T) B; an angle is
    arcsin(sine) where cosine > 1/sqrt(2) and arccos(cosine) otherwise, so that angles near 0 are accurate to
    rounding of the residual (arccos alone loses half the digits there) and angles near pi/2 too.

    Args:
        a: [n_a, d] or [n_a, *shape] rows spanning the first subspace.
        b: [n_b, d] or [n_b, *shape] rows spanning the second, with the same d.

    Returns:
        [min(n_a, n_b)] float64 angles in radians, ascending, in [0, pi/2].
    """
    basis_a = _orthonormal(_rows(a, "a"), "a")
    basis_b = _orthonormal(_rows(b, "b", basis_a.device), "b")
    _same_dimension(basis_b, "b", basis_a.shape[1], "a")
    return _angles(basis_a, basis_b)


def grassmann_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Geodesic distance on the Grassmannian between the spans of the rows of ``a`` and ``b``.

    It is the Euclidean norm ||theta||_2 of the :func:`principal_angles` theta: 0 for the same span (whatever
    the bases), pi/2 * sqrt(n) for mutually orthogonal n-dimensional subspaces.

    Args:
        a: [n, d] or [n, *shape] rows spanning the first subspace.
        b: [n, d] or [n, *shape] rows spanning the second (the same n and d).

    Returns:
        The distance in radians.
    """
    basis_a = _orthonormal(_rows(a, "a"), "a")
    basis_b = _orthonormal(_rows(b, "b", basis_a.device), "b")
    _same_dimension(basis_b, "b", basis_a.shape[1], "a")
    if basis_b.shape[0] != basis_a.shape[0]:
        raise ConfigError(f"b: spans {basis_b.shape[0]} dimensions but a spans {basis_a.shape[0]}; they must be equal")
    return float(torch.linalg.vector_norm(_angles(basis_a, basis_b)))


def transport(direction_h: torch.Tensor, u_target: torch.Tensor, v_target: torch.Tensor) -> torch.Tensor:
    """Parallel transport of an h-space tangent vector to another sample by matching coefficients
    (docs/methods.md, "Pullback directions").

    With U = ``u_target`` (the target sample's tangent basis in h, rows u_k = J v_k / sigma_k) and
    V = ``v_target`` (its latent basis in x, rows v_k), the coefficients are c = U direction_h and the result
    is v' = normalise(c V) = normalise(V^T U direction_h). Only the part of ``direction_h`` in the span of U
    counts. No Sigma^-1 is applied: this matches the papers' code and is not the pseudo-inverse J^+ (which
    would divide coefficient k by sigma_k).

    Args:
        direction_h: h-space direction with d_h entries (any shape, e.g. [*h_shape]); any units.
        u_target: [n, d_h] or [n, *h_shape], unit-norm rows (orthonormal in the intended use).
        v_target: [n, d_x] or [n, *x_shape], orthonormal rows paired with those of ``u_target``.

    Returns:
        [*x_shape] (the shape of one row of ``v_target``), float64, unit norm.

    Raises:
        ConfigError: mismatched sizes, non-finite input, or a zero result (direction_h orthogonal to U).
    """
    u = _rows(u_target, "u_target")
    v = _rows(v_target, "v_target", u.device)
    if v.shape[0] != u.shape[0]:
        raise ConfigError(f"v_target: has {v.shape[0]} rows, u_target {u.shape[0]}; the bases pair row by row")
    direction = _vector(direction_h, "direction_h", u.shape[1], "u_target", u.device)
    moved = _unit(
        (u @ direction) @ v,
        torch.linalg.vector_norm(direction),
        "direction_h: transports to zero (it is orthogonal to every row of u_target)",
    )
    return moved.reshape(v_target.shape[1:])


def project_onto_span(vector: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """The "local projection" of a global direction onto a local basis: normalise(B^T (B vector)).

    Args:
        vector: direction with d entries (any shape); any units.
        basis: [n, d] or [n, *shape] with orthonormal rows B (for instance from :func:`orthonormal_rows`).

    Returns:
        [*shape] (the shape of one row of ``basis``), float64, unit norm: the direction of the orthogonal
        projection of ``vector`` onto the span of the rows.

    Raises:
        ConfigError: mismatched sizes, non-finite input, or ``vector`` orthogonal to the span (zero projection).
    """
    rows = _rows(basis, "basis")
    flat = _vector(vector, "vector", rows.shape[1], "basis", rows.device)
    projected = _unit(
        (rows @ flat) @ rows,
        torch.linalg.vector_norm(flat),
        "vector: its projection onto the span of basis is zero (zero vector or orthogonal to every row)",
    )
    return projected.reshape(basis.shape[1:])


def chordal_mean(bases: Sequence[torch.Tensor] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Extrinsic (chordal) mean of N subspaces of equal dimension n.

    It is the span of the top-n eigenvectors of the mean projector P = (1/N) sum_i B_i^T B_i, where B_i is
    an orthonormal basis of subspace i (:func:`orthonormal_rows` of the input). P is never formed: the right
    singular vectors of the stacked [N*n, d] matrix of the B_i divided by sqrt(N) are its eigenvectors, and
    the squared singular values its eigenvalues.

    Args:
        bases: a sequence of N >= 1 tensors [n, d] (or [n, *shape]), or one tensor [N, n, d] (or
            [N, n, *shape]), each spanning one n-dimensional subspace of R^d.

    Returns:
        ``(mean_basis, weights)``: mean_basis [n, d] float64 with orthonormal rows ordered by decreasing
        eigenvalue, each signed so that its entry of largest magnitude is positive; weights [n] float64, the
        eigenvalues = the Rayleigh quotients of the rows against P, in [0, 1] (1: every subspace contains
        that direction; 1/N: only one does).
    """
    members = _bases(bases, "bases", minimum=1)
    stacked = torch.cat(members) / math.sqrt(len(members))
    _, singular_values, right = torch.linalg.svd(stacked, full_matrices=False)
    count = members[0].shape[0]
    mean = right[:count]
    return mean * canonical_signs(mean)[:, None], singular_values[:count].square().clamp(0, 1)


def radial_power_spectrum(vectors: torch.Tensor, num_bins: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Radially averaged power spectral density of each image-shaped vector, normalised to sum 1.

    Per vector: the 2-D FFT of each channel, |F|^2 averaged over channels, then averaged over the rings of
    integer radius r = round(min(H, W) * |f|), |f| = sqrt(fy^2 + fx^2) the frequency in cycles per pixel
    (for square images r = round(sqrt(ky^2 + kx^2)) with k in cycles per image). Ring r is at frequency
    r / min(H, W) cycles per pixel. Rings 0..num_bins-1 are kept and the spectrum is normalised to sum 1
    over them. The rings are computed from ``torch.fft.fftfreq``, so no fftshift is needed.

    Args:
        vectors: [n, C, H, W] real images (any units).
        num_bins: number of rings kept; default min(H, W) // 2 + 1, the complete rings up to the Nyquist
            frequency 0.5 cycles/pixel. Up to the largest ring present (the corners, about 0.71) + 1.

    Returns:
        ``(frequencies, power)``: frequencies [num_bins] float64 in cycles per pixel; power [n, num_bins]
        float64, non-negative, each row summing to 1 (unitless).

    Raises:
        ConfigError: bad shape, non-finite input, bad num_bins, or an image with no power in the kept rings.
    """
    images = _images(vectors, "vectors")
    height, width = images.shape[-2:]
    radii = _ring_radii(height, width, images.device)
    largest = int(radii.max()) + 1
    if num_bins is None:
        num_bins = min(height, width) // 2 + 1
    elif not isinstance(num_bins, int) or isinstance(num_bins, bool) or not 1 <= num_bins <= largest:
        raise ConfigError(f"num_bins {num_bins!r}: must be an integer in [1, {largest}] for {height}x{width} images")
    spectrum = torch.fft.fft2(images).abs().square().mean(dim=1)  # [n, H, W]
    kept = radii < num_bins
    ring = radii[kept]
    sums = spectrum.new_zeros(len(images), num_bins).index_add_(1, ring, spectrum[:, kept])
    power = sums / torch.bincount(ring, minlength=num_bins)
    totals = power.sum(dim=1, keepdim=True)
    empty = (totals.squeeze(1) <= 0).nonzero()
    if len(empty):
        raise ConfigError(f"vectors[{int(empty[0])}]: no power in the {num_bins} kept frequency rings (zero image?)")
    frequencies = torch.arange(num_bins, dtype=torch.float64, device=images.device) / min(height, width)
    return frequencies, power / totals


def mean_frequency(vectors: torch.Tensor) -> torch.Tensor:
    """Power-weighted mean radial frequency of each image-shaped vector: sum_r f_r P(r).

    P is :func:`radial_power_spectrum` over all rings present, corners included (so that a checkerboard,
    whose power sits at the corner frequency (0.5, 0.5), counts), normalised to sum 1.

    Args:
        vectors: [n, C, H, W] real images (any units).

    Returns:
        [n] float64 in cycles per pixel: 0 for a constant image, low for smooth vectors, high (up to about
        0.75 with the rounded corner ring) for checkerboards.
    """
    images = _images(vectors, "vectors")
    radii = _ring_radii(images.shape[-2], images.shape[-1], images.device)
    frequencies, power = radial_power_spectrum(images, num_bins=int(radii.max()) + 1)
    return power @ frequencies


def segment_curvedness(points: torch.Tensor, features: torch.Tensor) -> dict[str, float]:
    """Curvedness of the image of a straight segment under a map (the project's operational definition of
    "curvedness of the segment between two samples", which the paper defines only in words).

    With h_j = ``features[j]`` the images of the S equally spaced points x(s_j) of the segment: arc length
    sum_j ||h_{j+1} - h_j|| (the polyline through the images), chord length ||h_S - h_1||, and curvedness
    1 - chord/arc: 0 for a straight image, towards 1 for a strongly bent one, 0 when arc is 0. For the
    arc of a circle of angle phi it tends to 1 - 2 sin(phi/2) / phi as S grows.

    Args:
        points: [S, d_x] (or [S, *x_shape]) the S >= 2 points x(s_j); only their count is used.
        features: [S, d_h] (or [S, *h_shape]) their images h(x(s_j)), in h units.

    Returns:
        {"arc_length", "chord_length"} in h units and {"curvedness"} unitless, in [0, 1].
    """
    path = _rows(points, "points")
    if path.shape[0] < 2:
        raise ConfigError(f"points: {path.shape[0]} point given, a segment needs at least 2")
    image = _rows(features, "features", path.device)
    if image.shape[0] != path.shape[0]:
        raise ConfigError(f"features: has {image.shape[0]} rows, points {path.shape[0]}; need one per point")
    arc = float(torch.linalg.vector_norm(image.diff(dim=0), dim=1).sum())
    chord = float(torch.linalg.vector_norm(image[-1] - image[0]))
    return {"arc_length": arc, "chord_length": chord, "curvedness": 1 - chord / arc if arc > 0 else 0.0}


def tangent_turning(bases: Sequence[torch.Tensor] | torch.Tensor) -> float:
    """Total turning of the tangent space along a segment: sum_j grassmann_distance(B_j, B_{j+1}).

    The project's operational companion to :func:`segment_curvedness`: how much the local basis turns
    between consecutive points of the segment (0 when it is the same subspace everywhere).

    Args:
        bases: S >= 2 local bases along the segment, as a sequence of [n, d] (or [n, *shape]) tensors or one
            tensor [S, n, d] (or [S, n, *shape]), all of the same n and d.

    Returns:
        The summed Grassmann distances in radians.
    """
    members = _bases(bases, "bases", minimum=2)
    return sum(float(torch.linalg.vector_norm(_angles(first, second))) for first, second in pairwise(members))
