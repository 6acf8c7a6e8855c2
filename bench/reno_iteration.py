"""One ReNO iteration per reward path, timed by the benches' one rule (:mod:`bench.timing`) and counted in FLOPs.

An iteration (:func:`stepped_iteration`) is what ``latent_clip.reno.optimize_noise`` does per stepped
evaluation: the one-step x0 from the noise, the reward, ReNO's noise-norm regulariser, backward to the noise,
the per-sample gradient clip and the SGD step (its bookkeeping on (B,) tensors, best-iterate tracking and
finiteness checks, is left out). :func:`measure` times every path in interleaved repeats on ``clock_for(device)``
(this process's CPU time on the CPU), the process's first backward in the untimed warm-up, and records each
path's peak memory; :func:`summarise` gives pixel / latent per pixel path as the median of the per-repeat
ratios with their range, the time saving beside the FLOP saving (FLOPs of the same iteration counted by
``FlopCounterMode`` on meta tensors) and each path's achieved GFLOP/s.
"""
from __future__ import annotations

import contextlib
import resource
import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.memory import reset_peak, status_gb
from bench.reno_models import PATHS, Pipeline, build, params_m
from bench.timing import busy_neighbour, clock_for, interleaved, ratio
from latent_clip.reno import RENO, clip_grad_norm_per_sample_, norm_regulariser


def iteration_loss(generate, reward, e: torch.Tensor) -> torch.Tensor:
    """ReNO's objective of one iterate: reward of the generated latents plus the noise-norm regulariser."""
    return reward(generate(e)).float().sum() + norm_regulariser(e, RENO.reg_weight).sum()


def stepped_iteration(generate, reward, noise: torch.Tensor) -> Callable[[], None]:
    """A callable doing one ReNO iteration per call, each continuing the optimisation of a copy of ``noise``."""
    e = noise.detach().clone().requires_grad_(True)
    opt = torch.optim.SGD([e], lr=RENO.lr, momentum=RENO.momentum, nesterov=True)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        iteration_loss(generate, reward, e).backward()
        clip_grad_norm_per_sample_(e.grad, RENO.grad_clip)
        opt.step()
    return step


def iteration_flops(model: str, size: int, paths, tiny_unet: bool = False) -> dict[str, float]:
    """FLOPs of one iteration per path, and of the UNet's fwd+bwd to the noise alone (``"unet"``), counted on
    meta tensors (batch 1)."""
    meta = build(model, size, "meta", paths, tiny_unet)
    e = torch.randn(1, 4, size // 8, size // 8, device="meta", requires_grad=True)
    runs = {"unet": lambda: meta.generate(e).square().sum().backward(),
            **{k: (lambda r=r: iteration_loss(meta.generate, r, e).backward()) for k, r in meta.rewards.items()}}
    out = {}
    for name, run in runs.items():
        with FlopCounterMode(display=False) as counter:
            run()
        out[name] = float(counter.get_total_flops())
    return out


def _with_peak(fn: Callable[[], None], device: str, peaks: list) -> Callable[[], None]:
    """``fn``, appending (peak GiB, peak GiB over the start of the call, major page faults) to ``peaks`` per call:
    resident set (VmHWM) on the CPU, ``torch.cuda.max_memory_allocated`` on CUDA. Major faults are pages read
    back from disk, e.g. file-backed weights the kernel dropped under memory pressure."""
    cuda = device.startswith("cuda")

    def run() -> None:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated() / 2 ** 30
        else:
            reset_peak()
            start = status_gb("VmRSS")
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
        fn()
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else status_gb("VmHWM")
        peaks.append((peak, peak - start, resource.getrusage(resource.RUSAGE_SELF).ru_majflt - faults))
    return run


def measure(pipeline: Pipeline, noise: torch.Tensor, repeats: int, device: str) -> dict[str, dict]:
    """Seconds per repeat and peak memory of one iteration of every path of ``pipeline``, interleaved."""
    peaks = {k: [] for k in pipeline.rewards}
    paths = {k: _with_peak(stepped_iteration(pipeline.generate, r, noise), device, peaks[k])
             for k, r in pipeline.rewards.items()}
    samples = interleaved(paths, repeats=repeats, warmup=1, clock=clock_for(device))
    return {k: {"label": PATHS[k][0], "seconds": samples[k], "peak_gib": max(p[0] for p in peaks[k]),
                "peak_over_start_gib": max(p[1] for p in peaks[k]),
                "major_faults": [p[2] for p in peaks[k][-repeats:]]} for k in samples}


def summarise(paths: dict[str, dict], flops: dict[str, float]) -> dict[str, dict]:
    """Per pixel path: pixel / latent time (median of per-repeat ratios, range), time saving and its range,
    FLOP ratio and saving, and whether the time saving is above the FLOP saving."""
    lat = paths["latent"]
    out = {}
    for key, pix in paths.items():
        if key == "latent":
            continue
        r = ratio(pix["seconds"], lat["seconds"])
        flop_saving = 1 - flops["latent"] / flops[key]
        out[key] = {"time_ratio": r.median, "time_ratio_low": r.low, "time_ratio_high": r.high,
                    "repeats": r.repeats, "time_saving": 1 - 1 / r.median, "time_saving_low": 1 - 1 / r.low,
                    "time_saving_high": 1 - 1 / r.high, "flop_ratio": flops[key] / flops["latent"],
                    "flop_saving": flop_saving, "time_saving_above_flop_saving": 1 - 1 / r.median > flop_saving}
    return out


def report_lines(paths: dict[str, dict], flops: dict[str, float], ratios: dict[str, dict], unit: str) -> list[str]:
    """The printed table: per path seconds, GFLOPs, GFLOP/s and peak memory; per pixel path its ratios."""
    lines = [f"UNet fwd+bwd to the noise alone: {flops['unet'] / 1e9:,.1f} GFLOPs"]
    for key, p in paths.items():
        median = sorted(p["seconds"])[len(p["seconds"]) // 2]
        lines.append(f"{p['label']:48s} {median:8.2f} s {unit} (median of {len(p['seconds'])}: "
                     f"{', '.join(f'{s:.2f}' for s in p['seconds'])}); {flops[key] / 1e9:,.1f} GFLOPs, "
                     f"{flops[key] / 1e9 / median:,.1f} GFLOP/s; peak {p['peak_gib']:.2f} GiB "
                     f"(+{p['peak_over_start_gib']:.2f} over the call's start); major faults {p['major_faults']}")
    for key, r in ratios.items():
        lines.append(f"{PATHS[key][0]} / latent: time {r['time_ratio']:.2f}x ({r['time_ratio_low']:.2f}-"
                     f"{r['time_ratio_high']:.2f}, {r['repeats']} repeats), saving {100 * r['time_saving']:.1f} % "
                     f"({100 * r['time_saving_low']:.1f}-{100 * r['time_saving_high']:.1f}); FLOPs "
                     f"{r['flop_ratio']:.2f}x, saving {100 * r['flop_saving']:.1f} %"
                     + ("  <- time saving above the FLOP saving" if r["time_saving_above_flop_saving"] else ""))
    return lines


def measure_paths(model: str, size: int, device: str, repeats: int, tiny_unet: bool = False,
                  beside_burner: bool = False) -> dict:
    """Count, build, time and summarise every path of ``model`` at ``size`` px on ``device``, printing as it
    goes; ``beside_burner``: the timed rounds run beside :func:`bench.timing.busy_neighbour`."""
    flops = iteration_flops(model, size, tuple(PATHS), tiny_unet)
    start = time.perf_counter()
    pipeline = build(model, size, device, tuple(PATHS), tiny_unet)
    out = {"params_m": params_m(pipeline), "build_wall_s": time.perf_counter() - start}
    print(f"built in {out['build_wall_s']:.0f} s: " + ", ".join(f"{k} {v:,.1f} M" for k, v in out["params_m"].items()),
          flush=True)
    noise = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0)).to(device)
    with busy_neighbour() if beside_burner else contextlib.nullcontext():
        out["paths"] = measure(pipeline, noise, repeats, device)
    out["flops"], out["ratios"] = flops, summarise(out["paths"], flops)
    print("\n".join(report_lines(out["paths"], flops, out["ratios"], "GPU" if device.startswith("cuda") else "CPU")))
    return out
