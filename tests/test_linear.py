"""The linear reference codec (patch PCA) and the tokenizer's linear shortcut initialised from it."""
import pytest
import torch
import torch.nn.functional as F

from hieratok import HieraTok, tokenizer_config
from hieratok.linear import PatchPCA, patchify, unpatchify
from hieratok.metrics import psnr


def smooth_images(n=6, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    return F.avg_pool2d(x, 5, 1, 2)  # correlated neighbours, like photographs


def test_patchify_round_trip_and_order():
    x = torch.randn(2, 3, 16, 16)
    v = patchify(x, 4)
    assert v.shape == (2, 16, 48)
    assert torch.equal(unpatchify(v, 4), x)
    # (row, column, channel) order inside a patch: the first three entries are pixel (0, 0)'s RGB
    assert torch.equal(v[0, 0, :3], x[0, :, 0, 0])


def test_pca_is_exact_with_every_component_and_improves_with_more():
    x = smooth_images()
    full = PatchPCA.fit([x], 2, 12)
    assert torch.allclose(full.reconstruct(x), x, atol=1e-4)
    scores = [psnr(PatchPCA.fit([x], 2, c).reconstruct(x), x).mean().item() for c in (1, 2, 4, 8)]
    assert scores == sorted(scores) and scores[-1] > scores[0] + 5
    # whitened: unit variance per coefficient over the fitting patches
    z = PatchPCA.fit([x], 2, 4).encode(x)
    assert torch.allclose(z.transpose(0, 1).flatten(1).var(1, correction=0), torch.ones(4), atol=1e-3)


def test_pca_fit_is_deterministic_and_saves_without_pickle(tmp_path):
    x = smooth_images()
    a, b = PatchPCA.fit([x[:3], x[3:]], 2, 4), PatchPCA.fit([x], 2, 4)  # batching does not matter
    assert torch.allclose(a.components, b.components, atol=1e-5)
    a.save(tmp_path / "codec.safetensors")
    c = PatchPCA.load(tmp_path / "codec.safetensors")
    assert c.patch_size == 2 and torch.equal(c.components, a.components)
    with pytest.raises(ValueError, match="cannot keep 13 components"):
        PatchPCA.fit([x], 2, 13)


def test_shortcut_model_starts_as_the_codec_and_stays_scale_causal():
    cfg = tokenizer_config("cifar10", linear_shortcut=True, enc_dim=32, enc_heads=2, dec_dim=48, dec_heads=3)
    model = HieraTok(cfg).eval()
    x = smooth_images()
    codec = PatchPCA.fit([x], cfg.patch_size, cfg.latent_channels)
    model.init_linear(codec)
    with torch.no_grad():
        assert torch.allclose(model.encode(x), codec.encode(x), atol=1e-5)
        assert torch.allclose(model.reconstruct(x), codec.reconstruct(x), atol=1e-5)
        z = model.encode(x)
        full, prefix = model.decode(z), model.decode(z, num_scales=3)
    for a, b in zip(prefix.images, full.images):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="needs patch 2 and 4"):
        model.init_linear(PatchPCA.fit([x], 2, 3))
    with pytest.raises(ValueError, match="no linear shortcut"):
        HieraTok(tokenizer_config("cifar10")).init_linear(codec)


def test_shortcut_model_learns_beyond_the_codec():
    """A few steps of training from the codec improve on it (the transformers learn the residual)."""
    torch.manual_seed(0)
    cfg = tokenizer_config("cifar10", linear_shortcut=True, latent_channels=2, enc_dim=32, enc_heads=2,
                           dec_dim=48, dec_heads=3, enc_depth=1, dec_depth=1, scales=(16,))
    model = HieraTok(cfg)
    x = smooth_images(8)
    model.init_linear(PatchPCA.fit([x], 2, 2))
    with torch.no_grad():
        before = F.mse_loss(model.reconstruct(x), x).item()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(60):
        out, _ = model(x, sample=False)
        loss = F.mse_loss(out.reconstruction, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = F.mse_loss(model.reconstruct(x), x).item()
    assert after < 0.8 * before


def test_latent_gini_is_deterministic_and_defined_at_a_fixed_sample_size():
    from hieratok.metrics import latent_gini_entropy
    z = torch.randn(3000, 4, 4, 4) * torch.linspace(0.5, 2, 4)[None, :, None, None]
    torch.manual_seed(1)
    a = latent_gini_entropy(z)
    torch.manual_seed(2)  # the global RNG does not enter (torch.pca_lowrank did)
    b = latent_gini_entropy(z)
    assert a == b and a["samples"] == 2000
    assert latent_gini_entropy(z[:500])["samples"] == 500
    # wide latents (fewer samples than dimensions) take the Gram-matrix path: the same histogram as projecting on
    # the top two right singular vectors
    import numpy as np

    from hieratok.metrics import DENSITY_BINS, DENSITY_RANGE, latent_density
    wide = z[:40].flatten(1)[:, :60].double()
    x = (wide - wide.mean(0)) / wide.std(0)
    pts = x @ torch.linalg.svd(x, full_matrices=False).Vh[:2].T
    pts = (pts / pts.std(0)).clamp(-DENSITY_RANGE, DENSITY_RANGE * (1 - 1e-9))
    idx = ((pts + DENSITY_RANGE) / (2 * DENSITY_RANGE) * DENSITY_BINS).long()
    hist = torch.zeros(DENSITY_BINS, DENSITY_BINS, dtype=torch.float64)
    for i, j in idx.tolist():
        hist[i, j] += 1
    ours = latent_density(wide.reshape(40, 60, 1, 1)).reshape(DENSITY_BINS, DENSITY_BINS)
    flips = [hist, hist.flip(0), hist.flip(1), hist.flip(0).flip(1)]  # PCA signs are arbitrary
    assert any(np.allclose(ours, (h / h.sum()).numpy()) for h in flips)


def test_latent_spectrum_measures_where_a_latents_energy_sits():
    from hieratok.metrics import latent_spectrum
    g = torch.Generator().manual_seed(0)
    # white noise: the share above the cutoff is the share of frequencies above it, and every ring has power 1
    white = latent_spectrum(torch.randn(400, 4, 16, 16, generator=g))
    f = [k / 16 for k in range(-8, 8)]  # the DFT's frequencies, cycles per position
    assert white["white_noise_fraction"] == sum((a * a + b * b) ** 0.5 > 0.25 for a in f for b in f) / 256
    assert white["high_frequency_fraction"] == pytest.approx(white["white_noise_fraction"], abs=0.01)
    assert all(p == pytest.approx(1.0, abs=0.05) for p in white["radial_power"])
    # a field at the lowest frequency has no energy above the cutoff; one at Nyquist (a checkerboard) all of it
    i = torch.arange(16.0)
    amp = torch.randn(100, 4, 1, 1, generator=g)
    smooth = latent_spectrum(torch.cos(2 * torch.pi * i / 16)[:, None].expand(16, 16) * amp)
    checker = latent_spectrum(((i[:, None] + i[None]) % 2 * 2 - 1) * amp)
    assert smooth["high_frequency_fraction"] < 1e-9 and checker["high_frequency_fraction"] == pytest.approx(1.0)
    assert smooth["radial_power"][0] > 1 and max(smooth["radial_power"][2:]) < 1e-9
    # each channel is standardised over the set: a channel's scale and offset change nothing
    z = torch.randn(50, 3, 8, 8, generator=g).cumsum(-1)  # smoother along x than white
    scaled = z * torch.tensor([1.0, 100.0, 0.01])[:, None, None] + 7
    a, b = latent_spectrum(z), latent_spectrum(scaled)
    assert a["high_frequency_fraction"] == pytest.approx(b["high_frequency_fraction"], rel=1e-5)  # float32 input
    assert a["high_frequency_fraction"] < a["white_noise_fraction"]
    for bad in (torch.randn(10, 4, 1, 1), torch.randn(1, 4, 8, 8), torch.randn(10, 16)):
        with pytest.raises(ValueError, match="latent spectrum needs"):
            latent_spectrum(bad)
    with pytest.raises(ValueError, match="cutoff"):
        latent_spectrum(z, cutoff=0.5)
