"""The files of one run: its folder and lock, checkpoint files, the state tree they store and
the random generators' states.

Everything here reads and writes disk; nothing here trains, evaluates or parses flags. It may
import :mod:`riftune.errors` and :mod:`riftune.distributed`, never the engine or the commands.
"""
