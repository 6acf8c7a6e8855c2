"""scripts/gpu_check.sh on a machine without CUDA (CUDA hidden when there is one): it runs to its end, says
what it skipped, and writes its JSON."""
import json
import os
import subprocess
import sys

from fixtures import REPO

PARTS = ("tests", "reno_sdxl", "reno_e2e")


def test_gpu_check_without_cuda_skips_each_gpu_part_and_writes_its_json(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OUT": str(tmp_path), "PYTHON": sys.executable}
    run = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert [f"no CUDA: skipped {part}" for part in PARTS] == [line for line in lines if line.startswith("no CUDA")]
    assert lines[-1] == "could not run: tests (skipped), reno_sdxl (skipped), reno_e2e (skipped)"
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["cuda"] is False
    assert {part: entry["status"] for part, entry in report["parts"].items()} == dict.fromkeys(PARTS, "skipped")
