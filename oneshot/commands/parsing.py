"""Parsers whose errors are one line, with the closest accepted option for a typo.

argparse and jsonargparse print the whole usage (80 lines for ``oneshot search``) before the
error; a researcher who typed ``--model.learning_rat`` needs the one line that says what is
wrong and what was meant.
"""
from __future__ import annotations

import argparse
import difflib
import re
from typing import Any, Iterable, NoReturn

from oneshot.commands.common import UserError

_UNKNOWN = re.compile(r"(--[A-Za-z0-9_.\-]+)")


def option_strings(parser: Any) -> list[str]:
    """Every ``--option`` a parser accepts, nested jsonargparse keys included."""
    found = []
    for action in getattr(parser, "_actions", []):
        found += [s for s in action.option_strings if s.startswith("--")]
    return found


def closest(word: str, accepted: Iterable[str]) -> str | None:
    """The accepted option nearest to ``word``; ``--model.x`` also matches ``--model.init_args.x``."""
    accepted = list(accepted)
    shorthands = {a.replace(".init_args.", "."): a for a in accepted}
    matches = difflib.get_close_matches(word, list(shorthands), n=1, cutoff=0.75)
    if matches:
        return matches[0]
    matches = difflib.get_close_matches(word, accepted, n=1, cutoff=0.75)
    return matches[0] if matches else None


def one_line(message: str, accepted: Iterable[str]) -> str:
    """``message`` with a "did you mean" for each unknown option in it."""
    message = " ".join(str(message).split())
    accepted = list(accepted)
    hints = []
    for word in _UNKNOWN.findall(message):
        key = word.split("=", 1)[0]
        if key in accepted or key.replace(".", ".init_args.", 1) in accepted:
            continue
        near = closest(key, accepted)
        if near and near != key:
            hints.append(f"did you mean {near}?")
    return message + ("; " + " ".join(hints) if hints else "") + " (--help lists every option)"


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (raised as :class:`UserError`)."""

    def error(self, message: str) -> NoReturn:
        raise UserError(one_line(message, option_strings(self)))


def lightning_cli_class() -> type:
    """LightningCLI whose parser reports a bad option in one line with the closest accepted one."""
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    class OneLineLightningParser(LightningArgumentParser):
        def error(self, message: str, ex: Exception | None = None) -> NoReturn:
            raise UserError(one_line(message, all_option_strings(self))) from None

    class OneLineLightningCLI(LightningCLI):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("parser_class", OneLineLightningParser)
            super().__init__(*args, **kwargs)

    return OneLineLightningCLI


def all_option_strings(parser: Any) -> list[str]:
    """Options of a jsonargparse parser, including those of subclass-mode groups."""
    found = option_strings(parser)
    for group in getattr(parser, "_action_groups", []):
        for action in getattr(group, "_group_actions", []):
            found += [s for s in action.option_strings if s.startswith("--")]
    return sorted(set(found))
