"""Writes the example workflows from one spec per capability.

* ``example_workflows/<title>.json``: UI format (v0.4), the real SDXL-Turbo graph users drag onto the
  canvas, with their ``<title>.jpg`` thumbnails (written by tests/end_to_end/test_workflows_browser.py); ComfyUI
  lists them under the left sidebar Templates -> Extensions -> comfyui-latent-clip, titled by file name (and
  described by it too, with every '-' and '_' turned into a space: titles hold neither). A Markdown note at the top
  left says in one line what the graph shows and what to set (TEMPLATES), as a heading; each graph opens at the
  zoom that shows it whole (layout). One node titled "Prompt" (PROMPT) feeds both the text encoder and the
  Latent-CLIP reward or selection.
* ``workflows/api/<name>.json``: the same graphs in API format (for scripts that POST to /prompt),
  with the same model file names.
* ``tests/api_workflows/<name>.json``: test twins the tests POST. They replace the SDXL-Turbo part
  (checkpoint, text encoders, KSampler) by ``LoadLatent`` of a test latent file and load the tiny
  test weights; the Latent-CLIP part is the same nodes with the same values, plus a Preview Any on
  each per-sample output so the tests read every value. The ReNO/guidance/verifier twins (RENO_SPECS,
  VERIFY_SPECS) keep the whole graph on the tests' random SD1.5 checkpoint at 64 px with tiny Latent-CLIP
  weights of the SD1.5 family (a valid pairing too), 2 iterations, few steps, and SaveLatent instead of decoding.

Each template previews its node's text report (one string): Preview Any shows only the first item
of a list output. Widget order comes from a running server's /object_info (this script boots one
with the test harness when no URL is given):
    .venv/bin/python workflows/build.py [http://127.0.0.1:8188]
"""
from __future__ import annotations

import json
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from latent_clip.examples import example_latents  # noqa: E402
from latent_clip.pretrained import get_pretrained  # noqa: E402

UI_DIR, API_DIR, TEST_DIR = ROOT / "example_workflows", ROOT / "workflows" / "api", ROOT / "tests" / "api_workflows"
NOTE = "MarkdownNote"  # frontend-only (not in /object_info): one text widget, no slots
NOTE_INFO = {"input": {"required": {"text": ["STRING", {}]}}, "output": [], "output_name": []}
# Node sizes (body, without the title bar) with room for every widget and for what a run adds.
SIZES = {"LatentCLIPLoader": (360, 130), "LatentCLIPScoreThreshold": (300, 110), "PreviewAny": (480, 280),
         "CLIPTextEncode": (360, 160), "KSampler": (320, 330), "SaveImage": (380, 400),
         "LatentCLIPScore": (400, 300), "LatentCLIPZeroShot": (480, 400), "LatentCLIPSafetyFilter": (440, 400),
         "LatentCLIPSelectBest": (400, 300), "LatentCLIPRewardPrompt": (380, 200), "LatentCLIPRenoSampler": (380, 300),
         "LatentCLIPReno": (400, 420), "LatentCLIPAvoidGuider": (400, 400), "PrimitiveStringMultiline": (360, 140),
         "CheckpointLoaderSimple": (360, 100), "EmptyLatentImage": (320, 110), "KSamplerSelect": (320, 60),
         "RandomNoise": (320, 80), "SDTurboScheduler": (320, 110), "BasicGuider": (240, 60), "VAEDecode": (220, 60),
         "LatentCLIPPruneSampler": (380, 260), "LatentCLIPSafetyStopSampler": (400, 330), "CFGGuider": (320, 110),
         "BasicScheduler": (320, 110), NOTE: (400, 180)}
SIZES["LatentCLIPExampleLatents"] = (420, 330)  # its captions shown on it
# Sizes of one template's nodes where its reports are longer (the first graph's: 18 rows each).
TEMPLATE_SIZES = {"latent_clip_first_graph": {"LatentCLIPZeroShot": (480, 680), "LatentCLIPScore": (400, 500)},
                  **{name: {"SamplerCustomAdvanced": (440, 420)} for name in ("prune_sdxl_turbo", "safety_stop_sdxl")}}
DEFAULT_SIZE, TITLE_HEIGHT, GAP = (360, 120), 30, 40
# The canvas a 1600x1000 window shows clear of every tested frontend's bars, sidebar and zoom controls (screen px,
# measured on 1.32.9, 1.48.7 and 1.58.1; tests/end_to_end/test_workflows_browser.py checks each node is there).
# Each template opens scaled to fit it (layout), never above 100 %.
FREE_VIEW = (80, 150, 1560, 920)
PROMPT = 7  # the one prompt node of a graph that generates for a prompt and rewards or selects by it
TITLES = {PROMPT: "Prompt"}  # node id -> its title on the canvas, where the class's own name would not say it
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CKPT, LC_WEIGHTS = "sd_xl_turbo_1.0_fp16.safetensors", "latent-clip-b-8-512-34b-80k.pt"
SDXL_BASE = "sd_xl_base_1.0.safetensors"  # a multi-step model of the same latent family (the SDXL VAE)
MODELS = {  # model file -> its download, for the loaders' properties.models
    CKPT: {"url": "https://huggingface.co/stabilityai/sdxl-turbo/resolve/main/" + CKPT, "directory": "checkpoints"},
    SDXL_BASE: {"url": "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/" + SDXL_BASE,
                "directory": "checkpoints"},
    LC_WEIGHTS: {"url": get_pretrained(Path(LC_WEIGHTS).stem).url, "directory": "latent_clip"}}
# Template id (the file name in workflows/api/ and tests/api_workflows/) -> its title (its file name in
# example_workflows/, all ComfyUI's template browser shows of it) and its note's one line.
TEMPLATES = {
    "latent_clip_score": ("Score latents against a prompt", "Scores 4 SDXL-Turbo latents against a prompt without "
                          "decoding them. Set the prompt on **Latent-CLIP Score**; the report lists each sample's "
                          "cosine."),
    "latent_clip_zero_shot": ("Classify latents with your labels", "Gives each latent the closest of your labels "
                              "without decoding. Labels one per line on **Latent-CLIP Zero-Shot Classify**; the "
                              "report shows every label's probability."),
    "latent_clip_safety_filter": ("Safety filter before decoding", "Blocks latents close to a concept before they are "
                                  "decoded. Concepts one per line, threshold and action on **Latent-CLIP Safety "
                                  "Filter**; the report says what was blocked."),
    "latent_clip_best_of_n": ("Best of 8 for a prompt", "Generates 8 latents and decodes only the one closest to the "
                              "prompt. Write the prompt in **Prompt**: it feeds both the generation and the "
                              "selection."),
    "reno_sdxl_turbo": ("ReNO noise optimisation (sampler)", "ReNO: optimises a 1-step sample's noise until "
                        "Latent-CLIP finds the prompt, no decoding in the loop. Write the prompt in **Prompt**; "
                        "iterations and lr on **ReNO Sampler**."),
    "reno_sdxl_turbo_prompt": ("ReNO noise optimisation (one node)", "ReNO in one node: optimises the noise until "
                               "Latent-CLIP finds the prompt, then samples it. Write the prompt in **Prompt**; "
                               "iterations and lr on **ReNO with this prompt**."),
    "guidance_sdxl_turbo": ("Steer sampling away from concepts", "Steers 4-step sampling away from concepts: one per "
                            "line and strength on **Latent-CLIP Safety Guider**. Its cfg is 1.5 so that the negative "
                            "prompt counts (at cfg 1 ComfyUI skips it); SDXL-Turbo is made for cfg 1: keep it low."),
    "prune_sdxl_turbo": ("Prune 8 candidates after one step", "Samples 8 candidates for 1 of 4 steps, keeps the 2 "
                         "Latent-CLIP finds closest to the prompt, finishes and decodes only those. Prompt in "
                         "**Prompt**; keep and at_step on **Prune Sampler**; the report shows under "
                         "**SamplerCustomAdvanced**."),
    "safety_stop_sdxl": ("Stop unsafe candidates early", "SDXL, 20 steps: at step 5 stops the candidates close to a "
                         "concept instead of finishing them. Concepts, threshold and action on **Safety Stop "
                         "Sampler**; the report shows under **SamplerCustomAdvanced**."),
}
# The first graph: nothing to download (the pack's example latents and its embedded demo model), answers checkable.
FIRST_PROMPT = "a red circle"  # caption #17; the demo model tells colours apart, not shapes
TEMPLATES["latent_clip_first_graph"] = (
    "Start here (no downloads)",
    "Runs as it is, nothing to download: 18 tiny-world latents (captions on **Latent-CLIP Example Latents**) and "
    "the small model that ships with the pack. Check: **Zero-Shot** names each latent's colour as its caption "
    f"does; **Score** ranks the red ones (#6, #9, #17) above the rest for `{FIRST_PROMPT}`. This model knows "
    "colours, not shapes: labels `circle`, `square`, `triangle` with the template `a {}` get guesses.")
TEST_WEIGHTS, TEST_LATENT = "latent_clip_tiny.safetensors", "latent_clip_test.latent"
POSITIVE = "a photo of a cat sitting on a windowsill, golden hour"


def L(node: int, slot: int = 0) -> list:  # noqa: N802 - a link in a spec
    return [node, slot]


def prompt_node(text: str) -> dict:
    """Node PROMPT: the graph's one prompt, a core text node (ComfyUI 0.3.75 and 0.33: "PrimitiveStringMultiline")."""
    return {PROMPT: ("PrimitiveStringMultiline", {"value": text})}


def sdxl_turbo(batch: int, prompt: str | list = POSITIVE) -> dict:
    """Nodes 1-6: SDXL-Turbo txt2img of ``prompt`` (a text or a link) to a LATENT (node 5); node 1's VAE is output 2."""
    return {
        1: ("CheckpointLoaderSimple", {"ckpt_name": CKPT}),
        2: ("CLIPTextEncode", {"text": prompt, "clip": L(1, 1)}),
        3: ("CLIPTextEncode", {"text": "", "clip": L(1, 1)}),
        4: ("EmptyLatentImage", {"width": 512, "height": 512, "batch_size": batch}),
        5: ("KSampler", {"model": L(1), "positive": L(2), "negative": L(3), "latent_image": L(4),
                         "seed": 0, "steps": 1, "cfg": 1.0, "sampler_name": "euler_ancestral",
                         "scheduler": "sgm_uniform", "denoise": 1.0}),
        6: ("LatentCLIPLoader", {"model_name": LC_WEIGHTS, "dtype": "auto", "device": "default"}),
    }


def decode(src: list, prefix: str) -> dict:
    return {20: ("VAEDecode", {"samples": src, "vae": L(1, 2)}),
            21: ("SaveImage", {"images": L(20), "filename_prefix": prefix})}


SPECS = {
    "latent_clip_score": {**sdxl_turbo(4),
        10: ("LatentCLIPScore", {"latent": L(5), "latent_clip": L(6), "prompt": "a photo of a cat"}),
        12: ("PreviewAny", {"source": L(10, 2)}),
        **decode(L(5), "latent_clip/score")},
    "latent_clip_zero_shot": {**sdxl_turbo(4),
        10: ("LatentCLIPZeroShot", {"latent": L(5), "latent_clip": L(6),
                                    "labels": "cat\ndog\ncar\nlandscape\nportrait of a person",
                                    "templates": "a photo of a {}.\na picture of a {}."}),
        12: ("PreviewAny", {"source": L(10, 2)}),
        **decode(L(5), "latent_clip/zero_shot")},
    "latent_clip_safety_filter": {**sdxl_turbo(4),
        10: ("LatentCLIPSafetyFilter", {"latent": L(5), "latent_clip": L(6),
                                        "concepts": "nudity\nviolence | a photo of a peaceful scene",
                                        "threshold": 0.5, "action": "drop", "seed": 0}),
        12: ("PreviewAny", {"source": L(10, 3)}),
        **decode(L(10, 0), "latent_clip/safe")},
    "latent_clip_best_of_n": {**sdxl_turbo(8, L(PROMPT)), **prompt_node("a photo of a cat sitting on a windowsill"),
        10: ("LatentCLIPSelectBest", {"latent": L(5), "latent_clip": L(6), "prompt": L(PROMPT), "k": 1}),
        12: ("PreviewAny", {"source": L(10, 2)}),
        **decode(L(10, 0), "latent_clip/best_of_n")},
}

EMBEDDED = "tinyworld (embedded demo)"  # Load Latent-CLIP's choice for the model that ships with the pack
EXAMPLES = example_latents()  # the labels and templates that classify them, written into Zero-Shot's widgets
FIRST_GRAPH = {  # no model file: the graph, its API copy and its test twin are one
    "latent_clip_first_graph": {
        1: ("LatentCLIPExampleLatents", {}),
        6: ("LatentCLIPLoader", {"model_name": EMBEDDED, "dtype": "auto", "device": "default"}),
        10: ("LatentCLIPZeroShot", {"latent": L(1), "latent_clip": L(6), "labels": "\n".join(EXAMPLES.labels),
                                    "templates": "\n".join(EXAMPLES.templates)}),
        11: ("LatentCLIPScore", {"latent": L(1), "latent_clip": L(6), "prompt": FIRST_PROMPT}),
        20: ("PreviewAny", {"source": L(10, 2)}),
        21: ("PreviewAny", {"source": L(11, 2)}),
    },
}

TEST_SOURCE = {5: ("LoadLatent", {"latent": TEST_LATENT}),
               6: ("LatentCLIPLoader", {"model_name": TEST_WEIGHTS, "dtype": "auto", "device": "default"})}


def _inputs(info: dict) -> list[tuple[str, str, dict]]:
    """(name, type, options) of each input of an /object_info entry, required ones first."""
    return [(name, "COMBO" if isinstance(spec[0], list) else spec[0], spec[1] if len(spec) > 1 else {})
            for part in ("required", "optional") for name, spec in info["input"].get(part, {}).items()]


def columns_of(spec: dict) -> list[list[int]]:
    """Node ids by column, in id order: a node with inputs sits one column right of its furthest source, a node
    without (a loader, a prompt) one column left of its nearest consumer, so that it waits beside where it is used;
    the note stays in the first column."""
    depth: dict[int, int] = {}

    def sources(nid: int) -> list[int]:
        return [v[0] for v in spec[nid][1].values() if isinstance(v, list)]

    def depth_of(nid: int) -> int:
        if nid not in depth:
            depth[nid] = 1 + max(map(depth_of, sources(nid))) if sources(nid) else 0
        return depth[nid]

    for nid in spec:
        depth_of(nid)
    for nid in spec:
        consumers = [depth[c] for c in spec if nid in sources(c)]
        if not sources(nid) and consumers:
            depth[nid] = min(consumers) - 1
    columns: dict[int, list[int]] = {}
    for nid in sorted(spec):
        columns.setdefault(depth[nid], []).append(nid)
    return [columns[c] for c in sorted(columns)]


def layout(spec: dict, sizes: dict = SIZES) -> tuple[dict[int, tuple[int, int]], dict]:
    """Each node's position and the view it opens in (``extra.ds``): the columns of columns_of, a tall one split
    in two or more side by side, wrapped into rows, boxes (title bar included) GAP apart with ``sizes`` (SIZES,
    with a template's TEMPLATE_SIZES: room for what a run adds, reports and previews); of all splits and wraps,
    the one whose whole fits FREE_VIEW at the largest scale."""
    def height(column: list[int]) -> int:
        return sum(size_of(spec[n][0], sizes)[1] + TITLE_HEIGHT + GAP for n in column) - GAP

    def width(column: list[int]) -> int:
        return max(size_of(spec[n][0], sizes)[0] for n in column)

    free_w, free_h = FREE_VIEW[2] - FREE_VIEW[0], FREE_VIEW[3] - FREE_VIEW[1]
    best = (0.0, [])
    for limit in sorted({height(c[:i + 1]) for c in columns_of(spec) for i in range(len(c))}):
        columns = [chunk for column in columns_of(spec) for chunk in _split(column, limit, height)]
        for breaks in range(2 ** (len(columns) - 1)):  # bit i set: a new row after column i
            rows = [[columns[0]]]
            for i, column in enumerate(columns[1:]):
                rows.append([column]) if breaks >> i & 1 else rows[-1].append(column)
            w = max(sum(map(width, row)) + GAP * (len(row) - 1) for row in rows)
            h = sum(max(map(height, row)) for row in rows) + GAP * (len(rows) - 1)
            scale = min(1.0, free_w / w, free_h / h)
            if scale > best[0]:
                best = (scale, rows)
    scale, rows = best
    pos, y = {}, TITLE_HEIGHT
    for row in rows:
        x = 0
        for column in row:
            top = y
            for nid in column:
                pos[nid] = (x, top)
                top += size_of(spec[nid][0], sizes)[1] + TITLE_HEIGHT + GAP
            x += width(column) + GAP
        y += max(map(height, row)) + GAP
    view = {"scale": round(scale, 3), "offset": [round(FREE_VIEW[0] / scale), round(FREE_VIEW[1] / scale)]}
    return pos, view


def _split(column: list[int], limit: int, height) -> list[list[int]]:
    """``column`` in order, as chunks no taller than ``limit`` (a taller node alone)."""
    chunks = [[column[0]]]
    for nid in column[1:]:
        if height(chunks[-1] + [nid]) > limit:
            chunks.append([nid])
        else:
            chunks[-1].append(nid)
    return chunks


def size_of(cls: str, sizes: dict = SIZES) -> tuple[int, int]:
    return sizes.get(cls, DEFAULT_SIZE)


def model_downloads(values: dict) -> list[dict]:
    """``properties.models`` of a loader, as ComfyUI's own templates write it (the frontend's
    missing-models dialog reads it): the model files among ``values`` with their download."""
    return [{"name": v, **MODELS[v]} for v in values.values() if isinstance(v, str) and v in MODELS]


def note_markdown(name: str) -> str:
    """The note of template ``name``: its line as a Markdown heading (15 px in the frontend, text 10 px)."""
    return "## " + TEMPLATES[name][1]


def to_ui(name: str, spec: dict, object_info: dict) -> dict:
    """``spec`` in UI format, headed by its note (node 0, top left)."""
    spec = {0: (NOTE, {"text": note_markdown(name)}), **spec}
    nodes, links, link_id = {}, [], 0
    order = {nid: i for i, nid in enumerate(n for column in columns_of(spec) for n in column)}  # sources first
    sizes = {**SIZES, **TEMPLATE_SIZES.get(name, {})}
    positions, view = layout(spec, sizes)
    for nid in order:
        cls, values = spec[nid]
        info = NOTE_INFO if cls == NOTE else object_info[cls]
        node = {"id": nid, "type": cls, "pos": list(positions[nid]), "size": list(size_of(cls, sizes)),
                "flags": {}, "order": order[nid], "mode": 0, "inputs": [], "outputs": [],
                "properties": {"Node name for S&R": cls}, "widgets_values": []}
        if nid in TITLES:
            node["title"] = TITLES[nid]
        if model_downloads(values):
            node["properties"]["models"] = model_downloads(values)
        slots, linked_widgets = [], []
        for name, kind, options in _inputs(info):
            if kind in WIDGET_TYPES and not options.get("forceInput"):
                if isinstance(values[name], list):  # a widget fed by a link: the widget keeps its source's text
                    linked_widgets.append((name, kind))
                    node["widgets_values"].append(spec[values[name][0]][1]["value"])
                else:
                    node["widgets_values"].append(values[name])
                if options.get("control_after_generate"):
                    node["widgets_values"].append("fixed")
            else:
                slots.append((name, kind))
        for name, kind in slots + linked_widgets:  # the frontend's order: slots, then widget inputs
            link = None
            if name in values:  # a link from an earlier node of the spec
                link_id = link = link_id + 1
                origin, origin_slot = values[name]
                nodes[origin]["outputs"][origin_slot]["links"].append(link)
                links.append([link, origin, origin_slot, nid, len(node["inputs"]), kind])
            node["inputs"].append({"name": name, "type": kind, "link": link})
            if (name, kind) in linked_widgets:
                node["inputs"][-1]["widget"] = {"name": name}
        node["outputs"] = [{"name": n, "type": t, "links": []} for n, t in zip(info["output_name"], info["output"])]
        nodes[nid] = node
    return {"last_node_id": max(nodes), "last_link_id": link_id, "nodes": [nodes[n] for n in sorted(nodes)],
            "links": links, "groups": [], "config": {}, "extra": {"ds": view}, "version": 0.4}


def to_api(spec: dict) -> dict:
    return {str(nid): {"class_type": cls, "inputs": {k: ([str(v[0]), v[1]] if isinstance(v, list) else v)
                                                     for k, v in values.items()}}
            for nid, (cls, values) in spec.items()}


def test_twin(spec: dict, object_info: dict) -> dict:
    """The Latent-CLIP part of ``spec`` fed by LoadLatent and the tiny weights, no decoding: node 10's
    LATENT saved by node 13, each of its other outputs but the report previewed by node 30 + slot;
    a score also thresholded (node 11, previewed by node 29)."""
    out = {**TEST_SOURCE, **{nid: node for nid, node in spec.items()
                             if nid in (PROMPT, *range(10, 100)) and node[0] not in ("VAEDecode", "SaveImage")}}
    for slot, kind in enumerate(object_info[out[10][0]]["output"][:-1]):
        out[30 + slot] = ("PreviewAny", {"source": L(10, slot)})
        if kind == "LATENT":
            out[13] = ("SaveLatent", {"samples": L(10, slot), "filename_prefix": "latents/test"})
            del out[30 + slot]
    if out[10][0] == "LatentCLIPScore":
        out[11] = ("LatentCLIPScoreThreshold", {"score": L(10, 0), "threshold": 0.2, "comparison": ">="})
        out[29] = ("PreviewAny", {"source": L(11, 0)})
    return out


TEST_CKPT = "latent_clip_test_sd15.safetensors"
TEST_WEIGHTS_SD15 = "latent_clip_tiny_sd15.safetensors"  # the harness's tiny config, latent family sd15
RENO_PROMPT = "a red cube on top of a blue sphere, studio photo"


def txt2img(negative: bool = False, batch: int = 1, ckpt: str = CKPT, size: int = 512) -> dict:
    """Nodes 1-7: the checkpoint (SDXL-Turbo), the prompt node and its encoding, an empty latent (512 px, batch 1),
    Latent-CLIP loader."""
    out = {1: ("CheckpointLoaderSimple", {"ckpt_name": ckpt}), **prompt_node(RENO_PROMPT),
           2: ("CLIPTextEncode", {"text": L(PROMPT), "clip": L(1, 1)}),
           4: ("EmptyLatentImage", {"width": size, "height": size, "batch_size": batch}),
           6: ("LatentCLIPLoader", {"model_name": LC_WEIGHTS, "dtype": "auto", "device": "default"})}
    if negative:
        out[3] = ("CLIPTextEncode", {"text": "blurry, low quality", "clip": L(1, 1)})
    return out


def custom_advanced(guider: list, sampler: list, steps: int, turbo: bool = True) -> dict:
    schedule = {"model": L(1), "steps": steps, "denoise": 1.0}
    return {14: ("RandomNoise", {"noise_seed": 0}),
            15: ("SDTurboScheduler", schedule) if turbo else ("BasicScheduler", {**schedule, "scheduler": "normal"}),
            16: ("SamplerCustomAdvanced", {"noise": L(14), "guider": guider, "sampler": sampler,
                                           "sigmas": L(15), "latent_image": L(4)})}


RENO_SPECS = {  # ReNO and guidance: their own txt2img and test twin
    "reno_sdxl_turbo": {**txt2img(),
        10: ("LatentCLIPRewardPrompt", {"latent_clip": L(6), "prompt": L(PROMPT), "weight": 0.01}),
        11: ("KSamplerSelect", {"sampler_name": "euler"}),
        12: ("LatentCLIPRenoSampler", {"reward": L(10), "sampler": L(11), "iterations": 50, "lr": 5.0,
                                       "grad_clip": 0.1, "reg_weight": 0.01, "momentum": 0.9,
                                       "allow_family_mismatch": False}),
        13: ("BasicGuider", {"model": L(1), "conditioning": L(2)}),
        **custom_advanced(L(13), L(12), 1), **decode(L(16), "latent_clip/reno")},
    "reno_sdxl_turbo_prompt": {**txt2img(),
        10: ("LatentCLIPReno", {"model": L(1), "positive": L(2), "latent_clip": L(6), "prompt": L(PROMPT),
                                "latent": L(4), "seed": 0, "iterations": 50, "lr": 5.0, "steps": 1,
                                "cfg": 1.0, "allow_family_mismatch": False}),
        **decode(L(10), "latent_clip/reno_prompt")},
    "guidance_sdxl_turbo": {**txt2img(negative=True),  # cfg above 1, or the negative prompt would do nothing
        10: ("LatentCLIPAvoidGuider", {"model": L(1), "positive": L(2), "negative": L(3), "cfg": 1.5,
                                       "latent_clip": L(6), "concepts": "nudity\nviolence | a photo of "
                                       "a peaceful scene", "strength": 0.05, "start_percent": 0.0,
                                       "end_percent": 0.8, "allow_family_mismatch": False}),
        11: ("KSamplerSelect", {"sampler_name": "euler_ancestral"}),
        **custom_advanced(L(10), L(11), 4), **decode(L(16), "latent_clip/guided")},
}


VERIFY_SPECS = {  # latent verifiers during sampling: the report is SamplerCustomAdvanced's node text
    "prune_sdxl_turbo": {**txt2img(batch=8),
        10: ("LatentCLIPPruneSampler", {"latent_clip": L(6), "prompt": L(PROMPT), "keep": 2, "at_step": 1,
                                        "sampler": L(11), "at_sigma": 1.0, "allow_family_mismatch": False}),
        11: ("KSamplerSelect", {"sampler_name": "euler"}),
        13: ("BasicGuider", {"model": L(1), "conditioning": L(2)}),
        **custom_advanced(L(13), L(10), 4), **decode(L(16), "latent_clip/pruned")},
    "safety_stop_sdxl": {**txt2img(negative=True, batch=4, ckpt=SDXL_BASE, size=1024),
        10: ("LatentCLIPSafetyStopSampler", {"latent_clip": L(6), "concepts": "nudity\nviolence | a photo of a "
                                             "peaceful scene", "threshold": 0.5, "action": "replace with noise",
                                             "at_step": 5, "sampler": L(11), "at_sigma": 1.0,
                                             "allow_family_mismatch": False}),
        11: ("KSamplerSelect", {"sampler_name": "euler"}),
        13: ("CFGGuider", {"model": L(1), "positive": L(2), "negative": L(3), "cfg": 7.0}),
        **custom_advanced(L(13), L(10), 20, turbo=False), **decode(L(16), "latent_clip/safety_stop")},
}
TWIN_STEPS = {"prune_sdxl_turbo": (4, 1), "safety_stop_sdxl": (4, 2)}  # (steps, at_step) of the test twins


def reno_test_twin(name: str, spec: dict) -> dict:
    """A ReNO/guidance/verifier graph on the test checkpoint at 64 px, tiny sd15 weights, 2 iterations, at most 2
    steps (the verifier ones: TWIN_STEPS), SaveLatent."""
    out = {nid: (cls, dict(values)) for nid, (cls, values) in spec.items() if nid < 20}
    out[1][1]["ckpt_name"], out[6][1]["model_name"] = TEST_CKPT, TEST_WEIGHTS_SD15
    out[4][1].update(width=64, height=64)
    for nid, (cls, values) in out.items():
        if "iterations" in values:
            values["iterations"] = 2
        if cls in ("SDTurboScheduler", "BasicScheduler"):
            values["steps"] = TWIN_STEPS[name][0] if name in TWIN_STEPS else min(values["steps"], 2)
        if "at_step" in values:
            values["at_step"] = TWIN_STEPS[name][1]
        if cls == "LatentCLIPAvoidGuider":
            values.update(strength=0.5, end_percent=1.0)
    src = L(16) if 16 in out else L(10)
    out[22] = ("SaveLatent", {"samples": src, "filename_prefix": f"latents/{name}"})
    return out


def fetch_object_info(url: str | None) -> dict:
    """/object_info of the server at ``url``, or of a test-harness server booted for it."""
    if url is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from comfy_harness import prepare_base, start_server, stop_server
        base = Path(tempfile.mkdtemp(prefix="workflows_build_"))
        prepare_base(base)
        server, proc = start_server(base)
        try:
            return server.get("/object_info")
        finally:
            stop_server(proc)
    with urllib.request.urlopen(url.rstrip("/") + "/object_info", timeout=30) as r:
        return json.loads(r.read())


def write(name: str, ui: dict, api: dict, test: dict) -> None:
    """The template (file named by its title), its API-format copy and its test twin."""
    for folder, stem, graph in ((UI_DIR, TEMPLATES[name][0], ui), (API_DIR, name, api), (TEST_DIR, name, test)):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}.json").write_text(json.dumps(graph, indent=1) + "\n")
    print("wrote", name)


def main(object_info: dict) -> None:
    for name, spec in SPECS.items():
        write(name, to_ui(name, spec, object_info), to_api(spec), to_api(test_twin(spec, object_info)))
    for name, spec in {**RENO_SPECS, **VERIFY_SPECS}.items():  # whole-graph test twins
        write(name, to_ui(name, spec, object_info), to_api(spec), to_api(reno_test_twin(name, spec)))
    for name, spec in FIRST_GRAPH.items():
        write(name, to_ui(name, spec, object_info), to_api(spec), to_api(spec))


if __name__ == "__main__":
    main(fetch_object_info(sys.argv[1] if len(sys.argv) > 1 else None))
