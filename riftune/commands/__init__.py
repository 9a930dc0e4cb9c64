"""The commands of ``riftune`` besides ``finetune`` itself: evaluate, predict, export, compare
(with its grid and launchers), wise-ft, bench and demo.

Each module is one command's work, called by :mod:`riftune.cli` (which only parses and
dispatches). Commands may import everything below them (config, data, models, engine, metrics,
report, runs); nothing below imports a command.
"""
