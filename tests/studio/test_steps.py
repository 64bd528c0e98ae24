"""The live view's token states: filled / kept / refined / erased / noise / given from two steps' kept sets
and maps, recorded by the sampler's on_step hook, coloured and plotted."""

import numpy as np
import torch

from grn.sampling.refine import refine
from grn.studio import steps as st


def test_classify_names_every_state():
    prev = torch.tensor([[[False, True, True, True, False, False]]])
    keep = torch.tensor([[[True, True, True, False, False, True]]])
    inputs = torch.tensor([[[0, 1, 2, 3, 4, 5]]])
    labels = torch.tensor([[[9, 1, 7, 3, 4, 5]]])
    region = torch.tensor([[[True, True, True, True, True, False]]])
    codes = st.classify(prev, keep, inputs, labels, region)
    assert [st.STATES[c] for c in codes.flatten().tolist()] == [
        "filled",
        "kept",
        "refined",
        "erased",
        "noise",
        "given",
    ]
    first = st.classify(None, keep, inputs, labels, region)  # step 0: nothing was kept before
    assert [st.STATES[c] for c in first.flatten().tolist()] == [
        "filled",
        "filled",
        "filled",
        "noise",
        "noise",
        "given",
    ]


def test_shares_and_state_map():
    codes = np.array([[[st.FILLED, st.KEPT], [st.GIVEN, st.ERASED]]], dtype=np.uint8)
    s = st.shares(codes)
    assert s["filled"] == s["kept"] == s["erased"] == 1 / 3 and s["noise"] == 0 and "given" not in s
    two = np.stack([np.full((2, 2), st.FILLED), np.full((2, 2), st.ERASED)]).astype(np.uint8)
    rgb = st.state_map(two)
    assert rgb.shape == (2, 2, 3)
    assert (
        rgb[0, 0].tolist()
        == ((st.COLOURS[st.FILLED] + st.COLOURS[st.ERASED]) / 2).round().astype(int).tolist()
    )
    assert st.state_map(np.zeros((3, 2, 4, 4), np.uint8)).shape == (4, 4, 3)  # a clip: its last frame
    assert "filled" in st.legend_html() and "erased" in st.legend_html()


def net(labels, t, y):
    logits = torch.nn.functional.one_hot(labels, 16).float().movedim(-1, 1) * 3
    return logits + torch.linspace(0, 1, 16).view(1, -1, 1, 1, 1)


def test_recorder_follows_one_sample_through_the_loop():
    frames = []
    rec = st.StepRecorder(row=1, listener=frames.append)
    g = torch.Generator().manual_seed(0)
    out = refine(net, torch.tensor([0, 1]), (2, 4, 4), 16, num_steps=5, generator=g, on_step=rec)
    assert len(rec.records) == 5 and frames == rec.records
    first, last = rec.records[0].codes, rec.records[-1].codes
    assert not np.isin(first, [st.KEPT, st.REFINED, st.ERASED]).any()  # nothing was kept before step 0
    assert not np.isin(last, [st.NOISE, st.ERASED]).any()  # the last step keeps every prediction
    assert torch.equal(rec.records[-1].labels[0], out.labels[1])
    assert rec.entropy.shape == (5,) and ((rec.entropy >= 0) & (rec.entropy <= 1)).all()
    assert [r.keep_prob for r in rec.records] == [0.0, 0.2, 0.4, 0.6, 0.8]
    picture = st.refinement_plot(rec.records, 5)
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    assert st.refinement_plot([], 5).shape == picture.shape  # an empty plot before the first step


def test_recorder_marks_the_given_tokens_of_a_revision():
    known = torch.zeros(1, 2, 4, 4, dtype=torch.long)
    region = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    region[..., :2, :2] = True
    rec = st.StepRecorder()
    refine(
        net,
        torch.tensor([0]),
        (2, 4, 4),
        16,
        num_steps=3,
        generator=torch.Generator().manual_seed(0),
        known=known,
        region=region,
        on_step=rec,
    )
    for r in rec.records:
        assert (r.codes[:, 2:, :] == st.GIVEN).all() and (r.codes[:, :2, :2] != st.GIVEN).all()
