"""The official release files on the Hugging Face hub (official_update §F1) and how they are found locally.

``official_files(task, model)`` names the generator, tokenizer and umT5 files of a (task, model) pair — including
the 8B T2I file ``GRN_T2I_titan_FSA_256x256.pth``, which the official pipeline cannot select (its issue #36).
:func:`hub_file` / :func:`hub_folder` resolve them through ``huggingface_hub`` with its normal cache
(``HF_HOME`` / ``HF_HUB_CACHE``; ``HF_HUB_OFFLINE=1`` reads the cache only). A file that is neither cached nor
downloadable is one line naming it and where to put it.

grn's own hub format (:mod:`grn.checkpoints.pretrained`) is found the same way: :func:`pretrained_resolver` gives the
files of a saved folder or of a repo id, and :func:`push_folder` uploads one with ``huggingface_hub.HfApi``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

OFFICIAL_REPO = "bytedance-research/GRN"
MODELS = ("GRN2b", "GRN8b")
# (task, model) -> generator file; task is T2I or T2V (I2V is T2V with a first frame: the same file)
GENERATOR_FILES: dict[tuple[str, str], str] = {
    ("T2I", "GRN2b"): "GRN_T2I_2B_FSA_251600.pth",
    ("T2I", "GRN8b"): "GRN_T2I_titan_FSA_256x256.pth",
    ("T2V", "GRN2b"): "GRN_T2V_2B_FSA_sft147400_ema.pth",
    ("T2V", "GRN8b"): "GRN_T2V_TITAN_FSA_sft10600_ema.pth",
}
TOKENIZER_FILE = "HBQ_image_video_tokenizer_64dim_M4_20260626.ckpt"
TEXT_ENCODER_DIR = "umt5-xxl"  # holds models_t5_umt5-xxl-enc-bf16.pth and the tokenizer folder umt5-xxl/
TEXT_ENCODER_WEIGHTS = f"{TEXT_ENCODER_DIR}/models_t5_umt5-xxl-enc-bf16.pth"
TEXT_ENCODER_TOKENIZER = f"{TEXT_ENCODER_DIR}/umt5-xxl"


@dataclass(frozen=True)
class OfficialFiles:
    """Repository paths of one release: the generator, the tokenizer and the umT5 encoder (weights, tokenizer)."""

    generator: str
    tokenizer: str = TOKENIZER_FILE
    text_encoder_weights: str = TEXT_ENCODER_WEIGHTS
    text_encoder_tokenizer: str = TEXT_ENCODER_TOKENIZER


def official_task(task: str) -> str:
    """``T2I`` | ``T2V`` from any case of t2i / t2v / i2v (I2V uses the T2V file, official_update §A4)."""
    key = str(task).upper()
    if key == "I2V":
        return "T2V"
    if key not in ("T2I", "T2V"):
        raise ValueError(f"task must be T2I, T2V or I2V, got {task!r}")
    return key


def official_files(task: str, model: str = "GRN2b") -> OfficialFiles:
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    return OfficialFiles(GENERATOR_FILES[(official_task(task), model)])


def _missing(repo_id: str, filename: str, err: Exception) -> FileNotFoundError:
    from huggingface_hub.constants import HF_HUB_CACHE

    return FileNotFoundError(
        f"{filename} of {repo_id} is not in the Hugging Face cache and could not be downloaded "
        f"({type(err).__name__}): put it in {HF_HUB_CACHE} (huggingface-cli download {repo_id} {filename}) "
        "or pass local paths")


def hub_file(repo_id: str, filename: str, cache_dir: str | Path | None = None) -> Path:
    """The local path of ``filename`` in ``repo_id`` (downloaded into the hub cache unless offline)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as err:
        raise _missing(repo_id, filename, err) from None


def hub_folder(repo_id: str, folder: str, cache_dir: str | Path | None = None) -> Path:
    """The local path of ``folder`` (all its files) in ``repo_id``'s snapshot."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        root = Path(snapshot_download(repo_id, allow_patterns=[f"{folder}/**"], cache_dir=cache_dir))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as err:
        raise _missing(repo_id, f"{folder}/", err) from None
    if not (root / folder).is_dir():
        raise _missing(repo_id, f"{folder}/", FileNotFoundError(folder))
    return root / folder


# --- grn's own hub format (grn.checkpoints.pretrained): a local folder or a model repo of any owner -----------------

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_repo_id(source: str | Path) -> bool:
    """``owner/name`` that is not an existing local path and does not name a checkpoint file."""
    text = str(source)
    return (bool(_REPO_ID.match(text)) and not Path(text).exists()
            and not text.endswith((".ckpt", ".pth", ".pt", ".safetensors", ".json")))


def pretrained_resolver(source: str | Path, cache_dir: str | Path | None = None) -> Callable[[str], Path]:
    """``resolve(name) -> local path`` of the files of a saved pipeline: in the folder ``source``, or (a repo id)
    through the hub cache, downloading unless offline. A missing file is one line naming it and where it goes."""
    if is_repo_id(source):
        def from_hub(name: str) -> Path:
            try:
                return hub_file(str(source), name, cache_dir)
            except FileNotFoundError as err:
                raise FileNotFoundError(f"{err} ({source} is no local path either)") from None

        return from_hub
    folder = Path(source)

    def resolve(name: str) -> Path:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {folder} is not a complete saved grn pipeline (put {name} "
                                    "there: pipe.save_pretrained(folder) writes it)")
        return path

    return resolve


def push_folder(folder: str | Path, repo_id: str, token: str | None = None, private: bool | None = None,
                commit_message: str = "Upload grn pipeline") -> str:
    """Upload ``folder`` to the model repo ``repo_id`` (created if missing) with ``huggingface_hub.HfApi``;
    ``token``: None uses the login of ``huggingface-cli login`` / ``HF_TOKEN``. Returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                             commit_message=commit_message)
    return str(getattr(info, "commit_url", info))
