"""The hostile weight files in a real ComfyUI server's models/latent_clip: the loader node fails with the
same one line the CLI prints, the server's peak memory stays within the bound the library meets (the
numpy void bomb took a server from 2.1 to 5.0 GB before), nothing in them runs, and the server goes on."""
import re
import time

import pytest

import latent_clip
from bench.memory import reset_peak, status_gb
from comfy_harness import execution_error, load_api_workflow, post_prompt, run_graph, wait_history
from hostile_files import CASES, MARKER, MEMORY_BOUND
from latent_clip.cli import describe

pytestmark = pytest.mark.comfyui
TIME_BOUND = 20.0  # seconds from posting the graph to the error in /history (a valid graph: about 1 s here)


@pytest.fixture(scope="module")
def hostile_models(comfy_server):
    folder = comfy_server.models_dir / "latent_clip"
    return folder, {name: case.build(folder) for name, case in CASES.items()}


def library_error(path) -> str:
    """What ``python -m latent_clip`` prints after "error: " for the file the node loads."""
    with pytest.raises(Exception) as caught:
        latent_clip.load_model(path, vae_encoder=False)
    return describe(caught.value)


@pytest.mark.parametrize("name", list(CASES))
def test_loader_node_reports_the_cli_line_within_bounds(comfy_server, hostile_models, name):
    folder, files = hostile_models
    graph = load_api_workflow("latent_clip_score.json")
    graph["6"]["inputs"]["model_name"] = files[name].name
    graph["10"]["inputs"]["prompt"] = f"hostile {name}"  # not served from ComfyUI's cache
    reset_peak(comfy_server.pid)
    base, tic = status_gb("VmRSS", comfy_server.pid), time.monotonic()
    entry = wait_history(comfy_server, post_prompt(comfy_server, graph), timeout=120)
    seconds, peak = time.monotonic() - tic, (status_gb("VmHWM", comfy_server.pid) - base) * 2 ** 30
    if CASES[name].error is None:
        assert entry["status"]["status_str"] == "success", execution_error(entry)
    else:
        error = execution_error(entry)
        assert error["node_type"] == "LatentCLIPLoader", error
        assert CASES[name].per_process or error["exception_message"].strip() == library_error(files[name])
        assert re.search(CASES[name].error, error["exception_message"])
    assert peak < MEMORY_BOUND, peak
    assert seconds < TIME_BOUND, seconds
    assert not (folder / MARKER).exists()


def test_server_still_scores_after_the_corpus(comfy_server, hostile_models):
    graph = load_api_workflow("latent_clip_score.json")
    graph["10"]["inputs"]["prompt"] = "still alive after the hostile corpus"
    assert run_graph(comfy_server, graph)["10"]["text"]
