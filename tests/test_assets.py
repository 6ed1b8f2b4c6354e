"""The shipped checkpoints load with from_pretrained and still do what they did when they were shipped."""
import json
from pathlib import Path

import pytest
import torch

from hieratok import DiT, HieraTok, generate
from hieratok.classifier import Classifier
from hieratok.metrics import psnr
from train.ship import FAMILIES, SHIPPED, fixed_image, tokenizer_of

ASSETS = Path(__file__).resolve().parents[1] / "assets"
EXPECTED = ASSETS / "expected.json"
if not EXPECTED.exists():
    pytest.skip("no shipped weights in assets/ yet (train/ship.py records assets/expected.json)",
                allow_module_level=True)
expected = json.loads(EXPECTED.read_text())


SHIPPED_HERE = sorted(n for n in SHIPPED if (ASSETS / n).exists())


def test_every_shipped_checkpoint_is_recorded_and_small():
    assert set(expected) == set(SHIPPED_HERE) and set(FAMILIES["cifar10"]) <= set(SHIPPED_HERE)
    total = sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file())
    assert total < 150e6, f"assets/ holds {total / 1e6:.1f} MB; the budget is 150 MB"


@pytest.mark.parametrize("name", [n for n in SHIPPED_HERE if SHIPPED[n][0] is HieraTok])
def test_tokenizer_reconstructs_the_fixed_image_at_its_recorded_psnr(name):
    tok = HieraTok.from_pretrained(ASSETS / name)
    assert tok.latent_mean.dtype == torch.float32
    x = fixed_image(tok.config.image_size)[None]
    value = float(psnr(tok.reconstruct(x), x)[0])
    assert abs(value - expected[name]["psnr_fixed_image"]) < 0.05, value
    assert value > 12  # a trained tokenizer (random weights give ~5 dB); the synthetic image is off-distribution


@pytest.mark.parametrize("name", [n for n in SHIPPED_HERE if SHIPPED[n][0] is DiT])
def test_dit_samples_match_their_recorded_statistics(name):
    tok = HieraTok.from_pretrained(tokenizer_of(name, ASSETS))
    assert tok.has_latent_stats
    z, out = generate(DiT.from_pretrained(ASSETS / name), tok, [3, 7], steps=4, guidance=2.0, seed=0)
    rec = expected[name]
    assert abs(float(z.mean()) - rec["latent_mean"]) < 1e-3 and abs(float(z.std()) - rec["latent_std"]) < 1e-3
    size = tok.config.image_size
    assert out.reconstruction.shape == (2, 3, size, size)


@pytest.mark.parametrize("name", [n for n in SHIPPED_HERE if SHIPPED[n][0] is Classifier])
def test_classifier_logits_on_the_fixed_image(name):
    clf = Classifier.from_pretrained(ASSETS / name)
    assert len(clf.config.class_names) == 10 and not any(n.startswith("n0") for n in clf.config.class_names)
    x = fixed_image(clf.config.image_size)[None]
    torch.testing.assert_close(clf(x)[0], torch.tensor(expected[name]["logits_fixed_image"]), rtol=1e-3, atol=1e-3)


def test_the_published_experiment_table_is_what_its_results_file_says():
    from train.study import load_results, markdown
    results = ASSETS / "eval" / "experiment.json"
    if not results.exists():
        pytest.skip("no experiment results published yet")
    report = load_results(results)
    assert report["records"] and all(r.get("hardware") for r in report["records"])  # step times need a device
    # regenerate with `train/experiment.py ... --results assets/eval/experiment --report-only` after any change
    assert (ASSETS / "eval" / "experiment.md").read_text() == markdown(report)


@pytest.mark.parametrize("name", ["cifar10", "imagenette128"])
def test_the_published_evaluation_tables_are_what_their_results_files_say(name):
    from hieratok.report import evaluation_markdown
    results = ASSETS / "eval" / f"{name}.json"
    if not results.exists():
        pytest.skip(f"no {results}")
    # regenerate: python -c "..." rendering hieratok.report.evaluation_markdown(json) after any renderer change
    assert (ASSETS / "eval" / f"{name}.md").read_text() == evaluation_markdown(json.loads(results.read_text()))


@pytest.mark.parametrize("name", ["cifar10", "imagenette128"])
def test_each_family_card_carries_its_evaluation_table_and_its_notes_file(name):
    """The card is written by train/model_card.py from eval/<family>.json and notes/<family>.md: a section edited
    into the card alone is lost at its next rewrite (edit the notes file, then `model_card.py --update-evaluation`)."""
    from hieratok.report import evaluation_markdown
    card = (ASSETS / "cards" / f"{name}.md").read_text()
    table = evaluation_markdown(json.loads((ASSETS / "eval" / f"{name}.json").read_text())).split("\n", 1)[1]
    assert table.strip() in card
    assert card.rstrip().endswith((ASSETS / "notes" / f"{name}.md").read_text().strip())


def test_the_cards_commands_hold_no_machine_paths():
    import re
    for card in sorted((ASSETS / "cards").glob("*.md")) + sorted(ASSETS.glob("*/README.md")):
        for line in card.read_text().splitlines():
            if line.startswith("python ") or line.startswith("`train/"):
                assert not re.search(r"[ =`]/(work|tmp|root|home)/", line), f"{card}: {line[:120]}"


def test_every_published_results_file_is_standard_json():
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    for path in sorted(ASSETS.rglob("*.json")):
        json.loads(path.read_text(), parse_constant=refuse)  # NaN / Infinity: what other parsers refuse
