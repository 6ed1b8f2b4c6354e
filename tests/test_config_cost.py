import pytest

from hieratok import HieraTokConfig, tokenizer_config
from hieratok.cost import cost_of, format_report


def test_cost_of_cifar10_counts_tokens_and_flops():
    hiera, single = cost_of(tokenizer_config("cifar10")), cost_of(tokenizer_config("cifar10", "singlescale"))
    assert (hiera.decoder_tokens, single.decoder_tokens) == (341, 256)
    assert hiera.gflops > single.gflops > 0
    # the decoder's FLOPs grow at least with its token count (attention makes it a bit more)
    assert hiera.decoder_gflops / single.decoder_gflops >= 341 / 256 - 1e-3
    assert hiera.params > single.params  # the downsampler


def test_flop_matched_singlescale_is_within_five_percent():
    base = tokenizer_config("cifar10")
    matched = tokenizer_config("cifar10", "singlescale-flopmatched")
    assert matched.scales == (16,)
    assert matched.dec_depth > base.dec_depth or matched.dec_dim > base.dec_dim
    assert abs(cost_of(matched).gflops / cost_of(base).gflops - 1) <= 0.05


def test_config_validation_errors():
    with pytest.raises(ValueError, match="finest scale"):
        HieraTokConfig(scales=(1, 2, 8))
    with pytest.raises(ValueError, match="divide"):
        HieraTokConfig(scales=(3, 16))
    with pytest.raises(ValueError, match="attention"):
        HieraTokConfig(attention="causal")
    with pytest.raises(ValueError, match="variant"):
        tokenizer_config("cifar10", "bogus")
    with pytest.raises(ValueError, match="preset"):
        tokenizer_config("mnist")


def test_config_dict_round_trip():
    cfg = tokenizer_config("cifar10", "interp")
    assert HieraTokConfig.from_dict(cfg.to_dict()) == cfg


def test_report_mentions_paper_table():
    text = format_report(["cifar10"])
    assert "singlescale-flopmatched" in text and "341" in text


def test_dit_and_classifier_flops_match_a_hand_count():
    from hieratok.classifier import ClassifierConfig
    from hieratok.config import DiTConfig
    from hieratok.cost import classifier_gflops, dit_gflops
    cfg = DiTConfig(latent_channels=4, latent_size=16, patch_size=2, dim=256, depth=6, heads=4)
    n, d = 64, 256  # tokens, width
    # per block: q/k/v/out projections, scores and weighted sum, the 4x MLP, the adaLN modulation (once per image)
    block = 2 * n * 4 * d * d + 2 * 2 * n * n * d + 2 * n * 2 * d * 4 * d + 2 * d * 6 * d
    blocks = cfg.depth * block / 1e9
    g = dit_gflops(cfg)
    assert blocks < g < 1.02 * blocks  # the rest: patch embedding, timestep MLP, final layer
    assert dit_gflops(cfg.replace(depth=12)) == pytest.approx(2 * g - (g - blocks), rel=1e-6)
    small, large = (classifier_gflops(ClassifierConfig(image_size=size)) for size in (32, 64))
    assert large == pytest.approx(4 * small, rel=0.02)  # a convolutional net: FLOPs grow with the pixels
