"""``convnext serve``: the model behind an HTTP API (FastAPI + uvicorn) with dynamic batching, Prometheus
metrics and a web page.

- ``runners``: preprocess -> batch -> logits for a backend (torch here; onnxruntime/OpenVINO plug in).
- ``batching``: groups concurrent requests into one forward pass.
- ``app``: the endpoints (``create_app``), ``server``: uvicorn in the foreground or in a thread.

Only ``runners`` and ``inputs`` import without the serve extra (fastapi, uvicorn, prometheus_client).
"""
