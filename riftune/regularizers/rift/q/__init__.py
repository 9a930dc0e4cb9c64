"""RIFT's orthogonal map Q as strategies: one module per kind, found by its ``q`` name.

:mod:`.base` holds the interface (:class:`QStrategy`) both matchings call and the registry;
each other module here defines one Q and registers it with :func:`register_q`: ``identity``
(Q = I), ``learned`` (a trained rotation) and ``optimal`` (the best Q per batch). Every module
of this package is imported below, so adding a Q is adding one file; its name then works in
``RIFT(q=...)``, ``--rift-q``, config files and the bench. Modules here import only
:mod:`riftune.regularizers.rift`'s math (:mod:`~riftune.regularizers.rift.functional`,
:mod:`~riftune.regularizers.rift.householder`, :mod:`~riftune.regularizers.rift.options`).
"""

import importlib
import pkgutil

from riftune.regularizers.rift.q.base import (
    Q_STRATEGIES,
    QSettings,
    QStrategy,
    names_taking,
    q_strategy,
    register_q,
)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["Q_STRATEGIES", "QSettings", "QStrategy", "names_taking", "q_strategy", "register_q"]
