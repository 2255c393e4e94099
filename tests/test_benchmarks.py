"""Smoke test of the benchmarks (``python -m benchmarks.run --quick``) on a very small random UNet.

The reference schemes are real algorithms, so beyond the report's layout the test checks their answers
against the exact SVD that the suite itself forms, and that the project's solver reaches their accuracy.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from benchmarks.build_model import build_model, load_architecture
from benchmarks.build_model import main as build_main
from benchmarks.jacobian import (
    JacobianBenchConfig,
    accuracy,
    build_maps,
    exact_spectrum,
    krylov_truth,
    run_jacobian,
    truth_method,
)
from benchmarks.reference import sequential_power_iteration, subspace_iteration
from benchmarks.run import main
from pipeline.diffusion.models import load_model
from pipeline.io.errors import ConfigError
from pipeline.linalg import LinearOperator, frozen

TINY_ARCHITECTURE = {
    "unet": {
        "sample_size": 8, "in_channels": 3, "out_channels": 3, "block_out_channels": [8, 16], "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
        "norm_num_groups": 4,
    },
    "scheduler": {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
}  # fmt: skip
"""An architecture file's content for benchmarks.build_model: an 8 px UNet (h "after" 16x4x4)."""


@pytest.fixture(scope="module")
def small_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8 px UNet (channels 8/16, one attention level; h "after" is 16x4x4) saved as a DDPM pipeline folder."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    folder = tmp_path_factory.mktemp("bench_model")
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.002)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder


def run_quick(model: Path, out: Path, suite: str, *extra: str) -> dict:
    report = main(["--suite", suite, "--model", str(model), "--device", "cpu", "--quick", "--json", str(out), *extra])
    written = json.loads(out.read_text())
    assert set(written) == {"config", "environment", "results", "complete"} and written["complete"] is True
    assert written["results"].keys() == report["results"].keys() == {suite}
    for key in ("torch", "device_name", "threads"):
        assert key in written["environment"]
    assert written["environment"]["threads"] == 1 and written["config"]["quick"] is True
    return written


def test_jacobian_suite_references_match_the_exact_svd(small_model_dir: Path, tmp_path: Path) -> None:
    results = run_quick(small_model_dir, tmp_path / "jacobian.json", "jacobian")["results"]["jacobian"]
    assert results["point"]["step_index"] == 10
    for name, k in (("J2", 3), ("J1", 8)):
        entry = results[name]
        assert entry["truth"]["method"] == "explicit_svd"  # small maps are formed explicitly (--truth auto)
        exact = torch.tensor(entry["truth"]["top_singular_values"])
        reference = entry["reference"]["reference"]
        values = torch.tensor(reference["singular_values"])
        assert len(values) == k and reference["products"] == reference["jvps"] + reference["vjps"] > 0
        # Real algorithms: their top singular values are those of the explicit Jacobian.
        assert torch.allclose(values[:3], exact[:3], rtol=1e-2), (name, values[:3], exact[:3])
        assert reference["sv_rel_error"] < 1e-2
        project = entry["reference"]
        assert project["reached"] and project["speed_ratio"] > 0 and project["products_ratio"] > 0
        matched = project["project"]["matched"]
        assert matched["sv_rel_error"] <= reference["sv_rel_error"] and matched["max_sine"] <= reference["max_sine"]
        # Both default block sizes (k and 1) are tried; the fastest that reaches the reference is compared.
        attempts = project["project"]["attempts"]
        assert {attempt["block_size"] for attempt in attempts} == {k, 1}
        reaching = [
            attempt for attempt in attempts
            if attempt["sv_rel_error"] <= reference["sv_rel_error"] and attempt["max_sine"] <= reference["max_sine"]
        ]  # fmt: skip
        assert matched["seconds"] == min(attempt["seconds"] for attempt in reaching)
        assert [row["k"] for row in entry["sweep"]] == [3, 8]
        for row in entry["sweep"]:
            assert row["project"]["reached"], row
            assert row["project"]["matched"]["sv_rel_error"] <= 1e-3
            assert row["project"]["matched"]["max_sine"] <= 1e-2
        # Product costs side by side: J^T u and J v by every engine, at one vector and at the chunk size.
        costs = entry["products"]
        assert list(costs["batches"]) == ["1", "16"]
        for row in costs["batches"].values():
            assert row["vjp_ms"] > 0 and row["jvp_reverse_torch_ms"] > 0 and row["jvp_reverse_transposed_ms"] > 0
            assert row["jvp_forward_ms"] > 0 and "jvp_forward_error" not in row
        # float32 on the CPU: batching changes the products at float32 rounding level (float64: see below).
        consistency = costs["batch_consistency"]
        assert consistency["vectors"] == 16
        assert 0 <= consistency["jvp_rel_diff"] < 1e-4 and 0 <= consistency["vjp_rel_diff"] < 1e-4
        speedup = costs["jvp_speedup_transposed"]["16"]
        assert speedup == pytest.approx(
            costs["batches"]["16"]["jvp_reverse_torch_ms"] / costs["batches"]["16"]["jvp_reverse_transposed_ms"]
        )
    # Paper A's scheme: one single-vector J^T w and one J g per iteration, at most 50 iterations per vector.
    power = results["J2"]["reference"]["reference"]
    assert power["jvps"] == power["vjps"] == sum(power["iterations"]) <= 3 * 50
    # Paper B's scheme: n J v and n J^T u per iteration, and at least min_iter + 2 = 12 iterations.
    subspace = results["J1"]["reference"]["reference"]
    assert subspace["jvps"] == subspace["vjps"] == 8 * subspace["iterations"][0]
    assert subspace["iterations"][0] >= 12


def test_sampling_suite_reports_throughput_and_memory(small_model_dir: Path, tmp_path: Path) -> None:
    written = run_quick(small_model_dir, tmp_path / "sampling.json", "sampling", "--memory-samples", "8,16")
    results = written["results"]["sampling"]
    speed = results["throughput"]
    for name in ("ours_capture", "ours_no_capture", "diffusers_ddim"):
        assert len(speed[name]["seconds"]) == 2 and speed[name]["images_per_second"] > 0
    ratio = speed["ours_capture"]["images_per_second"] / speed["diffusers_ddim"]["images_per_second"]
    assert speed["ratio_capture_vs_diffusers"] == pytest.approx(ratio)
    runs = results["memory"]["runs"]
    assert [run["num_samples"] for run in runs] == [8, 16]
    assert all(run["peak_rss_mib"] >= run["rss_after_load_mib"] > 0 for run in runs)
    first, last = runs[0]["peak_rss_mib"], runs[1]["peak_rss_mib"]
    assert results["memory"]["relative_difference"] == pytest.approx((last - first) / first)


def test_sampling_suite_times_the_performance_options_beside_the_plain_model(
    small_model_dir: Path, tmp_path: Path
) -> None:
    options = (
        "--no-memory", "--autocast", "bfloat16", "--channels-last", "--baseline-dtype", "float64", "--profile", "4",
        "--cudnn-benchmark",
    )  # fmt: skip
    cudnn_benchmark = torch.backends.cudnn.benchmark
    written = run_quick(small_model_dir, tmp_path / "fast.json", "sampling", *options)
    assert torch.backends.cudnn.benchmark == cudnn_benchmark  # the run's global setting is restored
    assert written["config"]["cudnn_benchmark"] is True
    speed = written["results"]["sampling"]["throughput"]
    assert written["config"]["fast"] == {"autocast": "bfloat16", "channels_last": True, "compile": "none"}
    assert len(speed["ours_capture_fast"]["seconds"]) == 2
    ratio = speed["ours_capture_fast"]["images_per_second"] / speed["diffusers_ddim"]["images_per_second"]
    assert speed["ratio_fast_capture_vs_diffusers"] == pytest.approx(ratio)
    # DDIMPipeline on the same weights in another dtype (float32 on a GPU run at float16) is timed beside them.
    assert speed["baseline_dtype"] == "float64" and len(speed["diffusers_ddim_baseline"]["seconds"]) == 2
    pairs = (("ours_capture", "ratio_capture_vs_baseline"), ("ours_capture_fast", "ratio_fast_capture_vs_baseline"))
    for ours, key in pairs:
        assert speed[key] == pytest.approx(
            speed[ours]["images_per_second"] / speed["diffusers_ddim_baseline"]["images_per_second"]
        )
    assert "memory" not in written["results"]["sampling"]
    # The profile ranks the fast model's operators by self time; on a CPU the convolutions lead.
    profiled = written["results"]["sampling"]["profile"]
    assert profiled["activity"] == "cpu" and profiled["total_ms"] > 0
    operators = profiled["operators"]
    assert len(operators) == 4 and all(entry["calls"] >= 1 for entry in operators)
    times = [entry["self_ms"] for entry in operators]
    assert times == sorted(times, reverse=True) and 0 < sum(entry["share"] for entry in operators) <= 1 + 1e-9
    assert operators[0]["share"] == pytest.approx(times[0] / profiled["total_ms"])
    assert "conv" in operators[0]["name"]


def test_references_on_a_dense_matrix_and_bad_arguments() -> None:
    generator = torch.Generator().manual_seed(0)
    left = torch.linalg.qr(torch.randn(30, 6, generator=generator, dtype=torch.float64)).Q
    right = torch.linalg.qr(torch.randn(20, 6, generator=generator, dtype=torch.float64)).Q
    values = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5, 0.25], dtype=torch.float64)
    matrix = left @ torch.diag(values) @ right.mT
    op = LinearOperator(shape=(30, 20), matmat=lambda v: matrix @ v, rmatmat=lambda u: matrix.mT @ u)
    power = sequential_power_iteration(op, 3, max_iters=200)
    assert torch.allclose(power.singular_values, values[:3], rtol=1e-6)
    assert all(power.converged)
    # u_i = J^T w_i / sigma_i is the i-th right singular vector up to sign.
    assert torch.allclose((power.right_vectors @ right[:, :3]).abs().diagonal(), torch.ones(3, dtype=torch.float64))
    subspace = subspace_iteration(op, 4, chunk=3)
    assert torch.allclose(subspace.singular_values, values[:4], rtol=1e-6)
    assert subspace.converged == [True] and subspace.iterations[0] == 12
    with pytest.raises(ConfigError, match="k 0"):
        sequential_power_iteration(op, 0)
    with pytest.raises(SystemExit):
        main(["--suite", "jacobian", "--block-sizes", "k,0.5"])
    with pytest.raises(ConfigError, match="n 21"):
        subspace_iteration(op, 21)


def test_krylov_truth_agrees_with_the_explicit_svd(small_model_dir: Path) -> None:
    """The truth used for Jacobians too large to form (celebahq-256) matches the explicit SVD where both exist."""
    model = load_model(str(small_model_dir), device="cpu", dtype="float64")
    cfg = JacobianBenchConfig(truth="krylov", truth_tolerance=1e-9)
    with frozen(model.unet):
        maps, _ = build_maps(model, cfg)
        for jmap in maps.values():
            op = jmap.operator(16, "auto")
            exact = exact_spectrum(op, 8, 16)
            truth = krylov_truth(op, 8, cfg)
            assert truth.method == "block_krylov" and truth.converged and truth.products > 0
            assert len(truth.singular_values) == 8 and truth.right_vectors.shape == (8, op.shape[1])
            error = accuracy(truth.singular_values, truth.right_vectors, exact)
            assert error["sv_rel_error"] < 1e-7 and error["max_sine"] < 1e-4, (jmap.name, error)
            jmap.release()
            assert jmap.operators == {}
    assert truth_method((3072, 6144), cfg) == "krylov"
    assert truth_method((3072, 6144), JacobianBenchConfig()) == "exact"  # auto: min(m, d) <= 8192
    assert truth_method((196608, 32768), JacobianBenchConfig()) == "krylov"
    with pytest.raises(ConfigError, match="jacobian truth 'svd'"):
        JacobianBenchConfig(truth="svd")
    assert JacobianBenchConfig(warmup=2).reference_warmup == 2
    with pytest.raises(ConfigError, match="jacobian reference_warmup -1"):
        JacobianBenchConfig(reference_warmup=-1)


def test_jacobian_suite_with_a_krylov_truth(small_model_dir: Path, tmp_path: Path) -> None:
    # float64: in float32 this small model's references reach the float32 floor (~1e-7), where a Krylov truth
    # at tolerance 1e-6 cannot tell them apart from the project's solver.
    options = ("--truth", "krylov", "--dtype", "float64", "--reference-warmup", "0")
    written = run_quick(small_model_dir, tmp_path / "krylov.json", "jacobian", *options)
    results = written["results"]["jacobian"]
    assert written["config"]["jacobian"]["truth"] == "krylov"
    assert written["config"]["jacobian"]["reference_warmup"] == 0 and written["config"]["jacobian"]["warmup"] == 1
    for name in ("J2", "J1"):
        assert results[name]["truth"]["method"] == "block_krylov"
        assert results[name]["reference"]["reached"]


def test_jacobian_suite_runs_the_chosen_maps_only(small_model_dir: Path, tmp_path: Path, capsys) -> None:
    written = run_quick(small_model_dir, tmp_path / "j1.json", "jacobian", "--maps", "J1", "--sweep-sizes", "3")
    results = written["results"]["jacobian"]
    assert written["config"]["jacobian"]["maps"] == ["J1"] and "J2" not in results
    assert results["J1"]["reference"]["reached"] and [row["k"] for row in results["J1"]["sweep"]] == [3]
    table = capsys.readouterr().out
    assert "accuracy against: J1 explicit_svd" in table and "power_iteration" not in table
    for bad in (("J3",), (), ("J1", "J1")):
        with pytest.raises(ConfigError, match="jacobian maps"):
            JacobianBenchConfig(maps=bad)
    # After each map the results so far are handed on (the CLI writes them with "complete": false).
    model = load_model(str(small_model_dir), device="cpu")
    cfg = JacobianBenchConfig(maps=("J1", "J2"), subspace_n=8, sweep_sizes=(3,), sweep_references=False)
    seen: list[list[str]] = []
    run_jacobian(model, cfg, log=lambda message: None, on_map=lambda results: seen.append(sorted(results)))
    assert seen == [["J1", "point"], ["J1", "J2", "point"]]


def test_references_on_the_papers_products(small_model_dir: Path, tmp_path: Path) -> None:
    """--reference-mode forward: the same schemes on forward-mode J v with a fresh forward per call, as the
    papers' code computes them; the same answers, only the product engine differs."""
    options = ("--sweep-sizes", "3", "--dtype", "float64")
    engine = run_quick(small_model_dir, tmp_path / "engine.json", "jacobian", *options)
    papers = run_quick(small_model_dir, tmp_path / "papers.json", "jacobian", *options, "--reference-mode", "forward")
    assert engine["config"]["jacobian"]["reference_mode"] == "auto"
    assert papers["config"]["jacobian"]["reference_mode"] == "forward"
    for name in ("J2", "J1"):
        ours, theirs = (run["results"]["jacobian"][name]["reference"]["reference"] for run in (engine, papers))
        assert theirs["iterations"] == ours["iterations"] and theirs["products"] == ours["products"]
        values = torch.tensor(theirs["singular_values"]), torch.tensor(ours["singular_values"])
        assert torch.allclose(*values, rtol=1e-10), name
        consistency = engine["results"]["jacobian"][name]["products"]["batch_consistency"]
        assert consistency["jvp_rel_diff"] < 1e-12 and consistency["vjp_rel_diff"] < 1e-12, consistency
    with pytest.raises(ConfigError, match="jacobian reference_mode 'sideways'"):
        JacobianBenchConfig(reference_mode="sideways")


class NoForwardMode(torch.autograd.Function):
    """The identity with a backward but no jvp: forward-mode AD through it raises (as it did through CPU
    GroupNorm behind attention before pipeline.linalg gave GroupNorm contiguous inputs)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


def test_papers_products_that_cannot_run_are_a_clear_error(small_model_dir: Path) -> None:
    from benchmarks.jacobian import JacobianMap, _prime

    point = torch.randn(6, dtype=torch.float64)
    jmap = JacobianMap("J1", "no forward AD", lambda x: torch.tanh(NoForwardMode.apply(x)), point)
    cfg = JacobianBenchConfig(reference_mode="forward", subspace_n=4)
    with pytest.raises(ConfigError, match=r"reference_mode 'forward': forward-mode AD fails on J1 on cpu"):
        _prime(jmap, "subspace_iteration_3.2", 4, cfg)
    _prime(jmap, "subspace_iteration_3.2", 4, JacobianBenchConfig(subspace_n=4))  # the project's products run


def test_build_model_writes_a_loadable_pipeline_of_the_architecture(tmp_path: Path) -> None:
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_ARCHITECTURE))
    first = build_main([str(tmp_path / "tiny.json"), str(tmp_path / "first")])
    second = build_model(load_architecture(tmp_path / "tiny.json"), tmp_path / "second", seed=0)
    model = load_model(str(first), device="cpu")
    assert model.sample_shape == (3, 8, 8)
    again = load_model(str(second), device="cpu")
    for (name, value), (_, other) in zip(model.unet.state_dict().items(), again.unet.state_dict().items(), strict=True):
        assert torch.equal(value, other), name  # the seed fixes the weights
    assert not any(path.name.startswith(".") for path in tmp_path.iterdir())  # no staging folder left behind
    bad = {**TINY_ARCHITECTURE, "unet": {**TINY_ARCHITECTURE["unet"], "block_channels": [8, 16]}}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match=r"unet\.block_channels is not a UNet2DModel argument"):
        load_architecture(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="architecture 'no-such-model'"):
        load_architecture("no-such-model")


def test_celebahq_architecture_is_the_hub_models() -> None:
    """google/ddpm-ema-celebahq-256: 113,673,219 parameters, 256 px, h (mid block) 512 x 8 x 8."""
    architecture = load_architecture("ddpm-ema-celebahq-256")
    with torch.device("meta"):
        unet = UNet2DModel(**architecture["unet"])
    assert sum(parameter.numel() for parameter in unet.parameters()) == 113_673_219
    assert unet.config.sample_size == 256 and unet.mid_block.resnets[-1].out_channels == 512
    assert 256 // 2 ** (len(unet.down_blocks) - 1) == 8  # five downsamplings: h is 8 x 8


@pytest.mark.slow
def test_gpu_suite_script_runs_its_steps_on_cpu(tmp_path: Path) -> None:
    """benchmarks/gpu_suite.sh (the GPU figures) builds the architecture and runs the chosen steps;
    here on the CPU, with a tiny architecture and the jacobian step only."""
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_ARCHITECTURE))
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.sh"
    env = {**os.environ, "DEVICE": "cpu", "STEPS": "jacobian_fp32", "PYTHON": sys.executable,
           "MODEL_DIR": str(tmp_path / "model")}  # fmt: skip
    done = subprocess.run(
        ["bash", str(script), str(tmp_path / "out"), str(tmp_path / "tiny.json")],
        cwd=script.parents[1], env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "== jacobian_fp32 exit 0" in done.stdout and "sampling_fp16" not in done.stdout
    results = json.loads((tmp_path / "out" / "jacobian_fp32.json").read_text())["results"]["jacobian"]
    assert results["J2"]["reference"]["reached"] and results["J1"]["reference"]["reached"]
    assert [row["k"] for row in results["J2"]["sweep"]] == [3, 8]
