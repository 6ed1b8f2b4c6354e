import json

import pytest
import torch

from hieratok import CheckpointError, DiT, HieraTok, dit_config, tokenizer_config

SMALL = dict(enc_dim=32, enc_depth=1, enc_heads=2, dec_dim=48, dec_depth=1, dec_heads=3)


@pytest.fixture
def saved(tmp_path):
    model = HieraTok(tokenizer_config("cifar10", **SMALL)).eval()
    model.set_latent_stats(torch.randn(4), torch.rand(4) + 0.5, count=123)
    model.save_pretrained(tmp_path / "tok")
    return model, tmp_path / "tok"


def test_save_load_round_trip_gives_identical_outputs(saved):
    model, path = saved
    assert {p.name for p in path.iterdir()} >= {"config.json", "model.safetensors"}
    loaded = HieraTok.from_pretrained(path)
    assert loaded.config == model.config
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    for a, b in zip(model.decode(model.encode(x)).images, loaded.decode(loaded.encode(x)).images):
        assert torch.equal(a, b)
    assert loaded.has_latent_stats and torch.equal(loaded.latent_mean, model.latent_mean)
    assert int(loaded.latent_stats_count) == 123


def test_half_precision_storage_upcasts_on_load(tmp_path):
    dit = DiT(dit_config("cifar10", dim=64, depth=1, heads=2))
    dit.save_pretrained(tmp_path / "dit", dtype=torch.float16)
    loaded = DiT.from_pretrained(tmp_path / "dit")
    assert loaded.x_embed.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.x_embed.weight, dit.x_embed.weight, rtol=1e-3, atol=1e-3)


def test_truncated_weights_name_the_file(saved):
    _, path = saved
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated or corrupt"):
        HieraTok.from_pretrained(path)


def test_mismatched_config_names_both_files(saved):
    _, path = saved
    cfg = json.loads((path / "config.json").read_text())
    cfg["dec_dim"] = 96
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"does not match .*config\.json.*shape mismatches"):
        HieraTok.from_pretrained(path)


def test_config_with_different_scales_reports_missing_or_unexpected_keys(saved):
    _, path = saved
    cfg = json.loads((path / "config.json").read_text())
    cfg["scales"] = [16]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unexpected keys .*downsampler"):
        HieraTok.from_pretrained(path)


def test_unknown_config_key_and_missing_files(saved, tmp_path):
    _, path = saved
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "mystery": 1}))
    with pytest.raises(CheckpointError, match="mystery"):
        HieraTok.from_pretrained(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a readable JSON"):
        HieraTok.from_pretrained(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json: missing"):
        HieraTok.from_pretrained(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        HieraTok.from_pretrained(tmp_path / "nowhere")


def test_dit_checkpoint_is_not_a_tokenizer(tmp_path):
    DiT(dit_config("cifar10", dim=64, depth=1, heads=2)).save_pretrained(tmp_path / "dit")
    with pytest.raises(CheckpointError):
        HieraTok.from_pretrained(tmp_path / "dit")


def test_the_package_builds_as_a_wheel_and_imports_from_outside_the_repository(tmp_path):
    """`pip install hieratok` from this repository: a wheel with the library alone, usable from any folder."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(root)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("hieratok-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"hieratok/tokenizer.py", "hieratok/training/run.py", "hieratok/explorer/ui.py"} <= set(names)
    assert not any(n.startswith(("app/", "train/", "tests/", "assets/")) for n in names)
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    code = ("import hieratok, torch; from hieratok import HieraTok, tokenizer_config; "
            "m = HieraTok(tokenizer_config('cifar10', enc_dim=32, enc_heads=2, dec_dim=48, dec_heads=3)); "
            "print(hieratok.__file__, tuple(m.reconstruct(torch.zeros(1, 3, 32, 32)).shape))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(tmp_path / "site")}, check=True).stdout
    assert str(tmp_path / "site") in out and "(1, 3, 32, 32)" in out
    # the repository's scripts run from any folder on the installed package alone: no sys.path manipulation
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path / "site")}
    for script in ("app/main.py", "train/stage1.py"):
        proc = subprocess.run([sys.executable, str(root / script), "--help"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300, env=env)
        assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-2000:]
    proc = subprocess.run([sys.executable, "-m", "hieratok.explorer", "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0 and "--assets" in proc.stdout, proc.stderr[-2000:]


def test_a_dit_folder_ships_the_tokenizer_it_was_trained_on(saved, tmp_path):
    """`<dit>/tokenizer` (hieratok.hub.paired_tokenizer) loads with subfolder=, and the evaluation scripts decode the
    DiT's samples with it unless told otherwise."""
    from hieratok.hub import paired_tokenizer
    from train import evaluate, generation
    model, _ = saved
    dit = tmp_path / "dit"
    DiT(dit_config("cifar10", dim=64, depth=1, heads=2)).save_pretrained(dit)
    assert paired_tokenizer(dit) is None
    model.save_pretrained(dit / "tokenizer")
    assert paired_tokenizer(dit) == dit / "tokenizer"
    loaded = HieraTok.from_pretrained(dit, subfolder="tokenizer")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    args = generation.parse_args(["--data", "x", "--classifier", "c", "--dit", f"a={dit}", "--output", "o"])
    assert args.tokenizers == {"a": str(dit / "tokenizer")}
    args = generation.parse_args(["--data", "x", "--classifier", "c", "--dit", f"a={dit}", "--tokenizer", "a=t",
                                  "--output", "o"])
    assert args.tokenizers == {"a": "t"}  # an explicit tokenizer wins
    pick = evaluate.dit_tokenizers({"a": str(dit), "b": "elsewhere"}, {"a": "new", "b": "tb"}, {})
    assert pick == {"a": str(dit / "tokenizer"), "b": "tb"}  # its own over the same-named --tokenizer
    assert evaluate.dit_tokenizers({"a": str(dit)}, {"a": "new"}, {"a": "t"})["a"] == "t"  # --dit-tokenizer wins
