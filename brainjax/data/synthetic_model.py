"""The generative model behind ``brainjax synth``: ground-truth networks, subject/site traits, simulation.

Every parcel of a real atlas (MNI coordinates + network labels) receives, per scan::

    x_p(t) = gain_site * ( amp_subj * (sqrt(v_net_p) * N_p(t) + sqrt(v_loc_p) * L_p(t))
                           + noise_site_dx * (sqrt(v_white) * W_p(t) + sqrt(v_pink) * F_p(t))
                           + drift_site * sqrt(v_drift) * D_p(t) )

with every component standardised per scan (zero mean, unit variance over time), so the variance budget is
exact. ``N`` is the network signal: one latent source per ground-truth network, a stable VAR(1) (discretised
OU) at a sub-TR step with between-network coupling, convolved with the subject's double-gamma HRF, sampled at
the TR and mixed into parcels by a Gaussian kernel on xyz distances. ``L`` is a parcel-specific HRF-smoothed
fluctuation, ``W`` white, ``F`` 1/f and ``D`` slow cosine drift noise. Subjects carry traits (phenotypes,
coupling, HRF delay, amplitude) shared by their scans; sites carry gain, noise level and drift amplitude
(``noise_site_dx``: the site's noise level, x 1.25 for diagnosed subjects).
The README ("The synthetic dataset") documents the model and its phenotype effects;
:mod:`brainjax.data.synthetic` writes datasets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from brainjax.data.atlas_core import Atlas

GENERATOR_VERSION = 2  # bump on any change to the model: it names the default dataset's cache directory
# Variance budget of one parcel before subject/site modulation (sums to 1). Signal = network + local.
V_NETWORK, V_LOCAL, V_WHITE, V_PINK, V_DRIFT = 0.60, 0.15, 0.10, 0.10, 0.05
# Added to every between-network innovation correlation: a global signal, as in real data without GSR.
COMMON_COUPLING = 0.25
SUBJECT_JITTER = 0.10  # sd of each subject's symmetric perturbation of the network correlation matrix
# Phenotype effects (see the README): on the subject's network correlation R_s and the DMN network share.
AGE_MEAN, AGE_SCALE = 44.0, 20.0  # age_z = (age - 44) / 20
AGE_BETWEEN = 0.06  # + AGE_BETWEEN * age_z on every between-network correlation
AGE_DMN_SHARE = 0.08  # DMN network share x exp(-AGE_DMN_SHARE * age_z)
SEX_PAIR_SHIFT = 0.40  # visual-somatomotor correlation + SEX_PAIR_SHIFT * (sex - 0.5)
DIAGNOSIS_DMN_FP, DIAGNOSIS_NOISE = 0.35, 1.25  # DMN-FP correlation - 0.35; noise sd x 1.25
UNLABELLED = ("", "unassigned", "none", "n/a", "unknown")  # network labels that mean "no network"


@dataclass(frozen=True)
class SynthConfig:
    """Size and seed of a synthetic dataset; the generative model's constants are module-level and versioned."""

    subjects: int = 160
    scans_per_subject: int = 2
    timepoints: int = 300  # TRs per scan
    tr: float = 2.0  # seconds
    atlas: str = "seitzman300"
    sites: int = 4
    seed: int = 0
    smoothing_mm: float = 10.0  # Gaussian kernel width (sigma) that mixes network sources into nearby parcels
    diagnosis_rate: float = 0.3

    def __post_init__(self):
        for name in ("subjects", "scans_per_subject", "sites"):
            if getattr(self, name) < 1:
                raise ValueError(f"SynthConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.timepoints < 16:
            raise ValueError(f"SynthConfig.timepoints must be >= 16, got {self.timepoints}")
        if not 0.1 <= self.tr <= 10.0:
            raise ValueError(f"SynthConfig.tr must be between 0.1 and 10 seconds, got {self.tr}")
        if not 0.0 <= self.diagnosis_rate <= 1.0:
            raise ValueError(f"SynthConfig.diagnosis_rate must be in [0, 1], got {self.diagnosis_rate}")
        if self.smoothing_mm <= 0:
            raise ValueError(f"SynthConfig.smoothing_mm must be > 0, got {self.smoothing_mm}")


DEFAULT_SYNTH = SynthConfig()


# ----------------------------------------------------------------------------------------------- ground truth
def _kmeans(xyz: np.ndarray, k: int, iters: int = 50) -> np.ndarray:
    """Deterministic Lloyd k-means (farthest-point init from the parcel nearest the centroid)."""
    centers = [xyz[np.argmin(((xyz - xyz.mean(0)) ** 2).sum(1))]]
    for _ in range(1, k):
        dist = np.min([((xyz - c) ** 2).sum(1) for c in centers], axis=0)
        centers.append(xyz[np.argmax(dist)])
    centers = np.array(centers)
    labels = np.zeros(len(xyz), np.int64)
    for _ in range(iters):
        labels = np.argmin(((xyz[:, None] - centers[None]) ** 2).sum(-1), axis=1)
        new = np.array([xyz[labels == j].mean(0) if np.any(labels == j) else centers[j] for j in range(k)])
        if np.allclose(new, centers):
            break
        centers = new
    return labels


def ground_truth_networks(atlas: Atlas) -> tuple[str, ...]:
    """One network label per parcel: the atlas's own labels, k-means groups of xyz where it has none.

    Unlabelled parcels (label in :data:`UNLABELLED`, e.g. Seitzman's "unassigned") of a labelled atlas form
    ``synthetic1..`` groups (about 10 parcels each); an atlas without networks is split into
    ``synthetic1..K`` with K = clip(P / 20, 2, 17).
    """
    xyz = np.asarray(atlas.xyz, np.float64)
    labels = list(atlas.networks) if atlas.networks is not None else [""] * atlas.n_parcels
    missing = np.array([i for i, name in enumerate(labels) if name.strip().lower() in UNLABELLED])
    if len(missing):
        k = int(np.clip(round(atlas.n_parcels / 20), 2, 17)) if atlas.networks is None else \
            max(1, round(len(missing) / 10))
        k = min(k, len(missing))
        for i, group in zip(missing, _kmeans(xyz[missing], k)):
            labels[i] = f"synthetic{group + 1}"
    return tuple(labels)


# Names that identify the networks the phenotype effects act on (Seitzman, Dosenbach, Power, Yeo/Schaefer).
_ROLE_KEYWORDS = (
    (("default",), ("dmn",)),
    (("fronto", "pariet"), ("cont",)),
    (("visual",), ("occipital",), ("vis",)),
    (("somato",), ("sensorimotor",), ("sommot",)),
)


def network_roles(names: Sequence[str]) -> tuple[int, int, int, int]:
    """Indices of the (DMN, frontoparietal, visual, somatomotor) networks among ``names``, found by name.

    A role without a matching name takes the first network not used yet, so DMN != FP and visual !=
    somatomotor always hold (the effects would vanish on a diagonal); with fewer than four networks the
    two pairs may share networks.
    """
    flat = ["".join(c for c in name.lower() if c.isalpha()) for name in names]
    chosen: list[int | None] = []
    for alternatives in _ROLE_KEYWORDS:
        hits = (i for words in alternatives for i, f in enumerate(flat)
                if i not in chosen and all(w in f for w in words))
        chosen.append(next(hits, None))
    for role in range(4):
        if chosen[role] is None:
            partner = chosen[role ^ 1]  # roles pair up as (0, 1) and (2, 3)
            unused = [i for i in range(len(names)) if i not in chosen and i != partner]
            chosen[role] = (unused or [i for i in range(len(names)) if i != partner])[0]
    return tuple(chosen)


@dataclass(frozen=True)
class Template:
    """Everything fixed by the atlas (not by subjects): networks, mixing, group coupling."""

    names: tuple[str, ...]  # ground-truth network per parcel
    network_names: list[str]
    network_of: np.ndarray  # int [P]
    mixing: np.ndarray  # [P, N] spatially smoothed one-hot
    parcel_share: np.ndarray  # [P] multiplies V_NETWORK (heterogeneous parcels)
    group_corr: np.ndarray  # [N, N] innovation correlation of the group
    lag_coupling: np.ndarray  # [N, N] lagged (directed) coupling, scaled per subject
    time_constants: np.ndarray  # [N] seconds
    dmn: int
    fpn: int
    sex_pair: tuple[int, int]


def build_template(atlas: Atlas, smoothing_mm: float) -> Template:
    """Ground truth, mixing [P, N] and group coupling [N, N]; depends on the atlas only, not on the seed."""
    names = ground_truth_networks(atlas)
    network_names = sorted(set(names))
    index = {n: i for i, n in enumerate(network_names)}
    network_of = np.array([index[n] for n in names])
    n_net = len(network_names)
    if n_net < 2:
        raise ValueError(f"atlas {atlas.name}: the synthetic model needs at least two networks")
    xyz = np.asarray(atlas.xyz, np.float64)
    dist2 = ((xyz[:, None] - xyz[None]) ** 2).sum(-1)
    kernel = np.exp(-dist2 / (2 * smoothing_mm ** 2))
    mixing = kernel @ np.eye(n_net)[network_of]
    mixing /= mixing.sum(1, keepdims=True)
    # Seeded by the atlas so every dataset seed shares one "species" of brain.
    rng = np.random.default_rng(20_181_300 + atlas.n_parcels)
    factors = rng.normal(0, 0.35, (n_net, 3))
    corr = factors @ factors.T + COMMON_COUPLING
    dmn, fpn, vis, smn = network_roles(network_names)
    corr[dmn, fpn] = corr[fpn, dmn] = 0.3  # a clear baseline for the diagnosis effect to reduce
    lag = rng.normal(0, 1, (n_net, n_net)) * (rng.random((n_net, n_net)) < 0.3)
    np.fill_diagonal(lag, 0)
    lag /= max(1e-9, np.abs(np.linalg.eigvals(lag)).max())
    return Template(names=names, network_names=network_names, network_of=network_of, mixing=mixing,
                    parcel_share=rng.uniform(0.75, 1.25, len(names)), group_corr=corr, lag_coupling=lag,
                    time_constants=rng.uniform(1.5, 4.0, n_net), dmn=dmn, fpn=fpn, sex_pair=(vis, smn))


# ----------------------------------------------------------------------------------------------- traits
@dataclass(frozen=True)
class SubjectTraits:
    """One subject's phenotypes and physiology, shared by all of its scans."""

    age: float
    sex: int  # 1 = male, 0 = female
    diagnosis: int  # 1 = case
    site: int
    amplitude: float  # multiplies the signal (network + local) standard deviation
    hrf_scale: float  # stretches the HRF in time (peak at ~5 s * hrf_scale)
    coupling: float  # scales the lagged between-network coupling
    corr: np.ndarray  # [N, N] innovation correlation after phenotype effects


@dataclass(frozen=True)
class SiteTraits:
    """One site's scanner: applies to every scan acquired there."""

    gain: float
    noise: float  # multiplies the white + 1/f noise standard deviation
    drift: float  # multiplies the drift standard deviation


def _nearest_correlation(mat: np.ndarray, floor: float = 0.05) -> np.ndarray:
    mat = (mat + mat.T) / 2
    np.fill_diagonal(mat, 1.0)
    vals, vecs = np.linalg.eigh(mat)
    mat = (vecs * np.maximum(vals, floor)) @ vecs.T
    d = np.sqrt(np.diag(mat))
    return mat / d[:, None] / d[None]


def sample_sites(cfg: SynthConfig) -> list[SiteTraits]:
    rng = np.random.default_rng([cfg.seed, 1])
    return [SiteTraits(gain=float(rng.lognormal(0, 0.25)), noise=float(rng.lognormal(0, 0.2)),
                       drift=float(rng.uniform(0.5, 2.0))) for _ in range(cfg.sites)]


def sample_subjects(cfg: SynthConfig, template: Template) -> list[SubjectTraits]:
    """Draw each subject's phenotypes and physiology from its own seeded stream (chunking-independent)."""
    subjects = []
    n_net = len(template.network_names)
    for s in range(cfg.subjects):
        rng = np.random.default_rng([cfg.seed, 2, s])
        age = float(rng.uniform(8, 80))
        sex, diagnosis = int(rng.random() < 0.5), int(rng.random() < cfg.diagnosis_rate)
        age_z = (age - AGE_MEAN) / AGE_SCALE
        corr = template.group_corr.copy()
        corr += AGE_BETWEEN * age_z  # age raises every between-network coupling
        a, b = template.sex_pair
        corr[a, b] += SEX_PAIR_SHIFT * (sex - 0.5)
        corr[b, a] = corr[a, b]
        d, f = template.dmn, template.fpn
        corr[d, f] -= DIAGNOSIS_DMN_FP * diagnosis
        corr[f, d] = corr[d, f]
        jitter = rng.normal(0, SUBJECT_JITTER, (n_net, n_net))
        subjects.append(SubjectTraits(
            age=round(age, 1), sex=sex, diagnosis=diagnosis, site=int(rng.integers(cfg.sites)),
            amplitude=float(rng.lognormal(0, 0.15)), hrf_scale=float(rng.lognormal(0, 0.08)),
            coupling=float(rng.uniform(0.5, 1.5)), corr=_nearest_correlation(corr + (jitter + jitter.T) / 2)))
    return subjects


def variance_shares(template: Template, subject: SubjectTraits, site: SiteTraits) -> dict[str, np.ndarray]:
    """Per-parcel variance of each component [P] for one subject at one site (gain included)."""
    age_z = (subject.age - AGE_MEAN) / AGE_SCALE
    signal = V_NETWORK + V_LOCAL
    net = V_NETWORK * template.parcel_share
    # Age moves DMN variance from the shared network source to local fluctuations: weaker within-DMN FC.
    in_dmn = template.network_of == template.dmn
    net = np.where(in_dmn, net * np.exp(-AGE_DMN_SHARE * age_z), net).clip(0.05, signal - 0.05)
    amp2, noise2 = subject.amplitude ** 2, (site.noise * (DIAGNOSIS_NOISE if subject.diagnosis else 1.0)) ** 2
    g2 = site.gain ** 2
    return {"network": g2 * amp2 * net, "local": g2 * amp2 * (signal - net),
            "white": np.full_like(net, g2 * noise2 * V_WHITE), "pink": np.full_like(net, g2 * noise2 * V_PINK),
            "drift": np.full_like(net, g2 * site.drift ** 2 * V_DRIFT)}


# ----------------------------------------------------------------------------------------------- simulation
def double_gamma_hrf(times: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """SPM canonical HRF (gamma(6) - gamma(16) / 6, peak ~5 s) at ``times`` seconds, stretched by ``scale``."""
    t = np.maximum(np.asarray(times, np.float64) / scale, 0.0)
    with np.errstate(divide="ignore"):
        log_t = np.where(t > 0, np.log(np.maximum(t, 1e-300)), -np.inf)
    peak = np.exp(5 * log_t - t - math.lgamma(6))
    under = np.exp(15 * log_t - t - math.lgamma(16))
    return peak - under / 6.0


def _standardize(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(-1, keepdims=True)
    return x / np.maximum(x.std(-1, keepdims=True), 1e-12)


def _fft_convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Causal convolution along the last axis (same length as ``x``); kernel broadcasts over leading axes."""
    from scipy import fft  # its next_fast_len avoids pocketfft's slow prime-factor lengths

    n = fft.next_fast_len(x.shape[-1] + kernel.shape[-1], real=True)
    return fft.irfft(fft.rfft(x, n) * fft.rfft(kernel, n), n)[..., : x.shape[-1]]


def _run_var1(trans: np.ndarray, innov: np.ndarray, block: int = 32) -> np.ndarray:
    """States of ``x[t] = trans @ x[t-1] + innov[t]`` from x[-1] = 0; innov [L, K, N] -> [L, K, N].

    Blocked so the Python loop runs L / block times: inside a block, x[j] = A^(j+1) x_prev + sum_i A^(j-i) e[i].
    """
    length, k, n = innov.shape
    n_blocks = -(-length // block)
    padded = np.zeros((n_blocks * block, k, n))
    padded[:length] = innov
    powers = [np.eye(n)]
    for _ in range(block):
        powers.append(trans @ powers[-1])
    powers = np.stack(powers)  # [block + 1, N, N]
    lags = np.arange(block)[:, None] - np.arange(block)[None, :]  # j - i
    weights = np.where((lags >= 0)[..., None, None], powers[np.clip(lags, 0, block)], 0.0)  # [j, i, N, N]
    # One BLAS matmul over all blocks: [(j, n), (i, m)] @ [(i, m), (block, k)].
    weights = weights.transpose(0, 2, 1, 3).reshape(block * n, block * n)
    drive = padded.reshape(n_blocks, block, k, n).transpose(1, 3, 0, 2).reshape(block * n, n_blocks * k)
    within = (weights @ drive).reshape(block, n, n_blocks, k).transpose(2, 0, 3, 1).copy()  # [blocks, j, K, N]
    carry = np.zeros((k, n))
    for b in range(n_blocks):
        within[b] += (powers[1:] @ carry.T).transpose(0, 2, 1)
        carry = within[b, -1]
    return within.reshape(n_blocks * block, k, n)[:length]


_HRF_SECONDS = 32.0
_BURN_SECONDS = 60.0  # OU settles and the HRF fills before the first kept TR


def source_dynamics(cfg: SynthConfig, template: Template, subject: SubjectTraits
                    ) -> tuple[int, float, np.ndarray, np.ndarray]:
    """The latent sources' VAR(1) at the sub-TR step: (steps per TR, step in s, per-source autocorrelation rho
    [N], transition matrix [N, N] with the subject's lagged coupling, rescaled to spectral radius < 1)."""
    sub = max(1, math.ceil(cfg.tr / 0.25))  # latent step <= 0.25 s, an integer fraction of the TR
    dt = cfg.tr / sub
    rho = np.exp(-dt / template.time_constants)
    lag = template.lag_coupling * (0.3 * subject.coupling * dt / template.time_constants.mean())
    trans = np.diag(rho) + lag
    radius = np.abs(np.linalg.eigvals(trans)).max()
    if radius >= 0.999:
        trans = trans * (0.999 / radius)
    return sub, dt, rho, trans


def simulate_subject(cfg: SynthConfig, template: Template, subject_index: int, subject: SubjectTraits,
                     site: SiteTraits) -> dict[str, np.ndarray]:
    """All scans of one subject as components, each float64 [K, P, T] (``latent``: [K, N, T]).

    ``data = network + local + white + pink + drift`` (already scaled by the variance shares).
    """
    k, t_len, n_net = cfg.scans_per_subject, cfg.timepoints, len(template.network_names)
    p = len(template.names)
    # Latent network sources: x[t+1] = A x[t] + C e, stable by construction (|A| < 1).
    sub, dt, rho, trans = source_dynamics(cfg, template, subject)
    burn = math.ceil(_BURN_SECONDS / cfg.tr)
    fine_len = (t_len + burn) * sub
    rng = np.random.default_rng([cfg.seed, 3, subject_index])
    chol = np.linalg.cholesky(subject.corr) * np.sqrt(1 - rho ** 2)[:, None]
    innov = rng.standard_normal((fine_len, k, n_net)) @ chol.T
    state = _run_var1(trans, innov)
    hrf_fine = double_gamma_hrf(np.arange(0, _HRF_SECONDS, dt), subject.hrf_scale)
    bold = _fft_convolve(state.transpose(1, 2, 0), hrf_fine)[..., burn * sub::sub][..., :t_len]
    latent = _standardize(bold)  # [K, N, T]
    shares = variance_shares(template, subject, site)
    network = _standardize(np.einsum("pn,knt->kpt", template.mixing, latent))
    hrf_tr = double_gamma_hrf(np.arange(0, _HRF_SECONDS, cfg.tr), subject.hrf_scale)
    local_drive = rng.standard_normal((k, p, t_len + burn))
    local = _standardize(_fft_convolve(local_drive, hrf_tr)[..., burn:])
    white = _standardize(rng.standard_normal((k, p, t_len)))
    freqs = np.fft.rfftfreq(t_len, cfg.tr)
    pink_filter = np.where(freqs > 0, 1 / np.sqrt(np.maximum(freqs, 1e-12)), 0.0)
    pink = _standardize(np.fft.irfft(np.fft.rfft(rng.standard_normal((k, p, t_len))) * pink_filter, t_len))
    # Slow drift: three lowest cosines (periods >= 2/3 of the scan), random weights per parcel.
    tt = (np.arange(t_len) + 0.5) / t_len
    basis = np.cos(np.pi * np.arange(1, 4)[:, None] * tt[None])  # [3, T]
    drift = _standardize(rng.standard_normal((k, p, 3)) @ basis)
    out = {"latent": latent}
    for name, comp in (("network", network), ("local", local), ("white", white), ("pink", pink),
                       ("drift", drift)):
        out[name] = comp * np.sqrt(shares[name])[None, :, None]
    return out
