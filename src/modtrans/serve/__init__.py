"""``modtrans serve``: an HTTP service and a web page over the models of a demo folder.

:func:`~modtrans.serve.app.create_app` builds the FastAPI application; the endpoints call
the same pipelines as the command line (:mod:`modtrans.pipelines`), with concurrent requests
micro-batched per model. Needs the ``serve`` extra (``pip install modtrans[serve]``).
"""

from modtrans.serve.app import create_app
from modtrans.serve.config import Batching, Limits, ServeConfig

__all__ = ["Batching", "Limits", "ServeConfig", "create_app"]
