"""Leak scanner: find planted secrets in everything an end-to-end run leaves behind.

End-to-end tests plant known secrets (tokens, card numbers, SSNs, ...) and scan every output
of the run: mitmdump stdout/stderr, saved flow files, HAR files, logs, mitmweb API responses.
A secret counts as leaked if any of them shows it in any encoding a program commonly applies
on the way out (leak_match), inside a container or as a person reads it (leak_views).
"""

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from .leak_match import (
    MIN_INNER_BASE64_CHARS,
    MIN_SECRET_CHARS,
    Leak,
    encoded_forms,
    scan_view,
    search_roots,
)
from .leak_views import RAW_LOCATION, reading, views

__all__ = [
    "MIN_INNER_BASE64_CHARS",
    "MIN_SECRET_CHARS",
    "RAW_LOCATION",
    "Leak",
    "assert_no_leaks",
    "encoded_forms",
    "find_leaks",
]

type Blob = tuple[str, bytes | str]
type PathLike = str | os.PathLike[str]

# --- sources -------------------------------------------------------------------------------


def _files(paths: Iterable[PathLike]) -> Iterator[Path]:
    for given in paths:
        path = Path(given)
        if path.is_dir():
            for directory, subdirectories, names in os.walk(path):
                subdirectories.sort()
                for name in sorted(names):
                    file = Path(directory, name)
                    if file.is_file():
                        yield file
        elif path.is_file():
            yield path
        else:
            # a scan of an output that was never written would pass silently
            raise FileNotFoundError(f"leak scan: no such file or directory: {path}")


def find_leaks(
    secrets: Mapping[str, str],
    paths: Iterable[PathLike] = (),
    blobs: Iterable[Blob] = (),
    *,
    allow_short: bool = False,
) -> list[Leak]:
    """Every place where a secret (label -> value) shows in the files (directories are
    walked recursively) or named in-memory blobs (str blobs are taken as UTF-8)."""
    roots = search_roots(secrets, allow_short)
    sources: list[tuple[str, Callable[[], bytes]]] = [
        (str(file), file.read_bytes) for file in _files(paths)
    ]
    for name, blob in blobs:
        data = blob.encode() if isinstance(blob, str) else blob
        sources.append((name, lambda d=data: d))
    leaks: list[Leak] = []
    for source, read in sources:
        for location, view in views(read()):
            found = list(scan_view(source, location, view, roots))
            leaks.extend(found)
            # as read: only the secrets this view does not show otherwise (no duplicates)
            shown = {leak.label for leak in found}
            unseen = [root for root in roots if root.form.label not in shown]
            if unseen and (as_read := reading(view)) is not None:
                leaks.extend(scan_view(source, f"{location} as read", as_read, unseen))
    return leaks


def assert_no_leaks(
    secrets: Mapping[str, str],
    paths: Iterable[PathLike] = (),
    blobs: Iterable[Blob] = (),
    *,
    allow_short: bool = False,
) -> None:
    """Raise AssertionError listing every leak as ``source:offset: label (encoding) in
    location`` plus masked context.  The message never contains a secret."""
    # keep pytest from printing this frame, whose locals hold the secrets (pytest -l)
    __tracebackhide__ = True
    leaks = find_leaks(secrets, paths, blobs, allow_short=allow_short)
    if leaks:
        lines = "\n".join(f"  {leak}" for leak in leaks)
        raise AssertionError(f"{len(leaks)} secret leak(s) found:\n{lines}")
