"""Score, classify, filter and select LATENT batches with Latent-CLIP, without decoding them."""
from __future__ import annotations

from comfy_api.latest import io, ui
from comfy_execution.graph_utils import ExecutionBlocker

from . import _latent, loaders
from ..latent_clip import safety, score, zeroshot
from ..latent_clip.batch import select
from ..latent_clip.contract import tinyworld_warning
from ..latent_clip.fields import MAX_LABELS, MAX_TEMPLATES, finite
from ._schema import search_aliases
from ._ui import NodeText, progress_bar
from .loaders import LatentClip

LATENT_TIP = "Raw VAE latents (e.g. KSampler output) in the model's latent family (SDXL for the official weights)."
MODEL_TIP = "A Latent-CLIP model from Load Latent-CLIP."
PROMPT_TIP = "Text to compare each latent with."
REPORT_TIP = "as a Markdown code block (Preview Any shows it whole, columns aligned)"


def _common_inputs(prompt: bool = True) -> list:
    inputs = [io.Latent.Input("latent", tooltip=LATENT_TIP), LatentClip.Input("latent_clip", tooltip=MODEL_TIP)]
    if prompt:
        inputs.append(io.String.Input("prompt", multiline=True, default="a photo of a cat", tooltip=PROMPT_TIP))
    return inputs


def _model_and_latents(latent_clip, latent: dict, text: NodeText):
    """The loaded model, the LATENT's samples and the node's progress callback; warns on a senseless pairing."""
    model, z = loaders.model_of(latent_clip), _latent.samples(latent)
    if warning := tinyworld_warning(model.config.vision, z):
        text.warn(f"{warning}, chosen in Load Latent-CLIP")
    return model, z, progress_bar(text.node_id)


def _reported(*outputs, report: str) -> io.NodeOutput:
    """``outputs``, then ``report`` as the last output and as the node's preview text. The output is a
    Markdown code block: Preview Any renders Markdown, and a code block keeps line breaks and columns."""
    return io.NodeOutput(*outputs, f"```\n{report}\n```", ui=ui.PreviewText(report))


class LatentCLIPScore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LatentCLIPScore", display_name="Latent-CLIP Score", category="latent_clip/scoring",
            **search_aliases("clip score", "latent clip", "prompt similarity", "text similarity", "cosine similarity"),
            description="Cosine similarity and CLIP logit of every latent in the batch against a prompt.",
            inputs=_common_inputs(), hidden=[io.Hidden.unique_id], is_output_node=True,
            outputs=[io.Float.Output(display_name="cosine", is_output_list=True,
                                     tooltip="Per-sample cosine similarity in [-1, 1], one list item per latent."),
                     io.Float.Output(display_name="logit", is_output_list=True,
                                     tooltip="Per-sample CLIP logit (logit_scale.exp() * cosine)."),
                     io.String.Output(display_name="report",
                                      tooltip=f"The table shown on the node, {REPORT_TIP}.")])

    @classmethod
    def execute(cls, latent: dict, latent_clip, prompt: str) -> io.NodeOutput:
        model, z, progress = _model_and_latents(latent_clip, latent, NodeText(cls.hidden.unique_id))
        s = score.score_latents(model, z, prompt, progress)
        cos, logit = s.cosine[:, 0].tolist(), s.logits[:, 0].tolist()
        text = f"prompt: {prompt.strip()}\n" + _latent.table(
            ["#", "cosine", "logit"], [[i, f"{c:.4f}", f"{g:.3f}"] for i, (c, g) in enumerate(zip(cos, logit))])
        return _reported(cos, logit, report=text)


class LatentCLIPZeroShot(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LatentCLIPZeroShot", display_name="Latent-CLIP Zero-Shot Classify",
            **search_aliases("zero-shot", "zero shot", "classify", "classifier", "labels", "latent clip"),
            category="latent_clip/scoring", is_output_node=True, hidden=[io.Hidden.unique_id],
            description="Classifies every latent into one of the given labels (zero-shot, template ensemble).",
            inputs=[*_common_inputs(prompt=False),
                    io.String.Input("labels", multiline=True, default="cat\ndog\ncar",
                                    tooltip="Class labels, one per line."),
                    io.String.Input("templates", multiline=True, default="a photo of a {}.",
                                    tooltip="Prompt templates, one per line; {} is replaced by the label and "
                                            "the class embedding is the mean over templates.")],
            outputs=[io.String.Output(display_name="label", is_output_list=True, tooltip="Top label per latent."),
                     io.Float.Output(display_name="probability", is_output_list=True,
                                     tooltip="Probability of the top label per latent."),
                     io.String.Output(display_name="table",
                                      tooltip=f"Probabilities of every label, per latent, {REPORT_TIP}.")])

    @classmethod
    def execute(cls, latent: dict, latent_clip, labels: str, templates: str) -> io.NodeOutput:
        text = NodeText(cls.hidden.unique_id)
        model, z, progress = _model_and_latents(latent_clip, latent, text)
        names = _latent.lines(labels, "labels", MAX_LABELS)
        patterns = _latent.lines(templates, "templates", MAX_TEMPLATES)  # build_classifier checks each
        classifier = zeroshot.build_classifier(model, names, patterns, progress)
        if len(names) == 1:
            text.warn(f"only one label ({names[0]!r}): its probability is always 1.0; add the labels to tell it "
                      f"apart from, one per line")
        probs = zeroshot.classify(model, z, classifier, progress)
        top_p, top = probs.max(dim=-1)
        rows = [[i, names[k], *(f"{p:.3f}" for p in row)] for i, (k, row) in enumerate(zip(top.tolist(), probs.tolist()))]
        return _reported([names[k] for k in top.tolist()], top_p.tolist(),
                         report=_latent.table(["#", "top", *names], rows))


class LatentCLIPSafetyFilter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LatentCLIPSafetyFilter", display_name="Latent-CLIP Safety Filter",
            **search_aliases("nsfw", "safety", "safety checker", "content filter", "censor", "latent clip"),
            category="latent_clip/filtering", is_output_node=True, hidden=[io.Hidden.unique_id],
            description="Blocks latents that look more like a concept than like its harmless counter-prompt.",
            inputs=[*_common_inputs(prompt=False),
                    io.String.Input("concepts", multiline=True, default="nudity\nviolence",
                                    tooltip="Concepts to block, one per line, optionally 'concept | counter-prompt' "
                                            "(known concepts have a built-in counter-prompt)."),
                    io.Float.Input("threshold", default=0.5, min=0.0, max=1.0, step=0.01,
                                   tooltip="Block a latent when p(concept vs counter-prompt) reaches this."),
                    io.Combo.Input("action", options=list(safety.ACTIONS), default="drop",
                                   tooltip="drop: remove blocked latents from the batch (all blocked: the nodes fed "
                                           "by 'latent' are skipped and the report still shows); replace with noise: "
                                           "fresh seeded noise; zero: all-zero latent; pass with flag: unchanged."),
                    io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, control_after_generate=True,
                                 tooltip="Seed of the replacement noise (action 'replace with noise'); starts "
                                         "'fixed' so the filter does not re-run on every queue.")],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The filtered batch."),
                     io.Boolean.Output(display_name="flagged", is_output_list=True,
                                       tooltip="Per input latent: True if blocked."),
                     io.Boolean.Output(display_name="any_flagged", tooltip="True if any latent was blocked."),
                     io.String.Output(display_name="report",
                                      tooltip=f"Concept probabilities per latent, {REPORT_TIP}.")])

    @classmethod
    def execute(cls, latent: dict, latent_clip, concepts: str, threshold: float, action: str,
                seed: int) -> io.NodeOutput:
        model, z, progress = _model_and_latents(latent_clip, latent, NodeText(cls.hidden.unique_id))
        result = safety.check(model, z, safety.parse_concepts(concepts), threshold, progress)
        out = safety.apply_action(latent, result.flagged, action, model.config.vision.family, seed)
        text = f"action: {action}\n" + safety.report(result)
        if out is None:  # everything dropped: nodes fed by `latent` are skipped, the job still succeeds
            out = ExecutionBlocker(None)
            text += "\nevery latent was blocked: nothing passed on, the nodes after this one were skipped"
        flags = result.flagged.tolist()
        return _reported(out, flags, any(flags), report=text)


class LatentCLIPSelectBest(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LatentCLIPSelectBest", display_name="Latent-CLIP Select Best-k",
            **search_aliases("best of n", "best-of-n", "rank", "rerank", "clip score", "latent clip"),
            category="latent_clip/filtering", is_output_node=True, hidden=[io.Hidden.unique_id],
            description="Best-of-N without decoding: keeps the k latents that match the prompt best, best first.",
            inputs=[*_common_inputs(),
                    io.Int.Input("k", default=1, min=1, max=4096, tooltip="How many latents to keep (at most the batch size).")],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The k best latents, best first; "
                                      "batch_index records their place in the input batch."),
                     io.Int.Output(display_name="best_index", tooltip="Batch index of the best latent."),
                     io.String.Output(display_name="report",
                                      tooltip=f"The ranking shown on the node, {REPORT_TIP}.")])

    @classmethod
    def execute(cls, latent: dict, latent_clip, prompt: str, k: int) -> io.NodeOutput:
        finite(k, "k")
        model, z, progress = _model_and_latents(latent_clip, latent, NodeText(cls.hidden.unique_id))
        order, cosine = score.rank_by_prompt(model, z, prompt, progress)
        order = order[:k].tolist()
        text = f"prompt: {prompt.strip()}\nkept {len(order)} of {len(cosine)}\n" + _latent.table(
            ["rank", "#", "cosine"], [[r, i, f"{cosine[i]:.4f}"] for r, i in enumerate(order)])
        return _reported(select(latent, order), order[0], report=text)


class LatentCLIPScoreThreshold(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LatentCLIPScoreThreshold", display_name="Latent-CLIP Score Threshold",
            **search_aliases("compare score", "score switch", "clip score", "latent clip"),
            category="latent_clip/utils",
            description="Turns a score into a BOOLEAN/INT for switches and routing (one result per list item).",
            inputs=[io.Float.Input("score", default=0.0, min=-1e4, max=1e4, step=0.001, force_input=True,
                                   tooltip="A score, e.g. cosine or logit from Latent-CLIP Score."),
                    io.Float.Input("threshold", default=0.25, min=-1e4, max=1e4, step=0.001,
                                   tooltip="Value to compare the score with."),
                    io.Combo.Input("comparison", options=[">=", "<"], default=">=",
                                   tooltip="passed = score >= threshold, or score < threshold.")],
            outputs=[io.Boolean.Output(display_name="passed", tooltip="The comparison's result."),
                     io.Int.Output(display_name="as_int", tooltip="1 if passed else 0 (for index switches).")])

    @classmethod
    def execute(cls, score: float, threshold: float, comparison: str) -> io.NodeOutput:
        finite(score, "score")
        finite(threshold, "threshold")
        passed = score >= threshold if comparison == ">=" else score < threshold
        return io.NodeOutput(passed, int(passed))


NODES = [LatentCLIPScore, LatentCLIPZeroShot, LatentCLIPSafetyFilter, LatentCLIPSelectBest, LatentCLIPScoreThreshold]
