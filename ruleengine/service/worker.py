"""A gunicorn worker class for the service: uvicorn's, with the header deadline and size cap of ``protocol``.

    gunicorn -w 4 -k ruleengine.service.worker.Worker --backlog 2048 'ruleengine.service.app:create_app()'

Set ``FINETUNE_POLICY_STATE_DIR`` to a folder the workers share (metrics, policy reloads). Needs gunicorn.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():  # uvicorn.workers announces its move to the uvicorn-worker package
    warnings.simplefilter("ignore", DeprecationWarning)
    from uvicorn.workers import UvicornWorker

from .protocol import TimedHttpToolsProtocol


class Worker(UvicornWorker):
    """UvicornWorker with ``TimedHttpToolsProtocol`` and no uvicorn access log (the app writes JSON lines)."""

    CONFIG_KWARGS = {"loop": "auto", "http": TimedHttpToolsProtocol, "access_log": False,
                                                "server_header": False}
