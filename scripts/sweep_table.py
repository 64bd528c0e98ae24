"""Collect the metric JSONs of a sweep into one table (markdown + CSV) and plot a metric against each swept setting.

    python eval.py -m ckpt=... sampler.cfg_scale=1.5,2.0,2.5 sampler.temperature=1.0,1.2
    python scripts/sweep_table.py runs/quickstart/c2i/eval --metric digits_fid --out docs/sweep

Inputs are JSON files or folders (searched recursively for ``metrics*.json`` / ``recon-*.json``), as written by
``eval.py`` (and by ``train.py``'s report, whose ``settings.overrides`` hold e.g. ``model/generator=small`` of a
training sweep). The columns are the settings that differ between the files (``sampler.cfg_scale``, ``overrides``
keys, ...) followed by the numeric metrics; rows are sorted by ``--metric``. Writes ``<out>.md``, ``<out>.csv`` and
``<out>.png`` (one panel per swept setting, the metric against it, one line per combination of the others).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

PATTERNS = ("metrics*.json", "recon-*.json")
SKIP = {
    "eval_seconds",
    "world_size",
    "num_images",
}  # bookkeeping, not results (num_images shows if it varies)


def find_jsons(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for pat in PATTERNS for f in p.rglob(pat))
        elif p.is_file():
            files.append(p)
        else:
            raise SystemExit(f"sweep_table: {item} is neither a JSON file nor a folder")
    return sorted(set(files))


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts → ``{"a.b.c": value}``; lists become strings (so they compare and print)."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(obj) if isinstance(obj, list) else obj}


def row_of(path: Path) -> tuple[dict[str, Any], dict[str, float]]:
    """One JSON → (its settings, flattened; its numeric scalar metrics)."""
    data = json.loads(path.read_text())
    settings = flatten(data.get("settings", {}))
    for override in data.get("settings", {}).get("overrides", []) or []:
        key, _, value = str(override).lstrip("+~").partition("=")
        settings[key] = value
    settings.pop("overrides", None)
    metrics = {
        k: float(v)
        for k, v in data.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in SKIP
    }
    if "num_images" in data:
        settings["num_images"] = data["num_images"]
    return settings, metrics


def number(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def build_table(files: list[Path], metric: str | None) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """→ (swept setting columns, metric columns, rows); a file without ``metric`` is reported and skipped."""
    rows, skipped = [], 0
    for f in files:
        settings, metrics = row_of(f)
        if metric and metric not in metrics:
            skipped += 1
            continue
        rows.append(
            {"file": str(f), **settings, **metrics, "_settings": set(settings), "_metrics": set(metrics)}
        )
    if skipped:
        print(f"sweep_table: skipped {skipped} file(s) without {metric!r}", file=sys.stderr)
    if not rows:
        raise SystemExit(f"sweep_table: no results to tabulate (looked in {len(files)} file(s))")
    setting_keys = sorted(set().union(*(r["_settings"] for r in rows)))
    swept = [k for k in setting_keys if len({json.dumps(r.get(k), default=str) for r in rows}) > 1]
    paths_only = [k for k in swept if k.endswith("ckpt") or k.endswith("_ckpt")]
    if len(swept) > len(paths_only):
        swept = [k for k in swept if k not in paths_only]  # checkpoints differ only because the runs differ
    metric_keys = sorted(set().union(*(r["_metrics"] for r in rows)))
    if (
        len(rows) > 1
    ):  # a metric equal in every row says nothing about the sweep: listed under the table instead
        metric_keys = [m for m in metric_keys if m == metric or len({r.get(m) for r in rows}) > 1]
    if metric:
        metric_keys = [metric] + [m for m in metric_keys if m != metric]
        rows.sort(key=lambda r: (math.isnan(r[metric]), r[metric]))
    return swept, metric_keys, rows


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def to_markdown(swept: list[str], metrics: list[str], rows: list[dict]) -> str:
    cols = swept + metrics
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    shared = sorted(set(rows[0]["_metrics"]) - set(metrics))
    if len(rows) > 1 and shared:
        lines += [
            "",
            "The same in every row: " + ", ".join(f"{m} = {fmt(rows[0].get(m))}" for m in shared) + ".",
        ]
    return "\n".join(lines) + "\n"


def to_csv(swept: list[str], metrics: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(swept + metrics + ["file"])
    for r in rows:
        writer.writerow([r.get(c) for c in swept + metrics] + [r["file"]])
    return buf.getvalue()


def plot(swept: list[str], metric: str, rows: list[dict], path: Path) -> Path | None:
    """One panel per numeric swept setting: ``metric`` against it, one line per combination of the others."""
    numeric = [k for k in swept if all(number(r.get(k)) is not None for r in rows)]
    if not numeric:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(numeric), figsize=(4.2 * len(numeric), 3.4), squeeze=False)
    for ax, key in zip(axes[0], numeric):
        others = [k for k in swept if k != key]
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(", ".join(f"{k}={fmt(r.get(k))}" for k in others), []).append(r)
        for label, members in sorted(groups.items()):
            members = sorted(members, key=lambda r: number(r[key]))
            ax.plot(
                [number(r[key]) for r in members], [r[metric] for r in members], "o-", label=label or None
            )
        ax.set(xlabel=key, ylabel=metric)
        if others:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="metric JSONs or folders holding them")
    p.add_argument("--metric", default=None, help="sort by (and plot) this metric, e.g. digits_fid")
    p.add_argument("--out", default="sweep", help="output stem: writes <out>.md, <out>.csv, <out>.png")
    args = p.parse_args(argv)

    swept, metrics, rows = build_table(find_jsons(args.inputs), args.metric)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from grn.io import atomic_write_bytes

    md = to_markdown(swept, metrics, rows)
    atomic_write_bytes(md.encode(), out.with_suffix(".md"))
    atomic_write_bytes(to_csv(swept, metrics, rows).encode(), out.with_suffix(".csv"))
    png = plot(swept, args.metric or metrics[0], rows, out.with_suffix(".png"))
    print(md, end="")
    print(f"-> {out.with_suffix('.md')}, {out.with_suffix('.csv')}" + (f", {png}" if png else ""))
    return 0


if __name__ == "__main__":
    from grn.entrypoints.errors import cli_errors

    sys.exit(cli_errors(main)())
