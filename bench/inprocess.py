"""ComfyUI imported into this process, its arguments parsed as ``main.py --cpu`` would, with this
repository imported as the pack ComfyUI loads (``comfyui_latent_clip``): for the benches that measure
the pack inside ComfyUI and for the tests' in-process fixture."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def import_comfyui(comfy_dir: Path, *args: str) -> types.SimpleNamespace:
    """``comfy``, ``folder_paths``, ``nodes`` (ComfyUI's nodes.py) and ``pack`` (this repository as
    ComfyUI imports it), with ``comfy_dir`` first on sys.path and ``--cpu *args`` parsed."""
    comfy = import_comfy(comfy_dir, *args)
    comfy.pack = import_pack()
    return comfy


def import_comfy(comfy_dir: Path, *args: str) -> types.SimpleNamespace:
    """ComfyUI alone: ``comfy``, ``folder_paths`` and ``nodes``, as :func:`import_comfyui` imports them."""
    if str(comfy_dir) in sys.path:
        sys.path.remove(str(comfy_dir))
    sys.path.insert(0, str(comfy_dir))
    if "nodes" in sys.modules and not str(getattr(sys.modules["nodes"], "__file__", "")).startswith(str(comfy_dir)):
        del sys.modules["nodes"]  # our nodes/ package, not ComfyUI's nodes.py
    argv, sys.argv = sys.argv, [sys.argv[0], "--cpu", *args]
    try:
        import comfy.options
        comfy.options.enable_args_parsing()
        import comfy.model_management  # noqa: F401 - parses the arguments
        import comfy.utils  # noqa: F401
        import folder_paths
        import nodes as comfy_nodes
    finally:
        sys.argv = argv
    return types.SimpleNamespace(comfy=comfy, folder_paths=folder_paths, nodes=comfy_nodes)


def import_pack() -> types.ModuleType:
    """This repository imported as the pack ComfyUI loads (``comfyui_latent_clip``), once per process;
    ComfyUI must be importable (:func:`import_comfy`)."""
    pack = sys.modules.get("comfyui_latent_clip")
    if pack is None:
        spec = importlib.util.spec_from_file_location("comfyui_latent_clip", ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        pack = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = pack
        spec.loader.exec_module(pack)
    return pack
