"""Reading a request target as Unit's server will, refusing what servers read differently.

HTTP servers disagree on parts of a request target: whether a fragment belongs to it, whether
``%2F`` is a ``/``, whether ``..`` is resolved, ``//`` merged, ``;params`` stripped, case
ignored. A target whose route would depend on that choice is refused rather than guessed, so
the gateway and Unit never disagree on which route, and which token endpoint, a request names.
"""

from __future__ import annotations

import re


class UnreadableTarget(ValueError):
    """A request target that HTTP servers read in more than one way: the gateway refuses it
    (400) before anything is sent. The message says what is wrong without quoting the target,
    which may carry ids or secrets."""


# Letters, digits, "-._~" (RFC 3986 unreserved): an escape of one of them means the character
# itself to every server that decodes, so it is decoded before matching.
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# What a path may hold: RFC 3986 pchar and "/", less ";" (Java servers strip `;params` from a
# segment, so `/token;x` is `/token` to them). Everything else (space, controls, backslash,
# non-ASCII, quotes, brackets...) is read differently by some server, or by none.
_PATH = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:@/%]*")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})?")
_ENCODED_NAMES = {
    "/": "an encoded / (%2F): servers differ on whether it separates segments",
    "\\": "an encoded backslash (%5C): some servers read it as /",
    "%": "an encoded % (%25): a server that decodes twice reads another path",
    "?": "an encoded ? (%3F)",
    "#": "an encoded # (%23)",
    ";": "an encoded ; (%3B)",
}


def _describe(char: str) -> str:
    if char == "\\":
        return "a backslash: some servers read it as /"
    if char == ";":
        return "a ; (some servers strip ;parameters from a path segment)"
    if char == " " or char == "\t":
        return "white space"
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return "a control character"
    if ord(char) > 0x7F:
        return "a character that is not ASCII"
    return f"the character {char!r}, which RFC 3986 does not allow in a path"


def _decode_escape(escape: re.Match[str]) -> str:
    digits = escape.group(1)
    if digits is None:
        raise UnreadableTarget("its path has a % that is not followed by two hex digits")
    char = chr(int(digits, 16))
    if char in _UNRESERVED:
        return char
    named = _ENCODED_NAMES.get(char)
    if named is None:
        named = f"an encoded character (%{digits.upper()}) that is not a letter, digit or -._~"
    raise UnreadableTarget(f"its path has {named}")


def read_target(target: str) -> tuple[str, ...]:
    """The path segments of a request target as Unit's server reads them (query string and
    one trailing slash left out, escapes of letters, digits and ``-._~`` decoded); an empty
    segment stands for ``//``. Raises :class:`UnreadableTarget` for anything servers read in
    different ways: a fragment, a dot segment (``.``, ``..``, escaped or not), an escape of
    any other character (``%2F``...), ``;``, a backslash, white space, controls, non-ASCII,
    a leading ``//``, a segment ending in ``.``. Clients send none of these to Unit: refusing
    them costs a caller nothing.
    """
    if "#" in target:
        # RFC 9112 allows no fragment in a request target; servers drop it or keep it.
        raise UnreadableTarget(
            "it has a fragment (#): servers differ on whether it is part of the path"
        )
    path = target.partition("?")[0]
    if not path.startswith("/"):
        raise UnreadableTarget("its path does not start with /")
    if path.startswith("//"):
        # `//a/customers/1/token` is host `a` and path `/customers/1/token` to a server that
        # resolves the target as a URL reference (Node's `new URL(target, base)`).
        raise UnreadableTarget("its path starts with //, which some servers read as a host name")
    if _PATH.fullmatch(path) is None:
        bad = next(c for c in path if _PATH.fullmatch(c) is None)
        raise UnreadableTarget(f"its path has {_describe(bad)}")
    if "%" in path:
        path = _ESCAPE.sub(_decode_escape, path)
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    segments = tuple(path[1:].split("/")) if len(path) > 1 else ()
    if "." in path:  # rare in Unit's paths: the common case skips the walk
        for segment in segments:
            if segment in (".", ".."):
                # Most servers resolve dot segments (RFC 3986 5.2.4), some do not (aiohttp).
                raise UnreadableTarget(
                    "its path has a dot segment (. or ..): servers differ on resolving it"
                )
            if segment.endswith("."):
                raise UnreadableTarget(
                    "its path has a segment ending in . (Windows servers drop the dot)"
                )
    return segments
