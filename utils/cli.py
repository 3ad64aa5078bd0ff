"""Typed options for every script: a dataclass schema, YAML selects, CLI overrides, typos fail.

    cfg = parse_config(Schema, argv)    # --config A.yaml [--config B.yaml], --print-config, --flag / --no-flag

Values come from, in increasing precedence: the schema's defaults, each `--config FILE.yaml` in the order
given (a later file overrides an earlier one), command-line flags. Flags accept dashes or underscores (so do
YAML keys); booleans are negatable (`--compile` / `--no-compile`); Optional values accept `none`; lists take
several values (`--budgets 1 0.5 0.25`); a field typed `Union[int, Literal["auto"]]` takes either (`--resume-step
auto`, `--resume-step -1`). `--print-config` prints the resolved YAML and exits; `save_config`
writes it beside every run. This module knows nothing of models or data: each schema lives beside the code
it configures (`training/options.py`, `sampling/options.py`, ...).

Strictness, each a one-line `UserError` naming the key: unknown keys (with a "did you mean" hint only for a
real near-miss), values of the wrong type, NaN or infinite floats (unless the field says `finite=False`),
values outside a field's range (`opt(100, "...", ge=1)`, `gt=0`, `le=1`, `lt=1`; `min`/`max` mean ge/le),
a key written twice in one YAML file, a flag repeated with different values (identical repeats are fine),
a file that is not UTF-8 YAML.

Foreign vocabularies (`utils/vocabulary.py`): a schema may carry `reference_keys`, another code base's option
names (aliases, refusals, expectations checked later); they work as YAML keys and as flags, and an alias given
with its target in one source with different values is an error. Extra YAML flags of such a table (generate's
`--eval-config`) layer like `--config`, or import only listed keys below every `--config` (`--train-config`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import re
import sys
import types
import typing
from dataclasses import field
from typing import Literal, Optional

import yaml

from utils.atomic import write_text
from utils.errors import UserError
from utils.vocabulary import EXPECTATIONS, Layer, entry_help, translate, vocabulary
from utils.vocabulary import reference_expectations  # noqa: F401  (re-exported: callers check expectations)

_BOUND_NAMES = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def opt(default, help: str = "", *, ge=None, gt=None, le=None, lt=None, min=None, max=None, finite: bool = True,
        **kw):
    """A schema field with its --help text, an optional range (checked by parse_config) and, for floats, whether
    NaN / infinity are allowed. List defaults are copied per instance; a range applies to each list item."""
    bounds = {k: v for k, v in dict(ge=ge if min is None else min, gt=gt, le=le if max is None else max,
                                     lt=lt).items() if v is not None}
    meta = {"help": help + (f" [{_describe(bounds)}]" if bounds else ""), "bounds": bounds, "finite": finite}
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


def _describe(bounds: dict) -> str:
    """{'gt': 0, 'le': 1} -> 'in (0, 1]'; {'ge': 1} -> '>= 1'."""
    low = [(k, v) for k, v in bounds.items() if k in ("ge", "gt")]
    high = [(k, v) for k, v in bounds.items() if k in ("le", "lt")]
    if low and high:
        (lk, lv), (hk, hv) = low[0], high[0]
        return f"in {'[' if lk == 'ge' else '('}{lv}, {hv}{']' if hk == 'le' else ')'}"
    return ", ".join(f"{_BOUND_NAMES[k]} {v}" for k, v in bounds.items())


# ----------------------------------------------------------------------------------------------------------
# Values.

def _base_type(tp):
    """Optional[X] -> (X, True); X -> (X, False); Union[int, Literal['auto']] stays a union (tried in order)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), type(None) in typing.get_args(tp)
    return tp, False


def _check_value(name: str, value, tp, finite: bool = True):
    """Validate (and lightly coerce: int -> float) a YAML/CLI value against the field type."""
    base, optional = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise UserError(f"config key '{name}' may not be null")
    origin = typing.get_origin(base)
    if origin is typing.Union:                              # e.g. resume_step: an int or 'auto'
        for option in typing.get_args(base):
            try:
                return _check_value(name, value, option, finite)
            except UserError:
                pass
        raise UserError(f"config key '{name}' must be {' or '.join(_type_name(a) for a in typing.get_args(base))}, "
                        f"got {value!r}")
    if origin is Literal:
        choices = typing.get_args(base)
        if value not in choices:
            raise UserError(f"config key '{name}' must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin is list:
        (item,) = typing.get_args(base)
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_check_value(name, v, item, finite) for v in value]
    if base is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key '{name}' must be true or false, got {value!r}")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"config key '{name}' must be an integer, got {value!r}")
        return value
    if base is float:
        if isinstance(value, str):                          # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config key '{name}' must be a number, got {value!r}")
        if finite and not math.isfinite(value):
            raise UserError(f"config key '{name}' must be a finite number, got {value!r}")
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise UserError(f"config key '{name}' must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} for {name}")


def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return " or ".join(map(repr, typing.get_args(tp)))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


_OPS = {"ge": lambda v, b: v >= b, "gt": lambda v, b: v > b, "le": lambda v, b: v <= b, "lt": lambda v, b: v < b}


def _check_bounds(name: str, value, bounds: dict) -> None:
    """A field's range, checked on every value given (each item of a list)."""
    if not bounds or value is None:
        return
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, str):                              # the word of an int-or-word field ('auto')
            continue
        if not all(_OPS[k](v, b) for k, b in bounds.items()):
            raise UserError(f"config key '{name}' must be {_describe(bounds)}, got {v!r}")


def _parse_scalar(text: str, tp, name: str):
    """A CLI token -> a value of the field's type."""
    base, optional = _base_type(tp)
    if optional and text.lower() in ("none", "null"):
        return None
    if typing.get_origin(base) is Literal:
        return text
    if typing.get_origin(base) is typing.Union:              # int or a word: the int when it reads as one
        try:
            return int(text) if int in typing.get_args(base) else text
        except ValueError:
            return text
    try:
        if base is int:
            return int(text)
        if base is float:
            return float(text)
    except ValueError:
        raise UserError(f"--{name.replace('_', '-')} expects {base.__name__}, got {text!r}") from None
    return text


def _cli_value(name: str, raw, tp, meta):
    base, optional = _base_type(tp)
    if base is bool:
        return raw
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        if len(raw) == 1 and raw[0].lower() in ("none", "null"):
            value = None
        else:
            value = [_parse_scalar(tok, item, name) for tok in raw]
    else:
        value = _parse_scalar(raw, tp, name)
    return _check_value(name, value, tp, meta.get("finite", True))


def _near_miss(key: str, names) -> Optional[str]:
    """The name `key` was meant to be, for a real near-miss only: ratio >= 0.85, or the start of one name."""
    close = difflib.get_close_matches(key, list(names), n=1, cutoff=0.85)
    starts = [n for n in names if len(key) >= 4 and n.startswith(key)]
    return close[0] if close else (starts[0] if len(starts) == 1 else None)


def _hint(key: str, names) -> str:
    best = _near_miss(key, names)
    return f" (did you mean '{best}'?)" if best else ""


# ----------------------------------------------------------------------------------------------------------
# The command line.

class _Record(argparse.Action):
    """Keep every occurrence (option string, value): repeats are compared later, layers kept in order."""
    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, getattr(namespace, self.dest, []) + [(option_string, values)])


class _RecordBool(argparse.BooleanOptionalAction):
    """--flag / --no-flag, every occurrence kept like _Record."""
    def __call__(self, parser, namespace, values, option_string=None):
        value = not option_string.startswith("--no-")
        setattr(namespace, self.dest, getattr(namespace, self.dest, []) + [(option_string, value)])


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (a near-miss hint for an unknown flag) and negative numbers as values."""
    names: tuple = ()                                       # every accepted option name, for the hint

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        # argparse takes '-1e-4' or '-inf' for an option (its pattern knows only -1 and -1.5): a value it is
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$|^-inf$", re.IGNORECASE)

    def error(self, message):                               # one line, exit 2 (argparse prints usage first)
        if message.startswith("unrecognized arguments:"):
            flag = next((t for t in message.split(":", 1)[1].split() if t.startswith("--")), "--")
            best = _near_miss(flag[2:].split("=")[0].replace("-", "_"), self.names)
            message += f" (did you mean --{best.replace('_', '-')}?)" if best else ""
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def _flags(name: str) -> list[str]:
    return [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])


def build_parser(schema: type, description: str = "") -> argparse.ArgumentParser:
    parser = _Parser(description=description or schema.__doc__, argument_default=argparse.SUPPRESS,
                     allow_abbrev=False)
    vocab = vocabulary(schema)
    parser.names = tuple(vocab)
    keys = getattr(schema, "reference_keys", None)
    parser.add_argument("--config", action=_Record, dest="config", metavar="YAML",
                        help="YAML file of options; repeat to layer files (later ones override); CLI flags override all")
    for name, only in (keys.config_flags.items() if keys else ()):
        default = "a YAML layered like --config" if only is None else "a YAML of which only some keys are read"
        parser.add_argument(*_flags(name), action=_Record, dest="config" if only is None else f"config:{name}",
                            metavar="YAML", help="reference option: " + keys.config_help.get(name, default))
    parser.add_argument("--print-config", "--print_config", action="store_true", help="print the resolved config and exit")
    group = parser.add_argument_group("reference names (the public ELIT code's options)") if keys else parser
    for name, (tp, entry, meta) in vocab.items():
        base, _ = _base_type(tp)
        target = parser if entry is None else group
        kw = dict(dest=name, help=meta.get("help", "") if entry is None else entry_help(entry))
        if base is bool:
            target.add_argument(*_flags(name), action=_RecordBool, **kw)
        elif typing.get_origin(base) is list:
            target.add_argument(*_flags(name), action=_Record, nargs="+", metavar="V", **kw)
        else:
            metavar = "{" + ",".join(map(str, typing.get_args(base))) + "}" if typing.get_origin(base) is Literal else None
            target.add_argument(*_flags(name), action=_Record, metavar=metavar, **kw)
    return parser


# ----------------------------------------------------------------------------------------------------------
# Parsing.

def _yaml_layer(path: str, vocab: dict, only: Optional[frozenset] = None) -> Layer:
    data = load_yaml(path)
    items = []
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if only is not None and name not in only:
            continue                                        # e.g. the training settings of a train YAML
        if name not in vocab:
            raise UserError(f"unknown config key '{key}' in {path}{_hint(name, vocab)}")
        tp, _, meta = vocab[name]
        items.append((name, f"'{key}'", _check_value(name, value, tp, meta.get("finite", True))))
    return translate(items, vocab, f"in {path}")


def _defaults(schema: type) -> dict:
    out = {}
    for f in dataclasses.fields(schema):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _shown(flag: str, raw) -> str:
    """How an occurrence was typed: '--no-compile', '--num-steps 3', '--budgets 1 0.5'."""
    return flag if isinstance(raw, bool) else f"{flag} {' '.join(raw) if isinstance(raw, list) else raw}"


def parse_config(schema: type, argv=None, description: str = ""):
    """defaults < each --config YAML in order < CLI flags -> a validated `schema` instance."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = vars(build_parser(schema, description).parse_args(argv))
    vocab = vocabulary(schema)
    hints = typing.get_type_hints(schema)
    keys = getattr(schema, "reference_keys", None)
    show = args.pop("print_config", False)
    layers = []
    for name, only in (keys.config_flags.items() if keys else ()):
        layers += [_yaml_layer(path, vocab, only) for _, path in args.pop(f"config:{name}", [])]
    layers += [_yaml_layer(path, vocab) for _, path in args.pop("config", [])]
    items = []
    for name, seen in args.items():
        tp, _, meta = vocab[name]
        parsed = [(flag, raw, _cli_value(name, raw, tp, meta)) for flag, raw in seen]
        for flag, raw, value in parsed[1:]:
            if value != parsed[0][2]:
                raise UserError(f"conflicting repeats of --{name.replace('_', '-')}: '{_shown(*parsed[0][:2])}' and "
                                f"'{_shown(flag, raw)}' (give it once)")
        items.append((name, parsed[0][0], parsed[0][2]))
    layers.append(translate(items, vocab, "on the command line"))

    given, expect, derived = {}, {}, {}
    for i, layer in enumerate(layers):
        given.update({k: (i, v, layer.spelled[k]) for k, v in layer.values.items()})
        expect.update(layer.expect)
        derived.update({k: (i,) + v for k, v in layer.derived.items()})
    resolved = dict(_defaults(schema), **{k: v for k, (_, v, _) in given.items()})
    for name in (keys.entries if keys else ()):
        if name not in derived:
            continue
        i, value, spelled = derived[name]
        for target, new in vocab[name][1].fn(value, dict(resolved)).items():
            new = _check_value(target, new, hints[target])
            j = given.get(target, (-1,))[0]
            if j > i:
                continue                                    # set explicitly in a later source: it wins
            if j == i and given[target][1] != new:
                raise UserError(f"{given[target][2]} and {spelled} set the same option '{target}' to different "
                                f"values ({given[target][1]!r} and {new!r}) {layers[i].source}: give it once")
            given[target] = (i, new, spelled)
            resolved[target] = new
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for name, (_, value, _) in given.items():
        _check_bounds(name, value, fields[name].metadata.get("bounds", {}))
    cfg = schema(**{k: v for k, (_, v, _) in given.items()})
    if expect:
        object.__setattr__(cfg, EXPECTATIONS, expect)
    if show:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        sys.exit(0)
    return cfg


# ----------------------------------------------------------------------------------------------------------
# YAML.

class _DuplicateKey(Exception):
    """A mapping key written twice (its message has a {path} placeholder)."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping key written twice (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and not key_node.tag.endswith(":merge"):
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise _DuplicateKey(f"config key '{key}' is written twice in {{path}} (lines {seen[key]} and "
                                        f"{key_node.start_mark.line + 1}): keep one")
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str, names=None) -> dict:
    """A YAML mapping of options, strictly read; with `names`, unknown keys are refused (with a near-miss hint)."""
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_StrictLoader) or {}
    except UnicodeDecodeError:
        raise UserError(f"cannot read {path}: not a UTF-8 text file (expected a YAML file of options)") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    except _DuplicateKey as e:
        raise UserError(str(e).replace("{path}", path)) from None
    except yaml.YAMLError as e:
        raise UserError(f"cannot parse {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of option: value")
    for key in data if names is not None else ():
        if key not in names:
            raise UserError(f"unknown config key '{key}' in {path}{_hint(str(key), names)}")
    return data


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str) -> None:
    """Write the resolved config as YAML (atomically)."""
    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
