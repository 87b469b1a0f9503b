"""Typed configuration: the schema (:mod:`.schema`: one dataclass per section, early validation)
and its loading (:mod:`.loading`: YAML files, ``key=value`` overrides, the resolved config saved
beside every artifact). Callers import from here; which half a name lives in is a detail.
"""

from tsdfm.config.loading import (
    from_dict,
    load_config,
    parse_overrides,
    replace,
    save_config,
    to_dict,
)
from tsdfm.config.schema import (
    MIDPOINT_KINDS,
    SOURCES,
    STUDENT_KINDS,
    TEXT_EVALUATORS,
    CausalStageConfig,
    EvalConfig,
    ExperimentConfig,
    FlowConfig,
    ModelConfig,
    SampleConfig,
    ShapingConfig,
    StudentConfig,
    TeacherConfig,
    TrainConfig,
)
from tsdfm.data.spec import DataSpec, MarkovSpec

__all__ = [
    "MIDPOINT_KINDS",
    "SOURCES",
    "STUDENT_KINDS",
    "TEXT_EVALUATORS",
    "CausalStageConfig",
    "DataSpec",
    "EvalConfig",
    "ExperimentConfig",
    "FlowConfig",
    "MarkovSpec",
    "ModelConfig",
    "SampleConfig",
    "ShapingConfig",
    "StudentConfig",
    "TeacherConfig",
    "TrainConfig",
    "from_dict",
    "load_config",
    "parse_overrides",
    "replace",
    "save_config",
    "to_dict",
]
