"""The best reconstruction any model can reach on the synthetic data: the generator's own conditional mean.

Given a subject's traits, every component of a synthetic scan (:mod:`brainjax.data.synthetic_model`) is a
linear function of Gaussian noise up to its per-scan standardisation, so a window x [P, T] is (nearly) Gaussian:

    x = F u + e,   u: the network sources [N, T] (covariance over sources and time from the VAR(1) and HRF),
                   F [P, N]: parcel p's share of source n (mixing x sqrt(network variance) / its std),
                   e = local + white + 1/f + drift, independent across parcels (a [T, T] covariance each).

The mean of the hidden values given the seen ones is then the Bayes-optimal prediction under squared error.
It is computed through the N x T sources, never the (P T) x (P T) covariance:

    Λ = C_u⁻¹ + Σ_p G_pᵀ R_p⁻¹ G_p,   E[u | x_seen] = Λ⁻¹ Σ_p G_pᵀ R_p⁻¹ x_p,seen,
    E[x_p | x_seen] = F_p E[u | x_seen] + R_p,(:,seen) R_p⁻¹ (x_p,seen - G_p E[u | x_seen]),

with G_p the rows of F_p ⊗ I_T at parcel p's seen TRs and R_p its noise covariance on them. The oracle knows
what no model is told (the subject's coupling, HRF and noise level), so its R² bounds every model from above,
up to the per-scan standardisation the Gaussian form leaves out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from brainjax.data.synthetic import SyntheticCohort, load_cohort
from brainjax.data.synthetic_model import (
    _HRF_SECONDS,
    GENERATOR_VERSION,
    SiteTraits,
    SubjectTraits,
    SynthConfig,
    Template,
    double_gamma_hrf,
    source_dynamics,
    variance_shares,
)


@dataclass(frozen=True)
class WindowPrior:
    """The Gaussian law of one window of a synthetic scan (in the units of the values it will be given).

    loadings: float64 [P, N] (F); source_cov: float64 [N T, N T] (C_u, index n * T + t); noise_cov: float64
    [P, T, T] (R_p); mean: float64 [P] (the parcel's mean over the scan in these units).
    """

    loadings: np.ndarray
    source_cov: np.ndarray
    noise_cov: np.ndarray
    mean: np.ndarray


def _autocov(kernel: np.ndarray, lags: int) -> np.ndarray:
    """sum_i k_i k_(i+m) for m = 0 .. lags-1 (zero beyond the kernel)."""
    full = np.correlate(kernel, kernel, mode="full")[len(kernel) - 1:]
    out = np.zeros(lags)
    out[: min(lags, len(full))] = full[:lags]
    return out


def _centred(lag_cov: np.ndarray, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """A stationary process after subtracting its mean over the scan (as the simulator's standardisation does).

    lag_cov: [n, ...] Cov(x(t + m), x(t)) for m = 0 .. n-1 over a scan of n TRs (matrix-valued: [n, K, K];
    negative lags are the transposes). Returns the covariance of TRs ``start .. start+length-1`` of the centred
    process [length, length, ...] and its variance averaged over the scan [...] (what the sample variance
    estimates): Cov(x(t) - x̄, x(s) - x̄) = c(t - s) - m(t) - m(s)ᵀ + M with m(t) = mean_u c(t - u) and M its mean.
    """
    n = lag_cov.shape[0]
    flip = lag_cov[1:][::-1]
    if lag_cov.ndim == 3:
        flip = flip.transpose(0, 2, 1)
    full = np.concatenate([flip, lag_cov])  # c(Δ) for Δ = -(n-1) .. n-1
    running = np.concatenate([np.zeros_like(full[:1]), np.cumsum(full, 0)])
    m = (running[n:2 * n] - running[:n]) / n  # m(t) = mean over Δ = t-n+1 .. t of c(Δ), t = 0 .. n-1
    mean = m.mean(0)
    times = np.arange(start, start + length)
    window = full[times[:, None] - times[None, :] + n - 1] + mean
    window = window - m[times][:, None]
    m_t = m[times].transpose(0, 2, 1) if m.ndim == 3 else m[times]
    window = window - m_t[None, :]
    return window, lag_cov[0] - mean


def source_covariance(cfg: SynthConfig, template: Template, subject: SubjectTraits, start: int,
                      length: int) -> tuple[np.ndarray, np.ndarray]:
    """Covariance of the standardised network sources over TRs ``start .. start+length-1``: float64
    [N, T, N, T], and their correlation averaged over the scan [N, N] (what mixing them into parcels sees).

    The sources are a VAR(1) at a sub-TR step (stationary covariance Γ0 from the discrete Lyapunov equation,
    Γ(τ) = A^τ Γ0), convolved with the subject's HRF (b = h * s, so Cov(b(k + Δ), b(k)) = Σ_d H(d) Γ(Δ + d)
    with H the kernel's autocorrelation), sampled at the TR and standardised over the scan, as
    ``simulate_subject`` draws them.
    """
    n_net = len(template.network_names)
    sub, dt, rho, trans = source_dynamics(cfg, template, subject)
    scale = np.sqrt(1 - rho ** 2)
    innovation = subject.corr * np.outer(scale, scale)
    gamma0 = scipy.linalg.solve_discrete_lyapunov(trans, innovation)
    hrf = double_gamma_hrf(np.arange(0, _HRF_SECONDS, dt), subject.hrf_scale)
    taps = len(hrf)
    kernel_corr = np.correlate(hrf, hrf, mode="full")  # H(d) for d = -(taps-1) .. taps-1
    # Γ(τ) for τ = 0 .. (n-1)*sub + taps-1; negative τ are transposes
    n = cfg.timepoints
    max_tau = (n - 1) * sub + taps
    gammas = np.empty((max_tau + 1, n_net, n_net))
    gammas[0] = gamma0
    for tau in range(1, max_tau + 1):
        gammas[tau] = trans @ gammas[tau - 1]

    def gamma(tau: int) -> np.ndarray:
        return gammas[tau] if tau >= 0 else gammas[-tau].T

    d_values = np.arange(-(taps - 1), taps)
    bold = np.empty((n, n_net, n_net))  # Cov(b(k + m sub), b(k))
    for m in range(n):
        bold[m] = sum(kernel_corr[i] * gamma(m * sub + d) for i, d in enumerate(d_values) if kernel_corr[i] != 0)
    window, mean_cov = _centred(bold, start, length)
    std = np.sqrt(np.diag(mean_cov))
    scale = np.outer(std, std)
    return window.transpose(2, 0, 3, 1) / scale[:, None, :, None], mean_cov / scale


def noise_covariance(cfg: SynthConfig, shares: dict[str, np.ndarray], hrf_scale: float, start: int,
                     length: int) -> np.ndarray:
    """Covariance over TRs ``start .. start+length-1`` of the parcel-specific components: float64 [P, T, T].

    local (HRF-filtered white noise), white, 1/f (a circular filter over the whole scan) and the slow cosine
    drift (a random direction in the span of three cosines: (2/3) Σ_k b_k(t) b_k(s) after standardisation).
    """
    lags = np.abs(np.arange(length)[:, None] - np.arange(length)[None])
    hrf_tr = double_gamma_hrf(np.arange(0, _HRF_SECONDS, cfg.tr), hrf_scale)
    local, local_var = _centred(_autocov(hrf_tr, cfg.timepoints), start, length)
    local = local / local_var
    white, white_var = _centred(np.eye(cfg.timepoints)[0], start, length)
    white = white / white_var
    freqs = np.fft.rfftfreq(cfg.timepoints, cfg.tr)
    pink_filter = np.where(freqs > 0, 1 / np.sqrt(np.maximum(freqs, 1e-12)), 0.0)
    pink = np.fft.irfft(pink_filter ** 2, cfg.timepoints)
    pink = pink[lags] / pink[0]
    tt = (np.arange(start, start + length) + 0.5) / cfg.timepoints
    basis = np.cos(np.pi * np.arange(1, 4)[:, None] * tt[None])
    drift = (2.0 / 3.0) * basis.T @ basis
    return (shares["local"][:, None, None] * local + shares["white"][:, None, None] * white
            + shares["pink"][:, None, None] * pink + shares["drift"][:, None, None] * drift)


def window_prior(cfg: SynthConfig, template: Template, subject: SubjectTraits, site: SiteTraits, start: int,
                 length: int, center: np.ndarray | None = None, scale: np.ndarray | None = None) -> WindowPrior:
    """The law of TRs ``start .. start+length-1`` of one scan of ``subject`` at ``site``, in the units of
    ``(x - center) / scale`` per parcel (a dataset's normalisation; raw units when not given)."""
    if not 0 <= start and start + length <= cfg.timepoints:
        raise ValueError(f"window {start}..{start + length} is outside a scan of {cfg.timepoints} TRs")
    shares = variance_shares(template, subject, site)
    sources, corr0 = source_covariance(cfg, template, subject, start, length)
    mixed_std = np.sqrt(np.einsum("pn,nm,pm->p", template.mixing, corr0, template.mixing))
    loadings = template.mixing * (np.sqrt(shares["network"]) / mixed_std)[:, None]
    noise = noise_covariance(cfg, shares, subject.hrf_scale, start, length)
    n_parcels = len(template.names)
    center = np.zeros(n_parcels) if center is None else np.asarray(center, np.float64)
    scale = np.ones(n_parcels) if scale is None else np.asarray(scale, np.float64)
    n_net = sources.shape[0]
    return WindowPrior(loadings=loadings / scale[:, None], source_cov=sources.reshape(n_net * length, -1),
                       noise_cov=noise / (scale ** 2)[:, None, None], mean=-center / scale)


def conditional_mean(prior: WindowPrior, values: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """E[x | the seen values] under ``prior``: float64 [P, T] (seen entries are returned as given).

    values: float [P, T] (anything where not seen); seen: bool [P, T].
    """
    values = np.asarray(values, np.float64)
    seen = np.asarray(seen, bool)
    n_parcels, length = values.shape
    if seen.shape != values.shape or prior.noise_cov.shape != (n_parcels, length, length):
        raise ValueError(f"values {values.shape}, seen {seen.shape} and the prior's noise covariance "
                         f"{prior.noise_cov.shape} disagree")
    n_net = prior.loadings.shape[1]
    centred = np.where(seen, values - prior.mean[:, None], 0.0)
    weights = np.zeros((n_parcels, length, length))  # R_p⁻¹ on the seen TRs, zero-padded to [T, T]
    for p in range(n_parcels):
        s = np.flatnonzero(seen[p])
        if len(s):
            weights[p][np.ix_(s, s)] = np.linalg.inv(prior.noise_cov[p][np.ix_(s, s)])
    weighted = np.einsum("pts,ps->pt", weights, centred)  # R_p⁻¹ x_p on the seen TRs
    outer = np.einsum("pn,pm->pnm", prior.loadings, prior.loadings).reshape(n_parcels, -1)
    data_precision = (outer.T @ weights.reshape(n_parcels, -1)).reshape(n_net, n_net, length, length)
    data_precision = data_precision.transpose(0, 2, 1, 3).reshape(n_net * length, -1)
    source_precision = np.linalg.inv(prior.source_cov + 1e-9 * np.eye(len(prior.source_cov)))
    rhs = (prior.loadings.T @ weighted).reshape(-1)
    sources = scipy.linalg.solve(source_precision + data_precision, rhs, assume_a="pos").reshape(n_net, length)
    network = prior.loadings @ sources  # [P, T]
    residual = np.where(seen, centred - network, 0.0)
    local = np.einsum("pts,ps->pt", np.einsum("ptu,pus->pts", prior.noise_cov, weights), residual)
    return np.where(seen, values, prior.mean[:, None] + network + local)


def dataset_cohort(dataset) -> SyntheticCohort:
    """The cohort behind a dataset ``brainjax synth`` wrote (its atlas records the generator's configuration),
    or a ValueError naming the dataset when it was not generated or by another generator version."""
    info = dataset.atlas.extra.get("synthetic")
    if not info:
        raise ValueError(f"{dataset.path}: not a synthetic dataset (its atlas records no generator); the oracle "
                         "needs the generator's own parameters")
    if info.get("generator_version") != GENERATOR_VERSION:
        raise ValueError(f"{dataset.path}: written by synthetic generator v{info.get('generator_version')}, this "
                         f"code is v{GENERATOR_VERSION}")
    cfg = SynthConfig(**{k: v for k, v in info["config"].items()})
    return load_cohort(cfg, dataset.atlas)


def scan_prior(cohort: SyntheticCohort, dataset, row: int, start: int, length: int) -> WindowPrior:
    """The law of TRs ``start .. start+length-1`` of the dataset's scan ``row``, in the dataset's normalised
    units (``Dataset.normalize``)."""
    subject_id = dataset.manifest[row]["subject"]
    index = int(subject_id.removeprefix("sub-")) - 1
    if not 0 <= index < len(cohort.subjects) or subject_id != f"sub-{index + 1:04d}":
        raise ValueError(f"{dataset.path}: scan row {row} belongs to {subject_id!r}, not a subject of the cohort")
    subject = cohort.subjects[index]
    return window_prior(cohort.cfg, cohort.template, subject, cohort.sites[subject.site], start, length,
                        center=dataset.median, scale=dataset.scale)
