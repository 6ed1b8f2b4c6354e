"""Metrics: PSNR / SSIM per scale, the latent-density Gini coefficient and entropy, the latent's spatial power
spectrum, its channel participation and linear class separability, Fréchet distances."""
from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] model images -> [0, 1], clamped."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) PSNR in dB of [-1, 1] images, computed on [0, 1] (data range 1)."""
    return peak_signal_noise_ratio(to_unit(pred), to_unit(target), data_range=1.0, reduction="none",
                                   dim=(1, 2, 3))


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) SSIM of [-1, 1] images on [0, 1]. The Gaussian window shrinks for tiny images (torchmetrics needs the
    image to be larger than the kernel), so SSIM at 2 x 2 and 4 x 4 uses a 1 x 1 / 3 x 3 window."""
    side = pred.shape[-1]
    kernel = min(11, side - 1 if side % 2 == 0 else side)
    kernel = max(1, kernel if kernel % 2 else kernel - 1)
    sigma = 1.5 * kernel / 11
    return structural_similarity_index_measure(to_unit(pred), to_unit(target), data_range=1.0, reduction="none",
                                               kernel_size=kernel, sigma=max(sigma, 0.1))


# ------------------------------------------------------------------------------------------------------------
#                                      Latent-density Gini and entropy
# ------------------------------------------------------------------------------------------------------------
DENSITY_BINS = 24
DENSITY_RANGE = 3.0
DENSITY_SAMPLES = 2000   # latents behind every reported Gini / entropy (see latent_gini_entropy)


def latent_density(latents: torch.Tensor, bins: int = DENSITY_BINS) -> np.ndarray:
    """The estimator behind `latent_gini` / `latent_entropy`: a histogram density of latents in 2D.

    1. Flatten each latent (N, C, h, w) to a vector and standardise every dimension over the set.
    2. Project onto the set's first two principal components (deterministic, unlike t-SNE/UMAP) and divide each
       component by its standard deviation (whitening: the estimate ignores overall scale).
    3. Count points in a bins x bins grid over [-3, 3]^2 (points outside are clipped into the border bins).
    Returns the bin probabilities, (bins * bins,), summing to 1.
    """
    x = latents.double().flatten(1)
    if x.shape[0] < 3:
        raise ValueError("the latent density needs at least 3 latents")
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-8)
    # the first two principal directions by an exact eigendecomposition of the smaller Gram matrix (deterministic;
    # a sign flip mirrors the symmetric grid and changes neither Gini nor entropy)
    if x.shape[0] >= x.shape[1]:
        _, vecs = torch.linalg.eigh(x.T @ x)
        pts = x @ vecs[:, -2:].flip(1)
    else:
        vals, vecs = torch.linalg.eigh(x @ x.T)
        pts = vecs[:, -2:].flip(1) * vals[-2:].flip(0).clamp_min(0).sqrt()
    pts = (pts / pts.std(0).clamp_min(1e-8)).clamp(-DENSITY_RANGE, DENSITY_RANGE * (1 - 1e-9))
    idx = ((pts + DENSITY_RANGE) / (2 * DENSITY_RANGE) * bins).long().clamp(0, bins - 1)
    counts = torch.bincount(idx[:, 0] * bins + idx[:, 1], minlength=bins * bins).double()
    return (counts / counts.sum()).numpy()


def gini(p: np.ndarray) -> float:
    """Gini coefficient of non-negative masses: 0 = perfectly even, -> 1 = all mass in one bin."""
    p = np.sort(np.asarray(p, dtype=np.float64))
    n = p.size
    if p.sum() <= 0:
        raise ValueError("gini needs a positive total mass")
    ranks = np.arange(1, n + 1)
    return float((2 * (ranks * p).sum()) / (n * p.sum()) - (n + 1) / n)


def normalized_entropy(p: np.ndarray) -> float:
    """Shannon entropy of a distribution divided by log(number of bins): 1 = uniform, 0 = a single bin."""
    p = np.asarray(p, dtype=np.float64)
    nz = p[p > 0] / p.sum()
    return float(-(nz * np.log(nz)).sum() / np.log(p.size))


def latent_gini_entropy(latents: torch.Tensor, samples: int = DENSITY_SAMPLES) -> dict[str, float]:
    """Gini and normalised entropy of `latent_density` at a fixed sample size: a histogram's Gini grows as its
    sample shrinks (0.72 at 1,000 latents, 0.69 at 3,000, 0.675 at 10,000 for one tokenizer), so every number the
    project reports uses the same `samples` latents, evenly spaced over the set given (all of them when fewer,
    which the returned `samples` then says)."""
    n = latents.shape[0]
    if n > samples:
        latents = latents[torch.linspace(0, n - 1, samples).round().long()]
    p = latent_density(latents)
    return {"gini": gini(p), "entropy": normalized_entropy(p), "samples": int(min(n, samples))}


# ------------------------------------------------------------------------------------------------------------
#                                      The latent's spatial power spectrum
# ------------------------------------------------------------------------------------------------------------
SPECTRUM_CUTOFF = 0.25   # cycles per latent position: the upper half of the band up to Nyquist (0.5)
SPECTRUM_RINGS = 8


def latent_power(latents: torch.Tensor, per_channel: bool = False) -> torch.Tensor:
    """The (h, w) power spectrum of a set of latents (N, C, h, w), float64: every channel standardised over the set
    (mean 0, variance 1 over latents and positions, as a DiT's latent statistics do), the power of its orthonormal 2D
    DFT (by Parseval it sums to the map's energy, h * w for a standardised channel) averaged over latents and
    channels -- or, with `per_channel`, over latents only: (C, h, w). Frequencies in `torch.fft.fftfreq` order."""
    if latents.dim() != 4 or min(latents.shape[-2:]) < 2 or latents.shape[0] < 2:
        raise ValueError(f"the latent spectrum needs (N >= 2, C, h >= 2, w >= 2) latents, got {tuple(latents.shape)}")
    power = torch.fft.fft2(_standardised(latents), norm="ortho").abs().pow(2).mean(dim=0)
    return power if per_channel else power.mean(dim=0)


def radial_frequency(h: int, w: int) -> torch.Tensor:
    """(h, w) |(f_y, f_x)| in cycles per position, `torch.fft.fftfreq` order (0 to 0.5 * sqrt(2) at the corners)."""
    return torch.hypot(torch.fft.fftfreq(h, dtype=torch.float64)[:, None],
                       torch.fft.fftfreq(w, dtype=torch.float64)[None])


def latent_spectrum(latents: torch.Tensor, cutoff: float = SPECTRUM_CUTOFF, rings: int = SPECTRUM_RINGS) -> dict:
    """How much of a latent's energy sits at high spatial frequencies -- what a diffusion model on it must learn to
    denoise last and hardest (the "diffusability" account: latents with more high-frequency power train a DiT more
    slowly, Skorokhodov et al. 2025). From `latent_power` (channels standardised over the set, so the result ignores
    each channel's scale) and the radial frequency r in cycles per latent position.

    Returns {"high_frequency_fraction": energy at r > cutoff / all energy (the per-image mean, r = 0, included),
    "white_noise_fraction": the same for white noise (the share of frequencies above the cutoff), "cutoff",
    "radial_power": mean power per ring of `rings` equal-width rings over [0, max r] (white noise: 1 in every ring;
    a smooth field: falling with r), "ring_edges", "latents": how many}.
    """
    if not 0 < cutoff < 0.5:
        raise ValueError(f"cutoff must be in (0, 0.5) cycles per position, got {cutoff}")
    power = latent_power(latents)
    r = radial_frequency(*power.shape)
    edges = torch.linspace(0, float(r.max()) * (1 + 1e-9), rings + 1, dtype=torch.float64)
    ring = torch.bucketize(r, edges, right=True) - 1
    radial = [float(power[ring == i].mean()) if bool((ring == i).any()) else None for i in range(rings)]
    return {"high_frequency_fraction": float(power[r > cutoff].sum() / power.sum()),
            "white_noise_fraction": float((r > cutoff).double().mean()), "cutoff": cutoff,
            "radial_power": radial, "ring_edges": [float(e) for e in edges], "latents": int(latents.shape[0])}


SPECTRUM_MIN_SIDE = 4   # a map's spectrum is reported from 4 x 4 up: below, there are hardly any frequencies


def map_spectrum(latents: torch.Tensor | None) -> dict | None:
    """`latent_spectrum` of one stored latent map, or None where none is reported (no map, a map under
    `SPECTRUM_MIN_SIDE`, fewer than two latents): the rule the evaluation and the app's latent map share."""
    if latents is None or latents.shape[-1] < SPECTRUM_MIN_SIDE or len(latents) < 2:
        return None
    return latent_spectrum(latents)


def spectral_gain(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The gain per channel and spatial frequency, (C, h, w), that gives every channel of `source` latents (N, C, h,
    w) the power spectrum of `target` latents (N', C', h, w; averaged over their channels): sqrt(P_target /
    P_source,c), each channel standardised over its own set (`latent_power`) and its gain scaled so that the channel
    keeps its power (its variance). Positive and symmetric under f -> -f, so filtering a real map by it gives a real
    map and dividing by it undoes that exactly."""
    ps, pt = latent_power(source, per_channel=True), latent_power(target)
    if ps.shape[-2:] != pt.shape:
        raise ValueError(f"the two latents' grids differ: {tuple(source.shape[-2:])} and {tuple(target.shape[-2:])}")
    gain = (pt / ps.clamp_min(1e-12)).sqrt()
    gain = gain * (ps.sum(dim=(1, 2), keepdim=True) / (ps * gain.pow(2)).sum(dim=(1, 2), keepdim=True)).sqrt()
    return gain.float()


def _has_channels(latents: torch.Tensor) -> bool:
    """Whether (N, C, ...) latents have two channels or more and two values or more per channel."""
    return latents.dim() >= 2 and latents.shape[1] >= 2 and latents[:, 0].numel() >= 2


def channel_correlation(latents: torch.Tensor) -> torch.Tensor:
    """The (C, C) correlation matrix of a set of latents' (N, C, ...) channels over latents and positions, float64:
    how much the channels say the same thing (the identity when every channel is its own)."""
    if not _has_channels(latents):
        raise ValueError(f"channel correlations need (N, C >= 2, ...) latents with two values or more per channel, "
                         f"got {tuple(latents.shape)}")
    return torch.corrcoef(latents.detach().double().cpu().transpose(0, 1).flatten(1))


def channel_participation(latents: torch.Tensor) -> dict:
    """How many channels a latent really uses: the participation ratio (sum e)^2 / sum e^2 of the eigenvalues e of
    `channel_correlation` (C when the channels are uncorrelated, 1 when they are all one), and the share of the
    variance in the largest eigen-direction."""
    e = torch.linalg.eigvalsh(channel_correlation(latents)).clamp_min(0)
    return {"participation": float(e.sum() ** 2 / e.pow(2).sum()), "channels": len(e),
            "top_share": float(e.max() / e.sum())}


def map_channels(latents: torch.Tensor | None) -> dict | None:
    """`channel_participation` of one stored latent map, or None where there is none to report (no map, fewer than
    two values per channel, a single channel): the rule the evaluation and the app's latent map share."""
    if latents is None or not _has_channels(latents):
        return None
    return channel_participation(latents)


def channel_modes(latents: torch.Tensor, images: torch.Tensor, modes: int = 3) -> list[dict]:
    """What a latent's strongest channel modes carry: for each of the `modes` largest eigen-directions of
    `channel_correlation`, its share of the variance and the Pearson correlation, over images and positions, of the
    standardised latent's projection on it with the images' (N, 3, H, W) luminance and two opponent colours
    (red - green, blue - yellow), area-averaged to the latent grid. (An eigenvector's sign is arbitrary, so is r's.)"""
    if images.dim() != 4 or images.shape[1] != 3 or len(images) != len(latents) or latents.dim() != 4:
        raise ValueError(f"channel modes need (N, C, h, w) latents and their (N, 3, H, W) images, got "
                         f"{tuple(latents.shape)} and {tuple(images.shape)}")
    z = _standardised(latents)
    e, v = torch.linalg.eigh(channel_correlation(latents))
    p = torch.nn.functional.adaptive_avg_pool2d(images.detach().double().cpu(), latents.shape[-2:])
    signals = {"luminance": 0.299 * p[:, 0] + 0.587 * p[:, 1] + 0.114 * p[:, 2], "red_green": p[:, 0] - p[:, 1],
               "blue_yellow": p[:, 2] - (p[:, 0] + p[:, 1]) / 2}
    out = []
    for k in range(1, min(modes, len(e)) + 1):
        proj = torch.einsum("nchw,c->nhw", z, v[:, -k]).flatten()
        out.append({"share": float(e[-k] / e.sum()),
                    **{n: float(torch.corrcoef(torch.stack([proj, t.flatten()]))[0, 1]) for n, t in signals.items()}})
    return out


def _sym_power(c: torch.Tensor, power: float) -> torch.Tensor:
    e, v = torch.linalg.eigh(c)
    return (v * e.clamp_min(1e-6).pow(power)) @ v.T


def _standardised(latents: torch.Tensor) -> torch.Tensor:
    """(N, C, ...) latents, float64 on CPU, each channel to mean 0 and variance 1 over latents and positions."""
    z = latents.detach().double().cpu()
    dims = (0, *range(2, z.dim()))
    z = z - z.mean(dim=dims, keepdim=True)
    return z / z.pow(2).mean(dim=dims, keepdim=True).sqrt().clamp_min(1e-12)


def paired_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """The mean over channels of the Pearson correlation of two (N, C, ...) latents of the same images (1: the same
    latent up to each channel's scale and offset)."""
    _check_paired(a, b)
    dims = (0, *range(2, a.dim()))
    return float((_standardised(a) * _standardised(b)).mean(dim=dims).mean())


def _procrustes(ws: torch.Tensor, wt: torch.Tensor) -> torch.Tensor:
    """The orthogonal (unitary) (..., C, C) Q minimising |Q ws - wt| for paired whitened samples (..., C, P)."""
    u, _, vh = torch.linalg.svd(wt @ ws.conj().transpose(-2, -1))
    return u @ vh


def _check_paired(source: torch.Tensor, target: torch.Tensor) -> None:
    if source.shape != target.shape:
        raise ValueError(f"paired latents are the same images' latents, of one shape; got {tuple(source.shape)} and "
                         f"{tuple(target.shape)}")


def channel_mix(source: torch.Tensor, target: torch.Tensor, paired: bool = False) -> torch.Tensor:
    """A (C, C) matrix M that gives standardised `source` latents (N, C, ...) the channel correlations R_t of `target`
    latents (N', C, ...) and keeps every channel's variance (1): whitening, an orthogonal Q, colouring,
    M = R_t^(1/2) Q R_s^(-1/2) (symmetric roots). Every orthogonal Q gives R_t; which one decides *what* content
    carries the target's strong modes. Unpaired, Q = I: each channel stays as close to itself as the two
    correlations allow (what fits two normalisations of one latent). `paired` -- the two tokenizers' latents of the
    same images, in the same order -- takes Q by orthogonal Procrustes on the whitened pairs, so that the mixed source
    is as close to the target's latent of the same images as an R_t-correlated latent can be: between two tokenizers,
    whose channel numbers need not mean the same thing, the target's modes then land on the source's content that
    matches them (e.g. a strong luminance mode on the source's luminance). Invertible (`torch.linalg.solve`)."""
    rs, rt = channel_correlation(source), channel_correlation(target)
    if rs.shape != rt.shape:
        raise ValueError(f"the two latents' channel counts differ: {source.shape[1]} and {target.shape[1]}")
    q = torch.eye(len(rs), dtype=rs.dtype)
    if paired:
        _check_paired(source, target)
        flat = lambda z: _standardised(z).transpose(0, 1).flatten(1)  # noqa: E731  (C, N * positions)
        q = _procrustes(_sym_power(rs, -0.5) @ flat(source), _sym_power(rt, -0.5) @ flat(target))
    return (_sym_power(rt, 0.5) @ q @ _sym_power(rs, -0.5)).float()


def cross_spectra(latents: torch.Tensor) -> torch.Tensor:
    """All of a set of latents' (N, C, h, w) second-order statistics, for a stationary field: the (h, w, C, C)
    cross-spectral density, complex128 -- every channel standardised over the set as in `latent_power`, X(f) the
    orthonormal 2D DFT of a latent's C maps at frequency f (`torch.fft.fftfreq` order), S(f) = mean over latents of
    X(f) X(f)^H. Its diagonal is `latent_power(per_channel=True)`; its sum over f divided by h * w is the channels'
    zero-lag covariance (`channel_correlation`). Hermitian at each f, and S(-f) = conj(S(f))."""
    x = _channel_dft(latents)
    return x @ x.conj().transpose(-2, -1) / x.shape[-1]


def _channel_dft(latents: torch.Tensor) -> torch.Tensor:
    """(h, w, C, N): the orthonormal 2D DFT of every standardised channel map, frequency-major."""
    if latents.dim() != 4 or min(latents.shape[-2:]) < 2 or latents.shape[0] < 2 or latents.shape[1] < 2:
        raise ValueError(f"cross-spectra need (N >= 2, C >= 2, h >= 2, w >= 2) latents, got {tuple(latents.shape)}")
    return torch.fft.fft2(_standardised(latents), norm="ortho").permute(2, 3, 1, 0)


def _herm_power(s: torch.Tensor, power: float, floor: float = 1e-6) -> torch.Tensor:
    e, v = torch.linalg.eigh(s)
    e = e.clamp_min(floor * e.amax(dim=-1, keepdim=True).clamp_min(1e-12))  # relative floor: rank-poor frequencies
    return (v * e.pow(power).unsqueeze(-2).to(v.dtype)) @ v.conj().transpose(-2, -1)


def cross_spectral_mix(source: torch.Tensor, target: torch.Tensor, paired: bool = False) -> torch.Tensor:
    """The (h, w, C, C) complex64 matrices M(f) = S_t(f)^(1/2) Q(f) S_s(f)^(-1/2) that give standardised `source`
    latents (N, C, h, w) the `cross_spectra` of `target` latents -- every channel's power spectrum and every pair's
    cross-spectrum, so every second-order statistic (each channel's variance, 1, included) -- by whitening, a unitary
    Q(f) and colouring at each frequency (Hermitian roots). Q = I unpaired; `paired` (the same images' latents, as in
    `channel_mix`) takes Q(f) by Procrustes on the whitened pairs, so that the target's strong modes land on the
    source's matching content. Made conjugate-symmetric, M(-f) = conj(M(f)), so that a real map stays real;
    invertible at every frequency, so the information in the latent is kept."""
    xs, xt = _channel_dft(source), _channel_dft(target)
    if xs.shape[:-1] != xt.shape[:-1]:
        raise ValueError(f"the two latents' channels or grids differ: {tuple(source.shape[1:])} and "
                         f"{tuple(target.shape[1:])}")
    ss, st = xs @ xs.conj().transpose(-2, -1) / xs.shape[-1], xt @ xt.conj().transpose(-2, -1) / xt.shape[-1]
    whiten_s = _herm_power(ss, -0.5)
    q = torch.eye(ss.shape[-1], dtype=ss.dtype)
    if paired:
        _check_paired(source, target)
        q = _procrustes(whiten_s @ xs, _herm_power(st, -0.5) @ xt)
    m = _herm_power(st, 0.5) @ q @ whiten_s
    mirrored = m.flip(0, 1).roll((1, 1), dims=(0, 1)).conj()   # conj(M(-f)), in fftfreq order
    return ((m + mirrored) / 2).to(torch.complex64)


def latent_probe(latents: torch.Tensor, labels: torch.Tensor, pool: int = 4, folds: int = 5, seed: int = 0) -> dict:
    """How linearly the classes separate in a latent: a multinomial logistic-regression probe (scikit-learn, features
    standardised on each training fold) on the (N, C, H, W) latents average-pooled to `pool` x `pool`, scored by
    stratified `folds`-fold cross-validation. Returns the mean held-out accuracy, its per-fold values and the
    majority-class rate to read it against."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    y = torch.as_tensor(labels).long().cpu()
    if latents.dim() != 4 or len(latents) != len(y):
        raise ValueError(f"a probe needs (N, C, H, W) latents and N labels, got {tuple(latents.shape)} and "
                         f"{tuple(y.shape)}")
    counts = torch.bincount(y)
    counts = counts[counts > 0]
    if len(counts) < 2 or int(counts.min()) < folds:
        raise ValueError(f"a {folds}-fold probe needs two classes or more with {folds} images each or more, got "
                         f"class counts {counts.tolist()}")
    x = torch.nn.functional.adaptive_avg_pool2d(latents.detach().float().cpu(), pool).flatten(1).numpy()
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    scores = cross_val_score(probe, x, y.numpy(), cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    return {"accuracy": float(scores.mean()), "folds": [float(v) for v in scores], "pool": pool,
            "features": int(x.shape[1]), "majority": float(counts.max() / len(y))}


# ------------------------------------------------------------------------------------------------------------
#                                            Fréchet distances
# ------------------------------------------------------------------------------------------------------------
def frechet_distance_metric(feature_model: torch.nn.Module | None = None, inception_weights: str | None = None):
    """A torchmetrics `FrechetInceptionDistance` accumulator over images in [0, 1] (float).

    With `inception_weights` (torch-fidelity's pt_inception-2015-12-05 file) it is the real Inception FID.
    Otherwise `feature_model` maps [0, 1] images to (B, D) features — our CIFAR-10 classifier's penultimate
    layer — and the number is an FD in that space ("FD-cls"), never to be called FID.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    if inception_weights is not None:
        return FrechetInceptionDistance(feature=2048, normalize=True,
                                        feature_extractor_weights_path=inception_weights)
    if feature_model is None:
        raise ValueError("need either Inception weights or a feature model for a Fréchet distance")
    return FrechetInceptionDistance(feature=feature_model, normalize=True)
