"""``riftune tune``: choose, for the user's own data, the strongest representation keeping that
costs no accuracy.

- :mod:`~riftune.tune.config`: the study's settings (the CLI's flags, ``riftune.tune``'s mapping);
- :mod:`~riftune.tune.candidates` and :mod:`~riftune.tune.ladder`: what is compared, and the
  ladder of strengths anchored on plain finetuning's own drift;
- :mod:`~riftune.tune.trials`: one ``finetune`` run folder per candidate and fold;
- :mod:`~riftune.tune.study`: the Optuna study, folds as rungs, hopeless candidates pruned;
- :mod:`~riftune.tune.rule`: the choice (lowest drift whose AUC is non-inferior to plain's);
- :mod:`~riftune.tune.recipe`, :mod:`~riftune.tune.summary` and :mod:`~riftune.tune.report`:
  the shared recipe, tuned.yaml, the report and the study's state.
"""

import sys
import types


def tune(settings) -> str:
    """Run or continue a ``riftune tune`` study from a mapping of its settings (the CLI's
    flags: ``out``, ``methods``, ``regularizers``, ``ladder``, ``budgets``, ``lams``,
    ``folds``, ``tolerance``, ... and ``finetune``, a mapping of the shared finetune flags),
    a YAML file of it or a :class:`riftune.tune.config.TuneConfig`; returns report.md's text.
    """
    from riftune.commands.tune import run_tune
    from riftune.tune.config import TuneConfig

    if not isinstance(settings, TuneConfig):
        settings = TuneConfig.from_mapping(settings)
    return run_tune(settings)


class _CallablePackage(types.ModuleType):
    """``riftune.tune(settings)`` calls :func:`tune`; ``riftune.tune.study`` etc. stay modules."""

    def __call__(self, settings) -> str:
        return tune(settings)


sys.modules[__name__].__class__ = _CallablePackage
