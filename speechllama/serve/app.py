"""The HTTP surface: OpenAI's speech-to-text API over one loaded model, a health check and a web page.

``create_app(model)`` wires it: requests are parsed (form.py, params.py), their audio decoded from
memory (``speechllama.audio.load_audio_bytes``), queued for the decoding thread (batcher.py) and the
``Transcript`` rendered in the requested format (``speechllama.subtitles.render``, as the CLI
does). Every error is OpenAI-shaped (errors.py). docs/serving.md.
"""

from __future__ import annotations

import hmac
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from ..audio import AudioError, load_audio_bytes
from ..inference import Job, SpeechToText
from ..models.prompt import LANGUAGES
from ..subtitles import MEDIA_TYPES, render
from .batcher import Batcher
from .errors import APIError, install_handlers
from .form import read_form
from .params import Params, parse_params

STATIC = Path(__file__).parent / "static"


def _check_key(api_key: str | None):
    """A dependency that answers 401 unless the request carries ``Authorization: Bearer <api_key>``."""

    async def check(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(401, "missing API key: send the header 'Authorization: Bearer <key>' "
                                "(the server was started with --api-key)", None, "invalid_api_key")
        if not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "incorrect API key provided", None, "invalid_api_key")

    return check


def _job(params: Params, wave, name: str) -> Job:
    """As ``SpeechToText.transcribe``/``translate`` make it: the text in the source language for
    "asr", in English for "st" (OpenAI's translations endpoint); words aligned only when asked for."""
    words = params.task == "asr" and "word" in params.granularities
    return Job(wave, params.task, params.language, word_timestamps=words, name=name)


def _respond(transcript, params: Params) -> Response:
    words = "word" in params.granularities
    return Response(render(transcript, params.response_format, words),
                    media_type=MEDIA_TYPES[params.response_format])


def _api_router(batcher: Batcher, model_id: str, max_bytes: int, api_key: str | None) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(_check_key(api_key))])
    created = int(time.time())

    async def speech_to_text(request: Request, task: str):
        params = parse_params(await read_form(request, max_bytes), task)
        name = params.upload.filename or "file"
        try:
            wave = await run_in_threadpool(load_audio_bytes, params.upload.data, name)
        except AudioError as e:
            raise APIError(400, f"unusable audio: {e}", "file", "invalid_audio") from e
        return _respond(await batcher.submit(_job(params, wave, name)), params)

    @router.post("/audio/transcriptions")
    async def transcriptions(request: Request):
        return await speech_to_text(request, "asr")

    @router.post("/audio/translations")
    async def translations(request: Request):
        return await speech_to_text(request, "st")

    @router.get("/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                            "owned_by": "speechllama"}]}

    return router


def create_app(model: SpeechToText, model_id: str = "speechllama", api_key: str | None = None,
               max_batch: int = 16, max_wait_ms: float = 20.0, max_upload_mb: float = 25.0) -> FastAPI:
    """The server's ASGI app over a loaded model (``speechllama.load(DIR)``).

    model_id: the name /v1/models lists (requests may name any model: there is one).
    api_key: when set, /v1/* needs ``Authorization: Bearer <api_key>``; / and /health stay open.
    max_batch, max_wait_ms: dynamic batching (batcher.py). max_upload_mb: request size cap (413).
    """
    batcher = Batcher(model.run, max_batch, max_wait_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="speechllama", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_handlers(app)
    app.include_router(_api_router(batcher, model_id, int(max_upload_mb * 2**20), api_key))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, "queued": batcher.queued,
                "auth": api_key is not None, "languages": LANGUAGES, **batcher.stats.as_dict()}

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html")

    return app
