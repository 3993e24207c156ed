"""Every command line in README.md, docs/ and benchmarks/README.md is run or checked as a user would paste it.

- `kdexp-train`: the real CLI composes the command with `--cfg job` (training is too long for a test); a
  multirun (`-m`) is composed once at the first value of each swept key, as its first job would be.
- `kdexp-report`, `kdexp-export`, `kdexp-ui`: their own argument parsers accept the line.
- `python benchmarks/X.py`, `make TARGET`, `pip install '.[extra]'`: the script, target or extra exists.
- every line is safe to paste into zsh as well as bash: no unquoted `[`, `]`, `*`, `?` or `|` inside a word.
Other programs (createdb, mlflow server, ...) are outside kdexp and only counted.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), ROOT / "benchmarks" / "README.md"]
SHELL_BLOCK = re.compile(r"```(?:bash|sh)\n(.*?)```", re.S)
KDEXP_TOOLS = ("kdexp-train", "kdexp-report", "kdexp-export", "kdexp-ui")


def doc_commands() -> list[tuple[str, str, str]]:
    """[(doc, working folder relative to the repo, command)] of every shell block: `&&` and `;` chains split,
    subshell parentheses and a trailing `&` dropped."""
    found = []
    for doc in DOCS:
        for block in SHELL_BLOCK.findall(doc.read_text()):
            cwd = "."
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"(^|\s)#.*$", "", line).strip()
                for cmd in filter(None, (re.sub(r"^[\s(]+|[\s)&]+$", "", c) for c in re.split(r"&&|;", line))):
                    if cmd.startswith("cd "):
                        cwd = cmd[3:].strip()
                    else:
                        found.append((str(doc.relative_to(ROOT)), cwd, cmd))
    return found


COMMANDS = doc_commands()


def words(cmd: str) -> list[str]:
    """The command's words after an optional `VAR=value` prefix."""
    parts = shlex.split(cmd)
    while parts and re.fullmatch(r"[A-Z_]+=\S*", parts[0]):
        parts = parts[1:]
    return parts


def unquoted_glob_chars(cmd: str) -> list[str]:
    """Words with a character that zsh globs or bash pipes when unquoted, outside quotes."""
    bare = re.sub(r"'[^']*'|\"[^\"]*\"", "Q", cmd)
    return [w for w in bare.split() if re.search(r"[\[\]*?]", w) or (w != "|" and "|" in w)]


@pytest.mark.parametrize("doc, cwd, cmd", COMMANDS, ids=[f"{d}:{c[:50]}" for d, _, c in COMMANDS])
def test_doc_command_pastes_into_bash_and_zsh(doc, cwd, cmd):
    assert unquoted_glob_chars(cmd) == [], f"{doc}: quote these words: {cmd}"


def first_job(argv: list[str]) -> list[str]:
    """A multirun's overrides at the first value of each comma-swept key (quoted values kept whole)."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and "," in value and not value.startswith(("[", "{", "'", '"')) and "(" not in value:
            value = value.split(",")[0]
        out.append(f"{key}{eq}{value}")
    return out


TRAIN = [(d, w, c) for d, w, c in COMMANDS if words(c)[:1] == ["kdexp-train"]]


@pytest.mark.slow
@pytest.mark.parametrize("doc, cwd, cmd", TRAIN, ids=[f"{d}:{c[:60]}" for d, _, c in TRAIN])
def test_doc_kdexp_train_line_composes(doc, cwd, cmd, tmp_path):
    argv = [a for a in words(cmd)[1:] if a not in ("-m", "--multirun")]
    argv = [a for a in first_job(argv) if a not in ("--cfg", "job")]
    exe = str(Path(sys.executable).parent / "kdexp-train")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([exe, *argv, f"paths.root={tmp_path}", "--cfg", "job"], cwd=ROOT / cwd, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{doc}: `{cmd}` does not compose:\n{out.stderr[-2000:]}"


def test_doc_tool_lines_parse():
    from kdexp.cli import ui_parser
    from kdexp.report.cli import parse_args as report_args
    from kdexp.shipping.cli import build_parser as export_parser
    from kdexp.tracking.locate import hydra_style

    parsers = {"kdexp-report": report_args, "kdexp-export": export_parser().parse_args,
               "kdexp-ui": ui_parser().parse_args}
    checked = 0
    for doc, _, cmd in COMMANDS:
        w = words(cmd)
        if w[:1] and w[0] in parsers:
            args = [a for a in hydra_style(w[1:]) if "[" not in a or not a.endswith("]")]
            try:
                parsers[w[0]](args)
            except SystemExit as exc:
                pytest.fail(f"{doc}: `{cmd}` is not accepted by {w[0]} (exit {exc.code})")
            checked += 1
    assert checked >= 5


def test_doc_scripts_targets_and_extras_exist():
    makefile = (ROOT / "Makefile").read_text()
    deps = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1].split("\n[")[0]
    extras = set(re.findall(r"^(\w+) = \[", deps, re.M))
    assert {"dev", "plots", "postgres"} <= extras
    for doc, cwd, cmd in COMMANDS:
        w = words(cmd)
        if len(w) >= 2 and w[0] in ("python", "python3") and w[1].endswith(".py"):
            assert (ROOT / cwd / w[1]).is_file(), f"{doc}: no script {w[1]}"
        elif w[:1] == ["make"]:
            for target in w[1:]:
                assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"{doc}: no make target {target}"
        elif w[:2] == ["pip", "install"]:
            for spec in w[2:]:
                if match := re.search(r"\[([\w,]+)\]", spec):
                    missing = set(match.group(1).split(",")) - extras
                    assert not missing, f"{doc}: no extra {missing} in pyproject.toml"


def test_every_kdexp_tool_line_is_checked_somewhere():
    tools = {words(c)[0] for _, _, c in COMMANDS if words(c) and words(c)[0].startswith("kdexp-")}
    assert tools <= set(KDEXP_TOOLS), f"a documented tool no test checks: {tools - set(KDEXP_TOOLS)}"
    assert len(TRAIN) >= 15
