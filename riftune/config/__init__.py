"""A run's typed configuration: sections, their YAML form and the flags generated from them.

- :mod:`riftune.config.sections`: data, backbone, training, evaluation and output sections;
- :mod:`riftune.config.run`: :class:`RunConfig`, composed with the chosen method's and
  regularizer's options, and its YAML form;
- :mod:`riftune.config.routing`: where each flag's value goes (a section's field or a
  component's option);
- :mod:`riftune.config.legacy`: config files of earlier versions (the flat config.yaml before
  typed configs, options added since) in today's form;
- :mod:`riftune.config.flags`: ``riftune finetune``'s flags, generated from the dataclasses.

It may import the components it composes (data, models, tuning, regularizers) and
:mod:`riftune.options`; never the engine, the commands or anything that runs.
"""

from riftune.config.flags import add_finetune_flags, finetune_parser, run_config_from_args
from riftune.config.run import (
    MethodConfig,
    RegularizerConfig,
    RunConfig,
    load_run_config,
    load_yaml,
    read_config,
    write_config,
)
from riftune.config.sections import (
    DEFAULT_DATA,
    DataConfig,
    EvaluationConfig,
    ModelConfig,
    OutputConfig,
    TrainingConfig,
)

__all__ = [
    "DEFAULT_DATA",
    "DataConfig",
    "EvaluationConfig",
    "MethodConfig",
    "ModelConfig",
    "OutputConfig",
    "RegularizerConfig",
    "RunConfig",
    "TrainingConfig",
    "add_finetune_flags",
    "finetune_parser",
    "load_run_config",
    "load_yaml",
    "read_config",
    "run_config_from_args",
    "write_config",
]
