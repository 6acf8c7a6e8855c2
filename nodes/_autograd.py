"""Autograd on ComfyUI's weights and conds: ComfyUI loads them under inference mode, and autograd
refuses to save inference tensors for backward. These helpers make them usable in place, and switch
ComfyUI's models to their differentiable code paths while a gradient is taken through them."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import comfy.model_management as mm
import torch
from torch import nn


@contextlib.contextmanager
def comfy_training_paths() -> Iterator[None]:
    """Sets ``comfy.model_management.in_training`` for the body, as ComfyUI's own trainer does around
    its loop (``comfy_extras/nodes_train.py``), so the models take their differentiable paths: from
    ComfyUI 0.8 FLUX's rotary embedding otherwise runs comfy_kitchen ops that have no autograd formula.
    The previous value is restored afterwards, also on an error or an interrupt. Does nothing on
    ComfyUI versions without the flag (it exists from 0.14; 0.3.75's models are plain torch)."""
    if not hasattr(mm, "in_training"):
        yield
        return
    previous, mm.in_training = mm.in_training, True
    try:
        yield
    finally:
        mm.in_training = previous


def autograd_safe_(module: nn.Module) -> int:
    """Make ``module``'s inference-tensor parameters and buffers usable by autograd, in place and
    without copying: each is replaced by a normal tensor on the same storage, and the module is
    frozen. Tensor subclasses (quantised weights) are cloned instead. Call once per run; returns
    how many tensors were replaced."""
    replaced = 0
    with torch.inference_mode(False):
        for m in module.modules():
            for tensors, wrap in ((m._parameters, lambda t: nn.Parameter(t, requires_grad=False)),
                                  (m._buffers, lambda t: t)):
                for key, t in tensors.items():
                    if t is not None and t.is_inference():
                        tensors[key] = wrap(_normal_view(t))
                        replaced += 1
    module.requires_grad_(False)
    return replaced


def _normal_view(t: torch.Tensor) -> torch.Tensor:
    """A normal tensor on ``t``'s storage (a clone for tensor subclasses). Call outside inference mode."""
    data = t.data if isinstance(t, nn.Parameter) else t
    if type(data) is not torch.Tensor:
        return data.clone()
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage(), t.storage_offset(), t.shape,
                                                               t.stride())


def clone_tensors_(obj):
    """Clone every tensor inside nested conds (dicts/lists), in place where possible, so none is an
    inference tensor (what ComfyUI's TrainSampler does with ``process_cond_list``)."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        for k, v in obj.items():
            obj[k] = clone_tensors_(v)
    elif isinstance(obj, list):
        obj[:] = [clone_tensors_(v) for v in obj]
    elif isinstance(obj, tuple):
        return tuple(clone_tensors_(v) for v in obj)
    elif isinstance(getattr(obj, "cond", None), torch.Tensor):
        obj.cond = obj.cond.clone()  # comfy.conds.CONDRegular and friends
    return obj
