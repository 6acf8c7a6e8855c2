"""Writes the example workflows from one spec per capability.

* ``example_workflows/<name>.json``: UI format (v0.4), the real SDXL-Turbo graph users drag onto the
  canvas; ComfyUI lists them under Workflow -> Browse Templates -> comfyui-latent-clip.
* ``workflows/api/<name>.json``: API-format twins the tests POST to /prompt. They replace the
  SDXL-Turbo part (checkpoint, text encoders, KSampler) by ``LoadLatent`` of a test latent file and
  load the tiny test weights; the Latent-CLIP part is the same nodes with the same values.

Widget order comes from a running server's /object_info:
    python workflows/build.py http://127.0.0.1:8188
"""
from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UI_DIR, API_DIR = ROOT / "example_workflows", ROOT / "workflows" / "api"
SIZES = {"LatentCLIPLoader": (360, 130), "LatentCLIPScoreThreshold": (300, 110), "PreviewAny": (300, 160),
         "CLIPTextEncode": (380, 180), "LatentCLIPScore": (400, 300), "LatentCLIPZeroShot": (480, 400),
         "LatentCLIPSafetyFilter": (440, 400), "LatentCLIPSelectBest": (400, 300)}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CKPT, LC_WEIGHTS = "sd_xl_turbo_1.0_fp16.safetensors", "latent-clip-b-8-512-34b-80k.pt"
TEST_WEIGHTS, TEST_LATENT = "latent_clip_tiny.safetensors", "latent_clip_test.latent"
POSITIVE = "a photo of a cat sitting on a windowsill, golden hour"


def L(node: int, slot: int = 0) -> list:  # noqa: N802 - a link in a spec
    return [node, slot]


def sdxl_turbo(batch: int) -> dict:
    """Nodes 1-6: SDXL-Turbo txt2img to a LATENT (node 5); node 1's VAE is output 2."""
    return {
        1: ("CheckpointLoaderSimple", (40, 120), {"ckpt_name": CKPT}),
        2: ("CLIPTextEncode", (420, 60), {"text": POSITIVE, "clip": L(1, 1)}),
        3: ("CLIPTextEncode", (420, 300), {"text": "", "clip": L(1, 1)}),
        4: ("EmptyLatentImage", (420, 520), {"width": 512, "height": 512, "batch_size": batch}),
        5: ("KSampler", (860, 120), {"model": L(1), "positive": L(2), "negative": L(3), "latent_image": L(4),
                                      "seed": 0, "steps": 1, "cfg": 1.0, "sampler_name": "euler_ancestral",
                                      "scheduler": "sgm_uniform", "denoise": 1.0}),
        6: ("LatentCLIPLoader", (860, 500), {"model_name": LC_WEIGHTS, "dtype": "auto", "device": "default"}),
    }


def decode(src: list, x: int, prefix: str) -> dict:
    return {20: ("VAEDecode", (x, 120), {"samples": src, "vae": L(1, 2)}),
            21: ("SaveImage", (x + 280, 120), {"images": L(20), "filename_prefix": prefix})}


SPECS = {
    "latent_clip_score": {**sdxl_turbo(4),
        10: ("LatentCLIPScore", (1260, 400), {"latent": L(5), "latent_clip": L(6), "prompt": "a photo of a cat"}),
        11: ("LatentCLIPScoreThreshold", (1680, 400), {"score": L(10, 0), "threshold": 0.2, "comparison": ">="}),
        12: ("PreviewAny", (2000, 400), {"source": L(11, 0)}),
        **decode(L(5), 1260, "latent_clip/score")},
    "latent_clip_zero_shot": {**sdxl_turbo(4),
        10: ("LatentCLIPZeroShot", (1260, 400), {"latent": L(5), "latent_clip": L(6),
                                                 "labels": "cat\ndog\ncar\nlandscape\nportrait of a person",
                                                 "templates": "a photo of a {}.\na picture of a {}."}),
        12: ("PreviewAny", (1780, 400), {"source": L(10, 0)}),
        **decode(L(5), 1260, "latent_clip/zero_shot")},
    "latent_clip_safety_filter": {**sdxl_turbo(4),
        10: ("LatentCLIPSafetyFilter", (1260, 120), {"latent": L(5), "latent_clip": L(6),
                                                     "concepts": "nudity\nviolence | a photo of a peaceful scene",
                                                     "threshold": 0.5, "action": "drop", "seed": 0}),
        12: ("PreviewAny", (1740, 520), {"source": L(10, 1)}),
        **decode(L(10, 0), 1740, "latent_clip/safe")},
    "latent_clip_best_of_n": {**sdxl_turbo(8),
        10: ("LatentCLIPSelectBest", (1260, 120), {"latent": L(5), "latent_clip": L(6),
                                                   "prompt": "a photo of a cat sitting on a windowsill", "k": 1}),
        12: ("PreviewAny", (1700, 520), {"source": L(10, 1)}),
        **decode(L(10, 0), 1700, "latent_clip/best_of_n")},
}

TEST_SOURCE = {5: ("LoadLatent", (40, 120), {"latent": TEST_LATENT}),
               6: ("LatentCLIPLoader", (40, 320), {"model_name": TEST_WEIGHTS, "dtype": "auto", "device": "default"})}


def _inputs(info: dict) -> list[tuple[str, list]]:
    spec = info["input"]
    return [(n, v) for part in ("required", "optional") for n, v in spec.get(part, {}).items()]


def _type(spec: list) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def _is_widget(spec: list) -> bool:
    opts = spec[1] if len(spec) > 1 else {}
    return _type(spec) in WIDGET_TYPES and not opts.get("forceInput")


def to_ui(spec: dict, object_info: dict) -> dict:
    nodes, links, link_id = {}, [], 0
    order = {nid: i for i, nid in enumerate(sorted(spec))}
    for nid, (cls, pos, values) in spec.items():
        info = object_info[cls]
        node = {"id": nid, "type": cls, "pos": list(pos), "size": list(SIZES.get(cls, (360, 140))),
                "flags": {}, "order": order[nid], "mode": 0, "inputs": [], "outputs": [],
                "properties": {"Node name for S&R": cls}, "widgets_values": []}
        for name, ispec in _inputs(info):
            if _is_widget(ispec):
                node["widgets_values"].append(values[name])
                if (ispec[1] if len(ispec) > 1 else {}).get("control_after_generate"):
                    node["widgets_values"].append("fixed")
            else:
                node["inputs"].append({"name": name, "type": _type(ispec), "link": None})
        node["outputs"] = [{"name": n, "type": t, "links": []} for n, t in zip(info["output_name"], info["output"])]
        nodes[nid] = node
    for nid, (cls, _, values) in spec.items():
        for slot, entry in enumerate(nodes[nid]["inputs"]):
            src = values.get(entry["name"])
            if src is None:
                continue
            link_id += 1
            origin, origin_slot = src
            entry["link"] = link_id
            nodes[origin]["outputs"][origin_slot]["links"].append(link_id)
            links.append([link_id, origin, origin_slot, nid, slot, entry["type"]])
    return {"last_node_id": max(nodes), "last_link_id": link_id, "nodes": list(nodes.values()), "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.75, "offset": [0, 0]}}, "version": 0.4}


def to_api(spec: dict) -> dict:
    return {str(nid): {"class_type": cls, "inputs": {k: ([str(v[0]), v[1]] if isinstance(v, list) else v)
                                                     for k, v in values.items()}}
            for nid, (cls, _, values) in spec.items()}


def test_twin(spec: dict) -> dict:
    """The Latent-CLIP part of ``spec`` fed by LoadLatent and the tiny weights, no decoding."""
    ours = {nid: node for nid, node in spec.items() if nid >= 10 and node[0] not in ("VAEDecode", "SaveImage")}
    uses = {tuple(v) for _, _, values in ours.values() for v in values.values() if isinstance(v, list)}
    out = {**TEST_SOURCE, **ours}
    if any(nid == 10 and cls in ("LatentCLIPSafetyFilter", "LatentCLIPSelectBest") for nid, (cls, _, _) in ours.items()):
        out[13] = ("SaveLatent", (1700, 120), {"samples": L(10, 0), "filename_prefix": "latents/test"})
    if (10, 1) not in uses and out[10][0] in ("LatentCLIPScore", "LatentCLIPZeroShot"):
        out[14] = ("PreviewAny", (1700, 700), {"source": L(10, 1)})
    if (10, 0) in uses and out[10][0] == "LatentCLIPScore":
        out[15] = ("PreviewAny", (1700, 900), {"source": L(10, 0)})
    return out


def main(url: str) -> None:
    with urllib.request.urlopen(url.rstrip("/") + "/object_info", timeout=30) as r:
        object_info = json.loads(r.read())
    UI_DIR.mkdir(exist_ok=True)
    API_DIR.mkdir(parents=True, exist_ok=True)
    for name, spec in SPECS.items():
        (UI_DIR / f"{name}.json").write_text(json.dumps(to_ui(spec, object_info), indent=1) + "\n")
        (API_DIR / f"{name}.json").write_text(json.dumps(to_api(test_twin(spec)), indent=1) + "\n")
        print("wrote", name)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8188")
