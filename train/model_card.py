"""Write a model family's card, assets/cards/<family>.md, from the files the runs and the evaluation wrote (no
number typed in), with the hand-written notes assets/notes/<family>.md appended.

    python train/model_card.py --family cifar10 --runs runs --assets assets --eval assets/eval/cifar10.json
    python train/model_card.py --family imagenette128 --runs runs --assets assets --eval assets/eval/imagenette128.json
    # after a new evaluation, where the run folders are gone: keep the card's training part, rewrite the rest
    python train/model_card.py --family cifar10 --update-evaluation
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from hieratok import HieraTok
from hieratok.cost import classifier_gflops, cost_of, dit_gflops
from hieratok.report import evaluation_markdown as markdown
from hieratok.training.checkpoint import EXPORT_STATE_FILE
from hieratok.training.distributed import cpu_name
from hieratok.training.distributed import run_hardware as hardware

ROOT = Path(__file__).resolve().parents[1]

RUNS = {  # family -> (checkpoint shipped, run folders that made it, in order)
    "cifar10": [
        # the recipe as phases on the single-scale tokenizer (its runs are singlescale-cifar10's)
        ("hieratok-cifar10", ["hieratok-warm-coarse", "hieratok-warm-s2"]),
        ("singlescale-cifar10", ["singlescale-s1", "singlescale-s2"]),
        # the paper recipe's tokenizer (the evaluation's hieratok-paper; the HieraTok DiT's own tokenizer)
        ("hieratok-paper-cifar10", ["hieratok-s1", "hieratok-s2"]),
        ("dit-hieratok-cifar10", ["dit-hieratok", "dit-hieratok-long"]),
        ("dit-singlescale-cifar10", ["dit-singlescale", "dit-singlescale-long"]),
        ("classifier-cifar10", ["classifier"]),
    ],
    "imagenette128": [
        ("hieratok-imagenette128", ["hieratok-imagenette128-context", "hieratok-imagenette128-context-coarse"]),
        # the paper recipe's tokenizer (the evaluation's hieratok-paper; the app does not serve it)
        ("hieratok-paper-imagenette128", ["hieratok-imagenette128-s1", "hieratok-imagenette128-s2rec"]),
        ("singlescale-imagenette128", ["singlescale-imagenette128-s1", "singlescale-imagenette128-s2rec"]),
        # RUN@STEP: the run's export at that step (exports/step-N), shipped while the run goes on
        ("dit-hieratok-imagenette128", ["dit-hieratok-22k@5500"]),
        ("dit-singlescale-imagenette128", ["dit-singlescale-22k@5500"]),
        ("classifier-imagenette128", ["classifier-imagenette128"]),
    ],
}
TITLES = {"cifar10": ("CIFAR-10, 32 x 32", "`../shared/data/cifar10/train` (50,000 images)",
                      "train/reproduce_cifar10.sh"),
          "imagenette128": ("Imagenette photographs, 128 x 128", "`../shared/data/imagenette/train` (9,469 "
                            "photographs of ten ImageNet classes)", "train/reproduce_imagenette.sh")}
GPU_SCRIPTS = {"imagenette128": "train/reproduce_imagenette_gpu.sh"}


PATH_MAP: dict[str, str] = {}  # --path-map: a training machine's folders -> what a reader passes instead


def portable(text: str) -> str:
    """Paths in a command as a reader can use them: `--path-map` prefixes replaced (e.g. the folders a GPU machine
    unpacked the data into), then relative to the repository, and a machine's own runs folder (e.g. /work/runs/gpu/x)
    as runs/... (`NAME=PATH` arguments too)."""
    def one(token: str) -> str:
        name, sep, path = token.rpartition("=") if "=/" in token else ("", "", token)
        for old, new in PATH_MAP.items():
            if path == old or path.startswith(old.rstrip("/") + "/"):
                path = new + path[len(old.rstrip("/")):]
        if not path.startswith("/"):
            return name + sep + path
        try:
            path = str(Path(path).resolve().relative_to(ROOT))
        except ValueError:
            i = path.rfind("/runs/")
            path = "runs/" + path[i + len("/runs/"):] if i >= 0 else path
        return name + sep + path
    return " ".join(one(t) for t in text.split(" "))


def run_folder(entry: str) -> tuple[str, int | None]:
    """A RUNS entry as (run folder, export step): `RUN` is the run's final export, `RUN@STEP` its exports/step-N."""
    folder, _, step = entry.partition("@")
    return folder, int(step) if step else None


def export_dir(runs: Path, entry: str) -> Path:
    """The from_pretrained folder a RUNS entry ships: RUN/final, or RUN/exports/step-N for RUN@N."""
    folder, step = run_folder(entry)
    return runs / folder / ("final" if step is None else f"exports/step-{step:08d}")


def run_summary(runs: Path, entry: str) -> dict:
    """The counters the table shows: the finished run's summary.json, or for RUN@N the export's train_state.json
    (hieratok.training.checkpoint.EXPORT_STATE_FILE)."""
    folder, step = run_folder(entry)
    path = runs / folder / "summary.json" if step is None else export_dir(runs, entry) / EXPORT_STATE_FILE
    if not path.exists():
        raise SystemExit(f"error: {path} does not exist (" + ("the run has not finished" if step is None else
                         "an export written before exports recorded their step counters") + ")")
    return json.loads(path.read_text())


def device(cfg: dict) -> str:
    """Where a run trained, for the card: `run_hardware`'s 'GPU <name>', or 'CPU' with the CPU's name and the
    precision its run_config.json recorded, where it did (e.g. 'CPU (AMD EPYC, fp32)')."""
    where = hardware(cfg)
    if where != "CPU":
        return where
    used = (cfg.get("mixed_precision") or {}).get("used")
    detail = [d for d in (cfg.get("hardware"), {"no": "fp32"}.get(used, used)) if d]
    return f"CPU ({', '.join(detail)})" if detail else "CPU"


def command_line(cfg: dict, folder: str | None = None) -> str:
    """The run's command as a reader can repeat it; with `folder` (the run's folder under runs/, as the card and the
    shipping step name it), written into that folder, and a note where the run itself wrote elsewhere."""
    args = dict(cfg["args"])
    moved = None
    if folder and args.get("output_dir") and Path(args["output_dir"]).name != folder:
        moved, args["output_dir"] = args["output_dir"], f"runs/{folder}"
    script = {"stage1": "train/stage1.py", "stage2": "train/stage2.py", "dit": "train/dit.py",
              "classifier": "train/classifier.py"}[cfg["script"]]
    keep = ["preset", "variant", "init_from", "warm_start", "train", "tokenizer", "latent_cache", "data", "output_dir",
            "steps", "batch_size", "lr", "warmup", "ema_decay", "gan_start", "gan_weight", "image_size", "time_limit"]
    if args.get("init_from"):  # the architecture (and so the preset) comes from the checkpoint
        keep.remove("preset")
    if args.get("train") == "all":  # stage 1's default: every part learns
        keep.remove("train")
    parts = [f"--{k.replace('_', '-')} {args[k]}" for k in keep if args.get(k) not in (None, [], "")]
    if args.get("export_at") not in (None, [], "[]"):
        parts.append("--export-at " + " ".join(map(str, args["export_at"])))
    if args.get("set"):
        parts.append("--set " + " ".join(f"'{kv}'" for kv in args["set"]))
    line = portable(f"python {script} " + " ".join(parts))
    last = (cfg.get("resumes") or [{}])[-1].get("args", {}).get("steps", args["steps"])
    if last != args["steps"]:  # a run ended early by resuming it with fewer steps: its schedule is the planned one
        line += (f"\n# stopped at step {last}: resumed with --steps {last}, so the learning-rate schedule is the "
                 f"{args['steps']}-step one")
    if moved:
        line += f"\n# (this run wrote to {portable(moved)}; its folder was then renamed runs/{folder})"
    return line


def targets(report: dict, family: str):
    toks, gens = report.get("tokenizers", {}), report.get("generators", {})
    finest = toks.get("hieratok", {}).get("scales", {}).get("16x16", {}).get("psnr", {}).get("mean")
    acc = report.get("classifier", {}).get("accuracy", {}).get("mean")
    gen_acc = (gens.get("hieratok", {}).get("class_accuracy") or {}).get("mean")
    paired = (toks.get("hieratok", {}).get("finest_psnr_minus_baseline") or {})
    vs_single = paired.get("mean") if paired.get("reference") == "singlescale" else None
    if family == "cifar10":
        return [("HieraTok finest-scale PSNR >= 28 dB (C = 4)", finest, 28.0),
                ("HieraTok finest PSNR >= single-scale - 0.3 dB (paired per image)", vs_single, -0.3),
                ("classifier test accuracy >= 85%", None if acc is None else 100 * acc, 85.0),
                ("HieraTok DiT sample class accuracy >= 40%", None if gen_acc is None else 100 * gen_acc, 40.0)]
    linear = next((t for n, t in toks.items() if n.startswith("linear-pca")), {})
    ref = linear.get("scales", {}).get("16x16", {}).get("psnr", {}).get("mean")
    coarse = [t["psnr"]["mean"] for k, t in toks.get("hieratok", {}).get("scales", {}).items() if k != "16x16"]
    return [("HieraTok finest PSNR >= linear reference + 1 dB",
             None if finest is None or ref is None else finest - ref, 1.0),
            ("HieraTok finest PSNR >= single-scale - 0.3 dB (paired per image)", vs_single, -0.3),
            ("every coarser HieraTok scale >= 21 dB", min(coarse) if coarse else None, 21.0),
            ("classifier val accuracy >= 75%", None if acc is None else 100 * acc, 75.0),
            (f"HieraTok DiT sample class accuracy >= 40% (guidance {gens.get('hieratok', {}).get('guidance')}, the "
             "app's default)", None if gen_acc is None else 100 * gen_acc, 40.0)]


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--family", default="cifar10", choices=sorted(RUNS))
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--assets", default="assets")
    ap.add_argument("--eval", default=None, help="default: assets/eval/<family>.json")
    ap.add_argument("--cpu", default=None, help="the CPU the runs trained on (default: this machine's)")
    ap.add_argument("--path-map", nargs="*", default=[], metavar="FROM=TO",
                    help="write a training machine's folder FROM as TO in the commands (e.g. /tmp/d=../shared/data/"
                         "imagenette, where the GPU recipe unpacked the data)")
    ap.add_argument("--update-evaluation", action="store_true",
                    help="keep the existing card's training part (table, commands: no run folders needed) and "
                         "rewrite its evaluation, targets and notes from --eval")
    ap.add_argument("--update-runs", nargs="+", default=None, metavar="CHECKPOINT",
                    help="as --update-evaluation, and rewrite these checkpoints' table rows and commands from their "
                         "run folders under --runs (a checkpoint retrained after the others' runs are gone)")
    return ap.parse_args(argv)


def checkpoint_rows(name: str, folders: list[str], runs: Path, assets: Path, configs: dict,
                    kept: dict | None = None) -> tuple[list[str], list[str]]:
    """One shipped checkpoint's training-table rows and command entries, from its run folders; an entry without a
    run folder takes its run's cells (run, hardware, steps, images, wall time) and command from `kept` (entry ->
    (row cells, command lines), from the card: a finished checkpoint's earlier run whose folder is gone)."""
    path = assets / name
    if not path.exists():
        return [f"| {name} | not shipped yet | | | | | | | | |"], []
    if name.endswith("/tokenizer") or ("dit" not in name and "classifier" not in name):
        cost = cost_of(HieraTok.from_pretrained(path).config)
        params, gflops, tokens = cost.params, f"{cost.gflops:.3f}", str(cost.decoder_tokens)
    else:
        from hieratok import DiT
        from hieratok.classifier import Classifier
        model = (DiT if "dit" in name else Classifier).from_pretrained(path)
        gflops = (dit_gflops if "dit" in name else classifier_gflops)(model.config)
        params, gflops, tokens = sum(p.numel() for p in model.parameters()), f"{gflops:.3f}", ""
    lead = [name, f"{params / 1e6:.2f}M", gflops, tokens], f"{size_mb(path):.1f} MB"
    rows, commands = [], []
    for i, entry in enumerate(folders):
        first, size = lead if i == 0 else (["", "", "", ""], "")   # the checkpoint's own cells on its first row
        if entry not in configs:   # the run's own cells (run ... wall time) and command as the card has them
            cells, command = kept[entry]
            rows.append(f"| {' | '.join(first)} |{'|'.join(cells[5:10])}| {size} |")
            commands.append("\n".join(command))
            continue
        summary, cfg = run_summary(runs, entry), configs[entry]
        folder, at = run_folder(entry)
        command = command_line(cfg, folder)
        if at is not None:
            command += (f"\n# shipped: its EMA export at step {at} (runs/{folder}/exports/step-{at:08d}), the run "
                        f"planned for {cfg['args']['steps']} steps")
        commands.append(f"# {entry} ({device(cfg)})\n{command}")
        steps = str(summary["step"])
        if summary.get("stopped_by_time_limit_at"):
            steps = f"{steps} of {cfg['args']['steps']} (time limit)"
        if at is not None:
            steps = f"{steps} of {cfg['args']['steps']} (export)"
        rows.append(f"| {' | '.join(first)} | {folder} | {device(cfg)} | {steps} | {summary['images_seen']:,} | "
                    f"{summary['wall_s'] / 60:.1f} min | {size} |")
    return rows, commands


def run_configs(runs: Path, family: str, names: list[str] | None = None) -> dict:
    return {f: json.loads((runs / run_folder(f)[0] / "run_config.json").read_text()) for n, fs in RUNS[family]
            for f in fs if (names is None or n in names) and (runs / run_folder(f)[0] / "run_config.json").exists()}


def updated_training_part(card: str, family: str, names: list[str], runs: Path, assets: Path) -> list[str]:
    """The card's training part with the table rows and commands of `names` rebuilt from their run folders and
    every other checkpoint's kept as the card has them (in RUNS order). A run of `names` whose folder is gone keeps
    its row and command from the card (a checkpoint finished by new runs after its first one's folder was lost)."""
    head = card.split(EVALUATION)[0].rstrip().splitlines()
    unknown = sorted(set(names) - {n for n, _ in RUNS[family]})
    if unknown:
        raise SystemExit(f"error: --update-runs: {', '.join(unknown)} not among {family}'s checkpoints")
    configs = run_configs(runs, family, names)
    table = [i for i, line in enumerate(head) if line.startswith("| ") and not line.startswith("| checkpoint ")]
    header = table[0] - 2
    upgrade = " run |" in head[header] and " hardware |" not in head[header]
    if upgrade:  # a card from before the hardware column, written for CPU-only runs ("No GPU was used")
        head[header] = head[header].replace(" run |", " run | hardware |")
        seps = head[header + 1].split("|")
        head[header + 1] = "|".join([*seps[:6], "---", *seps[6:]])   # the hardware column's, after run's
    old_rows, owner, old_cells = {}, None, {}
    for i in table:
        cells = head[i].split("|")
        owner = cells[1].strip() or owner
        if upgrade:
            cells.insert(6, " CPU ")
        old_rows.setdefault(owner, []).append("|".join(cells))
        if len(cells) > 10:
            old_cells[cells[5].strip()] = cells
    start = head.index("```bash") + 1
    end = head.index("```", start)
    old_cmds, folder = {}, None
    for line in head[start:end]:
        # "# RUN (HARDWARE)", or "# RUN" in a card from before the hardware; a comment line has spaces before "("
        heading = re.fullmatch(r"# (\S+)(?: \(.+\))?", line)
        if heading:
            folder = heading.group(1)
            old_cmds[folder] = [line]
        elif folder is not None:
            old_cmds[folder].append(line)
    # a run's row cells and command, by RUNS entry, where the card has both
    kept = {f: (old_cells[run_folder(f)[0]], old_cmds[f]) for _, fs in RUNS[family] for f in fs
            if run_folder(f)[0] in old_cells and f in old_cmds}
    missing = [f for n, fs in RUNS[family] if n in names for f in fs if f not in configs and f not in kept]
    if missing:
        raise SystemExit(f"error: --update-runs: no run_config.json under {runs} for {', '.join(missing)} (and no "
                         f"row and command for it in the card to keep)")
    rows, commands = [], []
    for name, folders in RUNS[family]:
        if name in names:
            r, c = checkpoint_rows(name, folders, runs, assets, configs, kept)
            rows += r
            commands += c
        else:
            rows += old_rows.get(name, [f"| {name} | not shipped yet | | | | | | | | |"])
            commands += ["\n".join(old_cmds[f]) for f in folders if f in old_cmds]
    body = [*head[:table[0]], *rows, *head[table[-1] + 1:start], *"\n".join(commands).splitlines(), *head[end:]]
    return body


def main(argv=None):
    args = parse_args(argv)
    PATH_MAP.update(pair.split("=", 1) for pair in args.path_map)
    runs, assets, family = Path(args.runs), Path(args.assets), args.family
    report = json.loads(Path(args.eval or assets / "eval" / f"{family}.json").read_text())
    out = assets / "cards" / f"{family}.md"
    if args.update_runs:
        if not out.exists() or EVALUATION not in out.read_text():
            raise SystemExit(f"error: --update-runs: no card with a '{EVALUATION}' section at {out}")
        write_card(out, updated_training_part(out.read_text(), family, args.update_runs, runs, assets), report, family,
                   assets)
        return
    if args.update_evaluation:
        if not out.exists() or EVALUATION not in out.read_text():
            raise SystemExit(f"error: --update-evaluation: no card with a '{EVALUATION}' section at {out}")
        write_card(out, out.read_text().split(EVALUATION)[0].rstrip().splitlines(), report, family, assets)
        return
    title, data, script = TITLES[family]
    cpu = args.cpu or cpu_name()
    configs = run_configs(runs, family)
    gpus = sorted({hardware(c) for c in configs.values()} - {"CPU"})
    where = (f"on a 2-core CPU ({cpu}, torch {torch.__version__}, one thread per run, two runs side by side; "
             f"precision in each run's run_config.json). No GPU was used. `bash {script}` runs every command "
             "below in order.")
    if gpus:
        where = (f"on the hardware in the table: {' and '.join(gpus)} for the runs so marked, in a fixed time budget "
                 f"(`bash {GPU_SCRIPTS.get(family, script)}`), the rest on a 2-core CPU ({cpu}, torch "
                 f"{torch.__version__}, one thread per run, two runs side by side). Precision is in each run's "
                 f"run_config.json. `bash {script}` runs the CPU commands below in order and skips a run whose "
                 "output exists (e.g. copied from the GPU recipe).")
    lines = [f"# Shipped weights ({title})", "",
             f"Every checkpoint here was trained by this repository's `train/` scripts on {data}, {where} Each "
             "folder loads with `from_pretrained` (weights stored in float16; loading upcasts to float32).", "",
             "| checkpoint | params | GFLOPs / image | decoder tokens | run | hardware | steps | images seen | "
             "wall time | size |",
             "|---|---:|---:|---:|---|---|---:|---:|---:|---:|"]
    commands = []
    for name, folders in RUNS[family]:
        rows, cmds = checkpoint_rows(name, folders, runs, assets, configs)
        lines += rows
        commands += cmds
    lines += ["", "GFLOPs / image: one forward pass (a tokenizer's encode + decode; a DiT's one evaluation of the "
              "denoiser, of which a Heun sampling step takes two and classifier-free guidance doubles each), counted "
              "by torch's FLOP counter (a multiply-add is 2 FLOPs).",
              "", "Wall time is the time spent in the training loop (data, forward, backward, optimizer), summed "
              "over resumes; it excludes start-up and the DiT's one-off latent encoding.", "",
              "## Commands", "", "```bash", *commands, "```", "",
              "All other settings are the scripts' defaults, recorded in each run's `run_config.json`.", "",
              "## What was not available here", "",
              f"- LPIPS: {report['notes']['lpips']}. The stage-1 and stage-2 losses therefore have no LPIPS term "
              "(`\"lpips\": false` in their run configs) and no LPIPS is reported.",
              f"- Fréchet distances: {report['notes']['fd']}. Numbers are comparable between the two tokenizers "
              "and DiTs here, not with published FIDs."]
    write_card(out, lines, report, family, assets)


EVALUATION = "## Evaluation"


def write_card(out: Path, lines: list[str], report: dict, family: str, assets: Path) -> None:
    """The card: `lines` (the training part), then the evaluation table, the targets and the hand-written notes."""
    lines = [*lines, "", EVALUATION, "",
             f"`{portable(report['command'])}` wrote [eval/{family}.json](../eval/{family}.json) (all numbers, "
             f"with 95% intervals over images) and [eval/{family}.md](../eval/{family}.md); the table:", ""]
    lines += markdown(report).splitlines()[1:]
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---:|:---:|"]
    for label, value, bar in targets(report, family):
        lines.append(f"| {label} | {'n/a' if value is None else f'{value:.4g}'} | "
                     f"{'n/a' if value is None else ('yes' if value >= bar else 'no')} |")
    notes = assets / "notes" / f"{family}.md"
    if notes.exists():  # the hand-written part: what limits the numbers, and what we would do next
        lines += ["", notes.read_text().strip()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
