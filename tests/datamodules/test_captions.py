"""Caption schema and selection of the official T2I/T2V data (official_update §C10, §A6): choice frequencies within
binomial bounds, sentence dropping, the quality prompt, prefixes, per-example resolution, and the candidates a text
token cache encodes."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from grn.datamodules.bad_samples import BadSample
from grn.datamodules.buckets import PnChoice, pn_megapixels
from grn.datamodules.captions import CaptionRules, drop_sentences, sentence_prefixes, with_quality
from grn.datamodules.text import caption_candidates, image_caption, video_caption
from grn.datamodules.wds import sample_rng

N = 30_000


def within(count: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    """``count`` successes of ``n`` draws is within ``sigmas`` standard deviations of Binomial(n, p)."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


NEW_VIDEO = {
    "video_path": "media/videos/000000.mp4",
    "caption": [{"type": "short", "content": "A cat."},
                {"type": "medium", "content": "A grey cat sits. It looks left. The room is bright."},
                {"type": "long", "content": "一只灰色的猫坐在窗边。它向左看。房间很明亮。"}],
    "quality_prompt": "The quality is very high!",
}


def test_new_schema_video_caption_is_drawn_uniformly_from_the_list():
    rng = random.Random(0)
    picks = Counter(video_caption(NEW_VIDEO, rng) for _ in range(N))
    quality = " The quality is very high!"
    assert set(picks) == {c["content"] + quality for c in NEW_VIDEO["caption"]}
    for count in picks.values():
        assert within(count, N, 1 / 3), picks
    # two entries (one empty) -> 1/2 each; one entry -> no draw at all
    two = {"caption": [{"type": "short", "content": "a"}, {"type": "medium", "content": ""},
                       {"type": "long", "content": "b"}]}
    picks = Counter(video_caption(two, rng) for _ in range(N))
    assert set(picks) == {"a", "b"} and within(picks["a"], N, 0.5)
    state = rng.getstate()
    assert video_caption({"caption": [{"type": "long", "content": "only"}]}, rng) == "only"
    assert rng.getstate() == state


def test_old_schema_keeps_its_rule_and_wins_over_a_caption_list():
    rng = random.Random(1)
    old = {"tarsier2_caption": "T", "MiniCPM_V_2_6_caption": "M", "caption": NEW_VIDEO["caption"]}
    picks = Counter(video_caption(old, rng) for _ in range(N))
    assert set(picks) == {"T", "M"} and within(picks["T"], N, 0.5)
    # the same seed gives the same captions as the rule before the new schema existed (one draw per line)
    a, b = random.Random(7), random.Random(7)
    for _ in range(100):
        assert video_caption(old, a) == ("M" if b.random() < 0.5 else "T")


@pytest.mark.parametrize("line", [{"caption": []}, {"caption": [{"type": "long", "content": "  "}]}, {},
                                  {"MiniCPM_V_2_6_caption": "M"}])
def test_a_video_line_without_any_caption_is_bad(line):
    with pytest.raises(BadSample) as err:
        video_caption(line, random.Random(0))
    assert err.value.reason == "missing_key"


@pytest.mark.parametrize("line", [{"caption": 3}, {"caption": [{"type": "long", "content": 5}]},
                                  {"caption": ["just a string"]}])
def test_a_caption_list_of_the_wrong_type_is_bad(line):
    with pytest.raises(BadSample) as err:
        video_caption(line, random.Random(0))
    assert err.value.reason == "wrong_type"


def test_sentence_dropping_keeps_the_first_k_sentences_with_k_uniform_in_2_to_n():
    caption = "One. Two. Three. Four. Five."
    assert sentence_prefixes(caption) == ["One. Two.", "One. Two. Three.", "One. Two. Three. Four.",
                                          "One. Two. Three. Four. Five."]
    rng = random.Random(2)
    picks = Counter(drop_sentences(caption, rng).count(".") for _ in range(N))
    assert sorted(picks) == [2, 3, 4, 5]
    for count in picks.values():
        assert within(count, N, 1 / 4), picks
    # fewer than two sentences, or Chinese full stops: unchanged, and no draw
    for text in ("Only one sentence.", "一只猫。它在看。"):
        state = rng.getstate()
        assert drop_sentences(text, rng) == text and rng.getstate() == state
    assert drop_sentences("No trailing stop. Second one", random.Random(0)) == "No trailing stop. Second one."


def test_video_sentence_dropping_happens_with_short_caption_prob():
    line = {"caption": [{"type": "long", "content": "A. B. C. D."}]}
    rng = random.Random(3)
    picks = Counter(video_caption(line, rng, short_caption_prob=0.4) for _ in range(N))
    full = "A. B. C. D."
    # dropping keeps k in {2, 3, 4} sentences; k = 4 gives the full caption back
    p_full = 0.6 + 0.4 / 3
    assert within(picks[full], N, p_full) and within(picks["A. B."], N, 0.4 / 3)
    assert set(picks) == set(caption_candidates("video", line, CaptionRules(0.4)))


def test_image_caption_rules_with_the_official_image_schema():
    rng = random.Random(4)
    line = {"long_caption": "A long caption. With two sentences. And three.", "text": "short",
            "long_caption_type": "caption-InternVL2.0"}
    picks = Counter(image_caption(line, rng, 0.2) for _ in range(N))
    assert set(picks) == {line["long_caption"], "short"} and within(picks["short"], N, 0.2)
    # the toy schema: text "" and an InternVL long caption -> sentence dropping with short_caption_prob
    toy = {**line, "text": ""}
    picks = Counter(image_caption(toy, rng, 0.3) for _ in range(N))
    assert within(picks["A long caption. With two sentences."], N, 0.3 / 2)
    assert set(picks) == set(caption_candidates("image", toy, CaptionRules(0.3)))
    # no InternVL: the long caption always
    other = {**toy, "long_caption_type": "blip2"}
    assert {image_caption(other, rng, 0.3) for _ in range(200)} == {other["long_caption"]}
    assert image_caption({"long_caption": "", "text": "short"}, rng) == "short"


def test_prefixes_are_glued_after_the_quality_prompt():
    rng = random.Random(5)
    line = {"caption": [{"type": "long", "content": "A dog runs."}], "quality_prompt": "There is text."}
    assert video_caption(line, rng, prompt_prefix=True) == "<T2V>A dog runs. There is text."
    assert video_caption({**line, "first_frame_condition": True}, rng, prompt_prefix=True) == \
        "<I2V>A dog runs. There is text."
    assert image_caption({"long_caption": "A cat."}, rng, prompt_prefix=True) == "<T2I>A cat."
    assert all(c.startswith("<T2V>") for c in caption_candidates("video", line, CaptionRules(0.5, True)))


def test_a_per_source_quality_prompt_replaces_the_lines_own():
    line = {"caption": [{"type": "long", "content": "A dog runs."}], "quality_prompt": "Low quality."}
    assert video_caption(with_quality(line, "High quality."), random.Random(0)) == "A dog runs. High quality."
    assert with_quality(line, "") is line and with_quality(line, None) is line
    assert line["quality_prompt"] == "Low quality."  # the line itself is not changed


def test_draws_are_a_pure_function_of_the_sample_position():
    line = NEW_VIDEO
    a = [video_caption(line, sample_rng(0, 1, 0, 0, i), 0.5) for i in range(50)]
    b = [video_caption(line, sample_rng(0, 1, 0, 0, i), 0.5) for i in range(50)]
    c = [video_caption(line, sample_rng(0, 2, 0, 0, i), 0.5) for i in range(50)]
    assert a == b and a != c


def test_per_example_resolution_is_drawn_from_pn_list_and_restricted_by_the_source_size():
    choice = PnChoice(["0.06M", "0.25M", "1M"], [1, 1, 2])
    assert choice.pn_probs == [0.25, 0.25, 0.5]
    rng = random.Random(6)
    picks = Counter(choice.draw(rng) for _ in range(N))  # size unknown: all three
    assert within(picks["1M"], N, 0.5) and within(picks["0.06M"], N, 0.25)
    # 500 x 500 = 0.25 MP -> pn < 0.25 / 0.7 = 0.357: 0.06M and 0.25M, renormalised to 1/2 each
    picks = Counter(choice.draw(rng, 500, 500) for _ in range(N))
    assert set(picks) == {"0.06M", "0.25M"} and within(picks["0.25M"], N, 0.5)
    # smaller than every preset allows: the smallest one
    assert {choice.draw(rng, 10, 10) for _ in range(20)} == {"0.06M"}
    assert pn_megapixels("0.41M") == 0.41 and pn_megapixels(64) == 1024 ** 2 / 1e6
    with pytest.raises(ValueError):
        PnChoice(["1M"], [0.5, 0.5])
