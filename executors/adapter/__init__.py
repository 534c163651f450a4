"""Bottleneck adapter executor (method ``adapter``): refuses at plan time in this environment.

Houlsby/Pfeiffer bottleneck adapters are not in peft; the maintained library is AdapterHub
``adapters``. Its releases pin transformers 4.x (1.3.0, the latest, requires
``transformers~=4.57.6``), and this project pins transformers 5, so the executor explains that
instead of training. :func:`adapters_status` reads the installed versions each time, so the message
stays true if the environment changes.
"""

from __future__ import annotations

from importlib import metadata

from ..base import Executor

#: the transformers requirement of the latest AdapterHub `adapters` release (1.3.0), checked with
#: `pip download --no-deps adapters`
LATEST_ADAPTERS = ("1.3.0", "transformers~=4.57.6")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def adapters_status() -> str:
    """Return why bottleneck adapters cannot run here, from the installed package versions."""
    transformers_version = _version("transformers") or "not installed"
    installed = _version("adapters")
    if installed is None:
        version, requirement = LATEST_ADAPTERS
        return (f"bottleneck adapters need AdapterHub `adapters`, which is not installed; its latest release "
                f"({version}) requires {requirement}, and this environment has transformers {transformers_version}; "
                "peft has no bottleneck (Houlsby/Pfeiffer) adapters")
    requires = [r for r in (metadata.requires("adapters") or []) if r.startswith("transformers")]
    pin = requires[0] if requires else "an unknown transformers version"
    return (f"AdapterHub `adapters` {installed} is installed and requires {pin}, but this environment has "
            f"transformers {transformers_version}, and no executor for bottleneck adapters is implemented "
            "for transformers 5")


class BottleneckAdapterExecutor(Executor):
    """Bottleneck adapters: refused with the reason from :func:`adapters_status`."""

    method = "adapter"

    def unsupported_reason(self) -> str | None:
        """Return the reason this method cannot run here (always a string in this environment)."""
        return adapters_status()


__all__ = ["BottleneckAdapterExecutor", "adapters_status"]
