"""The evaluation module behind train/evaluate.py and train/experiment.py: both scripts give the numbers their own
two implementations gave before they were merged into `hieratok.evaluation` (pinned from the old code on the same
tiny tokenizer, classifier and images)."""
import itertools
import json

import pytest
import torch

from tests.test_train import image_folder  # noqa: F401  (the synthetic ImageFolder fixture)

# computed by the two implementations before the merge (commit 0b8f2f3), on `tiny` below
PINNED_SCALES = {  # latent side: (PSNR mean, SSIM mean, latent Gini)
    "1x1": (6.36304, 0.433399, 0.980228), "2x2": (6.23598, 0.024802, 0.964796),
    "4x4": (6.10429, 0.004792, 0.959105), "8x8": (5.49460, 0.002958, 0.979745),
    "16x16": (5.65577, 0.004157, 0.977334)}
PINNED_RFD = 0.0133740
PINNED_LINEAR = (28.82341, 0.777811, 0.000212913)   # PSNR, SSIM, rFD-cls of linear-pca-C4 fitted on 20 images
PINNED_MINUS_LINEAR = (-23.167646, 1.307551)        # paired finest PSNR difference, mean and 95% half-width


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from hieratok import HieraTok, tokenizer_config
    from hieratok.classifier import Classifier, ClassifierConfig
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    HieraTok(tokenizer_config("cifar10", enc_dim=32, enc_depth=1, enc_heads=2, dec_dim=48, dec_depth=1,
                              dec_heads=3)).save_pretrained(root / "tok")
    torch.manual_seed(1)
    Classifier(ClassifierConfig(image_size=32, width=4)).save_pretrained(root / "clf")
    return root


def test_evaluate_script_gives_the_pinned_numbers(tiny, image_folder, tmp_path):  # noqa: F811
    from train import evaluate
    evaluate.main(["--data", str(image_folder), "--tokenizer", f"tiny={tiny / 'tok'}", "--classifier",
                   str(tiny / "clf"), "--fit-data", str(image_folder), "--fit-images", "20", "--batch-size", "10",
                   "--output", str(tmp_path / "ev")])
    report = json.loads((tmp_path / "ev.json").read_text())
    t = report["tokenizers"]["tiny"]
    for scale, (p, s, g) in PINNED_SCALES.items():
        m = t["scales"][scale]
        assert m["psnr"]["mean"] == pytest.approx(p, abs=1e-3) and m["ssim"]["mean"] == pytest.approx(s, abs=1e-4)
        assert m["latent_density"]["gini"] == pytest.approx(g, abs=1e-4)
    assert t["rfd"] == pytest.approx(PINNED_RFD, rel=1e-3) and t["lpips"] is None
    # the latent spectrum where a map has spatial frequencies to speak of (4 x 4 and up)
    assert [k for k in t["scales"] if "latent_spectrum" in t["scales"][k]] == ["4x4", "8x8", "16x16"]
    assert 0 < t["scales"]["16x16"]["latent_spectrum"]["high_frequency_fraction"] < 1
    lin = report["tokenizers"]["linear-pca-C4"]
    assert lin["scales"]["16x16"]["psnr"]["mean"] == pytest.approx(PINNED_LINEAR[0], abs=1e-3)
    assert lin["scales"]["16x16"]["ssim"]["mean"] == pytest.approx(PINNED_LINEAR[1], abs=1e-4)
    assert lin["rfd"] == pytest.approx(PINNED_LINEAR[2], rel=1e-2) and lin["fit"]["images"] == 20
    d = t["finest_psnr_minus_linear"]
    assert (d["mean"], d["ci95"]) == pytest.approx(PINNED_MINUS_LINEAR, abs=1e-3)
    assert "| PSNR 16x16 |" in (tmp_path / "ev.md").read_text()


def test_experiment_evaluation_gives_the_pinned_numbers_through_the_same_function(tiny, image_folder):  # noqa: F811
    import hieratok.evaluation
    from hieratok.classifier import Classifier
    from train import evaluate, experiment
    assert evaluate.tokenizer_scores is experiment.tokenizer_scores is hieratok.evaluation.tokenizer_scores
    x = experiment.load_images(str(image_folder), 32, None)
    m = experiment.evaluate(tiny / "tok", x, classifier=Classifier.from_pretrained(tiny / "clf").eval())
    assert m["images"] == 36 and m["psnr"] == m["psnr_scales"]["16x16"]
    for scale, (p, _, _) in PINNED_SCALES.items():
        assert m["psnr_scales"][scale] == pytest.approx(p, abs=1e-3)
    assert m["ssim"] == pytest.approx(PINNED_SCALES["16x16"][1], abs=1e-4)
    assert m["latent_density"]["gini"] == pytest.approx(PINNED_SCALES["16x16"][2], abs=1e-4)
    assert m["rfd_cls"] == pytest.approx(PINNED_RFD, rel=1e-3)
    # the finest latent's spectrum, as the metric gives it for the same latents
    from hieratok import HieraTok
    from hieratok.metrics import latent_spectrum
    with torch.no_grad():
        z = HieraTok.from_pretrained(tiny / "tok").eval().encode(x)
    want = latent_spectrum(z)
    assert m["latent_spectrum"]["high_frequency_fraction"] == pytest.approx(want["high_frequency_fraction"])
    assert m["latent_spectrum"]["radial_power"] == pytest.approx(want["radial_power"])
    from hieratok.metrics import channel_participation
    assert m["channel_participation"] == pytest.approx(channel_participation(z))


def test_scores_are_batch_independent_and_reduce_consistently(tiny):
    from hieratok import HieraTok
    from hieratok.evaluation import image_batches, tokenizer_scores
    tok = HieraTok.from_pretrained(tiny / "tok").eval()
    x = torch.rand(10, 3, 32, 32) * 2 - 1
    a = tokenizer_scores(tok, x, batch_size=3)
    # a loader's (images, labels, skipped) items, with an all-unreadable batch in between
    b = tokenizer_scores(tok, [(x[:6], None, 0), (None, None, 4), (x[6:], None, 0)])
    for s in a.scales:
        torch.testing.assert_close(a.psnr[s], b.psnr[s])
        torch.testing.assert_close(a.ssim[s], b.ssim[s])
    assert a.images == 10 and a.means()["psnr"] == pytest.approx(a.summary()["scales"]["16x16"]["psnr"]["mean"])
    assert [len(v) for v in image_batches(x, 4)] == [4, 4, 2]
    with pytest.raises(ValueError, match="no images"):
        tokenizer_scores(tok, [(None, None, 2)])


def test_linear_scores_of_a_lossless_codec_and_the_paired_difference():
    from hieratok.evaluation import linear_scores, paired_difference
    from hieratok.linear import PatchPCA
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    codec = PatchPCA.fit([x], patch_size=2, latent_channels=12)      # 12 = 3 x 2 x 2: every component kept
    s = linear_scores(codec, x)
    assert s.scales == [8] and s.psnr[8].min() > 60 and not s.latents
    d = paired_difference(torch.tensor([2.0, 3.0, 4.0]), torch.tensor([1.0, 1.0, 1.0]))
    assert d["mean"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="same images"):
        paired_difference(torch.zeros(3), torch.zeros(4))


def test_sample_plan_gives_each_seed_its_own_labels_and_noise_and_keeps_seed_0():
    from hieratok import sample_plan
    labels0, noise0 = sample_plan(2000, 10, seed=0)
    assert torch.equal(labels0, torch.arange(2000) % 10)  # what every report before per-seed sampling used
    assert [noise0(i) for i in (0, 50, 100)] == [0, 50, 100]
    starts = range(0, 2000, 50)
    seen = {0: {noise0(i) for i in starts}}
    for seed in (1, 2):
        labels, noise = sample_plan(2000, 10, seed=seed)
        assert torch.equal(torch.bincount(labels, minlength=10), torch.full((10,), 200))  # still class-balanced
        assert not torch.equal(labels, labels0)
        seen[seed] = {noise(i) for i in starts}
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])  # no batch shares noise across seeds
    assert torch.equal(sample_plan(2000, 10, seed=1)[0], sample_plan(2000, 10, seed=1)[0])  # and it is repeatable


def test_generator_scores_differ_by_seed_and_refuse_a_singular_frechet_distance(tiny):
    from hieratok import DiT, HieraTok, dit_config
    from hieratok.classifier import Classifier
    from hieratok.evaluation import generator_scores
    from hieratok.metrics import frechet_distance_metric
    tok = HieraTok.from_pretrained(tiny / "tok").eval()
    tok.set_latent_stats(torch.zeros(4), torch.ones(4), 1)
    torch.manual_seed(0)
    dit = DiT(dit_config("cifar10", dim=32, depth=1, heads=2)).eval()
    clf = Classifier.from_pretrained(tiny / "clf").eval()
    fd = frechet_distance_metric(clf)
    dims = int(fd.real_features_sum.numel())
    with pytest.raises(ValueError, match=f"covariance is singular below {dims} samples"):
        generator_scores(dit, tok, dims - 1, steps=1, guidance=1.0, fd=fd)
    fd.update(torch.rand(8, 3, 32, 32), real=True)
    assert generator_scores(dit, tok, dims - 1, steps=1, guidance=1.0, fd=fd.clone(), allow_few=True)["gfd"] >= 0
    a, a_again = (generator_scores(dit, tok, 20, steps=1, guidance=1.0, seed=0, classifier=clf) for _ in range(2))
    assert torch.equal(a["correct"], a_again["correct"]) and a["samples"] == 20
    from hieratok.latent import generate
    x0 = generate(dit, tok, torch.tensor([0, 1]), steps=1, guidance=1.0, seed=0)[0]
    x1 = generate(dit, tok, torch.tensor([0, 1]), steps=1, guidance=1.0, seed=1_000_003)[0]
    assert not torch.allclose(x0, x1)  # seed 1's first batch draws other noise than seed 0's


def test_generation_protocol_sweeps_pairs_resumes_and_draws_the_figure(tiny, image_folder, tmp_path):  # noqa: F811
    from hieratok import DiT, HieraTok, dit_config
    from train import generation
    tok = HieraTok.from_pretrained(tiny / "tok")
    tok.set_latent_stats(torch.zeros(4), torch.ones(4), 1)
    tok.save_pretrained(tmp_path / "tok")
    for seed in (0, 1):
        torch.manual_seed(seed)
        DiT(dit_config("cifar10", dim=32, depth=1, heads=2, num_classes=3)).save_pretrained(tmp_path / f"dit{seed}")
    argv = ["--data", str(image_folder), "--classifier", str(tiny / "clf"),
            "--dit", f"a={tmp_path / 'dit0'}", "--tokenizer", f"a={tmp_path / 'tok'}",
            "--dit", f"b={tmp_path / 'dit1'}", "--tokenizer", f"b={tmp_path / 'tok'}",
            "--guidance", "1", "3", "--sample-steps", "1", "--default-steps", "1", "--seeds", "0", "1",
            "--num-samples", "12", "--batch-size", "6", "--compile", "off", "--output", str(tmp_path / "gen")]
    with pytest.raises(SystemExit, match="covariance is singular"):  # 12 samples, 32-d classifier features
        generation.main(argv)
    generation.main([*argv, "--allow-few-samples", "--figure", str(tmp_path / "gen.png"), "--figure-per-class", "2"])
    report = json.loads((tmp_path / "gen.json").read_text())
    assert len(report["points"]) == 2 * 2 * 2 and report["feature_dim"] == 32
    s = report["summary"]
    for dit in ("a", "b"):
        rows = s["table"][dit]
        assert [r["guidance"] for r in rows] == [1.0, 3.0] and all(r["gfd"]["n"] == 2 for r in rows)
        best = min(rows, key=lambda r: r["gfd"]["mean"])["guidance"]
        assert s["default_guidance"][dit] == best
    p = s["paired"][0]
    pts = {(q["dit"], q["guidance"], q["seed"]): q["gfd"] for q in report["points"]}
    assert p["gfd_a_minus_b"]["mean"] == pytest.approx(
        sum(pts[("a", p["guidance"], sd)] - pts[("b", p["guidance"], sd)] for sd in (0, 1)) / 2)
    md = (tmp_path / "gen.md").read_text()
    assert "(default)" in md and "| a − b | 1 |" in md and "gen.png" in md
    from PIL import Image
    with Image.open(tmp_path / "gen.png") as im:
        assert im.width > 2 * 2 * 32 and im.height >= 3 * 32
    # compiled DiT blocks (the default on a CPU) and bf16 sampling score as the eager fp32 ones do; a change of
    # precision starts the output afresh
    from hieratok.perf import compile_available
    if compile_available()[0]:
        for extra, tol in ((["--compile", "on"], 1e-3), (["--compile", "on", "--precision", "bf16"], 0.2)):
            base = argv[:argv.index("--compile")]  # argv ends with --compile off --output PREFIX
            generation.main([*base, "--output", str(tmp_path / "gen-c"), "--allow-few-samples", "--guidance", "3",
                             "--seeds", "0", *extra])
            got = {q["dit"]: q["gfd"] for q in json.loads((tmp_path / "gen-c.json").read_text())["points"]}
            want = {q["dit"]: q["gfd"] for q in report["points"] if q["guidance"] == 3.0 and q["seed"] == 0}
            assert got.keys() == want.keys() and all(abs(got[k] - want[k]) <= tol * abs(want[k]) for k in got)
            assert json.loads((tmp_path / "gen-c.json").read_text())["precision"] == (
                "bf16" if "bf16" in extra else "fp32")
    # a second call finds every point done and computes nothing new
    before = report["points"]
    generation.main([*argv, "--allow-few-samples"])
    assert json.loads((tmp_path / "gen.json").read_text())["points"] == before

    # guidance intervals are one more sweep dimension: the points guided at every step are kept, the new ones added
    generation.main([*argv, "--allow-few-samples", "--guidance-interval", "all", "0.5,1"])
    report = json.loads((tmp_path / "gen.json").read_text())
    assert report["points"][:8] == before and len(report["points"]) == 16
    pts = {(q["dit"], q["guidance"], tuple(q["interval"] or ()), q["seed"]): q["gfd"] for q in report["points"]}
    # one Euler step evaluates only t = 0, outside [0.5, 1]: unguided there, whatever the scale
    for dit, seed in itertools.product("ab", (0, 1)):
        assert pts[(dit, 3.0, (0.5, 1.0), seed)] == pts[(dit, 1.0, (), seed)]
    s = report["summary"]
    assert [(r["guidance"], r["interval"]) for r in s["table"]["a"]] == [(1.0, None), (1.0, [0.5, 1.0]),
                                                                         (3.0, None), (3.0, [0.5, 1.0])]
    best = min(s["table"]["a"], key=lambda r: r["gfd"]["mean"])
    assert (s["default_guidance"]["a"], s["default_interval"]["a"]) == (best["guidance"], best["interval"])
    assert "t in [0.5, 1]" in (tmp_path / "gen.md").read_text()
    for bad in ("0.5", "0.9,0.1", "late"):
        with pytest.raises(SystemExit):
            generation.parse_args([*argv, "--guidance-interval", bad])


def test_latent_spectrum_script_pairs_each_arms_spectrum_with_its_dits_speedup(image_folder, tmp_path):  # noqa: F811
    from hieratok import HieraTok, tokenizer_config
    from hieratok.stats import rank_correlation
    from train import latent_spectrum
    arms = ["singlescale", "hieratok", "finest-weighted", "interp"]
    for i, arm in enumerate(arms):
        torch.manual_seed(i)
        HieraTok(tokenizer_config("cifar10", enc_dim=32, enc_depth=1, enc_heads=2, dec_dim=32, dec_depth=1,
                                  dec_heads=2)).save_pretrained(tmp_path / arm)
    curve = lambda *v: [{"step": s, "gfd_cls": g, "class_accuracy": 0.5} for s, g in zip((100, 200, 400), v)]  # noqa
    slow, fast = curve(60.0, 40.0, 30.0), curve(50.0, 30.0, 20.0)   # fast reaches 30 at 200 steps: 2x
    dits = [("singlescale", slow), ("hieratok", fast), ("finest-weighted", curve(55.0, 35.0, 25.0))]
    finals = {"singlescale": 27.3, "hieratok": 26.2, "finest-weighted": 26.5, "interp": 26.0}
    results = {"records": [{"arm": a, "seed": 0, "step_time_s": 1.0, "final": {
        "psnr": p, "ssim": 0.8, "latent_density": {"gini": 0.7 + i / 100, "entropy": 0.8}}}
        for i, (a, p) in enumerate(finals.items())],
               "generation": [{"arm": a, "seed": 0, "curve": c, "final": c[-1], "step_time_s": 1.0}
                              for a, c in dits]}
    (tmp_path / "exp.json").write_text(json.dumps(results))
    out = tmp_path / "spec"
    latent_spectrum.main(["--data", str(image_folder), "--images", "36", "--resamples", "20", "--experiment",
                          str(tmp_path / "exp.json"), "--output", str(out),
                          *[f"--tokenizer={a}={tmp_path / a}" for a in arms]])
    r = json.loads(out.with_suffix(".json").read_text())
    assert r["images_used"] == 36 and sorted(r["tokenizers"]) == sorted(arms)
    for s in [*r["tokenizers"].values(), r["images"]]:
        lo, hi = s["interval"]
        assert 0 <= lo <= s["high_frequency_fraction"] <= hi <= 1
    e = r["experiment"]
    assert e["missing"] == ["interp"] and e["baseline"] == "singlescale"   # interp has no DiT
    assert {a: v["speedup"] for a, v in e["arms"].items()} == {"singlescale": 1.0, "hieratok": 2.0,
                                                               "finest-weighted": pytest.approx(4 / 3)}
    names = list(e["arms"])
    hf = [r["tokenizers"][a]["high_frequency_fraction"] for a in names]
    want = rank_correlation(hf, [e["arms"][a]["speedup"] for a in names])
    assert e["correlation_with_speedup"]["high_frequency_fraction"] == pytest.approx(want)
    assert e["correlation_with_speedup"]["psnr"]["rho"] == pytest.approx(-1.0)   # PSNR ranks exactly reversed
    used = [r["tokenizers"][a]["channels"]["participation"] for a in names]
    assert all(1 <= u <= 4 for u in used) and e["correlation_with_speedup"]["participation"] == pytest.approx(
        rank_correlation(used, [e["arms"][a]["speedup"] for a in names]))
    # the linear probe on the labelled images (3 colour classes of 12): each arm's accuracy, its rank correlation
    probe = [r["tokenizers"][a]["probe"]["accuracy"] for a in names]
    assert all(1 / 3 < p <= 1 for p in probe) and r["tokenizers"]["interp"]["probe"]["majority"] == pytest.approx(1 / 3)
    assert e["correlation_with_speedup"].get("probe") == rank_correlation(probe, [e["arms"][a]["speedup"]
                                                                                 for a in names])
    text = out.with_suffix(".md").read_text()
    assert "Linear probe: multinomial logistic regression" in text and "| hieratok | " in text.split("mode 3")[1]
    modes = r["tokenizers"]["hieratok"]["modes"]
    assert len(modes) == 3 and modes[0]["share"] >= modes[1]["share"] >= modes[2]["share"] > 0
    assert all(-1 <= m[k] <= 1 for m in modes for k in ("luminance", "red_green", "blue_yellow"))
    assert "| hieratok | 26.20 | 0.710 |" in text and "2.00x |" in text and "no DiT): interp" in text
    assert " of 4 |" in text and "with the channel participation" in text
    # tokenizers with different latents share no images to compare on
    HieraTok(tokenizer_config("cifar10", latent_channels=8, enc_dim=32, enc_depth=1, enc_heads=2, dec_dim=32,
                              dec_depth=1, dec_heads=2)).save_pretrained(tmp_path / "c8")
    with pytest.raises(SystemExit, match="latent shapes differ"):
        latent_spectrum.main(["--data", str(image_folder), "--tokenizer", f"a={tmp_path / 'hieratok'}",
                              "--tokenizer", f"b={tmp_path / 'c8'}"])
