"""The HTTP decision service: an ASGI app (FastAPI) over ``ruleengine.api``, and how `decide serve` runs it.

    settings.py   Settings from flags or FINETUNE_POLICY_* variables (every worker builds its app from them)
    core.py       DecisionService: decide / explain / estimate / record / reload, independent of HTTP
    app.py        create_app(settings) -> FastAPI: routes, auth, limits, metrics, access log, OpenAPI
    server.py     uvicorn with a large backlog, timeouts, several workers, SIGHUP reload
    protocol.py   uvicorn's httptools protocol with a header deadline and header size cap
    metrics.py    Prometheus metrics, multiprocess
    accesslog.py  JSON log lines
    worker.py     a gunicorn worker class with the same protocol

Nothing in the library imports this package (tests/test_import_graph.py); it needs the ``service`` extra
(fastapi, uvicorn, prometheus-client), imported only when the service runs.
"""
