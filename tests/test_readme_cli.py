"""Every `darht ...` line of the README's command-line section, mistyped, ends in one clear line.

Two mistypes per command: a flag with a typo (argparse's usage error, exit 2) and every path
argument pointing below an existing file, where nothing can be read or written (darht's own
`darht: error:` line, exit 2). Neither may print a traceback, and neither may start any work.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from darht.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands() -> list[list[str]]:
    text = README.read_text()
    block = text.split("## The command line", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("darht ") and "..." not in line:  # `...` lines are elisions, not commands
            out.append(shlex.split(line)[1:])
    return out


COMMANDS = _commands()


def _is_path(arg: str) -> bool:
    return "/" in arg or arg.endswith((".json", ".yaml", ".safetensors", ".pt"))


def test_the_readme_shows_every_verb():
    assert {c[0] for c in COMMANDS} >= {"data", "train", "distill", "evaluate", "compare", "transfer", "run", "report"}


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_mistyped_paths_give_one_error_line(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("x")  # a mistyped path lands below a file: unreadable and unwritable
    bad = [f"{tmp_path}/a-file/{Path(a.split('=')[-1]).name}" if _is_path(a) else a for a in argv]
    if bad == argv:  # no path in it: mistype the first value instead
        bad = argv[:-1] + [argv[-1] + "-typo"]
    code = main(bad)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("darht: error:")]) == 1


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_mistyped_flags_give_argparse_usage(argv, capsys):
    flags = [i for i, a in enumerate(argv) if a.startswith("--")]
    bad = list(argv)
    if flags:
        bad[flags[0]] = bad[flags[0]] + "x"
    else:
        bad = [argv[0], "--no-such-flag", *argv[1:]]
    with pytest.raises(SystemExit) as e:
        main(bad)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and "error:" in err
