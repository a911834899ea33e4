"""What the redaction engine looks for beyond names: the detectors, and the compiled route,
content-type and name patterns.

:mod:`unit_gateway.redaction.engine` applies these rules to bodies, headers, URLs and log text.
The defaults and the configured rules (the ``redaction:`` section, and the syntax of its
JSONPath-like rules) are :mod:`unit_gateway.config.redaction`. This module only knows *what* is
secret: the routes and content types whose bodies are never shown, and the patterns (card
numbers, SSNs, Unit tokens, JWTs) that are secret whatever their name.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable

from unit_gateway.config.redaction import DetectorSettings
from unit_gateway.net.base64_runs import base64_runs, may_hold_base64

# --- route and content-type patterns -------------------------------------------------------


def compile_route_patterns(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """One regex that fullmatches a request path (no query) matching any of ``patterns``."""
    alternatives: list[str] = []
    for pattern in patterns:
        regex = ""
        for segment in pattern.strip("/").split("/"):
            if segment == "**":
                regex += "(?:/[^/]+)*"
            elif segment == "*" or (segment.startswith("{") and segment.endswith("}")):
                regex += "/[^/]+"
            else:
                regex += "/" + re.escape(segment)
        alternatives.append(regex)
    if not alternatives:
        return None
    return re.compile("(?:" + "|".join(alternatives) + ")/?")


def compile_content_types(patterns: Iterable[str]) -> Callable[[str], bool]:
    """A predicate on a lower-case media type (``image/png``) for patterns like ``image/*``."""
    exact: set[str] = set()
    prefixes: list[str] = []
    for pattern in patterns:
        lowered = pattern.lower()
        if lowered.endswith("*"):
            prefixes.append(lowered[:-1])
        else:
            exact.add(lowered)
    prefix_tuple = tuple(prefixes)
    return lambda media_type: media_type in exact or media_type.startswith(prefix_tuple)


# --- key names in text ---------------------------------------------------------------------


def names_pattern(names: Iterable[str]) -> str:
    """A regex alternation matching exactly ``names``, as a trie (``a(?:ddress|uthtoken)``):
    the engine rejects most positions on their first character, several times faster than a
    flat alternation (and than re.IGNORECASE, hence the lower-cased copy)."""
    trie: dict[str, dict] = {}
    for name in names:
        node = trie
        for char in name:
            node = node.setdefault(char, {})
        node[""] = {}

    def emit(node: dict[str, dict]) -> str:
        branches = [re.escape(char) + emit(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        if "" in node:
            return "(?:" + "|".join(branches) + ")?"
        return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"

    return emit(trie)


# --- detectors -----------------------------------------------------------------------------

#: A maximal run of at least 13 digits with single spaces or dashes between them. Greedy, and
#: each repetition needs a digit, so a match ends at the run's last digit and the character
#: after it is never a digit (no lookahead needed).
_CARD_RUN = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,}")
_DIGIT_GROUP = re.compile(r"[0-9]+")
_SSN = re.compile(r"(?<![0-9])[0-9]{3}-[0-9]{2}-[0-9]{4}(?![0-9])")
_BARE_SSN = re.compile(r"(?<![0-9])[0-9]{9}(?![0-9])")
#: Where a digit detector may match, as alternatives after the run's first digit. The
#: "not after a digit" check comes after that digit on purpose: a pattern that starts with a
#: lookbehind defeats the engine's first-character skip (several times slower on prose).
_DIGIT_CANDIDATE_HEAD = r"[0-9](?<![0-9][0-9])"
_DIGIT_CANDIDATES = {
    "run": r"(?P<run>(?:[ -]?[0-9]){12,})",  # a card, maybe with SSNs beside it
    "ssn": r"(?P<ssn>[0-9]{2}-[0-9]{2}-[0-9]{4}(?![0-9]))",
    "bare": r"(?P<bare>[0-9]{8}(?![0-9]))",
}
#: A card number written in its printed groups (4-4-4-4 with up to 7 digits in the last
#: group, or 4-6-5) with one separator the run above does not take, the same between every
#: two groups: dots, slashes, underscores, commas, tabs, two or more spaces, a dash between
#: spaces, a line break (a match across newline-joined values only sends finds_nothing_in's
#: callers to their per-value path). A list of years that passes Luhn is redacted too: the
#: safe side. As an alternative after the candidate head's first digit.
_GROUPED_CARD = (
    r"(?P<grouped>[0-9]{3}(?P<sep>[./_,]|, |\t+|  +| - |\r?\n)"
    r"(?:[0-9]{4}(?P=sep)[0-9]{4}(?P=sep)[0-9]{1,7}|[0-9]{6}(?P=sep)[0-9]{5})(?![0-9]))"
)
_B64 = r"[A-Za-z0-9_-]"
#: How deep base64 inside base64 is read.
_BASE64_DEPTH = 2
#: A token's characters may go on escaped (``\u0065``, ``\\u0065`` in a repr, ``%65``): from
#: an escape on, everything up to white space or a quote is taken as the token's.
_ESCAPED_REST = r"""(?:[\\%][^\s"'<>]*)"""
_UNIT_TOKEN = re.compile(
    rf"v[1-4]\.(?:public|local)\.(?:{_B64}+(?:\.{_B64}+)?{_ESCAPED_REST}?|{_ESCAPED_REST})"
)
# The second part is not required to start with eyJ: JWE's second part (the encrypted key)
# does not, and a wider net costs nothing in the common case.
_JWT = re.compile(rf"eyJ{_B64}+\.{_B64}+\.{_B64}*(?:\.{_B64}*\.{_B64}*)?")

MIN_CARD_DIGITS = 13
#: A run of digits and single separators longer than this is hidden whole: every window of
#: its groups is a card to check, and no number a person writes is this long.
MAX_DIGIT_RUN = 1024
MAX_CARD_DIGITS = 19
_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every card number carries (``digits`` holds only 0-9)."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        total += _DOUBLED[value] if position % 2 else value
    return total % 10 == 0


def card_spans(run: str) -> list[tuple[int, int]]:
    """Card numbers inside one digit run matched by ``_CARD_RUN``: (start, end) offsets.

    A run without separators is a card only if it has 13-19 digits and passes Luhn: a longer
    id is never cut into a card. A run with separators (``4111 1111 1111 1111 2025``) is a
    sequence of digit groups, and every window of whole groups with 13-19 digits that passes
    Luhn is redacted; overlapping windows merge. Taking all of them, rather than picking one,
    matters when a number stands next to a card: in ``12 4111 1111 1111 1111`` the window
    ``12 4111 1111 1111`` may pass Luhn by chance, and picking it would leave ``1111`` shown.
    """
    if run.isdigit():
        if len(run) <= MAX_CARD_DIGITS and luhn_valid(run):
            return [(0, len(run))]
        return []
    groups = [(m.start(), m.end()) for m in _DIGIT_GROUP.finditer(run)]
    spans: list[tuple[int, int]] = []
    for first in range(len(groups)):
        digits = ""
        for last in range(first, len(groups)):
            digits += run[groups[last][0] : groups[last][1]]
            if len(digits) > MAX_CARD_DIGITS:
                break
            if len(digits) >= MIN_CARD_DIGITS and luhn_valid(digits):
                start, end = groups[first][0], groups[last][1]
                if spans and start < spans[-1][1]:  # overlaps the previous card: one span
                    spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
                else:
                    spans.append((start, end))
    return spans


# --- what a person sees of a string ---------------------------------------------------------

# Both classes are generated from Python's unicodedata (Unicode 15.0 in Python 3.12);
# test_visible_classes_match_unicodedata recomputes them and says when they are out of date.

#: Characters that show as nothing: C0 and C1 controls other than the line-breaking and tab
#: ones, and format characters (soft hyphen, zero-width space and joiners, bidi controls, the
#: byte-order mark, tags).
_UNSEEN = re.compile(
    r"[\x00-\x08\x0e-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2"
    r"\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd"
    r"\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001"
    r"\U000e0020-\U000e007f]"
)
#: The ASCII part of _UNSEEN (a search over a small class is several times faster).
_ASCII_UNSEEN = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
#: Characters a reader takes for an ASCII one: the other spaces and dashes, and the forms whose
#: compatibility decomposition is one ASCII character in another width or size (fullwidth,
#: small, no-break, the one-dot leader), or a digit in another typeface (mathematical,
#: segmented). Not letters in mathematical typefaces: readings() relies on no UTF-16 reading
#: of UTF-8 showing a "J" (see there). Not superscripts, subscripts or circled forms, nor the
#: digits of other scripts: they look like what they are.
_LOOKALIKE = re.compile(
    r"[\xa0\u017f\u037e\u058a\u05be\u1400\u1680\u1806\u1fef\u2000-\u200a\u2010-\u2015\u2024"
    r"\u2028\u2029\u202f\u205f\u212a\u2160\u2164\u2169\u216c-\u2170\u2174\u2179\u217c-\u217f"
    r"\u2212\u2e17\u2e1a\u2e3a\u2e3b\u2e40\u2e5d\u3000\u301c\u3030\u30a0\ufe31\ufe32"
    r"\ufe4d-\ufe50\ufe52\ufe54-\ufe5c\ufe5f-\ufe66\ufe68-\ufe6b\uff01-\uff5e\U00010ead"
    r"\U0001d7ce-\U0001d7ff\U0001fbf0-\U0001fbf9]"
)


def _as_ascii(match: re.Match[str]) -> str:
    char = match.group()
    category = unicodedata.category(char)
    if category == "Zs":
        return " "
    if category in ("Zl", "Zp"):
        return "\n"
    if category == "Pd" or char == "\u2212":  # and the minus sign
        return "-"
    return unicodedata.normalize("NFKC", char)


def visible(text: str) -> str:
    """``text`` as a person reads it on a screen: without the characters that show as
    nothing, and with every space, dash and ASCII lookalike as its ASCII character. A card
    number written with a zero-width space, no-break spaces or fullwidth digits is one."""
    if text.isascii():  # no lookalikes; the unseen ones are ASCII controls
        return text if _ASCII_UNSEEN.search(text) is None else _ASCII_UNSEEN.sub("", text)
    return _LOOKALIKE.sub(_as_ascii, _UNSEEN.sub("", text))


class Detectors:
    """The enabled pattern detectors, applied in one call to any string.

    ``fingerprint`` turns a token into its marker. Counts go to ``detector:<name>``. A string
    that is not ASCII is also read as :func:`visible` shows it; when that finds more, the
    string is replaced by its visible form with the markers in it.
    """

    def __init__(self, settings: DetectorSettings, fingerprint: Callable[[str], str]) -> None:
        self._settings = settings
        self._fingerprint = fingerprint
        wanted = [
            _DIGIT_CANDIDATES[name]
            for name, enabled in (
                ("run", settings.card_numbers),
                ("ssn", settings.ssn),
                ("bare", settings.ssn_bare_digits),
            )
            if enabled
        ]
        if settings.card_numbers:
            wanted.append(_GROUPED_CARD)
        self._digit_candidates = (
            re.compile(_DIGIT_CANDIDATE_HEAD + "(?:" + "|".join(wanted) + ")") if wanted else None
        )

    def finds_nothing_in(self, text: str) -> bool:
        """True when :meth:`scan` is sure to leave ``text`` as it is: the three tests it
        starts with, without the replacing. When ``text`` is several values joined by newlines
        (which no pattern can match across, nor needs beside a digit run), True holds for each
        of them: they can be checked at once."""
        if not self._plain_finds_nothing_in(text):
            return False
        # isascii is O(1) on str: JSON from Unit, nearly all ASCII, pays nothing more
        return text.isascii() or self._plain_finds_nothing_in(visible(text))

    def _plain_finds_nothing_in(self, text: str, depth: int = 0) -> bool:
        settings = self._settings
        if settings.unit_tokens and (".public." in text or ".local." in text):
            return False
        if settings.jwts and "eyJ" in text:
            return False
        candidates = self._digit_candidates
        if candidates is not None and candidates.search(text) is not None:
            return False
        if depth >= _BASE64_DEPTH or not may_hold_base64(text):
            return True
        return all(
            self._plain_finds_nothing_in(decoded, depth + 1)
            for _, _, readings in base64_runs(text)
            for decoded in readings
        )

    def scan(self, text: str, counts: Counter[str]) -> str:
        """``text`` with every detected value replaced by its marker (``text`` itself if none).

        The common case (nothing found) costs two substring tests and one regex search: those
        of :meth:`finds_nothing_in`, which every fast path of the redactor relies on, so that a
        detector it does not know of cannot be added here alone."""
        if len(text) < 9 or self.finds_nothing_in(text):
            return text
        if text.isascii():
            return self._plain_scan(text, counts)
        found: Counter[str] = Counter()
        plain = self._plain_scan(text, found)
        # The visible form of the text as written, not of the plain scan's result: a secret
        # the plain scan cut short at an unseen character (a token's payload with a zero-width
        # space in it) has no prefix left in the result, and its rest would show.
        seen = visible(text)
        if seen != text and not self._plain_finds_nothing_in(seen):
            seen_found: Counter[str] = Counter()
            redacted = self._plain_scan(seen, seen_found)
            # the visible form only where it hides more than the plain scan did
            if redacted != seen and redacted != visible(plain):
                counts.update(seen_found)
                return redacted
        counts.update(found)
        return plain

    def _plain_scan(self, text: str, counts: Counter[str], depth: int = 0) -> str:
        settings = self._settings
        # Tokens first: a Unit token's claims are base64url JSON (eyJ…), which the JWT detector
        # would otherwise take for a JWT and cut in two. A substring test rules most text out.
        if settings.unit_tokens and (".public." in text or ".local." in text):
            text = self._replace_tokens(_UNIT_TOKEN, text, counts, "detector:unit_token")
        if settings.jwts and "eyJ" in text:
            text = self._replace_tokens(_JWT, text, counts, "detector:jwt")
        candidates = self._digit_candidates
        if candidates is not None and candidates.search(text) is not None:
            text = self._replace_digits(candidates, text, counts)
        return self._replace_base64(text, counts, depth)

    def _replace_base64(self, text: str, counts: Counter[str], depth: int) -> str:
        """Base64 that decodes to text holding a secret (Basic credentials, a ``data:`` URL,
        an encoded field) is shown as a marker: a person decodes it in a second."""
        if depth >= _BASE64_DEPTH:
            return text
        pieces: list[str] = []
        done = 0
        for start, end, readings in base64_runs(text):
            if any(
                not self._plain_finds_nothing_in(decoded, depth + 1)
                and self._plain_scan(decoded, Counter(), depth + 1) != decoded
                for decoded in readings
            ):
                pieces += [text[done:start], "[redacted:base64]"]
                counts["detector:base64"] += 1
                done = end
        if not pieces:
            return text
        pieces.append(text[done:])
        return "".join(pieces)

    def _replace_tokens(
        self, pattern: re.Pattern[str], text: str, counts: Counter[str], rule: str
    ) -> str:
        def mark(match: re.Match[str]) -> str:
            counts[rule] += 1
            return self._fingerprint(match.group())

        return pattern.sub(mark, text)

    def _replace_digits(self, candidates: re.Pattern[str], text: str, counts: Counter[str]) -> str:
        pieces: list[str] = []
        done = 0
        for candidate in candidates.finditer(text):
            if candidate.lastgroup == "run":
                run = candidate.group()
                if len(run) > MAX_DIGIT_RUN:  # read window by window it would take seconds
                    found = [(0, len(run), "digit_run")]
                else:
                    found = self._run_spans(run)
            elif candidate.lastgroup == "grouped":
                written = candidate.group()
                digits = "".join(_DIGIT_GROUP.findall(written))
                card = MIN_CARD_DIGITS <= len(digits) <= MAX_CARD_DIGITS and luhn_valid(digits)
                found = [(0, len(written), "card_number")] if card else []
            else:  # an SSN (dashed, or bare if enabled) outside any long run
                found = [(0, candidate.end() - candidate.start(), "ssn")]
            for start, end, rule in found:
                pieces.append(text[done : candidate.start() + start])
                pieces.append(f"[redacted:{rule}]")
                counts[f"detector:{rule}"] += 1
                done = candidate.start() + end
        if not pieces:
            return text
        pieces.append(text[done:])
        return "".join(pieces)

    def _run_spans(self, run: str) -> list[tuple[int, int, str]]:
        """In a run of 13+ digits: SSNs, then cards in what is left, then (if on) bare SSNs."""
        settings = self._settings
        found: list[tuple[int, int, str]] = []
        if settings.ssn:
            found += [(m.start(), m.end(), "ssn") for m in _SSN.finditer(run)]
        for gap_start, gap_end in _gaps(found, len(run)):
            for card in _CARD_RUN.finditer(run, gap_start, gap_end):
                found += [
                    (card.start() + start, card.start() + end, "card_number")
                    for start, end in card_spans(card.group())
                ]
        found.sort()
        if settings.ssn_bare_digits:
            for gap_start, gap_end in _gaps(found, len(run)):
                found += [
                    (m.start(), m.end(), "ssn") for m in _BARE_SSN.finditer(run, gap_start, gap_end)
                ]
            found.sort()
        return found


def _gaps(spans: list[tuple[int, int, str]], length: int) -> list[tuple[int, int]]:
    """The stretches of ``range(length)`` that no (sorted, disjoint) span covers."""
    gaps: list[tuple[int, int]] = []
    position = 0
    for start, end, _ in spans:
        if start > position:
            gaps.append((position, start))
        position = end
    if position < length:
        gaps.append((position, length))
    return gaps


DETECTOR_RULES: tuple[str, ...] = (
    "detector:card_number",
    "detector:ssn",
    "detector:unit_token",
    "detector:jwt",
)
