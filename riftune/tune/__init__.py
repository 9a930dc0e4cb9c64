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
