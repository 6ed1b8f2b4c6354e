import pytest
import torch

from hieratok import MASK_KINDS, ScaleLayout


def brute_force_mask(scales, kind):
    level = [i for i, s in enumerate(scales) for _ in range(s * s)]
    L = len(level)
    rule = {"scale_causal": lambda a, b: b <= a, "full": lambda a, b: True,
            "scale_independent": lambda a, b: a == b}[kind]
    return torch.tensor([[rule(level[q], level[k]) for k in range(L)] for q in range(L)])


def test_default_layout_counts_and_offsets():
    layout = ScaleLayout()
    assert layout.scales == (1, 2, 4, 8, 16)
    assert layout.token_counts == (1, 4, 16, 64, 256)
    assert layout.num_tokens == 341
    assert layout.offsets == (0, 1, 5, 21, 85)
    assert layout.level_ids.tolist().count(4) == 256 and layout.level_ids[85].item() == 4
    assert layout.slice(3) == slice(21, 85)


def test_position_of_a_token_round_trips_through_split():
    layout = ScaleLayout()
    seq = torch.arange(layout.num_tokens)[None, :, None].float()     # (1, L, 1): each token holds its position
    maps = layout.split(seq)
    for i, s in enumerate(layout.scales):
        for row, col in ((0, 0), (s - 1, 0), (0, s - 1), (s // 2, s - 1)):
            assert layout.position(s, row, col) == int(maps[i].reshape(-1, s, s)[0, row, col])
    with pytest.raises(ValueError, match="outside the 4x4 map"):
        layout.position(4, 4, 0)
    with pytest.raises(ValueError, match="scale 3 is not one of"):
        layout.position(3, 0, 0)


@pytest.mark.parametrize("scales", [(1, 2, 4, 8, 16), (1, 3, 6), (2, 4)])
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_masks_follow_their_rules(scales, kind):
    mask = ScaleLayout(scales).mask(kind)
    assert mask.dtype == torch.bool
    assert torch.equal(mask, brute_force_mask(scales, kind))


def test_scale_causal_never_sees_finer_and_sees_all_coarser():
    layout = ScaleLayout()
    mask = layout.mask("scale_causal")
    for a in range(layout.num_scales):
        rows = mask[layout.slice(a)]
        for b in range(layout.num_scales):
            block = rows[:, layout.slice(b)]
            assert block.all() if b <= a else not block.any()


def test_split_and_flatten_round_trip():
    layout = ScaleLayout((1, 2, 4))
    maps = [torch.randn(2, 3, s, s) for s in layout.scales]
    seq = layout.flatten(maps)
    assert seq.shape == (2, 21, 3)
    for m, chunk in zip(maps, layout.split(seq)):
        assert torch.equal(chunk.transpose(1, 2).reshape(m.shape), m)


@pytest.mark.parametrize("bad", [(), (2, 1), (1, 1), (0, 4)])
def test_invalid_scales_are_rejected(bad):
    with pytest.raises(ValueError):
        ScaleLayout(bad)


def test_unknown_mask_and_prefix_errors():
    layout = ScaleLayout()
    with pytest.raises(ValueError, match="unknown attention mask"):
        layout.mask("causal")
    with pytest.raises(ValueError):
        layout.prefix(6)
    assert layout.prefix(2).scales == (1, 2)
