"""The newer joint tokenizer releases (HBQ_image_video_tokenizer_64dim_M4_20260618 / _20260626,
official_update D9-D10): the same 196 keys as the first release, read with weights_only=True, and a report of
whether the middle attention is inert (``encoder.middle.1.proj.weight`` all zero)."""

import argparse
import logging

import pytest
import torch

from grn.checkpoints import load_tokenizer
from grn.checkpoints.build import UnsafeCheckpointError
from grn.checkpoints.official_tokenizer import (
    RELEASE_FILES,
    inert_middle_attention,
    load_official_tokenizer,
    official_layout,
)
from grn.models.tokenizer import HBQTokenizer

NEW_FILES = ["HBQ_image_video_tokenizer_64dim_M4_20260618.ckpt", "HBQ_image_video_tokenizer_64dim_M4_20260626.ckpt"]
# the official layout (patch 2, four stages, 2 residual blocks, temporal flags [0, 1, 1], d = 64: the 196 keys)
# at small widths, so the file is a few MB
SMALL = {**official_layout(64), "enc_channels": 8, "dec_channels": 8}


def small_official(seed: int, trained_attention: bool) -> HBQTokenizer:
    torch.manual_seed(seed)
    tok = HBQTokenizer(**SMALL).eval()
    if trained_attention:  # a freshly built block has proj.weight = 0, as the released training code leaves it
        for block in (tok.encoder.middle[1], tok.decoder.middle[1]):
            torch.nn.init.normal_(block.proj.weight, std=0.2)
    return tok


def full_size_keys() -> set[str]:
    with torch.device("meta"):
        return set(HBQTokenizer(**official_layout(64)).state_dict())


def test_release_names_are_registered():
    assert all(RELEASE_FILES[name] == 64 for name in NEW_FILES)
    assert RELEASE_FILES["HBQ_image_tokenizer_16dim_M4.ckpt"] == 16


@pytest.mark.parametrize(("name", "trained"), [(NEW_FILES[0], True), (NEW_FILES[1], False)])
def test_new_release_files_load_and_report_the_middle_attention(tmp_path, caplog, name, trained):
    tok = small_official(0, trained)
    state = {k: v.clone() for k, v in tok.state_dict().items()}
    assert len(state) == 196 and set(state) == full_size_keys()  # the released layout, names for names
    assert inert_middle_attention(state) == {"encoder.middle.1": not trained, "decoder.middle.1": not trained}
    path = tmp_path / name
    # the training script's checkpoint layout (D6): step, vae, the discriminator, ema; plain tensors and ints only
    other = small_official(1, trained).state_dict()
    torch.save({"step": 1234, "vae": other, "image_disc": {"main.0.weight": torch.zeros(2)}, "ema": state}, path)
    with caplog.at_level(logging.INFO, logger="grn.checkpoints.official_tokenizer"):
        loaded, cfg = load_official_tokenizer(path, return_config=True)  # d = 64 from the release name
    assert cfg["latent_dim"] == 64 and cfg["temporal_downsample"] == [False, True, True]
    assert loaded.middle_attention_inert is (not trained)
    assert loaded.inert_attention == {"encoder.middle.1": not trained, "decoder.middle.1": not trained}
    records = [r for r in caplog.records if name in r.getMessage()]
    assert len(records) == 1
    if trained:
        assert records[0].levelno == logging.INFO and "trained" in records[0].getMessage()
    else:
        assert records[0].levelno == logging.WARNING
        assert "middle attention inert" in records[0].getMessage()
        assert records[0].getMessage().count("encoder.middle.1, decoder.middle.1") == 1
    for key, value in loaded.state_dict().items():  # the ema entry, exactly
        assert torch.equal(value, state[key]), key
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_features(x), tok.encode_features(x))
        # the generic loader (pipelines, generator stages) reads the release directly and reports the same
        generic = load_tokenizer(path)
        assert generic.middle_attention_inert is (not trained)
        torch.testing.assert_close(generic.encode_features(x), tok.encode_features(x))


def test_release_files_are_read_with_weights_only(tmp_path):
    path = tmp_path / NEW_FILES[1]
    torch.save({"vae": small_official(0, False).state_dict(), "args": argparse.Namespace(lr=1e-5)}, path)
    with pytest.raises(UnsafeCheckpointError, match="weights_only=True"):
        load_official_tokenizer(path)


def test_a_release_name_with_the_wrong_width_is_a_clear_error(tmp_path):
    path = tmp_path / NEW_FILES[0]
    torch.save({"vae": HBQTokenizer(**{**SMALL, "latent_dim": 16}).state_dict()}, path)
    with pytest.raises(ValueError, match="latent_dim 16, expected 64"):
        load_official_tokenizer(path)
