"""The README's commands of a user's first hour, run as the README gives them, so they cannot rot.

The heavy ones, setting up and running the main job (``scripts/setup.sh`` in a new ``.venv``, then the tiny-world
demo) and the test command, are run verbatim by ``.ci/run``, which reads them from the README with its own
``readme_command``; here that same function (taken from ``.ci/run``) must find them at the top of the README. The
cheap ones run here for real: ``pip install .`` of the checkout, the library lines from another folder against
that install, and every command of "Command line" (each ``--help``, and ``python -m latent_clip list``). The demo
itself, in-process: tests/end_to_end/test_tinyworld.py."""
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from fixtures import REPO

README = (REPO / "README.md").read_text()
VENV_PYTHON = ".venv/bin/python"   # how the README spells the Python of the main command's .venv


def ci_readme_command(head: str) -> str:
    """What ``.ci/run`` runs for ``head`` ("Main job", "Tests", ...): its own ``readme_command`` on this README."""
    ci = (REPO / ".ci" / "run").read_text()
    function = re.search(r"^readme_command\(\) \{.*?^\}$", ci, re.S | re.M).group(0)
    return subprocess.run(["bash", "-c", f'{function}\nreadme_command "$1"', "bash", head], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout.strip()


def section(heading: str) -> str:
    """The README's text under ``heading`` (a whole heading line), up to the next heading of any level."""
    start = README.index(f"\n{heading}\n") + len(heading) + 2
    following = re.search(r"^#{1,6} ", README[start:], re.M)
    return README[start:start + following.start()] if following else README[start:]


def indented_commands(text: str) -> list[str]:
    """The lines of ``text``'s indented (4-space) code blocks."""
    return [line[4:] for line in text.splitlines() if line.startswith("    ") and line.strip()]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, re.S | re.M)


def test_the_readme_opens_with_the_commands_ci_runs():
    """A fresh machine's two commands stand in the README's first lines, and they are what .ci/run runs."""
    main, tests = ci_readme_command("Main job"), ci_readme_command("Tests")
    assert main == f"bash scripts/setup.sh && {VENV_PYTHON} -m train tinyworld --demo"
    assert tests == f"bash scripts/setup.sh --dev && {VENV_PYTHON} -m pytest"
    first_screen = README.splitlines()[:20]
    assert f"    {main}" in first_screen and f"    {tests}" in first_screen
    assert ci_readme_command("Tests on the current ComfyUI") == "bash scripts/test_current_comfyui.sh"


def test_library_lines_run_from_any_folder_after_pip_install(tmp_path):
    """The README's install line on a copy of the checkout (offline: ``--no-deps --no-index
    --no-build-isolation`` with the venv's setuptools; ``--target`` so the shared .venv stays as it is), then
    its first library block in a fresh process from another folder, importing that install: it names the red
    square's colour. The block with the official weights needs them: it is compiled, not run."""
    library = section("## Library")
    assert f"{VENV_PYTHON} -m pip install ." in indented_commands(library)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, checkout / name)
    shutil.copytree(REPO / "latent_clip", checkout / "latent_clip", ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", ".", "--no-deps", "--no-index", "--no-build-isolation",
                    "--disable-pip-version-check", "-q", "--target", str(site)], cwd=checkout, check=True)
    runnable, official = python_blocks(library)
    compile(official, "README official-weights block", "exec")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run([sys.executable, "-c", runnable + "\nprint('from', latent_clip.__file__)"], cwd=elsewhere,
                         env={**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("colour: red\n") and f"from {site}" in run.stdout, run.stdout


@pytest.mark.slow
def test_every_command_line_example_runs():
    """Each command under "Command line" exits 0 (all at once): the helps print their usage, ``list`` the
    official weights; the list covers the entry points a user meets first."""
    commands = indented_commands(section("### Command line"))
    assert {f"{VENV_PYTHON} -m latent_clip --help", f"{VENV_PYTHON} -m latent_clip list"} \
        | {f"{VENV_PYTHON} -m train {c} --help" for c in ("fit", "encode", "eval zeroshot", "bench", "tinyworld")} \
        <= set(commands)

    def run(command: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, *command.removeprefix(VENV_PYTHON).split()]
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(len(commands)) as pool:
        results = dict(zip(commands, pool.map(run, commands)))
    failed = {c: r.stderr[-1000:] for c, r in results.items() if r.returncode}
    assert not failed
    assert all("usage:" in results[c].stdout for c in commands if c.endswith("--help"))
    assert "latent-clip-b-8-512-34b-80k" in results[f"{VENV_PYTHON} -m latent_clip list"].stdout


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but ``-`` and ``_`` dropped, spaces to ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    prose = re.sub(r"^```.*?^```$", "", markdown, flags=re.S | re.M)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", prose, re.M)}


def test_links_lead_somewhere():
    """Every relative link of the README and of the docs/ pages it moved its tables to names a file that exists,
    and every ``#anchor`` a heading of that file: the table of contents and the moved sections stay reachable."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    assert len(pages) >= 4
    broken = []
    for page in pages:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists() or (anchor and anchor not in anchors(linked.read_text())):
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken
