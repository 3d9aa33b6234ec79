"""Load test of `convnext serve` on loopback: throughput with 8 concurrent clients against the same backend's
offline batch-32 throughput, and p50 latency with 1 client against the offline batch-1 latency.

    .venv/bin/python benchmarks/serve_load.py                       # convnext_tiny, 224 px, random weights
    .venv/bin/python benchmarks/serve_load.py --weights runs/quickstart_digits

The server is a real `convnext serve` subprocess on 127.0.0.1 (any free port; nothing else is contacted);
the offline figures are the same model loaded the same way in this process, timed between the load phases
(rounds interleaved: offline, 8 clients, 1 client, offline, ...), so that load from other processes hits
both alike; the ratios are medians of the per-round ratios. Bounded: each phase stops after --requests
requests or --phase-seconds, the whole run after --time-limit seconds; the server gets SIGTERM at the end.
Clients send the 100 ImageNet sample photos in turn as raw image/jpeg bodies over keep-alive connections.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "imagenet-sample" / "val"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    flags = set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split())
    named = {"avx2": "AVX2", "avx512f": "AVX-512F", "avx512_vnni": "VNNI", "avx512_bf16": "AVX512-BF16"}
    have = [v for k, v in named.items() if k in flags]
    return ", ".join(have) + (", AMX" if "amx_tile" in flags else ", no AMX")


def start_server(weights: str, model: str | None, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "convnext.cli.main", "serve", "--weights", weights, "--port", "0"]
    cmd += ["--no-access-log", "--log-level", "warning", "--device", "cpu"]
    cmd += ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]
    if model:
        cmd += ["--model", model]
    if args.img_size:
        cmd += ["--img-size", str(args.img_size)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=sys.stderr, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    line = proc.stdout.readline().decode()
    m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"serve_load: the server did not start: {line!r}")
    port = m.group(1)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=5)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit("serve_load: the server exited while loading")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("serve_load: the server did not become healthy in 300 s")


def load_phase(port: str, photos: list[bytes], clients: int, requests: int, seconds: float) -> dict:
    """``clients`` threads, each one keep-alive connection sending requests back to back."""
    lock = threading.Lock()
    latencies: list[float] = []
    errors = 0
    sent = 0
    stop_at = time.monotonic() + seconds

    def client(i: int) -> None:
        nonlocal errors, sent
        conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=120)
        while True:
            with lock:
                if sent >= requests or time.monotonic() >= stop_at:
                    break
                n = sent
                sent += 1
            body = photos[n % len(photos)]
            t0 = time.perf_counter()
            conn.request("POST", "/v1/predict?topk=5", body=body, headers={"Content-Type": "image/jpeg"})
            r = conn.getresponse()
            r.read()
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                errors += r.status != 200
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "n": len(latencies),
        "errors": errors,
        "images_per_s": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p90_ms": statistics.quantiles(latencies, n=10)[-1] * 1000
        if len(latencies) > 1
        else latencies[0] * 1000,
    }


def offline(runner, x: torch.Tensor, reps: int) -> list[float]:
    runner.forward(x)  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        runner.forward(x)
        times.append(time.perf_counter() - t0)
    return times


def server_batches(port: str) -> tuple[float, float]:
    c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    count = float(re.search(r"^convnext_serve_batch_size_count (\S+)", text, re.M).group(1))
    total = float(re.search(r"^convnext_serve_batch_size_sum (\S+)", text, re.M).group(1))
    return count, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--weights", help="what `convnext serve --weights` takes (default: random --model weights)"
    )
    ap.add_argument("--model", default="convnext_tiny", help="architecture for random weights (default tiny)")
    ap.add_argument("--img-size", type=int, help="input resolution (default: the weights', 224 for random)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=48, help="requests per 8-client phase at most")
    ap.add_argument("--requests-1", type=int, default=12, help="requests per 1-client phase at most")
    ap.add_argument("--phase-seconds", type=float, default=60.0, help="seconds per phase at most")
    ap.add_argument("--time-limit", type=float, default=900.0, help="the whole run stops after this")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=10.0)
    ap.add_argument("--offline-reps", type=int, default=3, help="batch-32 forwards per round (batch 1: 4x)")
    ap.add_argument("--threads", type=int, help="torch threads, server and offline alike (default: torch's)")
    ap.add_argument("--photos", default=str(PHOTOS))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.monotonic()

    from convnext.serve.runners import load_runner

    tmp = tempfile.TemporaryDirectory()
    weights, model = args.weights, None
    if weights is None:  # random weights, saved as a checkpoint file the server loads like any other
        from safetensors.torch import save_file

        from convnext.models import build_model

        torch.manual_seed(0)
        weights = str(Path(tmp.name) / f"{args.model}_random.safetensors")
        save_file(build_model(args.model).state_dict(), weights)
        model = args.model
    photos = [p.read_bytes() for p in sorted(Path(args.photos).glob("*/*.JPEG"))]
    if not photos:
        raise SystemExit(f"serve_load: no *.JPEG photos under {args.photos}")

    runner = load_runner(weights, model, device="cpu", img_size=args.img_size)
    from convnext.data.images import load_image

    # offline inputs made as the server makes its batches: the same photos, decoded and preprocessed the same
    # way, stacked (the decoder's pixel layout carries through: channels-last memory, as in the server)
    inputs = [runner.preprocess(load_image(p)) for p in sorted(Path(args.photos).glob("*/*.JPEG"))[:32]]
    x32, x1 = torch.stack(inputs), torch.stack(inputs[:1])
    proc, port = start_server(weights, model, args)
    rows = []
    try:
        for r in range(args.rounds):
            if time.monotonic() - t_start > args.time_limit:
                print(f"serve_load: time limit reached after {r} rounds", file=sys.stderr)
                break
            b32 = offline(runner, x32, args.offline_reps)
            b1 = offline(runner, x1, 4 * args.offline_reps)
            c0, s0 = server_batches(port)
            many = load_phase(port, photos, args.clients, args.requests, args.phase_seconds)
            c1, s1 = server_batches(port)
            single = load_phase(port, photos, 1, args.requests_1, args.phase_seconds)
            row = {
                "offline_b32_img_s": 32 / statistics.median(b32),
                "offline_b1_ms": statistics.median(b1) * 1000,
                "serve_img_s": many["images_per_s"],
                "serve_p50_ms_8": many["p50_ms"],
                "mean_batch": (s1 - s0) / max(c1 - c0, 1),
                "serve_p50_ms_1": single["p50_ms"],
                "errors": many["errors"] + single["errors"],
            }
            row["throughput_ratio"] = row["serve_img_s"] / row["offline_b32_img_s"]
            row["latency_ratio"] = row["serve_p50_ms_1"] / row["offline_b1_ms"]
            rows.append(row)
            print(json.dumps({"round": r + 1, **{k: round(v, 3) for k, v in row.items()}}), flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "killed"
        tmp.cleanup()
    if not rows:
        raise SystemExit("serve_load: no round completed")

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    head = f"{runner.arch} {runner.data.img_size}px, {runner.backend} {runner.precision}"
    print(
        f"\n{head}, {cpu_name()} ({cpu_flags()}), {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    )
    print(f"torch {torch.__version__}; load avg {os.getloadavg()[0]:.1f}; median of {len(rows)} rounds")
    print(f"server exit code after SIGTERM: {code}; errors: {sum(r['errors'] for r in rows)}")
    thr = f"{med('serve_img_s'):.2f} (mean batch {med('mean_batch'):.1f})"
    print("| | offline | served | ratio | target |")
    print("|---|---|---|---|---|")
    off32, off1, p50 = med("offline_b32_img_s"), med("offline_b1_ms"), med("serve_p50_ms_1")
    print(f"| throughput, {args.clients} clients (img/s) | {off32:.2f} (batch 32) | {thr} | "
          f"**{med('throughput_ratio'):.2f}x** | >= 0.8x |")  # fmt: skip
    print(f"| p50 latency, 1 client (ms) | {off1:.1f} (batch 1) | {p50:.1f} | "
          f"**{med('latency_ratio'):.2f}x** | <= 1.3x |")  # fmt: skip
    print(f"p50 latency with {args.clients} clients: {med('serve_p50_ms_8'):.0f} ms")


if __name__ == "__main__":
    main()
