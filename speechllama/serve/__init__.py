"""``speechllama serve``: OpenAI's speech-to-text API, batched, over one model (docs/serving.md).

    app = create_app(load_for_serving("runs/demo/model"))   # an ASGI app for any server
    serve("runs/demo/model", port=8000)                      # or load and run it with uvicorn
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .app import create_app

__all__ = ["create_app", "load_for_serving", "serve"]

DTYPE = "float32"  # the frozen LLM's weights as served, by default (see serve)


def load_for_serving(model_dir: str | os.PathLike, options=None, device: str = "auto", dtype: str = DTYPE):
    """The model as ``serve`` loads it (``speechllama.load`` with the server's dtype, float32 by
    default): the tests compare served results with this model decoding offline."""
    import torch

    from ..inference.api import load

    kwargs = {"device": device, "dtype": getattr(torch, dtype)}
    return load(model_dir, **kwargs) if options is None else load(model_dir, options, **kwargs)


def serve(model_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000,
          options=None, device: str = "auto", api_key: str | None = None, max_batch: int = 16,
          max_wait_ms: float = 20.0, max_upload_mb: float = 25.0, dtype: str = DTYPE,
          max_audio_s: float | None = 1800.0, max_queue: int | None = 64,
          read_timeout_s: float | None = 120.0, timeout_keep_alive: float = 5.0) -> None:
    """Load ``model_dir`` and serve it with uvicorn until interrupted (binds 127.0.0.1 by default).
    ``options``: the DecodingOptions of every request (None: the model's defaults). ``dtype`` of
    the frozen LLM's weights: float32 by default, because a request's result must not depend on
    what it is batched with, and bf16 matmuls flip near-tie tokens with the batch's shape
    (docs/serving.md); bfloat16 reads half the bytes. ``max_audio_s``, ``max_queue``,
    ``read_timeout_s``: create_app's; ``timeout_keep_alive``: uvicorn's, seconds an idle
    keep-alive connection stays open."""
    import uvicorn
    from uvicorn.logging import DefaultFormatter

    log = logging.getLogger("speechllama.serve")  # its lines (clients gone, error ids) as uvicorn's
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    model = load_for_serving(model_dir, options, device, dtype)
    app = create_app(model, Path(model_dir).resolve().name, api_key, max_batch, max_wait_ms, max_upload_mb,
                     max_audio_s, max_queue, read_timeout_s)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_keep_alive=timeout_keep_alive)
