"""The node pack in a real ComfyUI server: /object_info, every API workflow over HTTP, outputs
checked against the library computed here on the same latents and weights, and node errors."""
from __future__ import annotations

import json

import pytest
import torch

import latent_clip
from comfy_harness import (API_WORKFLOWS, SHIPPED_API_WORKFLOWS, TEST_LATENT, TINY_EXPORT, TINY_OFFICIAL,
                           UI_WORKFLOWS, WRONG_FAMILY_LATENT, PromptRejected, execution_error, load_api_workflow,
                           post_prompt, run_graph, run_graph_with_texts, make_latents, saved_latents, wait_history)
from latent_clip import safety, zeroshot
from workflows.build import NOTE, PROMPT, TEMPLATES

pytestmark = pytest.mark.comfyui

NODE_IDS = {"LatentCLIPLoader", "LatentCLIPScore", "LatentCLIPZeroShot", "LatentCLIPSafetyFilter",
            "LatentCLIPSelectBest", "LatentCLIPScoreThreshold", "LatentCLIPExampleLatents"}


@pytest.fixture(scope="module")
def object_info(comfy_server) -> dict:
    return comfy_server.get("/object_info")


@pytest.fixture(scope="module")
def model(comfy_server) -> latent_clip.LatentCLIP:
    return latent_clip.load_model(comfy_server.models_dir / "latent_clip" / TINY_EXPORT)


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    return make_latents()


def _preview_shows_report(outputs: dict) -> bool:
    """The template's Preview Any (node 12) got node 10's whole report, as a Markdown code block."""
    return outputs["12"]["text"] == [f"```\n{outputs['10']['text'][0]}\n```"]


def test_object_info_lists_pack(object_info):
    ours = {k: v for k, v in object_info.items() if k.startswith("LatentCLIP")}
    assert NODE_IDS <= set(ours)
    for node_id, info in ours.items():
        assert info["category"].split("/")[0] == "latent_clip", node_id
        for name, spec in {**info["input"]["required"], **info["input"].get("optional", {})}.items():
            assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert object_info["LatentCLIPLoader"]["output"] == ["LATENT_CLIP"]
    assert set(object_info["LatentCLIPLoader"]["input"]["required"]["model_name"][1]["options"]) >= {
        TINY_EXPORT, TINY_OFFICIAL}


def test_workflows_use_only_known_nodes(object_info):
    for path in [*API_WORKFLOWS.glob("*.json"), *SHIPPED_API_WORKFLOWS.glob("*.json"), *UI_WORKFLOWS.glob("*.json")]:
        data = json.loads(path.read_text())
        types = [n["type"] for n in data["nodes"]] if "nodes" in data else [n["class_type"] for n in data.values()]
        assert set(types) - {NOTE} <= set(object_info), f"{path.name}: {set(types) - set(object_info)}"


def _combo_options(spec: list) -> list | None:
    """The allowed values of an /object_info input spec when it is a combo (V1 list or V3 COMBO)."""
    if isinstance(spec[0], list):
        return spec[0]
    return spec[1].get("options") if spec[0] == "COMBO" else None


def test_shipped_api_workflows_lint_clean(object_info):
    """Every enum value in workflows/api/ is one the running server offers, except model files that
    the matching template offers as a download (properties.models): no test-only file names ship."""
    downloads = {m["name"] for path in UI_WORKFLOWS.glob("*.json") for n in json.loads(path.read_text())["nodes"]
                 for m in n["properties"].get("models", [])}
    shipped = sorted(SHIPPED_API_WORKFLOWS.glob("*.json"))
    assert [p.stem for p in shipped] == sorted(TEMPLATES)
    assert sorted(title for title, _ in TEMPLATES.values()) == sorted(p.stem for p in UI_WORKFLOWS.glob("*.json"))
    bad, checked = [], 0
    for path in shipped:
        for nid, node in json.loads(path.read_text()).items():
            info = object_info[node["class_type"]]["input"]
            specs = {**info["required"], **info.get("optional", {})}
            for name, value in node["inputs"].items():
                options = _combo_options(specs[name])
                if options is None or isinstance(value, list):
                    continue
                checked += 1
                if value not in options and value not in downloads:
                    bad.append(f"{path.name} #{nid} {node['class_type']}.{name} = {value!r}")
    assert checked > 20 and not bad, bad
    assert not {TEST_LATENT, TINY_EXPORT} & {v for p in shipped for v in json.loads(p.read_text()).values()
                                             for v in v["inputs"].values() if isinstance(v, str)}


@pytest.mark.parametrize("weights", [TINY_EXPORT, TINY_OFFICIAL])
def test_score_matches_library(comfy_server, model, latents, weights):
    graph = load_api_workflow("latent_clip_score.json")
    graph["6"]["inputs"]["model_name"] = weights
    outputs = run_graph(comfy_server, graph)
    prompt = graph["10"]["inputs"]["prompt"]
    expected = latent_clip.score_latents(model, latents, prompt)
    cosine = torch.tensor([float(t) for t in outputs["30"]["text"]])
    logit = torch.tensor([float(t) for t in outputs["31"]["text"]])
    torch.testing.assert_close(cosine, expected.cosine[:, 0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logit, expected.logits[:, 0], atol=1e-3, rtol=1e-4)
    threshold = graph["11"]["inputs"]["threshold"]
    assert outputs["29"]["text"] == [str(bool(c >= threshold)) for c in cosine.tolist()]
    assert _preview_shows_report(outputs) and "cosine" in outputs["10"]["text"][0]


def test_zero_shot_matches_library(comfy_server, model, latents):
    graph = load_api_workflow("latent_clip_zero_shot.json")
    inputs = graph["10"]["inputs"]
    labels, templates = inputs["labels"].splitlines(), inputs["templates"].splitlines()
    outputs = run_graph(comfy_server, graph)
    probs = zeroshot.classify(model, latents, zeroshot.build_classifier(model, labels, templates))
    assert outputs["30"]["text"] == [labels[k] for k in probs.argmax(-1).tolist()]
    top = torch.tensor([float(t) for t in outputs["31"]["text"]])
    torch.testing.assert_close(top, probs.max(-1).values, atol=1e-4, rtol=1e-4)
    assert _preview_shows_report(outputs) and all(label in outputs["10"]["text"][0] for label in labels)


@pytest.mark.parametrize("action", ["drop", "replace with noise", "zero", "pass with flag"])
def test_safety_filter_actions(comfy_server, model, latents, action):
    graph = load_api_workflow("latent_clip_safety_filter.json")
    inputs = graph["10"]["inputs"]
    probs = safety.concept_probs(model, latents, safety.parse_concepts(inputs["concepts"])).max(-1).values
    ranked = probs.sort().values
    inputs["threshold"] = float((ranked[1] + ranked[2]) / 2)  # the two most concept-like latents get blocked
    inputs["action"] = action
    outputs = run_graph(comfy_server, graph)
    flagged = probs >= inputs["threshold"]
    assert outputs["31"]["text"] == [str(f) for f in flagged.tolist()]
    assert _preview_shows_report(outputs)
    saved = saved_latents(comfy_server, outputs, "13")
    if action == "drop":
        torch.testing.assert_close(saved, latents[~flagged])
        return
    assert saved.shape == latents.shape
    torch.testing.assert_close(saved[~flagged], latents[~flagged])
    if action == "zero":
        assert not saved[flagged].any()
    elif action == "replace with noise":
        assert not torch.allclose(saved[flagged], latents[flagged]) and saved[flagged].std() > 1
    else:
        torch.testing.assert_close(saved, latents)


def test_select_best_k(comfy_server, model, latents):
    """Best-k by the prompt written in the graph's one prompt node (a new text, so nothing comes from a cache)."""
    graph = load_api_workflow("latent_clip_best_of_n.json")
    graph["10"]["inputs"]["k"] = 2
    graph[str(PROMPT)]["inputs"]["value"] = "a red car on a bridge"
    outputs = run_graph(comfy_server, graph)
    order, _ = latent_clip.rank_by_prompt(model, latents, "a red car on a bridge")
    assert outputs["31"]["text"] == [str(order[0].item())]
    torch.testing.assert_close(saved_latents(comfy_server, outputs, "13"), latents[order[:2]])


# templates that generate for a prompt and judge by it
ONE_PROMPT = {"latent_clip_best_of_n": "LatentCLIPSelectBest", "reno_sdxl_turbo": "LatentCLIPRewardPrompt",
              "reno_sdxl_turbo_prompt": "LatentCLIPReno", "prune_sdxl_turbo": "LatentCLIPPruneSampler"}


@pytest.mark.parametrize("name", ONE_PROMPT)
def test_one_prompt_feeds_generation_and_judgement(object_info, name):
    """The positive text encoder and the Latent-CLIP node read one prompt node, in the API graph and in the template
    (where both widgets are inputs linked to it, titled "Prompt"): editing the prompt cannot make them diverge."""
    api = json.loads((SHIPPED_API_WORKFLOWS / f"{name}.json").read_text())
    assert api[str(PROMPT)]["class_type"] == "PrimitiveStringMultiline" and "PrimitiveStringMultiline" in object_info
    (encoder,) = {node["inputs"][key][0] for node in api.values() for key in ("positive", "conditioning")
                  if key in node["inputs"]}  # the text encoder generation follows
    (judge,) = [node for node in api.values() if node["class_type"] == ONE_PROMPT[name]]
    assert api[encoder]["inputs"]["text"] == judge["inputs"]["prompt"] == [str(PROMPT), 0]
    ui = json.loads((UI_WORKFLOWS / f"{TEMPLATES[name][0]}.json").read_text())
    links = {link[0]: link[1:] for link in ui["links"]}
    fed = sorted((n["type"], i["name"]) for n in ui["nodes"] for i in n["inputs"]
                 if i.get("link") and links[i["link"]][0] == PROMPT and i.get("widget") == {"name": i["name"]})
    assert fed == sorted([("CLIPTextEncode", "text"), (ONE_PROMPT[name], "prompt")])
    assert [n.get("title") for n in ui["nodes"] if n["id"] == PROMPT] == ["Prompt"]  # the name the note uses


def test_no_negative_prompt_is_ignored():
    """A negative prompt with text feeds a node whose cfg is above 1: at cfg 1 ComfyUI never evaluates it."""
    checked = 0
    for path in SHIPPED_API_WORKFLOWS.glob("*.json"):
        graph = json.loads(path.read_text())
        for node in graph.values():
            source = node["inputs"].get("negative")
            if isinstance(source, list) and graph[source[0]]["inputs"].get("text"):
                checked += 1
                assert node["inputs"]["cfg"] > 1.0, f"{path.name}: {node['class_type']} ignores its negative prompt"
    assert checked >= 1


def _error_of(server, graph: dict) -> dict:
    entry = wait_history(server, post_prompt(server, graph))
    assert entry["status"]["status_str"] == "error"
    return execution_error(entry)


def test_node_errors_and_server_survives(comfy_server):
    missing = load_api_workflow("latent_clip_score.json")
    missing["6"]["inputs"]["model_name"] = "no_such_weights.safetensors"
    with pytest.raises(PromptRejected) as rejected:  # before the run: V3 combos are not checked by ComfyUI
        post_prompt(comfy_server, missing)
    (error,) = rejected.value.body["node_errors"]["6"]["errors"]
    assert error["details"].startswith("model_name - Latent-CLIP weights 'no_such_weights.safetensors' not found in ")

    wrong_family = load_api_workflow("latent_clip_score.json")
    wrong_family["5"]["inputs"]["latent"] = WRONG_FAMILY_LATENT
    error = _error_of(comfy_server, wrong_family)
    assert error["node_type"] == "LatentCLIPScore" and "16 channels" in error["exception_message"]

    no_labels = load_api_workflow("latent_clip_zero_shot.json")
    no_labels["10"]["inputs"]["labels"] = " \n\n"
    error = _error_of(comfy_server, no_labels)
    assert error["node_type"] == "LatentCLIPZeroShot" and "no labels given" in error["exception_message"]

    score = load_api_workflow("latent_clip_score.json")
    score["10"]["inputs"]["prompt"] = "still alive after errors"
    assert run_graph(comfy_server, score)["10"]["text"]
    assert TEST_LATENT in comfy_server.get("/object_info/LoadLatent")["LoadLatent"]["input"]["required"]["latent"][0]


def test_loader_list_refreshes(comfy_server):
    folder = comfy_server.models_dir / "latent_clip"
    (folder / "added_later.safetensors").write_bytes((folder / TINY_EXPORT).read_bytes())
    (folder / "readme.txt").write_text("not weights")
    options = comfy_server.get("/object_info/LatentCLIPLoader")["LatentCLIPLoader"]["input"]["required"]
    assert "added_later.safetensors" in options["model_name"][1]["options"]
    assert "readme.txt" not in options["model_name"][1]["options"]


def test_safety_filter_blocking_everything_skips_what_follows(comfy_server, latents):
    """'drop' with every latent blocked: the job succeeds, the report says so (on the node and in the
    template's preview), the flags reach their preview, and the node fed by the LATENT never runs."""
    graph = load_api_workflow("latent_clip_safety_filter.json")
    graph["10"]["inputs"].update(threshold=0.0, action="drop")
    outputs = run_graph(comfy_server, graph)
    assert "13" not in outputs  # SaveLatent: blocked, not failed
    assert outputs["31"]["text"] == ["True"] * len(latents) and outputs["32"]["text"] == ["True"]
    assert "nothing passed on" in outputs["10"]["text"][0] and _preview_shows_report(outputs)


def test_misuse_warnings_reach_the_node(comfy_server):
    """The embedded tiny-world model on 32x32 latents and a single label: both warnings are the
    zero-shot node's text in the frontend (progress text), and the job still runs."""
    graph = load_api_workflow("latent_clip_zero_shot.json")
    graph["6"]["inputs"]["model_name"] = "tinyworld (embedded demo)"
    graph["10"]["inputs"]["labels"] = "cat"
    entry, texts = run_graph_with_texts(comfy_server, graph)
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    shown = [text for node, text in texts if node == "10"][-1]
    assert "only knows the 8x8 latents" in shown and "only one label ('cat')" in shown
    assert entry["outputs"]["31"]["text"] == ["1.0"] * 4


def test_pixel_clip_reward_without_open_clip_weights_says_so(comfy_server):
    info = comfy_server.get("/object_info/LatentCLIPRewardPixelCLIP")["LatentCLIPRewardPixelCLIP"]
    options = info["input"]["required"]["clip_name"][1]["options"]
    assert options == ["(no weights in models/open_clip)"]
    graph = {"1": {"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}},
             "2": {"class_type": "LatentCLIPRewardPixelCLIP",
                   "inputs": {"vae": ["1", 0], "clip_name": options[0], "architecture": "ViT-B-32", "prompt": "a cat",
                              "weight": 1.0}},
             "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}}
    with pytest.raises(PromptRejected) as rejected:
        post_prompt(comfy_server, graph)
    (error,) = rejected.value.body["node_errors"]["2"]["errors"]
    assert "clip_name - no open_clip weights in " in error["details"] and "open_clip: put the weights file" in \
        error["details"]
