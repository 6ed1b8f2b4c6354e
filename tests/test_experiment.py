"""The experiment driver on a tiny grid: records, skips finished runs, resumes an interrupted one; the interval."""
import json
import math
import shutil

import pytest

from tests.test_train import image_folder  # noqa: F401  (the synthetic ImageFolder fixture)

TINY = ["--preset", "cifar10", "--steps", "4", "--batch-size", "4", "--curve-images", "8", "--set", "enc_dim=32",
        "enc_depth=1", "enc_heads=2", "dec_dim=48", "dec_depth=1", "dec_heads=3"]


def test_t_interval_against_a_hand_computed_example():
    from hieratok.stats import t_interval
    r = t_interval([1.0, 2.0, 3.0])
    # mean 2, sample sd 1, t(0.975, 2 df) = 4.302653: half-width 4.302653 / sqrt(3)
    assert r["mean"] == 2.0 and r["n"] == 3 and math.isclose(r["ci95"], 4.302653 / math.sqrt(3), rel_tol=1e-5)
    assert math.isnan(t_interval([5.0])["ci95"])


def test_an_undefined_interval_is_written_as_null_and_still_renders(tmp_path):
    from hieratok.report import fmt, percent
    from hieratok.stats import ratio_interval, t_interval
    from hieratok.training.checkpoint import write_json
    path = tmp_path / "r.json"
    write_json(path, {"psnr": t_interval([26.5]), "acc": t_interval([0.5]), "ratio": ratio_interval([2.0]),
                      "curve": [1.0, float("inf")]})
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    r = json.loads(path.read_text())
    assert r["psnr"] == {"mean": 26.5, "ci95": None, "n": 1} and r["curve"] == [1.0, None]
    assert (r["ratio"]["low"], r["ratio"]["high"]) == (None, None)
    assert fmt(r["psnr"]) == "26.50" and fmt(percent(r["acc"]), 1) == "50.0"


def record(arm, seed, scales):
    names = ["1x1", "2x2", "4x4", "8x8", "16x16"][-len(scales):] if len(scales) > 1 else ["16x16"]
    final = {"psnr": scales[-1], "psnr_scales": dict(zip(names, scales)), "ssim": 0.8,
             "latent_density": {"gini": 0.7, "entropy": 0.8}, "rfd_cls": 10.0}
    return {"arm": arm, "seed": seed, "final": final, "step_time_s": 1.0}


def test_the_cost_table_pairs_finest_with_singlescale_and_coarse_with_hieratok():
    from train import study
    recs = []
    for seed, shift in ((0, 0.0), (1, 0.3), (2, -0.3)):  # seed effects shared by every arm: paired intervals are 0
        recs += [record("hieratok", seed, [21 + shift, 21 + shift, 22 + shift, 24 + shift, 26 + shift]),
                 record("singlescale", seed, [27.1 + shift]),
                 # within the target: finest 0.1 below singlescale, 8x8 0.4 below hieratok
                 record("good", seed, [21 + shift, 21 + shift, 22 + shift, 23.6 + shift, 27 + shift]),
                 # misses it on a coarse prefix only
                 record("bad-coarse", seed, [20.4 + shift, 21 + shift, 22 + shift, 24 + shift, 27.1 + shift])]
    s = study.summarize(recs)
    good, bad = s["good"], s["bad-coarse"]
    assert good["psnr_minus_singlescale"]["mean"] == pytest.approx(-0.1)
    assert good["psnr_minus_singlescale"]["ci95"] == pytest.approx(0.0, abs=1e-9)
    assert good["coarse_minus_hieratok"]["8x8"]["mean"] == pytest.approx(-0.4)
    assert set(good["coarse_minus_hieratok"]) == {"1x1", "2x2", "4x4", "8x8"}
    assert good["psnr_scales"]["16x16"]["n"] == 3 and "psnr_scales" not in s["singlescale"]
    assert study.meets_cost_target(good) is True and study.meets_cost_target(bad) is False
    assert study.meets_cost_target(s["singlescale"]) is None and "coarse_minus_hieratok" not in s["hieratok"]
    md = "\n".join(study.scale_table(s))
    assert "| good | -0.10 ± 0.00 | 0.00 ± 0.00 | 0.00 ± 0.00 | 0.00 ± 0.00 | -0.40 ± 0.00 | met |" in md
    assert "| bad-coarse | 0.00 ± 0.00 | -0.60 ± 0.00 |" in md and md.count("not met") == 1


def test_step_times_pool_over_seeds_only_under_the_same_recorded_conditions():
    """A step time depends on the machine and its threads, not on the seed: runs of one arm measured on different
    machines, thread counts or without a record of them give a median and range, marked, not an interval."""
    from train import study
    def timed(seed, t, **conditions):
        return {**record("hieratok", seed, [26.0]), "step_time_s": t, "concurrent_runs": 1, **conditions}
    xeon = dict(machine="Intel Xeon", threads=2)
    same = study.step_times([timed(0, 1.0, **xeon), timed(1, 1.2, **xeon), timed(2, 1.1, **xeon)])
    assert same["mean"] == pytest.approx(1.1) and same["ci95"] > 0 and "mixed" not in same
    for other in (dict(machine="AMD EPYC", threads=2), dict(machine="Intel Xeon", threads=1), {}):
        m = study.step_times([timed(0, 1.0, **xeon), timed(1, 2.3, **other)])
        assert m["mixed"] and (m["min"], m["max"], m["median"]) == (1.0, 2.3, pytest.approx(1.65)), other
        assert study.fmt_step(m) == "1.650 (1.00-2.30)*"
    side_by_side = timed(1, 2.0, **xeon) | {"concurrent_runs": 2}
    assert study.step_times([timed(0, 1.0, **xeon), side_by_side])["mixed"]
    assert study.fmt_step(study.step_times([timed(0, 1.0)])) == "1.000"  # one run: its own time, nothing to pool
    md = study.markdown({"tier": "cpu", "budget": {"steps": 4, "batch_size": 2, "preset": "cifar10", "set": {}},
                         "val_images": 8, "records": [timed(0, 1.0, **xeon), timed(1, 2.3)],
                         "summary": study.summarize([timed(0, 1.0, **xeon), timed(1, 2.3)])})
    assert "| 1.650 (1.00-2.30)* |" in md and "no cost comparison between arms" in md


def test_grid_records_skips_finished_and_resumes_interrupted(image_folder, tmp_path, capsys, monkeypatch):  # noqa: F811
    from hieratok.classifier import Classifier, ClassifierConfig
    from train import experiment
    Classifier(ClassifierConfig(image_size=32, width=4)).save_pretrained(tmp_path / "classifier")
    args = ["--data", str(image_folder), "--val", str(image_folder), "--output-dir", str(tmp_path / "runs"),
            "--results", str(tmp_path / "eval" / "experiment"), "--arms", "hieratok", "singlescale",
            "--seeds", "0", "1",
            "--classifier", str(tmp_path / "classifier"), *TINY, "--stage1-args", "--mixed-precision", "no"]
    # the first call trains two runs at a time; the later ones one at a time
    experiment.main([*args[:-3], "--parallel", "2", *args[-3:]])
    report = json.loads((tmp_path / "eval" / "experiment.json").read_text())
    assert sorted((r["arm"], r["seed"]) for r in report["records"]) == [
        ("hieratok", 0), ("hieratok", 1), ("singlescale", 0), ("singlescale", 1)]
    for r in report["records"]:
        assert [p["step"] for p in r["curve"]] == [1, 2, 4] and r["budget"]["steps"] == 4
        assert set(r["final"]["psnr_scales"]) == ({"16x16"} if r["arm"] == "singlescale" else
                                                   {"1x1", "2x2", "4x4", "8x8", "16x16"})
        assert r["step_time_s"] > 0 and r["final"]["images"] == 36
        assert r["final"]["rfd_cls"] > 0 and r["curve"][0]["rfd_cls"] is None  # FD needs the full set
        assert r["concurrent_runs"] == 2 and r["hardware"] == "CPU" and r["precision"] == "no"
        assert r["machine"] and r["threads"] == 1  # two runs side by side on their share of the cores
    # the two seeds differ (initialisation and data order)
    h = [r for r in report["records"] if r["arm"] == "hieratok"]
    assert h[0]["final"]["psnr"] != h[1]["final"]["psnr"]
    s = report["summary"]
    assert s["hieratok"]["psnr"]["n"] == 2 and "psnr_minus_hieratok" in s["singlescale"]
    assert s["singlescale"]["rfd_cls"]["n"] == 2
    assert s["hieratok"]["step_time_s"]["n"] == 2 and "mixed" not in s["hieratok"]["step_time_s"]  # one machine
    md = (tmp_path / "eval" / "experiment.md").read_text()
    ref = report["linear_reference"]  # the patch PCA of the arms' latent size, on the same images
    assert ref["name"] == "linear-pca-C4" and 5 < ref["psnr_final"] < 60 and "| linear-pca-C4 (linear" in md
    assert "| singlescale | 2 |" in md and (tmp_path / "eval" / "experiment-curves.html").exists()
    assert "Trained on: CPU, fp32 (4 runs)." in md  # --mixed-precision no: fp32, whatever the CPU

    # the app's Experiment tab reads the same file from an assets folder
    from hieratok.explorer import views
    view = views.experiment(tmp_path)
    text, fig = view.text, view.figure
    assert "| singlescale | 2 |" in text and "4 runs so far over 2 arms" in text
    assert sorted(t.name for t in fig.data) == ["hieratok", "singlescale"]
    assert [len(t.x) for t in fig.data] == [3, 3]
    assert [shape.line.dash for shape in fig.layout.shapes] == ["dash"]  # the linear reference
    assert view.front is None  # tokenizers only: no DiTs, no trade-off
    empty = views.experiment(tmp_path / "nothing-here")
    assert empty.figure is None and empty.front is None and "No results of the controlled experiment yet" in empty.text

    # a second call runs nothing; --report-only rewrites the report alone
    capsys.readouterr()
    experiment.main(args)
    out = capsys.readouterr().out
    assert out.count("done, skipped") == 4 and "stage1.py" not in out
    (tmp_path / "eval" / "experiment.md").unlink()
    experiment.main([*args[:-3], "--report-only", *args[-3:]])
    assert "| hieratok | 2 |" in (tmp_path / "eval" / "experiment.md").read_text()
    assert "stage1.py" not in capsys.readouterr().out

    # --merge adds another results file's runs of this budget (and only those) to the report
    other = dict(next(r for r in report["records"] if (r["arm"], r["seed"]) == ("hieratok", 0)))
    elsewhere = [{**other, "arm": "scale-heads"}, {**other, "arm": "mss-total1", "budget": {**other["budget"],
                                                                                             "steps": 99}}]
    (tmp_path / "other.json").write_text(json.dumps({"records": elsewhere}))
    kept = (tmp_path / "eval" / "experiment.json").read_text()
    experiment.main([*args[:-3], "--report-only", "--merge", str(tmp_path / "other.json"), *args[-3:]])
    merged = json.loads((tmp_path / "eval" / "experiment.json").read_text())
    assert sorted({r["arm"] for r in merged["records"]}) == ["hieratok", "scale-heads", "singlescale"]
    assert "| scale-heads | 1 |" in (tmp_path / "eval" / "experiment.md").read_text()
    with pytest.raises(SystemExit, match="no such file"):
        experiment.main([*args[:-3], "--report-only", "--merge", str(tmp_path / "missing.json"), *args[-3:]])
    (tmp_path / "eval" / "experiment.json").write_text(kept)

    # every record names the classifier its rFD-cls was measured with; FD-cls of two classifiers is never mixed
    ident = report["records"][0]["classifier"]
    assert all(r["classifier"] == ident for r in report["records"]) and len(ident["sha256"]) == 16
    assert ident["image_size"] == 32 and f"weights sha256 {ident['sha256']}" in md
    Classifier(ClassifierConfig(image_size=32, width=6)).save_pretrained(tmp_path / "another")
    another = [a if a != str(tmp_path / "classifier") else str(tmp_path / "another") for a in args]
    with pytest.raises(SystemExit, match="FD-cls of different classifiers would be mixed"):
        experiment.main(another)  # measuring into this file with another classifier: refused before any work
    assert (tmp_path / "eval" / "experiment.json").read_text() == kept
    foreign = {**other, "arm": "scale-heads", "classifier": {**ident, "sha256": "0" * 16}}
    (tmp_path / "other.json").write_text(json.dumps({"records": [foreign]}))
    with pytest.raises(SystemExit, match="different classifiers"):  # nor by merging, even in --report-only
        experiment.main([*args[:-3], "--report-only", "--merge", str(tmp_path / "other.json"), *args[-3:]])
    assert (tmp_path / "eval" / "experiment.json").read_text() == kept
    capsys.readouterr()

    # an interrupted run (no final export, no record, its checkpoint kept) resumes from its checkpoint
    run = tmp_path / "runs" / "singlescale" / "seed-1"
    shutil.rmtree(run / "final")
    report["records"] = [r for r in report["records"] if (r["arm"], r["seed"]) != ("singlescale", 1)]
    (tmp_path / "eval" / "experiment.json").write_text(json.dumps(report))
    experiment.main(args)
    assert (run / "final" / "model.safetensors").exists()
    config = json.loads((run / "run_config.json").read_text())
    assert [r["started_at_step"] for r in config["resumes"]] == [3]  # from its newest checkpoint, not from scratch
    assert len(json.loads((tmp_path / "eval" / "experiment.json").read_text())["records"]) == 4

    # two invocations on one results file (say, other arms in a second process): a run the other one records while
    # this one works is kept, not overwritten by this one's older copy of the file
    results = tmp_path / "eval" / "experiment.json"
    full = json.loads(results.read_text())
    theirs = next(r for r in full["records"] if (r["arm"], r["seed"]) == ("hieratok", 1))
    results.write_text(json.dumps({**full, "records": [r for r in full["records"] if r["seed"] == 0]}))
    real_record = experiment.run_record

    def other_process_records_meanwhile(*a, **k):
        now = json.loads(results.read_text())
        results.write_text(json.dumps({**now, "records": [*now["records"], theirs]}))
        return real_record(*a, **k)
    monkeypatch.setattr(experiment, "run_record", other_process_records_meanwhile)
    experiment.main([*args[:args.index("--arms")], "--arms", "singlescale", "--seeds", "1",
                     *args[args.index("--classifier"):]])
    assert sorted((r["arm"], r["seed"]) for r in json.loads(results.read_text())["records"]) == [
        ("hieratok", 0), ("hieratok", 1), ("singlescale", 0), ("singlescale", 1)]


def test_steps_to_reach_and_the_speedup_against_hand_computed_curves():
    from hieratok.stats import steps_to_reach
    from train.study import summarize_generation
    curve = [{"step": 100, "gfd_cls": 50.0}, {"step": 200, "gfd_cls": 30.0}, {"step": 400, "gfd_cls": 20.0}]
    assert steps_to_reach(curve, 40.0, "gfd_cls") == 150.0          # halfway between 50 at step 100 and 30 at step 200
    assert steps_to_reach(curve, 60.0, "gfd_cls") == 100.0 and steps_to_reach(curve, 10.0, "gfd_cls") is None
    slow = [{"step": 100, "gfd_cls": 60.0}, {"step": 200, "gfd_cls": 40.0}, {"step": 400, "gfd_cls": 30.0}]

    def rec(arm, seed, c):
        c = [{**p, "class_accuracy": 0.5} for p in c]
        return {"arm": arm, "seed": seed, "curve": c, "final": c[-1], "step_time_s": 1.0}
    g = summarize_generation([rec("hieratok", 0, curve), rec("singlescale", 0, slow),
                              rec("hieratok", 1, curve), rec("singlescale", 1, curve)])
    # seed 0: target 30 (singlescale's final): hieratok reaches it at 200, singlescale at 400 -> 2x; seed 1: 1x
    assert [p["ratio"] for p in g["speedup"]["per_seed"]] == [2.0, 1.0]
    assert g["arms"]["singlescale"]["gfd_cls"]["mean"] == 25.0
    # over seeds the ratio is averaged on the log scale: geometric mean sqrt(2 * 1); log-ratios (ln 2, 0) have
    # sd ln2 / sqrt2, so the half-width is t(0.975, df 1) * (ln2 / sqrt2) / sqrt2 = 12.7062 * ln2 / 2 = 4.4036
    r = g["speedup"]["ratio"]
    assert r["n"] == 2 and r["mean"] == pytest.approx(2 ** 0.5)
    assert (r["low"], r["high"]) == (pytest.approx(math.exp(0.34657 - 4.40365), rel=1e-4),
                                     pytest.approx(math.exp(0.34657 + 4.40365), rel=1e-4))
    # paired by seed at every measured step: seed 0 is 10 lower at each step, seed 1 equal -> mean -5, half-width
    # 12.7062 * sd(-10, 0) / sqrt2 = 12.7062 * 5 = 63.53
    assert [p["step"] for p in g["paired"]] == [100, 200, 400]
    assert all(p["gfd_cls"]["mean"] == -5.0 and p["gfd_cls"]["ci95"] == pytest.approx(63.531, abs=1e-3)
               and p["class_accuracy"]["mean"] == 0.0 for p in g["paired"])
    assert [p["bound"] for p in g["speedup"]["per_seed"]] == [None, None] and not g["speedup"]["censored"]
    # hieratok (50 at step 100) already below singlescale's final 55 at its first point: its step is only <= 100,
    # so the ratio (singlescale 400 / 100) is a lower bound and the table says so
    stuck = [{"step": 100, "gfd_cls": 70.0}, {"step": 200, "gfd_cls": 60.0}, {"step": 400, "gfd_cls": 55.0}]
    g = summarize_generation([rec("hieratok", 0, curve), rec("singlescale", 0, stuck)])
    p = g["speedup"]["per_seed"][0]
    assert (p["target_gfd_cls"], p["steps_hieratok"], p["steps_singlescale"], p["bound"]) == (55.0, 100.0, 400.0,
                                                                                              "lower")
    from train.study import generation_markdown
    text = "\n".join(generation_markdown({"dit_budget": {"steps": 400, "batch_size": 8, "set": [], "samples": 10,
                                                         "sample_steps": 4, "guidance": 3}, "generation_summary": g,
                                          "val_images": 10, "generation": [{"config": {"num_classes": 10}}]}))
    assert "hieratok <= 100 / singlescale 400 steps, ratio >= 4.00" in text and "a bound, not an estimate" in text
    # any other arm's DiTs are compared with single-scale's the same way, over the seeds both have
    g = summarize_generation([rec("hieratok", 0, curve), rec("singlescale", 0, slow), rec("singlescale", 1, slow),
                              rec("stopgrad-shared-context", 0, slow), rec("stopgrad-shared-context", 1, curve)])
    assert sorted(g["versus"]) == ["hieratok", "stopgrad-shared-context"] and g["speedup"]["ratio"]["n"] == 1
    v = g["versus"]["stopgrad-shared-context"]
    assert [(p["seed"], p["ratio"]) for p in v["speedup"]["per_seed"]] == [(0, 1.0), (1, 2.0)]
    assert v["speedup"]["per_seed"][1]["steps_stopgrad-shared-context"] == 200.0
    assert [p["gfd_cls"]["mean"] for p in v["paired"]] == [-5.0, -5.0, -5.0]
    text = "\n".join(generation_markdown({"dit_budget": {"steps": 400, "batch_size": 8, "set": [], "samples": 10,
                                                         "sample_steps": 4, "guidance": 3}, "generation_summary": g,
                                          "val_images": 10, "generation": [{"config": {"num_classes": 10}}]}))
    assert "singlescale / stopgrad-shared-context = **1.41x**" in text
    assert "stopgrad-shared-context minus singlescale at 100 / 200 / 400 DiT steps" in text
    # ... and with the paper method's (hieratok) over the seeds both have: only seed 0, where the variant's curve is
    # 10 above hieratok's at every step; the target is the variant's final 30, which hieratok reaches at step 200 and
    # the variant at 400 -> ratio hieratok / variant = 0.5
    m = g["versus_method"]["stopgrad-shared-context"]
    assert sorted(g["versus_method"]) == ["stopgrad-shared-context"] and m["baseline"] == "hieratok"
    assert [(p["seed"], p["ratio"], p["steps_hieratok"]) for p in m["speedup"]["per_seed"]] == [(0, 0.5, 200.0)]
    assert [p["gfd_cls"]["mean"] for p in m["paired"]] == [10.0, 10.0, 10.0]
    assert "stopgrad-shared-context minus hieratok at 100 / 200 / 400 DiT steps: FD-cls 10.0" in text
    assert "hieratok / stopgrad-shared-context = **0.50x** (one seed, no interval" in text
    # no hieratok DiTs: nothing to compare with
    assert summarize_generation([rec("singlescale", 0, slow), rec("interp", 0, curve)])["versus_method"] == {}
    # the trade-off figure: each arm's tokenizer (finest PSNR over the seeds with a DiT) against its DiT's speed-up
    from hieratok.report import front_figure
    psnr = {("singlescale", 0): 27.0, ("singlescale", 1): 27.2, ("hieratok", 0): 26.0, ("hieratok", 1): 99.0,
            ("stopgrad-shared-context", 0): 27.1, ("stopgrad-shared-context", 1): 27.3}
    tokenizers = [{"arm": a, "seed": seed, "final": {"psnr": v}} for (a, seed), v in psnr.items()]
    fig = front_figure(tokenizers, g)
    arms = {t.name: t for t in fig.data if t.mode == "markers+text"}
    assert sorted(arms) == ["hieratok", "singlescale", "stopgrad-shared-context"]
    # hieratok has a DiT at seed 0 only: its seed-1 tokenizer (99 dB) is not in its point
    assert (arms["hieratok"].x[0], arms["hieratok"].y[0], arms["hieratok"].error_y.array[0]) == (26.0, 2.0, 0.0)
    assert (arms["singlescale"].x[0], arms["singlescale"].y[0]) == (pytest.approx(27.1), 1.0)
    sg, r = arms["stopgrad-shared-context"], g["versus"]["stopgrad-shared-context"]["speedup"]["ratio"]
    assert (sg.x[0], sg.y[0]) == (pytest.approx(27.2), pytest.approx(2 ** 0.5))
    assert sg.error_x.array[0] == pytest.approx(12.7062 * 0.1 * 2 ** 0.5 / 2 ** 0.5, rel=1e-4)  # t * sd / sqrt(2)
    assert (sg.y[0] + sg.error_y.array[0], sg.y[0] - sg.error_y.arrayminus[0]) == (pytest.approx(r["high"]),
                                                                                   pytest.approx(r["low"]))
    seeds = next(t for t in fig.data if t.name == "stopgrad-shared-context, per seed")
    assert list(seeds.x) == [27.1, 27.3] and list(seeds.y) == [1.0, 2.0] and fig.layout.yaxis.type == "log"
    assert front_figure(tokenizers, summarize_generation([rec("singlescale", 0, slow)])) is None
    # ... and its rank correlation with the exact permutation p-value. Here PSNR ranks (singlescale, hieratok,
    # stopgrad) = (2, 1, 3) and speed-up ranks (1, 3, 2): d = (1, -2, 1), rho = 1 - 6 * 6 / (3 * 8) = -0.5; every one
    # of the 3! orderings has |rho| >= 0.5, so p = 1. Four arms in exactly reversed order: rho = -1, p = 2 / 4! (the
    # two perfect orderings).
    from hieratok.report import front_points
    from train.study import front_correlation, front_markdown
    c = front_correlation(front_points(tokenizers, g))
    assert (c["rho"], c["p"], c["arms"], c["exact"]) == (pytest.approx(-0.5), pytest.approx(1.0), 3, True)
    line = front_markdown({"records": tokenizers, "generation_summary": g})[-1]
    assert "**ρ = -0.50** (two-sided permutation p = 1.000, exact over the 3! orderings)" in line
    assert "stopgrad-shared-context 27.20 dB / 1.41x, singlescale 27.10 dB / 1.00x, hieratok 26.00 dB / 2.00x" in line
    four = [{"psnr": {"mean": 27.0 - i}, "speedup": 1.0 + i} for i in range(4)]
    c = front_correlation(four)
    assert (c["rho"], c["p"]) == (pytest.approx(-1.0), pytest.approx(2 / 24))
    assert front_correlation(four[:2]) is None
    assert front_correlation([{**q, "speedup": 1.5} for q in four]) is None  # a constant side has no order


def test_generation_half_trains_a_dit_per_tokenizer_and_records_its_curve(image_folder, tmp_path):  # noqa: F811
    from hieratok.classifier import Classifier, ClassifierConfig
    from train import experiment
    Classifier(ClassifierConfig(image_size=32, width=4)).save_pretrained(tmp_path / "classifier")
    args = ["--data", str(image_folder), "--val", str(image_folder), "--output-dir", str(tmp_path / "runs"),
            "--results", str(tmp_path / "eval" / "experiment"), "--arms", "hieratok", "singlescale", "--seeds", "0",
            "--dit-seeds", "0", "--dit-steps", "4", "--dit-batch-size", "6", "--dit-samples", "12",
            "--dit-set", "dim=32", "depth=1", "heads=2", "--dit-args=--mixed-precision no",
            "--classifier", str(tmp_path / "classifier"), *TINY, "--stage1-args", "--mixed-precision", "no"]
    cut = args.index("--stage1-args")  # one tokenizer's DiT alone first, as one of two processes would
    experiment.main(args[:cut] + ["--dit-arms", "hieratok"] + args[cut:])
    first = json.loads((tmp_path / "eval" / "experiment.json").read_text())["generation"]
    assert [r["arm"] for r in first] == ["hieratok"] and not (tmp_path / "runs" / "dit-singlescale").exists()
    experiment.main(args)
    report = json.loads((tmp_path / "eval" / "experiment.json").read_text())
    gen = report["generation"]
    assert [r for r in gen if r["arm"] == "hieratok"] == first  # kept, not re-trained or re-sampled
    assert sorted((r["arm"], r["seed"]) for r in gen) == [("hieratok", 0), ("singlescale", 0)]
    for r in gen:
        assert [p["step"] for p in r["curve"]] == [1, 2, 4] and r["dit_budget"]["steps"] == 4
        assert r["tokenizer"].endswith(f"{r['arm']}/seed-0/final") and r["config"]["dim"] == 32
        assert all(p["gfd_cls"] > 0 and 0 <= p["class_accuracy"] <= 1 and p["samples"] == 12 for p in r["curve"])
        assert r["hardware"] == "CPU" and r["machine"] and r["threads"] and r["precision"] in ("no", "bf16")
    assert report["generation_summary"]["speedup"]["per_seed"][0]["seed"] == 0
    assert "## Generation" in (tmp_path / "eval" / "experiment.md").read_text()
    from hieratok.explorer import views
    text, fig, front = views.experiment(tmp_path)
    assert "## Generation" in text and {"DiT on hieratok", "DiT on singlescale"} <= {t.name for t in fig.data}
    assert {"hieratok", "singlescale"} <= {t.name for t in front.data}
    assert (tmp_path / "eval" / "experiment-front.html").exists()
    # the spectral intervention: a DiT on single-scale's latent given hieratok's spectrum is not resumed from the
    # plain DiT's folder ...
    hieratok_final = tmp_path / "runs" / "hieratok" / "seed-0" / "final"
    shaped = [a if not a.startswith("--dit-args=") else f"{a} --latent-spectrum-like {hieratok_final}" for a in args]
    shaped[cut:cut] = ["--dit-arms", "singlescale"]
    with pytest.raises(SystemExit, match="latent_spectrum_like"):
        experiment.main(shaped)
    # ... and, in its own folders, recorded as its own row beside the plain DiTs, which stay as they were
    (tmp_path / "runs2").mkdir()
    (tmp_path / "runs2" / "singlescale").symlink_to(tmp_path / "runs" / "singlescale")
    shaped[shaped.index("--output-dir") + 1] = str(tmp_path / "runs2")
    experiment.main(shaped)
    report = json.loads((tmp_path / "eval" / "experiment.json").read_text())
    label = "singlescale (spectrum of hieratok)"
    assert [r for r in report["generation"] if r["arm"] != label] == gen
    r = next(r for r in report["generation"] if r["arm"] == label)
    assert r["tokenizer_arm"] == "singlescale" and r["latent_spectrum"]["like"] == str(hieratok_final)
    assert r["latent_spectrum"]["high_frequency_shaped"] == pytest.approx(r["latent_spectrum"]["high_frequency_target"],
                                                                          abs=1e-4)
    assert [p["step"] for p in r["curve"]] == [1, 2, 4] and not any(q.get("latent_spectrum") for q in gen)
    assert r["latent_channels"] is None and r["latent_covariance"] is None
    g = report["generation_summary"]
    assert g["versus"][label]["speedup"]["per_seed"][0]["seed"] == 0 and label in g["versus_method"]
    from hieratok.report import front_points
    assert label not in {q["arm"] for q in front_points(report["records"], g)}  # no tokenizer of its own
    from train.study import dit_label
    assert dit_label("hieratok", "elsewhere/tok") == "hieratok (spectrum of elsewhere/tok)"
    assert dit_label("hieratok", channels_like="runs/x/singlescale/seed-2/final") == (
        "hieratok (channels of singlescale)")
    assert experiment.dit_shaping(experiment.parse_args(
        ["--data", "x", "--val", "y", "--output-dir", "z", "--dit-args=--latent-channels-like a --steps 3"])) == {
        "latent_spectrum_like": None, "latent_channels_like": "a", "latent_covariance_like": None}
    assert dit_label("singlescale", covariance_like="runs/x/hieratok/seed-0/final") == (
        "singlescale (covariance of hieratok)")
    # another budget in the same folders is refused, not resumed or recorded as this one
    other = list(args)
    other[other.index("--steps") + 1] = "6"
    with pytest.raises(SystemExit, match="was started with"):
        experiment.main(other)
    with pytest.raises(SystemExit, match="needs a classifier"):
        experiment.main([a if a != str(tmp_path / "classifier") else "none" for a in args])


def test_bad_seeds_are_refused():
    from train import experiment
    with pytest.raises(SystemExit):
        experiment.parse_args(["--data", "x", "--val", "y", "--output-dir", "z", "--seeds", "1", "1"])


def test_dit_arms_take_any_arm_and_refuse_unknown_ones():
    from train import experiment
    base = ["--data", "x", "--val", "y", "--output-dir", "z", "--dit-seeds", "0"]
    assert experiment.parse_args(base).dit_arms == ["hieratok", "singlescale"]
    assert experiment.parse_args([*base, "--dit-arms", "stopgrad-shared-context"]).dit_arms == [
        "stopgrad-shared-context"]
    with pytest.raises(SystemExit):
        experiment.parse_args([*base, "--dit-arms", "no-such-arm"])
