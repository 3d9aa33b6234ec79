"""``convnext serve --weights SRC``: an HTTP API with dynamic batching, Prometheus metrics and a web page.

Binds 127.0.0.1 unless ``--host`` says otherwise. The first line on stdout is the address
(``convnext serve: http://127.0.0.1:8000/``; with ``--port 0`` the port the system chose). SIGTERM stops
accepting, lets in-flight requests finish and exits 0.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from ..runtimes import SERVE_BACKENDS, by_suffix_help
from .common import add_device, add_img_size, add_progress, add_weights, read_names_file, weights_source


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="HTTP API and web page for a model (dynamic batching, /metrics)",
        description="Serve a ConvNeXt over HTTP: POST /v1/predict, GET /v1/model, /healthz, /metrics, and a "
        "web page at /. Needs the serve extra: pip install 'convnext[serve]'.",
    )
    add_weights(p, exported=True)
    p.add_argument(
        "--backend",
        choices=SERVE_BACKENDS,
        default="auto",
        help=f"auto: {by_suffix_help()}, torch otherwise",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port, printed at start)")
    p.add_argument("--max-batch", type=int, default=32, help="images per forward pass at most (default 32)")
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=10.0,
        help="how long a batch waits for more requests while more are arriving (default 10)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=20.0,
        help="larger uploads get 413 before they are read (default 20)",
    )
    p.add_argument(
        "--max-queue", type=int, default=256, help="requests in flight before 503 busy (default 256)"
    )
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, one per core)")
    p.add_argument(
        "--preprocess-threads", type=int, default=2, help="decode/resize worker threads (default 2)"
    )
    p.add_argument("--classes", metavar="FILE", help="class names, one per line (default: the checkpoint's)")
    add_img_size(p)
    add_device(p)
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.add_argument("--no-access-log", action="store_true", help="do not log one line per request")
    p.add_argument(
        "--graceful-timeout", type=float, default=30.0, help="seconds in-flight requests get after SIGTERM"
    )
    p.add_argument(
        "--read-timeout-s",
        type=float,
        default=30.0,
        help="a client that sends no byte of its request (head or body) for this long is cut off: 408 and "
        "the connection closed (default 30)",
    )
    add_progress(p)  # accepted by every verb, for scripts that pass it to all
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise UserError(
            f"serve needs the serve extra ({e.name} is missing): pip install 'convnext[serve]'"
        ) from None
    import logging

    import torch

    logging.getLogger("convnext").setLevel(args.log_level.upper())  # our notes as quiet as uvicorn's lines
    from ..serve.app import ServeSettings, create_app
    from ..serve.runners import check_backend, load_runner
    from ..serve.server import bind, serve_forever, url_of

    for name in ("max_batch", "max_queue", "preprocess_threads"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.max_wait_ms < 0:
        raise UserError(f"--max-wait-ms must be 0 or more, got {args.max_wait_ms:g}")
    if args.read_timeout_s <= 0:
        raise UserError(f"--read-timeout-s must be positive, got {args.read_timeout_s:g}")
    if args.max_upload_mb <= 0:
        raise UserError(f"--max-upload-mb must be positive, got {args.max_upload_mb:g}")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0..65535, got {args.port}")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    from ..inference.dense import dense_task

    weights = args.weights
    if not (weights or dense_task(None, args.model)):  # a detector or segmenter by name: random weights
        weights = weights_source(args.weights, args.model)
    check_backend(args.backend, weights or "")  # an unusable backend fails here, before the socket opens
    names = read_names_file(args.classes) if args.classes else None

    def load():  # runs in the server's loading thread
        return load_runner(
            weights,
            args.model,
            backend=args.backend,
            device=args.device,
            amp=args.amp,
            ema=args.ema,
            img_size=args.img_size,
            crop_pct=args.crop_pct,
            class_names=names,
        )

    settings = ServeSettings(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_upload_mb=args.max_upload_mb,
        max_queue=args.max_queue,
        preprocess_threads=args.preprocess_threads,
        read_timeout_s=args.read_timeout_s,
    )
    failure: list[BaseException] = []
    server_ref: list = []

    def on_load_error(e: BaseException) -> None:  # a model that cannot load: stop, say why, exit 2
        failure.append(e)
        if server_ref:
            server_ref[0].should_exit = True

    app = create_app(load, settings, on_load_error=on_load_error)
    sock = bind(args.host, args.port)
    print(f"convnext serve: {url_of(sock)}/ (loading {weights or args.model})", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"convnext serve: listening on {args.host}: reachable from other machines", file=sys.stderr)
    serve_forever(
        app,
        sock,
        log_level=args.log_level,
        access_log=not args.no_access_log,
        graceful_s=args.graceful_timeout,
        read_timeout_s=args.read_timeout_s,
        on_server=server_ref.append,
    )
    if failure:
        e = failure[0]
        raise e if isinstance(e, UserError) else UserError(f"cannot load the model ({type(e).__name__}: {e})")
    return 0
