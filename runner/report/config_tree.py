"""The composed config as a tree (rich), printed at start and saved in the run dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.syntax import Syntax
from rich.tree import Tree

# Groups first, in the order a reader looks for them; the rest after.
ORDER = ("strategy", "model", "dataset", "partitioner", "train", "eval", "checkpoint", "backend")


def config_tree(cfg: dict[str, Any]) -> Tree:
    tree = Tree("config", guide_style="dim")
    keys = [k for k in ORDER if k in cfg] + [k for k in cfg if k not in ORDER]
    scalars = {k: cfg[k] for k in keys if not isinstance(cfg[k], dict)}
    for key in keys:
        if isinstance(cfg[key], dict):
            text = yaml.safe_dump(cfg[key], sort_keys=False, default_flow_style=False).rstrip()
            tree.add(f"[bold]{key}[/bold]").add(Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    if scalars:
        text = yaml.safe_dump(scalars, sort_keys=False, default_flow_style=False).rstrip()
        tree.add("[bold]run[/bold]").add(Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    return tree


def print_config_tree(cfg: dict[str, Any], save_to: Path | None = None) -> None:
    """Print the tree on stdout (colour only on a terminal) and save a plain copy."""
    tree = config_tree(cfg)
    Console().print(tree)
    if save_to is not None:
        with open(save_to, "w") as f:
            Console(file=f, width=120, color_system=None).print(tree)
