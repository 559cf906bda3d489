"""The ``serve`` verb: the HTTP service and web page over a demo folder's models."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from modtrans.cli.application import app

logger = logging.getLogger(__name__)


@app.command()
def serve(
    source: Path = typer.Argument(..., help="A demo folder (`modtrans demo`), or a YAML file "
                                  "naming translators, decoders and indexes."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every "
                             "interface)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    config: Path = typer.Option(None, help="YAML/JSON file of service options: limits, "
                                "batching, index_splits, defaults (default: those of a YAML "
                                "SOURCE, else the built-in ones)."),
    max_batch: int = typer.Option(None, help="Requests merged into one model call at most."),
    max_queue: int = typer.Option(None, help="Requests admitted at once; more get 503 with "
                                  "Retry-After."),
    graceful_s: float = typer.Option(30.0, "--graceful-s", help="On SIGINT/SIGTERM, seconds "
                                     "to let requests in flight finish."),
    access_log: bool = typer.Option(False, help="Log every request."),
) -> None:
    """Serve translation, search, generation and captioning over HTTP, with a web page at /,
    API docs at /docs and Prometheus metrics at /metrics (needs `pip install modtrans[serve]`)."""
    import dataclasses

    from modtrans.serve.config import service_options

    try:
        import uvicorn

        from modtrans.serve import create_app
    except ImportError as e:
        raise ImportError(f"modtrans serve needs the serve extra ({e}): pip install "
                          "'modtrans[serve]'") from e
    cfg = service_options(source, config)
    changes = {k: v for k, v in {"max_batch": max_batch, "max_queue": max_queue}.items()
               if v is not None}
    if changes:
        cfg.batching = dataclasses.replace(cfg.batching, **changes)
    application = create_app(source, cfg)
    logger.info("serve: http://%s:%d/ (docs at /docs)", host, port)
    uvicorn.run(application, host=host, port=port, log_config=None, access_log=access_log,
                timeout_graceful_shutdown=graceful_s)
