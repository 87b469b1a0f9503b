"""HTTP serving of a tsdfm model (``tsdfm serve``): OpenAI-style completions, step streaming,
step-level request batching and a page that shows the few steps (docs/serving.md).

Needs the ``serve`` extra (FastAPI, uvicorn); importing this package alone imports neither.
"""

from tsdfm.serving.limits import Limits

__all__ = ["Limits", "create_app", "serve"]


def __getattr__(name: str):
    if name == "create_app":
        from tsdfm.serving.app import create_app

        return create_app
    if name == "serve":
        from tsdfm.serving.server import serve

        return serve
    raise AttributeError(name)
