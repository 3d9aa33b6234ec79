"""``convnext benchmark``'s machinery: ours against timm and torchvision with the same weights (models.py),
the same weights in every deployment backend (backends.py), timed interleaved on a noisy machine
(timing.py), the peers' models holding our weights (peers.py), and the tables (report.py)."""

from .backends import BACKENDS, parse_backends, run_backend_benchmark
from .models import CHUNKED_NOTE, FUSED_NOTE, SMALL_NOTE, run_benchmark
from .peers import PEERS, build_peer, to_peer_state_dict
from .report import format_backend_report, format_report
from .timing import matmul_peak_step

__all__ = [
    "BACKENDS",
    "CHUNKED_NOTE",
    "FUSED_NOTE",
    "PEERS",
    "SMALL_NOTE",
    "build_peer",
    "format_backend_report",
    "format_report",
    "matmul_peak_step",
    "parse_backends",
    "run_backend_benchmark",
    "run_benchmark",
    "to_peer_state_dict",
]
