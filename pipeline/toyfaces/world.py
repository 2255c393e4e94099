"""ToyFaces: a procedural world of small RGB faces whose attributes are known exactly.

Every image is a pure function of its seed (and the config): the seed draws a factor vector
(binary attributes and continuous factors), and a vectorised renderer paints the face at
``resolution * supersample`` pixels and area-averages it down to ``resolution`` for clean edges.

Binary attributes (probabilities configurable, one or more correlated pairs):
``smiling`` (open "D" mouth vs a flat line), ``eyeglasses`` (dark rings and a bridge),
``light_hair`` (blond vs dark brown), ``eyes_open`` (white eyes with pupils vs closed lines),
``hat`` (a coloured hat over the hair), ``pale_skin`` (light vs dark skin tone),
``warm_background`` (orange/red vs blue/cyan background).

Continuous factors, each in [0, 1] (or [-1, 1] for pose): ``pose_x`` (horizontal face offset),
``face_width``, ``skin_shade`` (tone within the skin class), ``background_shade`` (hue within the
background class), ``hair_shade``, ``hat_hue``.

Coordinates: u (right) and v (down) in [-1, 1] over the image; one unit is ``resolution / 2`` pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pipeline.io.errors import ConfigError

BINARY_ATTRIBUTES: tuple[str, ...] = (
    "smiling",
    "eyeglasses",
    "light_hair",
    "eyes_open",
    "hat",
    "pale_skin",
    "warm_background",
)
CONTINUOUS_FACTORS: tuple[str, ...] = (
    "pose_x",
    "face_width",
    "skin_shade",
    "background_shade",
    "hair_shade",
    "hat_hue",
)
REGIONS: tuple[str, ...] = ("mouth", "eyes", "hair", "face", "background")


@dataclass
class CorrelatedPair:
    """Two binary attributes drawn jointly with Pearson correlation ``rho`` (the second given the first)."""

    first: str = "smiling"
    second: str = "light_hair"
    rho: float = 0.5


@dataclass
class ToyFacesConfig:
    """Parameters of the ToyFaces world; the pipeline's values live in ``conf/toyfaces/``."""

    resolution: int = 32
    supersample: int = 2
    probabilities: dict[str, float] = field(
        default_factory=lambda: {
            "smiling": 0.5,
            "eyeglasses": 0.3,
            "light_hair": 0.5,
            "eyes_open": 0.7,
            "hat": 0.25,
            "pale_skin": 0.5,
            "warm_background": 0.5,
        }
    )
    correlations: list[CorrelatedPair] = field(default_factory=lambda: [CorrelatedPair()])
    max_pose_offset: float = 0.3


@dataclass
class Factors:
    """The ground truth of a batch: ``binary`` [N, 7] in {0, 1} (order BINARY_ATTRIBUTES) and
    ``continuous`` [N, 6] (order CONTINUOUS_FACTORS; pose_x in [-1, 1], the rest in [0, 1])."""

    binary: torch.Tensor
    continuous: torch.Tensor

    def attribute(self, name: str) -> torch.Tensor:
        """One binary attribute as a float tensor [N]."""
        return self.binary[:, BINARY_ATTRIBUTES.index(name)]

    def factor(self, name: str) -> torch.Tensor:
        """One continuous factor as a float tensor [N]."""
        return self.continuous[:, CONTINUOUS_FACTORS.index(name)]


def validate_config(cfg: ToyFacesConfig) -> None:
    """Raise ConfigError (one line, naming the key) when the config cannot describe a valid world."""
    if cfg.resolution < 8 or cfg.resolution % 4:
        raise ConfigError(f"toyfaces.resolution={cfg.resolution}: must be a multiple of 4 and >= 8")
    if cfg.supersample < 1:
        raise ConfigError(f"toyfaces.supersample={cfg.supersample}: must be >= 1")
    unknown = sorted(set(cfg.probabilities) - set(BINARY_ATTRIBUTES))
    missing = sorted(set(BINARY_ATTRIBUTES) - set(cfg.probabilities))
    if unknown or missing:
        raise ConfigError(
            f"toyfaces.probabilities: unknown {unknown}, missing {missing}; expected {list(BINARY_ATTRIBUTES)}"
        )
    for name, p in cfg.probabilities.items():
        if not 0.0 < p < 1.0:
            raise ConfigError(f"toyfaces.probabilities.{name}={p}: must be in (0, 1)")
    seen: set[str] = set()
    for pair in cfg.correlations:
        for name in (pair.first, pair.second):
            if name not in BINARY_ATTRIBUTES:
                raise ConfigError(f"toyfaces.correlations: unknown attribute '{name}'")
            if name in seen:
                raise ConfigError(f"toyfaces.correlations: attribute '{name}' appears in two pairs")
            seen.add(name)
        low, high = _correlation_bounds(cfg.probabilities[pair.first], cfg.probabilities[pair.second])
        if not low <= pair.rho <= high:
            raise ConfigError(
                f"toyfaces.correlations: rho={pair.rho} for ({pair.first}, {pair.second}) is outside "
                f"the feasible range [{low:.3f}, {high:.3f}] for their probabilities"
            )


def _correlation_bounds(p_a: float, p_b: float) -> tuple[float, float]:
    scale = math.sqrt(p_a * (1 - p_a) * p_b * (1 - p_b))
    joint_low, joint_high = max(0.0, p_a + p_b - 1.0), min(p_a, p_b)
    return (joint_low - p_a * p_b) / scale, (joint_high - p_a * p_b) / scale


def sample_factors(seeds: Sequence[int] | torch.Tensor, cfg: ToyFacesConfig) -> Factors:
    """Draw the factors of each seed independently (sample i depends on seeds[i] only).

    Returns Factors with binary [N, 7] and continuous [N, 6], float32.
    """
    validate_config(cfg)
    seeds = [int(s) for s in seeds]
    n_binary, n_cont = len(BINARY_ATTRIBUTES), len(CONTINUOUS_FACTORS)
    uniforms = torch.empty(len(seeds), n_binary + n_cont, dtype=torch.float64)
    generator = torch.Generator()
    for row, seed in enumerate(seeds):
        generator.manual_seed(seed)
        uniforms[row] = torch.rand(n_binary + n_cont, generator=generator, dtype=torch.float64)
    u_binary, u_cont = uniforms[:, :n_binary], uniforms[:, n_binary:]

    probabilities = torch.tensor([cfg.probabilities[a] for a in BINARY_ATTRIBUTES], dtype=torch.float64)
    binary = (u_binary < probabilities).double()
    for pair in cfg.correlations:
        i, j = BINARY_ATTRIBUTES.index(pair.first), BINARY_ATTRIBUTES.index(pair.second)
        p_a, p_b = probabilities[i], probabilities[j]
        p_both = p_a * p_b + pair.rho * torch.sqrt(p_a * (1 - p_a) * p_b * (1 - p_b))
        p_second_given = torch.where(binary[:, i] > 0, p_both / p_a, (p_b - p_both) / (1 - p_a))
        binary[:, j] = (u_binary[:, j] < p_second_given).double()

    continuous = u_cont.clone()
    continuous[:, CONTINUOUS_FACTORS.index("pose_x")] = 2.0 * u_cont[:, 0] - 1.0
    return Factors(binary=binary.float(), continuous=continuous.float())


def _hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """HSV in [0, 1] (each [N]) to RGB [N, 3]."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + hue[:, None] * 6.0) % 6.0
    return value[:, None] - value[:, None] * saturation[:, None] * torch.clamp(
        torch.minimum(k, 4.0 - k), 0.0, 1.0
    )


def _lerp(a: Sequence[float], b: Sequence[float], weight: torch.Tensor) -> torch.Tensor:
    """Per-sample blend of two RGB colours: [N] weights -> [N, 3]."""
    a_t, b_t = torch.tensor(a), torch.tensor(b)
    return a_t + (b_t - a_t) * weight[:, None]


@dataclass
class _Geometry:
    """Per-sample shape parameters broadcast against the [1, S, S] coordinate grid (all [N, 1, 1])."""

    cx: torch.Tensor
    cy: torch.Tensor
    rx: torch.Tensor
    ry: torch.Tensor


def _geometry(factors: Factors, cfg: ToyFacesConfig) -> _Geometry:
    col = lambda t: t[:, None, None]  # noqa: E731
    cx = col(factors.factor("pose_x") * cfg.max_pose_offset)
    cy = torch.full_like(cx, 0.12)
    rx = col(0.56 + 0.12 * factors.factor("face_width"))
    ry = torch.full_like(cx, 0.72)
    return _Geometry(cx=cx, cy=cy, rx=rx, ry=ry)


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2.0 - 1.0
    v, u = torch.meshgrid(coords, coords, indexing="ij")
    return u[None], v[None]


def _shape_masks(factors: Factors, cfg: ToyFacesConfig, size: int) -> dict[str, torch.Tensor]:
    """Boolean masks [N, size, size] of every drawn part, before occlusion."""
    u, v = _grid(size)
    g = _geometry(factors, cfg)
    du, dv = u - g.cx, v - g.cy
    attr = lambda name: factors.attribute(name)[:, None, None] > 0  # noqa: E731

    face = (du / g.rx) ** 2 + (dv / g.ry) ** 2 <= 1.0
    hair_back = (du / (g.rx + 0.14)) ** 2 + ((dv + 0.12) / (g.ry + 0.12)) ** 2 <= 1.0
    hair_back &= dv < 0.25
    fringe = face & (dv < -0.38 - 0.08 * torch.cos(du * 6.0))

    eye_du = du.abs() - 0.22
    eye_dv = dv + 0.06
    eyes_region = (eye_du / 0.13) ** 2 + (eye_dv / 0.1) ** 2 <= 1.0
    eye_white = attr("eyes_open") & eyes_region
    pupil = attr("eyes_open") & ((eye_du / 0.065) ** 2 + (eye_dv / 0.065) ** 2 <= 1.0)
    closed_eye = ~attr("eyes_open") & (eye_du.abs() <= 0.13) & (eye_dv.abs() <= 0.035)

    ring_radius = torch.sqrt(eye_du**2 + eye_dv**2)
    glasses = (ring_radius >= 0.16) & (ring_radius <= 0.24)
    glasses |= (du.abs() <= 0.08) & (eye_dv.abs() <= 0.035)
    glasses &= attr("eyeglasses")

    mouth_dv = dv - 0.32
    smile = ((du / 0.24) ** 2 + (mouth_dv / 0.2) ** 2 <= 1.0) & (mouth_dv >= -0.02)
    teeth = smile & (mouth_dv <= 0.05)
    flat = (du.abs() <= 0.2) & (mouth_dv.abs() <= 0.04)
    mouth = torch.where(attr("smiling"), smile, flat)
    teeth &= attr("smiling")

    hat_crown = (du.abs() <= g.rx * 0.9) & (dv <= -0.5) & (dv >= -1.0)
    hat_brim = (du.abs() <= g.rx + 0.18) & (dv > -0.5) & (dv <= -0.4)
    hat = attr("hat") & (hat_crown | hat_brim)
    return {
        "face": face,
        "hair_back": hair_back,
        "fringe": fringe,
        "eye_white": eye_white,
        "pupil": pupil,
        "closed_eye": closed_eye,
        "glasses": glasses,
        "mouth": mouth,
        "teeth": teeth,
        "hat": hat,
        "eyes_region": (eye_du.abs() <= 0.26) & (eye_dv.abs() <= 0.26),
        "mouth_region": (du.abs() <= 0.3) & (mouth_dv >= -0.12) & (mouth_dv <= 0.26),
    }


def _palette(factors: Factors) -> dict[str, torch.Tensor]:
    """Per-sample RGB colours [N, 3] in [0, 1] of every part."""
    n = factors.binary.shape[0]
    warm = factors.attribute("warm_background")
    bg_shade = factors.factor("background_shade")
    bg_hue = torch.where(warm > 0, 0.02 + 0.1 * bg_shade, 0.52 + 0.12 * bg_shade)
    background = _hsv_to_rgb(bg_hue, torch.full((n,), 0.55), torch.full((n,), 0.9))

    hair_shade = factors.factor("hair_shade")
    light_hair = factors.attribute("light_hair")[:, None]
    hair = light_hair * _lerp((0.93, 0.78, 0.38), (1.0, 0.9, 0.55), hair_shade) + (1 - light_hair) * _lerp(
        (0.16, 0.09, 0.05), (0.32, 0.19, 0.09), hair_shade
    )
    skin_shade = factors.factor("skin_shade")
    pale = factors.attribute("pale_skin")[:, None]
    skin = pale * _lerp((0.98, 0.86, 0.74), (0.92, 0.76, 0.62), skin_shade) + (1 - pale) * _lerp(
        (0.62, 0.42, 0.28), (0.45, 0.28, 0.17), skin_shade
    )
    hat = _hsv_to_rgb(factors.factor("hat_hue"), torch.full((n,), 0.8), torch.full((n,), 0.6))
    fixed = lambda rgb: torch.tensor(rgb).expand(n, 3)  # noqa: E731
    return {
        "background": background,
        "hair": hair,
        "skin": skin,
        "hat": hat,
        "eye_white": fixed((1.0, 1.0, 1.0)),
        "dark": fixed((0.06, 0.05, 0.05)),
        "mouth": fixed((0.55, 0.08, 0.1)),
        "teeth": fixed((0.97, 0.97, 0.95)),
    }


def render(factors: Factors, cfg: ToyFacesConfig, chunk_size: int = 64) -> torch.Tensor:
    """Paint faces for the given factors: returns images [N, 3, resolution, resolution] in [0, 1].

    Works through ``chunk_size`` faces at a time: the supersampled canvases of a small chunk stay in
    cache, which is several times faster than one huge batch.
    """
    validate_config(cfg)
    chunks = [
        _render_chunk(
            Factors(factors.binary[i : i + chunk_size], factors.continuous[i : i + chunk_size]), cfg
        )
        for i in range(0, factors.binary.shape[0], chunk_size)
    ]
    return torch.cat(chunks) if chunks else torch.empty(0, 3, cfg.resolution, cfg.resolution)


def _render_chunk(factors: Factors, cfg: ToyFacesConfig) -> torch.Tensor:
    size = cfg.resolution * cfg.supersample
    masks = _shape_masks(factors, cfg, size)
    colours = _palette(factors)
    n = factors.binary.shape[0]
    canvas = colours["background"][:, :, None, None].expand(n, 3, size, size).clone()

    def paint(mask: torch.Tensor, colour: torch.Tensor) -> None:
        canvas.copy_(torch.where(mask[:, None], colour[:, :, None, None], canvas))

    paint(masks["hair_back"], colours["hair"])
    paint(masks["face"], colours["skin"])
    paint(masks["fringe"], colours["hair"])
    paint(masks["eye_white"], colours["eye_white"])
    paint(masks["pupil"] | masks["closed_eye"], colours["dark"])
    paint(masks["glasses"], colours["dark"])
    paint(masks["mouth"], colours["mouth"])
    paint(masks["teeth"], colours["teeth"])
    paint(masks["hat"], colours["hat"])
    return F.avg_pool2d(canvas, cfg.supersample) if cfg.supersample > 1 else canvas


def region_masks(factors: Factors, cfg: ToyFacesConfig) -> dict[str, torch.Tensor]:
    """Exact regions at the output resolution, as float masks [N, 1, resolution, resolution] in {0, 1}.

    ``mouth`` and ``eyes`` are boxes around those features (whatever their state), ``hair`` is all
    hair (and hat), ``face`` the skin ellipse, ``background`` the rest. A pixel belongs to a region
    when more than half of its supersampled area does.
    """
    validate_config(cfg)
    size = cfg.resolution * cfg.supersample
    masks = _shape_masks(factors, cfg, size)
    hair = (masks["hair_back"] & ~masks["face"]) | masks["fringe"] | masks["hat"]
    person = masks["hair_back"] | masks["face"] | masks["hat"]
    raw = {
        "mouth": masks["mouth_region"],
        "eyes": masks["eyes_region"],
        "hair": hair,
        "face": masks["face"],
        "background": ~person,
    }
    pooled = {
        name: F.avg_pool2d(mask[:, None].float(), cfg.supersample) if cfg.supersample > 1 else mask[:, None]
        for name, mask in raw.items()
    }
    return {name: (mask > 0.5).float() for name, mask in pooled.items()}


def make_batch(seeds: Sequence[int] | torch.Tensor, cfg: ToyFacesConfig) -> tuple[torch.Tensor, Factors]:
    """Images [N, 3, R, R] in [0, 1] and their Factors for the given seeds."""
    factors = sample_factors(seeds, cfg)
    return render(factors, cfg), factors
