"""RIFT: Representation Invariance FineTuning (arXiv 2503.07399), covariance and paired forms.

RIFT keeps a finetuned representation close to the pretrained one *up to an orthogonal map*.
Two ways to measure "close", selected by ``match``:

* ``"covariance"`` (the paper's objective, :mod:`.covariance`): the covariance of the finetuned
  embeddings of a batch is matched to the covariance Σ₀ of the pretrained embeddings over the
  training set, fitted once. No second model and no per-sample reference is needed.
* ``"paired"`` (the invariance the paper argues from, Z_ft ≈ Z_pre·Q, :mod:`.paired`): the
  finetuned embeddings of a batch are matched, sample by sample, to the pretrained embeddings
  of the same samples, from a per-sample cache filled once before training (or a frozen pass).

``q`` chooses the orthogonal map, a strategy from :mod:`.q` (one module per kind, registered by
name): ``"identity"`` (none), ``"learned"`` (one rotation trained with the model,
:mod:`.householder`) or ``"optimal"`` (the best rotation for each batch, in closed form, never
stored); both matchings call it, and adding a Q is adding one module there. Layout:
:mod:`.functional` (the pure math), :mod:`.householder`, :mod:`.q`, :mod:`.covariance`,
:mod:`.paired`, :mod:`.regularizer` (the :class:`RIFT` module: options, fitted statistics,
checks, the riftune protocol), :mod:`.flags` (the ``--rift-*`` flags) and :mod:`.options` (the
values the options take).
"""

from riftune.regularizers.rift.flags import (
    CLI_DEFAULT_LAM,
    CLI_DEFAULT_MATCH,
    CLI_DEFAULT_Q,
    CLI_DEFAULT_TARGET_SIMILARITY,
)
from riftune.regularizers.rift.functional import (
    batch_covariance_eigvals,
    nuclear_norm_of_product,
    spectral_distance,
    symmetric_eigvals,
)
from riftune.regularizers.rift.householder import HouseholderRotation
from riftune.regularizers.rift.options import (
    DEFAULT_Q_RANK,
    MATCHES,
    REFERENCE_SOURCES,
    STATISTICS,
)
from riftune.regularizers.rift.q import Q_STRATEGIES, QSettings, QStrategy, register_q
from riftune.regularizers.rift.regularizer import RIFT

__all__ = [
    "CLI_DEFAULT_LAM",
    "CLI_DEFAULT_MATCH",
    "CLI_DEFAULT_Q",
    "CLI_DEFAULT_TARGET_SIMILARITY",
    "DEFAULT_Q_RANK",
    "MATCHES",
    "Q_STRATEGIES",
    "REFERENCE_SOURCES",
    "RIFT",
    "STATISTICS",
    "HouseholderRotation",
    "QSettings",
    "QStrategy",
    "batch_covariance_eigvals",
    "nuclear_norm_of_product",
    "register_q",
    "spectral_distance",
    "symmetric_eigvals",
]
