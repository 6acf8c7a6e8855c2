"""Resume never loses work: unreadable checkpoints are passed over (with a warning) for the newest
readable one, a requested resume with nothing to resume from is an error, a fresh start or an early
resume never overwrites a checkpoint, the log has one record per step after any number of kill -9
resumes, and a full disk gives one readable line and leaves no temporary behind."""
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import REPO, child_env, fit_args, kill_when, logged_losses, records
from hostile_files import truncate
from train import checkpoint
from train.main import main as fit
from synthetic import write_synthetic_latents


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_latents(tmp_path_factory.mktemp("latents"), n_classes=4, per_class=16, n_shards=2)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """8 steps, a checkpoint every 2 and each one kept: (run folder, losses)."""
    out = tmp_path_factory.mktemp("reference")
    losses = fit(fit_args(data, out, "run", **{"max-steps": 8, "save-every": 2, "keep-every": 2}))
    return out / "run", losses


def step_records(run: Path) -> list[int]:
    return [r["step"] for r in records(run) if "loss" in r]


def test_unreadable_latest_falls_back_to_the_newest_readable_kept_checkpoint(data, reference, tmp_path, capsys):
    run = shutil.copytree(reference[0], tmp_path / "run")
    truncate(run / "checkpoints/epoch_latest.pt")
    truncate(run / "checkpoints/step_8.pt")  # unreadable too: replacing it loses nothing
    resumed = fit(fit_args(data, tmp_path, "run", **{"max-steps": 8, "save-every": 2, "keep-every": 2,
                                                     "resume": "latest"}))
    out = capsys.readouterr().out
    assert f"warning: cannot resume from {run / 'checkpoints/epoch_latest.pt'}, skipping it: cannot read" in out
    assert f"warning: resuming from {run / 'checkpoints/step_6.pt'} (step 6)" in out
    assert resumed == pytest.approx(reference[1][6:], rel=1e-6)  # steps 7, 8 replayed exactly
    assert step_records(run) == list(range(1, 9))
    assert checkpoint.load(run / "checkpoints/step_8.pt")["step"] == 8


def test_missing_latest_resumes_from_the_newest_kept_checkpoint(data, reference, tmp_path, capsys):
    """Was: a silent restart at step 0 that overwrote the kept step_N.pt."""
    run = shutil.copytree(reference[0], tmp_path / "run")
    (run / "checkpoints/epoch_latest.pt").unlink()
    (run / "checkpoints/step_8.pt").unlink()
    kept = {p.name: p.read_bytes() for p in (run / "checkpoints").glob("step_*.pt")}
    resumed = fit(fit_args(data, tmp_path, "run", **{"max-steps": 8, "save-every": 2, "resume": "latest"}))
    assert "resuming from" in capsys.readouterr().out and len(resumed) == 2
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").glob("step_*.pt") if p.name in kept} == kept


def test_nothing_to_resume_from_is_an_error(data, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--resume latest: no readable checkpoint in .*checkpoints"):
        fit(fit_args(data, tmp_path, "empty", resume="latest"))
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from at"):
        fit(fit_args(data, tmp_path, "empty", resume=str(tmp_path / "nope.pt")))
    (tmp_path / "broken/checkpoints").mkdir(parents=True)
    (tmp_path / "broken/checkpoints/epoch_latest.pt").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(FileNotFoundError, match="no readable checkpoint"):
        fit(fit_args(data, tmp_path, "broken", resume="latest"))


def test_checkpoints_are_never_overwritten_by_a_restart(data, reference, tmp_path):
    run = shutil.copytree(reference[0], tmp_path / "run")
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    with pytest.raises(FileExistsError, match=r"already holds checkpoints .*pass --resume latest"):
        fit(fit_args(data, tmp_path, "run", **{"max-steps": 8}))  # forgot --resume
    with pytest.raises(FileExistsError, match=r"resuming at step 4 would overwrite the kept checkpoint .*step_6\.pt"):
        fit(fit_args(data, tmp_path, "run", resume=str(run / "checkpoints/step_4.pt")))
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before
    assert step_records(run) == list(range(1, 9))


def _kill_after(argv: list[str], run: Path, step: int) -> None:
    """Start ``python -m train fit argv`` (this process's thread count, so losses match bit for bit),
    SIGKILL it once its log reaches ``step``."""
    kill_when([sys.executable, "-m", "train", "fit", *argv], lambda: max(logged_losses(run), default=0) >= step,
              threads=None, timeout=180)


@pytest.mark.slow
def test_one_log_record_per_step_after_two_kill_9_resumes(data, tmp_path):
    over = {"max-steps": 16, "save-every": 4}
    reference = fit(fit_args(data, tmp_path, "reference", **over))
    run = tmp_path / "killed"
    _kill_after(fit_args(data, tmp_path, "killed", **over), run, 6)
    _kill_after(fit_args(data, tmp_path, "killed", **over, resume="latest"), run, 11)
    fit(fit_args(data, tmp_path, "killed", **over, resume="latest"))
    losses = {r["step"]: r["loss"] for r in records(run)}
    assert step_records(run) == list(range(1, 17))
    assert [losses[s] for s in range(1, 17)] == pytest.approx(reference, rel=1e-6)


def test_full_disk_gives_one_readable_line_and_no_temporary(data, reference, tmp_path):
    ckpt_bytes = (reference[0] / "checkpoints/epoch_latest.pt").stat().st_size
    disk = tmp_path / "disk"
    disk.mkdir()
    size = int(ckpt_bytes * 1.5)  # the tmpfs holds one checkpoint, not a second one beside it
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                             capture_output=True).returncode == 0
    try:
        argv = ["fit", *fit_args(data, disk, "full", **{"max-steps": 4, "save-every": 1})]
        limit = None if mounted else int(ckpt_bytes * 0.5)  # no tmpfs (not root): a file size limit instead

        def preexec():
            if limit:
                import resource
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        proc = subprocess.run([sys.executable, "-m", "train", *argv], cwd=REPO, env=child_env(None),
                              capture_output=True, text=True, timeout=300, preexec_fn=preexec)
        ckpts = disk / "full/checkpoints"
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr[-3000:]
        assert proc.stderr.startswith(f"error: could not write {ckpts / 'epoch_latest.pt'}: ")
        assert not [p for p in disk.rglob("*") if p.name.endswith(".tmp")]
        if mounted:
            assert "no space left on its disk" in proc.stderr and "(the previous version is intact)" in proc.stderr
            assert checkpoint.load(ckpts / "epoch_latest.pt")["step"] == 1
        else:
            assert f"the file reached the size limit (ulimit -f) of {limit:,} bytes" in proc.stderr
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=True)
