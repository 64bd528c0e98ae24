"""The refinement maps of the live view (paper Fig. 1): what each step did to each token.

After step i the next map keeps a share t_{i+1} of the new predictions and puts the initial noise back
elsewhere (:mod:`grn.sampling.refine`). Compared with the step before, every label is one of

* ``filled``: noise before, a kept prediction now;
* ``kept``: a kept prediction before and now, with the same value;
* ``refined``: a kept prediction before and now, with another value (GRN revises what it wrote);
* ``erased``: a kept prediction before, back to the noise now;
* ``noise``: noise before and now;
* ``given``: outside the region of a revision (never generated).

A token holds ``C`` labels (the latent channels; ``M·d`` bits for GRN_bit), each kept or not on its own, so a
cell of the drawn map mixes the colours of its labels. :class:`StepRecorder` is the sampler's ``on_step``
observer; it copies what one sample did and nothing more (no network pass).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from grn.sampling.refine import RefineStep

STATES = ("noise", "filled", "kept", "refined", "erased", "given")
NOISE, FILLED, KEPT, REFINED, ERASED, GIVEN = range(len(STATES))
COLOURS = np.array(
    [
        [70, 70, 70],  # noise: dark grey
        [46, 204, 64],  # filled: green
        [0, 116, 217],  # kept: blue
        [127, 219, 255],  # refined: light blue
        [255, 65, 54],  # erased: red
        [255, 255, 255],  # given: white
    ],
    dtype=np.float32,
)


def classify(
    prev_keep: torch.Tensor | None,
    keep: torch.Tensor,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    region: torch.Tensor,
) -> torch.Tensor:
    """The state of every label after one step -> uint8 codes (indices into :data:`STATES`), the map's shape.

    Args:
        prev_keep: bool, the labels the step before kept (None at step 0: everything was noise).
        keep: bool, the labels this step keeps; inputs / labels: the map before and after the step; region:
            bool, where labels are generated.
    """
    keep = keep.bool() & region.bool()
    before = torch.zeros_like(keep) if prev_keep is None else prev_keep.bool() & region.bool()
    codes = torch.full(keep.shape, NOISE, dtype=torch.uint8, device=keep.device)
    codes[keep & ~before] = FILLED
    both = keep & before
    codes[both & (labels == inputs)] = KEPT
    codes[both & (labels != inputs)] = REFINED
    codes[~keep & before] = ERASED
    codes[~region.bool().expand_as(keep)] = GIVEN
    return codes


def shares(codes: np.ndarray) -> dict[str, float]:
    """The share of each state among the generated labels (``given`` ones left out) of one map."""
    codes = np.asarray(codes)
    generated = codes != GIVEN
    n = max(1, int(generated.sum()))
    return {name: float(((codes == k) & generated).sum()) / n for k, name in enumerate(STATES) if k != GIVEN}


def state_map(codes: np.ndarray) -> np.ndarray:
    """One sample's codes ``[C, h, w]`` (or ``[C, T, h, w]``: the last frame is drawn) -> uint8 RGB ``[h, w,
    3]``, each cell the mean colour of its C labels."""
    codes = np.asarray(codes)
    if codes.ndim == 4:
        codes = codes[:, -1]
    if codes.ndim != 3:
        raise ValueError(f"codes must be [C, h, w] or [C, T, h, w], got {list(codes.shape)}")
    return COLOURS[codes].mean(axis=0).round().astype(np.uint8)


def legend_html() -> str:
    """The colour key of :func:`state_map`, as a line of HTML."""
    items = []
    for name, rgb in zip(STATES, COLOURS.astype(int)):
        swatch = (
            f"<span style='display:inline-block;width:0.9em;height:0.9em;border:1px solid #888;"
            f"background:rgb({rgb[0]},{rgb[1]},{rgb[2]});margin:0 0.3em 0 0.8em;vertical-align:middle'>"
            "</span>"
        )
        items.append(f"{swatch}{name}")
    return "<div class='grn-legend'>" + "".join(items) + "</div>"


@dataclass
class StepRecord:
    """What one step did to the watched sample: its codes ``[C, ...]``, the map after it (network layout), the
    Eq. 8 entropy of its prediction and its nominal keep-probabilities."""

    index: int
    codes: np.ndarray
    labels: torch.Tensor
    entropy: float
    keep_prob: float
    next_keep_prob: float


@dataclass
class StepRecorder:
    """The sampler's ``on_step`` observer for one sample (batch row ``row``): after each step it stores a
    :class:`StepRecord` and calls ``listener`` with it (the live view streams them to the page). A finished
    sample is no longer among the rows, so the recorder stops by itself."""

    row: int = 0
    listener: object = None
    records: list[StepRecord] = field(default_factory=list)
    _prev_keep: torch.Tensor | None = None

    def __call__(self, step: RefineStep) -> None:
        where = (step.rows == self.row).nonzero()
        if where.numel() == 0:
            return
        j = int(where[0, 0])
        keep = step.keep[j]
        codes = classify(self._prev_keep, keep, step.inputs[j], step.labels[j], step.region[j])
        self._prev_keep = keep.clone()
        record = StepRecord(
            index=step.index,
            codes=codes.cpu().numpy(),
            labels=step.labels[j : j + 1].clone(),
            entropy=float(step.entropy[j]),
            keep_prob=float(step.keep_prob[j]),
            next_keep_prob=float(step.next_keep_prob[j]),
        )
        self.records.append(record)
        if callable(self.listener):
            self.listener(record)

    @property
    def entropy(self) -> np.ndarray:
        return np.array([r.entropy for r in self.records], dtype=np.float64)


def refinement_plot(records: list[StepRecord], total_steps: int | None = None) -> np.ndarray:
    """Two panels -> uint8 RGB picture: the Eq. 8 entropy of the prediction per step (with the
    keep-probability t_i it was made at), and the share of filled / kept / refined / erased / noise labels
    after each step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig, (a, b) = plt.subplots(1, 2, figsize=(8.0, 2.8), dpi=90)
    steps = np.arange(1, len(records) + 1)
    xmax = max(total_steps or 0, len(records), 1)
    if len(records):
        a.plot(steps, [r.entropy for r in records], "o-", color="tab:orange", ms=3, label="entropy (Eq. 8)")
        a.plot(steps, [r.keep_prob for r in records], "--", color="tab:gray", lw=1, label="t of the input")
        table = np.array([[shares(r.codes)[s] for s in STATES[:-1]] for r in records])
        bottom = np.zeros(len(records))
        for k, name in enumerate(STATES[:-1]):
            b.bar(steps, table[:, k], bottom=bottom, color=COLOURS[k] / 255, width=0.9, label=name)
            bottom += table[:, k]
        a.legend(loc="upper right", fontsize=7, frameon=False)
        b.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    a.set(xlabel="step", ylabel="mean normalised entropy", xlim=(0.5, xmax + 0.5), ylim=(0, 1.02))
    b.set(xlabel="step", ylabel="share of labels", xlim=(0.5, xmax + 0.5), ylim=(0, 1))
    fig.tight_layout()
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    picture = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return picture
