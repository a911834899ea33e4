"""Whether the running mitmproxy has what the gateway relies on, checked before anything of
it is replaced. The gateway's redaction is a security control: outside the versions it was
tested on, or with a name it replaces or reads gone or changed, it refuses to start."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

#: The mitmproxy versions the suite has passed on: >= the first, < the second (pyproject.toml
#: declares the same bound; a test keeps the two equal).
SUPPORTED = ((12, 3), (12, 4))
SUPPORTED_TEXT = ">=12.3,<12.4"
#: Runs the gateway on the mitmproxy version it names, outside what was tested.
OVERRIDE_OPTION = "unit_gateway_unsupported_mitmproxy"


@dataclass(frozen=True)
class Need:
    """A name the gateway replaces or reads in ``module``: a dotted path within it, the shape
    of its parameters if it is called or replaced, and the attributes or dataclass fields of
    a class that the gateway reads on its instances."""

    module: str
    path: str
    params: str | None = None
    attributes: tuple[str, ...] = ()


_HTTP = "mitmproxy.proxy.layers.http"
_EVENT = "(self, event)"

NEEDS: tuple[Need, ...] = (
    # hook_table: the addon dispatch
    Need("mitmproxy.addonmanager", "AddonManager", attributes=("chain",)),
    Need("mitmproxy.addonmanager", "AddonManager.trigger_event", _EVENT),
    Need("mitmproxy.addonmanager", "AddonManager.register", "(self, addon)"),
    Need("mitmproxy.addonmanager", "AddonManager.add", "(self, *addons)"),
    Need("mitmproxy.addonmanager", "AddonManager.remove", "(self, addon)"),
    Need("mitmproxy.addonmanager", "AddonManager.clear", "(self)"),
    Need("mitmproxy.addonmanager", "AddonManager.trigger", _EVENT),
    Need("mitmproxy.addonmanager", "AddonManager.invoke_addon_sync", "(self, addon, event)"),
    Need("mitmproxy.addonmanager", "AddonManager.invoke_addon", "(self, addon, event)"),
    Need("mitmproxy.addonmanager", "safecall", "()"),
    Need("mitmproxy.addonmanager", "traverse", "(chain)"),
    # patch_point: every event into an HTTP stream and command out of it
    Need(
        _HTTP,
        "HttpStream",
        attributes=(
            "flow",
            "stream_id",
            "context",
            "client_state",
            "server_state",
            "state_errored",
            "state_wait_for_response_headers",
            "state_consume_response_body",
            "_handle_event",
            "passthrough",
        ),
    ),
    Need(_HTTP, "HttpStream.handle_event", _EVENT),
    Need(_HTTP, "HttpLayer", attributes=("streams", "connections", "context")),
    Need(_HTTP, "HttpLayer._handle_event", _EVENT),
    Need(_HTTP, "HttpLayer.event_to_child", "(self, child, event)"),
    Need(_HTTP, "SendHttp", attributes=("event", "connection")),
    Need(_HTTP, "DropStream", attributes=("stream_id",)),
    Need(_HTTP, "ReceiveHttp", attributes=("event",)),
    Need(_HTTP, "RequestHeaders", attributes=("stream_id", "request", "end_stream")),
    Need(_HTTP, "ResponseHeaders", attributes=("stream_id", "response", "end_stream")),
    Need(_HTTP, "RequestData", attributes=("stream_id", "data")),
    Need(_HTTP, "ResponseData", attributes=("stream_id", "data")),
    Need(_HTTP, "RequestEndOfMessage", attributes=("stream_id",)),
    Need(_HTTP, "ResponseEndOfMessage", attributes=("stream_id",)),
    Need(_HTTP, "RequestProtocolError", attributes=("stream_id", "message", "code")),
    Need(_HTTP, "ResponseProtocolError", attributes=("stream_id", "message", "code")),
    Need(_HTTP, "ErrorCode.http_status_code", "(self)"),
    *(
        Need(f"mitmproxy.proxy.layers.{module}", f"{name}.handle_event", _EVENT)
        for module, name in (
            ("websocket", "WebsocketLayer"),
            ("tcp", "TCPLayer"),
            ("udp", "UDPLayer"),
            ("dns", "DNSLayer"),
        )
    ),
    Need("mitmproxy.proxy.layers.dns", "DNSLayer", attributes=("flows",)),
    *(
        Need(f"mitmproxy.proxy.layers.{module}", name, attributes=("flow",))
        for module, name in (
            ("websocket", "WebsocketLayer"),
            ("tcp", "TCPLayer"),
            ("udp", "UDPLayer"),
        )
    ),
    Need(_HTTP, "HttpRequestHeadersHook"),
    Need(_HTTP, "HttpRequestHook"),
    Need(_HTTP, "HttpResponseHook"),
    Need(_HTTP, "HttpErrorHook"),
    # early_errors: what mitmproxy answers before a flow exists
    Need(f"{_HTTP}._http1", "make_error_response", "(status_code, message=)"),
    Need(
        f"{_HTTP}._http1",
        "Http1Server",
        attributes=("buf", "conn", "state", "done", "response", "stream_id"),
    ),
    Need(f"{_HTTP}._http1", "Http1Server.read_headers", _EVENT),
    Need(f"{_HTTP}._http1", "Http1Server.read_body", _EVENT),
    Need(f"{_HTTP}._http2", "Http2Connection.protocol_error", "(self, message, error_code=)"),
    Need(
        f"{_HTTP}._http_h3",
        "LayeredH3Connection.close_connection",
        "(self, error_code=, frame_type=, reason_phrase=)",
    ),
    # option_masks: what mitmproxy's UIs show of the options
    Need("mitmproxy.optmanager", "dump_dicts", "(opts, keys=)"),
    # addon_order: the gateway's late look at headers, after mitmproxy's default addons
    Need("mitmproxy.addons", "default_addons", "()"),
    # h11's buffer under Http1Server.buf (mitmproxy pins h11 to one version)
    Need("h11._receivebuffer", "ReceiveBuffer", attributes=("_data",)),
)


@dataclass(frozen=True)
class Problem:
    """What is wrong, and whether the gateway can run at all (a missing name: it cannot)."""

    text: str
    missing: bool


def version_of(text: str) -> tuple[int, ...]:
    """The release numbers at the front of a version string ("12.3.1.dev0" -> (12, 3, 1))."""
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


def mitmproxy_version() -> str:
    from mitmproxy import version

    return version.VERSION


def shape(func: Any) -> str:
    """A callable's parameters as the gate compares them: names, ``*``/``**`` and ``=`` for
    a default; annotations and default values are left out."""
    parts = []
    for param in inspect.signature(func).parameters.values():
        if param.kind is param.VAR_POSITIONAL:
            parts.append(f"*{param.name}")
        elif param.kind is param.VAR_KEYWORD:
            parts.append(f"**{param.name}")
        else:
            parts.append(param.name + ("=" if param.default is not param.empty else ""))
    return f"({', '.join(parts)})"


def _has_attribute(cls: type, name: str) -> bool:
    """Set on the class, declared in it (annotations, dataclass fields), or assigned by an
    ``__init__`` of the class or its bases."""
    if hasattr(cls, name):
        return True
    if dataclasses.is_dataclass(cls) and name in {f.name for f in dataclasses.fields(cls)}:
        return True
    for klass in cls.__mro__:
        if name in inspect.get_annotations(klass):
            return True
        code = getattr(klass.__dict__.get("__init__"), "__code__", None)
        if code is not None and name in code.co_names:
            return True
    return False


def _check(need: Need) -> Problem | None:
    where = f"{need.module}.{need.path}"
    try:
        from unit_gateway.mitm import patches

        found: Any = importlib.import_module(need.module)
        for part in need.path.split("."):
            found = patches.unpatched(found, part)
    except (ImportError, AttributeError):
        return Problem(f"{where} is missing", missing=True)
    if need.params is not None:
        try:
            actual = shape(found)
        except (TypeError, ValueError):
            actual = "(unreadable)"
        if actual != need.params:
            return Problem(f"{where}{actual} is not {need.path}{need.params}", missing=False)
    absent = [name for name in need.attributes if not _has_attribute(found, name)]
    if absent:
        return Problem(f"{where} has no {', '.join(absent)}", missing=True)
    return None


def problems(version: str | None = None, needs: Iterable[Need] = NEEDS) -> list[Problem]:
    """Everything about the running mitmproxy (or ``version``) the gateway cannot rely on."""
    version = version or mitmproxy_version()
    found: list[Problem] = []
    low, high = SUPPORTED
    if not low <= version_of(version)[:2] < high:
        found.append(Problem("its version is outside that range", missing=False))
    found += [problem for need in needs if (problem := _check(need)) is not None]
    return found


def refusal(found: list[Problem], version: str) -> str:
    """The one line that says why the gateway does not start, and what an operator can do."""
    what = "; ".join(problem.text for problem in found)
    line = (
        f"unit-gateway: refusing to start on mitmproxy {version} "
        f"(supported: mitmproxy{SUPPORTED_TEXT}): {what}; "
    )
    if any(problem.missing for problem in found):
        return line + f"install a supported mitmproxy (pip install 'mitmproxy{SUPPORTED_TEXT}')"
    return line + (
        f"install a supported mitmproxy, or at your own risk --set {OVERRIDE_OPTION}={version}"
    )


class MitmproxyGate:
    """The first of the gateway's addons: it decides in ``load``, before any other addon of
    the gateway loads (and so before anything of mitmproxy is replaced), whether the gateway
    may run (see :func:`approved`). Refused, it answers every request with a 503 and lets no
    other addon of the gateway see it; at start-up mitmproxy exits on the logged error."""

    def __init__(self, found: list[Problem] | None = None) -> None:
        self.version = mitmproxy_version()
        self.problems = problems(self.version) if found is None else found

    @property
    def cannot_run(self) -> bool:
        """A name the gateway needs is missing: no override can help."""
        return any(problem.missing for problem in self.problems)

    def load(self, loader: Any) -> None:
        global _approved
        loader.add_option(
            OVERRIDE_OPTION,
            str,
            "",
            "Run unit-gateway on this mitmproxy version although it is outside the supported "
            f"range (mitmproxy{SUPPORTED_TEXT}), at your own risk: its value must be the "
            "running version.",
        )
        # The value given with --set waits until the option exists: take it up now, so the
        # decision is made before the next addon loads.
        loader.master.options.process_deferred()
        overridden = getattr(loader.master.options, OVERRIDE_OPTION) == self.version
        if not self.problems:
            _approved = True
        elif overridden and not self.cannot_run:
            _approved = True
            logger.warning(
                "unit-gateway: running on mitmproxy %s, outside what it was tested on "
                "(mitmproxy%s), because %s=%s is set: %s",
                self.version,
                SUPPORTED_TEXT,
                OVERRIDE_OPTION,
                self.version,
                "; ".join(problem.text for problem in self.problems),
            )
        else:
            _approved = False
            # A logged error at start-up makes mitmproxy exit with status 1 before it serves.
            logger.error(refusal(self.problems, self.version))
            self.requestheaders = self._refuse
            for hook in _HALTED_HOOKS:
                setattr(self, hook, _halt)

    def _refuse(self, flow: Any) -> None:
        from unit_gateway.net import jsonapi

        flow.response = jsonapi.error_response(
            503,
            "gateway_not_started",
            f"unit-gateway does not run on mitmproxy {self.version} "
            f"(supported: mitmproxy{SUPPORTED_TEXT}); see the gateway's log",
        )
        _halt(flow)

    def done(self) -> None:
        global _approved
        _approved = False


#: A refused gate stops these for the gateway's other addons (they come after it).
_HALTED_HOOKS = ("request", "responseheaders", "response", "error")


def _halt(*args: Any) -> None:
    from mitmproxy import exceptions

    raise exceptions.AddonHalt()


_approved = False


def approved() -> bool:
    """The gateway may replace mitmproxy internals: the gate found nothing wrong, or the
    operator overrode it."""
    return _approved


def approve_if_supported() -> bool:
    """For code that installs replacements outside a mitmproxy run (tests, benchmarks): the
    same check, with no override."""
    global _approved
    _approved = not problems()
    return _approved
