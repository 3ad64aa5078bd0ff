"""Typed options for every script: a dataclass schema, YAML selects, CLI overrides, typos fail.

    cfg = parse_config(Schema, argv)    # --config, --print-config, --some-flag / --some_flag, --no-flag

Values come from, in increasing precedence: the schema's defaults, `--config FILE.yaml`, command-line flags.
Unknown keys (YAML or CLI) and values of the wrong type are rejected with a one-line error naming the key.
Flags accept dashes or underscores; booleans are negatable (`--compile` / `--no-compile`); Optional values
accept `none`; lists take several values (`--budgets 1 0.5 0.25`). `--print-config` prints the resolved
YAML and exits. The resolved config is saved beside every run (`save_config`). This module knows nothing of
models or data: each schema lives beside the code it configures (`training/options.py`, `sampling/options.py`,
`dataio/options.py`, `evaluation/options.py`, `studies/options.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import sys
import types
import typing
from dataclasses import field
from typing import Literal

import yaml

from utils.atomic import write_text
from utils.errors import UserError


def opt(default, help: str = "", **kw):
    """A schema field with its --help text; list defaults are copied per instance."""
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def _base_type(tp):
    """Optional[X] -> (X, True); X -> (X, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _check_value(name: str, value, tp):
    """Validate (and lightly coerce: int -> float) a YAML/CLI value against the field type."""
    base, optional = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise UserError(f"config key '{name}' may not be null")
    origin = typing.get_origin(base)
    if origin is Literal:
        choices = typing.get_args(base)
        if value not in choices:
            raise UserError(f"config key '{name}' must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin is list:
        (item,) = typing.get_args(base)
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_check_value(name, v, item) for v in value]
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
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise UserError(f"config key '{name}' must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} for {name}")


def _parse_scalar(text: str, tp, name: str):
    """A CLI token -> a value of the field's type."""
    base, optional = _base_type(tp)
    if optional and text.lower() in ("none", "null"):
        return None
    if typing.get_origin(base) is Literal:
        return text
    try:
        if base is int:
            return int(text)
        if base is float:
            return float(text)
    except ValueError:
        raise UserError(f"--{name.replace('_', '-')} expects {base.__name__}, got {text!r}") from None
    return text


class _Parser(argparse.ArgumentParser):
    def error(self, message):                               # one line, exit 2 (argparse prints usage first)
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def build_parser(schema: type, description: str = "") -> argparse.ArgumentParser:
    parser = _Parser(description=description or schema.__doc__, argument_default=argparse.SUPPRESS,
                     allow_abbrev=False)
    parser.add_argument("--config", help="YAML file of options (CLI flags override it)")
    parser.add_argument("--print-config", "--print_config", action="store_true", help="print the resolved config and exit")
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        tp = hints[f.name]
        base, optional = _base_type(tp)
        names = [f"--{f.name.replace('_', '-')}"] + ([f"--{f.name}"] if "_" in f.name else [])
        kw = dict(dest=f.name, help=f.metadata.get("help", ""))
        if base is bool:
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(base) is list:
            parser.add_argument(*names, nargs="+", metavar="V", **kw)
        else:
            metavar = "{" + ",".join(typing.get_args(base)) + "}" if typing.get_origin(base) is Literal else None
            parser.add_argument(*names, metavar=metavar, **kw)
    return parser


def parse_config(schema: type, argv=None, description: str = ""):
    """defaults < YAML (--config) < CLI flags -> a validated `schema` instance."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = vars(build_parser(schema, description).parse_args(argv))
    hints = typing.get_type_hints(schema)
    names = [f.name for f in dataclasses.fields(schema)]
    values = {}
    path = args.pop("config", None)
    show = args.pop("print_config", False)
    if path:
        values.update(load_yaml(path, names))
    for name, raw in args.items():
        tp = hints[name]
        base, _ = _base_type(tp)
        if typing.get_origin(base) is list:
            (item,) = typing.get_args(base)
            if len(raw) == 1 and raw[0].lower() in ("none", "null"):
                raw = None
            else:
                raw = [_parse_scalar(tok, item, name) for tok in raw]
        elif base is not bool:
            raw = _parse_scalar(raw, tp, name)
        values[name] = raw
    checked = {name: _check_value(name, value, hints[name]) for name, value in values.items()}
    cfg = schema(**checked)
    if show:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        sys.exit(0)
    return cfg


def load_yaml(path: str, names) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise UserError(f"cannot parse {path}: {str(e).splitlines()[0]}")
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of option: value")
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"unknown config key '{key}' in {path}{hint}")
    return data


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str) -> None:
    """Write the resolved config as YAML (atomically)."""
    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
