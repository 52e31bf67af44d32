"""Parsers whose errors are one line, with the closest accepted option for a typo.

argparse and jsonargparse print the whole usage (80 lines for ``oneshot search``) before the
error, and jsonargparse explains a typo in ``--model.learning_rat`` with a dump of every Union
subtype it tried; a researcher needs the one line that says what is wrong and what was meant::

    unknown option --model.learning_rat; did you mean --model.learning_rate? (oneshot search --help lists every option)
    invalid value 'abc' for --trainer.max_epochs: expected int or None

For a subclass-mode key (``--model``, ``--data``) the accepted names are the init arguments of the
class chosen on the command line or in a ``--config`` file (else the parser's default), or of every
registered class (:data:`oneshot.algorithms.ALGORITHMS`, :data:`oneshot.data.DATAMODULES`) when
none can be told. ``oneshot search`` and ``retrain`` take no abbreviated options (``--trainer.max_epoch``
is a typo there, not ``--trainer.max_epochs``); the argparse commands keep argparse's abbreviations.
``--help`` and ``--print_config`` are not errors and print in full.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import re
import sys
from typing import Any, Iterable, NoReturn

from oneshot.commands.common import UserError


def option_strings(parser: Any) -> list[str]:
    """Every ``--option`` a parser accepts, nested jsonargparse keys included."""
    found = []
    for action in getattr(parser, "_actions", []):
        found += [s for s in action.option_strings if s.startswith("--")]
    return found


def all_option_strings(parser: Any) -> list[str]:
    """Options of a jsonargparse parser, including those of subclass-mode groups."""
    found = option_strings(parser)
    for group in getattr(parser, "_action_groups", []):
        for action in getattr(group, "_group_actions", []):
            found += [s for s in action.option_strings if s.startswith("--")]
    return sorted(set(found))


def closest(word: str, accepted: Iterable[str]) -> str | None:
    """The accepted option nearest to ``word``: first by the last dotted part among the options of
    the same group (``--trainer.max_epoch`` -> ``--trainer.max_epochs``), then by the whole name
    (``--trainr.max_epochs``)."""
    accepted = sorted(set(a for a in accepted if a != word))
    group, _, name = word.rpartition(".")
    siblings = {a.rpartition(".")[2]: a for a in accepted if a.rpartition(".")[0] == group}
    matches = difflib.get_close_matches(name, list(siblings), n=1, cutoff=0.7)
    if matches:
        return siblings[matches[0]]
    matches = difflib.get_close_matches(word, accepted, n=1, cutoff=0.8)
    return matches[0] if matches else None


def _help_hint(prog: str) -> str:
    return f"({prog} --help lists every option)"


def unknown_options_message(words: list[str], accepted: Iterable[str], prog: str) -> str:
    """``unknown option --x; did you mean --y? (prog --help lists every option)``."""
    accepted = list(accepted)
    parts = []
    for word in words:
        near = closest(word, accepted)
        parts.append((word, f"did you mean {near}?" if near else ""))
    if len(parts) == 1:
        word, hint = parts[0]
        text = f"unknown option {word}" + (f"; {hint}" if hint else "")
    else:
        text = "unknown options " + ", ".join(w + (f" ({h})" if h else "") for w, h in parts)
    return f"{text} {_help_hint(prog)}"


def _split_unrecognized(rest: str) -> tuple[list[str], list[str]]:
    """The options and the other words of argparse's ``unrecognized arguments: ...``."""
    options, others = [], []
    for token in rest.split():
        if token.startswith("-") and len(token) > 1 and not re.fullmatch(r"-\d+(\.\d*)?", token):
            options.append(token.split("=", 1)[0])
        elif not options:  # a word after an unknown option is its value
            others.append(token)
    return options, others


# -- argparse -------------------------------------------------------------------------------------

def unknown_argparse_options(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """The options of ``argv`` that ``parser`` does not take (abbreviations are taken where the
    parser allows them; words with a space or after ``--`` are values, as argparse reads them)."""
    known = [s for action in parser._actions for s in action.option_strings]
    unknown = []
    for token in argv:
        if token == "--":
            break
        if not token.startswith(tuple(parser.prefix_chars)) or len(token) < 2 or " " in token:
            continue
        if parser._negative_number_matcher.match(token) and not parser._has_negative_number_optionals:
            continue
        flag = token.split("=", 1)[0]
        if flag in known or token[:2] in known:  # -hx: a short option and its value
            continue
        if token.startswith("--") and parser.allow_abbrev and any(k.startswith(flag) for k in known):
            continue
        unknown.append(flag)
    return unknown


def argparse_message(parser: argparse.ArgumentParser, message: str, argv: list[str]) -> str:
    """One line for an argparse error: unknown options with the closest accepted ones; a missing
    required option caused by a typo is reported as the typo."""
    message = " ".join(str(message).split())
    accepted = [s for s in option_strings(parser) if s not in ("--help",)]
    if message.startswith("unrecognized arguments:"):
        options, others = _split_unrecognized(message.partition(":")[2])
        if options:
            return unknown_options_message(options, accepted, parser.prog)
        return f"unexpected argument{'s' if len(others) > 1 else ''} {' '.join(others)} {_help_hint(parser.prog)}"
    if "required" in message:
        options = unknown_argparse_options(parser, argv)
        if options:
            return unknown_options_message(options, accepted, parser.prog)
    return message


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (raised as :class:`UserError`), never the usage."""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._oneline_argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        raise UserError(argparse_message(self, message, getattr(self, "_oneline_argv", [])))


# -- jsonargparse / LightningCLI --------------------------------------------------------------------

def _type_names(text: str, expression: bool = False) -> str:
    """``<class 'oneshot.data.ImageDataModule'>`` -> ``ImageDataModule``, ``NoneType`` -> ``None``;
    in a type ``expression`` also ``list[lightning.pytorch.callbacks.callback.Callback]`` -> ``list[Callback]``."""
    text = re.sub(r"<class '(?:[\w]+\.)*(\w+)'>", r"\1", text)
    if expression:
        text = re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", text)
    return re.sub(r"\bNoneType\b", "None", text)


def _subclass_action(parser: Any, key: str) -> Any:
    """The action of a subclass-mode key (one with a ``--key.help CLASS``), or None."""
    actions = {a.dest: a for a in getattr(parser, "_actions", [])}
    if key in actions and f"{key}.help" in actions and hasattr(actions[key], "_typehint"):
        return actions[key]
    return None


def _base_classes(action: Any) -> list[type]:
    import typing

    hint = action._typehint
    args = typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,)
    return [a for a in args if isinstance(a, type) and a not in (type(None), bool)]


def registered_classes(bases: list[type]) -> list[type]:
    """The registered algorithms and data modules that are subclasses of one of ``bases``."""
    from oneshot.algorithms import ALGORITHMS
    from oneshot.data import DATAMODULES, ImageDataModule

    known = [*ALGORITHMS.values(), ImageDataModule, *DATAMODULES.values()]
    return [cls for cls in dict.fromkeys(known) if any(issubclass(cls, base) for base in bases)]


def _class_path(value: Any) -> str | None:
    """The class named by a subclass value: ``Name``, ``pkg.Name``, ``{class_path: ...}``, a Namespace."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            import yaml

            try:
                return _class_path(yaml.safe_load(text))
            except yaml.YAMLError:
                return None
        return text or None
    if isinstance(value, dict):
        return value.get("class_path") if isinstance(value.get("class_path"), str) else None
    class_path = getattr(value, "class_path", None)
    return class_path if isinstance(class_path, str) else None


def _config_section(path: str, key: str) -> Any:
    """``key`` (dotted; "" for all) of a YAML config file, or None."""
    import yaml

    try:
        with open(path) as f:
            section = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None
    for part in key.split(".") if key else []:
        if not isinstance(section, dict) or part not in section:
            return None
        section = section[part]
    return section


def chosen_class_path(parser: Any, key: str, argv: list[str]) -> str | None:
    """The class a subclass-mode ``key`` names: the last ``--key X`` / ``--key.class_path X`` or
    ``--config FILE`` that sets it, else the parser's default."""
    action = _subclass_action(parser, key)
    chosen = _class_path(action.default) if action is not None else None
    config_flags = {s for a in getattr(parser, "_actions", []) if a.dest == "config" for s in a.option_strings}
    for i, token in enumerate(argv):
        flag, eq, inline = token.partition("=")
        value = inline if eq else (argv[i + 1] if i + 1 < len(argv) else None)
        if value is None:
            continue
        if flag in config_flags:
            found = _class_path(_config_section(value, key))
        elif flag in (f"--{key}", f"--{key}.class_path"):
            found = _class_path(value)
            if found and found.endswith((".yaml", ".yml", ".json")):  # --model FILE
                found = _class_path(_config_section(found, ""))
        else:
            continue
        chosen = found or chosen
    return chosen


def resolve_class(class_path: str | None, candidates: list[type]) -> type | None:
    """The class of ``class_path`` (a registered class's name or any import path), or None."""
    if not class_path:
        return None
    name = class_path.rpartition(".")[2]
    for cls in candidates:
        if class_path in (cls.__name__, f"{cls.__module__}.{cls.__name__}"):
            return cls
    if "." in class_path:
        try:
            found = getattr(importlib.import_module(class_path.rpartition(".")[0]), name)
            return found if isinstance(found, type) else None
        except Exception:  # noqa: BLE001 -- only a suggestion depends on it
            return None
    return None


def _linked(parser: Any, key: str) -> set[str]:
    """Init arguments of ``key`` set by ``link_arguments`` (not given on the command line)."""
    names = set()
    for action in getattr(parser, "_actions", []):
        if type(action).__name__ == "ActionLink":
            dest = action.dest
            for prefix in (f"{key}.init_args.", f"{key}."):
                if dest.startswith(prefix):
                    names.add(dest[len(prefix):])
                    break
    return names


def subclass_arguments(parser: Any, key: str, argv: list[str]) -> tuple[type | None, dict[str, list[type]]]:
    """The chosen class of a subclass-mode ``key`` and, per init argument name, the classes that
    take it: the chosen class's, or those of every registered class when it cannot be told."""
    from oneshot.algorithms import accepted_arguments

    action = _subclass_action(parser, key)
    if action is None:
        return None, {}
    candidates = registered_classes(_base_classes(action))
    chosen = resolve_class(chosen_class_path(parser, key, argv), candidates)
    linked = _linked(parser, key)
    takers: dict[str, list[type]] = {}
    for cls in ([chosen] if chosen is not None else []) + [c for c in candidates if c is not chosen]:
        try:
            names = accepted_arguments(cls)
        except (TypeError, ValueError):
            continue
        for name in sorted(names - linked):
            takers.setdefault(name, []).append(cls)
    return chosen, takers


def _typed_form(key: str, name: str, argv: list[str]) -> str | None:
    """How the user wrote ``key``'s init argument ``name`` on the command line, or None (a config)."""
    for form in (f"--{key}.{name}", f"--{key}.init_args.{name}"):
        if any(token.split("=", 1)[0] == form for token in argv):
            return form
    return None


def unknown_subclass_option(parser: Any, key: str, name: str, argv: list[str]) -> str:
    """``--model.learning_rat``: the closest init argument of the chosen class (else of any)."""
    chosen, takers = subclass_arguments(parser, key, argv)
    typed = _typed_form(key, name, argv)
    form = typed or f"--{key}.{name}"
    prefix = form[: -len(name)]
    own = [n for n, classes in takers.items() if chosen is None or chosen in classes]
    near = difflib.get_close_matches(name, own, n=1, cutoff=0.7)
    where = f" for {chosen.__name__}" if chosen is not None else ""
    if typed is None:
        subject = f"unknown key {form.lstrip('-')}{where} in the config"
        prefix = prefix.lstrip("-")
    else:
        subject = f"unknown option {form}{where}"
    if near:
        return f"{subject}; did you mean {prefix}{near[0]}? {_help_hint(parser.prog)}"
    other = difflib.get_close_matches(name, [n for n in takers if n not in own], n=1, cutoff=0.7)
    if other:
        owner = takers[other[0]][0].__name__
        return (f"{subject}; {owner} takes {prefix}{other[0]} (choose it with --{key} {owner}) "
                f"{_help_hint(parser.prog)}")
    return f"{subject} {_help_hint(parser.prog)}"


def unknown_class(parser: Any, key: str, value: str, argv: list[str]) -> str:
    """``--model GdasSerch``: the closest registered class."""
    action = _subclass_action(parser, key)
    candidates = registered_classes(_base_classes(action)) if action is not None else []
    names = [cls.__name__ for cls in candidates]
    near = difflib.get_close_matches(value.rpartition(".")[2], names, n=1, cutoff=0.6)
    text = f"unknown class --{key} {value}"
    if near:
        text += f"; did you mean --{key} {near[0]}?"
    if names:
        text += f" (one of {', '.join(names)})"
    return text


def _block(message: str, key: str) -> str:
    """The lines indented under the last ``Parser key "key":`` of a jsonargparse message, dedented."""
    lines = message.splitlines()
    header = max(i for i, line in enumerate(lines) if f'Parser key "{key}":' in line)
    indent = len(lines[header]) - len(lines[header].lstrip())
    block = [lines[header].split(f'Parser key "{key}":', 1)[1]]
    for line in lines[header + 1:]:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        block.append(line)
    text = "\n".join(block)
    depth = min((len(b) - len(b.lstrip()) for b in block[1:] if b.strip()), default=0)
    return "\n".join(b[depth:] for b in text.splitlines()).strip()


def _expected_type(text: str) -> str:
    """``<class 'int'>`` -> ``int``; ``typing.Literal['a', 'b']`` -> ``'a', 'b'``."""
    text = _type_names(text, expression=True)
    literal = re.fullmatch(r"Literal\[(.*)\]", text)
    return literal.group(1) if literal else text


def _value_problem(option: str, block: str) -> str:
    """One line for a bad value: ``invalid value 'abc' for --trainer.max_epochs: expected int or None``."""
    flat = " ".join(block.split())
    union = "Does not validate against any of the Union subtypes"
    if union in block:  # after "- Expected a path but ... not accessible", when it was tried as a file
        block = block[block.index(union):]
        given = re.search(r"^Given value: (.*)$", block, re.M)
        value = given.group(1).strip() if given else None
        errors = block.split("Errors:", 1)[1] if "Errors:" in block else block
        errors = re.split(r"\n\s*Given value type:", errors, maxsplit=1)[0]
        types, others = [], []
        for item in re.split(r"\n\s*- ", "\n" + errors.strip()):
            item = " ".join(item.split())
            expected = re.fullmatch(r"Expected an? (<class '[\w.]+'>|[\w.]+(?:\[.*\])?)", item)
            if expected:
                types.append(_expected_type(expected.group(1)))
            elif item:
                others.append(_type_names(item))
        types, others = list(dict.fromkeys(types)), list(dict.fromkeys(others))
        if others:
            what = "; ".join(others)
        else:
            what = "expected " + (" or ".join(types) if len(types) <= 3 else "one of " + ", ".join(types))
        shown = f" {value!r}" if value is not None and not value.startswith("NestedArg(") else ""
        return f"invalid value{shown} for {option}: {what}"
    got = re.fullmatch(r"Expected an? (.+?)\. Got value: (.*)", flat)
    if got:
        return f"invalid value {got.group(2)!r} for {option}: expected {_expected_type(got.group(1))}"
    return f"{option}: {_type_names(flat)}"


def jsonargparse_message(parser: Any, message: str, argv: list[str]) -> str:
    """One line for a jsonargparse error of ``oneshot search`` / ``retrain``."""
    message = str(message)
    flat = " ".join(message.split())
    prog = parser.prog
    if flat.startswith("unrecognized arguments:"):
        options, others = _split_unrecognized(flat.partition(":")[2])
        if not options:
            return f"unexpected argument{'s' if len(others) > 1 else ''} {' '.join(others)} {_help_hint(prog)}"
        accepted = [s for s in all_option_strings(parser) if not s.endswith("+") and s != "--help"]
        for action in getattr(parser, "_actions", []):
            if _subclass_action(parser, action.dest) is action:
                _, takers = subclass_arguments(parser, action.dest, argv)
                accepted += [f"--{action.dest}.{name}" for name in takers]
        return unknown_options_message(options, accepted, prog)
    match = re.fullmatch(r"Group '([\w.]+)' does not accept option '([\w.]+)'", flat)
    if match:  # a config file's trainer.max_epoch
        group, name = match.groups()
        keys = [s[2:] for s in all_option_strings(parser) if s.startswith(f"--{group}.")]
        near = closest(f"{group}.{name}", keys)
        return (f"unknown key {group}.{name} in the config" + (f"; did you mean {near}?" if near else "")
                + f" {_help_hint(prog)}")
    match = re.fullmatch(r"Option '([\w.]+)' is not accepted", flat)
    if match:  # a config file's unknown top-level key
        keys = [s[2:] for s in all_option_strings(parser)]
        near = closest(match.group(1), keys)
        return (f"unknown key {match.group(1)} in the config" + (f"; did you mean {near}?" if near else "")
                + f" {_help_hint(prog)}")
    keys = re.findall(r'Parser key "([^"]+)"', message)
    if not keys:
        return _type_names(flat)
    key = keys[0]
    unknown = re.search(r"Option '([\w.]+)' is not accepted", message)
    if unknown:
        if _subclass_action(parser, key) is not None:
            return unknown_subclass_option(parser, key, unknown.group(1), argv)
        form = _typed_form(key, unknown.group(1), argv) or f"--{key}.{unknown.group(1)}"
        return f"unknown option {form} {_help_hint(prog)}"
    action = _subclass_action(parser, key)
    bad_class = re.search(r"Expected a dot import path string: (\S+)|Problem with given class_path '([^']+)'"
                          r"|Import path (\S+) does not", message)
    if bad_class and action is not None and len(keys) == 1:
        value = next(g for g in bad_class.groups() if g)
        if resolve_class(value, registered_classes(_base_classes(action))) is None:
            return unknown_class(parser, key, value, argv)
    if len(keys) > 1:  # a bad init argument: Parser key "model" ... Parser key "learning_rate"
        option = _typed_form(key, keys[1], argv) or "--" + ".".join(dict.fromkeys(keys))
        return _value_problem(option, _block(message, keys[-1]))
    return _value_problem(f"--{key}", _block(message, key))


def lightning_cli_class() -> type:
    """LightningCLI whose parser reports a bad option in one line with the closest accepted one."""
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    class OneLineLightningParser(LightningArgumentParser):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("allow_abbrev", False)  # --trainer.max_epoch is a typo, not max_epochs
            super().__init__(*args, **kwargs)

        def parse_args(self, args: Any = None, *rest: Any, **kwargs: Any) -> Any:
            self._oneline_argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
            return super().parse_args(args, *rest, **kwargs)

        def error(self, message: str, ex: Exception | None = None) -> NoReturn:
            if not self.exit_on_error:  # a nested parser: its parent reports the error
                super().error(message, ex)
            raise UserError(jsonargparse_message(self, message, getattr(self, "_oneline_argv", []))) from None

    class OneLineLightningCLI(LightningCLI):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("parser_class", OneLineLightningParser)
            super().__init__(*args, **kwargs)

        def instantiate_trainer(self, **kwargs: Any) -> Any:
            """The trainer, writing its checkpoints atomically (a kill mid-write keeps the last one)."""
            from oneshot.checkpoints import AtomicCheckpointIO

            trainer = super().instantiate_trainer(**kwargs)
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
            return trainer

    return OneLineLightningCLI
