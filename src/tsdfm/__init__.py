"""tsdfm: few-step text generation with discrete flow matching and trajectory-shaped distillation.

The package follows the pipeline: ``data`` -> ``flow`` (pure tensor maths) -> ``models`` ->
``shaping`` -> ``training`` -> ``evaluation`` -> ``cli``.
"""

__version__ = "0.1.0"

__all__ = ["Generator", "__version__"]


def __getattr__(name: str):
    """Import the generation API on first use, so ``import tsdfm`` stays cheap (no torch)."""
    if name == "Generator":
        from tsdfm.generator import Generator

        return Generator
    raise AttributeError(f"module 'tsdfm' has no attribute {name!r}")
