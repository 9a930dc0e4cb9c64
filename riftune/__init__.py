"""riftune: finetune pretrained vision models while keeping their pretrained representations.

``riftune.RIFT`` is the regularizer (a drop-in loss for your own training loop);
``riftune.metrics`` has CKA and the evaluation metrics; ``riftune finetune`` is the CLI.
"""

from riftune.regularizers.rift import RIFT

__all__ = ["RIFT"]
__version__ = "0.1.0"
