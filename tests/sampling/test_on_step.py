"""refine's on_step observer: it sees every step of every sample with the loop's own maps, and observing changes
nothing (same labels, same draws) — the studio's live view is free."""

import torch

from grn.sampling.refine import refine


def toy_net(num_levels: int):
    """Logits that depend on the input map, the class and t (enough to make the draws differ per step)."""
    weight = torch.randn(num_levels, generator=torch.Generator().manual_seed(1))

    def net(labels, t, y):
        base = torch.nn.functional.one_hot(labels, num_levels).float().movedim(-1, 1)
        return 2 * base + weight.view(1, -1, 1, 1, 1) * (1 + y.view(-1, 1, 1, 1, 1)) + t.view(-1, 1, 1, 1, 1)

    return net


def run(on_step=None, **kw):
    g = torch.Generator().manual_seed(0)
    return refine(toy_net(16), torch.tensor([0, 3, 5]), (2, 4, 4), 16, num_steps=6, generator=g, on_step=on_step,
                  null_class=10, **kw)


def test_observing_changes_nothing_and_sees_every_step():
    seen = []
    plain = run()
    watched = run(on_step=lambda s: seen.append((s.index, s.rows.clone(), s.labels.clone(), s.keep.clone(),
                                                 s.inputs.clone(), s.entropy.clone())))
    assert torch.equal(plain.labels, watched.labels) and torch.equal(plain.steps, watched.steps)
    assert [i for i, *_ in seen] == list(range(6))
    for (i, rows, labels, keep, inputs, entropy) in seen:
        assert rows.tolist() == [0, 1, 2] and labels.shape == (3, 2, 4, 4) and entropy.shape == (3,)
        assert keep.dtype == torch.bool
    assert torch.equal(seen[-1][2], plain.labels)  # the last map is the sample
    assert seen[-1][3].all()  # the last step keeps every prediction
    assert not seen[0][3].all() and torch.equal(seen[1][4], seen[0][2])  # step i+1 sees the map step i wrote


def test_observer_with_guidance_complexity_and_a_region():
    known = torch.randint(0, 16, (3, 2, 4, 4), generator=torch.Generator().manual_seed(2))
    region = torch.zeros(3, 1, 4, 4, dtype=torch.bool)
    region[:, :, 1:3, 1:3] = True
    seen = []
    kw = dict(cfg_scale=2.0, schedule="complexity_aware", complexity_warmup_steps=2, complexity_min_steps=3,
              complexity_max_steps=8, k=10.0, b=0.0, known=known, region=region)
    plain = run(**kw)
    watched = run(on_step=lambda s: seen.append((s.rows.clone(), s.region.clone(), s.labels.clone(),
                                                 s.cfg_scale.clone())), **kw)
    assert torch.equal(plain.labels, watched.labels)
    assert len(seen) == int(plain.steps.max())
    for rows, reg, labels, scale in seen:
        outside = ~reg
        assert torch.equal(labels[outside], known[rows][outside])  # given labels never move
        assert scale.shape == rows.shape
    # samples that finish early leave the rows the observer sees
    finished_at = {int(r): i for i, (rows, *_) in enumerate(seen) for r in rows}
    assert {r: finished_at[r] + 1 for r in range(3)} == {r: int(s) for r, s in enumerate(plain.steps)}
