"""Serving a DeepStack model: an OpenAI-compatible HTTP server over ``deepstack.infer.engine`` (docs/serve.md).

Needs the ``serve`` extra (FastAPI, uvicorn): ``pip install 'deepstack[serve]'``.
"""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
