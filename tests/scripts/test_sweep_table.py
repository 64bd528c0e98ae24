"""scripts/sweep_table.py: JSONs of a sweep -> one table (markdown + CSV) and a plot per swept setting."""

import csv
import json
from pathlib import Path

import pytest

from script_loader import load_script

sweep_table = load_script("sweep_table")


def write(folder: Path, name: str, cfg: float, temp: float, fid: float, overrides=None) -> None:
    record = {
        "digits_fid": fid,
        "tokenizer_psnr": 35.0,
        "conditional_accuracy": 1 - fid / 10,
        "num_images": 100,
        "eval_seconds": 3.0,
        "mean_entropy_per_step": [0.5, 0.2],
        "settings": {
            "ckpt": "/r/c2i/checkpoints/last.ckpt",
            "seed": 0,
            "sampler": {"cfg_scale": cfg, "temperature": temp, "num_steps": 30, "cfg_interval": [0, 1]},
        },
    }
    if overrides:
        record["settings"]["overrides"] = overrides
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(record))


def test_table_columns_sorting_csv_and_plot(tmp_path):
    grid = [
        (1.5, 1.0, 3.0),
        (2.0, 1.0, 1.0),
        (2.5, 1.0, 2.0),
        (1.5, 1.2, 4.0),
        (2.0, 1.2, 2.5),
        (2.5, 1.2, 3.5),
    ]
    for i, (c, t, f) in enumerate(grid):
        write(tmp_path / "sweep", f"{i}/metrics-{i}.json", c, t, f)
    (tmp_path / "sweep" / "notes.json").write_text("{}")  # not a metrics file: ignored
    out = tmp_path / "table" / "cfg"
    assert sweep_table.main([str(tmp_path / "sweep"), "--metric", "digits_fid", "--out", str(out)]) == 0
    md = out.with_suffix(".md").read_text().splitlines()
    assert md[0] == "| sampler.cfg_scale | sampler.temperature | digits_fid | conditional_accuracy |"
    assert len(md) == 2 + 6 + 2
    assert md[-1] == "The same in every row: tokenizer_psnr = 35."  # constant metrics leave the table
    assert md[2].startswith("| 2 | 1 | 1 |")  # best (lowest FID) first
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert [float(r["digits_fid"]) for r in rows] == sorted(f for _, _, f in grid)
    assert rows[0]["file"].endswith("metrics-1.json")
    assert out.with_suffix(".png").stat().st_size > 1000


def test_training_sweep_overrides_become_columns(tmp_path):
    write(
        tmp_path, "0/metrics.json", 2.0, 1.0, 2.0, overrides=["experiment=quickstart", "model/generator=tiny"]
    )
    write(
        tmp_path,
        "1/metrics.json",
        2.0,
        1.0,
        1.0,
        overrides=["experiment=quickstart", "model/generator=small"],
    )
    swept, metrics, rows = sweep_table.build_table(sweep_table.find_jsons([str(tmp_path)]), "digits_fid")
    assert swept == ["model/generator"]
    assert [r["model/generator"] for r in rows] == ["small", "tiny"]


def test_missing_metric_and_empty_input(tmp_path, capsys):
    write(tmp_path, "a/metrics-a.json", 2.0, 1.0, 2.0)
    with pytest.raises(SystemExit, match="no results"):
        sweep_table.build_table(sweep_table.find_jsons([str(tmp_path)]), "fid")
    assert "skipped 1 file" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="neither"):
        sweep_table.find_jsons([str(tmp_path / "nope")])
