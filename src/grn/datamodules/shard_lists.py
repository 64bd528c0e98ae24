"""Shard lists: patterns → urls and weights, the start-up readability check, and the seeds every random choice
of the pipeline derives from (see :mod:`grn.datamodules.wds` for the guarantees)."""

from __future__ import annotations

import glob
import os
import random
from collections.abc import Sequence

import numpy as np
import webdataset as wds

from grn.datamodules.tar_stream import probe_shard


def expand_shards(
    shards: str | Sequence[str], weights: Sequence[float] | None = None
) -> tuple[list[str], list[float]]:
    """Shard patterns → (urls, per-url weights).

    Args:
        shards: a pattern string (sources separated by ``::``, braces expanded) or a list of such patterns, one
            per source. Local patterns may also use glob wildcards (``dir/*.tar``).
        weights: one weight per source (default: all 1). A source's shards share its weight equally, so the
            weight is the source's share of drawn shards in resampled mode.

    Returns:
        ``urls`` (sorted within a source, sources in the given order) and a weight per url summing to 1.
    """
    sources = shards.split("::") if isinstance(shards, str) else [str(s) for s in shards]
    if not sources or not all(sources):
        raise ValueError(f"empty shard pattern in {shards!r}")
    weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights]
    if len(weights) != len(sources):
        raise ValueError(f"{len(weights)} weights for {len(sources)} shard sources ({shards!r})")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"source weights must be >= 0 with a positive sum, got {weights}")
    urls: list[str] = []
    url_weights: list[float] = []
    for pattern, w in zip(sources, weights):
        expanded = wds.shardlists.expand_urls(pattern)
        if "://" not in pattern and not pattern.startswith("pipe:"):
            # local files: glob wildcards too, and fail now (not in a worker, hours later) if nothing matches
            expanded = sorted({p for e in expanded for p in (glob.glob(e) if glob.has_magic(e) else [e])})
            missing = [p for p in expanded if not os.path.isfile(p)]
            if not expanded or missing:
                raise FileNotFoundError(
                    f"shard pattern {pattern!r} matches no file"
                    + (f" (missing: {missing[0]}{' …' if len(missing) > 1 else ''})" if missing else "")
                    + "; write shards with scripts/make_shards.py or fix data.*shards"
                )
        urls.extend(expanded)
        url_weights.extend([w / len(expanded)] * len(expanded))
    total = sum(url_weights)
    return urls, [w / total for w in url_weights]


def source_urls(shards: str | Sequence[str] | None) -> list[list[str]]:
    """The urls of each source of ``shards`` (see :func:`expand_shards`), in source order; ``[]`` for None."""
    if shards is None:
        return []
    sources = shards.split("::") if isinstance(shards, str) else [str(s) for s in shards]
    return [expand_shards(pattern)[0] for pattern in sources]


def check_sources_readable(shards: str | Sequence[str]) -> None:
    """Start-up check: every source of ``shards`` has a shard that opens and starts with a tar header (local files;
    remote and ``pipe:`` urls are not opened here). Raises ``ValueError`` (one line) naming the source otherwise.
    Shards are tried in order until one is readable, so a healthy source costs one open."""
    sources = shards.split("::") if isinstance(shards, str) else [str(s) for s in shards]
    for pattern in sources:
        if "://" in pattern or pattern.startswith("pipe:"):
            continue
        urls = expand_shards(pattern)[0]
        first = None
        for url in urls:
            why = probe_shard(url)
            if why is None:
                break
            first = first or f"{url}: {why}"
        else:
            raise ValueError(f"no readable shard in {pattern!r} ({len(urls)} tried; {first}); rewrite them with "
                             "scripts/make_shards.py or fix data.*shards")


def seed_of(*parts: int) -> int:
    """A 64-bit seed from integers (SeedSequence mixes them well; ``hash`` of a tuple would correlate)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0])


def sample_rng(seed: int, epoch: int, rank: int, worker: int, index: int) -> random.Random:
    """The random stream of one sample: a pure function of its position, so a replay after resume (which skips
    decoding) cannot shift the choices of later samples."""
    # int tuples hash deterministically across processes (no PYTHONHASHSEED for ints), and this is cheap
    return random.Random(hash((seed, epoch, rank, worker, index)))

