"""Writes the Grafana dashboard ``dashboards/unit-gateway.json`` with Grafana's foundation SDK.

Edit this file, not the JSON, then run ``uv run python dashboards/build.py``. A test fails when
the committed JSON is not what this writes. Panel titles and PromQL expressions are users' links
and the Prometheus end-to-end test's input: change them on purpose only.
"""

from __future__ import annotations

import json
from pathlib import Path
from string import ascii_uppercase
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import heatmap as heatmap_builders
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import heatmap as heatmap_models
from grafana_foundation_sdk.models.prometheus import PromQueryFormat, QueryEditorMode

OUTPUT = Path(__file__).resolve().with_name("unit-gateway.json")

DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
#: Grafana 10.4's dashboard schema, which this SDK release models (its default is older).
SCHEMA_VERSION = 39

Steps = list[model.Threshold]
AnyPanel = timeseries.Panel | stat.Panel | table.Panel | heatmap_builders.Panel


# --- building blocks --------------------------------------------------------------------------


def steps(base: str, *above: tuple[float, str]) -> Steps:
    """Threshold steps: ``base`` colour, then each (value, colour) from that value up."""
    return [model.Threshold(value=None, color=base)] + [
        model.Threshold(value=value, color=color) for value, color in above
    ]


def query(
    expr: str,
    legend: str = "__auto",
    *,
    instant: bool = False,
    fmt: PromQueryFormat | None = None,
) -> prometheus.Dataquery:
    target = prometheus.Dataquery().expr(expr).legend_format(legend).datasource(DATASOURCE)
    target = target.editor_mode(QueryEditorMode.CODE)
    target = target.instant() if instant else target.range()
    return target.format(fmt) if fmt else target


def histogram_quantile(q: float, bucket: str, by: str, window: str = "$__rate_interval") -> str:
    """PromQL for the ``q`` quantile of a histogram; ``bucket``: its ``_bucket`` series."""
    return f"histogram_quantile({q}, sum by ({by}) (rate({bucket}[{window}])))"


def percentiles(bucket: str, by: str, legend: str) -> list[prometheus.Dataquery]:
    """p50, p95 and p99 of a histogram, one query each."""
    return [
        query(histogram_quantile(q, bucket, by), f"p{round(q * 100)} {legend}")
        for q in (0.5, 0.95, 0.99)
    ]


def with_queries[P: AnyPanel](panel: P, queries: list[prometheus.Dataquery], description: str) -> P:
    """Shared by every panel: the data source, the queries (refIds A, B, …), the description."""
    # The SDK's builders change themselves and return themselves.
    panel.datasource(DATASOURCE)
    for index, target in enumerate(queries):
        panel.with_target(target.ref_id(ascii_uppercase[index]))
    if description:
        panel.description(description)
    return panel


def timeseries_panel(
    title: str,
    unit: str,
    *queries: prometheus.Dataquery,
    description: str = "",
    width: int = 8,
    bars: bool = False,
    stacked: bool = False,
    min_: float | None = None,
    max_: float | None = None,
    alert_line: Steps | None = None,
) -> timeseries.Panel:
    """A time series with a table legend (last and max); ``alert_line`` draws its thresholds."""
    panel = (
        timeseries.Panel()
        .title(title)
        .unit(unit)
        .span(width)
        .height(8)
        .draw_style(common.GraphDrawStyle.BARS if bars else common.GraphDrawStyle.LINE)
        .line_width(1)
        .fill_opacity(30 if stacked else 10)
        .show_points(common.VisibilityMode.NEVER)
        .span_nulls(False)
        .stacking(
            common_builders.StackingConfig()
            .mode(common.StackingMode.NORMAL if stacked else common.StackingMode.NONE)
            .group("A")
        )
        .color_scheme(dash.FieldColor().mode(model.FieldColorModeId.PALETTE_CLASSIC))
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
        .tooltip(
            common_builders.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )
    if min_ is not None:
        panel = panel.min(min_)
    if max_ is not None:
        panel = panel.max(max_)
    if alert_line is not None:
        panel = panel.thresholds(thresholds(alert_line)).thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE)
        )
    return with_queries(panel, list(queries), description)


def stat_panel(
    title: str,
    unit: str,
    target: prometheus.Dataquery,
    *,
    description: str = "",
    colors: Steps | None = None,
    color_mode: common.BigValueColorMode = common.BigValueColorMode.VALUE,
    sparkline: bool = True,
    decimals: int | None = None,
    width: int = 3,
    height: int = 4,
    field: str = "",
    text_mode: common.BigValueTextMode = common.BigValueTextMode.AUTO,
) -> stat.Panel:
    """A single value (the last one) coloured by ``colors``; ``field`` picks a label's column."""
    panel = (
        stat.Panel()
        .title(title)
        .unit(unit)
        .span(width)
        .height(height)
        .color_scheme(dash.FieldColor().mode(model.FieldColorModeId.THRESHOLDS))
        .thresholds(thresholds(colors or steps("green")))
        .reduce_options(
            common_builders.ReduceDataOptions().calcs(["lastNotNull"]).fields(field).values(False)
        )
        .color_mode(color_mode)
        .graph_mode(common.BigValueGraphMode.AREA if sparkline else common.BigValueGraphMode.NONE)
        .justify_mode(common.BigValueJustifyMode.AUTO)
        .text_mode(text_mode)
        .orientation(common.VizOrientation.AUTO)
    )
    if decimals is not None:
        panel = panel.decimals(decimals)
    return with_queries(panel, [target], description)


def thresholds(colors: Steps) -> dash.ThresholdsConfig:
    return dash.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(colors)


# --- the dashboard, row by row ----------------------------------------------------------------

ROUTE = '{route=~"$route"}'
ALERT_ABOVE_2S = steps("transparent", (2, "red"))


def overview() -> list[AnyPanel]:
    return [
        stat_panel(
            "Gateway up",
            "short",
            query('up{job="unit-gateway"}', "{{instance}}", instant=True),
            description="Whether Prometheus can scrape the gateway's /metrics (job unit-gateway).",
            colors=steps("red", (1, "green")),
        ).mappings(
            [
                model.ValueMap(
                    options={
                        "0": model.ValueMappingResult(text="DOWN", color="red"),
                        "1": model.ValueMappingResult(text="UP", color="green"),
                    }
                )
            ]
        ),
        stat_panel(
            "Version",
            "short",
            query(
                "max by (version) (unit_gateway_build_info)",
                "{{version}}",
                instant=True,
                fmt=PromQueryFormat.TABLE,
            ),
            description="unit_gateway_build_info: the version of every running gateway.",
            color_mode=common.BigValueColorMode.NONE,
            field="/^version$/",
            text_mode=common.BigValueTextMode.VALUE,
        ),
        stat_panel(
            "Requests/s to Unit",
            "reqps",
            query(f"sum(rate(unit_gateway_requests_total{ROUTE}[$__rate_interval]))"),
            description="Requests to Unit through the gateway (routes selected above).",
        ),
        stat_panel(
            "5xx ratio",
            "percentunit",
            query(
                "(sum(rate(unit_gateway_requests_total"
                '{route=~"$route",status=~"5.."}[$__rate_interval])) or vector(0))'
                f" / sum(rate(unit_gateway_requests_total{ROUTE}[$__rate_interval]))"
            ),
            description=(
                "Share of requests the caller got a 5xx for (from Unit or from the gateway)."
            ),
            colors=steps("green", (0.01, "orange"), (0.05, "red")),
            decimals=2,
        ),
        stat_panel(
            "p99 whole request",
            "s",
            query(
                histogram_quantile(
                    0.99, f"unit_gateway_request_duration_seconds_bucket{ROUTE}", "le"
                )
            ),
            description="99th percentile of the whole request as the caller sees it (SLO: 2 s).",
            colors=steps("green", (1, "orange"), (2, "red")),
        ),
        stat_panel(
            "Rate-limit headroom",
            "percentunit",
            query(
                "min(1 - sum by (environment) (unit_gateway_rate_limit_requests_per_minute)"
                " / max by (environment) (unit_gateway_rate_limit_configured_per_minute))"
            ),
            description=(
                "Share of Unit's per-minute limit still unused, over every replica: Unit counts"
                " requests per client IP, and replicas behind one egress address share it."
            ),
            colors=steps("red", (0.2, "orange"), (0.5, "green")),
        ),
        stat_panel(
            "Token cache hit ratio",
            "percentunit",
            query(
                "sum(rate(unit_gateway_token_cache_hits_total[$__rate_interval]))"
                " / (sum(rate(unit_gateway_token_cache_hits_total[$__rate_interval]))"
                " + (sum(rate(unit_gateway_token_cache_misses_total[$__rate_interval]))"
                " or vector(0)))"
            ),
            description="Share of token lookups served from the cache without a mint.",
            colors=steps("orange", (0.9, "green")),
        ),
        stat_panel(
            "Since last good config",
            "s",
            query("time() - max(unit_gateway_config_last_reload_success_timestamp_seconds)"),
            description="Time since the configuration was last loaded or reloaded successfully.",
            color_mode=common.BigValueColorMode.NONE,
        ),
    ]


def traffic() -> list[AnyPanel]:
    return [
        timeseries_panel(
            "Requests/s by route",
            "reqps",
            query(
                f"sum by (route) (rate(unit_gateway_requests_total{ROUTE}[$__rate_interval]))",
                "{{route}}",
            ),
            description=(
                "Requests to Unit through the gateway by route template (other = unknown path)."
            ),
            width=12,
        ),
        timeseries_panel(
            "Requests/s by status class",
            "reqps",
            query(
                "sum by (status_class) (label_replace("
                f"rate(unit_gateway_requests_total{ROUTE}[$__rate_interval]),"
                ' "status_class", "${1}xx", "status", "([0-9]).*"))',
                "{{status_class}}",
            ),
            description="By the status the caller got: 2xx, 4xx (incl. gateway refusals), 5xx.",
            width=12,
            stacked=True,
        ),
        timeseries_panel(
            "Requests/s by route and status",
            "reqps",
            query(
                "sum by (route, method, status) ("
                f"rate(unit_gateway_requests_total{ROUTE}[$__rate_interval]))",
                "{{method}} {{route}} {{status}}",
            ),
            width=12,
        ),
        timeseries_panel(
            "Non-Unit requests/s",
            "reqps",
            query("sum(rate(unit_gateway_non_unit_requests_total[$__rate_interval]))", "not Unit"),
            description=(
                "Requests for hosts that are not configured Unit upstreams:"
                " passed through untouched, no token."
            ),
            width=12,
        ),
    ]


def latency() -> list[AnyPanel]:
    def mean(histogram: str) -> str:
        return (
            f"sum(rate({histogram}_sum{ROUTE}[$__rate_interval]))"
            f" / sum(rate({histogram}_count{ROUTE}[$__rate_interval]))"
        )

    return [
        timeseries_panel(
            "Whole request p50 / p95 / p99 by route",
            "s",
            *percentiles(
                f"unit_gateway_request_duration_seconds_bucket{ROUTE}", "le, route", "{{route}}"
            ),
            description="As the caller sees it: gateway, token minting and Unit.",
            alert_line=ALERT_ABOVE_2S,
        ),
        timeseries_panel(
            "Unit (upstream) p50 / p95 / p99 by route",
            "s",
            *percentiles(
                f"unit_gateway_upstream_duration_seconds_bucket{ROUTE}", "le, route", "{{route}}"
            ),
            description="The time Unit took to answer.",
        ),
        timeseries_panel(
            "Gateway overhead p50 / p95 / p99 by route",
            "s",
            *percentiles(f"unit_gateway_overhead_seconds_bucket{ROUTE}", "le, route", "{{route}}"),
            description="Time the gateway itself added, excluding Unit and token minting.",
        ),
        timeseries_panel(
            "Mean time per request by component",
            "s",
            query(mean("unit_gateway_request_duration_seconds"), "whole request"),
            query(mean("unit_gateway_upstream_duration_seconds"), "Unit"),
            query(mean("unit_gateway_overhead_seconds"), "gateway overhead"),
            width=12,
        ),
        with_queries(
            heatmap_builders.Panel()
            .title("Whole request latency distribution")
            .span(12)
            .height(8)
            .scale_distribution(
                common_builders.ScaleDistributionConfig().type(common.ScaleDistribution.LINEAR)
            )
            .calculate(False)
            .y_axis(
                heatmap_builders.YAxisConfig().unit("s").axis_placement(common.AxisPlacement.LEFT)
            )
            .color(
                heatmap_builders.HeatmapColorOptions()
                .mode(heatmap_models.HeatmapColorMode.SCHEME)
                .scheme("Oranges")
                .fill("dark-orange")
                .scale(heatmap_models.HeatmapColorScale.EXPONENTIAL)
                .exponent(0.5)
                .steps(64)
            )
            .cell_gap(1)
            .mode(common.TooltipDisplayMode.SINGLE)
            .hide_y_histogram()
            .show_legend()
            .rows_frame(heatmap_builders.RowsHeatmapOptions().layout(common.HeatmapCellLayout.AUTO))
            .filter_values(heatmap_builders.FilterValueRange().le(1e-09)),
            [
                query(
                    "sum by (le) (increase("
                    f"unit_gateway_request_duration_seconds_bucket{ROUTE}[$__rate_interval]))",
                    "{{le}}",
                    fmt=PromQueryFormat.HEATMAP,
                )
            ],
            "Requests per latency bucket (routes selected above).",
        ),
    ]


def rate_limits() -> list[AnyPanel]:
    return [
        timeseries_panel(
            "Rate-limit headroom",
            "percentunit",
            query("unit_gateway_rate_limit_headroom_ratio", "{{environment}}"),
            description="1 - requests in the last 60 s / configured limit. Alert below 20 %.",
            min_=0,
            max_=1,
            alert_line=steps("red", (0.2, "transparent")),
        ),
        timeseries_panel(
            "Requests in the last minute vs configured limit",
            "short",
            query("unit_gateway_rate_limit_requests_per_minute", "sent {{environment}}"),
            query("unit_gateway_rate_limit_configured_per_minute", "limit {{environment}}"),
            description=(
                "Sliding 60 s window of requests the gateway sent to Unit,"
                " and the configured per-minute limit."
            ),
            min_=0,
        ),
        timeseries_panel(
            "Unit 429s/s by route",
            "reqps",
            query(
                "sum by (route) (rate("
                f"unit_gateway_upstream_rate_limited_total{ROUTE}[$__rate_interval]))",
                "{{route}}",
            ),
            description="Too Many Requests answered by Unit itself.",
            bars=True,
        ),
        timeseries_panel(
            "Retry-After sent by Unit",
            "s",
            query("unit_gateway_upstream_retry_after_seconds", "Retry-After"),
            description="The last Retry-After Unit sent with a 429 (absent until seen).",
            width=12,
        ),
        timeseries_panel(
            "Unit-reported limit and remaining",
            "short",
            query("unit_gateway_upstream_ratelimit_remaining", "remaining {{environment}}"),
            query("unit_gateway_upstream_ratelimit_limit", "limit {{environment}}"),
            description="From X-RateLimit-* / RateLimit response headers, when Unit sends them.",
            width=12,
            min_=0,
        ),
    ]


def tokens() -> list[AnyPanel]:
    hits = "sum by (kind) (rate(unit_gateway_token_cache_hits_total[$__rate_interval]))"
    misses = "sum by (kind) (rate(unit_gateway_token_cache_misses_total[$__rate_interval]))"
    # "or other * 0": a kind with only hits or only misses still gets a ratio.
    hit_ratio = f"({hits} or {misses} * 0) / (({hits} or {misses} * 0) + ({misses} or {hits} * 0))"

    def increase(by: str, metric: str) -> prometheus.Dataquery:
        legend = " ".join(f"{{{{{label}}}}}" for label in by.split(", "))
        return query(f"sum by ({by}) (increase({metric}[$__rate_interval]))", legend)

    return [
        timeseries_panel(
            "Token cache hit ratio by kind",
            "percentunit",
            query(hit_ratio, "{{kind}}"),
            min_=0,
            max_=1,
        ),
        timeseries_panel(
            "Cache lookups/s", "ops", query(hits, "hit {{kind}}"), query(misses, "miss {{kind}}")
        ),
        timeseries_panel(
            "Cached tokens",
            "short",
            query("sum by (kind) (unit_gateway_token_cache_entries)", "{{kind}}"),
            min_=0,
        ),
        timeseries_panel(
            "Mints/s by kind, strategy and outcome",
            "ops",
            query(
                "sum by (kind, strategy, outcome) ("
                "rate(unit_gateway_token_mints_total[$__rate_interval]))",
                "{{kind}} {{strategy}} {{outcome}}",
            ),
        ),
        timeseries_panel(
            "Mint latency p50 / p95 / p99",
            "s",
            *percentiles(
                "unit_gateway_token_mint_duration_seconds_bucket",
                "le, kind, strategy",
                "{{kind}} {{strategy}}",
            ),
            description="Token creation including any verification step.",
        ),
        timeseries_panel(
            "Mint failures",
            "short",
            query(
                "sum by (kind, strategy) (increase("
                'unit_gateway_token_mints_total{outcome="error"}[$__rate_interval]))'
                " or sum by (kind, strategy) ("
                "increase(unit_gateway_token_mints_total[$__rate_interval])) * 0",
                "{{kind}} {{strategy}}",
            ),
            bars=True,
        ),
        timeseries_panel(
            "Verifications started",
            "short",
            increase("kind", "unit_gateway_verifications_started_total"),
            description=(
                "Two-factor verifications the gateway asked Unit for (sandbox-otp, challenge)."
            ),
            bars=True,
        ),
        timeseries_panel(
            "Challenges by outcome",
            "short",
            increase("kind, outcome", "unit_gateway_challenges_total"),
            description=(
                "Challenges handed to callers: issued, reissued (the open one handed out again),"
                " completed, refused (Unit did not accept the code; the challenge stays open),"
                " error (Unit failed), or unknown (a stale, used or foreign challenge id)."
            ),
            bars=True,
        ),
        timeseries_panel(
            "Refreshes ahead of expiry",
            "short",
            increase("kind, outcome", "unit_gateway_token_refreshes_total"),
            bars=True,
        ),
        timeseries_panel(
            "Upstream 401 retries",
            "short",
            increase("kind, outcome", "unit_gateway_upstream_401_retries_total"),
            description="Unit refused an injected token: evicted, minted again, retried once.",
            bars=True,
        ),
        timeseries_panel(
            "Learned tokens",
            "short",
            increase("kind", "unit_gateway_learned_tokens_total"),
            description="Tokens callers created through the gateway, cached for reuse.",
            bars=True,
        ),
        timeseries_panel(
            "Local verification-limit refusals",
            "short",
            increase("kind", "unit_gateway_verification_limit_refusals_total"),
            description=(
                "Verifications refused by the gateway (5 per 10 minutes per customer or card)"
                " before spending Unit's limit."
            ),
            bars=True,
        ),
    ]


def gateway_overhead() -> list[AnyPanel]:
    return [
        timeseries_panel(
            "Overhead share of request time",
            "percentunit",
            query(
                f"sum(rate(unit_gateway_overhead_seconds_sum{ROUTE}[$__rate_interval]))"
                f" / sum(rate(unit_gateway_request_duration_seconds_sum{ROUTE}[$__rate_interval]))",
                "overhead / whole request",
            ),
            min_=0,
        ),
        timeseries_panel(
            "Mean overhead by route",
            "s",
            query(
                f"sum by (route) (rate(unit_gateway_overhead_seconds_sum{ROUTE}[$__rate_interval]))"
                " / sum by (route) ("
                f"rate(unit_gateway_overhead_seconds_count{ROUTE}[$__rate_interval]))",
                "{{route}}",
            ),
        ),
        timeseries_panel(
            "Overhead p99 (all routes)",
            "s",
            query(
                histogram_quantile(0.99, f"unit_gateway_overhead_seconds_bucket{ROUTE}", "le"),
                "p99",
            ),
            query(
                histogram_quantile(0.5, f"unit_gateway_overhead_seconds_bucket{ROUTE}", "le"), "p50"
            ),
            description="Alert GatewayOverheadHigh: p99 above 50 ms for 10 minutes.",
            alert_line=steps("transparent", (0.05, "red")),
        ),
    ]


def redaction_and_configuration() -> list[AnyPanel]:
    return [
        timeseries_panel(
            "Redactions/s by rule",
            "ops",
            query(
                "sum by (rule) (rate(unit_gateway_redactions_total[$__rate_interval]))", "{{rule}}"
            ),
            description="Values replaced in what people see and files keep, by redaction rule.",
        ),
        timeseries_panel(
            "Config reloads by outcome",
            "short",
            query(
                "sum by (outcome) (increase(unit_gateway_config_reloads_total[$__rate_interval]))",
                "{{outcome}}",
            ),
            description="A failed reload keeps the running configuration; see the gateway's log.",
            bars=True,
        ),
        stat_panel(
            "Last successful config load",
            "dateTimeAsIso",
            query(
                "max(unit_gateway_config_last_reload_success_timestamp_seconds) * 1000",
                instant=True,
            ),
            color_mode=common.BigValueColorMode.NONE,
            width=4,
        ),
        with_queries(
            table.Panel()
            .title("Gateways")
            .span(4)
            .height(8)
            .override_by_name("Value", [model.DynamicConfigValue(id_val="displayName", value="up")])
            .show_header(True)
            .cell_height(common.TableCellHeight.SM)
            .with_transformation(
                model.DataTransformerConfig(
                    id_val="organize", options={"excludeByName": {"Time": True}}
                )
            ),
            [
                query(
                    "max by (instance, version) ("
                    'unit_gateway_build_info * on (instance) group_left up{job="unit-gateway"})',
                    "",
                    instant=True,
                    fmt=PromQueryFormat.TABLE,
                )
            ],
            "Every scraped gateway: version and whether it is up.",
        ),
        # Placed under "Last successful config load" (see BELOW).
        stat_panel(
            "Redirect loops (1 h)",
            "short",
            query("sum(increase(unit_gateway_redirect_loops_total[1h]))", instant=True),
            description=(
                "Connections of the gateway's own to Unit that a firewall rule sent back to it,"
                " closed by the gateway. Anything above 0: the redirect rule does not exclude the"
                " gateway's user (docs/transparent-mode.md)."
            ),
            colors=steps("green", (1, "red")),
            color_mode=common.BigValueColorMode.BACKGROUND,
            sparkline=False,
            decimals=0,
            width=4,
        ),
    ]


def shared_store() -> list[AnyPanel]:
    return [
        stat_panel(
            "Store up",
            "short",
            query("min(unit_gateway_store_up)", instant=True),
            description=(
                "1 while every replica's shared store (Redis) answers; 0: some replica runs on its"
                " own tokens, challenges and limits (no request fails for it, but tokens are"
                " minted per replica). No data: no store configured."
            ),
            colors=steps("red", (1, "green")),
            color_mode=common.BigValueColorMode.BACKGROUND,
            sparkline=False,
            decimals=0,
            width=4,
            height=8,
        ),
        timeseries_panel(
            "Store calls/s by outcome",
            "ops",
            query(
                "sum by (outcome) (rate(unit_gateway_store_operations_total[5m]))", "{{outcome}}"
            ),
            description=(
                "Calls to the shared store: ok, timeout, error, and skipped while it is down."
            ),
            width=7,
        ),
        timeseries_panel(
            "Store call p99 by operation",
            "s",
            query(
                histogram_quantile(
                    0.99,
                    "unit_gateway_store_operation_duration_seconds_bucket",
                    "le, operation",
                    "5m",
                ),
                "{{operation}}",
            ),
            description=(
                "How long calls to the shared store took"
                " (the deadline is store.operation_timeout_seconds)."
            ),
            width=7,
        ),
        timeseries_panel(
            "Shared tokens and waits/s",
            "ops",
            query("sum by (outcome) (rate(unit_gateway_fleet_events_total[5m]))", "{{outcome}}"),
            description=(
                "shared_hit: a token another replica minted; mint_wait: waiting for another"
                " replica's mint instead of minting; invalidated: a token dropped because another"
                " replica saw Unit refuse it."
            ),
            width=6,
        ),
    ]


ROWS = {
    "Overview": overview,
    "Traffic": traffic,
    "Latency": latency,
    "Rate limits": rate_limits,
    "Tokens": tokens,
    "Gateway overhead": gateway_overhead,
    "Redaction and configuration": redaction_and_configuration,
    "Shared store (replicas)": shared_store,
}

#: Panels placed under another one (the SDK lays panels out left to right only). Its layout
#: still moves on past them, so the next row starts lower in the JSON; Grafana floats it up.
BELOW = {"Redirect loops (1 h)": "Last successful config load"}

ROUTE_VALUES = "label_values(unit_gateway_requests_total, route)"
#: What Grafana's "Export for sharing externally" lists; the SDK does not model it.
REQUIRES = [
    {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.4.0"},
    {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
    {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
    {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
    {"type": "panel", "id": "heatmap", "name": "Heatmap", "version": ""},
    {"type": "panel", "id": "table", "name": "Table", "version": ""},
]


def build() -> dict[str, Any]:
    """The dashboard as Grafana imports it."""
    board = (
        dash.Dashboard("unit-gateway")
        .uid("unit-gateway")
        .description(
            "unit-gateway: traffic to Unit, latency by route, rate-limit headroom, tokens,"
            " redaction and configuration."
        )
        .tags(["unit-gateway", "unit", "mitmproxy"])
        .editable()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .time("now-1h", "now")
        .timezone("")
        .refresh("30s")
        .live_now(False)
        .week_start("")
        .version(1)
        .annotation(
            dash.AnnotationQuery()
            .name("Annotations & Alerts")
            .datasource(model.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .built_in(1)
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .type("dashboard")
        )
        .with_variable(
            dash.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
        .with_variable(
            dash.QueryVariable("route")
            .label("Route")
            .datasource(DATASOURCE)
            .query(
                {
                    "query": ROUTE_VALUES,
                    "refId": "PrometheusVariableQueryEditor-VariableQuery",
                    "qryType": 1,
                }
            )
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
            .include_all(True)
            .multi(True)
            .all_value(".*")
            .current(model.VariableOption(selected=True, text=["All"], value=["$__all"]))
        )
    )
    placed: dict[str, model.GridPos] = {}
    for row, panels in ROWS.items():
        board = board.with_row(dash.Row(row))
        for panel in panels():
            built = panel.build()
            title, size = built.title or "", built.grid_pos or model.GridPos()
            if title in BELOW:
                above = placed[BELOW[title]]
                built.grid_pos = model.GridPos(x=above.x, y=above.y + above.h, w=size.w, h=size.h)
            board = board.with_panel(panel)
            placed[title] = built.grid_pos or size
    dashboard = board.build()
    dashboard.schema_version = SCHEMA_VERSION
    for number, item in enumerate(dashboard.panels or [], 1):
        item.id_val = number  # in page order, as the hand-written JSON had them
    document: dict[str, Any] = json.loads(json.dumps(dashboard, cls=JSONEncoder))
    # The variable's query as Grafana's variable editor shows it; the SDK has no field for it.
    for variable in document["templating"]["list"]:
        if variable["name"] == "route":
            variable["definition"] = ROUTE_VALUES
    return {"__inputs": [], "__elements": {}, "__requires": REQUIRES, **document}


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}")
