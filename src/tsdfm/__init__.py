"""tsdfm: few-step text generation with discrete flow matching and trajectory-shaped distillation.

The package follows the pipeline: ``data`` -> ``flow`` (pure tensor maths) -> ``models`` ->
``shaping`` -> ``training`` -> ``evaluation`` -> ``cli``.
"""

__version__ = "0.1.0"
