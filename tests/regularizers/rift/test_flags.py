"""``--reg rift``'s flags and config section (rift/flags.py): defaults, options, the learned-Q
options' rule and the default similarity budget and λ.
"""

from __future__ import annotations

import pytest

from riftune.errors import UserError
from riftune.regularizers.rift import (
    DEFAULT_Q_RANK,
    RIFT,
    flags,
)


def _rift(argv: str | list[str], dim: int = 7) -> RIFT:
    """RIFT as ``riftune finetune --reg rift ARGV`` builds it for embeddings of size ``dim``."""
    from riftune.config import finetune_parser, run_config_from_args

    argv = argv.split() if isinstance(argv, str) else argv
    config = run_config_from_args(finetune_parser().parse_args(["--reg", "rift", *argv]))
    return config.regularizer.build(dim)


def test_cli_flags_defaults_and_options():
    reg = _rift([])
    assert (reg.match, reg.q.name) == (flags.CLI_DEFAULT_MATCH, flags.CLI_DEFAULT_Q)
    assert (reg.stats, reg.momentum, reg.mean_weight, reg.normalize) == ("batch", 0.1, 0.0, True)
    assert reg.reference == "cache"  # paired matching reads the cache unless told otherwise
    assert _rift("--rift-match covariance").reference is None
    argv = "--rift-match covariance --rift-q learned --rift-stats ema --rift-momentum 0.2 "
    argv += "--rift-mean-weight 0.5 --no-rift-normalize"
    reg = _rift(argv)
    assert (reg.match, reg.q.name, reg.stats, reg.momentum) == ("covariance", "learned", "ema", 0.2)
    assert (reg.mean_weight, reg.normalize) == (0.5, False)
    assert reg.q.rotation.rank is None  # the default rank 64 is all of d = 7
    assert _rift(argv, dim=100).q.rotation.rank == 64
    assert _rift(argv + " --rift-q-rank 4").q.rotation.reflectors.shape == (7, 4)
    reg = _rift(argv + " --rift-q-rank all", dim=100)
    assert reg.q.rotation.reflectors.shape == (100, 100)
    assert reg.param_lr is None  # the engine gives learned Q the head's learning rate
    assert _rift(argv + " --rift-q-lr 2e-5").param_lr == 2e-5
    assert _rift("--rift-match paired --rift-reference teacher").reference == "teacher"
    for bad, message in (
        ("--rift-q optimal --rift-q-lr 1e-4", "--rift-q-lr applies to --rift-q learned only"),
        ("--rift-q learned --rift-q-lr 0", "--rift-q-lr 0.0: must be a finite number > 0"),
        ("--rift-q learned --rift-q-lr nan", "--rift-q-lr nan: must be a finite number > 0"),
        ("--rift-match paired --rift-stats ema", "--rift-stats ema applies to"),
        ("--rift-momentum 0", "--rift-momentum 0.0: must be in (0, 1]"),
        ("--rift-q learned --rift-q-rank 3", "--rift-q-rank 3: must be even"),
        ("--rift-q optimal --rift-q-rank 4", "--rift-q-rank applies to --rift-q learned only"),
        ("--rift-match covariance --rift-reference teacher", "applies to --rift-match paired"),
    ):
        with pytest.raises(UserError) as error:
            _rift(bad)
        assert str(error.value).startswith("--reg rift: "), str(error.value)
        assert message in str(error.value), str(error.value)
    from riftune.config import finetune_parser

    help_text = finetune_parser().format_help()
    for flag in ("--rift-q", "--rift-stats", "--rift-momentum", "--no-rift-normalize"):
        assert flag in help_text


@pytest.mark.parametrize("q", ["identity", "optimal"])
@pytest.mark.parametrize("rank", ["64", "32", "all"])
def test_an_explicit_q_rank_needs_learned_q_whatever_its_value(q, rank):
    with pytest.raises(UserError, match="--rift-q-rank applies to --rift-q learned only"):
        _rift(["--rift-q", q, "--rift-q-rank", rank])
    assert _rift(["--rift-q", q]).q.name == q  # unset, the rank goes with any Q
    learned = _rift(["--rift-q", "learned", "--rift-q-rank", rank], dim=100)
    assert learned.q.rotation.reflectors.shape == (100, 100 if rank == "all" else int(rank))


def test_the_q_rank_in_a_run_config_is_there_with_learned_q_only():
    """config.yaml holds the rank (its default resolved) only for learned Q; old flat files,
    which stored 64 for every run, still load."""
    from riftune.config import RunConfig

    learned = RunConfig.from_dict({"regularizer": {"name": "rift", "q": "learned"}})
    assert learned.to_dict()["regularizer"]["q_rank"] == DEFAULT_Q_RANK
    optimal = RunConfig.from_dict({"regularizer": {"name": "rift", "q": "optimal"}})
    assert "q_rank" not in optimal.to_dict()["regularizer"]
    old = RunConfig.from_dict({"reg": "rift", "rift_q": "optimal", "rift_q_rank": 64})
    assert old.to_dict() == optimal.to_dict()
    # the constructor's own default is unchanged: RIFT(q=...) with q_rank=64 is accepted
    assert RIFT(8, q="optimal", q_rank=DEFAULT_Q_RANK).q.name == "optimal"


def test_reg_rift_alone_keeps_the_default_similarity_budget():
    """The Defaults rule (docs/strength.md) chose a similarity budget for --reg rift; --lam, an
    explicit budget or the covariance penalty (no similarity) keep a fixed weight or their own
    budget."""
    from riftune.config import RunConfig, finetune_parser, run_config_from_args

    def config(*argv: str) -> RunConfig:
        return run_config_from_args(finetune_parser().parse_args(list(argv)))

    default = config("--reg", "rift")
    assert default.budget.target_similarity == flags.CLI_DEFAULT_TARGET_SIMILARITY == 0.8
    assert default.epsilon == pytest.approx(2 - 2 * 0.8) and default.initial_lam == 0.0
    assert RunConfig.from_dict(default.to_dict()).to_dict() == default.to_dict()
    fixed = config("--reg", "rift", "--lam", "0.1")
    assert not fixed.budget.active and fixed.initial_lam == 0.1
    covariance = config("--reg", "rift", "--rift-match", "covariance")
    assert not covariance.budget.active and covariance.initial_lam == flags.CLI_DEFAULT_LAM
    own = config("--reg", "rift", "--budget", "0.3")
    assert (own.budget.budget, own.budget.target_similarity) == (0.3, None)
    assert not config("--reg", "cka").budget.active


def test_lam_defaults_to_the_regularizers_own():
    from riftune.config import finetune_parser, run_config_from_args

    for argv, expected in (
        (["--reg", "rift"], flags.CLI_DEFAULT_LAM),
        (["--reg", "rift", "--lam", "0.3"], 0.3),
        (["--reg", "l2sp"], 1.0),
        (["--reg", "none", "--lam", "3"], None),
    ):
        config = run_config_from_args(finetune_parser().parse_args(argv))
        assert config.regularizer.lam == expected
