"""Shared fixtures: the real-ComfyUI harness lives in tests/comfy_harness.py."""
from comfy_harness import comfy_inprocess, comfy_server  # noqa: F401 - pytest fixtures
