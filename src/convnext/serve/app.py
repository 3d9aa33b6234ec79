"""The HTTP API (FastAPI): /healthz, /v1/model, /v1/predict, /metrics and the web page at /.

Every request that the server refuses gets a 4xx with ``{"error": "one sentence"}``; a request never takes
the server down (a failing forward fails only the requests of its batch). The model loads in a thread after
the socket is open, so /healthz answers 503 until it is ready (what a load balancer's readiness probe
needs).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles

from ..errors import UserError
from .batching import DynamicBatcher
from .inputs import MAX_PIXELS, BadImage, read_upload
from .metrics import CONTENT_TYPE, ServeMetrics
from .runners import Runner

STATIC = Path(__file__).parent / "static"
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")
RAW_TYPES = ("image/", "application/octet-stream")
log = logging.getLogger("uvicorn.error")  # uvicorn configures this one: our lines show next to its own


@dataclass
class ServeSettings:
    max_batch: int = 32  # images per forward pass at most
    max_wait_ms: float = 10.0  # how long a batch waits for company (only while more requests are coming)
    max_upload_mb: float = 20.0  # request bodies over this get 413 before they are read
    max_pixels: int = MAX_PIXELS  # decoded size ceiling (width x height x frames), checked from the header
    max_queue: int = 256  # prediction requests in flight at most; beyond: 503 and Retry-After
    preprocess_threads: int = 2  # decode + resize workers (off the event loop)
    default_topk: int = 5
    cam_max_side: int = 640  # the Grad-CAM overlay is drawn on the photo scaled to at most this side
    read_timeout_s: float = 30.0  # a client that sends no byte of its body for this long gets 408

    @property
    def max_body(self) -> int:
        return int(self.max_upload_mb * 2**20) + 64 * 1024  # + room for the multipart envelope


# /v1/predict reads its body itself (to cap it and to accept multipart or a raw image): described by hand
PREDICT_OPENAPI: dict[str, Any] = {
    "parameters": [
        {
            "name": "topk",
            "in": "query",
            "description": "classes to return, best first; more than the model has returns them all",
            "schema": {"type": "integer", "minimum": 1, "default": 5},
        },
        {"name": "cam", "in": "query", "schema": {"type": "boolean", "default": False}},
    ],
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _State:
    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.metrics = ServeMetrics()
        self.runner: Runner | None = None
        self.load_error: str | None = None
        self.batcher: DynamicBatcher | None = None
        self.in_flight = 0
        self.threads = 0
        self.pool = concurrent.futures.ThreadPoolExecutor(settings.preprocess_threads, "convnext-prep")
        self.model_thread = concurrent.futures.ThreadPoolExecutor(1, "convnext-model")


class _Guard:
    """Outermost of our ASGI layers: counts every request by endpoint and status, and guards the body.
    A Content-Length over the limit gets 413 before one byte of the body is read, and a body that streams
    past the limit (chunked, or a lying Content-Length) is never stored past the limit. A client that stops
    sending its body for ``read_timeout_s`` gets 408 and the connection closes (uvicorn has no such
    timeout: the socket and the request slot would be held forever; the wait for headers is the
    server's, ``server.py``). A request that uvicorn cancels at shutdown (still unfinished when
    ``--graceful-timeout`` runs out) gets 503 JSON, not uvicorn's plain-text 500 and a traceback."""

    def __init__(self, app: Any, state: _State) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, status, started = time.perf_counter(), 500, False
        settings = self.state.settings
        limit = settings.max_body
        too_big = f"the upload is over the {settings.max_upload_mb:g} MB limit (--max-upload-mb)"
        close = {"Connection": "close"}

        async def send_status(message: dict) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        body_done = False

        async def timed() -> dict:
            """receive(); while the body is incomplete, at most read_timeout_s without a byte."""
            nonlocal body_done
            if body_done:  # afterwards receive() waits for the disconnect: no timeout on that
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), settings.read_timeout_s)
            except asyncio.TimeoutError:
                raise ApiError(
                    408,
                    f"the upload stalled: no data for {settings.read_timeout_s:g} s (--read-timeout-s)",
                    close,
                ) from None
            if message["type"] != "http.request" or not message.get("more_body"):
                body_done = True
            return message

        try:
            if scope["method"] in ("POST", "PUT", "PATCH"):
                length = dict(scope["headers"]).get(b"content-length")
                if length is not None and length.isdigit() and int(length) > limit:
                    await error(413, too_big, close)(scope, receive, send_status)
                    return
                received = 0

                async def capped() -> dict:
                    nonlocal received
                    message = await timed()
                    if message["type"] == "http.request":
                        received += len(message.get("body", b""))
                        if received > limit:
                            await drain(message)
                            raise ApiError(413, too_big, close)
                    return message

                async def drain(message: dict) -> None:
                    """Read and drop (up to 4x the limit) what the client is still sending: closing a socket
                    with unread data resets it, and the client would see the reset instead of our 413."""
                    dropped = 0
                    while message.get("more_body") and dropped < 4 * limit:
                        try:
                            message = await timed()
                        except ApiError:  # the client stopped sending: nothing left to drain
                            return
                        if message["type"] != "http.request":
                            return
                        dropped += len(message.get("body", b""))

                await self.app(scope, capped, send_status)
            else:
                await self.app(scope, timed, send_status)
        except asyncio.CancelledError:
            # uvicorn cancels the requests still running when the graceful shutdown time is over; re-raised,
            # this would be its plain-text 500 and an "Exception in ASGI application" traceback
            if started:  # (our responses go out in one piece: practically never)
                return
            msg = "the server is shutting down and this request did not finish in time; retry it"
            await error(503, msg, {**close, "Retry-After": "1"})(scope, receive, send_status)
        finally:
            self.state.metrics.observe_request(scope.get("path", ""), status, time.perf_counter() - t0)


def create_app(
    load: Callable[[], Runner],
    settings: ServeSettings | None = None,
    *,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The ASGI app. ``load()`` builds the runner (in a thread, once the server is up); if it raises,
    /healthz reports the error and ``on_load_error`` is called (the CLI stops the server with it)."""
    settings = settings or ServeSettings()
    state = _State(settings)
    m = state.metrics

    def _load(loop: asyncio.AbstractEventLoop) -> None:
        t0 = time.perf_counter()
        try:
            runner = load()
            # one forward on the thread that will run them all: "ok" on /healthz then means fast, not
            # "the first request pays for lazy initialisation"
            size = runner.data.img_size
            state.model_thread.submit(runner.forward, torch.zeros(1, 3, size, size)).result()
            state.threads = state.model_thread.submit(torch.get_num_threads).result()
        except BaseException as e:  # reported on /healthz and to the CLI
            msg = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
            log.error("convnext serve: cannot load the model: %s", msg)
            loop.call_soon_threadsafe(_failed, e, msg)
            return
        log.info(
            "convnext serve: %s (%s, %s, %d classes) ready in %.1f s",
            runner.arch,
            runner.backend,
            runner.precision,
            runner.num_classes,
            time.perf_counter() - t0,
        )
        loop.call_soon_threadsafe(_ready, runner)

    def _failed(e: BaseException, msg: str) -> None:
        state.load_error = msg
        if on_load_error is not None:
            on_load_error(e)

    def _ready(runner: Runner) -> None:
        state.batcher = DynamicBatcher(
            runner.forward,
            state.model_thread,
            max_batch=settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000,
            on_batch=m.observe_batch,
            on_depth=m.queue_depth.set,
        )
        state.batcher.start()
        state.runner = runner
        m.model_loaded.set(1)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        threading.Thread(target=_load, args=(loop,), name="convnext-load", daemon=True).start()
        yield
        if state.batcher is not None:  # uvicorn has let in-flight requests finish before this point
            await state.batcher.stop()
        state.pool.shutdown(wait=False, cancel_futures=True)
        state.model_thread.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="convnext serve", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.serve = state
    app.add_middleware(_Guard, state=state)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            msg = f"no such endpoint: {request.url.path} (try /v1/predict, /v1/model, /healthz, /metrics)"
        elif exc.status_code == 405:
            msg = f"{request.method} is not allowed on {request.url.path}"
        else:
            msg = str(exc.detail)
        return error(exc.status_code, msg, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("convnext serve: internal error")
        return error(500, f"internal error ({type(exc).__name__}); the server is still up")

    # ------------------------------------------------------------------------------------ endpoints
    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        if state.runner is not None:
            return JSONResponse({"status": "ok"})
        if state.load_error is not None:
            return JSONResponse({"status": "error", "error": state.load_error}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    def _runner() -> Runner:
        if state.runner is None:
            if state.load_error is not None:
                raise ApiError(503, f"the model failed to load ({state.load_error})")
            raise ApiError(
                503, "the model is still loading; retry when /healthz says ok", {"Retry-After": "1"}
            )
        return state.runner

    @app.get("/v1/model")
    async def model_info() -> JSONResponse:
        runner = _runner()
        info = runner.describe()
        info["threads"] = state.threads  # intra-op threads of the forward pass
        info["batching"] = {"max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms}
        info["limits"] = {"max_upload_mb": settings.max_upload_mb, "max_pixels": settings.max_pixels}
        info["labels"] = runner.labels
        return JSONResponse(info)

    @app.get("/metrics")
    async def metrics() -> Response:
        if state.batcher is not None:
            m.queue_depth.set(state.batcher.queued)
        return Response(m.render(), media_type=CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    async def predict_dense(request: Request, runner: Runner, t0: float) -> JSONResponse:
        """A detector's or segmenter's answer (``inference.dense.DenseRunner.answer``): one image per
        forward (their sizes differ), on the model thread as every forward."""
        threshold = _fraction(request.query_params.get("score_threshold"), 0.5, "score_threshold")
        if state.in_flight >= settings.max_queue:
            raise ApiError(
                503, f"the server is busy ({state.in_flight} requests in flight)", {"Retry-After": "1"}
            )
        state.in_flight += 1
        m.in_flight.inc()
        try:
            data = await _read_image_body(request)
            loop = asyncio.get_running_loop()
            img, _ = await loop.run_in_executor(state.pool, _prepare, runner, data, settings.max_pixels)
            t1 = time.perf_counter()
            out = await loop.run_in_executor(state.model_thread, runner.answer, img, threshold)  # type: ignore[attr-defined]
            m.observe_batch(1, time.perf_counter() - t1)
            out["latency_ms"] = round((time.perf_counter() - t0) * 1000, 2)
            return JSONResponse(out)
        finally:
            state.in_flight -= 1
            m.in_flight.dec()

    @app.post("/v1/predict", openapi_extra=PREDICT_OPENAPI)
    async def predict(request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        runner = _runner()
        if getattr(runner, "task", None):  # detection, segmentation
            return await predict_dense(request, runner, t0)
        topk = _topk(request.query_params.get("topk"), settings.default_topk, runner.num_classes)
        want_cam = _flag(request.query_params.get("cam"), "cam")
        if want_cam and not runner.supports_cam:
            raise ApiError(
                400,
                "cam=true needs PyTorch weights (Grad-CAM takes gradients); this server runs an exported "
                f"{runner.backend} file",
            )
        if state.in_flight >= settings.max_queue:
            raise ApiError(
                503, f"the server is busy ({state.in_flight} requests in flight)", {"Retry-After": "1"}
            )
        batcher = state.batcher
        assert batcher is not None
        state.in_flight += 1
        m.in_flight.inc()
        batcher.expect()
        submitted = False
        try:
            data = await _read_image_body(request)
            loop = asyncio.get_running_loop()
            img, x = await loop.run_in_executor(state.pool, _prepare, runner, data, settings.max_pixels)
            fut = batcher.submit(x)
            submitted = True
            logits = await fut
            probs = logits.softmax(dim=0)
            # ties: the lower class index first, as predict and evaluate rank them
            idx = logits.sort(descending=True, stable=True).indices[:topk]
            out: dict[str, Any] = {
                "model": runner.arch,
                "predictions": [
                    {"index": int(i), "label": runner.labels[int(i)], "prob": round(float(probs[i]), 6)}
                    for i in idx
                ],
            }
            if want_cam:
                cam = await loop.run_in_executor(state.model_thread, runner.cam, x[None], idx[:1])
                png = await loop.run_in_executor(
                    state.pool, _overlay_png, img, cam[0], runner, settings.cam_max_side
                )
                out["cam"] = base64.b64encode(png).decode("ascii")
                out["cam_index"] = int(idx[0])
            out["latency_ms"] = round((time.perf_counter() - t0) * 1000, 2)
            return JSONResponse(out)
        finally:
            if not submitted:
                batcher.arrived()
            state.in_flight -= 1
            m.in_flight.dec()

    return app


# ------------------------------------------------------------------------------------------ helpers
def _topk(raw: str | None, default: int, num_classes: int) -> int:
    """A topk over the class count means "all of them" (as transformers' pipeline treats ``top_k``): a
    client asking for the usual 5 works with a 2-class fine-tune; below 1 or not a number is a mistake."""
    if raw is None:
        return min(default, num_classes)
    try:
        k = int(raw)
    except ValueError:
        k = None
    if k is None or k < 1:
        raise ApiError(400, f"topk must be a whole number, 1 or more, got {raw!r}")
    return min(k, num_classes)


def _fraction(raw: str | None, default: float, name: str) -> float:
    if raw is None:
        return default
    try:
        v = float(raw)
    except ValueError:
        v = -1.0
    if not 0 <= v <= 1:
        raise ApiError(400, f"{name} must be a number from 0 to 1, got {raw!r}")
    return v


def _flag(raw: str | None, name: str) -> bool:
    if raw is None or raw.lower() in FALSE:
        return False
    if raw.lower() in TRUE:
        return True
    raise ApiError(400, f"{name} must be true or false, got {raw!r}")


async def _read_image_body(request: Request) -> bytes:
    """The image bytes: multipart field ``file``, or the whole body when it is sent as image/*."""
    ctype = request.headers.get("content-type", "").lower()
    try:
        if ctype.startswith("multipart/form-data"):
            try:
                form = await request.form(max_files=4, max_fields=16)
            except StarletteHTTPException as e:  # malformed multipart (no boundary, cut short)
                raise ApiError(400, f"the multipart body cannot be parsed ({e.detail})") from None
            try:
                part = form.get("file")
                if part is None:
                    got = ", ".join(repr(k) for k in form.keys()) or "none"
                    raise ApiError(
                        400, f"send the image in the multipart field 'file' (fields received: {got})"
                    )
                if isinstance(part, str):
                    raise ApiError(400, "the multipart field 'file' must be a file upload, not a text value")
                return await part.read()
            finally:
                await form.close()
        if ctype.startswith(RAW_TYPES) or (
            not ctype and request.headers.get("content-length") not in (None, "0")
        ):
            return await request.body()
        if not ctype and request.headers.get("content-length") in (None, "0"):
            raise ApiError(400, "the request body is empty; send an image")
        raise ApiError(
            415,
            f"content type {ctype.split(';')[0]!r} is not accepted; send multipart field 'file' or image/*",
        )
    except ClientDisconnect:
        raise ApiError(400, "the client closed the connection before the upload finished") from None


def _prepare(runner: Runner, data: bytes, max_pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(decoded uint8 image, model input); runs in the preprocessing pool."""
    try:
        img = read_upload(data, max_pixels)
    except BadImage as e:
        raise ApiError(e.status, str(e)) from None
    return img, runner.preprocess(img)


def _overlay_png(img: torch.Tensor, cam: torch.Tensor, runner: Runner, max_side: int) -> bytes:
    """The Grad-CAM heat map over the photo (as ``convnext predict --cam`` draws it), at most ``max_side``."""
    from torchvision.io import encode_png
    from torchvision.transforms.v2.functional import resize

    from ..inference.cam import cam_overlay, crop_box

    h, w = img.shape[1:]
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        img = resize(img, [max(1, round(h * scale)), max(1, round(w * scale))], antialias=True)
    d = runner.data
    box = crop_box(img.shape[1], img.shape[2], d.img_size, d.crop_pct, d.crop_mode)
    return encode_png(cam_overlay(img, cam, box)).numpy().tobytes()
