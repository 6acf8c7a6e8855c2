"""ComfyUI entry point of the Latent-CLIP node pack (V3 API).

Nodes are registered only when ComfyUI is importable, so ``latent_clip`` and the tests import
cleanly without it. Optional node modules (``rewards``, ``reno``, ``guidance``, ``verify`` in ``nodes/``)
are added inside try/except: their absence or failure costs their nodes only, never the pack.
"""
import importlib

try:
    import comfy.utils  # noqa: F401
    # The pack (here and every nodes/ module) imports comfy_api.latest, as ComfyUI's own comfy_extras do: in
    # 0.3.75 and 0.33.0 comfy_api.v0_0_2 only re-exports latest's io, ui and ComfyExtension (both STABLE = False),
    # so naming it would pin nothing, and latest is the name both versions load the pack with.
    from comfy_api.latest import ComfyExtension
except ImportError:  # not inside ComfyUI: the library alone
    ComfyExtension = None

OPTIONAL_MODULES = ("rewards", "reno", "guidance", "verify")
WEB_DIRECTORY = "./web"  # shows the nodes' text reports on the canvas

if ComfyExtension is not None:
    from .nodes import examples, loaders, score
    from .nodes._ui import log

    loaders.register_model_folder()

    def _optional_nodes() -> list:
        found = []
        for name in OPTIONAL_MODULES:
            try:
                found += importlib.import_module(f".nodes.{name}", __name__).NODES
            except ModuleNotFoundError as err:
                if err.name != f"{__name__}.nodes.{name}":
                    log.warning("nodes/%s.py not loaded: %s", name, err)
            except Exception as err:  # noqa: BLE001 - an optional module must not break the pack
                log.warning("nodes/%s.py failed to load: %r", name, err)
        return found

    class LatentCLIPExtension(ComfyExtension):
        async def get_node_list(self) -> list:
            return [*examples.NODES, *loaders.NODES, *score.NODES, *_optional_nodes()]

    async def comfy_entrypoint() -> "LatentCLIPExtension":
        return LatentCLIPExtension()
