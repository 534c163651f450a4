"""Resource package for the data shipped with finetune-policy: policies/, schemas/ and examples/.

In a wheel this folder holds copies of the repository's top-level ``policies/``, ``schemas/`` and
``examples/`` folders, mapped here at build time by setup.py. In a source checkout it holds only this
file: the top-level folders are the single source. Find the data through ``ruleengine.paths``.
"""
