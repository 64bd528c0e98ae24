"""The RNG states a checkpoint carries restore every generator's stream, also through a weights_only load."""

import io
import random

import numpy as np
import torch

from grn.distributed.resume import rng_state, set_rng_state


def draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_rng_state_round_trip_through_a_weights_only_checkpoint():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    draws()
    buf = io.BytesIO()
    torch.save({"rng": rng_state()}, buf)
    expected = draws()
    draws()  # move every stream on
    buf.seek(0)
    set_rng_state(torch.load(buf, weights_only=True)["rng"])
    assert draws() == expected
