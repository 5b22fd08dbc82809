"""Typed configuration: dataclass sections loaded from YAML and validated on load."""
from .loader import ConfigError, apply_overrides, from_dict, load_config, save_config, to_dict
from .schema import (
    BACKBONES,
    DATASETS,
    DataConfig,
    EvalConfig,
    EvaluateJob,
    ModelConfig,
    PretrainJob,
    SyntheticConfig,
    TrainConfig,
    DralConfig,
    AnnotatorConfig,
    OracleConfig,
    FinetuneConfig,
    LoopJob,
    AdaptConfig,
    RayConfig,
    STRATEGIES,
)

__all__ = [
    "ConfigError", "apply_overrides", "from_dict", "load_config", "save_config", "to_dict",
    "BACKBONES", "DATASETS", "DataConfig", "EvalConfig", "EvaluateJob", "ModelConfig",
    "PretrainJob", "SyntheticConfig", "TrainConfig", "DralConfig", "AnnotatorConfig", "OracleConfig", "FinetuneConfig", "LoopJob", "AdaptConfig", "RayConfig", "STRATEGIES",
]
