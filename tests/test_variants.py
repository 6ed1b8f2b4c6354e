"""The variants that test why multi-scale supervision costs the finest scale (stop-gradient, loss balance, per-scale
heads): each builds, learns, round-trips and keeps the prefix property; the stop-gradient provably stops."""
import pytest
import torch

from hieratok import HieraTok, tokenizer_config
from hieratok.losses import ReconstructionLoss
from hieratok.tokenizer import ProjectedFork, project_conflict

SMALL = dict(enc_dim=32, enc_depth=1, enc_heads=2, dec_dim=48, dec_depth=2, dec_heads=3)
NEW = ["stopgrad-coarse", "mss-total1", "scale-heads", "stopgrad-finest-weighted", "finest-weighted",
       "stopgrad-shared", "stopgrad-shared-refiner", "projected-shared", "stopgrad-shared-context",
       "shared-context-enc0.3"]


def images(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, 32, 32, generator=g) * 2 - 1


@pytest.mark.parametrize("variant", NEW)
def test_variant_learns_round_trips_and_keeps_the_prefix_property(variant, tmp_path):
    cfg = tokenizer_config("cifar10", variant, **SMALL)
    model = HieraTok(cfg).train()
    loss_fn = ReconstructionLoss(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = images()
    losses = []
    for step in range(40):
        out, post = model(x, generator=torch.Generator().manual_seed(step))
        loss = loss_fn(x, out, post).total
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])

    model.eval().save_pretrained(tmp_path / variant)
    loaded = HieraTok.from_pretrained(tmp_path / variant)
    assert loaded.config == cfg
    with torch.no_grad():
        for a, b in zip(model.decode(model.encode(x)).images, loaded.decode(loaded.encode(x)).images):
            assert torch.equal(a, b)
        maps = model.latent_pyramid(model.encode(x))
        changed = [m if i <= 1 else m + torch.randn_like(m) for i, m in enumerate(maps)]
        a, b = model.decode_maps(maps).images, model.decode_maps(changed).images
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def encoder_grad_norm(model) -> float:
    return sum(p.grad.abs().sum().item() for p in model.encoder.parameters() if p.grad is not None)


def test_stopgrad_sends_no_coarse_loss_gradient_to_the_encoder():
    cfg = tokenizer_config("cifar10", "stopgrad-coarse", **SMALL)
    model = HieraTok(cfg).train()
    x = images()
    out, _ = model(x, sample=False)
    coarse_loss = sum(im.square().mean() for im in out.images[:-1])
    coarse_loss.backward()
    assert encoder_grad_norm(model) == 0.0
    assert sum(p.grad.abs().sum() for p in model.downsampler.parameters() if p.grad is not None) > 0
    assert model.decoder.proj_in.weight.grad.abs().sum() > 0  # the decoder still learns the coarse images

    model.zero_grad()
    out, _ = model(x, sample=False)
    out.reconstruction.square().mean().backward()  # the finest loss still trains the encoder
    assert encoder_grad_norm(model) > 0

    # the forward values are the method's: the same images as without the stop-gradient
    plain = HieraTok(cfg.replace(coarse_grad_to_encoder=True))
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        for a, b in zip(model(x, sample=False)[0].images, plain(x, sample=False)[0].images):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant,shortcut", [("stopgrad-shared", False), ("stopgrad-shared", True),
                                              ("stopgrad-shared-refiner", True),
                                              ("stopgrad-shared-context", True)])
def test_stopgrad_shared_trains_only_the_coarse_scales_own_parts_with_the_coarse_losses(variant, shortcut):
    cfg = tokenizer_config("cifar10", variant, linear_shortcut=shortcut, **SMALL)
    model = HieraTok(cfg).train()
    with torch.no_grad():  # (the shortcut starts the output heads at zero, which would stop every gradient there)
        for head in model.output_heads():
            head.weight.normal_(std=0.02)
    x = images()
    out, _ = model(x, sample=False)
    sum(im.square().mean() for im in out.images[:-1]).backward()
    grads = {n: (p.grad.abs().sum().item() if p.grad is not None else 0.0) for n, p in model.named_parameters()}
    own = [n for n in grads if n.startswith(("downsampler.", "decoder.scale_heads.", "decoder.refiner."))
           or (n.startswith("decoder.shortcut.") and not n.startswith(f"decoder.shortcut.{len(cfg.scales) - 1}."))]
    shared = [n for n in grads if n.startswith("decoder.") and n not in own]
    assert shared and all(grads[n] == 0.0 for n in shared), [n for n in shared if grads[n]]
    assert all(grads[n] == 0.0 for n in grads if n.startswith("encoder."))
    heads = [n for n in own if n.startswith("decoder.scale_heads.") and n.split(".")[3] == "1"]  # their Linears
    assert heads and all(grads[n] > 0 for n in heads), heads
    if cfg.coarse_refiner_depth:
        assert sum(grads[n] for n in own if n.startswith("decoder.refiner.")) > 0
    # (the first layers of the downsampler's zero-initialised MLPs get none at initialisation)
    assert sum(grads[n] for n in own if n.startswith("downsampler.")) > 0

    model.zero_grad()
    out, _ = model(x, sample=False)
    out.reconstruction.square().mean().backward()  # the finest loss trains the encoder and the shared decoder
    assert encoder_grad_norm(model) > 0
    assert model.decoder.head.weight.grad.abs().sum() > 0

    plain = HieraTok(cfg.replace(coarse_grad_to_encoder=True, coarse_grad_to_decoder=True))
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():  # the same images as with every gradient route open
        for a, b in zip(model(x, sample=False)[0].images, plain(x, sample=False)[0].images):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_projection_removes_only_the_component_that_opposes_the_reference_per_sample():
    g = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref[:3] = -g[:3] + 0.1 * ref[:3]  # three conflicting samples ...
    ref[3:] = g[3:] + 0.1 * ref[3:]   # ... and three that agree
    out = project_conflict(g, ref)
    dots = (out * ref).flatten(1).sum(1)
    torch.testing.assert_close(dots[:3], torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    assert torch.equal(out[3:], g[3:])
    assert ((g[:3] * ref[:3]).flatten(1).sum(1) < 0).all()
    # what is left is g's part orthogonal to ref
    torch.testing.assert_close(out[0], g[0] - (g[0] * ref[0]).sum() / ref[0].square().sum() * ref[0])

    z = torch.randn(6, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    fine, coarse = ProjectedFork.apply(z)
    assert torch.equal(fine, z) and torch.equal(coarse, z)
    ((fine * ref).sum() + (coarse * g).sum()).backward()  # d/dfine = ref, d/dcoarse = g
    torch.testing.assert_close(z.grad, ref + project_conflict(g, ref))


@pytest.mark.parametrize("variant,shortcut", [("stopgrad-shared", True), ("stopgrad-shared-context", True),
                                              ("stopgrad-shared-refiner", False)])
def test_a_frozen_decode_is_the_detached_weights_decode(variant, shortcut):
    """The decoder's `frozen` decode (the weights read as constants inside its own forward, which FSDP2 keeps)
    against the reference route, the whole decoder called with detached shared weights: the same images, the same
    gradients into the maps and into every parameter, none into a shared one."""
    cfg = tokenizer_config("cifar10", variant, **SMALL, linear_shortcut=shortcut)
    model = HieraTok(cfg).train()
    with torch.no_grad():
        for p in model.parameters():  # zero-initialised heads would hide a gradient that should not be there
            p.add_(0.02 * torch.randn_like(p))
    z = torch.randn(2, cfg.latent_channels, 16, 16)
    grads = []
    for route in ("frozen", "reference"):
        model.zero_grad()
        zz = z.clone().requires_grad_(True)
        maps = model.latent_pyramid(zz)[:-1]
        if route == "frozen":
            images, _ = model.decoder(maps, frozen=True)
        else:
            images, _ = torch.func.functional_call(model.decoder, model.decoder.shared_parameters(detach=True),
                                                   (maps,))
        sum((im * torch.linspace(-1, 1, im.shape[-1])).square().mean() for im in images).backward()
        grads.append(({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, zz.grad,
                      [im.detach() for im in images]))
    (g_f, z_f, im_f), (g_r, z_r, im_r) = grads
    for a, b in zip(im_f, im_r):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(z_f, z_r)
    assert g_f.keys() == g_r.keys() and g_f
    for n in g_f:
        torch.testing.assert_close(g_f[n], g_r[n])
    shared = {f"decoder.{n}" for n in model.decoder.shared_parameters()}
    assert not shared & g_f.keys()
    assert any(n.startswith("downsampler.") for n in g_f)  # the coarse maps' own makers learn


def test_projected_shared_sends_the_encoder_only_non_conflicting_coarse_gradient():
    cfg = tokenizer_config("cifar10", "projected-shared", **SMALL)
    model = HieraTok(cfg).train()
    x = images()
    out, _ = model(x, sample=False)
    sum(im.square().mean() for im in out.images[:-1]).backward()  # the coarse losses alone
    grads = {n: (p.grad.abs().sum().item() if p.grad is not None else 0.0) for n, p in model.named_parameters()}
    assert encoder_grad_norm(model) > 0  # (with no finest loss nothing is projected away)
    shared = [n for n in grads if n.startswith(("decoder.blocks.", "decoder.proj_in.", "decoder.head."))]
    assert shared and all(grads[n] == 0.0 for n in shared)

    # both losses: the gradient reaching the latent is the finest one plus the projected coarse one
    seen = {}
    z0 = model.encode(x).detach()
    for route in ("fine", "coarse", "both"):
        z = z0.clone().requires_grad_(True)
        fine, coarse = ProjectedFork.apply(z) if route == "both" else (z, z.detach()) if route == "fine" else (
            z.detach(), z)
        maps_f, maps_c = model.latent_pyramid(fine), model.latent_pyramid(coarse)[:-1]
        images_c, _ = torch.func.functional_call(model.decoder, model.decoder.shared_parameters(detach=True),
                                                 (maps_c,))
        loss = model.decode_maps(maps_f).reconstruction.square().mean() * (route != "coarse")
        loss = loss + sum(im.square().mean() for im in images_c) * (route != "fine")
        loss.backward()
        seen[route] = z.grad
    g_f, g_c = seen["fine"], seen["coarse"]
    torch.testing.assert_close(seen["both"], g_f + project_conflict(g_c, g_f))
    assert ((seen["both"] * g_f).flatten(1).sum(1) >= (g_f * g_f).flatten(1).sum(1) * (1 - 1e-5)).all()
    # ... and the model's own forward routes it so: its encoder gradient is that latent gradient pulled back
    model.zero_grad()
    out, _ = model(x, sample=False)
    (out.reconstruction.square().mean() + sum(im.square().mean() for im in out.images[:-1])).backward()
    got = [p.grad.clone() for p in model.encoder.parameters()]
    model.zero_grad()
    model.encode(x).backward(seen["both"])
    for a, b in zip(got, [p.grad for p in model.encoder.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)

    plain = HieraTok(cfg.replace(coarse_grad_projection=False, coarse_grad_to_decoder=True))
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():  # the same images as with every gradient route open
        for a, b in zip(model(x, sample=False)[0].images, plain(x, sample=False)[0].images):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="coarse_grad_to_encoder"):
        cfg.replace(coarse_grad_to_encoder=False)


def test_scaled_coarse_gradient_reaches_the_encoder_scaled_and_changes_nothing_else():
    cfg = tokenizer_config("cifar10", "shared-context-enc0.3", **SMALL)
    assert cfg.loss.coarse_encoder_grad_scale == 0.3 and not cfg.loss.coarse_grad_to_decoder
    full = cfg.replace(coarse_encoder_grad_scale=1.0)
    model, plain = HieraTok(cfg).train(), HieraTok(full).train()
    with torch.no_grad():
        for head in model.output_heads():
            head.weight.normal_(std=0.02)
    plain.load_state_dict(model.state_dict())
    x = images()

    def grads(m, which):
        m.zero_grad()
        out, _ = m(x, sample=False)
        coarse = sum(im.square().mean() for im in out.images[:-1])
        (coarse if which == "coarse" else out.reconstruction.square().mean()).backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    scaled, unscaled = grads(model, "coarse"), grads(plain, "coarse")
    assert scaled.keys() == unscaled.keys()
    enc = [n for n in scaled if n.startswith("encoder.")]
    assert enc and any(unscaled[n].abs().sum() > 0 for n in enc)
    for n in scaled:  # the encoder's share is scaled, the downsampler's and heads' are not
        torch.testing.assert_close(scaled[n], unscaled[n] * (0.3 if n in enc else 1.0), rtol=1e-4, atol=1e-8)
    scaled, unscaled = grads(model, "finest"), grads(plain, "finest")
    assert scaled.keys() == unscaled.keys()
    for n in scaled:  # the finest loss's gradient is the method's everywhere
        torch.testing.assert_close(scaled[n], unscaled[n], rtol=1e-5, atol=1e-8)
    with torch.no_grad():
        for a, b in zip(model(x, sample=False)[0].images, plain(x, sample=False)[0].images):
            assert torch.equal(a, b)

    for bad in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match="coarse_encoder_grad_scale"):
            cfg.replace(coarse_encoder_grad_scale=bad)
    with pytest.raises(ValueError, match="needs coarse_grad_to_encoder=True"):
        cfg.replace(coarse_grad_to_encoder=False)


def test_context_downsampler_starts_as_the_local_pool_and_then_sees_neighbours():
    cfg = tokenizer_config("cifar10", "stopgrad-shared-context", **SMALL)
    model, plain = HieraTok(cfg).eval(), HieraTok(cfg.replace(downsample_context=0)).eval()
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".context." in k for k in missing)
    z = torch.randn(2, cfg.latent_channels, 16, 16)
    with torch.no_grad():
        for a, b in zip(model.latent_pyramid(z), plain.latent_pyramid(z)):
            torch.testing.assert_close(a, b)  # the context blocks start as the identity
        for p in model.downsampler.parameters():
            p.add_(0.1 * torch.randn_like(p))
        far = z.clone()
        far[:, :, 0, 3] += 1.0  # outside the 2 x 2 patch of the 8 x 8 map's first token
        for m, sees in ((model, True), (plain, False)):
            changed = not torch.equal(m.latent_pyramid(z)[3][:, :, 0, 0], m.latent_pyramid(far)[3][:, :, 0, 0])
            assert changed == sees
    with pytest.raises(ValueError, match="downsample_context"):
        cfg.replace(downsample="interp")


@torch.no_grad()
def test_a_single_scale_tokenizer_starts_a_multi_scale_one():
    source = HieraTok(tokenizer_config("cifar10", "singlescale", linear_shortcut=True, **SMALL)).eval()
    for p in source.parameters():
        p.add_(0.05 * torch.randn_like(p))
    # with each scale attending only to itself, the finest image is then exactly the source's reconstruction
    cfg = tokenizer_config("cifar10", "stopgrad-shared-context", linear_shortcut=True, attention="scale_independent",
                           **SMALL)
    model = HieraTok(cfg).eval()
    fresh = model.load_single_scale(source)
    assert fresh and all(n.startswith(("downsampler.", "decoder.scale_heads.", "decoder.shortcut.")) for n in fresh)
    assert f"decoder.shortcut.{len(cfg.scales) - 1}.weight" not in fresh  # the finest shortcut is the source's
    x = images()
    torch.testing.assert_close(model.encode(x), source.encode(x))
    torch.testing.assert_close(model.reconstruct(x), source.reconstruct(x), rtol=1e-5, atol=1e-5)
    assert not model.has_latent_stats

    with pytest.raises(ValueError, match="dec_dim"):
        HieraTok(tokenizer_config("cifar10", "stopgrad-shared", **{**SMALL, "dec_dim": 96})).load_single_scale(source)
    with pytest.raises(ValueError, match="single-scale"):
        model.load_single_scale(model)


def test_the_plain_method_does_send_coarse_loss_gradient_to_the_encoder():
    model = HieraTok(tokenizer_config("cifar10", "hieratok", **SMALL)).train()
    out, _ = model(images(), sample=False)
    sum(im.square().mean() for im in out.images[:-1]).backward()
    assert encoder_grad_norm(model) > 0


def test_loss_balance_variants_weigh_the_pixels_as_single_scale_does():
    weights = ReconstructionLoss(tokenizer_config("cifar10", "mss-total1")).scale_weights
    assert len(weights) == 5 and abs(sum(weights) - 1.0) < 1e-9 and len(set(weights)) == 1
    weights = ReconstructionLoss(tokenizer_config("cifar10", "stopgrad-finest-weighted")).scale_weights
    assert weights == (0.125, 0.125, 0.125, 0.125, 0.5)
    assert sum(ReconstructionLoss(tokenizer_config("cifar10", "singlescale")).scale_weights) == 1.0
    assert sum(ReconstructionLoss(tokenizer_config("cifar10", "hieratok")).scale_weights) == 5.0


def test_scale_heads_give_each_coarse_scale_its_own_output_layer():
    model = HieraTok(tokenizer_config("cifar10", "scale-heads", **SMALL)).train()
    assert len(model.decoder.scale_heads) == 4 and len(model.output_heads()) == 5
    out, _ = model(images(), sample=False)
    out.images[1].square().mean().backward()  # the 2x2 image's loss reaches its head and not the finest head
    assert model.decoder.scale_heads[1][-1].weight.grad.abs().sum() > 0
    assert model.decoder.head.weight.grad is None
    # with the linear shortcut (photo preset) every output head starts at zero
    photo = HieraTok(tokenizer_config("imagenette128", "scale-heads", enc_depth=1, dec_depth=1))
    assert all(h.weight.abs().sum() == 0 for h in photo.output_heads())


def test_gradient_cosines_see_the_stop_gradient():
    from train.grad_cosine import cosines
    x = images()
    plain = cosines(HieraTok(tokenizer_config("cifar10", "hieratok", **SMALL)).train(), x)
    stopped = cosines(HieraTok(tokenizer_config("cifar10", "stopgrad-coarse", **SMALL)).train(), x)
    assert set(plain) == {"encoder", "downsampler", "decoder"}
    assert -1.0 <= plain["encoder"]["cosine"] <= 1.0 and plain["encoder"]["coarse_norm"] > 0
    assert stopped["encoder"]["coarse_norm"] == 0.0 and stopped["encoder"]["cosine"] is None
    assert stopped["decoder"]["coarse_norm"] > 0 and stopped["encoder"]["finest_norm"] > 0


def test_every_experiment_arm_is_a_registered_variant_that_builds():
    from train.study import ARMS
    for arm in ARMS:
        cfg = tokenizer_config("cifar10", arm, **SMALL)
        assert HieraTok(cfg).config is cfg


def test_loss_config_is_separate_and_old_flat_configs_still_load(tmp_path):
    import json

    from hieratok.config import LOSS_FIELDS, HieraTokConfig, LossConfig
    cfg = tokenizer_config("cifar10", "finest-weighted", kl_weight=1e-5, **SMALL)
    assert isinstance(cfg.loss, LossConfig) and cfg.loss.kl_weight == 1e-5 and cfg.loss.scale_loss_weights[-1] == 0.5
    assert not set(LOSS_FIELDS) & {f for f in cfg.to_dict() if f != "loss"}   # no loss field beside the architecture
    expected = {**cfg.loss.to_dict(), "lpips_weight": 0.0, "scale_loss_weights": cfg.loss.scale_loss_weights}
    assert cfg.replace(lpips_weight=0.0).loss == cfg.loss.__class__(**expected)
    # a config.json written before the split: loss fields at the top level
    flat = {k: v for k, v in cfg.to_dict().items() if k != "loss"} | cfg.loss.to_dict()
    assert HieraTokConfig.from_dict(json.loads(json.dumps(flat))) == cfg
    HieraTok(cfg).save_pretrained(tmp_path / "new")
    assert HieraTok.from_pretrained(tmp_path / "new").config == cfg
    with pytest.raises(ValueError, match="one weight per scale"):
        cfg.replace(scale_loss_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="does not know the keys"):
        HieraTokConfig.from_dict({**flat, "dec_width": 3})


@pytest.mark.parametrize("variant", ["stopgrad-shared-context", "hieratok"])
def test_coarse_only_forward_is_the_full_forward_with_the_finest_weighted_zero(variant):
    """`forward(coarse_only=True)` (stage 1 --train coarse) decodes the finest image without a graph, or with
    `finest=False` not at all: the same images, and the coarse parts get the same loss and gradient as from the full
    forward with the finest loss weighted 0."""
    cfg = tokenizer_config("cifar10", variant, **SMALL)
    model = HieraTok(cfg).train()
    own = model.coarse_parameters()
    model.requires_grad_(False)
    for p in own.values():
        p.requires_grad_(True)
    x = images()
    loss_fn = ReconstructionLoss(cfg, coarse_only=True)
    grads, outs, totals, logs = [], [], [], []
    for coarse_only, finest in ((False, True), (True, True), (True, False)):
        model.zero_grad()
        out, post = model(x, generator=torch.Generator().manual_seed(0), coarse_only=coarse_only, finest=finest)
        terms = loss_fn(x, out, post)
        terms.total.backward()
        grads.append({n: p.grad.clone() for n, p in own.items() if p.grad is not None})
        outs.append(out)
        totals.append(terms.total.detach())
        logs.append(terms.logs)
    assert outs[0].reconstruction.requires_grad and not outs[1].reconstruction.requires_grad
    assert tuple(outs[2].scales) == tuple(cfg.scales[:-1]) and len(outs[2].images) == len(cfg.scales) - 1
    assert "l1_16" in logs[1] and "l1_16" not in logs[2] and logs[1]["l1_8"] == pytest.approx(logs[2]["l1_8"])
    for other in (1, 2):
        for a, b in zip(outs[0].images, outs[other].images):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(totals[0], totals[other], rtol=1e-5, atol=1e-7)
        assert grads[0].keys() == grads[other].keys() and any(g.abs().sum() > 0 for g in grads[other].values())
        for n in grads[0]:
            torch.testing.assert_close(grads[0][n], grads[other][n], rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="was built for scales"):   # only the coarse-only loss takes a prefix
        ReconstructionLoss(cfg)(x, outs[2], None)
    assert ReconstructionLoss(cfg, coarse_only=True).scale_weights[-1] == 0.0
    with pytest.raises(ValueError, match="multi-scale"):
        ReconstructionLoss(tokenizer_config("cifar10", "singlescale", **SMALL), coarse_only=True)
