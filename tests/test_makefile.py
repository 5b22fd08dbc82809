"""Every `make <target>` the README names exists, and each command it runs starts (issue 19).

What the targets run for real is covered elsewhere (the main job: tests/test_console.py; serving:
tests/test_serve_http.py; `make test`: CI itself). Here: the target exists, `make -n` expands it, and every
Python entry point it calls parses its arguments (`--help` exits 0), so a renamed module or script, or a
flag the Makefile passes and the script no longer knows, fails here rather than in a user's terminal.
"""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PY = ".venv/bin/python"


def readme_targets() -> list[str]:
    return sorted(set(re.findall(r"`make ([a-z][a-z0-9-]*)", (REPO / "README.md").read_text())))


def commands(target: str) -> list[list[str]]:
    """The Python commands ``make -n target`` would run (the venv's install steps left out)."""
    out = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"make -n {target}: {out.stderr.strip()}"
    text = out.stdout.replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        argv = shlex.split(line)
        while argv and re.fullmatch(r"[A-Z_]+=.*", argv[0]):  # VAR=value prefixes
            argv = argv[1:]
        if argv and argv[0] == PY and "pip" not in argv[:3]:
            found.append(argv)
    return found


def test_the_readme_names_the_targets_a_newcomer_needs():
    assert {"run", "test", "test-fast", "serve", "sweep", "bench", "bench-cuhk01"} <= set(readme_targets())


@pytest.mark.slow  # each --help imports torch and Ray: a few seconds each
@pytest.mark.parametrize("target", readme_targets())
def test_each_readme_target_expands_to_commands_that_start(target):
    cmds = commands(target)
    if target in ("venv", "lock"):  # pip / uv only: `make test` in CI builds the venv from the lock
        return
    assert cmds, f"make {target} runs no Python command"
    for argv in cmds:
        if argv[1:3] == ["-m", "pytest"]:
            continue  # `make test` / `make test-fast`: what this very suite is
        entry = argv[1:3] if argv[1] == "-m" else argv[1:2]
        if argv[1] != "-m":
            assert (REPO / argv[1]).is_file(), f"make {target}: {argv[1]} does not exist"
        done = subprocess.run([sys.executable, *entry, "--help"], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, f"make {target}: {' '.join(entry)} --help failed:\n{done.stderr[-2000:]}"
        flags = [a.split("=")[0] for a in argv if a.startswith("--")]
        unknown = [f for f in flags if f not in done.stdout]
        assert not unknown, f"make {target}: {' '.join(entry)} does not know {unknown}"
