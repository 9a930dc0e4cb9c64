"""Taking a run folder before training: the refusal of a folder the run could not start in,
the writer lock held for the whole run, the claim, and the check that a resumed run trains as
the interrupted one did. Only the main rank touches the folder; its UserError reaches every
rank."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from torch import nn

from riftune import distributed
from riftune.config import RunConfig, read_config, write_config
from riftune.engine.build import run_channels_last
from riftune.errors import UserError
from riftune.runs.folder import RunDir, check_claim, claim, run_lock


def on_main(ctx: distributed.DistributedContext, work: Callable[[], None]) -> None:
    """Run ``work()`` on the main rank; its UserError is raised on every rank."""
    error = None
    if ctx.is_main:
        try:
            work()
        except UserError as caught:
            error = str(caught)
    error = ctx.broadcast_object(error)
    if error is not None:
        raise UserError(error)


def preflight(run_dir: RunDir, config: RunConfig, ctx: distributed.DistributedContext) -> None:
    """Refuse a run that could not start in its folder, before building anything."""
    out = config.output
    on_main(ctx, lambda: check_claim(run_dir, out.resume, out.overwrite))


def claim_run_dir(
    run_dir: RunDir,
    config: RunConfig,
    model: nn.Module,
    ctx: distributed.DistributedContext,
    lock: contextlib.ExitStack,
) -> None:
    """Take the folder's writer lock (entered into ``lock``, held until it closes), claim the
    folder and write config.yaml, or, resuming, check the stored one; only now is anything
    written, so bad input leaves no folder behind."""
    out = config.output

    def claim_and_record() -> None:
        lock.enter_context(run_lock(run_dir))
        claim(run_dir, resume=out.resume, overwrite=out.overwrite)
        if out.resume:
            check_same_training(run_dir, config, model)
        else:
            write_config(config, run_dir.config)

    on_main(ctx, claim_and_record)


def check_same_training(run_dir: RunDir, config: RunConfig, model: nn.Module) -> None:
    """A resumed run must train as the interrupted one did (its convolution weights in the
    same layout, however ``--channels-last`` says it); evaluation options may change.

    Raises:
        UserError: naming every training option that differs from the stored config.yaml.
    """
    stored_config = read_config(run_dir.config)
    stored, now = stored_config.training_part(), config.training_part()
    changed = sorted(
        f"{section}.{key}"
        for section in stored.keys() | now.keys()
        if isinstance(stored.get(section, {}), dict)
        for key in stored.get(section, {}).keys() | now.get(section, {}).keys()
        if stored.get(section, {}).get(key) != now.get(section, {}).get(key)
    )
    layouts = [run_channels_last(c.training, model) for c in (stored_config, config)]
    if layouts[0] != layouts[1]:
        changed.append(
            f"training.channels_last (give --channels-last {'on' if layouts[0] else 'off'})"
        )
    if changed:
        raise UserError(
            f"--resume needs the training options of the interrupted run; these differ: "
            f"{', '.join(changed)} (see {run_dir.config})"
        )
