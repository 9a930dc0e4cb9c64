"""What ``riftune bench`` times: plain finetuning, every RIFT variant (each registered Q's bench
variants, covariance and paired matching) and the baselines, as :class:`Variant` s."""

from __future__ import annotations

from dataclasses import dataclass

from riftune import regularizers
from riftune.config import RegularizerConfig
from riftune.options import from_mapping


@dataclass(frozen=True)
class Variant:
    """A regularizer configuration to time: a label, the regularizer and its options (by the
    field names of its ``Options``, e.g. ``{"match": "paired"}`` for ``--rift-match paired``)."""

    label: str
    reg: str
    options: dict

    def build(self, dim: int) -> regularizers.Regularizer:
        options = regularizers.get(self.reg).Options
        config = RegularizerConfig(self.reg, None, from_mapping(options, self.options, self.label))
        return config.build(dim)


#: batches of the bench's reference "training set" (the batch and noisy copies of it)
REFERENCE_BATCHES = 17


def q_variants() -> list[tuple[str, dict]]:
    """(label, options) of each registered Q's bench variants: identity, learned (all of ℝᵈ
    and rank 64), optimal."""
    return [
        (" ".join(filter(None, (f"q={name}", suffix))), {"q": name, **flags})
        for name, q_class in regularizers.rift.Q_STRATEGIES.items()
        for suffix, flags in q_class.bench_variants.items()
    ]


def default_variants() -> list[Variant]:
    """Plain finetuning, every RIFT variant, and the baselines the issue compares."""
    variants = [Variant("plain (none)", "none", {})]
    for q_label, q_flags in q_variants():
        for stats in ("batch", "ema"):
            variants.append(
                Variant(
                    f"rift covariance {q_label} stats={stats}",
                    "rift",
                    {"match": "covariance", "stats": stats, **q_flags},
                )
            )
    for q_label, q_flags in q_variants():
        for source in ("cache", "teacher"):
            variants.append(
                Variant(
                    f"rift paired {q_label} ref={source}",
                    "rift",
                    {"match": "paired", "reference": source, **q_flags},
                )
            )
    for source in ("teacher", "cache"):
        variants.append(Variant(f"cka ref={source}", "cka", {"reference": source}))
        variants.append(
            Variant(f"feature-distill ref={source}", "feature-distill", {"reference": source})
        )
    variants.append(Variant("l2sp", "l2sp", {}))
    # FTP's cost is in its optimizer step (its penalty is 0), LDIFS's in the teacher's maps
    variants += [Variant(name, name, {}) for name in ("ftp", "ldifs", "bss")]
    return variants
