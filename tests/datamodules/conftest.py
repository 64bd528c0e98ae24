"""Small real shards for the data-pipeline tests: sklearn digits as PNG class shards."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from grn.datamodules.writers import write_shards

sys.path.insert(0, str(Path(__file__).parent))  # shard_helpers
from shard_helpers import digit_png_samples  # noqa: E402


@pytest.fixture(scope="session")
def digit_shards(tmp_path_factory):
    """8 shards x 12 digits (96 samples); returns the brace pattern."""
    out = tmp_path_factory.mktemp("digit_shards")
    write_shards(digit_png_samples(96), out, max_count=12)
    return str(out / "shard-{000000..000007}.tar")
