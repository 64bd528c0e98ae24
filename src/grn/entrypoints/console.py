"""Rich console output for the entry points."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.tree import Tree

console = Console()


def print_config(cfg: DictConfig, stages: list[str]) -> None:
    tree = Tree(f"[bold]config[/bold]  stages: {' → '.join(stages)}")
    for key in cfg:
        if key == "stages":
            for name in stages:
                branch = tree.add(f"stages.{name}")
                branch.add(Syntax(OmegaConf.to_yaml(cfg.stages[name], resolve=False), "yaml"))
            continue
        value = cfg[key]
        if isinstance(value, DictConfig):
            branch = tree.add(str(key))
            branch.add(Syntax(OmegaConf.to_yaml(value, resolve=False), "yaml"))
        else:
            tree.add(f"{key}: {value}")
    console.print(tree)


def stage_banner(index: int, total: int, name: str, where: Path) -> None:
    console.rule(f"[bold cyan]stage {index}/{total}: {name}[/bold cyan]  [dim]{where}[/dim]")
