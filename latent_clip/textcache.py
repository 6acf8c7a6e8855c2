"""Text embeddings kept for reuse, so that a prompt or label scored again is not encoded again.

Keys: the model instance (a token of its own, never reused), the version of its text tower's weights (each
tensor's storage, dtype and in-place write counter: a reloaded, cast, moved, trained or patched model misses),
``normalize`` and the text. Bounded by entries and bytes, least recently used out first; a model's rows are
dropped when the model is garbage-collected. The cache holds
detached copies and every call returns a new tensor, so a caller writing to its result changes nothing here.
Cached rows carry no graph: where a gradient must reach the text tower (grad enabled and a text weight that
requires grad) the cache is bypassed.
"""
from __future__ import annotations

import itertools
import threading
import weakref
from collections import OrderedDict
from typing import Callable, Sequence

import torch
from torch import nn

MAX_ENTRIES = 4096        # a zero-shot list of 1,000 labels x 4 templates fits
MAX_BYTES = 64 * 2 ** 20  # 4,096 fp32 rows of 4,096 dims; a B/8's rows are 2 KiB

_tokens = itertools.count()
_token_lock = threading.Lock()


def text_weights(model: nn.Module) -> list[torch.Tensor]:
    """The tensors that decide a CLIP's text embeddings (open_clip's text tower at the model's top level)."""
    return [model.token_embedding.weight, model.positional_embedding, *model.transformer.parameters(),
            *model.ln_final.parameters(), model.text_projection]


def weights_version(model: nn.Module) -> tuple:
    """What changes whenever ``model``'s text embeddings may: its instance token and, per text weight, storage
    address, dtype and in-place write counter (``load_state_dict``, optimiser steps and ``.to()`` all move one).
    Inference tensors (weights loaded under ``torch.inference_mode``, as in ComfyUI) keep no write counter: for
    them the address, dtype and device are the version, so an in-place write inside inference mode is not seen."""
    with _token_lock:
        token = model.__dict__.setdefault("_text_cache_token", next(_tokens))
    return token, tuple((t.data_ptr(), t.dtype, t.device, None if t.is_inference() else t._version)
                        for t in text_weights(model))


def needs_graph(model: nn.Module) -> bool:
    """True when a text embedding computed now would carry a gradient to the text tower."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in text_weights(model))


class TextCache:
    """An LRU map (model version, normalize, text) -> embedding row, within ``max_entries`` and ``max_bytes``."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._rows: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._watched: set[int] = set()

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()
            self._bytes = 0

    def encode(self, model: nn.Module, texts: Sequence[str], normalize: bool,
               encode: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
        """(N, D) embeddings of ``texts``: cached rows where present, ``encode(missing texts)`` for the rest
        (each distinct text once, in order). Calls ``encode(texts)`` alone for no texts or when :func:`needs_graph`."""
        if not texts or needs_graph(model):
            return encode(list(texts))
        version = weights_version(model)
        if version[0] not in self._watched:  # a model's rows go with it (they may hold GPU memory)
            self._watched.add(version[0])
            weakref.finalize(model, self._forget, version[0])
        keys = [(version, normalize, t) for t in texts]
        with self._lock:
            found = {k: self._rows[k] for k in keys if k in self._rows}
            for k in found:
                self._rows.move_to_end(k)
        missing = list(dict.fromkeys(k[2] for k in keys if k not in found))
        if missing:
            fresh = encode(missing).detach()
            with torch.inference_mode(False):  # one copy per row, usable outside inference mode too
                rows = [row.clone() for row in fresh.unbind()]
            found.update(self._store([(version, normalize, t) for t in missing], rows))
        return torch.stack([found[k] for k in keys])

    def _forget(self, token: int) -> None:
        with self._lock:
            for key in [k for k in self._rows if k[0][0] == token]:
                self._bytes -= self._rows.pop(key).nbytes
            self._watched.discard(token)

    def _store(self, keys: list[tuple], rows: list[torch.Tensor]) -> dict[tuple, torch.Tensor]:
        stored = dict(zip(keys, rows))
        with self._lock:
            for key, row in stored.items():
                if key in self._rows:
                    self._bytes -= self._rows.pop(key).nbytes
                self._rows[key] = row
                self._bytes += row.nbytes
            while self._rows and (len(self._rows) > self.max_entries or self._bytes > self.max_bytes):
                self._bytes -= self._rows.popitem(last=False)[1].nbytes
        return stored


TEXT_CACHE = TextCache()
