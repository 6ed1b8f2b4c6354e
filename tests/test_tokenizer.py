import pytest
import torch

from hieratok import VARIANTS, HieraTok, interpolate, tokenizer_config

SMALL = dict(enc_dim=32, enc_depth=1, enc_heads=2, dec_dim=48, dec_depth=2, dec_heads=3)


def small_model(**kw):
    return HieraTok(tokenizer_config("cifar10", **{**SMALL, **kw})).eval()


def images(b=2, size=32):
    return torch.rand(b, 3, size, size) * 2 - 1


def test_shapes_per_scale():
    model = small_model()
    z = model.encode(images())
    assert z.shape == (2, 4, 16, 16)
    out = model.decode(z)
    assert out.scales == (1, 2, 4, 8, 16)
    assert [tuple(im.shape) for im in out.images] == [(2, 3, 2 * s, 2 * s) for s in out.scales]
    assert torch.equal(out.reconstruction, out.images[-1])


def perturb_finer(model, z, level):
    maps = model.latent_pyramid(z)
    return maps, [m if i <= level else m + torch.randn_like(m) for i, m in enumerate(maps)]


@pytest.mark.parametrize("return_attention", [False, True])
def test_scale_causal_prefix_is_unaffected_by_finer_tokens(return_attention):
    model = small_model()
    z = model.encode(images())
    for level in range(4):
        maps, changed = perturb_finer(model, z, level)
        a = model.decode_maps(maps, return_attention).images
        b = model.decode_maps(changed, return_attention).images
        for i in range(level + 1):
            assert torch.equal(a[i], b[i]), f"scale {i} changed when scales > {level} changed"
        assert not torch.allclose(a[level + 1], b[level + 1])


def test_full_attention_lets_finer_tokens_change_coarse_outputs():
    model = small_model(attention="full")
    z = model.encode(images())
    maps, changed = perturb_finer(model, z, 0)
    a, b = model.decode_maps(maps).images, model.decode_maps(changed).images
    assert not torch.allclose(a[0], b[0])


def test_scale_independent_outputs_depend_only_on_own_scale():
    model = small_model(attention="scale_independent")
    maps = model.latent_pyramid(model.encode(images()))
    changed = [m + torch.randn_like(m) if i != 2 else m for i, m in enumerate(maps)]
    assert torch.equal(model.decode_maps(maps).images[2], model.decode_maps(changed).images[2])


def test_prefix_decode_matches_full_decode():
    model = small_model()
    z = model.encode(images())
    full = model.decode(z).images
    for n in range(1, 5):
        prefix = model.decode(z, num_scales=n)
        assert prefix.scales == (1, 2, 4, 8, 16)[:n]
        for a, b in zip(prefix.images, full):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_manual_attention_path_matches_sdpa_and_returns_valid_maps():
    model = small_model()
    z = model.encode(images())
    fast = model.decode(z)
    manual = model.decode(z, return_attention=True)
    for a, b in zip(fast.images, manual.images):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    mask = model.layout.mask("scale_causal")
    assert len(manual.attentions) == 2
    for attn in manual.attentions:
        assert attn.shape == (2, 3, 341, 341)
        assert (attn[..., ~mask] == 0).all()
        torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3, 341))


def test_conv_downsampler_starts_as_area_interpolation_and_is_learnable():
    conv = small_model()
    interp = small_model(downsample="interp")
    z = torch.randn(2, 4, 16, 16)
    for a, b in zip(conv.latent_pyramid(z), interp.latent_pyramid(z)):
        torch.testing.assert_close(a, b)
    assert sum(p.numel() for p in conv.downsampler.parameters()) > 0
    assert interp.downsampler.steps is None


def test_posterior_sample_vs_mean_and_kl():
    model = small_model()
    post = model.posterior(images())
    g = torch.Generator().manual_seed(1)
    s = post.sample(g)
    assert s.shape == post.mean.shape and not torch.equal(s, post.mean)
    assert (post.kl() >= 0).all() and post.kl().shape == (2,)


def test_wrong_image_shape_is_a_clear_error():
    model = small_model()
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, 32, 32\)"):
        model.encode(torch.zeros(1, 3, 64, 64))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_forward_backward(variant):
    cfg = tokenizer_config("cifar10", variant, **SMALL)
    model = HieraTok(cfg).train()
    out, post = model(images())
    n_scales = len(cfg.scales)
    assert len(out.images) == n_scales and out.images[-1].shape == (2, 3, 32, 32)
    loss = sum(im.square().mean() for im in out.images) + post.kl().mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_imagenet256_preset_forward_backward_at_reduced_depth():
    cfg = tokenizer_config("imagenet256", enc_depth=1, dec_depth=1)
    assert (cfg.image_size, cfg.patch_size, cfg.enc_dim, cfg.dec_dim) == (256, 16, 768, 1024)
    model = HieraTok(cfg).train()
    out, post = model(torch.rand(1, 3, 256, 256) * 2 - 1)
    assert [im.shape[-1] for im in out.images] == [16, 32, 64, 128, 256]
    (out.reconstruction.mean() + post.kl().mean()).backward()
    assert model.decoder.head.weight.grad is not None


def test_singlescale_baseline_has_256_tokens_and_no_downsampler():
    model = small_model(scales=(16,))
    assert model.downsampler is None and model.layout.num_tokens == 256
    assert len(model.decode(model.encode(images())).images) == 1


def test_interpolation_endpoints_and_norms():
    z0, z1 = torch.randn(4, 16, 16), torch.randn(4, 16, 16)
    for method in ("linear", "spherical"):
        path = interpolate(z0, z1, 5, method)
        assert path.shape == (5, 4, 16, 16)
        torch.testing.assert_close(path[0], z0)
        torch.testing.assert_close(path[-1], z1)
    mid_lin = interpolate(z0, z1, 3, "linear")[1].norm()
    mid_sph = interpolate(z0, z1, 3, "spherical")[1].norm()
    assert mid_sph > mid_lin  # slerp keeps the midpoint at a typical norm
    torch.testing.assert_close(mid_sph, (z0.norm() + z1.norm()) / 2)
    with pytest.raises(ValueError):
        interpolate(z0, z1[:2], 3)


def test_a_spectral_gain_gives_the_normalised_latent_another_spectrum_and_is_undone_exactly(tmp_path):
    from hieratok.latent import channel_stats
    from hieratok.metrics import latent_power, latent_spectrum, spectral_gain
    cfg = tokenizer_config("cifar10", enc_dim=32, enc_depth=1, enc_heads=2, dec_dim=32, dec_depth=1, dec_heads=2)
    tok = HieraTok(cfg)
    g = torch.Generator().manual_seed(0)
    c, s = cfg.latent_channels, cfg.grid_size
    z = torch.randn(300, c, s, s, generator=g)                      # white channels ...
    z[:, 1] = z[:, 1].cumsum(-1)                                    # ... but one smooth along x
    z = z * torch.rand(c, 1, 1, generator=g) * 3 + torch.randn(c, 1, 1, generator=g)
    smooth = torch.randn(300, 8, s, s, generator=g).cumsum(-1).cumsum(-2)   # the target: another channel count
    mean, std, n = channel_stats([z])
    tok.set_latent_stats(mean.float(), std.float(), count=n)
    shaped = tok.with_spectral_gain(spectral_gain(z, smooth))
    assert shaped.config.latent_spectral_gain and not tok.config.latent_spectral_gain
    assert torch.equal(shaped.latent_mean, tok.latent_mean) and torch.equal(shaped.latent_std, tok.latent_std)
    n = shaped.normalize_latent(z)
    assert n.dtype == z.dtype and n.shape == z.shape
    # every channel of the normalised latents now has the target's spectrum, and keeps its mean and variance ...
    target = latent_power(smooth)
    for channel_power in latent_power(n, per_channel=True):
        assert torch.allclose(channel_power, target, rtol=1e-3, atol=1e-6)
    assert torch.allclose(n.var(dim=(0, 2, 3)), tok.normalize_latent(z).var(dim=(0, 2, 3)), rtol=1e-3)
    assert n.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert latent_spectrum(n)["high_frequency_fraction"] == pytest.approx(
        latent_spectrum(smooth)["high_frequency_fraction"], abs=1e-4)
    assert latent_spectrum(tok.normalize_latent(z))["high_frequency_fraction"] > 0.5   # mostly white before
    # ... and decoding sees exactly the latent the encoder made
    assert torch.allclose(shaped.denormalize_latent(n), z, atol=1e-4)
    # it travels with the checkpoint, and it is part of how the latent is normalised
    shaped.save_pretrained(tmp_path / "shaped")
    back = HieraTok.from_pretrained(tmp_path / "shaped")
    assert torch.equal(back.latent_gain, shaped.latent_gain) and torch.allclose(back.normalize_latent(z), n)
    assert tok.latent_differences(shaped) == ["latent statistics"] and shaped.latent_differences(back) == []
    assert not hasattr(tok, "latent_gain") and "latent_gain" not in tok.state_dict()   # none without the option
    # one (h, w) gain serves every channel
    assert torch.equal(tok.with_spectral_gain(torch.full((s, s), 2.0)).latent_gain, torch.full((c, s, s), 2.0))
    for bad in (torch.ones(s, s + 1), torch.zeros(s, s), torch.full((c, s, s), float("nan")), torch.ones(c + 1, s, s)):
        with pytest.raises(ValueError, match="spectral gain"):
            tok.with_spectral_gain(bad)


def test_a_channel_mix_gives_the_normalised_latent_another_channel_correlation_and_is_undone_exactly(tmp_path):
    from hieratok.latent import channel_stats
    from hieratok.metrics import channel_correlation, channel_mix, channel_participation, spectral_gain
    cfg = tokenizer_config("cifar10", enc_dim=32, enc_depth=1, enc_heads=2, dec_dim=32, dec_depth=1, dec_heads=2)
    tok = HieraTok(cfg)
    g = torch.Generator().manual_seed(0)
    c, s = cfg.latent_channels, cfg.grid_size
    z = torch.randn(300, c, s, s, generator=g) * torch.rand(c, 1, 1, generator=g) * 3   # independent channels
    shared = torch.randn(300, 1, s, s, generator=g)
    target = torch.randn(300, c, s, s, generator=g) + 2 * shared * torch.rand(c, 1, 1, generator=g)  # one common mode
    mean, std, n = channel_stats([z])
    tok.set_latent_stats(mean.float(), std.float(), count=n)
    assert channel_participation(z)["participation"] > 0.9 * c > channel_participation(target)["participation"]
    mixed = tok.with_channel_mix(channel_mix(z, target))
    assert mixed.config.latent_channel_mix and not tok.config.latent_channel_mix
    n = mixed.normalize_latent(z)
    assert n.dtype == z.dtype and n.shape == z.shape
    # the normalised channels now correlate as the target's do, each keeping unit variance ...
    assert torch.allclose(channel_correlation(n), channel_correlation(target), atol=1e-3)
    assert torch.allclose(n.var(dim=(0, 2, 3)), torch.ones(c), rtol=1e-2)
    assert channel_participation(n)["participation"] == pytest.approx(
        channel_participation(target)["participation"], rel=1e-3)
    # ... the decoder sees exactly the latent the encoder made, and the mix travels with the checkpoint
    assert torch.allclose(mixed.denormalize_latent(n), z, atol=1e-4)
    mixed.save_pretrained(tmp_path / "mixed")
    back = HieraTok.from_pretrained(tmp_path / "mixed")
    assert torch.equal(back.latent_mix, mixed.latent_mix) and torch.allclose(back.normalize_latent(z), n)
    assert tok.latent_differences(mixed) == ["latent statistics"] and mixed.latent_differences(back) == []
    assert "latent_mix" not in tok.state_dict()   # none without the option
    # with a spectral gain as well: mixed first, filtered second, and both undone
    both = mixed.with_spectral_gain(spectral_gain(n, target.cumsum(-1)))
    assert both.config.latent_channel_mix and torch.equal(both.latent_mix, mixed.latent_mix)
    assert torch.allclose(both.denormalize_latent(both.normalize_latent(z)), z, atol=1e-3)
    for bad in (torch.ones(c, c + 1), torch.ones(c, c), torch.zeros(c, c), torch.full((c, c), float("nan"))):
        with pytest.raises(ValueError, match="channel mix"):
            tok.with_channel_mix(bad)


def test_channel_participation_counts_independent_channels_and_refuses_what_has_none():
    from hieratok.metrics import channel_correlation, channel_participation, map_channels
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 4, 8, 8, generator=g)
    p = channel_participation(z)
    assert p["channels"] == 4 and 3.8 < p["participation"] <= 4 and p["top_share"] < 0.35
    one = channel_participation(z[:, :1].expand(-1, 4, -1, -1) * torch.tensor([1.0, 2, -1, 3]).view(1, 4, 1, 1))
    assert one["participation"] == pytest.approx(1, abs=1e-6) and one["top_share"] == pytest.approx(1, abs=1e-6)
    assert map_channels(z) == p
    for bad in (torch.randn(5, 1, 4, 4), torch.randn(1, 4, 1, 1), torch.randn(3)):
        assert map_channels(bad) is None
        with pytest.raises(ValueError, match="channel correlations need"):
            channel_correlation(bad)
    assert map_channels(None) is None


def test_the_linear_probe_finds_separable_classes_and_not_shuffled_ones():
    from hieratok.metrics import latent_probe
    g = torch.Generator().manual_seed(0)
    y = torch.arange(120) % 3
    z = torch.randn(120, 4, 8, 8, generator=g) + 3 * torch.nn.functional.one_hot(y, 4).float()[:, :, None, None]
    p = latent_probe(z, y)
    assert p["accuracy"] > 0.95 and len(p["folds"]) == 5 and p["features"] == 4 * 16
    assert p["majority"] == pytest.approx(1 / 3)
    shuffled = latent_probe(torch.randn(120, 4, 8, 8, generator=g), y)
    assert shuffled["accuracy"] < 0.6
    with pytest.raises(ValueError, match="5 images each"):
        latent_probe(z[:12], y[:12])
    with pytest.raises(ValueError, match="N labels"):
        latent_probe(z, y[:-1])


def test_a_covariance_mix_gives_the_latent_all_of_anothers_second_order_statistics_and_is_undone_exactly(tmp_path):
    from hieratok.latent import channel_stats
    from hieratok.metrics import (channel_correlation, cross_spectra, cross_spectral_mix, latent_power,
                                  latent_spectrum)
    cfg = tokenizer_config("cifar10", enc_dim=32, enc_depth=1, enc_heads=2, dec_dim=32, dec_depth=1, dec_heads=2)
    tok = HieraTok(cfg)
    g = torch.Generator().manual_seed(0)
    c, s = cfg.latent_channels, cfg.grid_size
    z = torch.randn(300, c, s, s, generator=g) * (1 + torch.rand(c, 1, 1, generator=g))      # white, independent
    base = torch.randn(300, c, s, s, generator=g).cumsum(-1).cumsum(-2)                     # smooth ...
    target = base + base.roll(1, dims=1) + 0.5 * base.roll(1, dims=-1).roll(2, dims=1)      # ... and cross-lagged
    mean, std, n = channel_stats([z])
    tok.set_latent_stats(mean.float(), std.float(), count=n)
    m = cross_spectral_mix(z, target)
    assert m.shape == (s, s, c, c) and m.dtype == torch.complex64
    mixed = tok.with_covariance_mix(m)
    assert mixed.config.latent_covariance_mix and not tok.config.latent_covariance_mix
    out = mixed.normalize_latent(z)
    assert out.dtype == z.dtype and out.shape == z.shape
    # every second-order statistic is now the target's: each channel's spectrum, the zero-lag correlations, the
    # cross-spectra (relative to their size), and the variance stays 1
    want = cross_spectra(target)
    assert (cross_spectra(out) - want).abs().max() < 1e-3 * want.abs().max()
    assert torch.allclose(latent_power(out, per_channel=True), latent_power(target, per_channel=True), rtol=1e-3,
                          atol=1e-3)
    assert torch.allclose(channel_correlation(out), channel_correlation(target), atol=1e-3)
    assert torch.allclose(out.var(dim=(0, 2, 3)), torch.ones(c), rtol=2e-2)
    assert latent_spectrum(out)["high_frequency_fraction"] < 0.5 * latent_spectrum(z)["high_frequency_fraction"]
    # ... exactly undone before decoding, and carried by the checkpoint
    assert torch.allclose(mixed.denormalize_latent(out), z, atol=1e-3)
    mixed.save_pretrained(tmp_path / "xmixed")
    back = HieraTok.from_pretrained(tmp_path / "xmixed")
    assert torch.equal(back.latent_xmix, mixed.latent_xmix) and torch.allclose(back.normalize_latent(z), out)
    assert tok.latent_differences(mixed) == ["latent statistics"] and "latent_xmix" not in tok.state_dict()
    for bad in (torch.ones(s, s, c, c + 1), torch.zeros(s, s, c, c), m * 1j,
                torch.full((s, s, c, c), float("nan"))):
        with pytest.raises(ValueError, match="covariance mix"):
            tok.with_covariance_mix(bad)


def test_paired_mixes_put_the_targets_modes_on_the_sources_matching_content():
    """Two tokenizers' channel numbers need not mean the same thing: given the same images' latents, the paired mixes
    align content (a source whose channels are the target's, shuffled and rescaled, is mapped back onto the target),
    where the unpaired ones only match the statistics."""
    from hieratok.metrics import (channel_correlation, channel_mix, cross_spectra, cross_spectral_mix)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(400, 4, 8, 8, generator=g).cumsum(-1)
    target = base + 2 * base[:, :1]                                   # one strong shared mode
    perm, scale = torch.tensor([2, 0, 3, 1]), torch.tensor([0.5, -2.0, 3.0, 1.0]).view(1, 4, 1, 1)
    source = target[:, perm] * scale + 0.01 * torch.randn(400, 4, 8, 8, generator=g)
    std = lambda z: (z - z.mean((0, 2, 3), keepdim=True)) / z.std((0, 2, 3), keepdim=True, unbiased=False)  # noqa
    s, t = std(source), std(target)
    for paired, close in ((True, True), (False, False)):
        m = channel_mix(source, target, paired=paired)
        mixed = torch.einsum("dc,nchw->ndhw", m, s)
        assert torch.allclose(channel_correlation(mixed), channel_correlation(target), atol=1e-3)
        assert bool((mixed - t).abs().mean() < 0.05) == close
        x = cross_spectral_mix(source, target, paired=paired)
        xm = torch.fft.ifft2((x @ torch.fft.fft2(s).movedim(1, -1)[..., None])[..., 0].movedim(-1, 1)).real
        want = cross_spectra(target)
        assert (cross_spectra(xm) - want).abs().max() < 1e-3 * want.abs().max()
        assert bool((xm - t).abs().mean() < 0.05) == close
    with pytest.raises(ValueError, match="same images"):
        channel_mix(source[:10], target, paired=True)


def test_channel_modes_name_a_luminance_mode_where_a_latent_has_one():
    from hieratok.metrics import channel_modes
    g = torch.Generator().manual_seed(0)
    images = torch.rand(50, 3, 16, 16, generator=g) * 2 - 1
    lum = torch.nn.functional.avg_pool2d(0.299 * images[:, :1] + 0.587 * images[:, 1:2] + 0.114 * images[:, 2:], 2)
    z = 0.1 * torch.randn(50, 6, 8, 8, generator=g) + lum * torch.tensor([1.0, -1, 1, 1, 0, 0]).view(1, 6, 1, 1)
    modes = channel_modes(z, images)
    assert modes[0]["share"] > 0.5 and abs(modes[0]["luminance"]) > 0.95 and abs(modes[1]["luminance"]) < 0.2
    with pytest.raises(ValueError, match="channel modes need"):
        channel_modes(z, images[:10])
