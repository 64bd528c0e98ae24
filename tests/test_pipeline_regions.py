"""GRNPipeline region re-generation from labels (init_labels, what the studio revises a sample with) and the
per-step observer passed through the pipeline."""

import pytest
import torch

from grn.pipeline import GRNPipeline


@pytest.fixture(scope="module")
def pipe(tiny_c2i_checkpoints):
    return GRNPipeline.from_checkpoint(tiny_c2i_checkpoints[0])


def test_init_labels_revise_a_sample_with_its_own_tokens(pipe):
    sample = pipe([2], seed=0, num_steps=3)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :4, :8] = 1  # tokens (0, 0) and (0, 1)
    out = pipe([8], seed=5, num_steps=3, init_labels=sample.labels, mask=mask)
    region = pipe.latent_region(mask)
    outside = ~region.expand_as(out.labels)
    assert region.sum() == 2
    assert torch.equal(out.labels[outside], sample.labels[outside])
    assert not torch.equal(out.labels[~outside], sample.labels[~outside])
    with pytest.raises(ValueError, match="not both"):
        pipe([8], init=sample.images, init_labels=sample.labels, mask=mask)
    with pytest.raises(ValueError, match=r"init_labels must be \[B, 4, 8, 8\]"):
        pipe([8], init_labels=sample.labels[:, :2], mask=mask)


def test_on_step_reaches_the_loop_and_changes_nothing(pipe):
    seen = []
    plain = pipe([1, 4], seed=3, num_steps=4, cfg_scale=2.0)
    watched = pipe([1, 4], seed=3, num_steps=4, cfg_scale=2.0, on_step=lambda s: seen.append(s.index))
    assert seen == [0, 1, 2, 3] and torch.equal(plain.images, watched.images)
