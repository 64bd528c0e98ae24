"""Task prompt prefixes, the inference quality suffix, negative prompts and decoding defaults of the official
T2I / T2V / I2V releases (reference/official_update.md §A6, §F6), as data. Pure Python: no torch.

The prefixes are literal text glued in front of the caption with no space and no special token: ``"<T2I>"`` for
images, ``"<T2V>"`` for videos and ``"<I2V>"`` for videos whose first frame is given. In training data the prefix
goes on *after* the quality prompt has been appended (``"<T2V>" + caption + " " + quality_prompt``). A caption
dropped for classifier-free guidance is ``""`` as a whole — no prefix — so the unconditional branch never carries
one, and neither do the negative prompts.

At inference the official tools write ``"<T2I>" + prompt`` and ``f"<T2V>{prompt} high aesthetic and high quality
video."`` (the same with ``<I2V>``); :func:`inference_prompt` builds exactly these strings. The FSA checkpoints
(``…_FSA_…``) were trained with the prefixes; the older ``GRN_T2I_2B`` / ``GRN_T2V_2B`` files without them, which is
why the data option (``prompt_prefix``) is off by default.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DECODING_DEFAULTS",
    "NEGATIVE_PROMPTS",
    "PREFIXES",
    "QUALITY_SUFFIX",
    "TASKS",
    "ensure_prefix",
    "as_first_frame_caption",
    "inference_prompt",
    "sample_task",
    "strip_prefix",
    "video_task",
    "with_prefix",
]

TASKS = ("t2i", "t2v", "i2v")
PREFIXES = {"t2i": "<T2I>", "t2v": "<T2V>", "i2v": "<I2V>"}
# appended (after a space) to T2V / I2V prompts by the official tools, never in training data
QUALITY_SUFFIX = " high aesthetic and high quality video."

# the negative prompt of tools/t2v_infer.py (@62c94fb1), which i2v_infer.py shares; T2I uses ""
_VIDEO_NEGATIVE = (
    "ugly, blurry, low-resolution, low-detail, low-quality, noisy, grainy, "
    "overexposed, underexposed, oversaturated, undersaturated, soft focus, "
    "artifacts, compression artifacts, jpeg artifacts, flickering, "
    "painting, oil painting, illustration, drawing, sketch, cartoon, anime, manga, "
    "3d, cgi, render, digital art, "
    "plastic, waxy, glossy, fake, unnatural, "
    "plastic skin, waxy skin, over-smoothed skin, doll-like, "
    "deformed, mutated, disfigured, bad anatomy, bad hands, extra fingers, missing fingers, extra limbs, "
    "still image, static, motionless, frozen, "
    "unnatural motion, reversed motion, stuttering, choppy, "
    "text, watermark, logo, signature, username, "
    "crowded background, bad composition"
)
NEGATIVE_PROMPTS = {"t2i": "", "t2v": _VIDEO_NEGATIVE, "i2v": _VIDEO_NEGATIVE}

# default decoding per task in the official tools (§F6): t2i_infer.py (2B), t2v_infer.py / i2v_infer.py (8B).
# pn: size preset; h_div_w: aspect ratio; cfg_scale: guidance; temperature: tau; num_steps: Tmax; keep_prob_shift: the
# schedule shift (the official snr_shift); duration_s: seconds of video (the tools cap it at 5 s, 81 frames at 16 fps).
DECODING_DEFAULTS: dict[str, dict[str, Any]] = {
    "t2i": {"pn": "1M", "h_div_w": 1.0, "cfg_scale": 3.0, "temperature": 1.1, "num_steps": 50, "keep_prob_shift": 1.0},
    "t2v": {"pn": "0.41M", "h_div_w": 9 / 16, "cfg_scale": 3.0, "temperature": 1.0, "num_steps": 50,
            "keep_prob_shift": 1.0, "duration_s": 2.0, "fps": 16},
    "i2v": {"pn": "0.41M", "h_div_w": 9 / 16, "cfg_scale": 3.0, "temperature": 1.0, "num_steps": 50,
            "keep_prob_shift": 1.0, "duration_s": 2.0, "fps": 16},
}


def _check_task(task: str) -> str:
    key = str(task).lower()
    if key not in PREFIXES:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return key


def video_task(first_frame_condition: bool) -> str:
    """``"i2v"`` for a video whose first frame is given, else ``"t2v"``."""
    return "i2v" if first_frame_condition else "t2v"


def with_prefix(caption: str, task: str) -> str:
    """``PREFIXES[task] + caption`` (no space); the empty caption stays ``""`` (a dropped caption has no prefix).

    >>> with_prefix("a cat", "t2i"), with_prefix("", "t2v")
    ('<T2I>a cat', '')
    """
    prefix = PREFIXES[_check_task(task)]
    return prefix + caption if caption else ""


def strip_prefix(caption: str) -> str:
    """``caption`` without a leading task prefix (for display and for comparing captions across settings)."""
    for prefix in PREFIXES.values():
        if caption.startswith(prefix):
            return caption[len(prefix):]
    return caption


def as_first_frame_caption(caption: str) -> str:
    """A video training caption for a clip that gets the first-frame condition: ``"<T2V>…"`` becomes ``"<I2V>…"``
    (the official data sets the prefix from the same draw, §A6); a caption without the prefix (``prompt_prefix``
    off, or a dropped ``""``) stays as it is.

    >>> as_first_frame_caption("<T2V>a dog runs"), as_first_frame_caption("a dog runs")
    ('<I2V>a dog runs', 'a dog runs')
    """
    t2v = PREFIXES["t2v"]
    return PREFIXES["i2v"] + caption[len(t2v):] if caption.startswith(t2v) else caption


def inference_prompt(prompt: str, task: str, quality_suffix: bool = True) -> str:
    """The prompt string the official tools feed the model: ``"<T2I>" + prompt``, and for videos
    ``"<T2V>" + prompt + " high aesthetic and high quality video."`` (``<I2V>`` with a first frame;
    ``quality_suffix=False`` leaves the suffix out). An empty prompt stays ``""``.

    >>> inference_prompt("a dog runs", "t2v")
    '<T2V>a dog runs high aesthetic and high quality video.'
    """
    task = _check_task(task)
    if not prompt:
        return ""
    text = prompt + QUALITY_SUFFIX if task != "t2i" and quality_suffix else prompt
    return with_prefix(text, task)


def ensure_prefix(caption: str, task: str) -> str:
    """:func:`with_prefix` unless ``caption`` already starts with a task prefix (idempotent)."""
    return caption if caption.startswith(tuple(PREFIXES.values())) else with_prefix(caption, task)


def sample_task(image: bool, first_frame: bool = False, i2v_ratio: float | None = None) -> str:
    """The prefix task of a prompt for a model trained with prefixes: ``t2i`` for an image, else ``t2v`` — or
    ``i2v`` for image-to-video where the model was trained on first-frame captions (``i2v_ratio > 0``); a model
    trained without them (the released script: ``i2v_ratio=0``) never saw ``<I2V>``."""
    if image:
        return "t2i"
    return "i2v" if first_frame and float(i2v_ratio or 0) > 0 else "t2v"
