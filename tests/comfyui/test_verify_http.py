"""The verifier templates' test twins (workflows/build.py VERIFY_SPECS) over HTTP on a real server: the tests'
random SD1.5 checkpoint through CheckpointLoaderSimple at 64 px, tiny Latent-CLIP weights of the SD1.5 family,
SamplerCustomAdvanced with the Prune / Safety Stop sampler, SaveLatent; the report read as the frontend gets it
(the progress text under SamplerCustomAdvanced)."""
import re

import pytest
import torch

from comfy_harness import execution_error, load_api_workflow, run_graph_with_texts, saved_latents
from latent_clip.config import get_latent_family
from latent_clip.contract import scaled_to_raw
from latent_clip.verify import evaluations

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]
SAMPLING = "16"  # SamplerCustomAdvanced: the node the samplers report under


def _run(server, graph: dict) -> tuple[dict, list[str]]:
    entry, texts = run_graph_with_texts(server, graph)
    return entry, [text for node, text in texts if node == SAMPLING]


def _kept(report: str) -> list[int]:
    return [int(i) for i in re.search(r"kept \[([\d, ]*)\] of", report).group(1).replace(",", " ").split()]


def test_prune_template_twin_keeps_two_of_eight(sd15_server):
    graph = load_api_workflow("prune_sdxl_turbo.json")
    entry, shown = _run(sd15_server, graph)
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    report = shown[-1].splitlines()
    assert report[0] == f"prompt: {graph['7']['inputs']['value']}"
    assert report[1].startswith("pruned at step 1/4 (sigma ") and len(_kept(report[1])) == 2
    spent = evaluations(candidates=8, steps=4, at_step=1, survivors=2)
    assert report[-1] == f"evaluations: {spent} of 32 for all N (N*S), {1 - spent / 32:.0%} saved " \
                         f"(rule N*k + m*(S-k) = {spent})"
    assert [line.split()[0] for line in report[3:11] if " kept " in line] == [str(i) for i in _kept(report[1])]
    z = saved_latents(sd15_server, entry["outputs"], "22")
    assert z.shape == (2, 4, 8, 8) and torch.isfinite(z).all()


def test_safety_stop_template_twin(sd15_server):
    """As the template sets it (threshold 0.5; on this random checkpoint the tiny model stops none of the 4)."""
    graph = load_api_workflow("safety_stop_sdxl.json")
    entry, shown = _run(sd15_server, graph)
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    report = shown[-1].splitlines()
    head = re.fullmatch(r"safety stop at step 2/4 \(sigma [\d.]+\): threshold 0.50, action replace with noise; "
                        r"stopped (\d) of 4", report[0])
    assert head, report[0]
    stopped = [int(line.split()[0]) for line in report[2:6] if "STOPPED" in line]
    assert len(stopped) == int(head.group(1))
    spent = evaluations(candidates=4, steps=4, at_step=2, survivors=4 - len(stopped))
    assert report[-1].startswith(f"evaluations: {spent} of 16 for all N")
    z = saved_latents(sd15_server, entry["outputs"], "22")
    assert z.shape == (4, 4, 8, 8) and torch.allclose(z[stopped], _seeded_noise()[stopped], atol=1e-5)


def _seeded_noise() -> torch.Tensor:
    """What 'replace with noise' puts in a stopped slot of the twin: noise of the sampling seed (RandomNoise 0) as
    raw latents of the Latent-CLIP's family."""
    return scaled_to_raw(torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0)), get_latent_family("sd15"))


@pytest.mark.parametrize("action", ["replace with noise", "drop"])
def test_stopping_every_candidate(sd15_server, action):
    """Threshold 0 stops all 4 at step 2: replace with noise outputs the seeded noise in every slot; drop leaves
    nothing to decode, an error on SamplerCustomAdvanced, with the report on the node."""
    graph = load_api_workflow("safety_stop_sdxl.json")
    graph["10"]["inputs"].update(threshold=0.0, action=action)
    entry, shown = _run(sd15_server, graph)
    report = shown[-1].splitlines()
    assert report[0].endswith(f"action {action}; stopped 4 of 4") and report[-1].startswith("evaluations: 8 of 16")
    if action == "drop":
        error = execution_error(entry)
        assert entry["status"]["status_str"] == "error" and error["node_id"] == SAMPLING
        assert "every candidate was stopped at step 2 and the action is drop" in error["exception_message"]
        return
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    assert torch.allclose(saved_latents(sd15_server, entry["outputs"], "22"), _seeded_noise(), atol=1e-5)
