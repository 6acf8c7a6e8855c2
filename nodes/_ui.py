"""On the canvas: warnings the person running a graph sees on the node, not only in the console,
and the node's progress bar (:func:`progress_bar`).

ComfyUI draws a node's *progress text* in a text box under that node (the frontend's
``showTextPreview``, fed by the server's ``send_progress_text``); the box stays after the run and
each new text replaces the last. :class:`NodeText` keeps one execution's warnings above its latest
status line, so progress never hides a warning, and logs every warning. Outside a running server
(scripts, in-process tests) texts go to the log only; :attr:`NodeText.shown` holds the last text
either way.

    text = NodeText()                 # the node ComfyUI is executing now
    text.warn("...")                  # logged and shown; stays for this execution
    text.status("ReNO 3/50: ...")     # shown under the warnings
    with text.forward_warnings():     # Python warnings raised inside become node warnings
        ...
"""
from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager

LOG_PREFIX = "[Latent-CLIP] "  # ComfyUI's console shows the message alone: this says which pack wrote it


class _Prefixed(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        return LOG_PREFIX + str(msg), kwargs


log = _Prefixed(logging.getLogger("comfyui-latent-clip"), {})  # every log line of the pack
WARNING_MARK = "⚠ "


def _executing_node() -> str | None:
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:
        return None
    context = get_executing_context()
    return None if context is None else context.node_id


class NodeText:
    """The text under one node for one execution: warnings first (each once), then a status line."""

    def __init__(self, node_id: str | None = None):
        self.node_id = node_id if node_id is not None else _executing_node()
        self.warnings: list[str] = []
        self.status_line = ""
        self.shown = ""

    def warn(self, message: str) -> None:
        log.warning(message)
        if message not in self.warnings:
            self.warnings.append(message)
        self._show()

    def status(self, line: str) -> None:
        self.status_line = line
        self._show()

    @contextmanager
    def forward_warnings(self):
        """Show the Python warnings raised inside the block as node warnings (and log them)."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield
            finally:
                for w in caught:
                    self.warn(str(w.message))

    def _show(self) -> None:
        self.shown = "\n".join([*(WARNING_MARK + w for w in self.warnings), self.status_line]).strip()
        if self.node_id is None:
            return
        try:
            from server import PromptServer
        except ImportError:
            return
        server = PromptServer.instance
        if server is not None:
            server.send_progress_text(self.shown, self.node_id, server.client_id)


def progress_bar(node_id: str | None):
    """A library ``progress(done, total)`` callback: moves ``node_id``'s progress bar and stops the
    call (raises ComfyUI's interrupt) when the person running the graph cancels it."""
    import comfy.model_management as mm
    import comfy.utils
    bar = comfy.utils.ProgressBar(1, node_id=node_id)

    def progress(done: int, total: int) -> None:
        bar.update_absolute(done, total)
        mm.throw_exception_if_processing_interrupted()

    return progress
