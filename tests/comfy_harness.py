"""A real ComfyUI for tests: 0.3.75 (build/ComfyUI, from scripts/install_comfyui.sh), or the one
$LATENT_CLIP_COMFYUI_DIR names (0.33.0 from scripts/test_current_comfyui.sh).

Fixtures (registered in tests/conftest.py; mark tests ``comfyui``):

* ``comfy_server`` (session): one ``main.py --cpu --cache-classic`` on 127.0.0.1 with a fresh temp base directory
  (``--base-directory``: custom_nodes/, models/, input/, output/, user/) holding this pack symlinked
  as ``custom_nodes/comfyui-latent-clip``, tiny generated Latent-CLIP weights in
  ``models/latent_clip/`` (:data:`TINY_EXPORT`, :data:`TINY_OFFICIAL`) and test latents in
  ``input/`` (:data:`TEST_LATENT`, :data:`WRONG_FAMILY_LATENT`). Yields a :class:`ComfyServer`
  (``url``, ``base``, ``output_dir``, ``models_dir``, ``log``); stopped by PID. Classic caching (0.3.75's
  default, an option in 0.33.0 too) drops a graph's outputs once the next graph does not use them, so what a
  server holds after a run is the pack's doing and every graph with a new checkpoint name loads it anew; 0.33.0's
  default RAM-pressure cache keeps earlier graphs' models while RAM is free.
* ``sd15_server`` (session): ``comfy_server`` with the tests' random full-size SD1.5 checkpoint
  (fixtures.sd15_checkpoint) in ``models/checkpoints/`` under its name and :data:`RELOAD_NAME`, and tiny
  Latent-CLIP weights of the SD1.5 family (:data:`SD15_WEIGHTS`, a valid pairing with it).
* ``bare_comfy_server`` (module): the same with the pack alone and ``models/`` empty, as a new user has it.
* ``comfy_inprocess`` (function): imports ComfyUI in this process (``--cpu``, args parsing on,
  build/ComfyUI first on sys.path) and returns a namespace with ``comfy``, ``folder_paths``,
  ``nodes`` (ComfyUI's) and ``pack`` (this repo imported as a ComfyUI pack).

Helpers post graphs and read their results: ``post_prompt``, ``wait_history``, ``run_graph``,
``run_graph_with_texts`` (as the frontend: with the progress texts shown under each node), ``load_api_workflow``.

Without build/ComfyUI (or $LATENT_CLIP_COMFYUI_DIR) these fixtures skip, or fail when
LATENT_CLIP_REQUIRE_COMFYUI=1.
"""
import json
import os
import socket
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.inprocess import import_comfyui
from fixtures import tiny_model
from synthetic import tiny_latent_cfg

ROOT = Path(__file__).resolve().parents[1]
COMFY_DIR = Path(os.environ.get("LATENT_CLIP_COMFYUI_DIR") or ROOT / "build" / "ComfyUI")
FRONTEND_ROOT = os.environ.get("LATENT_CLIP_FRONTEND_ROOT")  # a frontend's static/ to serve instead of the pinned one
PACK_NAME = "comfyui-latent-clip"
API_WORKFLOWS = ROOT / "tests" / "api_workflows"   # test twins of the templates (workflows/build.py)
SHIPPED_API_WORKFLOWS = ROOT / "workflows" / "api"
UI_WORKFLOWS = ROOT / "example_workflows"
TINY_EXPORT = "latent_clip_tiny.safetensors"
TINY_OFFICIAL = "latent_clip_tiny_official.pt"
TEST_LATENT = "latent_clip_test.latent"            # 4 SDXL-shaped latents (4, 4, 32, 32), seeded
WRONG_FAMILY_LATENT = "latent_clip_16ch.latent"    # a 16-channel (SD3/Flux-like) latent
TINY_CONFIG = tiny_latent_cfg(image_size=512)
SD15_WEIGHTS = "latent_clip_tiny_sd15.safetensors"  # what the SD1.5 test twins load as Latent-CLIP
RELOAD_NAME = "latent_clip_test_sd15_other.safetensors"  # the same checkpoint: a graph using it loads the model anew
BOOT_TIMEOUT = 120


class PromptRejected(RuntimeError):
    def __init__(self, status: int, body: dict):
        super().__init__(f"/prompt answered {status}: {json.dumps(body)[:2000]}")
        self.status, self.body = status, body


@dataclass
class ComfyServer:
    url: str
    base: Path
    log: Path
    pid: int

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    @property
    def models_dir(self) -> Path:
        return self.base / "models"

    def get(self, route: str) -> Any:
        with urllib.request.urlopen(self.url + route, timeout=30) as r:
            return json.loads(r.read())

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


def require_comfyui() -> None:
    if not (COMFY_DIR / "main.py").is_file():
        skip_or_fail(f"ComfyUI not installed at {COMFY_DIR}: run bash scripts/install_comfyui.sh")


def skip_or_fail(reason: str) -> None:
    """Skip, or fail when LATENT_CLIP_REQUIRE_COMFYUI=1 (CI must not silently skip)."""
    if os.environ.get("LATENT_CLIP_REQUIRE_COMFYUI") == "1":
        pytest.fail(reason + " (LATENT_CLIP_REQUIRE_COMFYUI=1)", pytrace=False)
    pytest.skip(reason)


def make_latents(batch: int = 4, channels: int = 4) -> torch.Tensor:
    """Seeded test latents (batch, channels, 32, 32) of std 5."""
    return torch.randn(batch, channels, 32, 32, generator=torch.Generator().manual_seed(0)) * 5


def write_latent_file(path: Path, samples: torch.Tensor) -> None:
    """A ComfyUI .latent file (what SaveLatent writes and LoadLatent reads, raw latents)."""
    from safetensors.torch import save_file
    save_file({"latent_tensor": samples.contiguous(), "latent_format_version_0": torch.tensor([])}, str(path))


def saved_latents(server: ComfyServer, outputs: dict, node: str) -> torch.Tensor:
    """The latents the SaveLatent node ``node`` of a run with ``outputs`` wrote (its first file)."""
    from safetensors.torch import load_file
    item = outputs[node]["latents"][0]
    return load_file(str(server.output_dir / item["subfolder"] / item["filename"]))["latent_tensor"]


def prepare_bare_base(base: Path) -> None:
    """Fresh ComfyUI base dir as a new user has it: the pack symlinked, an empty models/ folder."""
    for sub in ("custom_nodes", "models", "input", "output", "user", "temp"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / PACK_NAME).symlink_to(ROOT, target_is_directory=True)


def prepare_base(base: Path) -> None:
    """Fresh ComfyUI base dir: pack symlink, tiny weights, test latents."""
    import latent_clip
    prepare_bare_base(base)
    (base / "models" / "latent_clip").mkdir()
    model = tiny_model(TINY_CONFIG)
    latent_clip.save_export(model, base / "models" / "latent_clip" / TINY_EXPORT)
    latent_clip.save_official_checkpoint(base / "models" / "latent_clip" / TINY_OFFICIAL, model, 1, "tiny")
    write_latent_file(base / "input" / TEST_LATENT, make_latents())
    write_latent_file(base / "input" / WRONG_FAMILY_LATENT, make_latents(channels=16, batch=1))


def _wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:  # an HTTP error status raises too
            urllib.request.urlopen(url + "/object_info/LatentCLIPLoader", timeout=5).close()
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"ComfyUI did not answer within {BOOT_TIMEOUT}s:\n{log.read_text()[-4000:]}")


def start_server(base: Path) -> tuple[ComfyServer, subprocess.Popen]:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    log = base / "comfyui.log"
    cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(base), "--database-url", f"sqlite:///{base}/user/comfyui.db",
           "--disable-auto-launch", "--preview-method", "none", "--cache-classic"]
    if FRONTEND_ROOT:
        cmd += ["--front-end-root", FRONTEND_ROOT]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=COMFY_DIR, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = ComfyServer(f"http://127.0.0.1:{port}", base, log, proc.pid)
    try:
        _wait_ready(server.url, proc, log)
    except BaseException:
        stop_server(proc)
        raise
    return server, proc


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()  # a no-op once it exited
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


def _serve(base: Path, prepare) -> ComfyServer:
    require_comfyui()
    prepare(base)
    server, proc = start_server(base)
    try:
        yield server
    finally:
        stop_server(proc)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    yield from _serve(tmp_path_factory.mktemp("comfy_base"), prepare_base)


@pytest.fixture(scope="session")
def sd15_server(comfy_server):
    import latent_clip
    from fixtures import CKPT_CACHE, CKPT_NAME, sd15_checkpoint

    sd15_checkpoint()
    folder = comfy_server.models_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    for name in (CKPT_NAME, RELOAD_NAME):
        (folder / name).symlink_to(CKPT_CACHE)
    latent_clip.save_export(tiny_model(TINY_CONFIG, latent_family="sd15"),
                            comfy_server.models_dir / "latent_clip" / SD15_WEIGHTS)
    return comfy_server


@pytest.fixture(scope="module")
def bare_comfy_server(tmp_path_factory):
    """A server as a new user starts it: the pack and nothing else, models/ empty; one per test module, so each
    module's first run is the server's first (nothing cached)."""
    yield from _serve(tmp_path_factory.mktemp("comfy_bare"), prepare_bare_base)


def post_prompt(server: ComfyServer, graph: dict, client_id: str | None = None) -> str:
    """POST ``graph`` (API format); ``client_id`` of a browser page makes it show the results."""
    body = json.dumps({"prompt": graph, "client_id": client_id or uuid.uuid4().hex}).encode()
    request = urllib.request.Request(server.url + "/prompt", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            answer = json.loads(r.read())
    except urllib.error.HTTPError as err:
        raise PromptRejected(err.code, json.loads(err.read() or b"{}")) from None
    if answer.get("node_errors"):
        raise PromptRejected(200, answer)
    return answer["prompt_id"]


def wait_history(server: ComfyServer, prompt_id: str, timeout: float = 180) -> dict:
    """The /history entry of ``prompt_id`` once it completed or failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = server.get(f"/history/{prompt_id}").get(prompt_id)
        if entry and (entry["status"].get("completed") or entry["status"].get("status_str") == "error"):
            return entry
        time.sleep(0.2)
    raise TimeoutError(f"prompt {prompt_id} not finished after {timeout}s\n{server.log_tail()}")


def execution_error(entry: dict) -> dict | None:
    return next((data for kind, data in entry["status"].get("messages", []) if kind == "execution_error"), None)


def run_graph(server: ComfyServer, graph: dict) -> dict:
    """Post ``graph``, wait, assert it succeeded; returns ``outputs`` of the history entry."""
    entry = wait_history(server, post_prompt(server, graph))
    error = execution_error(entry)
    assert entry["status"]["status_str"] == "success", f"{error}\n{server.log_tail()}"
    return entry["outputs"]


def load_api_workflow(name: str) -> dict:
    return json.loads((API_WORKFLOWS / name).read_text())


@pytest.fixture
def comfy_inprocess() -> types.SimpleNamespace:
    """ComfyUI's modules in this process, CPU only; this repo imported as the pack ComfyUI sees."""
    require_comfyui()
    return import_comfyui(COMFY_DIR)


def run_graph_with_texts(server: ComfyServer, graph: dict, timeout: float = 300) -> tuple[dict, list[tuple[str, str]]]:
    """Run ``graph`` as the frontend does, connected to the server's websocket, and return its
    /history entry and the progress texts the server sent this client, ``[(node id, text)]``: what
    the frontend shows in the text box under each node (``send_progress_text``)."""
    import asyncio
    import struct

    import aiohttp

    client_id = uuid.uuid4().hex

    async def listen() -> tuple[str, list[tuple[str, str]]]:
        texts = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{server.url}/ws?clientId={client_id}") as ws:
                prompt_id = await asyncio.to_thread(post_prompt, server, graph, client_id)
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY and struct.unpack(">I", msg.data[:4])[0] == 3:  # TEXT
                        n = struct.unpack(">I", msg.data[4:8])[0]
                        texts.append((msg.data[8:8 + n].decode(), msg.data[8 + n:].decode()))
                    elif msg.type == aiohttp.WSMsgType.TEXT:
                        event = json.loads(msg.data)
                        if (event["type"] in ("execution_success", "execution_error", "execution_interrupted")
                                and event["data"].get("prompt_id") == prompt_id):
                            break
        return prompt_id, texts

    prompt_id, texts = asyncio.run(asyncio.wait_for(listen(), timeout))
    return wait_history(server, prompt_id), texts
