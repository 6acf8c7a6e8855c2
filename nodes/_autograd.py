"""Autograd on ComfyUI's weights and conds: ComfyUI loads them under inference mode, and autograd
refuses to save inference tensors for backward. These helpers make them usable in place."""
from __future__ import annotations

import torch
from torch import nn


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
