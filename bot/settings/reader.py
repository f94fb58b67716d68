"""Reads typed values out of the config file's TOML tables, recording a Problem for each fault."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar

from bot.settings.values import currency_exponent, parse_amount

_T = TypeVar("_T")
Fields = dict[str, tuple[object, str]]  # key -> (raw value, dotted key it came from)


@dataclass(frozen=True)
class Problem:
    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}" if self.key else f"{self.file}: {self.message}"


class ConfigError(Exception):
    """The environment or the config file is invalid; `problems` holds every fault found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


_KINDS: dict[type, str] = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
_KINDS.update({dict: "a table", list: "an array"})


def kind_name(value: object) -> str:
    return _KINDS.get(type(value), type(value).__name__)


class Reader:
    """Reads typed values out of TOML tables, recording a Problem for each fault and carrying on."""

    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.problems: list[Problem] = []

    def add(self, key: str, message: str) -> None:
        problem = Problem(self.file, key, message)
        # [defaults] values are checked once per category; report each fault once.
        if problem not in self.problems:
            self.problems.append(problem)

    def fields(self, table: object, prefix: str, allowed: Sequence[str]) -> Fields:
        if not isinstance(table, dict):
            self.add(prefix, f"expected a table, got {kind_name(table)}")
            return {}
        out: Fields = {}
        for name, value in table.items():
            key = f"{prefix}.{name}" if prefix else name
            if name in allowed:
                out[name] = (value, key)
            else:
                close = difflib.get_close_matches(name, allowed, n=1)
                self.add(key, "unknown key" + (f" (did you mean {close[0]!r}?)" if close else ""))
        return out

    def section(self, top: Fields, name: str, allowed: Sequence[str]) -> Fields:
        return self.fields(top[name][0], name, allowed) if name in top else {}

    def typed(self, fields: Fields, name: str, kind: type[_T]) -> _T | None:
        if name not in fields:
            return None
        value, key = fields[name]
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value
        self.add(key, f"expected {_KINDS[kind]}, got {kind_name(value)}")
        return None

    def parsed(self, fields: Fields, name: str, parse: Callable[[str], _T]) -> _T | None:
        text = self.typed(fields, name, str)
        return None if text is None else self._apply(parse, text, fields[name][1])

    def listed(self, fields: Fields, name: str, parse: Callable[[str], _T]) -> list[_T] | None:
        items = self.typed(fields, name, list)
        if items is None:
            return None
        key = fields[name][1]
        if not all(isinstance(item, str) for item in items):
            self.add(key, "expected an array of strings")
            return None
        return [v for item in items if (v := self._apply(parse, item, key)) is not None]

    def _apply(self, parse: Callable[[str], _T], text: str, key: str) -> _T | None:
        try:
            return parse(text)
        except ValueError as error:
            self.add(key, str(error))
            return None

    def count(self, fields: Fields, name: str) -> int | None:
        value = self.typed(fields, name, int)
        if value is not None and value <= 0:
            self.add(fields[name][1], f"must be a positive integer, got {value}")
            return None
        return value

    def amount(self, fields: Fields, name: str, currency: str | None) -> Decimal | None:
        if name not in fields:
            return None
        value, key = fields[name]
        if isinstance(value, float):
            self.add(key, 'write amounts as strings, e.g. "500.00", floats lose cents')
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            amount: Decimal | None = Decimal(value)
        else:
            amount = self.parsed(fields, name, parse_amount)
        if amount is None:
            return None
        exponent = amount.as_tuple().exponent
        if amount <= 0:
            self.add(key, f"must be greater than 0, got {value!r}")
        elif currency and isinstance(exponent, int) and -exponent > currency_exponent(currency):
            places = currency_exponent(currency)
            self.add(key, f"{currency} amounts have at most {places} decimal places: {value!r}")
        else:
            return amount
        return None
