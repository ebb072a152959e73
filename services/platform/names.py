"""Resource names by pattern (AIP-122): one parser and formatter for every service's `domain/names.py`.

A pattern alternates collection ids and `{variable}` id segments:

    SESSION = ResourcePattern("organizations/{organization}/tasks/{task}/sessions/{session}")
    SESSION.parse("organizations/acme/tasks/t1/sessions/s1")      → ("acme", "t1", "s1")
    SESSION.format("acme", "t1", "s1")                             → "organizations/acme/tasks/t1/sessions/s1"

Each id segment is checked by one `IdRule`: the one the service names for that variable, else the
pattern's default (`ID`). A name that does not match raises `InvalidArgument` naming the request field
and the expected pattern, in the service's error domain and with its reason.

Pure: no I/O; imports nothing but the error types (the domain layer uses it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.platform.errors import InvalidArgument

_VARIABLE = re.compile(r"\{([a-z][a-z0-9_]*)\}")
_COLLECTION = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_SHOWN = 200  # characters of a bad name an error message repeats


@dataclass(frozen=True)
class IdRule:
    """What one id segment may be: a regular expression the whole segment must match, and the same
    rule in words for error messages ("1-63 of [a-z0-9-], ...")."""

    regex: str
    description: str
    _compiled: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", re.compile(self.regex))

    def matches(self, value: str) -> bool:
        # fullmatch: `$` in a plain match would let a trailing newline through.
        return self._compiled.fullmatch(value) is not None


def id_rule(max_length: int) -> IdRule:
    """The mesh's usual id: a letter or digit, then letters, digits, `.`, `_` or `-`; at most `max_length`."""
    return IdRule(
        rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{max_length - 1}}}",
        f"1-{max_length} letters, digits, '.', '_' or '-', starting with a letter or digit",
    )


ID = id_rule(128)
"""The default rule of an id segment."""


_PARSED_MAX = 4096  # names remembered per pattern (about 0.5 MB at most)


class ResourcePattern:
    """One resource-name pattern such as `organizations/{organization}/tasks/{task}`."""

    def __init__(
        self,
        pattern: str,
        *,
        rules: Mapping[str, IdRule] | None = None,
        default: IdRule = ID,
        domain: str = "foundry",
        reason: str | None = None,
    ) -> None:
        """`rules` maps a variable to its rule (others use `default`); `domain` and `reason` go on the
        InvalidArgument that `parse` raises. A malformed pattern is a programming error: ValueError."""
        segments: list[tuple[str, IdRule | None]] = []  # (collection id, None) or (variable, its rule)
        rules = dict(rules or {})
        for part in pattern.split("/"):
            variable = _VARIABLE.fullmatch(part)
            if variable is not None:
                name = variable.group(1)
                if any(rule is not None and seen == name for seen, rule in segments):
                    raise ValueError(f"resource pattern {pattern!r}: variable {{{name}}} appears twice")
                segments.append((name, rules.pop(name, default)))
            elif _COLLECTION.fullmatch(part):
                segments.append((part, None))
            else:
                raise ValueError(f"resource pattern {pattern!r}: bad segment {part!r}")
        if rules:
            raise ValueError(f"resource pattern {pattern!r} has no variable {sorted(rules)}")
        self.pattern = pattern
        self.domain = domain
        self.reason = reason
        self._segments = tuple(segments)
        self.variables: tuple[str, ...] = tuple(name for name, rule in segments if rule is not None)
        # Names that parsed, and their ids: a hot read parses the same few names on every call.
        self._parsed: dict[str, tuple[str, ...]] = {}

    def __repr__(self) -> str:
        return f"ResourcePattern({self.pattern!r})"

    def _problem(self, name: str) -> str | None:
        """Why `name` does not match, or None when it does."""
        parts = name.split("/")
        if len(parts) != len(self._segments):
            return ""
        for (segment, rule), part in zip(self._segments, parts, strict=True):
            if rule is None:
                if part != segment:
                    return ""
            elif not rule.matches(part):
                return f"{{{segment}}} must be {rule.description}"
        return None

    def match(self, name: str) -> tuple[str, ...] | None:
        """The ids of `name` in pattern order, or None if it does not match (for names that may be of
        another kind)."""
        if self._problem(name or "") is not None:
            return None
        return self._ids(name)

    def parse(self, name: str, field: str = "name") -> tuple[str, ...]:
        """The ids of `name` in pattern order; raises InvalidArgument naming `field` and the pattern."""
        name = name or ""
        ids = self._parsed.get(name)
        if ids is not None:
            return ids
        problem = self._problem(name)
        if problem is None:
            if len(self._parsed) >= _PARSED_MAX:
                self._parsed.clear()
            ids = self._parsed[name] = self._ids(name)
            return ids
        shown = repr(name) if len(name) <= _SHOWN else f"{name[:_SHOWN]!r}… ({len(name)} characters)"
        message = f"must look like {self.pattern}, got {shown}" + (f" ({problem})" if problem else "")
        raise InvalidArgument(
            f"{field}: {message}",
            reason=self.reason,
            domain=self.domain,
            field_violations={field: message},
        )

    def format(self, *ids: str | int, **named: str | int) -> str:
        """The name of these ids, given in pattern order or by variable. Ids are not checked (they are
        ours, not a caller's); `parse` of the result checks them."""
        if ids and named:
            raise TypeError(f"{self!r}.format: give ids in order or by name, not both")
        if named:
            unknown = sorted(set(named) - set(self.variables))
            missing = [v for v in self.variables if v not in named]
            if unknown or missing:
                raise TypeError(f"{self!r}.format: unknown {unknown}, missing {missing}")
            ids = tuple(named[v] for v in self.variables)
        if len(ids) != len(self.variables):
            raise TypeError(f"{self!r}.format takes {len(self.variables)} ids, got {len(ids)}")
        values = iter(ids)
        return "/".join(segment if rule is None else str(next(values)) for segment, rule in self._segments)

    def _ids(self, name: str) -> tuple[str, ...]:
        parts = name.split("/")
        return tuple(part for (_, rule), part in zip(self._segments, parts, strict=True) if rule is not None)
