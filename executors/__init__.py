"""Executors: turn a decision's verdict into a real training run, one executor per method.

Each method's registry entry (``ruleengine/methods/<name>.py``) names its executor class
(``executors/<name>/``); :func:`get_executor` imports it on first use (executors/registry.py).

Importing ``executors`` (or the CLI's ``ruleengine.cli.train``) never imports torch, transformers or peft: the
executors import them lazily, only in the methods that build or train a model.
"""

from __future__ import annotations

from .registry import ExecutorMismatch, UnknownMethodError, available_methods, executor_class, get_executor

__all__ = ["ExecutorMismatch", "UnknownMethodError", "available_methods", "executor_class", "get_executor"]
