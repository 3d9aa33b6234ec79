from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from convnext.telemetry import disable_telemetry

disable_telemetry()  # the suite opens no connection either (OpenVINO reports usage on import)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
IMAGENET_SAMPLE = SHARED / "data" / "imagenet-sample" / "val"
SYNSETS = SHARED / "data" / "imagenet" / "LOC_synset_mapping.txt"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def imagenet_sample() -> Path:
    if not IMAGENET_SAMPLE.is_dir():
        pytest.skip(f"shared ImageNet sample not found at {IMAGENET_SAMPLE}")
    return IMAGENET_SAMPLE


@pytest.fixture
def synset_file() -> Path:
    if not SYNSETS.is_file():
        pytest.skip(f"shared ImageNet synset list not found at {SYNSETS}")
    return SYNSETS


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module: on a CPU shared with other jobs, two spinning threads per process
    run several times slower than one, and runs compared bit-for-bit must use the same thread count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
