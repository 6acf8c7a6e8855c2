"""The example latents that ship with the pack, as a LATENT with their captions: a first graph with nothing
downloaded, whose answers a person can check."""
from __future__ import annotations

from comfy_api.latest import io, ui

from ..latent_clip.examples import example_latents
from ._schema import search_aliases


def numbered(captions: list[str]) -> str:
    """One caption per line, numbered as the reports number the latents."""
    return "\n".join(f"{i}: {caption}" for i, caption in enumerate(captions))


class LatentCLIPExampleLatents(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LatentCLIPExampleLatents", display_name="Latent-CLIP Example Latents (tiny world)",
            category="latent_clip",
            **search_aliases("example", "demo", "tiny world", "start here", "sample latents"),
            description="18 latents of the pack's tiny world (one shape of each colour and kind) with their "
                        "captions, for the embedded demo Latent-CLIP: nothing to download, answers you can check.",
            inputs=[],
            outputs=[io.Latent.Output(display_name="latent",
                                      tooltip="18 raw 8x8x4 latents of the tiny-world VAE (64 px images), for "
                                              "Load Latent-CLIP's 'tinyworld (embedded demo)' only."),
                     io.String.Output(display_name="captions",
                                      tooltip="What each latent shows, one per line, numbered like the reports' "
                                              "'#' column: the answers to check a report against."),
                     io.String.Output(display_name="labels",
                                      tooltip="The colours to classify the latents by, one per line (the demo "
                                              "model tells colours apart, not shapes): for Zero-Shot's labels."),
                     io.String.Output(display_name="templates",
                                      tooltip="Prompt templates that classify these labels well, one per line: "
                                              "for Zero-Shot's templates.")])

    @classmethod
    def execute(cls) -> io.NodeOutput:
        examples = example_latents()
        captions = numbered(examples.captions)
        return io.NodeOutput({"samples": examples.latents}, captions, "\n".join(examples.labels),
                             "\n".join(examples.templates), ui=ui.PreviewText(captions))


NODES = [LatentCLIPExampleLatents]
