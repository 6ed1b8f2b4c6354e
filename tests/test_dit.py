import pytest
import torch

from hieratok import DiT, dit_config
from hieratok.layers import Attention

TINY = dict(dim=64, depth=2, heads=2)


def test_forward_shape_and_cfg_at_one_equals_conditional():
    dit = DiT(dit_config("cifar10", **TINY)).eval()
    for p in dit.parameters():  # leave adaLN-Zero's zero start so the outputs are not all zero
        torch.nn.init.normal_(p, std=0.05)
    x, t, y = torch.randn(3, 4, 16, 16), torch.rand(3), torch.tensor([0, 5, 9])
    v = dit(x, t, y)
    assert v.shape == x.shape
    assert torch.equal(dit.forward_cfg(x, t, y, 1.0), v)
    v_null = dit(x, t, torch.full_like(y, dit.null_class))
    torch.testing.assert_close(dit.forward_cfg(x, t, y, 3.0), v_null + 3.0 * (v - v_null), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(v, v_null)


@pytest.mark.parametrize("recipe", [{}, {"qk_norm": True, "mlp": "swiglu"}])
def test_flow_matching_loss_decreases_on_tiny_latent_set(recipe):
    torch.manual_seed(0)
    cfg = dit_config("cifar10", latent_size=8, patch_size=2, class_dropout=0.1, **TINY, **recipe)
    dit = DiT(cfg).train()
    # two classes, each a fixed latent pattern plus a little noise
    protos = torch.randn(2, 4, 8, 8)
    labels = torch.arange(64) % 2
    data = protos[labels] + 0.1 * torch.randn(64, 4, 8, 8)
    opt = torch.optim.AdamW(dit.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)

    def eval_loss():
        dit.eval()
        with torch.no_grad():
            val = sum(dit.loss(data, labels, torch.Generator().manual_seed(s)) for s in range(4)) / 4
        dit.train()
        return val.item()

    start = eval_loss()
    for _ in range(300):
        loss = dit.loss(data, labels, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = eval_loss()
    assert end < 0.5 * start, (start, end)


def test_sampler_shape_determinism_and_progress():
    dit = DiT(dit_config("cifar10", **TINY)).eval()
    for p in dit.parameters():
        torch.nn.init.normal_(p, std=0.05)
    calls = []
    labels = torch.tensor([1, 2])
    for sampler in ("euler", "heun"):
        a = dit.sample(labels, steps=4, guidance=2.0, sampler=sampler, generator=torch.Generator().manual_seed(7),
                       progress=lambda i, n: calls.append((i, n)))
        b = dit.sample(labels, steps=4, guidance=2.0, sampler=sampler, generator=torch.Generator().manual_seed(7))
        c = dit.sample(labels, steps=4, guidance=2.0, sampler=sampler, generator=torch.Generator().manual_seed(8))
        assert a.shape == (2, 4, 16, 16)
        assert torch.equal(a, b) and not torch.equal(a, c)
    assert calls == [(i, 4) for i in range(1, 5)] * 2


def test_bad_sampler_arguments_are_clear_errors():
    import pytest
    dit = DiT(dit_config("cifar10", **TINY))
    with pytest.raises(ValueError, match="sampler"):
        dit.sample(torch.tensor([0]), sampler="ddim")
    with pytest.raises(ValueError, match="class indices"):
        dit.sample(torch.tensor([11]))


def test_guidance_interval_guides_only_the_evaluations_inside_it():
    dit = DiT(dit_config("cifar10", **TINY)).eval()
    for p in dit.parameters():
        torch.nn.init.normal_(p, std=0.05)
    labels = torch.tensor([1, 2, 3])

    def run(**kw):
        return dit.sample(labels, steps=4, guidance=3.0, generator=torch.Generator().manual_seed(7), **kw)
    full = run()
    assert torch.equal(run(guidance_interval=(0.0, 1.0)), full)  # every evaluation guided: the default
    # Heun on 4 steps evaluates at t = 0, .25, .5, .75 (and .25 .. .75 again as the corrector); none lies in
    # [.8, 1]: the plain conditional flow, exactly
    plain = dit.sample(labels, steps=4, guidance=1.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(run(guidance_interval=(0.8, 1.0)), plain)
    part = run(guidance_interval=(0.2, 0.6))
    assert not torch.equal(part, full) and not torch.equal(part, plain)

    seen = []  # which evaluations were guided: the doubled (conditional + null) batch
    forward = dit.forward
    dit.forward = lambda x, t, y: (seen.append((round(t[0].item(), 2), len(x) == 2 * len(labels))), forward(x, t, y))[1]
    run(guidance_interval=(0.2, 0.6))
    dit.forward = forward
    assert seen == [(0.0, False), (0.25, True), (0.25, True), (0.5, True), (0.5, True), (0.75, False), (0.75, False)]
    for bad in ((0.5, 0.5), (-0.1, 0.5), (0.2, 1.5), (0.3,), "early"):
        with pytest.raises(ValueError, match="guidance_interval"):
            run(guidance_interval=bad)


def test_bf16_sampling_runs_the_network_in_bf16_and_stays_close_to_fp32(monkeypatch):
    """precision='bf16': every velocity evaluation under bf16 autocast (the state stays fp32); samples close to
    fp32's; 'auto' follows the hardware (native_bf16); an unknown precision is a clear error."""
    from hieratok import perf
    dit = DiT(dit_config("cifar10", **TINY)).eval()
    for p in dit.parameters():
        torch.nn.init.normal_(p, std=0.05)
    labels = torch.tensor([1, 2, 3])

    def run(precision):
        return dit.sample(labels, steps=4, guidance=3.0, generator=torch.Generator().manual_seed(7),
                          precision=precision)
    seen = []
    forward = dit.forward
    dit.forward = lambda x, t, y: (seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu")
                                               else None), forward(x, t, y))[1]
    fp32, bf16 = run("fp32"), run("bf16")
    dit.forward = forward
    assert seen == [None] * 7 + [torch.bfloat16] * 7  # Heun, 4 steps: 7 evaluations each
    assert fp32.dtype == bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    assert not torch.equal(fp32, bf16)
    assert ((bf16 - fp32).norm() / fp32.norm()).item() < 0.05
    for native, want in ((False, fp32), (True, bf16)):
        monkeypatch.setattr(perf, "native_bf16", lambda device=None, native=native: (native, "test"))
        assert torch.equal(run("auto"), want)
    with pytest.raises(ValueError, match="precision must be one of"):
        run("fp16")


def test_recipe_options_keep_the_size_round_trip_and_bound_the_logits(tmp_path):
    base = DiT(dit_config("imagenette128"))
    new = DiT(dit_config("imagenette128", qk_norm=True, mlp="swiglu")).eval()
    n_base, n_new = (sum(p.numel() for p in m.parameters()) for m in (base, new))
    assert abs(n_new / n_base - 1) < 0.02, (n_base, n_new)  # SwiGLU at 2/3 width: about the same size
    for p in new.parameters():
        torch.nn.init.normal_(p, std=0.05)
    new.save_pretrained(tmp_path / "dit")
    loaded = DiT.from_pretrained(tmp_path / "dit")
    assert loaded.config == new.config and loaded.config.mlp == "swiglu"
    x, t, y = torch.randn(2, 16, 16, 16), torch.rand(2), torch.tensor([1, 2])
    assert torch.equal(new(x, t, y), loaded(x, t, y))
    # qk-norm: the queries and keys each head compares have unit RMS, whatever the input's scale
    attn = Attention(64, 2, qk_norm=True)
    seen = {}
    attn.q_norm.register_forward_hook(lambda m, i, o: seen.setdefault("q", o))
    attn(100 * torch.randn(2, 5, 64))
    torch.testing.assert_close(seen["q"].pow(2).mean(-1), torch.ones(2, 2, 5), rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="mlp"):
        dit_config("cifar10", mlp="relu")
