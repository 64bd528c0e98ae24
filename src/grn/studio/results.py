"""What the studio's calls return: plain data (uint8 pictures, int64 labels, step records) that the page puts into
components (:mod:`grn.studio.engine` makes them, :mod:`grn.studio.page` shows them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from grn.studio.steps import StepRecord


@dataclass
class Picture:
    """A picture the studio made or was given: uint8 ``pixels`` ``[H, W, 3]`` at the model's size and its
    index ``labels`` ``[d, h, w]`` (the sampled tokens, or the upload's encoding); ``about`` says where it
    came from, ``condition`` is the class id or prompt it was made with (None for an upload)."""

    pixels: np.ndarray
    labels: np.ndarray
    about: str = ""
    steps: int | None = None
    condition: int | str | None = None


@dataclass
class Grid:
    pictures: list[Picture]
    seconds: float
    steps: list[int]


@dataclass
class Revision:
    """A revision: the ``source`` and ``result`` pictures, the pixel ``mask`` (model size), the token
    ``region`` ``[h, w]`` it was rounded to, and how many labels changed inside / stayed outside."""

    source: Picture
    result: Picture
    mask: np.ndarray
    region: np.ndarray
    seconds: float
    changed_inside: int = 0
    labels_inside: int = 0
    same_outside: int = 0
    labels_outside: int = 0

    @property
    def outside_identical(self) -> bool:
        return self.same_outside == self.labels_outside

    def npz(self, path: str | Path) -> Path:
        """Both pictures, both label maps and the region in one ``.npz`` (the page's token download)."""
        path = Path(path)
        np.savez_compressed(
            path,
            labels_in=self.source.labels,
            labels_out=self.result.labels,
            region=self.region,
            mask=self.mask,
            image_in=self.source.pixels,
            image_out=self.result.pixels,
        )
        return path


@dataclass
class LiveFrame:
    """One step of the live view: the step record, the decoded map after it (uint8 ``[H, W, 3]``), and the
    total step budget (for the plot's axis)."""

    record: StepRecord
    picture: np.ndarray
    total_steps: int
    done: bool = False
    final: Picture | None = None
    records: list[StepRecord] = field(default_factory=list)
