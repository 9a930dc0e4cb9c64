"""Choosing the strength (``riftune tune``, :func:`riftune.tune`): for the user's own data,
the strongest representation keeping that costs no accuracy.

- :mod:`~riftune.strength.config`: the study's settings (the CLI's flags, ``riftune.tune``'s
  mapping);
- :mod:`~riftune.strength.candidates` and :mod:`~riftune.strength.ladder`: what is compared,
  and the ladder of strengths anchored on plain finetuning's own drift;
- :mod:`~riftune.strength.trials`: one ``finetune`` run folder per candidate and fold;
- :mod:`~riftune.strength.study`: the Optuna study, folds as rungs, hopeless candidates pruned;
- :mod:`~riftune.strength.rule`: the choice (lowest drift whose AUC is non-inferior to plain's);
- :mod:`~riftune.strength.recipe`, :mod:`~riftune.strength.summary` and
  :mod:`~riftune.strength.report`: the shared recipe, tuned.yaml, the report and the study's
  state.

It launches ordinary ``finetune`` runs (:mod:`riftune.runs.launchers`) and reads their
folders back; it may import config, data, regularizers, tuning, report and runs, never the
engine's internals or the commands (``riftune tune`` in :mod:`riftune.commands.tune` calls it).
"""
