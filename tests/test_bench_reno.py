"""The ReNO benches' pieces: file-backed weights, the memory watcher, and bench_reno_sdxl's two modes (the GPU
check's interface) run end to end on the CPU with a toy-width UNet; an absent device exits 2 with one line."""
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from bench.memory import status_gb
from bench.memory_guard import EXIT_MEMORY
from bench.reno_models import place_


def bench_sdxl(tmp_path, *args) -> tuple[subprocess.CompletedProcess, dict | None]:
    out = tmp_path / "out.json"
    done = subprocess.run([sys.executable, "-m", "bench.bench_reno_sdxl", *args, "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    return done, json.loads(out.read_text()) if out.exists() else None


def test_file_backed_weights_are_not_anonymous_memory():
    """A 256 MiB layer built on meta and filled in place on the CPU grows the resident set, not RssAnon.
    Measured: RssAnon +0.00 GiB, VmRSS +0.25 GiB."""
    anon, rss = status_gb("RssAnon"), status_gb("VmRSS")
    with torch.device("meta"):
        layer = nn.Linear(8192, 8192, bias=False)
    place_(layer, torch.device("cpu"), init=True)
    assert status_gb("VmRSS") - rss > 0.2
    assert status_gb("RssAnon") - anon < 0.05
    w = layer.weight
    assert w.device.type == "cpu" and not w.requires_grad
    assert w.std().item() == pytest.approx(8192 ** -0.5, rel=0.01)  # N(0, 1/fan_in)
    copied = place_(nn.Linear(3, 2), torch.device("cpu"))
    assert torch.equal(copied(torch.ones(1, 3)), copied.weight.sum(1, keepdim=True).T + copied.bias)


def test_memory_guard_stops_a_growing_process_with_one_line():
    code = ("import torch, time\nfrom bench.memory import status_gb\nfrom bench.memory_guard import MemoryGuard\n"
            "with MemoryGuard(status_gb('RssAnon') + 0.3, 0.1, 'toy'):\n"
            "    x = [torch.ones(2 ** 26) for _ in range(8)]\n    time.sleep(2)\nprint('not stopped')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_MEMORY, done.stderr
    assert "not stopped" not in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("toy: stopped for memory:") and "at most" in lines[0]


def test_absent_device_exits_2_with_one_line(tmp_path):
    for mode in ([], ["--end-to-end", "50"]):
        done, out = bench_sdxl(tmp_path, "--device", "cuda:99", "--size", "512", *mode)
        assert done.returncode == 2 and out is None
        assert done.stderr.strip().startswith("bench_reno_sdxl: device 'cuda:99' is not present")
        assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_sdxl_bench_times_three_paths_and_counts_their_flops(tmp_path):
    """Measured (1 repeat, toy UNet, 64 px, CPU time): pixel / latent 9.4x with ViT-B/32, 37.8x with ViT-L/14."""
    done, out = bench_sdxl(tmp_path, "--tiny-unet", "--size", "64", "--repeats", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert set(out["paths"]) == {"latent", "pixel_b32", "pixel_l14"}
    assert all(len(p["seconds"]) == 1 and p["seconds"][0] > 0 and p["peak_gib"] > 0 for p in out["paths"].values())
    flops = out["flops"]
    assert flops["unet"] < flops["latent"] < flops["pixel_b32"] < flops["pixel_l14"]
    for key, r in out["ratios"].items():
        assert r["flop_saving"] == pytest.approx(1 - flops["latent"] / flops[key])
        assert r["time_ratio"] > 2  # measured 9.4x and 37.8x
    assert out["peak_anon_gib"] < out["peak_rss_gib"]  # the weights are file-backed


@pytest.mark.slow
def test_sdxl_bench_runs_one_whole_reno_image(tmp_path):
    done, out = bench_sdxl(tmp_path, "--tiny-unet", "--size", "64", "--end-to-end", "3")
    assert done.returncode == 0, done.stderr[-2000:]
    e = out["end_to_end"]
    assert e["iterations"] == 3 and e["seconds"] > 0 and e["wall_s"] > 0 and e["peak_gib"] > 0
    assert e["image_shape"] == [1, 3, 64, 64] and e["image_finite"]
    assert e["best_loss"][0] <= e["initial_loss"][0]
