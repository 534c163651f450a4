"""Build configuration that pyproject.toml cannot express (everything else is in pyproject.toml).

The repository's top-level policies/, schemas/ and examples/ folders are the single source of the
data the package needs at run time. ``package_dir`` maps each of them onto a package under
``ruleengine/_bundled/`` so that a wheel (and ``pip install .``) ships them where
``importlib.resources`` finds them, with no second copy in the repository. Their subfolders are
declared as namespace packages only so that setuptools knows they are data, not forgotten code.
pyproject.toml's ``[tool.setuptools] packages`` is a list or ``find``, never both: hence this file.
"""

from setuptools import find_namespace_packages, find_packages, setup

BUNDLED = {f"ruleengine._bundled.{folder}": folder for folder in ("policies", "schemas", "examples")}

setup(
    packages=find_packages(include=["ruleengine*", "executors*"]) + [
        f"{package}.{sub}" if sub else package
        for package, folder in BUNDLED.items() for sub in ["", *find_namespace_packages(where=folder)]
    ],
    package_dir=BUNDLED,
    package_data={**{package: ["**/*"] for package in BUNDLED}, "executors": ["eval_data/*.jsonl"]},
)
