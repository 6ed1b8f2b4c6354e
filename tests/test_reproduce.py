"""The shell scripts in train/ that reproduce the shipped weights call the train/*.py scripts with flags those
scripts still accept: a renamed or removed flag, or a combination a trainer refuses, would otherwise surface hours
into a reproduction (the scripts themselves are too long to run in a test)."""
import argparse
import importlib
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "train").glob("*.sh"))
CALL = re.compile(r"train/(\w+)\.py\b(.*?)(?=;|&&|\|\||[|&}>]|$)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def commands(text: str) -> list[str]:
    """The script's lines with continuations joined, comments and here-documents left out."""
    text = text.replace("\\\n", " ")
    out, heredoc = [], None
    for line in text.splitlines():
        if heredoc is not None:
            heredoc = None if line.strip() == heredoc else heredoc
            continue
        if line.lstrip().startswith("#"):
            continue
        start = re.search(r"<<-?\s*'?(\w+)'?", line)
        if start:
            heredoc = start.group(1)
        out.append(re.sub(r"\s#.*$", "", line))
    return out


def calls(path: Path) -> list[tuple[str, set[str], str]]:
    """(train script, the flags it is given, the command) for every train/*.py call in a shell script."""
    return [(m.group(1), set(FLAG.findall(m.group(2))), line.strip()) for line in commands(path.read_text())
            for m in CALL.finditer(line)]


class _Parser(Exception):
    pass


def options(script: str, monkeypatch) -> set[str]:
    """Every option string the script's argument parser accepts (its parser captured at parse time)."""
    def capture(self, *args, **kwargs):
        raise _Parser(self)
    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", capture)
        m.setattr(argparse.ArgumentParser, "parse_known_args", capture)
        try:
            importlib.import_module(f"train.{script}").main([])
        except _Parser as e:
            return set(e.args[0]._option_string_actions)
    raise AssertionError(f"train/{script}.py built no argument parser")


def test_the_parsing_finds_flags_across_continuations_and_skips_comments_and_here_documents(tmp_path):
    script = tmp_path / "x.sh"
    script.write_text("# train/stage1.py --not-a-flag\n"
                      "done_ x || $PY train/dit.py --init-from a \\\n    --steps 3 > log 2>&1 &\n"
                      "$PY - <<'EOF'\nprint('train/stage2.py --inside')\nEOF\n"
                      "$PY train/ship.py --only a; $PY train/stage2.py --data d  # train/stage1.py --bad\n")
    assert [(s, f) for s, f, _ in calls(script)] == [("dit", {"--init-from", "--steps"}), ("ship", {"--only"}),
                                                    ("stage2", {"--data"})]


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_every_reproduction_script_parses_and_passes_flags_its_trainers_accept(path, monkeypatch):
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0, f"{path.name}: syntax"
    found = calls(path)
    assert found, f"{path.name} calls no train/*.py script"
    known = {}
    for script, flags, command in found:
        if script not in known:
            known[script] = options(script, monkeypatch)
        unknown = flags - known[script]
        assert not unknown, f"{path.name}: train/{script}.py does not accept {sorted(unknown)}: {command}"
        # the architecture comes from the checkpoint (hieratok.training.cli.init_from refuses these beside it)
        clash = flags & {"--preset", "--variant"} if "--init-from" in flags else set()
        assert not clash, f"{path.name}: {sorted(clash)} cannot be combined with --init-from: {command}"
