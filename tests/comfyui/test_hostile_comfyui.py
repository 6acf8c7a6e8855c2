"""The hostile weight files in a real ComfyUI server's models/latent_clip: the loader node fails with the
same one line the CLI prints, the server's peak memory stays within the bound the library meets (the
numpy void bomb took a server from 2.1 to 5.0 GB before), nothing in them runs, and the server goes on.

Issue 22's rows, each through the server: the files of rows 1-3 in models/latent_clip, the numpy bomb
and an empty file in models/open_clip for the Pixel CLIP reward (rows 4-5), a template ``a {} {x}``, a
20,000-character prompt and 10,000 labels (rows 6-8); each ends within ISSUE_TIME_BOUND, with one line
of at most 300 characters and the server still answering."""
import json
import re
import time

import pytest

import latent_clip
from bench.memory import reset_peak, status_gb
from comfy_harness import PromptRejected, execution_error, load_api_workflow, post_prompt, run_graph, wait_history
from hostile_files import CASES, ISSUE_22_FILES, MARKER, MEMORY_BOUND, TEXT_CASES
from latent_clip.cli import describe
from latent_clip.pixel_clip import load_pixel_clip
from latent_clip.fields import MAX_ERROR_CHARS

pytestmark = pytest.mark.comfyui
TIME_BOUND = 20.0  # seconds from posting the graph to the error in /history (a valid graph: about 1 s here)
# Issue 22 asks for under 2 s from posting to the answer in /history, polled every 0.2 s. Measured here over 2 runs:
# rows 1-7 0.01-0.7 s and +0 to +20 MB (the whole corpus: at most 0.66 s and +36 MB).
ISSUE_TIME_BOUND = 2.0
# Row 8 needs longer: 10,000 text encodes (tokenising ~0.3 ms and the tiny text tower ~0.3 ms each, one thread),
# with a progress bar and cancel every 256 labels. Measured 7.0 and 9.9 s, +27 and +18 MB on this shared 2-core CPU
# (load average ~6).
TEN_THOUSAND_LABELS_BOUND = 30.0


@pytest.fixture(scope="module")
def hostile_models(comfy_server):
    folder = comfy_server.models_dir / "latent_clip"
    return folder, {name: case.build(folder) for name, case in CASES.items()}


@pytest.fixture
def open_clip_folder(comfy_server):
    """models/open_clip, emptied again after the test (other tests expect it empty)."""
    folder = comfy_server.models_dir / "open_clip"
    folder.mkdir(exist_ok=True)
    yield folder
    for path in folder.iterdir():
        path.unlink()


def library_error(path) -> str:
    """What ``python -m latent_clip`` prints after "error: " for the file the node loads."""
    with pytest.raises(Exception) as caught:
        latent_clip.load_model(path, vae_encoder=False)
    return describe(caught.value)


def measured_run(server, graph: dict) -> tuple[dict, float, float]:
    """(/history entry, seconds from posting to the entry, the server's peak RSS above its RSS before, bytes)."""
    reset_peak(server.pid)
    base, tic = status_gb("VmRSS", server.pid), time.monotonic()
    entry = wait_history(server, post_prompt(server, graph), timeout=600)
    return entry, time.monotonic() - tic, (status_gb("VmHWM", server.pid) - base) * 2 ** 30


def one_line_error(entry: dict, node_type: str) -> str:
    error = execution_error(entry)
    assert error and error["node_type"] == node_type, error
    message = error["exception_message"].strip()
    assert len(message) <= MAX_ERROR_CHARS and "\n" not in message, message
    return message


def record(record_property, seconds: float, peak: float) -> None:
    """The measured figures into the JUnit XML (``--junitxml``), where docs/reliability.md's come from."""
    record_property("seconds", round(seconds, 2))
    record_property("peak_mb", round(peak / 2 ** 20, 1))


def still_serving(server) -> bool:
    return "queue_running" in server.get("/queue")


@pytest.mark.parametrize("name", list(CASES))
def test_loader_node_reports_the_cli_line_within_bounds(comfy_server, hostile_models, name, record_property):
    folder, files = hostile_models
    graph = load_api_workflow("latent_clip_score.json")
    graph["6"]["inputs"]["model_name"] = files[name].name
    graph["10"]["inputs"]["prompt"] = f"hostile {name}"  # not served from ComfyUI's cache
    entry, seconds, peak = measured_run(comfy_server, graph)
    record(record_property, seconds, peak)
    if CASES[name].error is None:
        assert entry["status"]["status_str"] == "success", execution_error(entry)
    else:
        message = one_line_error(entry, "LatentCLIPLoader")
        assert CASES[name].per_process or message == library_error(files[name])
        assert re.search(CASES[name].error, message)
    assert peak < MEMORY_BOUND, peak
    assert seconds < TIME_BOUND, seconds
    assert not (folder / MARKER).exists()


@pytest.mark.parametrize("row,name", [(r, n) for r, names in ISSUE_22_FILES.items() if r <= 3 for n in names])
def test_issue_22_weight_files_end_within_two_seconds(comfy_server, hostile_models, row, name, record_property):
    _, files = hostile_models
    graph = load_api_workflow("latent_clip_score.json")
    graph["6"]["inputs"]["model_name"] = files[name].name
    graph["10"]["inputs"]["prompt"] = f"issue 22 row {row} {name}"
    entry, seconds, peak = measured_run(comfy_server, graph)
    record(record_property, seconds, peak)
    assert one_line_error(entry, "LatentCLIPLoader") == library_error(files[name])
    assert seconds < ISSUE_TIME_BOUND and peak < MEMORY_BOUND, (seconds, peak)
    assert still_serving(comfy_server)


def pixel_reward_graph(clip_name: str) -> dict:
    return {"1": {"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}},
            "2": {"class_type": "LatentCLIPRewardPixelCLIP",
                  "inputs": {"vae": ["1", 0], "clip_name": clip_name, "architecture": "ViT-B-32", "prompt": "a cat",
                             "weight": 1.0}},
            "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}}


@pytest.mark.parametrize("row,name", [(4, "numpy-void-bomb"), (5, "empty-file")])
def test_issue_22_pixel_clip_weights_refused_by_our_loader(comfy_server, open_clip_folder, row, name,
                                                           record_property):
    """Rows 4-5: open_clip's loader ran under ComfyUI's process-wide allow-list (the numpy bomb OOM-killed
    the server; an empty file gave a bare EOFError); ours refuses both with the CLI's line."""
    path = CASES[name].build(open_clip_folder)
    entry, seconds, peak = measured_run(comfy_server, pixel_reward_graph(path.name))
    record(record_property, seconds, peak)
    with pytest.raises(latent_clip.CheckpointError) as caught:
        load_pixel_clip("ViT-B-32", path)
    assert one_line_error(entry, "LatentCLIPRewardPixelCLIP") == describe(caught.value)
    assert seconds < ISSUE_TIME_BOUND and peak < MEMORY_BOUND, (seconds, peak)
    assert still_serving(comfy_server)


def text_graph(row: int) -> dict:
    case = TEXT_CASES[row]
    graph = load_api_workflow(case.workflow)
    graph[case.node]["inputs"].update(case.inputs)
    return graph


@pytest.mark.parametrize("row", [r for r, case in TEXT_CASES.items() if case.error])
def test_issue_22_text_fields_refused_within_two_seconds(comfy_server, row, record_property):
    """Rows 6-7: a template with a format field was a KeyError; a 20 KB word took 45 s of the queue."""
    entry, seconds, peak = measured_run(comfy_server, text_graph(row))
    record(record_property, seconds, peak)
    node_type = load_api_workflow(TEXT_CASES[row].workflow)[TEXT_CASES[row].node]["class_type"]
    assert re.search(TEXT_CASES[row].error, one_line_error(entry, node_type))
    assert seconds < ISSUE_TIME_BOUND and peak < MEMORY_BOUND, (seconds, peak)
    assert still_serving(comfy_server)


def test_ten_thousand_labels_cost_linear_time(comfy_server, record_property):
    """Row 8: 10,000 labels took ~7 min of a blocked queue; now one batched pass with progress."""
    entry, seconds, peak = measured_run(comfy_server, text_graph(8))
    record(record_property, seconds, peak)
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    assert len(entry["outputs"]["30"]["text"]) == 4
    assert seconds < TEN_THOUSAND_LABELS_BOUND and peak < MEMORY_BOUND, (seconds, peak)
    assert still_serving(comfy_server)


def test_server_still_scores_after_the_corpus(comfy_server, hostile_models):
    graph = load_api_workflow("latent_clip_score.json")
    graph["10"]["inputs"]["prompt"] = "still alive after the hostile corpus"
    assert run_graph(comfy_server, graph)["10"]["text"]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_numbers_that_are_not_numbers_are_refused_at_the_node(comfy_server, value):
    """NaN passes ComfyUI's min/max checks (every comparison with it is false): Score Threshold compared
    with it; Infinity is above the widget's max. Both are refused, by the node or by validation."""
    graph = load_api_workflow("latent_clip_score.json")
    graph["11"]["inputs"]["threshold"] = value
    graph["10"]["inputs"]["prompt"] = f"threshold {value}"
    reward = {"1": {"class_type": "LatentCLIPLoader", "inputs": {"model_name": "latent_clip_tiny.safetensors",
                                                                 "dtype": "auto", "device": "default"}},
              "2": {"class_type": "LatentCLIPRewardPrompt", "inputs": {"latent_clip": ["1", 0], "prompt": "a cat",
                                                                        "weight": value}},
              "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}}
    for graph, node_type, what in ((graph, "LatentCLIPScoreThreshold", "threshold"),
                                   (reward, "LatentCLIPRewardPrompt", "weight")):
        try:
            entry = wait_history(comfy_server, post_prompt(comfy_server, graph))
        except PromptRejected as rejected:  # Infinity: above the widget's max
            assert "Value inf bigger than max" in json.dumps(rejected.body), rejected.body
            continue
        assert re.fullmatch(f"{what} must be a finite number, got {value}", one_line_error(entry, node_type))
    assert still_serving(comfy_server)
