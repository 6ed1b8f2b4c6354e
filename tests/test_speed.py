"""The fast training path (hieratok.perf, the explicit attention): the same numbers as the reference path, the
same prefix property, and a compiled step that runs."""
import pytest
import torch
import torch.nn.functional as F

from hieratok import HieraTok, tokenizer_config
from hieratok.layers import Attention, _ExplicitAttention, explicit_attention, resolve_attention, set_attention_impl
from hieratok.perf import compile_available, tune_allocator
from hieratok.scales import MASK_KINDS, ScaleLayout

SMALL = dict(enc_dim=32, enc_depth=1, enc_heads=2, dec_dim=48, dec_depth=2, dec_heads=3)


def qkv(layout, dtype, heads=2, dim=8, batch=2):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(batch, heads, layout.num_tokens, dim, generator=g).to(dtype).requires_grad_()
            for _ in range(3)]


@pytest.mark.parametrize("scales", [(1, 2, 4, 8, 16), (1, 2), (4,), (2, 4, 8)])
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_attention_blocks_are_exactly_the_mask(scales, kind):
    layout = ScaleLayout(scales)
    mask = layout.mask(kind)
    covered = torch.zeros_like(mask)
    for q0, q1, k0, k1, masked in layout.attention_blocks(kind):
        assert not covered[q0:q1].any(), "query rows belong to one block"
        if not masked:
            assert mask[q0:q1, k0:k1].all(), "an unmasked block must be all True in the mask"
        covered[q0:q1, k0:k1] = mask[q0:q1, k0:k1]
    assert torch.equal(covered, mask)


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.bfloat16, 2e-2)])
def test_explicit_attention_matches_sdpa_in_value_and_gradient(kind, dtype, tol):
    layout = ScaleLayout((1, 2, 4, 8))
    mask = layout.mask(kind)
    q, k, v = qkv(layout, dtype)
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad.float())
    out = explicit_attention(q, k, v, mask, layout.attention_blocks(kind))
    grads = torch.autograd.grad(out, (q, k, v), grad)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol * 5)


def test_explicit_attention_backward_passes_gradcheck():
    g = torch.Generator().manual_seed(0)
    q, k, v = [torch.randn(1, 2, 5, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    bias = torch.zeros(5, 5, dtype=torch.float64).masked_fill(~ScaleLayout((1, 2)).mask(), float("-inf"))
    assert torch.autograd.gradcheck(lambda a, b, c: _ExplicitAttention.apply(a, b, c, bias), (q, k, v))


def test_auto_picks_the_explicit_path_only_for_bf16_training_on_cpu():
    x = torch.randn(2, 3, 8, requires_grad=True)
    assert resolve_attention("auto", x) == "sdpa"                      # fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert resolve_attention("auto", x) == "math"                  # bf16 training
        with torch.no_grad():
            assert resolve_attention("auto", x) == "sdpa"              # inference
        assert resolve_attention("auto", x, head_dim=24) == "sdpa"     # a head size the compiler got wrong
    assert resolve_attention("sdpa", x.bfloat16()) == "sdpa"           # an explicit choice is kept
    with pytest.raises(ValueError, match="one of"):
        set_attention_impl(Attention(8, 2), "flash")


def test_the_prefix_property_holds_exactly_on_the_fast_path():
    model = HieraTok(tokenizer_config("cifar10", **SMALL)).train()
    set_attention_impl(model, "math")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = model.latent_pyramid(model.encode(x))
        for level in range(4):
            changed = [m if i <= level else m + torch.randn_like(m) for i, m in enumerate(maps)]
            a, b = model.decode_maps(maps).images, model.decode_maps(changed).images
            for i in range(level + 1):
                assert torch.equal(a[i], b[i]), f"scale {i} changed when scales > {level} changed"
            assert not torch.equal(a[level + 1], b[level + 1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_training_step_on_the_explicit_path_matches_sdpa(dtype):
    """Same weights, same batch: the loss and every parameter gradient agree between the two paths."""
    from hieratok.losses import ReconstructionLoss
    torch.manual_seed(0)
    ref = HieraTok(tokenizer_config("cifar10", **SMALL)).train()
    fast = HieraTok(ref.config)
    fast.load_state_dict(ref.state_dict())
    set_attention_impl(ref, "sdpa")
    set_attention_impl(fast, "math")
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    loss_fn = ReconstructionLoss(ref.config)
    losses = []
    for model in (ref, fast):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out, post = model(x, generator=torch.Generator().manual_seed(3))
            loss = loss_fn(x, out, post).total
        loss.backward()
        losses.append(loss.item())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert abs(losses[0] - losses[1]) <= tol * abs(losses[0])
    for (name, a), b in zip(ref.named_parameters(), fast.parameters()):
        scale = a.grad.abs().max().item() + 1e-12
        assert (a.grad - b.grad).abs().max().item() <= (1e-4 if dtype == torch.float32 else 0.1) * scale, name


def test_allocator_tuning_is_idempotent_and_says_what_it_did():
    note = tune_allocator()
    assert note == tune_allocator() and ("glibc" in note or "left as is" in note)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_classifier_computes_the_same_on_channels_last_activations(dtype):
    """The fast path's channels-last convolutions: the same features and weight gradients as NCHW, within rounding."""
    from hieratok.classifier import Classifier, ClassifierConfig
    torch.manual_seed(0)
    model = Classifier(ClassifierConfig(image_size=32, width=8, stem_stride=2))
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    y = torch.tensor([0, 1, 2, 3])
    outs, grads = [], []
    for fast in (False, True):
        model.channels_last = fast
        model.zero_grad()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype == torch.bfloat16):
            logits = model(x)
        F.cross_entropy(logits.float(), y).backward()
        outs.append(logits.float().detach())
        grads.append(model.features[0][0].weight.grad.clone())
        assert grads[-1].is_contiguous()  # the weights (and so checkpoints) keep their layout
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(outs[1], outs[0], **tol)
    torch.testing.assert_close(grads[1], grads[0], **tol)


def test_bf16_is_not_native_where_onednn_is_held_below_it(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 takes oneDNN's bf16 GEMM away (under 1 GFLOP/s measured): `auto` must not pick bf16."""
    from hieratok import perf
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    perf._cpu_bf16.cache_clear()
    try:
        native, why = perf.native_bf16("cpu")
        assert not native and ("ONEDNN_MAX_CPU_ISA=AVX2" in why or "without" in why)
        assert perf.inference_dtype("auto", "cpu") is None
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
        perf._cpu_bf16.cache_clear()
        assert "unused" not in perf.native_bf16("cpu")[1]
    finally:
        perf._cpu_bf16.cache_clear()


def test_benchmark_precision_auto_follows_the_hardware(monkeypatch):
    """`--precision auto` (the default) measures what the trainers' `--mixed-precision auto` would train in: fp32
    where bf16 is not native (here: oneDNN held to AVX2), so an AVX2-only CPU is not timed in emulated bf16."""
    from hieratok import perf
    from train import benchmark
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    perf._cpu_bf16.cache_clear()
    try:
        assert benchmark.resolve_precision("auto") == ("fp32", " (auto)")
        assert benchmark.resolve_precision("bf16") == ("bf16", "")
        assert benchmark.resolve_precision("fp32") == ("fp32", "")
    finally:
        perf._cpu_bf16.cache_clear()


def test_benchmark_prints_achieved_flops_against_the_gemm(capsys, monkeypatch):
    from train import benchmark
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")  # the workers run with AVX2 kernels, and the header says so
    benchmark.main(["--preset", "cifar10", "--models", "tokenizer:hieratok:enc_dim=32,enc_depth=1,enc_heads=2,"
                    "dec_dim=48,dec_depth=1,dec_heads=3", "dit:dim=64,depth=1,heads=2", "classifier:width=8",
                    "--paths", "reference", "fast", "--batch-size", "4", "--dit-batch-size", "4",
                    "--classifier-batch-size", "4", "--warmup", "1", "--repeats", "2", "--precision", "fp32"])
    out = capsys.readouterr().out
    assert "GEMM 2048^2" in out and "% of GEMM" in out
    assert "ATEN_CPU_CAPABILITY=avx2" in out and "fast path --compile auto --attention auto" in out
    rows = [line for line in out.splitlines() if line.startswith(("| tokenizer", "| dit", "| classifier"))]
    assert len(rows) == 6 and sum("reference" in r for r in rows) == 3 and sum("| fast |" in r for r in rows) == 3
    with pytest.raises(SystemExit, match="model spec"):
        benchmark.main(["--models", "vae"])


needs_compile = pytest.mark.skipif(not compile_available()[0], reason=compile_available()[1])


@needs_compile
def test_compiled_blocks_compute_what_eager_blocks_do(caplog):
    """Tokenizer (photo preset at width 96, where a transposed block input once came out of a compiled block as
    NaN) and DiT: the compiled model's loss and gradients equal the eager model's within bf16 rounding."""
    from hieratok import DiT, dit_config
    from hieratok.losses import ReconstructionLoss
    from hieratok.perf import compile_blocks
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    tok_cfg = tokenizer_config("imagenette128", enc_dim=96, enc_depth=1, enc_heads=4, dec_dim=96, dec_depth=1,
                               dec_heads=4)
    loss_fn = ReconstructionLoss(tok_cfg)
    # the recipe also decodes its coarse scales with the blocks' weights frozen (a second compiled graph)
    recipe_cfg = tokenizer_config("imagenette128", "stopgrad-shared-context", enc_dim=96, enc_depth=1, enc_heads=4,
                                  dec_dim=96, dec_depth=1, dec_heads=4)
    recipe_loss = ReconstructionLoss(recipe_cfg)
    dit_cfg = dit_config("imagenette128", dim=96, depth=1, heads=4)
    z, y = torch.randn(4, 16, 16, 16), torch.tensor([0, 1, 2, 3])
    cases = [(HieraTok(tok_cfg), lambda m: loss_fn(x, *m(x, generator=torch.Generator().manual_seed(0))).total),
             (HieraTok(recipe_cfg),
              lambda m: recipe_loss(x, *m(x, generator=torch.Generator().manual_seed(0))).total),
             (DiT(dit_cfg), lambda m: m.loss(z, y, torch.Generator().manual_seed(0)))]
    for model, loss_of in cases:
        model.train()
        compiled = type(model)(model.config)
        compiled.load_state_dict(model.state_dict())
        assert compile_blocks(compiled) > 0
        results = []
        for m in (model, compiled):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = loss_of(m)
            loss.backward()
            results.append((loss.item(), [p.grad for p in m.parameters()]))
        (ref, ref_grads), (got, grads) = results
        assert "eagerly" not in caplog.text  # the compiled blocks ran (none fell back)
        assert torch.isfinite(torch.tensor(got)) and abs(got - ref) <= 2e-2 * abs(ref)
        for a, b in zip(ref_grads, grads):
            if a is not None:
                assert torch.isfinite(b).all()
                assert (a - b).abs().max() <= 0.1 * a.abs().max() + 1e-6


@needs_compile
@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float32, 1e-6, 2e-6), (torch.bfloat16, 2 ** -7, 2 ** -7)])
def test_the_compiled_gelu_is_the_tanh_gelu_in_value_and_gradient(dtype, rtol, atol):
    """Compiled, `gelu_tanh` is written through a sigmoid (faster there); it must stay F.gelu(approximate="tanh"):
    values and gradients within fp32 rounding, within one bf16 rounding step in bf16."""
    from hieratok.layers import gelu_tanh
    x = torch.linspace(-8, 4, 4099).to(dtype)
    compiled = torch.compile(gelu_tanh, dynamic=False)
    grads = []
    for fn in (compiled, lambda t: F.gelu(t, approximate="tanh")):
        xi = x.clone().requires_grad_()
        out = fn(xi)
        out.backward(torch.ones_like(out))
        grads.append((out.detach().float(), xi.grad.float()))
    (got, got_grad), (ref, ref_grad) = grads
    torch.testing.assert_close(got, ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(got_grad, ref_grad, rtol=rtol, atol=atol)
    assert torch.equal(gelu_tanh(x), F.gelu(x, approximate="tanh"))  # eagerly: ATen's kernel itself


def test_a_compiled_block_that_computes_nonsense_falls_back_to_eager(monkeypatch, caplog):
    """The first call of each compiled block is checked against eager: a compiler that returns NaN costs speed
    (a warning, that block eager from then on), never the run."""
    from hieratok import perf

    def broken_compile(fn, **kwargs):
        return lambda *a, **k: tuple(t * float("nan") if torch.is_tensor(t) else t for t in fn(*a, **k))

    monkeypatch.setattr(perf.torch, "compile", broken_compile)
    model = HieraTok(tokenizer_config("cifar10", **SMALL)).train()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        ref = model(x, sample=False)[0].reconstruction
    assert perf.compile_blocks(model) == 3
    out = model(x, sample=False)[0].reconstruction
    assert torch.isfinite(out).all() and torch.allclose(out, ref, atol=1e-5)
    assert caplog.text.count("running this block eagerly") == 3
    torch.testing.assert_close(model(x, sample=False)[0].reconstruction, ref, atol=1e-5, rtol=1e-5)


def test_trainers_step_the_fused_adamw_and_it_matches_the_default_loop():
    """`adamw` asks for torch's fused kernel where the parameters allow it (plain floating-point parameters on a
    CPU or GPU); ten steps of it land where the default per-tensor loop does, to fp32 rounding."""
    from types import SimpleNamespace

    from hieratok.training.optim import adamw, fused_supported
    args = SimpleNamespace(lr=1e-2, weight_decay=0.05)
    model = HieraTok(tokenizer_config("cifar10", **SMALL))
    assert fused_supported(model.parameters()) and adamw(list(model.parameters()), args).defaults["fused"]
    assert not fused_supported([])  # nothing to step
    assert not fused_supported([torch.zeros(3, requires_grad=True)])  # a bare tensor, not a Parameter: the default
    results = []
    for fused in (True, False):
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 1))
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]}
                  for g in adamw(list(m.parameters()), args).param_groups]  # adamw's groups, without its settings
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), fused=fused)
        assert bool(opt.param_groups[0]["fused"]) == fused
        x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
        for _ in range(10):
            m(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
        results.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)
