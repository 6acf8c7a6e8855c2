"""Saved workflows keep loading: every node's schema as a real ComfyUI server serves it (``/object_info``) is
checked against the snapshot in ``node_schema.json``. An incompatible change (a node, input or output gone, a
type changed, widgets reordered, a range narrowed, a choice removed, a new required input) fails with what
broke; any other change fails until the snapshot is regenerated with ``LATENT_CLIP_UPDATE_SCHEMA=1``.
The server also serves ComfyUI's conventions (``nodes/_schema.py``): the expert inputs marked advanced, and on
ComfyUI 0.33.0 the words the node search finds each node by."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.comfyui
SNAPSHOT = Path(__file__).with_name("node_schema.json")
PACK_MODULE = "custom_nodes.comfyui-latent-clip"
KEPT = ("default", "min", "max", "step", "multiline", "options", "force_input", "control_after_generate", "advanced")
WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Choices that list the files of a model folder: what a given ComfyUI holds, not part of the schema.
FILE_CHOICES = {("LatentCLIPLoader", "model_name"), ("LatentCLIPRewardPixelCLIP", "clip_name")}
OVERRIDE = "allow_family_mismatch"
# The expert-only inputs, hidden on Nodes 2.0 nodes until "Show advanced inputs" (1.48.7, 1.58.1).
ADVANCED = {"LatentCLIPRenoSampler": {"grad_clip", "reg_weight", "momentum", OVERRIDE},
            "LatentCLIPReno": {OVERRIDE}, "LatentCLIPAvoidGuider": {"start_percent", "end_percent", OVERRIDE},
            "LatentCLIPLoader": {"dtype", "device"}, "LatentCLIPPruneSampler": {"at_sigma", OVERRIDE},
            "LatentCLIPSafetyStopSampler": {"at_sigma", OVERRIDE}}
# Words typed into the node search -> the nodes it finds by them (search_aliases, beside names).
FOUND_BY = {
    "reward": {"LatentCLIPRewardPrompt", "LatentCLIPRewardAvoid", "LatentCLIPRewardPixelCLIP",
               "LatentCLIPRewardCombine", "LatentCLIPRenoSampler", "LatentCLIPReno"},
    "clip score": {"LatentCLIPScore", "LatentCLIPSelectBest", "LatentCLIPScoreThreshold", "LatentCLIPRewardPrompt",
                   "LatentCLIPRewardPixelCLIP", "LatentCLIPReno"},
    "nsfw": {"LatentCLIPSafetyFilter", "LatentCLIPRewardAvoid", "LatentCLIPAvoidGuider", "LatentCLIPSafetyStopSampler"},
    "safety": {"LatentCLIPSafetyFilter", "LatentCLIPRewardAvoid", "LatentCLIPAvoidGuider", "LatentCLIPSafetyStopSampler"},
    "best of n": {"LatentCLIPSelectBest", "LatentCLIPPruneSampler"},
    "zero-shot": {"LatentCLIPZeroShot"}, "classify": {"LatentCLIPZeroShot"},
    "reno": {"LatentCLIPRewardPrompt", "LatentCLIPRewardAvoid", "LatentCLIPRewardPixelCLIP",
             "LatentCLIPRewardCombine", "LatentCLIPRenoSampler", "LatentCLIPReno"},
}


def schema_of(object_info: dict) -> dict:
    """{node id: {"inputs": [[section, name, type, options]], "outputs": [[name, type, is_list]]}} of our nodes,
    inputs in the order the frontend lays them out."""
    out = {}
    for node, info in sorted(object_info.items()):
        if info.get("python_module") != PACK_MODULE:
            continue
        inputs = []
        for section in ("required", "optional"):
            for name in info["input_order"].get(section, []):
                kind, *rest = info["input"][section][name]
                options = {k: v for k, v in (rest[0] if rest else {}).items() if k in KEPT}
                if (node, name) in FILE_CHOICES:
                    options.pop("options", None)
                    options.pop("default", None)
                inputs.append([section, name, kind, options])
        outputs = [list(o) for o in zip(info["output_name"], info["output"], info["output_is_list"])]
        out[node] = {"inputs": inputs, "outputs": outputs}
    return out


def widgets(inputs: list) -> list[str]:
    """Names of the inputs saved positionally in a UI workflow's ``widgets_values``."""
    return [name for _, name, kind, opts in inputs if kind in WIDGETS and not opts.get("force_input")]


def incompatible(old: dict, new: dict) -> list[str]:
    """What in ``new`` would break a workflow saved against ``old`` (both as :func:`schema_of` gives them)."""
    broken = [f"{node}: node removed" for node in old if node not in new]
    for node in set(old) & set(new):
        before, after = old[node], new[node]
        was = {name: (section, kind, opts) for section, name, kind, opts in before["inputs"]}
        now = {name: (section, kind, opts) for section, name, kind, opts in after["inputs"]}
        broken += [f"{node}.{name}: input removed" for name in was if name not in now]
        broken += [f"{node}.{name}: new required input" for name, (section, _, _) in now.items()
                   if section == "required" and name not in was]
        for name in set(was) & set(now):
            (_, kind0, opts0), (_, kind1, opts1) = was[name], now[name]
            if kind0 != kind1:
                broken.append(f"{node}.{name}: type {kind0} -> {kind1}")
            if "min" in opts0 and opts1.get("min", float("-inf")) > opts0["min"]:
                broken.append(f"{node}.{name}: min raised {opts0['min']} -> {opts1['min']}")
            if "max" in opts0 and opts1.get("max", float("inf")) < opts0["max"]:
                broken.append(f"{node}.{name}: max lowered {opts0['max']} -> {opts1['max']}")
            gone = [o for o in opts0.get("options", []) if o not in opts1.get("options", opts0.get("options"))]
            if gone:
                broken.append(f"{node}.{name}: choices removed {gone}")
        old_widgets, new_widgets = widgets(before["inputs"]), widgets(after["inputs"])
        if new_widgets[:len(old_widgets)] != old_widgets:
            broken.append(f"{node}: widget order {old_widgets} -> {new_widgets} (widgets_values are positional)")
        if after["outputs"][:len(before["outputs"])] != before["outputs"]:
            broken.append(f"{node}: outputs {before['outputs']} -> {after['outputs']} (links are by slot)")
    return sorted(broken)


@pytest.fixture(scope="module")
def object_info(comfy_server) -> dict:
    return comfy_server.get("/object_info")


@pytest.fixture(scope="module")
def served(object_info) -> dict:
    return schema_of(object_info)


def test_node_schema_is_compatible_with_the_snapshot(served):
    if os.environ.get("LATENT_CLIP_UPDATE_SCHEMA") == "1":
        SNAPSHOT.write_text(json.dumps(served, indent=1) + "\n")
    snapshot = json.loads(SNAPSHOT.read_text())
    assert len(snapshot) == 16
    assert incompatible(snapshot, served) == []
    assert served == snapshot, "the schema changed compatibly: regenerate with LATENT_CLIP_UPDATE_SCHEMA=1"


def test_expert_inputs_are_served_as_advanced(served):
    advanced = {node: {name for _, name, _, opts in schema["inputs"] if opts.get("advanced")}
                for node, schema in served.items()}
    assert advanced == {node: ADVANCED.get(node, set()) for node in served}


def test_nodes_carry_search_aliases_on_comfyui_0_33(comfy_server, object_info):
    """0.33.0 serves every node's search aliases; 0.3.75, whose schema has no such field, serves none and
    still registers every node."""
    ours = {node: info for node, info in object_info.items() if info.get("python_module") == PACK_MODULE}
    version = tuple(map(int, comfy_server.get("/system_stats")["system"]["comfyui_version"].split(".")[:2]))
    if version < (0, 33):
        assert len(ours) == 16 and [n for n, info in ours.items() if info.get("search_aliases")] == []
        return
    assert [n for n, info in ours.items() if not info.get("search_aliases")] == []
    found = {word: {n for n, info in ours.items() if word in info["search_aliases"]} for word in FOUND_BY}
    assert found == FOUND_BY


def test_compatibility_check_catches_each_breaking_change():
    """The checker itself, on the snapshot with one breaking change at a time (and two compatible ones)."""
    snapshot = json.loads(SNAPSHOT.read_text())

    def changed(edit) -> list[str]:
        new = copy.deepcopy(snapshot)
        edit(new)
        return incompatible(snapshot, new)

    score_inputs = lambda s: s["LatentCLIPSelectBest"]["inputs"]  # noqa: E731
    k = lambda s: next(i for i in score_inputs(s) if i[1] == "k")  # noqa: E731
    assert changed(lambda s: s.pop("LatentCLIPScore")) == ["LatentCLIPScore: node removed"]
    assert "LatentCLIPSelectBest.k: type INT -> FLOAT" in changed(lambda s: k(s).__setitem__(2, "FLOAT"))
    assert changed(lambda s: k(s)[3].update(max=8)) == ["LatentCLIPSelectBest.k: max lowered 4096 -> 8"]
    assert changed(lambda s: k(s)[3].update(min=2)) == ["LatentCLIPSelectBest.k: min raised 1 -> 2"]
    assert any("widget order" in b for b in changed(lambda s: score_inputs(s).reverse()))
    dtype = lambda s: next(i for i in s["LatentCLIPLoader"]["inputs"] if i[1] == "dtype")  # noqa: E731
    assert changed(lambda s: dtype(s)[3]["options"].remove("bf16")) == [
        "LatentCLIPLoader.dtype: choices removed ['bf16']"]
    assert changed(lambda s: s["LatentCLIPScore"]["outputs"].pop(0))[0].startswith("LatentCLIPScore: outputs")
    assert changed(lambda s: score_inputs(s).append(["required", "new", "LATENT", {}])) == [
        "LatentCLIPSelectBest.new: new required input"]
    assert changed(lambda s: score_inputs(s).append(["optional", "extra", "FLOAT", {"default": 1.0}])) == []
    assert changed(lambda s: s["LatentCLIPScore"]["outputs"].append(["more", "FLOAT", False])) == []
