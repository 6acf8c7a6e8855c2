"""ComfyUI's schema conventions, written once for every ComfyUI the pack supports (0.3.75 and 0.33.0).

* :func:`advanced` marks an expert-only input, as ComfyUI marks its own (``sigma_max`` of the Karras scheduler,
  ``device`` of Load CLIP): the server sends ``"advanced": true`` in the input's options in ``/object_info``.
  Frontends 1.48.7 and 1.58.1 then hide it on Nodes 2.0 nodes until the person clicks the node's "Show
  advanced inputs"; their classic canvas, and frontend 1.32.9 everywhere, still show it. 0.33.0's ``io.Input`` has an ``advanced`` argument, 0.3.75's
  has not; both merge an input's ``extra_dict`` into those options, so that is the one way for both.
* :func:`search_aliases` gives a node the words people type into the node search to find it
  (``io.Schema.search_aliases``: a field in 0.33.0, not in 0.3.75; the search of frontends 1.48.7 and 1.58.1
  matches it beside the node's name); where ``io.Schema`` lacks the field they are left out, so the node
  still registers.
"""
from __future__ import annotations

import dataclasses

from comfy_api.latest import io

SCHEMA_HAS_ALIASES = "search_aliases" in {f.name for f in dataclasses.fields(io.Schema)}


def advanced(expert: io.Input) -> io.Input:
    """``expert``, marked as an advanced input (changed in place and returned)."""
    expert.extra_dict["advanced"] = True
    return expert


def search_aliases(*words: str) -> dict:
    """``io.Schema`` keyword arguments: ``search_aliases=[*words]`` where ``io.Schema`` has the field, else none."""
    return {"search_aliases": list(words)} if SCHEMA_HAS_ALIASES else {}
