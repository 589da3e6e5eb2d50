"""Shared fixtures. Tests that need ../shared skip with a message when it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RSJAX_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data").is_dir():
        pytest.skip(f"../shared not found at {SHARED}: real-data tests skipped")
    return SHARED


@pytest.fixture(scope="session")
def fmnist_dir() -> Path:
    d = Path(os.environ.get("RSJAX_DATA_DIR", "/usr/share/datasets/fashion-mnist"))
    if not (d / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not in {d}: apt-get install -y dataset-fashion-mnist")
    return d
