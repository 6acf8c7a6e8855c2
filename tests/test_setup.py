"""scripts/setup.sh, the README's first command, as a user with the wrong Python or a broken pyproject meets it:
one line naming what failed, a non-zero exit, and nothing installed after it. (The working set-up itself runs
first thing in every CI run, from the README's own command.)"""
import shutil
import subprocess

from fixtures import REPO


def checkout_with(tmp_path, pyproject: str | None = None):
    """A copy of the scripts (and pyproject.toml, or ``pyproject``) in a fresh folder, as a clone has them."""
    shutil.copytree(REPO / "scripts", tmp_path / "scripts")
    (tmp_path / "pyproject.toml").write_text(pyproject or (REPO / "pyproject.toml").read_text())
    (tmp_path / "requirements.txt").write_text((REPO / "requirements.txt").read_text())
    return tmp_path


def run_setup(checkout, path_dir=None):
    env = {"PATH": f"{path_dir}:/usr/bin:/bin" if path_dir else "/usr/bin:/bin", "HOME": str(checkout)}
    return subprocess.run(["bash", str(checkout / "scripts" / "setup.sh")], env=env, capture_output=True, text=True,
                          timeout=120)


def test_an_old_python_is_refused_first_with_its_version(tmp_path):
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python3").write_text("#!/bin/sh\n# Python 3.10 as the checks see it\n"
                                  "case \"$2\" in *platform*) echo 3.10.12;; *) exit 1;; esac\n")
    (shim / "python3").chmod(0o755)
    checkout = checkout_with(tmp_path / "clone")
    proc = run_setup(checkout, shim)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "[setup] failed: python3 is 3.10.12; this needs Python 3.11 or newer " \
                                  "(tomllib; the torch pins are for 3.11)"
    assert not (checkout / ".venv").exists()


def test_a_failing_step_stops_the_script_and_is_named(tmp_path):
    """pyproject.toml without the train extra: the step that reads it fails, and no pip step runs after it
    (a failure inside ``$(...)`` in an argument list used to go unnoticed under ``set -e``)."""
    broken = (REPO / "pyproject.toml").read_text().replace("\ntrain = [", "\nnot_train = [")
    checkout = checkout_with(tmp_path / "clone", broken)
    (checkout / ".venv" / "bin").mkdir(parents=True)  # a venv without pip: any pip step would fail loudly
    (checkout / ".venv" / "bin" / "python").symlink_to(shutil.which("python3"))
    proc = run_setup(checkout)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "[setup] failed: reading pyproject.toml's train extra"
    assert "[setup] 1/3" not in proc.stdout
