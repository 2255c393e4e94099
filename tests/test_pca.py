"""Per-step and all-step PCA of h (pipeline.directions.pca) against sklearn's exact PCA."""

from pathlib import Path

import pytest
import torch
from sklearn.decomposition import PCA

from pipeline.directions import Origin, load_directions, save_directions
from pipeline.directions.pca import PCAResult, pca_directions, pca_directions_streaming
from pipeline.io.errors import ConfigError
from pipeline.linalg import canonical_signs

SAMPLES, STEPS, H_SHAPE = 40, 3, (2, 3, 4)
FEATURES = 24
COMPONENTS = 4
ORIGIN = Origin(model_id="toy/ddpm", hspace_location="after", sampler_steps=STEPS, eta=1.0)


def low_rank_h(seed: int = 0, rank: int = 6, noise: float = 0.01) -> torch.Tensor:
    """h [N, T, *h_shape] float64: a rank-``rank`` signal with distinct strengths (latent factors shared by all
    steps, a pattern per step), a per-step mean and noise."""
    generator = torch.Generator().manual_seed(seed)
    latent = torch.randn(SAMPLES, 1, rank, generator=generator, dtype=torch.float64)
    patterns = torch.randn(STEPS, rank, FEATURES, generator=generator, dtype=torch.float64)
    strengths = torch.linspace(5.0, 1.0, rank, dtype=torch.float64).reshape(1, 1, rank, 1)
    signal = (latent.unsqueeze(-1) * strengths * patterns.unsqueeze(0)).sum(dim=2)
    offset = 3.0 * torch.randn(STEPS, FEATURES, generator=generator, dtype=torch.float64)
    noisy = signal + offset + noise * torch.randn(SAMPLES, STEPS, FEATURES, generator=generator, dtype=torch.float64)
    return noisy.reshape(SAMPLES, STEPS, *H_SHAPE)


def float64(values: object) -> torch.Tensor:
    """A JSON list (or number) from ``extra`` as a float64 tensor."""
    return torch.tensor(values, dtype=torch.float64)


def sklearn_pca(data: torch.Tensor) -> PCA:
    """Exact PCA of rows ``data`` [N, F] (full SVD solver)."""
    return PCA(n_components=COMPONENTS, svd_solver="full").fit(data.numpy())


def per_step_reference(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """sklearn per step with sign rules 1 and 2 applied: axes [K, T, D], s [K, T], ratios [K, T], std [K, T]."""
    fits = [sklearn_pca(h[:, step].reshape(SAMPLES, FEATURES)) for step in range(STEPS)]
    axes = torch.stack([torch.from_numpy(fit.components_) for fit in fits], dim=1)
    axes = axes * canonical_signs(axes).unsqueeze(-1)
    agreement = (axes * axes[:, :1]).sum(dim=-1)
    axes = axes * torch.where(agreement < 0, -1.0, 1.0).to(axes.dtype).unsqueeze(-1)
    values = torch.stack([torch.from_numpy(fit.singular_values_) for fit in fits], dim=1)
    ratios = torch.stack([torch.from_numpy(fit.explained_variance_ratio_) for fit in fits], dim=1)
    std = torch.stack([torch.from_numpy(fit.explained_variance_).sqrt() for fit in fits], dim=1)
    return axes, values, ratios, std


def assert_results_close(first: PCAResult, second: PCAResult, atol: float) -> None:
    for mine, theirs in ((first.per_step, second.per_step), (first.all_steps, second.all_steps)):
        torch.testing.assert_close(mine.directions, theirs.directions, rtol=0, atol=atol)
        torch.testing.assert_close(mine.singular_values, theirs.singular_values, rtol=atol, atol=0)
        torch.testing.assert_close(mine.scales, theirs.scales, rtol=atol, atol=0)


@pytest.fixture(scope="module")
def h() -> torch.Tensor:
    return low_rank_h()


@pytest.mark.parametrize("oversampling", [30, 2], ids=["full-width", "randomized"])
def test_per_step_matches_sklearn(h: torch.Tensor, oversampling: int) -> None:
    result = pca_directions(h, COMPONENTS, ORIGIN, oversampling=oversampling, dtype=torch.float64).per_step
    axes, values, ratios, std = per_step_reference(h)
    assert result.method == "pca_per_step" and result.names == ["pc0", "pc1", "pc2", "pc3"]
    assert result.directions.shape == (COMPONENTS, STEPS, *H_SHAPE)
    mine = result.directions.reshape(COMPONENTS, STEPS, FEATURES)
    up_to_sign = torch.minimum((mine - axes).abs(), (mine + axes).abs())
    assert up_to_sign.max() < 1e-6
    torch.testing.assert_close(mine, axes, rtol=0, atol=1e-6)  # identical after the sign rules
    torch.testing.assert_close(result.singular_values, values, rtol=1e-9, atol=0)
    torch.testing.assert_close(result.scales, std, rtol=1e-9, atol=0)
    torch.testing.assert_close(float64(result.extra["explained_variance_ratio"]), ratios, rtol=1e-9, atol=0)


@pytest.mark.parametrize("oversampling", [100, 2], ids=["full-width", "randomized"])
def test_all_steps_matches_sklearn_without_per_step_resigning(h: torch.Tensor, oversampling: int) -> None:
    result = pca_directions(h, COMPONENTS, ORIGIN, oversampling=oversampling, dtype=torch.float64).all_steps
    fit = sklearn_pca(h.reshape(SAMPLES, STEPS * FEATURES))
    axes = torch.from_numpy(fit.components_)
    axes = axes * canonical_signs(axes).unsqueeze(-1)
    assert result.method == "pca_all_steps"
    torch.testing.assert_close(result.directions.reshape(COMPONENTS, -1), axes, rtol=0, atol=1e-6)
    torch.testing.assert_close(result.singular_values, torch.from_numpy(fit.singular_values_), rtol=1e-9, atol=0)
    torch.testing.assert_close(result.scales, torch.from_numpy(fit.explained_variance_).sqrt(), rtol=1e-9, atol=0)
    ratios = float64(result.extra["explained_variance_ratio"])
    torch.testing.assert_close(ratios, torch.from_numpy(fit.explained_variance_ratio_), rtol=1e-9, atol=0)


def test_sign_rule_two_invariants(h: torch.Tensor) -> None:
    per_step = pca_directions(h, COMPONENTS, ORIGIN).per_step.directions.reshape(COMPONENTS, STEPS, FEATURES)
    assert ((per_step * per_step[:, :1]).sum(dim=-1) >= 0).all()
    reference = per_step[:, 0]
    assert (reference.gather(-1, reference.abs().argmax(dim=-1, keepdim=True)) > 0).all()
    torch.testing.assert_close(per_step.norm(dim=-1), torch.ones(COMPONENTS, STEPS))


def test_all_step_vectors_keep_opposite_step_parts() -> None:
    generator = torch.Generator().manual_seed(3)
    latent = torch.randn(SAMPLES, 1, 1, generator=generator, dtype=torch.float64)
    pattern = torch.randn(FEATURES, generator=generator, dtype=torch.float64)
    # one shared factor that appears with pattern p at step 0 and -p at the other steps
    signs = torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64).reshape(1, STEPS, 1)
    noise = 0.01 * torch.randn(SAMPLES, STEPS, FEATURES, generator=generator, dtype=torch.float64)
    h = (10 * latent * signs * pattern + noise).reshape(SAMPLES, STEPS, *H_SHAPE)
    result = pca_directions(h, 1, ORIGIN, dtype=torch.float64)
    whole = result.all_steps.directions[0].reshape(STEPS, FEATURES)
    assert (whole[0] @ whole[1]) < 0 and (whole[0] @ whole[2]) < 0
    torch.testing.assert_close(whole.norm(), torch.tensor(1.0, dtype=torch.float64))
    per_step = result.per_step.directions[0].reshape(STEPS, FEATURES)
    assert (per_step[0] @ per_step[1]) > 0 and (per_step[0] @ per_step[2]) > 0


def test_streaming_equals_in_memory(h: torch.Tensor) -> None:
    in_memory = pca_directions(h, COMPONENTS, ORIGIN, dtype=torch.float64, batch_size=9)
    stored = h.to(torch.float64)
    raw = pca_directions_streaming(
        lambda: iter(stored.split(7)),
        COMPONENTS,
        ORIGIN,
        h_shape=H_SHAPE,
        mean=stored.mean(dim=0),
        dtype=torch.float64,
    )
    centred = (stored - stored.mean(dim=0)).reshape(SAMPLES, STEPS, FEATURES)
    pre_centred = pca_directions_streaming(
        lambda: iter(centred.split(11)),
        COMPONENTS,
        ORIGIN,
        h_shape=H_SHAPE,
        num_samples=SAMPLES,
        dtype=torch.float64,
    )
    assert_results_close(raw, in_memory, atol=1e-10)
    assert_results_close(pre_centred, in_memory, atol=1e-10)
    for name in ("per_step", "all_steps"):
        mine, theirs = getattr(raw, name).extra, getattr(in_memory, name).extra
        assert mine["num_samples"] == theirs["num_samples"] and mine["svd"] == theirs["svd"]
        for key in ("explained_variance_ratio", "total_variance"):
            torch.testing.assert_close(float64(mine[key]), float64(theirs[key]), rtol=1e-10, atol=0)


def test_delta_is_alpha_standard_deviations_per_step(h: torch.Tensor) -> None:
    per_step = pca_directions(h, COMPONENTS, ORIGIN).per_step
    delta = per_step.delta(2, 3.0)
    assert delta.shape == (STEPS, *H_SHAPE)
    std_along_axis = (delta.reshape(STEPS, FEATURES) * per_step.direction(2).reshape(STEPS, FEATURES)).sum(-1)
    torch.testing.assert_close(std_along_axis, 3.0 * per_step.scales[2])


def test_results_round_trip_through_the_file(h: torch.Tensor, tmp_path: Path) -> None:
    result = pca_directions(h, COMPONENTS, ORIGIN)
    save_directions(tmp_path / "pca.safetensors", result.per_step)
    loaded = load_directions(tmp_path / "pca.safetensors")
    assert torch.equal(loaded.directions, result.per_step.directions)
    assert loaded.extra == result.per_step.extra


def test_too_many_components_or_samples_are_errors(h: torch.Tensor) -> None:
    with pytest.raises(ConfigError, match=r"^n_components 25: .*min\(40, 24\)\]$"):
        pca_directions(h, 25, ORIGIN)
    with pytest.raises(ConfigError, match=r"^n_components 4: .*min\(3, 24\)\]$"):
        pca_directions(h[:3], 4, ORIGIN)
    with pytest.raises(ConfigError, match=r"^samples 1: PCA needs at least 2"):
        pca_directions(h[:1], 1, ORIGIN)
    with pytest.raises(ConfigError, match=r"^batch shape \(40, 3, 5\)"):
        pca_directions_streaming(lambda: iter([torch.zeros(40, 3, 5)]), 2, ORIGIN, h_shape=H_SHAPE)
