"""Task prefixes, quality suffix, negative prompts and decoding defaults (official_update §A6, §F6)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from grn.prompts import (
    DECODING_DEFAULTS,
    NEGATIVE_PROMPTS,
    PREFIXES,
    TASKS,
    inference_prompt,
    strip_prefix,
    video_task,
    with_prefix,
)


def test_prefixes_are_glued_with_no_space_and_a_dropped_caption_has_none():
    assert with_prefix("a cat", "t2i") == "<T2I>a cat"
    assert with_prefix("a cat", "T2V") == "<T2V>a cat"
    assert with_prefix("一只猫", "i2v") == "<I2V>一只猫"
    assert with_prefix("", "t2v") == ""
    assert strip_prefix("<I2V>a cat") == "a cat" and strip_prefix("a cat") == "a cat"
    assert video_task(True) == "i2v" and video_task(False) == "t2v"
    with pytest.raises(ValueError, match="task must be one of"):
        with_prefix("x", "c2i")


def test_inference_prompts_match_the_official_tools():
    assert inference_prompt("a red apple", "t2i") == "<T2I>a red apple"
    assert inference_prompt("a dog runs", "t2v") == "<T2V>a dog runs high aesthetic and high quality video."
    assert inference_prompt("a dog runs", "i2v") == "<I2V>a dog runs high aesthetic and high quality video."
    assert inference_prompt("a dog runs", "t2v", quality_suffix=False) == "<T2V>a dog runs"
    assert inference_prompt("", "t2v") == ""


def test_negative_prompts_and_decoding_defaults_per_task():
    assert set(NEGATIVE_PROMPTS) == set(DECODING_DEFAULTS) == set(PREFIXES) == set(TASKS)
    assert NEGATIVE_PROMPTS["t2i"] == ""
    assert NEGATIVE_PROMPTS["t2v"] == NEGATIVE_PROMPTS["i2v"]
    assert NEGATIVE_PROMPTS["t2v"].startswith("ugly, blurry") and "bad composition" in NEGATIVE_PROMPTS["t2v"]
    assert not any(NEGATIVE_PROMPTS[t].startswith("<") for t in TASKS)  # negatives carry no prefix
    assert DECODING_DEFAULTS["t2i"]["cfg_scale"] == 3.0 and DECODING_DEFAULTS["t2i"]["temperature"] == 1.1
    assert DECODING_DEFAULTS["t2v"]["pn"] == "0.41M" and DECODING_DEFAULTS["t2v"]["h_div_w"] == 9 / 16
    assert DECODING_DEFAULTS["i2v"]["temperature"] == 1.0 and DECODING_DEFAULTS["t2v"]["num_steps"] == 50


def test_the_module_imports_without_torch():
    code = "import sys, grn.prompts; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
