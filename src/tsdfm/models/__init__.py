"""Models: the DFM denoiser (teacher / student) and the causal LM (compass, evaluators, AR)."""

from tsdfm.models.causal import CausalConfig, CausalLM
from tsdfm.models.denoiser import Denoiser, DenoiserConfig, build_student
from tsdfm.models.pretrained import count_parameters, load_pretrained, read_model_config

__all__ = [
    "CausalConfig",
    "CausalLM",
    "Denoiser",
    "DenoiserConfig",
    "build_student",
    "count_parameters",
    "load_pretrained",
    "read_model_config",
]
