"""Where the bundled data lives: the one module that finds ``policies/``, ``schemas/`` and ``examples/``.

The repository's top-level folders are the single source. A wheel (``pip install .``) ships them as
``ruleengine/_bundled/<folder>`` (setup.py maps them there at build time), found here with
``importlib.resources``; a source checkout (an editable install, or the repository on PYTHONPATH)
has no copy, and the folders beside the package are used. Every function returns a real path
(``importlib.resources.as_file`` where the package is not on the file system) and raises
``BundledDataMissing`` when neither place holds the folder (a broken install).
"""

from __future__ import annotations

import atexit
import json
from contextlib import ExitStack
from functools import cache
from pathlib import Path

from .exitcodes import ExitCode

_PACKAGE = "ruleengine._bundled"
_HERE = Path(__file__).resolve().parent
_CHECKOUT = _HERE.parent
_extracted = ExitStack()  # holds as_file() copies of a zipped install until exit
atexit.register(_extracted.close)


class BundledDataMissing(FileNotFoundError):
    """A bundled folder or file is in neither the installed package nor a source checkout (a broken install)."""

    exit_code = ExitCode.INTERNAL


@cache
def _folder(name: str) -> Path:
    """Return the real path of the bundled folder ``name``; raises BundledDataMissing."""
    installed = _HERE / "_bundled" / name
    if installed.is_dir():  # a wheel installed on the file system: no importlib.resources needed
        return installed
    checkout = _CHECKOUT / name
    if checkout.is_dir():
        return checkout
    from importlib.resources import as_file, files  # a zipped install

    try:
        bundled = files(_PACKAGE) / name
    except ModuleNotFoundError:
        bundled = None
    if bundled is not None and bundled.is_dir():
        return bundled if isinstance(bundled, Path) else _extracted.enter_context(as_file(bundled))
    raise BundledDataMissing(f"the bundled {name}/ folder is missing (looked in the package {_PACKAGE} and in "
                             f"{_CHECKOUT}); reinstall finetune-policy")


def _file(folder: str, name: str) -> Path:
    path = _folder(folder) / name
    if not path.is_file():
        raise BundledDataMissing(f"{folder}/{name} is not bundled with finetune-policy (looked in {_folder(folder)})")
    return path


def policies_root() -> Path:
    """Return the bundled ``policies/`` folder (every bundled policy, versions.lock, CHANGELOG.md)."""
    return _folder("policies")


def default_policy() -> Path:
    """Return the bundled default policy bundle, ``policies/default``; raises BundledDataMissing."""
    path = policies_root() / "default"
    if not (path / "policy.yaml").is_file():
        raise BundledDataMissing(f"the default policy is missing from {policies_root()}; reinstall finetune-policy")
    return path


def schema(name: str) -> Path:
    """Return the path of the JSON Schema file ``schemas/<name>`` (e.g. ``facts.schema.json``).

    Raises BundledDataMissing when there is no such schema.
    """
    return _file("schemas", name)


@cache
def load_schema(name: str) -> dict:
    """Return the parsed JSON Schema ``schemas/<name>``; raises BundledDataMissing if it is missing."""
    with open(schema(name), encoding="utf-8") as fh:
        return json.load(fh)


def example(name: str) -> Path:
    """Return the bundled example ``examples/<name>`` (e.g. ``job.yaml``, ``data/alpaca.jsonl``).

    Raises BundledDataMissing when there is no such file.
    """
    return _file("examples", name)


def example_data() -> list[Path]:
    """Return the bundled example data files ``examples/data/*.jsonl``, sorted (the tiny tokenizer's corpus).

    Raises BundledDataMissing when there are none.
    """
    found = sorted((_folder("examples") / "data").glob("*.jsonl"))
    if not found:
        raise BundledDataMissing(f"no example data (*.jsonl) under {_folder('examples') / 'data'}; "
                                 "reinstall finetune-policy")
    return found
