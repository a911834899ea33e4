"""Every value a flow holds, found by walking the flow's objects rather than a field list, so
a field a later mitmproxy adds is redacted too.

:class:`FlowVault` redacts in place (``conceal``) and puts the real values back (``reveal``)
only while mitmproxy's layer handles an event. A stream's messages are read together: a
secret may be split across them.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from unit_gateway.redaction import stream_text

#: Not walked: the id mitmweb indexes by, and the flow's live machinery.
SKIPPED = frozenset({"id", "live", "_resume_event", "reply"})
#: A flow's connections: mitmproxy reads them itself, so they are never edited in place.
CONNECTIONS = frozenset({"client_conn", "server_conn"})

RedactLeaf = Callable[[str | bytes], str | bytes]
RedactFields = Callable[[tuple[tuple[bytes, bytes], ...]], tuple[tuple[bytes, bytes], ...]]
#: (object, attribute) -> True when redacted elsewhere.
Owned = Callable[[Any, str], bool]


@dataclass(slots=True)
class Edit:
    """``holder[key]`` or ``holder.key`` holds ``shown`` in place of ``real``."""

    holder: Any
    key: Any
    real: Any
    shown: Any


#: An edit's holder when it is the flow itself: the vault keeps records in a dictionary weak
#: by flow, and a record that held its flow (a connection or a comment shown redacted) would
#: keep it, and everything it holds, alive for good.
_THE_FLOW = object()


def _get(holder: Any, key: Any) -> Any:
    return holder[key] if isinstance(holder, list | dict) else getattr(holder, key, None)


def _set(holder: Any, key: Any, value: Any) -> None:
    if isinstance(holder, list | dict):
        holder[key] = value
    else:
        object.__setattr__(holder, key, value)  # frozen dataclasses hold text too


@dataclass
class _Shown:
    """What one stream message was last shown as, for its content ``real``."""

    message: Any  # held so that its id is not reused
    real: bytes
    shown: bytes


@dataclass
class _FlowRecord:
    edits: list[Edit] = field(default_factory=list)
    #: id -> value found clean (held so the id is not reused).
    clean: dict[int, Any] = field(default_factory=dict)
    shown: dict[int, _Shown] = field(default_factory=dict)
    #: id(first message of a direction) -> inputs of its last read
    read: dict[int, tuple[tuple[int, ...], bool, int]] = field(default_factory=dict)
    #: parts of split secrets, hidden wherever they show
    withheld: set[bytes] = field(default_factory=set)
    alone: stream_text.AloneCache = field(default_factory=dict)
    #: id -> stream message with nothing to redact but its content
    plain: dict[int, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _ShownConnection:
    """A connection whose attributes (and their lists' items) were ``values`` when last read;
    ``shown`` is its redacted copy, or None when it holds nothing to redact (never the
    connection itself: the vault would keep it alive, and its finalizer would never run)."""

    values: tuple[Any, ...]
    shown: Any


_SCALARS = frozenset({int, float, bool, type(None)})
#: Integers this far from zero have the 13 digits a card number needs at least (mitmproxy
#: takes any digits as a response's status code: ``HTTP/1.1 4111111111111111 OK``).
_LONG_INT = 10**12
#: What an integer that holds a secret shows as (it must stay an int: the console compares
#: a status code, HAR and mitmweb write it as a number).
SHOWN_INT = 0
_WALKED: dict[type, bool] = {}


def _is_walked_object(value: Any) -> bool:
    kind = type(value)
    walked = _WALKED.get(kind)
    if walked is None:
        walked = _WALKED[kind] = kind.__module__.startswith("mitmproxy.") and (
            hasattr(value, "__dict__") or dataclasses.is_dataclass(value)
        )
    return walked


def _is_stream(messages: list[Any]) -> bool:
    """A list of stream messages (TCP, UDP, WebSocket): each says its direction and content."""
    first = messages[0]
    return (
        _is_walked_object(first)
        and isinstance(getattr(first, "from_client", None), bool)
        and type(getattr(first, "content", None)) is bytes
    )


#: type -> its dataclass fields' names, for objects without a __dict__
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


#: Attribute values an addon could change in place (``alpn_offers.append(...)``).
_CONTAINERS = frozenset({list, dict, set, bytearray})


def _snapshot(connection: Any) -> tuple[Any, ...]:
    """What a connection holds, with a copy of each container: equal to a later
    ``tuple(vars(connection).values())`` (compared in C, identical items at once) until an
    attribute is set or a container changed in place."""
    return tuple(v.copy() if type(v) in _CONTAINERS else v for v in vars(connection).values())


def _attributes(value: Any) -> list[tuple[str, Any]]:
    if hasattr(value, "__dict__"):
        return list(vars(value).items())
    names = _FIELD_NAMES.get(type(value))
    if names is None:
        names = _FIELD_NAMES[type(value)] = tuple(f.name for f in dataclasses.fields(value))
    return [(name, getattr(value, name)) for name in names]


class FlowVault:
    """The real values of what :meth:`conceal` redacted in each flow."""

    def __init__(
        self,
        redact_leaf: RedactLeaf,
        redact_fields: RedactFields,
        headers_type: type,
        owned: Owned = lambda holder, key: False,
        redact_data: stream_text.Redact | None = None,
    ) -> None:
        self.redact_leaf = redact_leaf
        self.redact_fields = redact_fields
        self.headers_type = headers_type
        self.owned = owned
        self.redact_data = redact_data
        self._records: weakref.WeakKeyDictionary[Any, _FlowRecord] = weakref.WeakKeyDictionary()
        #: id(connection) -> how it is shown, for as long as the connection lives
        self._connections: dict[int, _ShownConnection] = {}
        self._copies: set[int] = set()  # ids of the copies shown

    def conceal(self, flow: Any, *, ended: bool = False) -> int:
        """Redact every value ``flow`` holds; return how many changed. ``ended``: its streams
        are over even while the flow is live."""
        record = self._records.get(flow)
        if record is None:
            record = self._records[flow] = _FlowRecord()
        before = len(record.edits)
        open_end = not ended and getattr(flow, "live", False) is True
        _Walk(self, record, open_end, flow).visit_object(flow)
        return len(record.edits) - before

    def reveal(self, flow: Any) -> None:
        """Put the real values back, except where an addon has set something since."""
        record = self._records.get(flow)
        if record is None or not record.edits:
            return
        for edit in record.edits:
            holder = flow if edit.holder is _THE_FLOW else edit.holder
            if _get(holder, edit.key) is edit.shown:
                _set(holder, edit.key, edit.real)
        record.edits.clear()

    def forget(self, flow: Any) -> None:
        self._records.pop(flow, None)

    def shown_connection(self, connection: Any, clean: dict[int, Any]) -> Any:
        """A connection with a secret (an SNI, an address, an error) as a redacted copy: the
        layers and the proxy server read the connection itself, and the flow gets it back
        while a layer handles an event. The copy equals the connection (same id), so addons
        that look a connection up still find it. Read again only when an attribute changed."""
        if id(connection) in self._copies:
            return connection  # the copy shown since the last reveal
        known = self._connections
        entry = known.get(id(connection))
        if entry is None:
            weakref.finalize(connection, self._forget_connection, id(connection))
        elif tuple(vars(connection).values()) == entry.values:
            return connection if entry.shown is None else entry.shown
        elif entry.shown is not None:
            self._copies.discard(id(entry.shown))
        entry = known[id(connection)] = _ShownConnection(_snapshot(connection), None)
        found = _FlowRecord(clean=clean)
        _Walk(self, found, False).visit_object(connection)
        if found.edits:
            for edit in reversed(found.edits):  # read in place, so put back at once
                _set(edit.holder, edit.key, edit.real)
            copy = type(connection).from_state(connection.get_state())
            # certificates are DER the walk cannot read (mitmproxy's names the client's SNI)
            copy.certificate_list = []
            if hasattr(copy, "mitmcert"):
                copy.mitmcert = None
            _Walk(self, _FlowRecord(clean=clean), False).visit_object(copy)
            entry.shown = copy
            self._copies.add(id(copy))
            return copy
        return connection

    def _forget_connection(self, key: int) -> None:
        entry = self._connections.pop(key, None)
        if entry is not None and entry.shown is not None:
            self._copies.discard(id(entry.shown))


class _Walk:
    def __init__(
        self, vault: FlowVault, record: _FlowRecord, open_end: bool, flow: Any = None
    ) -> None:
        self.vault = vault
        self.record = record
        self.open_end = open_end
        self.flow = flow
        self.seen: set[int] = set()

    def _changed(self, holder: Any, key: Any, real: Any, shown: Any) -> None:
        _set(holder, key, shown)
        kept = _THE_FLOW if holder is self.flow and holder is not None else holder
        self.record.edits.append(Edit(kept, key, real, shown))
        self.record.clean[id(shown)] = shown

    def visit_object(self, value: Any, skipped: str | None = None) -> None:
        if id(value) in self.seen:
            return
        self.seen.add(id(value))
        owned = self.vault.owned
        clean = self.record.clean
        headers_type = self.vault.headers_type
        for name, item in _attributes(value):
            kind = type(item)
            if kind is int and not -_LONG_INT < item < _LONG_INT and name not in SKIPPED:
                self._visit_long_int(value, name, item)
                continue
            if kind in _SCALARS or name in SKIPPED or name == skipped:
                continue
            if name in CONNECTIONS:
                self._visit_connection(value, name, item)
                continue
            if kind is str or kind is bytes:
                if clean.get(id(item)) is item or owned(value, name):
                    continue
            elif kind is headers_type:
                fields = item.fields
                if clean.get(id(fields)) is fields:
                    continue
            self.visit(value, name, item)

    def _visit_long_int(self, holder: Any, key: Any, value: int) -> None:
        if self.vault.redact_leaf(str(value)) != str(value):
            self._changed(holder, key, value, SHOWN_INT)

    def visit(self, holder: Any, key: Any, value: Any) -> None:
        kind = type(value)
        if kind is int and not -_LONG_INT < value < _LONG_INT:
            self._visit_long_int(holder, key, value)
            return
        if kind in _SCALARS:
            return
        clean = self.record.clean
        if kind is str or kind is bytes:
            if clean.get(id(value)) is value:
                return
            shown = self.vault.redact_leaf(value)
            if shown == value:
                clean[id(value)] = value
            else:
                self._changed(holder, key, value, shown)
        elif kind is self.vault.headers_type:
            fields = value.fields
            if clean.get(id(fields)) is fields:
                return
            shown_fields = self.vault.redact_fields(fields)
            if shown_fields == fields:
                clean[id(fields)] = fields
            else:
                self._changed(value, "fields", fields, shown_fields)
        elif kind is list:
            if value and self.vault.redact_data is not None and _is_stream(value):
                self._visit_stream(value)
                return
            for index, item in enumerate(value):
                self.visit(value, index, item)
        elif kind is dict:
            self._visit_dict(holder, key, value)
        elif kind is tuple or isinstance(value, tuple):
            self._visit_tuple(holder, key, value)
        elif _is_walked_object(value):
            self.visit_object(value)

    def _visit_connection(self, flow: Any, key: str, connection: Any) -> None:
        if not _is_walked_object(connection):
            return
        shown = self.vault.shown_connection(connection, self.record.clean)
        if shown is not connection:
            self._changed(flow, key, connection, shown)

    def _visit_stream(self, messages: list[Any]) -> None:
        record = self.record
        plain = record.plain
        for message in messages:
            if plain.get(id(message)) is not message:
                before = len(record.edits)
                self.visit_object(message, skipped="content")
                if len(record.edits) == before:
                    plain[id(message)] = message
        directions = [[m for m in messages if m.from_client is side] for side in (True, False)]
        for _ in range(3):  # a part hidden in one direction is hidden in the other
            known = len(record.withheld)
            for direction in directions:
                if direction:
                    self._read_direction(direction)
            if len(record.withheld) == known:
                break
        for message in messages:
            entry = record.shown[id(message)]
            content = message.content
            if entry.real is not content:  # set by an addon since: read alone
                assert self.vault.redact_data is not None
                alone = self.vault.redact_data(content)
                shown = stream_text.unreadable(len(content)) if alone is None else alone
                entry = record.shown[id(message)] = _Shown(message, content, shown)
            if entry.shown is not entry.real and entry.shown != entry.real:
                self._changed(message, "content", entry.real, entry.shown)

    def _read_direction(self, messages: list[Any]) -> None:
        """Sets ``record.shown`` for each of ``messages`` (one direction, in order)."""
        redact = self.vault.redact_data
        assert redact is not None
        record = self.record
        contents = [m.content for m in messages]
        start = stream_text.unsettled_from(contents)
        read = (tuple(id(c) for c in contents[start:]), self.open_end, len(record.withheld))
        if record.read.get(id(messages[0])) == read:
            return
        first = next(
            (
                i
                for i, m in enumerate(messages[:start])
                if (s := record.shown.get(id(m))) is None or s.real is not m.content
            ),
            start,
        )
        found = stream_text.shown_messages(
            contents, redact, open_end=self.open_end, start=first, cache=record.alone
        )
        new: set[bytes] = set()
        for message, shown in zip(messages[first:], found, strict=True):
            visible = stream_text.withheld_from(shown.shown, record.withheld)
            record.shown[id(message)] = _Shown(message, message.content, visible)
            new.update(part for part in shown.withheld if part not in record.withheld)
        record.read[id(messages[0])] = read
        if new:
            record.withheld |= new
            # re-read older messages holding a newly hidden part
            for shown_entry in list(record.shown.values()):
                if any(part in shown_entry.real for part in new):
                    del record.shown[id(shown_entry.message)]

    def _clean_key(self, name: Any) -> bool:
        if not isinstance(name, str | bytes):
            return True
        clean = self.record.clean
        if clean.get(id(name)) is name:
            return True
        if self.vault.redact_leaf(name) != name:
            return False
        clean[id(name)] = name
        return True

    def _visit_dict(self, holder: Any, key: Any, value: dict[Any, Any]) -> None:
        for name in list(value):
            if not self._clean_key(name):  # a secret as a key: hide all keys
                shown = {f"[key {i}]": item for i, item in enumerate(value.values())}
                self._changed(holder, key, value, shown)
                for inner, item in list(shown.items()):
                    self.visit(shown, inner, item)
                return
        for name, item in list(value.items()):
            self.visit(value, name, item)

    def _visit_tuple(self, holder: Any, key: Any, value: tuple[Any, ...]) -> None:
        clean = self.record.clean
        if clean.get(id(value)) is value:
            return
        items = list(value)
        before = len(self.record.edits)
        for index, item in enumerate(items):
            self.visit(items, index, item)
        edits = self.record.edits
        inner = [i for i in range(before, len(edits)) if edits[i].holder is items]
        if not inner:
            if len(edits) == before:
                clean[id(value)] = value
            return
        # Immutable: its items' edits become one edit of the tuple.
        for i in reversed(inner):
            del edits[i]
        shown = tuple(items) if type(value) is tuple else type(value)(*items)
        self._changed(holder, key, value, shown)
