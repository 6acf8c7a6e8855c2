"""The one bridge from a parsed command line to the harness's typed settings.

A settings record is a frozen dataclass whose fields are named as the options (argparse ``dest``s) they
hold; a field typed as another such record is filled from the same options, so records nest while the
command line stays flat. The benchmarks parse argv, turn it into their record here once, and pass records
on; ``run.json`` records :func:`options_of` the record, which are the command line's options again.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import TypeVar

Record = TypeVar("Record")


def record_from(record_type: type[Record], args: argparse.Namespace) -> Record:
    """``record_type`` filled from the options of its fields' names (other options are ignored)."""
    hints = typing.get_type_hints(record_type)
    values = {}
    for field in dataclasses.fields(record_type):
        nested = hints[field.name]
        values[field.name] = (record_from(nested, args) if dataclasses.is_dataclass(nested)
                              else getattr(args, field.name))
    return record_type(**values)


def settings_from(record_type: type[Record], args: argparse.Namespace) -> Record:
    """:func:`record_from`, for a whole command line: every option must land in some field (else it would
    be missing from ``run.json``), so an option without a field is refused."""
    record = record_from(record_type, args)
    unused = sorted(set(vars(args)) - set(options_of(record)))
    if unused:
        raise TypeError(f"{record_type.__name__} has no field for the options {', '.join(unused)}")
    return record


def options_of(record) -> dict:
    """The flat ``{option: value}`` a record holds (nested records' options included)."""
    out = {}
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        out.update(options_of(value) if dataclasses.is_dataclass(value) else {field.name: value})
    return out
