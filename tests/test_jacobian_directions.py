"""Jacobian directions (paper A) and the pullback basis and edits (paper B) on the tiny UNet of conftest."""

import pytest
import torch

from pipeline.diffusion.ddim import DecodeSettings
from pipeline.diffusion.hspace import eps_of_h, h_of_x
from pipeline.diffusion.models import DiffusionModel
from pipeline.diffusion.sampling import ddim_grid, decode, initial_noise
from pipeline.directions import Origin, load_directions, save_directions
from pipeline.directions.jacobian import jacobian_directions, jacobian_spectra
from pipeline.directions.masks import check_mask, image_mask, rectangle_mask
from pipeline.directions.pullback import (
    decode_edited,
    guidance_edit,
    local_basis,
    states_at,
    step_for_fraction,
)
from pipeline.io.errors import ConfigError
from pipeline.linalg import SolverConfig, frozen, jacobian_operator

STEPS = 5
SOLVER = SolverConfig(tolerance=1e-6, max_iterations=60, chunk_size=16)


@pytest.fixture(scope="module")
def noise(tiny_model: DiffusionModel) -> tuple[torch.Tensor, torch.Tensor]:
    x_T, z = initial_noise(tiny_model.sample_shape, [11], STEPS, 1.0)
    return x_T, z


def test_states_follow_the_samples_own_trajectory(tiny_model: DiffusionModel, noise, single_thread: None) -> None:
    x_T, z = noise
    states = states_at(tiny_model, x_T, z, steps=STEPS, eta=1.0, step_indices=[2])
    reference = decode(tiny_model, x_T, z, settings=DecodeSettings(STEPS, eta=1.0), capture_steps=None).x_0
    resumed = decode(
        tiny_model, states[2], z, settings=DecodeSettings(STEPS, eta=1.0), start_step=2, capture_steps=None
    ).x_0
    assert torch.allclose(resumed, reference, atol=1e-5)


def test_jacobian_spectra_are_the_exact_svd_along_the_trajectory(
    tiny_model: DiffusionModel, noise, single_thread: None
) -> None:
    x_T, z = noise
    spectra = jacobian_spectra(
        tiny_model, x_T[0], z[0], steps=STEPS, eta=1.0, location="after", step_indices=[1, 3], k=2, solver=SOLVER
    )
    assert spectra.vectors.shape == (2, 2, 32, 8, 8) and spectra.singular_values.shape == (2, 2)
    assert spectra.converged and spectra.steps.tolist() == [1, 3]
    x_t = states_at(tiny_model, x_T, z, steps=STEPS, eta=1.0, step_indices=[3])[3][0]
    timestep = int(ddim_grid(tiny_model.scheduler, STEPS).timesteps[3])
    with frozen(tiny_model.unet):
        function, clean = eps_of_h(tiny_model, x_t, timestep)
        op = jacobian_operator(function, clean, chunk_size=64)
        jacobian = op.rmatmat(torch.eye(op.shape[0], dtype=torch.float64)).mT
    _, values, right = torch.linalg.svd(jacobian, full_matrices=False)
    assert torch.allclose(spectra.singular_values[:, 1].double(), values[:2], rtol=1e-3)
    overlap = torch.linalg.svdvals(spectra.vectors[:, 1].flatten(1).double() @ right[:2].mT)
    assert overlap.min() > 0.999


def test_masked_directions_put_more_change_inside_the_mask(
    tiny_model: DiffusionModel, noise, single_thread: None
) -> None:
    x_T, z = noise
    mask = rectangle_mask([0.5, 0.25, 1.0, 0.75], tiny_model.sample_shape)
    common = dict(steps=STEPS, eta=1.0, location="after", step_indices=[2], k=1, solver=SOLVER)
    masked = jacobian_spectra(tiny_model, x_T[0], z[0], mask=mask, **common)
    full = jacobian_spectra(tiny_model, x_T[0], z[0], **common)
    x_t = states_at(tiny_model, x_T, z, steps=STEPS, eta=1.0, step_indices=[2])[2][0]
    timestep = int(ddim_grid(tiny_model.scheduler, STEPS).timesteps[2])
    with frozen(tiny_model.unet):
        function, clean = eps_of_h(tiny_model, x_t, timestep)
        op = jacobian_operator(function, clean, chunk_size=2)
        images = op.matmat(torch.stack([masked.vectors[0, 0], full.vectors[0, 0]]).flatten(1).double().mT)
    inside = (images.mT.reshape(2, *tiny_model.sample_shape) * mask.double()).flatten(1).norm(dim=1)
    # The masked top vector maximises the change inside the mask (the unmasked one maximises the total).
    assert inside[0] >= inside[1] * (1 - 1e-4)
    assert masked.singular_values[0, 0] == pytest.approx(float(inside[0]), rel=1e-3)


def test_directions_file_global_and_per_step(tiny_model: DiffusionModel, noise, single_thread: None, tmp_path) -> None:
    x_T, z = noise
    spectra = jacobian_spectra(
        tiny_model, x_T[0], z[0], steps=STEPS, eta=1.0, location="after", step_indices=[0, 2, 4], k=2, solver=SOLVER
    )
    origin = Origin(model_id=tiny_model.model_id, hspace_location="after", sampler_steps=STEPS, eta=1.0)
    glob = jacobian_directions([spectra], [11], origin, apply="global", source_step=2, unit=50.0)
    assert glob.names == ["seed11/k0", "seed11/k1"] and glob.directions.shape == (2, 3, 32, 8, 8)
    assert torch.equal(glob.directions[:, 0], spectra.vectors[:, 1])
    assert torch.equal(glob.directions[:, 2], spectra.vectors[:, 1])
    assert torch.allclose(glob.scales, 50.0 * spectra.singular_values)
    delta = glob.delta(0, 1.0)  # full grid, zero on the two steps not analysed
    assert delta.shape == (STEPS, 32, 8, 8) and delta[1].abs().sum() == 0 and delta[3].abs().sum() == 0
    assert torch.allclose(delta[4], 50.0 * spectra.singular_values[0, 2] * spectra.vectors[0, 1])
    per_step = jacobian_directions([spectra], [11], origin, apply="per_step", source_step=2, unit=1.0)
    agreement = (per_step.directions * per_step.directions[:, 1:2]).flatten(2).sum(-1)
    assert (agreement >= 0).all()
    save_directions(tmp_path / "jacobian.safetensors", glob)
    loaded = load_directions(tmp_path / "jacobian.safetensors")
    assert loaded.method == "jacobian" and torch.equal(loaded.directions, glob.directions)
    with pytest.raises(ConfigError, match="source_step 1"):
        jacobian_directions([spectra], [11], origin, source_step=1, unit=1.0)


def test_pullback_basis_satisfies_its_definition(tiny_model: DiffusionModel, noise, single_thread: None) -> None:
    x_T, _ = noise
    basis = local_basis(tiny_model, x_T[0], 1, steps=STEPS, n=4, location="after", solver=SOLVER)
    assert basis.v.shape == (4, 3, 16, 16) and basis.u.shape == (4, 32, 8, 8) and basis.converged
    v = basis.v.flatten(1).double()
    assert torch.allclose(v @ v.mT, torch.eye(4, dtype=torch.float64), atol=1e-5)
    assert (basis.singular_values[1:] <= basis.singular_values[:-1]).all()
    with frozen(tiny_model.unet):
        op = jacobian_operator(h_of_x(tiny_model, basis.timestep), x_T[0], chunk_size=4)
        images = op.matmat(v.mT).mT  # J v_i
    assert torch.allclose(images.norm(dim=1), basis.singular_values.double(), rtol=1e-4)
    assert torch.allclose(images / basis.singular_values.double()[:, None], basis.u.flatten(1).double(), atol=1e-4)
    u = basis.u.flatten(1).double()
    assert torch.allclose(u @ u.mT, torch.eye(4, dtype=torch.float64), atol=1e-3)


def test_guidance_edit_and_decode(tiny_model: DiffusionModel, noise, single_thread: None) -> None:
    x_T, _ = noise
    grid = ddim_grid(tiny_model.scheduler, STEPS)
    step = step_for_fraction(grid, 0.6, 1000)
    x_t = states_at(tiny_model, x_T, None, steps=STEPS, eta=0.0, step_indices=[step])[step]
    direction = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(0))
    direction /= direction.norm()
    timestep = int(grid.timesteps[step])
    edited = guidance_edit(tiny_model, x_t[0], direction, timestep, [0.0, 1.0, -1.0], step_size=0.5, iterations=1)
    assert torch.equal(edited[0], x_t[0])
    with torch.no_grad():
        expected = x_t[0] + 0.5 * (
            tiny_model.unet((x_t + direction).float(), timestep).sample[0] - tiny_model.unet(x_t, timestep).sample[0]
        )
    assert torch.allclose(edited[1], expected, atol=1e-5)
    unedited = decode_edited(tiny_model, x_t, step, steps=STEPS, boost_step=None, boost_seed=0)
    reference = decode(tiny_model, x_T, settings=DecodeSettings(STEPS, eta=0.0), capture_steps=None).x_0
    assert torch.allclose(unedited, reference, atol=1e-5)
    boosted = decode_edited(tiny_model, edited, step, steps=STEPS, boost_step=STEPS - 2, boost_seed=3)
    again = decode_edited(tiny_model, edited, step, steps=STEPS, boost_step=STEPS - 2, boost_seed=3)
    assert torch.equal(boosted, again) and not torch.allclose(boosted[0], unedited[0], atol=1e-6)


def test_bad_inputs_are_one_line_naming_them(tiny_model: DiffusionModel, noise, tmp_path) -> None:
    x_T, z = noise
    with pytest.raises(ConfigError, match="mask: empty"):
        check_mask(torch.zeros(1, 16, 16), tiny_model.sample_shape)
    with pytest.raises(ConfigError, match="mask shape"):
        check_mask(torch.ones(1, 8, 8), tiny_model.sample_shape)
    with pytest.raises(ConfigError, match="mask rectangle"):
        rectangle_mask([0.5, 0.5, 0.5, 0.9], tiny_model.sample_shape)
    with pytest.raises(ConfigError, match="no such file"):
        image_mask(tmp_path / "missing.png", tiny_model.sample_shape)
    with pytest.raises(ConfigError, match="t_edit outside"):
        step_for_fraction(ddim_grid(tiny_model.scheduler, STEPS), 1.5, 1000)
    with pytest.raises(ConfigError, match="t_edit outside"):
        local_basis(tiny_model, x_T[0], STEPS, steps=STEPS, n=2, location="after", solver=SOLVER)
    with pytest.raises(ConfigError, match="k 769"):
        jacobian_spectra(tiny_model, x_T[0], z[0], steps=STEPS, eta=1.0, location="after", step_indices=[0], k=769,
                         solver=SOLVER)  # fmt: skip
    with pytest.raises(ConfigError, match="expected step indices"):
        jacobian_spectra(tiny_model, x_T[0], z[0], steps=STEPS, eta=1.0, location="after", step_indices=[STEPS], k=1,
                         solver=SOLVER)  # fmt: skip


def test_image_mask_reads_a_png(tiny_model: DiffusionModel, tmp_path) -> None:
    from PIL import Image

    picture = torch.zeros(32, 32, dtype=torch.uint8)
    picture[16:, :] = 255
    Image.fromarray(picture.numpy()).save(tmp_path / "mask.png")
    mask = image_mask(tmp_path / "mask.png", tiny_model.sample_shape)
    assert mask.shape == (1, 16, 16) and mask[:, 8:].all() and not mask[:, :8].any()
