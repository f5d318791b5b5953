"""``speechllama serve``: OpenAI's speech-to-text API, batched, over one model (docs/serving.md).

    app = create_app(speechllama.load("runs/demo/model"))   # an ASGI app for any server
    serve("runs/demo/model", port=8000)                      # or load and run it with uvicorn
"""

from __future__ import annotations

import os
from pathlib import Path

from .app import create_app

__all__ = ["create_app", "serve"]


def serve(model_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000,
          options=None, device: str = "auto", api_key: str | None = None, max_batch: int = 16,
          max_wait_ms: float = 20.0, max_upload_mb: float = 25.0, dtype: str = "float32") -> None:
    """Load ``model_dir`` and serve it with uvicorn until interrupted (binds 127.0.0.1 by default).
    ``options``: the DecodingOptions of every request (None: the model's defaults). ``dtype`` of
    the frozen LLM's weights: float32 by default, because a request's result must not depend on
    what it is batched with, and bf16 matmuls can flip a near-tie token with the batch's shape
    (docs/serving.md); bfloat16 reads half the bytes."""
    import torch
    import uvicorn

    from ..inference import load

    kwargs = {"device": device, "dtype": getattr(torch, dtype)}
    model = load(model_dir, **kwargs) if options is None else load(model_dir, options, **kwargs)
    app = create_app(model, Path(model_dir).resolve().name, api_key, max_batch, max_wait_ms, max_upload_mb)
    uvicorn.run(app, host=host, port=port, log_level="info")
