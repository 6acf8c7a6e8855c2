"""ReNO: reward-based noise optimisation for one-step generators (arXiv 2406.04312, §3-4).

The initial noise is the only trainable tensor. Each iteration generates a latent from it,
scores the latent with a reward loss (lower is better), adds the noise-norm regulariser, and
takes a clipped, Nesterov-momentum SGD step on the noise. The result is the iterate with the
lowest *reward* loss (regulariser excluded), tracked per sample. :data:`RENO` holds ReNO's constants;
with the rewards at :data:`latent_clip.rewards.CLIP_SCORE_WEIGHT` they are ReNO's objective.

This module knows nothing of ComfyUI or diffusers: it sees two callables,
``generate(noise) -> latent`` and ``reward(latent) -> per-sample loss (B,)``. Nothing is
decoded here; the best iterate is chosen on the latent reward alone.

Usage::

    result = optimize_noise(lambda e: unet_x0(e), latent_alignment(model, prompt), noise)
    result.best_latent, result.best_loss, result.history
"""
from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .contract import finite_by_construction

Generate = Callable[[torch.Tensor], torch.Tensor]
Reward = Callable[[torch.Tensor], torch.Tensor]


def norm_regulariser(noise: torch.Tensor, weight: float = 0.01) -> torch.Tensor:
    """ReNO's noise-norm regulariser ``w * (0.5 ||e||^2 - (d - 1) log ||e||)`` per sample, in fp32.

    It is the negative log-density of a chi distribution with ``d`` degrees of freedom (up to a
    constant), minimised at ``||e|| = sqrt(d - 1)``: it keeps the noise on the Gaussian shell."""
    e = noise.float().flatten(1)
    d = e.shape[1]
    norm = e.norm(dim=1)
    return weight * (0.5 * norm.square() - (d - 1) * norm.log())


@dataclass(frozen=True)
class RenoSettings:
    """ReNO's optimiser (ExplainableML/ReNO ``arguments.py``, ``training/trainer.py``): 50 evaluations,
    SGD with Nesterov momentum 0.9 at lr 5 (512 px; 10 at 1024 px), gradient-norm clip 0.1 applied to
    the summed loss, noise-norm regulariser weight 0.01."""

    iterations: int = 50
    lr: float = 5.0
    momentum: float = 0.9
    grad_clip: float = 0.1
    reg_weight: float = 0.01


RENO = RenoSettings()


class NonFiniteError(ValueError):
    """ReNO has no finite iterate to start from."""


@dataclass
class RenoProgress:
    """What the callback sees after each evaluation. Return ``True`` from the callback to stop
    (the result then holds the best iterate so far); raising also stops, without a result. The tensors are
    on the reward's device: reading their numbers waits for the device, which is then the callback's choice."""

    iteration: int          # 0-based index of the evaluation just done
    iterations: int
    loss: torch.Tensor      # (B,) reward loss of this iterate
    best_loss: torch.Tensor  # (B,)
    best_latent: torch.Tensor


@dataclass
class RenoResult:
    best_noise: torch.Tensor       # (B, ...) the noise that produced best_latent
    best_latent: torch.Tensor      # (B, ...) generate(best_noise), detached
    best_loss: torch.Tensor        # (B,) reward loss of best_latent, fp32, CPU
    best_iteration: torch.Tensor   # (B,) index into history
    history: torch.Tensor          # (iterations run, B) reward loss per evaluation, fp32, CPU (NaN/Inf kept)
    nonfinite: torch.Tensor        # (B,) evaluations with a NaN/Inf latent, loss or gradient (never chosen, no step)
    stopped: bool = False          # True when the callback stopped the loop early
    seconds: float = 0.0           # wall time of the loop
    iteration_seconds: list[float] = field(default_factory=list)

    @property
    def initial_loss(self) -> torch.Tensor:
        return self.history[0]


def clip_grad_norm_per_sample_(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale each sample's gradient in place to L2 norm <= ``max_norm`` (``clip_grad_norm_`` per
    sample, same epsilon). Returns the pre-clip norms (B,)."""
    norms = grad.detach().float().flatten(1).norm(dim=1)
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    grad.mul_(scale.to(grad.dtype).view(-1, *([1] * (grad.ndim - 1))))
    return norms


def _take_best(best: torch.Tensor | None, new: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    new = new.detach()
    if best is None:
        return new.clone()
    return torch.where(_per_sample(mask, new), new, best)


class _Saved:
    """A tensor autograd saved, and its contents at save time once something writes to it."""

    __slots__ = ("tensor", "version", "copy")

    def __init__(self, tensor: torch.Tensor):
        # detached: a saved output keeps no link to the node saving it (no uncollectable cycle)
        self.tensor, self.version, self.copy = tensor.detach(), tensor._version, None


def _storage(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # no storage (meta, sparse, ...): never saved data to protect
        return None


def _written(func, args: tuple, kwargs: dict | None) -> torch.Tensor | None:
    """The tensor an in-place op (``add_``, ``x += y``, ``x[i] = y``, ``out=``) writes to, else None."""
    if kwargs and isinstance(kwargs.get("out"), torch.Tensor):
        return kwargs["out"]
    name = getattr(func, "__name__", "")
    writes = name == "__setitem__" or (name.endswith("_") and not name.startswith("_")
                                       and name not in ("requires_grad_", "share_memory_"))
    return args[0] if writes and args and isinstance(args[0], torch.Tensor) else None


@contextmanager
def private_saved_tensors():
    """Differentiate generators that update activations in place after using them (ComfyUI's FLUX
    blocks do ``x += gate * out`` after ``norm(x)`` saved ``x``), which plain autograd refuses.

    Copy-on-write: tensors autograd saves inside this context are recorded by storage; just before
    an in-place op writes to such a storage, the saved tensors on it are copied, and backward reads
    the copies. Models that never do this pay no memory and only a per-op dispatch; gradients equal
    those of the same model written out of place. Only forward calls need the context."""
    from torch.overrides import TorchFunctionMode

    saved: dict[int, list[_Saved]] = {}

    def pack(t: torch.Tensor):
        key = _storage(t)
        if key is None or isinstance(t, nn.Parameter):
            return t
        entry = _Saved(t)
        saved.setdefault(key, []).append(entry)
        return entry

    def unpack(entry) -> torch.Tensor:
        if isinstance(entry, torch.Tensor):
            return entry
        if entry.copy is not None:
            return entry.copy
        if entry.tensor._version != entry.version:  # written by something the mode did not see
            raise RuntimeError("a tensor saved for backward was modified in place outside private_saved_tensors' "
                               f"view (shape {tuple(entry.tensor.shape)}); the gradient would be wrong")
        return entry.tensor

    class CopyBeforeWrite(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            target = _written(func, args, kwargs)
            if target is not None and saved:
                for entry in saved.get(_storage(target), ()):
                    if entry.copy is None:
                        with torch.no_grad():
                            entry.copy = entry.tensor.detach().clone()
            return func(*args, **(kwargs or {}))

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack), CopyBeforeWrite():
            yield
    finally:
        saved.clear()


def _per_sample(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.to(like.device).view(-1, *([1] * (like.ndim - 1)))


def _finite(t: torch.Tensor) -> torch.Tensor:
    """(B,) bool: every value of sample i is finite."""
    return torch.isfinite(t.detach()).flatten(1).all(1)


def _require_finite_start(ok: torch.Tensor) -> None:
    if not ok.all():
        raise NonFiniteError(
            f"ReNO: the first iterate's latent or reward loss is NaN/Inf for batch items "
            f"{(~ok).nonzero().flatten().tolist()}, so there is nothing to optimise from; check the "
            "generator's dtype (fp16 overflow?) and its inputs")


def optimize_noise(generate: Generate, reward: Reward, noise: torch.Tensor, *, iterations: int = RENO.iterations,
                   lr: float = RENO.lr, momentum: float = RENO.momentum, grad_clip: float = RENO.grad_clip,
                   reg_weight: float = RENO.reg_weight,
                   callback: Callable[[RenoProgress], bool | None] | None = None) -> RenoResult:
    """Optimise ``noise`` (B, ...) so that ``reward(generate(noise))`` is low, per sample.

    ``iterations`` counts evaluations: the last one is evaluated, not stepped (ReNO's
    ``n_iters``). Samples are independent as long as ``generate`` and ``reward`` treat batch
    items independently: the loss is a sum over samples, gradients are clipped per sample,
    SGD is elementwise, and the best iterate is tracked per sample. Defaults are ReNO's
    (:data:`RENO`). Runs with autograd on even when called under ``torch.inference_mode``;
    making the generator's weights autograd-safe is the caller's job (and, for generators that
    update activations in place, running it under :func:`private_saved_tensors`).

    Non-finite values: a sample whose latent, loss or gradient is NaN/Inf at an iterate is
    never chosen there and takes no gradient step from it (its latent is not passed to
    ``reward``); the run ends with each sample's best finite iterate and a ``RuntimeWarning``
    (counts in :attr:`RenoResult.nonfinite`). A non-finite first iterate raises
    :class:`NonFiniteError`: that sample has nothing to start from.

    Finiteness and the best iterate are tracked on the device: the loop waits for it at the first iterate
    (for that error) and at the end, never per iteration (unless ``callback`` reads numbers).
    ``iteration_seconds`` are host seconds, which on an asynchronous device measure the queueing of the work.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    start = time.perf_counter()
    with torch.inference_mode(False), torch.enable_grad():
        # 1. the noise is the only leaf; the per-sample state lives on the loss's device (created at iteration 0)
        e = noise.detach().clone().requires_grad_(True)
        opt = torch.optim.SGD([e], lr=lr, momentum=momentum, nesterov=momentum > 0)
        n = e.shape[0]
        best_noise = best_latent = None
        history, seconds, stopped = [], [], False
        for it in range(iterations):
            t0 = time.perf_counter()
            # 2. generate and score; a non-finite latent is never shown to the reward (masked without asking the
            #    device whether there is one, so the reward's latent contract need not scan it either)
            latent = generate(e)
            finite = _finite(latent)
            latent = torch.where(_per_sample(finite, latent), latent, 0.0)
            with finite_by_construction():
                loss = reward(latent)
            if loss.shape != (n,):
                raise ValueError(f"reward must return one loss per sample, shape ({n},); got {tuple(loss.shape)}")
            value = torch.where(finite.to(loss.device), loss.detach().float(), float("nan"))
            ok = torch.isfinite(value)
            if it == 0:
                _require_finite_start(ok)  # the loop's one wait on the device before the end
                best_loss = torch.full_like(value, float("inf"))
                best_iteration = torch.zeros(n, dtype=torch.long, device=value.device)
                nonfinite = torch.zeros_like(best_iteration)
            # 3. track the best iterate per sample (reward only; a non-finite loss never wins)
            better = ok & (value < best_loss)
            best_loss = torch.where(better, value, best_loss)
            best_iteration = torch.where(better, it, best_iteration)
            best_noise = _take_best(best_noise, e, better)
            best_latent = _take_best(best_latent, latent, better)
            history.append(value)
            if callback is not None and callback(RenoProgress(it, iterations, value, best_loss.clone(), best_latent)):
                stopped = it < iterations - 1
            if stopped or it == iterations - 1:
                nonfinite += ~ok
                seconds.append(time.perf_counter() - t0)
                break
            # 4. regularise, backprop to the noise, clip per sample, step (no step from a non-finite sample)
            total = torch.where(ok, loss.float(), 0.0).sum() + norm_regulariser(e, reg_weight).sum()
            opt.zero_grad(set_to_none=True)
            total.backward()
            ok &= _finite(e.grad).to(ok.device)
            nonfinite += ~ok
            e.grad.masked_fill_(~_per_sample(ok, e.grad), 0.0)
            clip_grad_norm_per_sample_(e.grad, grad_clip)
            opt.step()
            seconds.append(time.perf_counter() - t0)
    best_loss, best_iteration, nonfinite = best_loss.cpu(), best_iteration.cpu(), nonfinite.cpu()
    if nonfinite.any():
        bad = {i: int(c) for i, c in enumerate(nonfinite.tolist()) if c}
        warnings.warn(f"ReNO: NaN/Inf latents, rewards or gradients at some iterates (batch item: count {bad} of "
                      f"{len(history)}); those iterates were never chosen and took no step, so the result is each "
                      "sample's best finite iterate", RuntimeWarning, stacklevel=2)
    return RenoResult(best_noise=best_noise, best_latent=best_latent, best_loss=best_loss,
                      best_iteration=best_iteration, history=torch.stack(history).cpu(), nonfinite=nonfinite,
                      stopped=stopped, seconds=time.perf_counter() - start, iteration_seconds=seconds)
