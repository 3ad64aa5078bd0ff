"""Foreign vocabularies of a schema: another code base's option names mapped onto ours (used by utils/cli.py).

A schema carries `reference_keys = ReferenceKeys({...})` as a plain class attribute (not a field). Each
foreign name is one of:
    Alias(target, convert)   another name of our option `target` (values optionally translated)
    Refuse(reason, accept)   not offered: one line saying why and what to use; values in `accept` are no-ops
    Ignore(note)             accepted without effect here (the note says why the meaning is kept)
    Expect(type)             a value fixed by something the parser cannot see (e.g. the checkpoint), kept in
                             `reference_expectations(cfg)` for the caller to check
    Derive(fn, type)         sets our options as a function of its value and the other resolved options
A foreign name that is also a field of the schema is the field (an Alias onto itself only translates values);
an Alias whose target the schema lacks is not offered. `config_flags` adds YAML flags: None = layered like
--config; a set of names = only those keys are read, below every --config (generate's --train-config).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, Mapping, Optional

from utils.errors import UserError


@dataclasses.dataclass(frozen=True)
class Alias:
    """Another name of our option `target`; `convert` translates its values (e.g. 'ema' -> a hub id)."""
    target: str
    convert: Optional[Callable[[Any], Any]] = None
    note: str = ""                      # what differs, shown in --help
    type: Any = None                    # the foreign value's type (default: the target field's)


@dataclasses.dataclass(frozen=True)
class Refuse:
    """An option we do not offer: `reason` says why and what to use instead; values in `accept` are no-ops."""
    reason: str
    type: Any = str
    accept: tuple = ()


@dataclasses.dataclass(frozen=True)
class Ignore:
    """An option accepted without effect here (`note` says why that keeps the meaning)."""
    note: str
    type: Any = str


@dataclasses.dataclass(frozen=True)
class Expect:
    """A value fixed by something parse_config cannot see; stored in `reference_expectations(cfg)` for a check."""
    type: Any
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Derive:
    """`fn(value, resolved options) -> {our option: value}`; raises UserError for a combination we cannot map."""
    fn: Callable[[Any, dict], dict]
    type: Any
    note: str = ""


@dataclasses.dataclass(frozen=True)
class ReferenceKeys:
    """A schema's foreign vocabulary (see the module docstring)."""
    entries: Mapping[str, Any]
    config_flags: Mapping[str, Optional[frozenset]] = dataclasses.field(default_factory=dict)
    config_help: Mapping[str, str] = dataclasses.field(default_factory=dict)     # --help of each config flag


EXPECTATIONS = "_reference_expectations"           # instance attribute set by parse_config (not a field)


def reference_expectations(cfg) -> dict:
    """The `Expect` values the user gave (name -> value), for the caller to check. They live on the instance
    parse_config returned (not a field: not saved, not in to_dict); a dataclasses.replace copy drops them."""
    return dict(getattr(cfg, EXPECTATIONS, {}))


def vocabulary(schema: type) -> dict:
    """Every accepted name -> (type, entry or None for a field, field metadata)."""
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    vocab = {name: (hints[name], None, f.metadata) for name, f in fields.items()}
    keys = getattr(schema, "reference_keys", None)
    for name, entry in (keys.entries.items() if keys else ()):
        if isinstance(entry, Alias):
            if entry.target not in fields or (name in fields and name != entry.target):
                continue                                    # no such option here, or our own field of that name
            vocab[name] = (entry.type or hints[entry.target], entry, fields[entry.target].metadata)
        elif name not in fields:
            vocab[name] = (entry.type, entry, {})
    return vocab


def entry_help(entry) -> str:
    """The --help line of a foreign name."""
    if isinstance(entry, Alias):
        return f"reference name of --{entry.target.replace('_', '-')}" + (f"; {entry.note}" if entry.note else "")
    if isinstance(entry, Refuse):
        accepted = "/".join("none" if a is None else str(a).lower() if isinstance(a, bool) else str(a)
                            for a in entry.accept)
        return f"reference option, {'only ' + accepted + ' accepted' if accepted else 'not supported'}: {entry.reason}"
    return f"reference option: {entry.note}"


@dataclasses.dataclass
class Layer:
    """One source of values (a YAML file or the command line), translated to our names."""
    source: str                                                 # 'in FILE' or 'on the command line'
    values: dict = dataclasses.field(default_factory=dict)      # our field -> value
    spelled: dict = dataclasses.field(default_factory=dict)     # our field -> how the user wrote it
    expect: dict = dataclasses.field(default_factory=dict)
    derived: dict = dataclasses.field(default_factory=dict)

    def put(self, name: str, value, spelled: str) -> None:
        if name in self.values and self.values[name] != value:
            raise UserError(f"{self.spelled[name]} and {spelled} set the same option '{name}' to different values "
                            f"({self.values[name]!r} and {value!r}) {self.source}: give it once")
        self.values[name], self.spelled[name] = value, spelled


def translate(items, vocab: dict, source: str) -> Layer:
    """items: (name, spelled, value) with values already type-checked -> a layer in our names."""
    layer = Layer(source)
    for name, spelled, value in items:
        _, entry, _ = vocab[name]
        if entry is None:
            layer.put(name, value, spelled)
        elif isinstance(entry, Alias):
            layer.put(entry.target, entry.convert(value) if entry.convert else value, spelled)
        elif isinstance(entry, Refuse):
            if not any(value == a and type(value) is type(a) for a in entry.accept):
                where = (spelled if isinstance(value, bool) else f"{spelled} {value!r}") if spelled.startswith("--") \
                    else f"config key {spelled} = {value!r} {source}"
                raise UserError(f"{where} is not supported: {entry.reason}")
        elif isinstance(entry, Expect):
            layer.expect[name] = value
        elif isinstance(entry, Derive):
            layer.derived[name] = (value, spelled)
    return layer
