"""Publish model sets to a Hugging Face Hub model repo, each checkpoint with a real model card.

    python train/publish.py YOUR_NAME/hieratok-explorer-weights                    # both model sets, upload
    python train/publish.py YOUR_NAME/hieratok-explorer-weights --family imagenette128 --stage build/weights --dry-run
    python train/publish.py --write-cards          # (re)write the cards into assets/<checkpoint>/README.md only

The staged tree has the layout of `assets/` (so `python app/main.py --assets YOUR_NAME/...` and
`app/deploy.py --models YOUR_NAME/...` serve it): per model set its checkpoints (`hieratok-`, `singlescale-`,
`dit-...-`, `classifier-<set>`), its latent map, its evaluation files (`eval/<set>.json`, `.md`) and its family card
(`cards/<set>.md`: every command, step count and wall time), plus the examples. Every checkpoint folder gets a
README.md -- what it is, its metrics from the evaluation JSON with their 95% intervals, how it was trained (its rows
of the family card), the license, links to the project and the paper -- and the repo a README listing them.
The upload is `HfApi.upload_folder` (LFS/Xet for the weights); offline it stops with the `hf upload` command.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from hieratok import DiT, HieraTok
from hieratok.classifier import Classifier
from hieratok.hub import PAIRED_TOKENIZER, paired_tokenizer, upload_tree
from hieratok.report import fmt, percent

ROOT = Path(__file__).resolve().parents[1]
PAPER = "https://arxiv.org/abs/2509.23736"
DATASETS = {"cifar10": ("CIFAR-10", "cifar10", "32 x 32"), "imagenette128": ("Imagenette", "frgfm/imagenette",
                                                                             "128 x 128")}
KINDS = {"hieratok": (HieraTok, "the multi-scale tokenizer"), "singlescale": (HieraTok, "the single-scale baseline"),
         "hieratok-paper": (HieraTok, "the multi-scale tokenizer of the paper's recipe (the evaluation's "
                                      "hieratok-paper; the app does not serve it)"),
         "dit-hieratok": (DiT, "a class-conditional DiT on the multi-scale tokenizer's latent"),
         "dit-singlescale": (DiT, "a class-conditional DiT on the single-scale baseline's latent"),
         "classifier": (Classifier, "the classifier behind FD-cls and the samples' class accuracy")}


def training_rows(card: str, name: str) -> list[str]:
    """The family card's table rows of one checkpoint (its run, and its continuation runs below it)."""
    lines = card.splitlines()
    header = next((i for i, line in enumerate(lines) if line.startswith("| checkpoint |")), None)
    if header is None:
        return []
    rows, mine = lines[header:header + 2], False
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        first = line.split("|")[1].strip()
        mine = first == name if first else mine
        if mine:
            rows.append(line)
    return rows if len(rows) > 2 else []


def metrics(kind: str, name: str, report: dict) -> list[str]:
    """Markdown lines of one checkpoint's numbers in an evaluation report (train/evaluate.py's JSON)."""
    where = f"{report['images']:,} images of {report['data']}"
    if kind in ("hieratok", "hieratok-paper", "singlescale"):
        t = report.get("tokenizers", {}).get(kind)
        if not t:
            return []
        lines = [f"Reconstruction on {where} (mean ± 95% interval over images):", "",
                 "| scale | pixels | PSNR (dB) | SSIM |", "|---|---:|---:|---:|"]
        lines += [f"| {s} | {m['pixels']} | {fmt(m['psnr'])} | {fmt(m['ssim'], 4)} |" for s, m in t["scales"].items()]
        if t.get("finest_psnr_minus_linear"):
            d = t["finest_psnr_minus_linear"]
            lines += ["", f"Finest PSNR minus the linear codec of the same latent size ({d['reference']}), paired per "
                          f"image: {fmt(d)} dB."]
        if t.get("finest_psnr_minus_baseline"):
            d = t["finest_psnr_minus_baseline"]
            lines += ["", f"Finest PSNR minus the {d['reference']} tokenizer's, paired per image: {fmt(d)} dB."]
        if t.get("rfd") is not None:
            lines += ["", f"r{report['notes'].get('fd_name') or 'FD'}: {t['rfd']:.2f} ({report['notes']['fd']})."]
        return lines
    if kind.startswith("dit-"):
        gens = [g for g in report.get("generators", {}).values() if Path(g["dit"]).name == name]
        if not gens:
            return []
        lines = [f"Samples against {where} (Heun sampler):", "",
                 "| guidance | steps | samples | gFD | class accuracy |", "|---:|---:|---:|---:|---:|"]
        for g in sorted(gens, key=lambda g: g["guidance"]):
            acc = g.get("class_accuracy")
            acc = f"{fmt(percent(acc), 1)}%" if acc else "—"
            lines.append(f"| {g['guidance']:g} | {g['sampler_steps']} | {g['samples']} | {fmt(g.get('gfd'), 1)} | "
                         f"{acc} |")
        return lines + ["", f"gFD is {report['notes']['fd']}."]
    c = report.get("classifier")
    return [f"Accuracy on {where}: {fmt(percent(c['accuracy']), 1)}%."] if c else []


def checkpoint_card(folder: Path, family: str, report: dict, family_card: str, license_id: str,
                    project: str | None) -> str:
    """The README.md of one checkpoint folder (named `<kind>-<family>`)."""
    name = folder.name
    kind = name[: -len(family) - 1]
    cls, what = KINDS[kind]
    dataset, hub_dataset, size = DATASETS[family]
    params = f"{sum(p.numel() for p in cls.from_pretrained(folder).parameters()) / 1e6:.2f}M parameters"
    tag = {HieraTok: "image-tokenizer", DiT: "diffusion-transformer", Classifier: "image-classification"}[cls]
    front = ["---", "library_name: hieratok", f"license: {license_id}", "tags:", "- hieratok", f"- {tag}",
             "datasets:", f"- {hub_dataset}", "---", ""]
    body = [f"# {name}", "",
            f"{what[0].upper() + what[1:]}, {dataset} at {size}, trained by the HieraTok Explorer project's own "
            f"`train/` scripts ({params}). HieraTok: Chen et al., *HieraTok: Multi-Scale Visual "
            f"Tokenizer Improves Image Reconstruction and Generation*, [arXiv 2509.23736]({PAPER}). "
            + (f"Project: {project}." if project else "Project: HieraTok Explorer (the code that trained and "
               "serves these weights)."), "",
            "```python", f"from hieratok import {cls.__name__}" if cls is not Classifier else
            "from hieratok.classifier import Classifier",
            f'model = {cls.__name__}.from_pretrained("REPO/{name}")   # or this folder', "```", "",
            *([f"It generates in the latent of the tokenizer in its `{PAIRED_TOKENIZER}/` subfolder, the one it was "
               "trained on (`HieraTok.from_pretrained(\"REPO/" + name + f"\", subfolder=\"{PAIRED_TOKENIZER}\")`); "
               "the model set's own tokenizer was retrained after it, and a DiT fits only the latent it learned.", ""]
              if paired_tokenizer(folder) else []),
            "## Evaluation", "", *(metrics(kind, name, report) or ["Not in the evaluation report."]), "",
            "## Training", ""]
    rows = training_rows(family_card, name)
    link = f"[cards/{family}.md](../cards/{family}.md)"
    body += [*rows, "", f"Every command, the hardware and the full evaluation: {link}."] if rows else [f"See {link}."]
    body += ["", "## License", "",
             f"`{license_id}`: the project has not chosen a license for its weights; the training images' own terms "
             f"({dataset}) apply to what was learned from them."]
    return "\n".join(front + body) + "\n"


def family_inputs(assets: Path, family: str) -> tuple[dict, str, list[str]]:
    """A model set's evaluation report, family card and checkpoint folder names."""
    report_path, card_path = assets / "eval" / f"{family}.json", assets / "cards" / f"{family}.md"
    if not report_path.exists() or not card_path.exists():
        raise SystemExit(f"error: {family}: the cards need {report_path} and {card_path}")
    names = [f"{kind}-{family}" for kind in KINDS if (assets / f"{kind}-{family}").is_dir()]
    return json.loads(report_path.read_text()), card_path.read_text(), names


def write_cards(assets: Path, family: str, license_id: str, project: str | None) -> None:
    report, card, names = family_inputs(assets, family)
    for name in names:
        (assets / name / "README.md").write_text(checkpoint_card(assets / name, family, report, card, license_id,
                                                                 project))
        print(f"wrote {assets / name / 'README.md'}")


def stage(dest: Path, assets: Path, families: list[str], license_id: str, project: str | None) -> list[Path]:
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"error: {dest} is not empty; stage into a new folder")
    dest.mkdir(parents=True, exist_ok=True)
    index = ["---", "library_name: hieratok", f"license: {license_id}", "---", "", "# HieraTok Explorer weights", "",
             f"Model sets of the HieraTok Explorer project ([arXiv 2509.23736]({PAPER})), in the layout its app "
             "serves (`python app/main.py --assets THIS_REPO`).", "", "| checkpoint | model set |", "|---|---|"]
    for family in families:
        report, card, names = family_inputs(assets, family)
        for name in names:
            shutil.copytree(assets / name, dest / name, ignore=shutil.ignore_patterns("README.md"))
            (dest / name / "README.md").write_text(checkpoint_card(assets / name, family, report, card, license_id,
                                                                   project))
            index.append(f"| [{name}]({name}) | {DATASETS[family][0]} |")
        if (assets / f"latent-map-{family}").is_dir():
            shutil.copytree(assets / f"latent-map-{family}", dest / f"latent-map-{family}")
        for src in (assets / "eval" / f"{family}.json", assets / "eval" / f"{family}.md",
                    assets / "cards" / f"{family}.md"):
            (dest / src.parent.name).mkdir(exist_ok=True)
            shutil.copy2(src, dest / src.parent.name / src.name)
    if (assets / "examples").is_dir():
        shutil.copytree(assets / "examples", dest / "examples")
    (dest / "README.md").write_text("\n".join(index) + "\n")
    return sorted(p for p in dest.rglob("*") if p.is_file())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repo_id", nargs="?", help="the Hub model repo, ORG/NAME")
    ap.add_argument("--write-cards", action="store_true",
                    help="write each checkpoint's card into its folder under --assets; stage and upload nothing")
    ap.add_argument("--family", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--assets", default=str(ROOT / "assets"))
    ap.add_argument("--stage", default=None, help="stage into this folder (default: a temporary one)")
    ap.add_argument("--dry-run", action="store_true", help="stage and list the files, upload nothing")
    ap.add_argument("--license", default="other", help="license id in the cards (the project has chosen none)")
    ap.add_argument("--project", default=None, help="the project's URL, linked from every card")
    ap.add_argument("--private", action="store_true")
    ap.add_argument("--token", default=None)
    args = ap.parse_args(argv)
    if args.write_cards:
        for family in args.family:
            write_cards(Path(args.assets), family, args.license, args.project)
        return
    if not args.repo_id or args.repo_id.count("/") != 1:
        raise SystemExit(f"error: the model repo must be given as ORG/NAME, got {args.repo_id!r}")
    dest = Path(args.stage) if args.stage else Path(tempfile.mkdtemp(prefix="hieratok-weights-"))
    files = stage(dest, Path(args.assets), args.family, args.license, args.project)
    for p in files:
        print(f"{p.stat().st_size:>12,d}  {p.relative_to(dest)}")
    print(f"staged {len(files)} files, {sum(p.stat().st_size for p in files) / 2**20:.1f} MiB, in {dest}")
    if not args.dry_run:
        print(upload_tree(dest, args.repo_id, "model", private=args.private, token=args.token,
                          message="HieraTok Explorer weights (train/publish.py)"))


if __name__ == "__main__":
    main()
