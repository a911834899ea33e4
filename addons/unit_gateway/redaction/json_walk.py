"""JSON documents walked as parsed (what mitmweb's JSON view shows): sensitive keys, path rules,
and the detectors over every other string, key and long number. Markers are strings even where
the value was a number or an object: the output is only shown or stored, and stays valid JSON."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from unit_gateway.config.redaction import PathRule
from unit_gateway.redaction.markers import FieldMarker, HeaderValue
from unit_gateway.redaction.readings import Rules
from unit_gateway.redaction.rules import Detectors

type _State = tuple[int, int]  # (path rule index, next segment index)

_UNSEEN: Any = object()
_CACHE_LIMIT = 100_000  # entries per walk: bounds memory on a body of unique strings
_CACHED_STRING_MAX = 256
#: Keys known across documents: an API's documents use the same few hundred keys over and
#: over. Bounded in count and length, so a document of unique keys (ids as keys) cannot grow
#: it; when full it is emptied, so the keys in use are learnt again.
_KNOWN_KEYS_LIMIT = 10_000
#: What json.dumps(…, ensure_ascii=False) builds on every call.
_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False)


@dataclass(slots=True)
class _Walk:
    """One JSON document's walk: what it redacted, and what it already found clean."""

    counts: Counter[str]
    clean: set[str]  # strings no rule changes


class JsonWalker:
    """Redacts JSON documents. ``json_keys`` maps a lower-case sensitive key to its name (a
    field, or one of ``header_keys``, whose values get ``header_value``); ``keyed_text`` is the
    key rules for text, for strings that hold ``key: value`` text."""

    def __init__(
        self,
        paths: Sequence[PathRule],
        json_keys: Mapping[str, str],
        header_keys: frozenset[str],
        detectors: Detectors,
        field_marker: FieldMarker,
        header_value: HeaderValue,
        keyed_text: Rules,
    ) -> None:
        self._paths = tuple(paths)
        self._root_states: tuple[_State, ...] = tuple(
            (i, 0) for i, rule in enumerate(self._paths) if not rule.floating
        )
        self._floating_states: tuple[_State, ...] = tuple(
            (i, 0) for i, rule in enumerate(self._paths) if rule.floating
        )
        self._json_keys = json_keys
        self._header_keys = header_keys
        self._detectors = detectors
        self._field_marker = field_marker
        self._header_value = header_value
        self._keyed_text = keyed_text
        #: JSON key no detector changes -> its field name, if it is one (see _KNOWN_KEYS_LIMIT)
        self.known_keys: dict[str, str | None] = {}

    def redact(self, data: bytes, counts: Counter[str]) -> bytes | None:
        """The document with every rule applied, re-serialized; None if it is not JSON.

        Always re-serialized, so what is shown is exactly what was checked (a duplicate key's
        earlier value, which the parser drops, cannot slip through in the original bytes)."""
        # orjson first, for speed; what it refuses (a BOM, lone surrogates, integers over 64
        # bits, deep nesting) takes the standard library's path.
        fast = True
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError:
            fast = False
            try:
                document = json.loads(data.decode("utf-8-sig"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                return None
        walk = _Walk(Counter(), set())
        try:
            redacted = self._walk(document, self._root_states, walk)
        except RecursionError:  # nested deeper than the interpreter allows: treat as text
            return None
        counts.update(walk.counts)
        if fast:
            try:
                return orjson.dumps(redacted)
            except orjson.JSONEncodeError:
                pass
        # backslashreplace turns a lone surrogate from "\ud800" back into a valid JSON escape
        return _JSON_ENCODER.encode(redacted).encode("utf-8", "backslashreplace")

    # The walk is the hot loop of a large body: it dispatches on exact types (json.loads makes
    # no subclasses) and remembers strings and keys it already found clean.

    def _walk(self, value: Any, states: tuple[_State, ...], walk: _Walk) -> Any:
        kind = type(value)
        if kind is str:
            return value if value in walk.clean else self._walk_string(value, walk)
        if kind is dict:
            return self._walk_object(value, states, walk)
        if kind is list:
            return self._walk_array(value, states, walk)
        if kind is int or kind is float:
            return self._redact_number(value, walk.counts)
        return value  # None, True, False

    def _walk_object(
        self, obj: dict[str, Any], states: tuple[_State, ...], walk: _Walk
    ) -> dict[str, Any]:
        if self._floating_states:
            states = tuple(dict.fromkeys(states + self._floating_states))
        known_keys = self.known_keys
        clean = walk.clean
        out: dict[str, Any] = {}
        renamed = False  # a key became a marker: the next ones may collide with it
        for key, item in obj.items():
            name = known_keys.get(key, _UNSEEN)
            new_key = key
            if name is _UNSEEN:
                new_key = self._detectors.scan(key, walk.counts)
                name = self._json_keys.get(key.lower())
                if new_key != key:
                    renamed = True
                elif len(key) <= _CACHED_STRING_MAX:
                    if len(known_keys) >= _KNOWN_KEYS_LIMIT:
                        known_keys.clear()  # a document of unique keys: start over, stay bounded
                    known_keys[key] = name
            if name is not None:
                new_item = self._sensitive_value(name, item, walk.counts)
            elif states:
                child_states, matched = self._step(states, key.lower(), -1)
                if matched is not None:
                    new_item = self._path_marker(matched, item, walk.counts)
                else:
                    new_item = self._walk(item, child_states, walk)
            else:  # _walk without states, inlined: this is the loop most of a body goes through
                kind = type(item)
                if kind is str:
                    new_item = item if item in clean else self._walk_string(item, walk)
                elif kind is dict:
                    new_item = self._walk_object(item, (), walk)
                elif kind is list:
                    new_item = self._walk_array(item, (), walk)
                elif kind is int or kind is float:
                    new_item = self._redact_number(item, walk.counts)
                else:
                    new_item = item  # None, True, False
            if renamed and new_key in out:  # two keys redacted to the same marker: keep both
                suffix = 2
                while f"{new_key} #{suffix}" in out:
                    suffix += 1
                new_key = f"{new_key} #{suffix}"
            out[new_key] = new_item
        return out

    def _sensitive_value(self, name: str, value: Any, counts: Counter[str]) -> Any:
        """A JSON value under a sensitive key: a field, or a header name (a document that
        records requests, ``{"headers": {"Authorization": "Bearer …"}}``)."""
        if name not in self._header_keys:
            return self._field_marker(name, value, counts)
        if isinstance(value, str):
            return self._header_value(name, value, counts)
        marker = f"[redacted:{name}]"
        if value is None or value == marker:
            return value
        counts["header"] += 1
        return marker

    def _walk_array(self, array: list[Any], states: tuple[_State, ...], walk: _Walk) -> list[Any]:
        if not states:
            return [self._walk(item, (), walk) for item in array]
        out: list[Any] = []
        for index, item in enumerate(array):
            child_states, matched = self._step(states, "", index)
            if matched is not None:
                out.append(self._path_marker(matched, item, walk.counts))
            else:
                out.append(self._walk(item, child_states, walk))
        return out

    def _walk_string(self, text: str, walk: _Walk) -> str:
        redacted = self._redact_string(text, walk.counts)
        if redacted == text and len(text) <= _CACHED_STRING_MAX and len(walk.clean) < _CACHE_LIMIT:
            walk.clean.add(text)
        return redacted

    def _step(
        self, states: tuple[_State, ...], key: str, index: int
    ) -> tuple[tuple[_State, ...], PathRule | None]:
        """Follow every path rule in progress one level down, into ``key`` of an object
        (index == -1) or item ``index`` of an array. Returns the states below and the rule
        that ends here, if any."""
        next_states: list[_State] = []
        matched: PathRule | None = None
        for rule_index, position in states:
            rule = self._paths[rule_index]
            segment = rule.segments[position]
            if index < 0:
                advance = segment.kind == "wildcard" or (
                    segment.kind == "key" and segment.key == key
                )
            else:
                advance = segment.kind in ("wildcard", "any_index") or (
                    segment.kind == "index" and segment.index == index
                )
                if not advance and segment.kind == "key":
                    next_states.append((rule_index, position))  # look through the array
                    continue
            if advance:
                if position + 1 == len(rule.segments):
                    matched = matched or rule
                else:
                    next_states.append((rule_index, position + 1))
        return tuple(next_states), matched

    def _path_marker(self, rule: PathRule, value: Any, counts: Counter[str]) -> Any:
        if value is None or value == "":
            return value
        marker = f"[redacted:{rule.label}]"
        if value != marker:
            counts["path"] += 1
        return marker

    def _redact_string(self, text: str, counts: Counter[str]) -> str:
        # Strings holding "key: value" or "key=value" text (a JSON document or a query string
        # inside a JSON string, an error message quoting a field) get the key rules as well.
        if ":" in text or "=" in text:
            text = self._keyed_text(text, counts)
        return self._detectors.scan(text, counts)

    def _redact_number(self, number: int | float, counts: Counter[str]) -> int | float | str:
        # Under nine digits no detector can match: the common case costs one comparison.
        if -100_000_000 < number < 100_000_000:
            return number
        text = json.dumps(number)
        redacted = self._detectors.scan(text, counts)
        return number if redacted == text else redacted
