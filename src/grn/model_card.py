"""The model card (``README.md``) of a saved pipeline, in the Hugging Face model-card format: YAML front matter
(library, tags, pipeline tag, datasets), then what the model is, how to load it, the sampler settings it was saved
with, its metrics, the sample grid beside it and its training config.

:func:`run_records` finds what a training run left beside a checkpoint (``metrics.json`` or ``t2iv_metrics.json``
and Hydra's ``.hydra/config.yaml`` / ``hydra.yaml`` of ``runs/<run_id>/``), so that the card of a pipeline loaded
from ``runs/<run_id>/<stage>/checkpoints/last.ckpt`` names its data and metrics without being told. Pure file
reads and text; no torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = ["METRICS_FILES", "model_card", "run_records"]

METRICS_FILES = ("metrics.json", "t2iv_metrics.json")
PIPELINE_TAGS = {"t2i": "text-to-image", "t2v": "text-to-video", "i2v": "image-to-video",
                 "c2i": "unconditional-image-generation"}  # the hub has no class-conditional tag
TASK_WORDS = {"c2i": "class-to-image", "t2i": "text-to-image", "t2v": "text-to-video", "i2v": "image-to-video"}


def _run_dir(ckpt: Path) -> Path | None:
    """The run directory of ``runs/<run_id>/<stage>/checkpoints/<file>`` (the nearest ancestor with ``.hydra/``
    or a metrics file, at most three levels up)."""
    for folder in list(ckpt.parents)[:3]:
        if (folder / ".hydra").is_dir() or any((folder / m).is_file() for m in METRICS_FILES):
            return folder
    return None


def _load(path: Path, reader) -> Any:
    try:
        return reader(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):  # a record that cannot be read is left out of the card
        return None


def run_records(ckpt: str | Path | None) -> dict[str, Any]:
    """``{"run_dir", "metrics", "metrics_file", "run_config", "choices"}`` (those found) of the training run that wrote ``ckpt``:
    its metrics file, its composed config and the config-group choices (``data``, ``experiment``, ...)."""
    if not ckpt:
        return {}
    run = _run_dir(Path(ckpt))
    if run is None:
        return {}
    out: dict[str, Any] = {"run_dir": str(run)}
    for name in METRICS_FILES:
        if (run / name).is_file() and isinstance(metrics := _load(run / name, json.loads), dict):
            out["metrics"], out["metrics_file"] = metrics, str(run / name)
            break
    cfg = _load(run / ".hydra" / "config.yaml", yaml.safe_load)
    if isinstance(cfg, dict):
        out["run_config"] = cfg
    hydra = _load(run / ".hydra" / "hydra.yaml", yaml.safe_load)
    choices = ((hydra or {}).get("hydra") or {}).get("runtime", {}).get("choices") if isinstance(hydra, dict) else None
    if isinstance(choices, dict):
        out["choices"] = {k: v for k, v in choices.items() if not str(k).startswith("hydra")}
    return out


def _metric_rows(metrics: Mapping[str, Any]) -> list[str]:
    rows = [f"| `{k}` | {v:.4g} |" if isinstance(v, float) else f"| `{k}` | {v} |"
            for k, v in sorted(metrics.items()) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return ["| metric | value |", "|---|---|", *rows] if rows else []


def _block(obj: Any) -> list[str]:
    return ["```yaml", yaml.safe_dump(json.loads(json.dumps(obj, default=str)), sort_keys=False).rstrip(), "```"]


def model_card(task: str, net_config: Mapping[str, Any], sampler: Mapping[str, Any], source: Mapping[str, Any],
               records: Mapping[str, Any], grid: str | None = None, repo_id: str | None = None,
               grid_caption: str = "") -> str:
    """The README.md text. ``records``: :func:`run_records` of the source checkpoint and/or the caller's
    ``metrics`` / ``data`` / ``training``; ``grid``: the sample grid's file name beside the card."""
    choices = dict(records.get("choices") or {})
    data = records.get("data") or choices.get("data")
    front: dict[str, Any] = {"library_name": "grn", "license": records.get("license", "apache-2.0"),
                             "tags": ["grn", "generative-refinement-networks", TASK_WORDS[task]],
                             "pipeline_tag": PIPELINE_TAGS[task]}
    if data:
        front["datasets"] = [str(data)]
    size = net_config.get("size", net_config.get("_target_", "?"))
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
             f"# GRN {TASK_WORDS[task]} model ({size})", "",
             f"A Generative Refinement Network ({TASK_WORDS[task]}) trained with grn: the "
             "network (`model.safetensors`, `config.json`), its HBQ tokenizer (`tokenizer/`)"
             + (" and how to get its caption encoder (`text_encoder/`)" if task != "c2i" else "") + ".", "",
             "```python", "from grn.pipeline import GRNPipeline", "",
             f'pipe = GRNPipeline.from_pretrained("{repo_id or "<folder or owner/name>"}")',
             "out = pipe([0, 1, 2], seed=0)   # images [3, 3, H, W] in [-1, 1]" if task == "c2i" else
             'out = pipe(["a prompt"], seed=0, height=256, width=256)', "```", "",
             "Loading reads only safetensors and JSON (nothing is unpickled). A repo id goes through the normal "
             "Hugging Face cache; with `HF_HUB_OFFLINE=1` only the cache is read."]
    if grid:
        lines += ["", "## Samples", "", f"![samples]({grid})", "", grid_caption or "Seed 0, the sampler below."]
    metrics = records.get("metrics") or {}
    rows = _metric_rows(metrics)
    lines += ["", "## Metrics", ""]
    if rows:
        origin = records.get("metrics_file")
        lines += [f"As measured (from `{origin}`):" if origin else "As measured:", "", *rows]
        if isinstance(metrics.get("settings"), dict):
            lines += ["", "Evaluation settings:", "", *_block(metrics["settings"])]
    else:
        lines += ["No metrics were recorded with this model."]
    lines += ["", "## Sampler defaults", "", "The settings `pipe(...)` uses unless told otherwise:", "",
              *_block(dict(sampler))]
    lines += ["", "## Training", ""]
    facts = {k: v for k, v in (("data", data), ("experiment", choices.get("experiment")),
                               ("task", choices.get("task")), ("global_step", source.get("global_step")),
                               ("checkpoint", source.get("ckpt")), ("tokenizer_checkpoint",
                                                                     source.get("tokenizer_ckpt"))) if v}
    lines += [f"- {k}: `{v}`" for k, v in facts.items()] or ["- not recorded"]
    lines += ["", "Network config (`config.json` `net`):", "", *_block(dict(net_config))]
    training = records.get("training") or source.get("hparams")
    if training:
        lines += ["", "Training module hyper-parameters:", "", *_block(training)]
    run_config = records.get("run_config")
    if run_config:
        lines += ["", "<details><summary>The run's composed Hydra config</summary>", "", *_block(run_config), "",
                  "</details>"]
    return "\n".join(lines) + "\n"
