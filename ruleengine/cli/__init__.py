"""The `decide` command line: a thin shell over ``ruleengine.api``, one module per command group.

``main`` (ruleengine/cli/main.py) is the entry point and the root group; subcommands are imported
only when used. Nothing in the library imports this package.
"""

from __future__ import annotations

from .main import main

__all__ = ["main"]
