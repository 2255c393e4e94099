"""Tests for pipeline.directions.geometry: angles, transport, projection, chordal mean, spectra, curvedness."""

import math

import pytest
import torch

from pipeline.directions.geometry import (
    chordal_mean,
    grassmann_distance,
    mean_frequency,
    orthonormal_rows,
    principal_angles,
    project_onto_span,
    radial_power_spectrum,
    segment_curvedness,
    tangent_turning,
    transport,
)
from pipeline.io.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_orthogonal(size: int, gen: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(size, size, generator=gen, dtype=F64)).Q


def unit_rows(*indices: int, dimension: int) -> torch.Tensor:
    return torch.eye(dimension, dtype=F64)[list(indices)]


def two_plane(theta: float, dimension: int = 4) -> torch.Tensor:
    """Rows e1 and cos(theta) e2 + sin(theta) e3: the plane of e1, e2 with e2 turned by theta towards e3."""
    plane = unit_rows(0, 1, dimension=dimension)
    plane[1, 1], plane[1, 2] = math.cos(theta), math.sin(theta)
    return plane


# --- orthonormal_rows ---------------------------------------------------------------------------------------


def test_orthonormal_rows_is_gram_schmidt_in_order_with_positive_signs() -> None:
    vectors = torch.randn(3, 2, 4, generator=generator(), dtype=torch.float32)
    basis = orthonormal_rows(vectors)
    flat = vectors.reshape(3, -1).to(F64)
    assert basis.shape == (3, 8) and basis.dtype == F64
    torch.testing.assert_close(basis @ basis.T, torch.eye(3, dtype=F64), atol=1e-14, rtol=0)
    torch.testing.assert_close(basis[0], flat[0] / flat[0].norm(), atol=1e-14, rtol=0)
    assert ((basis * flat).sum(dim=1) > 0).all()
    # Row i lies in the span of input rows 0..i: the input is upper-triangular in the new basis.
    coefficients = flat @ basis.T
    assert coefficients.triu(1).abs().max() < 1e-13


@pytest.mark.parametrize(
    ("vectors", "message"),
    [
        (torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]]), r"vectors: linearly dependent rows \(row 1"),
        (torch.zeros(2, 3), "vectors: linearly dependent"),
        (torch.randn(4, 3), "vectors: 4 rows of 3 entries"),
        (torch.zeros(0, 3), "vectors shape"),
        (torch.ones(3), "vectors shape"),
        (torch.tensor([[1.0, float("nan")]]), "vectors: contains NaN"),
        ([[1.0, 0.0]], "vectors: expected a torch.Tensor"),
    ],
)
def test_orthonormal_rows_rejects_bad_input(vectors: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        orthonormal_rows(vectors)


# --- principal_angles and grassmann_distance -----------------------------------------------------------------


@pytest.mark.parametrize("theta", [1e-7, 0.3, 1.2, math.pi / 2])
def test_principal_angles_of_a_turned_plane(theta: float) -> None:
    angles = principal_angles(unit_rows(0, 1, dimension=4), two_plane(theta))
    assert angles.shape == (2,)
    assert abs(float(angles[0])) < 1e-15
    assert abs(float(angles[1]) - theta) <= 1e-12 * theta  # also for 1e-7, where arccos would err by ~1e-9


def test_principal_angles_are_rotation_invariant_and_handle_unequal_dimensions() -> None:
    rotation = random_orthogonal(5, generator(1))
    a = unit_rows(0, 1, 3, dimension=5) @ rotation  # a 3-dimensional subspace
    b = two_plane(0.4, dimension=5) @ rotation
    torch.testing.assert_close(principal_angles(a, b), torch.tensor([0.0, 0.4], dtype=F64), atol=1e-14, rtol=0)
    torch.testing.assert_close(principal_angles(b, a), principal_angles(a, b), atol=1e-15, rtol=0)


def test_grassmann_distance_is_symmetric_and_depends_only_on_the_spans() -> None:
    gen = generator(2)
    a = torch.randn(3, 7, generator=gen, dtype=F64)
    b = torch.randn(3, 7, generator=gen, dtype=F64)
    mixing = torch.randn(3, 3, generator=gen, dtype=F64)  # another (non-orthonormal) basis of the same span
    distance = grassmann_distance(a, b)
    assert distance > 0.1
    assert abs(grassmann_distance(b, a) - distance) < 1e-14
    assert grassmann_distance(a, mixing @ a) < 1e-12
    assert abs(grassmann_distance(mixing @ a, b) - distance) < 1e-12
    assert abs(distance - float(principal_angles(a, b).norm())) < 1e-15


def test_grassmann_distance_of_orthogonal_subspaces() -> None:
    a = unit_rows(0, 1, 2, dimension=7)
    b = unit_rows(3, 4, 5, dimension=7)
    assert abs(grassmann_distance(a, b) - math.pi / 2 * math.sqrt(3)) < 1e-14


def test_grassmann_distance_of_a_turned_plane_is_the_angle() -> None:
    assert abs(grassmann_distance(unit_rows(0, 1, dimension=4), two_plane(0.7)) - 0.7) < 1e-14


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        (torch.eye(4)[:2], torch.eye(5)[:2], "b: rows have 5 entries, but the rows of a have 4"),
        (torch.eye(4)[:2], torch.eye(4)[:3], "b: spans 3 dimensions but a spans 2"),
        (torch.full((2, 4), float("inf")), torch.eye(4)[:2], "a: contains NaN or inf"),
        (torch.eye(4)[:2], torch.zeros(2, 0), "b shape"),
    ],
)
def test_grassmann_distance_rejects_bad_input(a: torch.Tensor, b: torch.Tensor, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        grassmann_distance(a, b)


def test_principal_angles_rejects_mismatched_dimensions() -> None:
    with pytest.raises(ConfigError, match="b: rows have 3 entries"):
        principal_angles(torch.eye(4)[:2], torch.eye(3)[:2])


# --- transport and project_onto_span ------------------------------------------------------------------------


def test_transport_onto_the_own_basis_returns_the_latent_singular_vector() -> None:
    gen = generator(3)
    jacobian = torch.randn(10, 18, generator=gen, dtype=F64)  # h = J x, x of shape [2, 3, 3]
    _, sigma, vh = torch.linalg.svd(jacobian, full_matrices=False)
    v = vh[:4]
    u = (jacobian @ v.T / sigma[:4]).T  # u_k = J v_k / sigma_k
    v_target = v.reshape(4, 2, 3, 3)
    for k in range(4):
        moved = transport(u[k], u, v_target)
        assert moved.shape == (2, 3, 3)
        assert abs(float(moved.norm()) - 1) < 1e-14
        torch.testing.assert_close(moved, v_target[k], atol=1e-13, rtol=0)


def test_transport_matches_coefficients_without_sigma_weighting() -> None:
    gen = generator(4)
    u = orthonormal_rows(torch.randn(4, 8, generator=gen, dtype=F64))
    v = orthonormal_rows(torch.randn(3, 5, generator=gen, dtype=F64))
    u_target, outside = u[:3], u[3]  # ``outside`` is orthogonal to every row of u_target
    direction = (2 * u_target[0] - u_target[2] + 5 * outside).to(torch.float32)
    expected = (2 * v[0] - v[2]) / math.sqrt(5)
    torch.testing.assert_close(transport(direction, u_target, v), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("direction", "u_rows", "v_rows", "message"),
    [
        (torch.eye(4)[3], 2, 2, "direction_h: transports to zero"),
        (torch.zeros(4), 2, 2, "direction_h: transports to zero"),
        (torch.ones(5), 2, 2, r"direction_h shape \(5,\): has 5 entries, but the rows of u_target have 4"),
        (torch.ones(4), 2, 3, "v_target: has 3 rows, u_target 2"),
    ],
)
def test_transport_rejects_bad_input(direction: torch.Tensor, u_rows: int, v_rows: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        transport(direction, torch.eye(4)[:u_rows], torch.eye(6)[:v_rows])


def test_project_onto_span_keeps_span_vectors_and_removes_the_orthogonal_part() -> None:
    gen = generator(5)
    full = orthonormal_rows(torch.randn(4, 6, generator=gen, dtype=F64))
    basis = full[:3].reshape(3, 2, 3)
    inside = torch.tensor([3.0, -1.0, 2.0], dtype=F64) @ full[:3]
    expected = (inside / inside.norm()).reshape(2, 3)
    torch.testing.assert_close(project_onto_span(inside, basis), expected, atol=1e-14, rtol=0)
    torch.testing.assert_close(project_onto_span(inside + 4 * full[3], basis), expected, atol=1e-14, rtol=0)
    with pytest.raises(ConfigError, match="vector: its projection onto the span of basis is zero"):
        project_onto_span(full[3], basis)
    with pytest.raises(ConfigError, match=r"vector shape \(5,\)"):
        project_onto_span(torch.ones(5), basis)


# --- chordal_mean ------------------------------------------------------------------------------------------


def test_chordal_mean_of_one_subspace_in_several_bases_is_that_subspace() -> None:
    gen = generator(6)
    span = torch.randn(3, 10, generator=gen, dtype=F64)
    copies = [random_orthogonal(3, gen) @ orthonormal_rows(span) for _ in range(4)]
    mean, weights = chordal_mean(copies)
    assert mean.shape == (3, 10)
    assert grassmann_distance(mean, span) < 1e-10
    torch.testing.assert_close(weights, torch.ones(3, dtype=F64), atol=1e-12, rtol=0)
    stacked_mean, stacked_weights = chordal_mean(torch.stack(copies).reshape(4, 3, 2, 5).float())
    assert grassmann_distance(stacked_mean, span) < 1e-6
    torch.testing.assert_close(stacked_weights, weights, atol=1e-6, rtol=0)


def test_chordal_mean_puts_a_shared_direction_first() -> None:
    gen = generator(7)
    rotation = random_orthogonal(6, gen)  # rows: an orthonormal frame q0..q5 of R^6
    first = torch.tensor([[0.6, 0.8], [-0.8, 0.6]], dtype=F64) @ rotation[[0, 1]]
    second = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=F64) @ rotation[[0, 2]]
    mean, weights = chordal_mean([first, second])
    torch.testing.assert_close(weights, torch.tensor([1.0, 0.5], dtype=F64), atol=1e-12, rtol=0)
    assert abs(abs(float(mean[0] @ rotation[0])) - 1) < 1e-12
    largest = mean.abs().argmax(dim=1)
    assert (mean.gather(1, largest[:, None]) > 0).all()


def test_chordal_mean_agrees_with_the_explicit_mean_projector() -> None:
    gen = generator(8)
    bases = [orthonormal_rows(torch.randn(2, 6, generator=gen, dtype=F64)) for _ in range(5)]
    projector = sum(basis.T @ basis for basis in bases) / len(bases)
    values, vectors = torch.linalg.eigh(projector)
    expected = vectors[:, [-1, -2]].T
    expected = expected * torch.sign(expected.gather(1, expected.abs().argmax(dim=1, keepdim=True)))
    mean, weights = chordal_mean(bases)
    torch.testing.assert_close(weights, values[[-1, -2]], atol=1e-12, rtol=0)
    torch.testing.assert_close(mean, expected, atol=1e-10, rtol=0)
    assert ((weights > 0) & (weights < 1)).all()


@pytest.mark.parametrize(
    ("bases", "message"),
    [
        ([], "bases: 0 bases given, need at least 1"),
        ([torch.eye(5)[:2], torch.eye(5)[:3]], r"bases\[1\]: flattened shape \(3, 5\) differs"),
        ([torch.eye(5)[:2], torch.eye(4)[:2]], r"bases\[1\]: flattened shape"),
        ([torch.eye(5)[:2], torch.ones(2, 5)], r"bases\[1\]: linearly dependent"),
        (torch.eye(5), r"bases shape \(5, 5\)"),
        ("subspaces", "bases: expected a list"),
        (3, "bases: expected a list"),
    ],
)
def test_chordal_mean_rejects_bad_input(bases: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        chordal_mean(bases)


# --- radial_power_spectrum and mean_frequency ----------------------------------------------------------------


def cosine_image(frequency: int, height: int, width: int, along: str) -> torch.Tensor:
    """[1, 2, H, W]: cos(2 pi k x / W) (along "x") or cos(2 pi k y / H) (along "y"), k cycles per image."""
    if along == "x":
        wave = torch.cos(2 * math.pi * frequency * torch.arange(width, dtype=F64) / width).expand(height, width)
    else:
        wave = torch.cos(2 * math.pi * frequency * torch.arange(height, dtype=F64) / height)[:, None]
        wave = wave.expand(height, width)
    return torch.stack([wave, -3 * wave])[None]


def test_constant_image_has_all_power_at_frequency_zero() -> None:
    images = torch.ones(2, 3, 8, 8) * torch.tensor([1.0, -2.0])[:, None, None, None]
    frequencies, power = radial_power_spectrum(images)
    torch.testing.assert_close(frequencies, torch.arange(5, dtype=F64) / 8, atol=0, rtol=0)
    torch.testing.assert_close(power[:, 0], torch.ones(2, dtype=F64), atol=1e-14, rtol=0)
    assert power[:, 1:].max() < 1e-25
    assert mean_frequency(images).abs().max() < 1e-14


@pytest.mark.parametrize(("frequency", "along"), [(3, "x"), (5, "y"), (1, "x")])
def test_cosine_peaks_at_its_ring(frequency: int, along: str) -> None:
    _, power = radial_power_spectrum(cosine_image(frequency, 16, 16, along))
    assert int(power[0].argmax()) == frequency
    assert float(power[0, frequency]) > 1 - 1e-12
    assert abs(float(mean_frequency(cosine_image(frequency, 16, 16, along))[0]) - frequency / 16) < 1e-12


def test_non_square_rings_are_in_cycles_per_pixel() -> None:
    # 4 cycles across W = 16 is 0.25 cycles/pixel: ring 3 of 12x16 images (rings are 1/12 cycles/pixel apart).
    frequencies, power = radial_power_spectrum(cosine_image(4, 12, 16, "x"))
    assert int(power[0].argmax()) == 3 and float(frequencies[3]) == 0.25
    _, power_y = radial_power_spectrum(cosine_image(2, 12, 16, "y"))  # 2 cycles across H = 12: 1/6 cycles/pixel
    assert int(power_y[0].argmax()) == 2


def test_spectra_are_normalised_and_num_bins_truncates() -> None:
    images = torch.randn(3, 2, 8, 8, generator=generator(9))
    frequencies, power = radial_power_spectrum(images)
    assert frequencies.shape == (5,) and power.shape == (3, 5)
    assert (power >= 0).all()
    torch.testing.assert_close(power.sum(dim=1), torch.ones(3, dtype=F64), atol=1e-14, rtol=0)
    few_frequencies, few = radial_power_spectrum(images, num_bins=3)
    assert few_frequencies.shape == (3,)
    torch.testing.assert_close(few, power[:, :3] / power[:, :3].sum(dim=1, keepdim=True), atol=1e-14, rtol=0)
    _, everything = radial_power_spectrum(images, num_bins=7)  # up to the corner ring round(4 sqrt 2) = 6
    torch.testing.assert_close(everything.sum(dim=1), torch.ones(3, dtype=F64), atol=1e-14, rtol=0)


def test_checkerboard_has_a_higher_mean_frequency_than_a_gradient() -> None:
    rows, columns = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    checkerboard = ((rows + columns) % 2 * 2 - 1).to(F64)
    gradient = torch.linspace(-1, 1, 8, dtype=F64)[None, :] + torch.linspace(-1, 1, 8, dtype=F64)[:, None]
    frequency = mean_frequency(torch.stack([checkerboard, gradient])[:, None])
    assert abs(float(frequency[0]) - 6 / 8) < 1e-12  # all power at (-4, -4): ring round(4 sqrt 2) = 6
    assert 0 < float(frequency[1]) < 0.25


@pytest.mark.parametrize("num_bins", [0, 8, 2.5, True])
def test_radial_power_spectrum_rejects_bad_num_bins(num_bins: object) -> None:
    with pytest.raises(ConfigError, match=r"num_bins .*: must be an integer in \[1, 7\] for 8x8 images"):
        radial_power_spectrum(torch.ones(1, 1, 8, 8), num_bins=num_bins)


@pytest.mark.parametrize(
    ("vectors", "message"),
    [
        (torch.ones(1, 8, 8), r"vectors shape \(1, 8, 8\): expected non-empty images"),
        (torch.cat([torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)]), r"vectors\[1\]: no power"),
        (torch.full((1, 1, 4, 4), float("nan")), "vectors: contains NaN"),
    ],
)
def test_spectra_reject_bad_images(vectors: torch.Tensor, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        radial_power_spectrum(vectors)
    with pytest.raises(ConfigError, match=message):
        mean_frequency(vectors)


# --- segment_curvedness and tangent_turning ------------------------------------------------------------------


def test_linear_image_of_a_segment_is_straight() -> None:
    gen = generator(10)
    start, end = torch.randn(2, 5, generator=gen, dtype=F64)
    points = start + torch.linspace(0, 1, 50, dtype=F64)[:, None] * (end - start)
    features = points @ torch.randn(7, 5, generator=gen, dtype=F64).T + torch.randn(7, generator=gen, dtype=F64)
    result = segment_curvedness(points, features)
    assert abs(result["curvedness"]) < 1e-12
    assert abs(result["arc_length"] - result["chord_length"]) < 1e-12 * result["chord_length"]


@pytest.mark.parametrize("phi", [0.5, math.pi / 2, 3.0])
def test_circle_arc_curvedness(phi: float) -> None:
    count = 200
    s = torch.linspace(0, 1, count, dtype=F64)
    features = torch.stack([torch.cos(s * phi), torch.sin(s * phi)], dim=1)
    result = segment_curvedness(s[:, None].expand(count, 3), features)
    assert abs(result["chord_length"] - 2 * math.sin(phi / 2)) < 1e-14
    polyline = 2 * (count - 1) * math.sin(phi / (2 * (count - 1)))  # the exact arc length of the polyline
    assert abs(result["curvedness"] - (1 - 2 * math.sin(phi / 2) / polyline)) < 1e-12
    assert abs(result["curvedness"] - (1 - 2 * math.sin(phi / 2) / phi)) < 1e-3


def test_constant_image_has_zero_curvedness() -> None:
    result = segment_curvedness(torch.randn(4, 3), torch.ones(4, 2, 2))
    assert result == {"arc_length": 0.0, "chord_length": 0.0, "curvedness": 0.0}


@pytest.mark.parametrize(
    ("points", "features", "message"),
    [
        (torch.zeros(1, 3), torch.zeros(1, 2), "points: 1 point given, a segment needs at least 2"),
        (torch.zeros(3, 3), torch.zeros(4, 2), "features: has 4 rows, points 3"),
        (torch.zeros(3), torch.zeros(3, 2), r"points shape \(3,\)"),
        (torch.zeros(3, 3), torch.full((3, 2), float("inf")), "features: contains NaN or inf"),
    ],
)
def test_segment_curvedness_rejects_bad_input(points: torch.Tensor, features: torch.Tensor, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        segment_curvedness(points, features)


def test_tangent_turning_sums_the_grassmann_distances() -> None:
    plane = unit_rows(0, 1, dimension=5)
    same = [plane, torch.tensor([[2.0, 1.0], [-1.0, 3.0]], dtype=F64) @ plane, plane.flip(0)]  # one span, 3 bases
    assert tangent_turning(same) < 1e-12
    turning = torch.stack([two_plane(0.2 * j, dimension=5) for j in range(4)])  # turns by 0.2 per step
    assert abs(tangent_turning(turning) - 0.6) < 1e-13
    with pytest.raises(ConfigError, match="bases: 1 bases given, need at least 2"):
        tangent_turning(turning[:1])
