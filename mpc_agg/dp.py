"""Distributed differential privacy: calibration, privatisation and accounting.

Implements ``mpc_agg/DP.md`` (the DP SPEC; section numbers below refer to it).

Data path of one site in one round (§2, DESIGN §4): float vector → optional randomised
Hadamard rotation (public per-round signs, padded to a power of two) → L2 clip to
``clip_norm`` → scale by 2^f and round stochastically, *conditionally* on the integer
vector's squared norm staying below the bound the accounting uses (Kairouz, Liu and
Steinke, ICML 2021, §4) → add this site's integer noise share → the protocol, which
reveals only the sum. Decoding inverts the scale and the rotation.

Calibration (§3): the noise of the sum has standard deviation ``σ = z·Δ₂`` in integer
units, where ``z`` is the noise multiplier and ``Δ₂`` the L2 sensitivity after rounding.
Each site adds variance ``σ²/k_min``, so the sum already carries ``σ²`` when only
``k_min`` sites survive (the protocol's minimum); local mode sets ``k_min = 1``.

Accounting (§4) composes rounds with Google's ``dp-accounting`` (``RdpAccountant``):

* distributed discrete Gaussian — Kairouz et al. Thm. 1: the sum of ``k`` draws of
  N_Z(0, σ²) is ``½ε²``-concentrated DP with
  ``ε = min(√(Δ₂²/(kσ²) + ½τd), Δ₂/(√k σ) + τ√d)``, ``τ = 10 Σ_{j<k} e^{−2π²σ² j/(j+1)}``;
  the library's ``ZCDpEvent(ρ = ε²/2)`` carries it (and ``GaussianDpEvent`` under Poisson
  subsampling, allowed only when ``τd < 10^-12``, see §4.3);
* Skellam — Agarwal, Kairouz and Liu, NeurIPS 2021, Thm. 3.5: RDP at integer orders
  ``α·Δ₂²/(4μ) + min(((2α−1)Δ₂² + 6Δ₁)/(16μ²), 3Δ₁/(4μ))`` for Sk(μ, μ) noise. Both
  branches are linear in α, so each is a ``ZCDpEvent(ρ, ξ)``; the library composes them
  at integer orders and the smaller ε of the two branches is reported.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from mpc_agg import noise
from mpc_agg.errors import EncodingError, MpcAggError
from mpc_agg.fixedpoint import check_headroom, sum_of_squares
from mpc_agg.randomness import DeterministicRandomSource, RandomSource
from mpc_agg.ring import RingVector, lift

if TYPE_CHECKING:
    from dp_accounting import DpEvent

FloatVector = NDArray[np.float64]

#: RDP orders used when a Skellam round is composed (its bound holds for integer α only).
#: dp-accounting's default orders that are integers (its DEFAULT_RDP_ORDERS, checked by a
#: test); written out so that importing this module does not import dp-accounting and
#: scipy (about half a second at every site's start-up, with or without ``[dp]``).
INTEGER_ORDERS: tuple[float, ...] = tuple(float(a) for a in (*range(2, 64), 128, 256, 512, 1024))
#: Kairouz et al.'s β: conditional rounding fails (and is redrawn) with probability ≤ β.
DEFAULT_BETA = math.exp(-0.5)
#: τ·d below this counts as zero when a discrete Gaussian round is Poisson-subsampled.
_TAU_NEGLIGIBLE = 1e-12
#: Redraws of the conditional rounding before giving up (each fails with probability ≤ β).
_MAX_ROUNDING_DRAWS = 64


class PrivacyBudgetExceededError(MpcAggError):
    """A round would spend more than the configured ε budget; nothing was sent."""

    def __init__(self, message: str, *, spent: float, would_be: float, budget: float) -> None:
        super().__init__(message)
        self.spent = spent
        self.would_be = would_be
        self.budget = budget


class Unit(enum.StrEnum):
    """What one neighbouring step adds or removes (§2.1): a whole site, or one example."""

    SITE = "site"
    """The site's whole update is clipped to ``clip_norm`` by the node (FedAvg, DP-FedAvg)."""
    EXAMPLE = "example"
    """The update is a sum of per-example gradients each clipped to ``clip_norm`` by the
    training code (DP-SGD); the node rounds it deterministically and does not clip it."""


class Mechanism(enum.StrEnum):
    """The integer noise each site adds (§2.2)."""

    DISCRETE_GAUSSIAN = "discrete_gaussian"
    SKELLAM = "skellam"


@dataclass(frozen=True, slots=True, kw_only=True)
class DpSettings:
    """What every site of a federation agrees on (``[dp]`` in ``federation.toml``, §5).

    ``noise_multiplier`` is ``z`` in σ = z·Δ₂; ``epsilon_budget`` (``None``: no budget)
    and ``delta`` bound the whole federation's spend; ``local`` makes each site add the
    full noise itself (local DP); ``unit`` is what the guarantee protects (a site, or one
    example of a site's data); ``sampling_probability`` is the Poisson rate at which the
    protected unit takes part in a round (1.0: every round).
    """

    noise_multiplier: float
    clip_norm: float
    delta: float
    epsilon_budget: float | None = None
    mechanism: Mechanism = Mechanism.DISCRETE_GAUSSIAN
    local: bool = False
    rotation: bool = False
    sampling_probability: float = 1.0
    unit: Unit = Unit.SITE
    noise_sites: int | None = None
    """The fewest *honest* sites whose noise the guarantee may rely on (§3.1); ``None``:
    the protocol's minimum (the ``secagg`` threshold T). Colluding sites know, and can
    subtract, their own noise: against ``c`` colluders set ``T − c``."""

    def __post_init__(self) -> None:
        # Accept the enums' string values (as a TOML file spells them); store the enums.
        object.__setattr__(self, "mechanism", Mechanism(self.mechanism))
        object.__setattr__(self, "unit", Unit(self.unit))
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ValueError(
                f"noise_multiplier must be finite and > 0, got {self.noise_multiplier}"
            )
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(f"clip_norm must be finite and > 0, got {self.clip_norm}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if self.epsilon_budget is not None and not (
            math.isfinite(self.epsilon_budget) and self.epsilon_budget > 0
        ):  # as federation.toml's [dp] epsilon: no budget is None, not inf
            raise ValueError(f"epsilon_budget must be finite and > 0, got {self.epsilon_budget}")
        if not 0 < self.sampling_probability <= 1:
            raise ValueError(
                f"sampling_probability must be in (0, 1], got {self.sampling_probability}"
            )
        if self.noise_sites is not None and (
            isinstance(self.noise_sites, bool) or self.noise_sites < 1
        ):
            raise ValueError(f"noise_sites must be a positive integer, got {self.noise_sites}")
        if self.sampling_probability < 1 and self.unit is Unit.SITE:
            raise ValueError(
                "sampling_probability < 1 needs unit = example: whether a site took part "
                "in a round is public (the included set), so sampling sites amplifies nothing"
            )
        if self.sampling_probability < 1 and self.mechanism is Mechanism.SKELLAM:
            raise ValueError(
                "Poisson subsampling is accounted for the discrete Gaussian only "
                "(dp-accounting amplifies Gaussian events); use mechanism = discrete_gaussian"
            )


# --------------------------------------------------------------------------- accounting


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundCost:
    """The privacy cost of one round as dp-accounting events (§4).

    ``rho``/``xi``: a ``ZCDpEvent`` (RDP ``ξ + ρα``). Skellam rounds also carry the
    second branch of Agarwal et al.'s bound (``alt_rho``/``alt_xi``) and are composed at
    :data:`INTEGER_ORDERS`. ``sampling_probability < 1`` turns the round into a
    Poisson-subsampled ``GaussianDpEvent`` with multiplier ``1/√(2ρ)``.
    """

    mechanism: Mechanism
    rho: float
    xi: float = 0.0
    alt_rho: float | None = None
    alt_xi: float | None = None
    sampling_probability: float = 1.0

    @property
    def integer_orders(self) -> bool:
        """True when the bound holds at integer RDP orders only (Skellam)."""
        return self.mechanism is Mechanism.SKELLAM

    def event(self, branch: int = 0) -> DpEvent:
        """The dp-accounting event of this round (``branch`` 1: Skellam's second bound)."""
        from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent, ZCDpEvent  # noqa: PLC0415

        rho, xi = self.rho, self.xi
        if branch == 1 and self.alt_rho is not None and self.alt_xi is not None:
            rho, xi = self.alt_rho, self.alt_xi
        if self.sampling_probability < 1:
            return PoissonSampledDpEvent(
                self.sampling_probability, GaussianDpEvent(1.0 / math.sqrt(2.0 * rho))
            )
        return ZCDpEvent(rho, xi)

    def to_json(self) -> dict[str, object]:
        """A JSON-ready mapping (the audit log's ``privacy.cost``)."""
        return {
            "mechanism": self.mechanism.value,
            "rho": self.rho,
            "xi": self.xi,
            "alt_rho": self.alt_rho,
            "alt_xi": self.alt_xi,
            "sampling_probability": self.sampling_probability,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> RoundCost:
        """Inverse of :meth:`to_json`; raises ``ValueError`` on a malformed record."""
        try:

            def number(key: str) -> float:
                value = data[key]
                if not isinstance(value, int | float) or isinstance(value, bool):
                    raise TypeError(key)
                return float(value)

            def optional(key: str) -> float | None:
                return None if data.get(key) is None else number(key)

            return cls(
                mechanism=Mechanism(str(data["mechanism"])),
                rho=number("rho"),
                xi=number("xi"),
                alt_rho=optional("alt_rho"),
                alt_xi=optional("alt_xi"),
                sampling_probability=number("sampling_probability"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed privacy cost record: {exc}") from None


def _epsilon(costs: Sequence[RoundCost], delta: float) -> float:
    """ε(δ) of ``costs`` composed by dp-accounting's RdpAccountant (§4.2).

    Composition depends only on how many rounds of each cost there were, so the answer
    is cached by that multiset (a round's budget check and its charge ask the same).
    """
    if not costs:
        return 0.0
    return _epsilon_of_multiset(frozenset(Counter(costs).items()), delta)


@functools.lru_cache(maxsize=64)
def _epsilon_of_multiset(grouped: frozenset[tuple[RoundCost, int]], delta: float) -> float:
    costs = [cost for cost, _ in grouped]
    integer = any(c.integer_orders for c in costs)
    from dp_accounting import ComposedDpEvent, SelfComposedDpEvent  # noqa: PLC0415
    from dp_accounting.rdp import RdpAccountant  # noqa: PLC0415
    from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS  # noqa: PLC0415

    orders = INTEGER_ORDERS if integer else tuple(float(a) for a in DEFAULT_RDP_ORDERS)
    branches = (0, 1) if any(c.alt_rho is not None for c in costs) else (0,)
    best = math.inf
    # dp-accounting logs (through absl) each fractional order it cannot evaluate under
    # subsampling and leaves it out, which is what it should do; keep that out of the log.
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        for branch in branches:
            accountant = RdpAccountant(orders=list(orders))
            composed = [SelfComposedDpEvent(c.event(branch), k) for c, k in grouped]
            accountant.compose(ComposedDpEvent(composed))
            best = min(best, float(accountant.get_epsilon(delta)))
    finally:
        absl.setLevel(level)
    return best


class PrivacyAccountant:
    """ε spent by a site over the rounds it took part in (§4.2); composition by dp-accounting.

    ``history`` is the rounds already spent (e.g. read back from the audit log, so the
    budget survives a restart).
    """

    __slots__ = ("_costs", "delta")

    def __init__(self, *, delta: float, history: Sequence[RoundCost] = ()) -> None:
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.delta = delta
        self._costs: list[RoundCost] = list(history)

    @property
    def rounds(self) -> int:
        """Rounds composed so far."""
        return len(self._costs)

    @property
    def costs(self) -> tuple[RoundCost, ...]:
        """The rounds composed so far."""
        return tuple(self._costs)

    def epsilon(self, extra: Sequence[RoundCost] = ()) -> float:
        """ε(δ) of the rounds so far plus ``extra`` (which are not recorded)."""
        return _epsilon([*self._costs, *extra], self.delta)

    def spend(self, cost: RoundCost) -> float:
        """Record one round; return the new total ε."""
        self._costs.append(cost)
        return self.epsilon()


def discrete_gaussian_epsilon(
    *, l2_sensitivity: float, sigma_squared: float, sites: int, dimension: int
) -> float:
    """Kairouz et al. Thm. 1: the sum of ``sites`` N_Z(0, σ²) vectors is ½ε²-CDP; return ε."""
    tau = discrete_gaussian_tau(sigma_squared, sites)
    total = sites * sigma_squared
    return min(
        math.sqrt(l2_sensitivity**2 / total + 0.5 * tau * dimension),
        l2_sensitivity / math.sqrt(total) + tau * math.sqrt(dimension),
    )


def discrete_gaussian_tau(sigma_squared: float, sites: int) -> float:
    """Kairouz et al.'s τ for ``sites`` summed draws of variance parameter σ²."""
    return 10.0 * sum(
        math.exp(-2.0 * math.pi**2 * sigma_squared * j / (j + 1)) for j in range(1, sites)
    )


def skellam_rdp(order: float, *, l2_sensitivity: float, l1_sensitivity: float, mu: float) -> float:
    """Agarwal et al. Thm. 3.5: RDP of order ``α`` (an integer ≥ 2) of Sk(μ, μ) noise."""
    d2 = l2_sensitivity**2
    return order * d2 / (4.0 * mu) + min(
        ((2.0 * order - 1.0) * d2 + 6.0 * l1_sensitivity) / (16.0 * mu**2),
        3.0 * l1_sensitivity / (4.0 * mu),
    )


def skellam_cost(
    *, l2_sensitivity: float, l1_sensitivity: float, mu: float, sampling_probability: float = 1.0
) -> RoundCost:
    """:func:`skellam_rdp`'s two branches as ``ZCDpEvent`` parameters (ρα + ξ each)."""
    d2, d1 = l2_sensitivity**2, l1_sensitivity
    return RoundCost(
        mechanism=Mechanism.SKELLAM,
        rho=d2 / (4.0 * mu) + d2 / (8.0 * mu**2),
        xi=max(0.0, (6.0 * d1 - d2) / (16.0 * mu**2)),
        alt_rho=d2 / (4.0 * mu),
        alt_xi=3.0 * d1 / (4.0 * mu),
        sampling_probability=sampling_probability,
    )


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True, slots=True, kw_only=True)
class DpRound:
    """One round's DP parameters, the same at every site (§3); built by :func:`plan_round`."""

    settings: DpSettings
    frac_bits: int
    vector_length: int
    """Length of the update as given (before padding)."""
    dimension: int
    """Length on the wire: a power of two with rotation, else ``vector_length``."""
    min_sites: int
    l2_sensitivity: float
    """Δ₂ in integer units (after conditional rounding)."""
    l1_sensitivity: float
    sigma_squared: int
    """Per-site variance parameter of the discrete Gaussian (``t·m``), or 2μ for Skellam."""
    laplace_scale: int
    """``t`` of the discrete Gaussian sampler (0 for Skellam)."""
    skellam_mu: float
    """Per-site μ of Sk(μ, μ) (0 for the discrete Gaussian)."""
    cost: RoundCost
    rotation_seed: bytes

    @property
    def scale(self) -> float:
        """2^frac_bits."""
        return float(1 << self.frac_bits)

    def describe(self) -> dict[str, object]:
        """The parameters for the audit log (no secret among them)."""
        s = self.settings
        return {
            "mechanism": s.mechanism.value,
            "noise_multiplier": s.noise_multiplier,
            "clip_norm": s.clip_norm,
            "delta": s.delta,
            "local": s.local,
            "unit": s.unit.value,
            "sampling_probability": s.sampling_probability,
            "rotation": s.rotation,
            "min_sites": self.min_sites,
            "frac_bits": self.frac_bits,
            "l2_sensitivity": self.l2_sensitivity,
            "site_variance": self.sigma_squared if self.laplace_scale else 2 * self.skellam_mu,
        }


def example_sensitivity_bound(scaled_clip: float, dimension: int) -> float:
    """Δ₂ of a sum of clipped examples rounded to nearest, in integer units (§2.1).

    Removing one example moves the real-valued sum by at most ``c``; rounding each
    coordinate to the nearest integer changes each coordinate's difference by less than
    one, so the rounded sums differ by at most ``c + √d``. The relative margin 2^-40
    covers float64 rounding of the clip factors and the sum (the sum must be computed in
    float64, which :func:`mpc_agg.torch.privacy.clipped_gradient_sum` does).
    """
    return scaled_clip * (1.0 + 2.0**-40) + math.sqrt(float(dimension))


def l2_sensitivity_bound(scaled_clip: float, dimension: int, beta: float = DEFAULT_BETA) -> float:
    """Δ₂ after conditional stochastic rounding (Kairouz et al. §4.1), in integer units.

    ``min(√(c² + d/4 + √(2 ln(1/β))·(c + √d/2)), c + √d)`` with ``c`` the clip norm
    times 2^f: rounding moves each coordinate by less than one unit, so ``c + √d`` always
    holds; the first bound holds except with probability β and is enforced by redrawing.
    """
    c, d = scaled_clip, float(dimension)
    tight = math.sqrt(
        c * c + d / 4.0 + math.sqrt(2.0 * math.log(1.0 / beta)) * (c + math.sqrt(d) / 2.0)
    )
    return min(tight, c + math.sqrt(d))


def padded_length(vector_length: int, rotation: bool) -> int:
    """The wire length: the next power of two with rotation, else unchanged."""
    if not rotation:
        return vector_length
    return 1 << max(0, (vector_length - 1).bit_length())


def plan_round(
    settings: DpSettings,
    *,
    vector_length: int,
    frac_bits: int,
    min_sites: int,
    federation: str,
    round_id: int,
) -> DpRound:
    """The round's calibration (§3): sensitivity, per-site noise, cost; lowers ``frac_bits``.

    ``min_sites`` is the fewest sites whose noise the protocol lets the sum carry (the
    ``secagg`` threshold T); local mode uses 1. ``frac_bits`` is lowered (never raised)
    until the per-site variance fits the sampler; :class:`EncodingError` if it never does.
    """
    if vector_length < 1:
        raise EncodingError(f"vector_length must be >= 1, got {vector_length}")
    if min_sites < 1:
        raise ValueError(f"min_sites must be >= 1, got {min_sites}")
    k = 1 if settings.local else min(min_sites, settings.noise_sites or min_sites)
    dimension = padded_length(vector_length, settings.rotation)
    limit = (
        noise.MAX_DISCRETE_GAUSSIAN_VARIANCE
        if settings.mechanism is Mechanism.DISCRETE_GAUSSIAN
        else 2.0 * noise.MAX_SKELLAM_MU
    )
    for bits in range(frac_bits, -1, -1):
        bound = example_sensitivity_bound if settings.unit is Unit.EXAMPLE else l2_sensitivity_bound
        try:
            delta2 = bound(settings.clip_norm * (1 << bits), dimension)
            variance = (settings.noise_multiplier * delta2) ** 2 / k
        except OverflowError:
            variance = math.inf
        if not (math.isfinite(variance) and variance > 0):  # 1e300, or 1e-300, in the config
            raise EncodingError(
                f"noise multiplier {settings.noise_multiplier:g} with clip_norm "
                f"{settings.clip_norm:g} gives a noise variance of {variance:g} at frac_bits "
                f"{bits}: outside what any sampler can draw (check [dp] in federation.toml)"
            )
        if settings.mechanism is Mechanism.DISCRETE_GAUSSIAN:
            # The sampler's grid rounds σ² up by at most t ≈ σ: test what will be drawn.
            grid = math.isqrt(math.floor(variance)) + 1
            if grid * math.ceil(variance / grid) <= limit:
                break
        elif variance <= limit:
            break
    else:
        raise EncodingError(
            f"noise multiplier {settings.noise_multiplier} with clip_norm {settings.clip_norm} "
            "needs a noise variance the samplers cannot draw even at frac_bits 0"
        )
    delta1 = min(delta2**2, math.sqrt(dimension) * delta2)
    q = settings.sampling_probability
    seed = hashlib.sha256(
        b"mpc-agg/dp-rotation/v1\x00" + federation.encode() + b"\x00" + str(round_id).encode()
    ).digest()
    if settings.mechanism is Mechanism.DISCRETE_GAUSSIAN:
        t, m = noise.discrete_gaussian_parameters(variance)
        sigma2 = t * m
        eps = discrete_gaussian_epsilon(
            l2_sensitivity=delta2, sigma_squared=sigma2, sites=k, dimension=dimension
        )
        if q < 1 and discrete_gaussian_tau(sigma2, k) * dimension >= _TAU_NEGLIGIBLE:
            raise EncodingError(
                "Poisson subsampling needs a per-site noise large enough that the discrete "
                "Gaussian sum is Gaussian to 1e-12 (raise noise_multiplier or frac_bits)"
            )
        # ξ = τd also covers the RDP form α·Δ²/(2kσ²) + τd of the authors' code; τ
        # underflows to 0 at every practical size, so the extra term costs nothing there.
        cost = RoundCost(
            mechanism=Mechanism.DISCRETE_GAUSSIAN,
            rho=eps**2 / 2.0,
            xi=discrete_gaussian_tau(sigma2, k) * dimension,
            sampling_probability=q,
        )
        sigma_out, scale_out, mu_out = sigma2, t, 0.0
    else:
        mu_out = variance / 2.0
        cost = skellam_cost(l2_sensitivity=delta2, l1_sensitivity=delta1, mu=k * mu_out)
        sigma_out, scale_out = math.ceil(variance), 0
    return DpRound(
        settings=settings,
        frac_bits=bits,
        vector_length=vector_length,
        dimension=dimension,
        min_sites=k,
        l2_sensitivity=delta2,
        l1_sensitivity=delta1,
        sigma_squared=sigma_out,
        laplace_scale=scale_out,
        skellam_mu=mu_out,
        cost=cost,
        rotation_seed=seed,
    )


# --------------------------------------------------------------------------- rotation


def _walsh_hadamard(values: FloatVector) -> None:
    """In-place unnormalised fast Walsh–Hadamard transform (length a power of two)."""
    n = values.shape[0]
    h = 1
    while h < n:
        blocks = values.reshape(-1, 2, h)
        upper = blocks[:, 0, :].copy()
        blocks[:, 0, :] += blocks[:, 1, :]
        blocks[:, 1, :] *= -1.0
        blocks[:, 1, :] += upper
        h *= 2


def _signs(plan: DpRound) -> FloatVector:
    bits = DeterministicRandomSource(plan.rotation_seed).random_bytes(plan.dimension)
    return (np.frombuffer(bits, np.uint8) & 1).astype(np.float64) * 2.0 - 1.0


def rotate(plan: DpRound, values: FloatVector) -> FloatVector:
    """Randomised Hadamard rotation ``H·D·x/√n`` (zero-padded to ``plan.dimension``)."""
    out = np.zeros(plan.dimension, dtype=np.float64)
    out[: values.shape[0]] = values
    out *= _signs(plan)
    _walsh_hadamard(out)
    out /= math.sqrt(plan.dimension)
    return out


def unrotate(plan: DpRound, values: FloatVector) -> FloatVector:
    """Inverse of :func:`rotate`, truncated to ``plan.vector_length``."""
    out = np.array(values, dtype=np.float64)
    _walsh_hadamard(out)
    out /= math.sqrt(plan.dimension)
    out *= _signs(plan)
    return out[: plan.vector_length]


# --------------------------------------------------------------------------- privatise


@dataclass(frozen=True, slots=True)
class Privatized:
    """A site's noisy integer vector and what happened on the way (§2)."""

    ring: RingVector
    clipped: bool
    l2_norm: float
    rounding_draws: int


def _round_conditionally(
    scaled: FloatVector, bound_squared: float, rng: np.random.Generator
) -> tuple[NDArray[np.int64], int]:
    """Unbiased stochastic rounding, redrawn until ‖z‖² ≤ bound (Kairouz et al. §4.1)."""
    floor = np.floor(scaled)
    fraction = scaled - floor
    # float64 sum of squares is within d·2^-52 relative of the exact value: keep a margin.
    limit = bound_squared * (1.0 - scaled.shape[0] * 2.0**-52)
    for draw in range(1, _MAX_ROUNDING_DRAWS + 1):
        rounded = floor + (rng.random(scaled.shape[0]) < fraction)
        if sum_of_squares(rounded) <= limit:
            return rounded.astype(np.int64), draw
    raise EncodingError(
        f"conditional rounding failed {_MAX_ROUNDING_DRAWS} times; the sensitivity bound "
        "is too tight for this vector (this should not happen: report it)"
    )


def privatize(
    plan: DpRound,
    values: NDArray[np.floating] | NDArray[np.integer],
    *,
    randomness: RandomSource,
    rounding: np.random.Generator,
    n_peers: int,
) -> Privatized:
    """Rotate, clip, round and add this site's noise share (§2); raise on bad input.

    ``randomness`` draws the noise (a CSPRNG: the noise is secret); ``rounding`` drives
    the unbiased rounding only. :class:`EncodingError` for NaN/inf or a wrong length;
    :class:`~mpc_agg.errors.HeadroomError` if the sum of ``n_peers`` noisy vectors could
    leave the ring.
    """
    flat = np.asarray(values).reshape(-1)
    if not (np.issubdtype(flat.dtype, np.floating) or np.issubdtype(flat.dtype, np.integer)):
        raise EncodingError(f"cannot encode dtype {flat.dtype}; expected floats")
    if flat.shape[0] != plan.vector_length:
        raise EncodingError(
            f"update has {flat.shape[0]} entries, the round expects {plan.vector_length}"
        )
    x = flat.astype(np.float64)
    if not np.isfinite(x).all():
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise EncodingError(f"update contains {bad} NaN/inf entries; refusing to encode")
    if plan.settings.rotation:
        x = rotate(plan, x)
    norm = math.sqrt(sum_of_squares(x))  # not BLAS (fixedpoint.sum_of_squares)
    if plan.settings.unit is Unit.EXAMPLE:
        # A sum of clipped examples: never clipped here, rounded to nearest (§2.1).
        scaled = x * plan.scale
        if scaled.size and float(np.abs(scaled).max()) >= 2.0**62:
            raise EncodingError(
                f"an entry of the update is {float(np.abs(x).max()):.4g}: too large for the "
                f"ring at 2^-{plan.frac_bits}; nothing was clipped"
            )
        clipped, draws = False, 0
        integers = np.rint(scaled).astype(np.int64)
    else:
        clip = plan.settings.clip_norm
        clipped = norm > clip
        factor = plan.scale * (clip / norm if clipped else 1.0)
        integers, draws = _round_conditionally(x * factor, plan.l2_sensitivity**2, rounding)
    # An AES-256-CTR stream keyed by 32 fresh bytes of ``randomness``: a CSPRNG, and far
    # cheaper than one getrandom() call per sampler pass (§2.2).
    stream = DeterministicRandomSource(randomness.random_bytes(32))
    if plan.laplace_scale:
        integers += noise.discrete_gaussian(
            stream, plan.sigma_squared, plan.dimension, t=plan.laplace_scale
        )
    else:
        integers += noise.skellam(stream, plan.skellam_mu, plan.dimension)
    max_abs = max(int(integers.max()), -int(integers.min()))
    check_headroom(max_abs, n_peers)
    return Privatized(
        ring=integers.view(np.uint64), clipped=clipped, l2_norm=norm, rounding_draws=draws
    )


def decode(plan: DpRound, total: RingVector) -> FloatVector:
    """The noisy sum back in float units and the original coordinates (§2)."""
    values = lift(total).astype(np.float64) / plan.scale
    if plan.settings.rotation:
        return unrotate(plan, values)
    return values


def calibrate_noise_multiplier(
    settings: DpSettings,
    *,
    epsilon: float,
    rounds: int,
    vector_length: int,
    frac_bits: int,
    min_sites: int,
) -> float:
    """The smallest noise multiplier z for which ``rounds`` rounds spend at most ε (§3.2).

    Bisection on z over the *actual* round cost (:func:`plan_round` with ``settings``'
    mechanism, mode and sampling rate: σ² on the sampler's grid, τ, Skellam's extra terms,
    integer orders), each candidate composed by dp-accounting; the answer is the upper end
    of the final bracket, so ``rounds`` rounds never exceed ε.
    """
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be finite and > 0, got {epsilon}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")

    def spent(z: float) -> float:
        trial = dataclasses.replace(settings, noise_multiplier=z)
        plan = plan_round(
            trial,
            vector_length=vector_length,
            frac_bits=frac_bits,
            min_sites=min_sites,
            federation="calibration",
            round_id=1,
        )
        return _epsilon([plan.cost] * rounds, settings.delta)

    low, high = 1e-2, 1e4
    if spent(high) > epsilon:
        raise ValueError(f"no noise multiplier up to {high:g} reaches epsilon {epsilon}")
    while high / low > 1.0 + 1e-6:
        middle = math.sqrt(low * high)
        if spent(middle) > epsilon:
            low = middle
        else:
            high = middle
    return high
