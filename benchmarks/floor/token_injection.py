"""mitmdump script: the gateway's token injection without its redaction rules or metrics
export (a benchmark floor).

What a request with a placeholder needs to reach Unit with a real token, through the
gateway's own addons: the core (configuration), the patch point and side table that keep
the real ``Authorization`` out of the flow and put it on the wire, the token addon (route
match, identity, cache) and the loop guard. Only two parts are left out: the Redactor finds
nothing (no header, URL or body is redacted), and the metrics addon does not run (the token
addon still counts into a registry nothing serves).
proxy_overhead.py runs it with ``--set unit_gateway_config=…`` and the placeholder, like the
gateway.
"""

from collections import Counter
from typing import Any

from unit_gateway.config.core import GatewayCore
from unit_gateway.config.schema import LoadedConfig
from unit_gateway.metrics.registry import GatewayMetrics
from unit_gateway.mitm.chain import AddonChain
from unit_gateway.net.loops import RedirectLoopGuard
from unit_gateway.redaction.addon import FlowRedaction
from unit_gateway.redaction.engine import RedactedBody, Redactor
from unit_gateway.tokens.addon import TokenInjector


class NothingToRedact(Redactor):
    def header_fields_are_clean(self, fields: Any) -> bool:
        return True

    def redact_url(self, url: str, *, counts: Counter[str] | None = None) -> str:
        return url

    def redact_text(self, text: str, *, counts: Counter[str] | None = None) -> str:
        return text

    def redact_body(self, content: bytes, *args: Any, **kwargs: Any) -> RedactedBody:
        return RedactedBody(content, "text")


class InjectionOnly(FlowRedaction):
    def reconfigure(self, config: LoadedConfig) -> None:
        self.redactor = NothingToRedact()


metrics = GatewayMetrics()  # the token addon counts into it; nothing serves it
core = GatewayCore(metrics)
redaction = InjectionOnly(core, metrics)
tokens = TokenInjector(core, metrics, redaction)
addons = [AddonChain(core, redaction, tokens, RedirectLoopGuard(metrics))]
