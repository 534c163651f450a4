"""``python -m ruleengine.cli``: the `decide` command."""

from .main import main

main()
