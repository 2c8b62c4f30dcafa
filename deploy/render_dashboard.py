"""Plot the Grafana dashboard's panels from a live Prometheus (for docs/img/dashboard.png).

Grafana cannot run on the project's machines, so this reads ``deploy/grafana/dashboards/squid.json``,
runs every panel's PromQL against Prometheus' HTTP API over a recent window and draws the panels with
matplotlib where the dashboard's grid puts them: time series as lines, stats as big numbers, the
heatmap as a heatmap. Template variables become "all" (``.*``) and ``$__rate_interval`` a fixed range.

    python deploy/render_dashboard.py --prometheus http://127.0.0.1:9090 --minutes 15 \
        --out docs/img/dashboard.png

``deploy/native_stack.py demo`` starts the stack natively, sends traffic and calls this.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "squid.json"

BACKGROUND = "#111217"
PANEL = "#181b1f"
GRID = "#2c3036"
TEXT = "#ccccdc"
MUTED = "#8e8e9e"
PALETTE = (
    "#73bf69",
    "#f2cc0c",
    "#8ab8ff",
    "#ff780a",
    "#f2495c",
    "#5794f2",
    "#b877d9",
    "#fade2a",
    "#96d98d",
    "#ffb357",
    "#ca95e5",
    "#ff7383",
)


class PrometheusError(RuntimeError):
    """A query Prometheus refused (bad PromQL) or could not answer."""


@dataclass
class Series:
    labels: dict[str, str]
    times: list[float]
    values: list[float]


@dataclass
class PanelResult:
    title: str
    kind: str
    series: int = 0
    points: int = 0
    errors: list[str] = field(default_factory=list)


class Prometheus:
    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: dict[str, str]) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=self.timeout) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            try:
                detail = json.load(exc).get("error", str(exc))
            except ValueError:
                detail = str(exc)
            raise PrometheusError(f"{params.get('query', path)}: {detail}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{params.get('query', path)}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float) -> list[Series]:
        data = self._get("/api/v1/query", {"query": expr, "time": f"{at:.3f}"})
        if data["resultType"] == "scalar":
            return [Series({}, [data["result"][0]], [float(data["result"][1])])]
        return [
            Series(item["metric"], [item["value"][0]], [float(item["value"][1])]) for item in data["result"]
        ]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        data = self._get("/api/v1/query_range", params)
        return [
            Series(
                item["metric"],
                [float(t) for t, _ in item["values"]],
                [float(v) for _, v in item["values"]],
            )
            for item in data["result"]
        ]


def substitute(expr: str, rate_interval: str, variables: dict[str, str] | None = None) -> str:
    """Grafana's variables as a dashboard viewer with "All" selected would send them."""
    expr = expr.replace("$__rate_interval", rate_interval).replace("$__interval", rate_interval)
    expr = expr.replace("${__rate_interval}", rate_interval)
    for name, value in (variables or {}).items():
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", expr)


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every query in the dashboard, template variable queries included."""
    found = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                found.append((panel.get("title", ""), target["expr"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", text or "")
        if match:
            found.append((f"variable {variable['name']}", match.group(1)))
    return found


def iter_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def legend(fmt: str, labels: dict[str, str]) -> str:
    if not fmt or fmt == "__auto":
        shown = {k: v for k, v in labels.items() if k != "__name__"}
        return ", ".join(f"{k}={v}" for k, v in sorted(shown.items())) or labels.get("__name__", "value")
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()


def format_value(value: float, unit: str, decimals: int | None = None) -> str:
    if math.isnan(value):
        return "NaN"
    if unit == "percentunit":
        return f"{value * 100:.{1 if decimals is None else decimals}f}%"
    if unit == "s":
        if value == 0:
            return "0"
        if abs(value) < 1:
            return f"{value * 1000:.3g} ms"
        return f"{value:.3g} s"
    suffix = {"reqps": " req/s", "ops": "/s"}.get(unit, "")
    if decimals is not None:
        return f"{value:.{decimals}f}{suffix}"
    return f"{value:.3g}{suffix}"


def render(
    prometheus: Prometheus,
    out: Path,
    *,
    minutes: float = 15.0,
    end: float | None = None,
    step: float = 15.0,
    rate_interval: str = "1m",
    dashboard_path: Path = DASHBOARD,
    dpi: int = 100,
) -> list[PanelResult]:
    """Draw the dashboard into ``out`` (PNG); returns what each panel got. Raises on bad PromQL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    dashboard = json.loads(dashboard_path.read_text(encoding="utf-8"))
    end = end if end is not None else time.time()
    start = end - minutes * 60
    panels = iter_panels(dashboard)
    rows_total = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    header = 2.2  # grid units for the title bar
    unit_w, unit_h = 0.8, 0.34  # inches per grid column / row
    fig_h = (rows_total + header) * unit_h
    fig = plt.figure(figsize=(24 * unit_w, fig_h), facecolor=BACKGROUND, dpi=dpi)
    window = f"{datetime.fromtimestamp(start):%Y-%m-%d %H:%M} – {datetime.fromtimestamp(end):%H:%M}"
    fig.text(
        0.008,
        1 - 0.9 * unit_h / fig_h,
        dashboard.get("title", ""),
        color=TEXT,
        fontsize=17,
        fontweight="bold",
        va="center",
    )
    fig.text(
        0.992,
        1 - 0.9 * unit_h / fig_h,
        f"{window}   (rendered from Prometheus, {prometheus.url})",
        color=MUTED,
        fontsize=10,
        va="center",
        ha="right",
    )

    def rect(pos: dict[str, int], pad_top: float = 0.0) -> tuple[float, float, float, float]:
        left = pos["x"] / 24
        width = pos["w"] / 24
        top = (pos["y"] + header) / (rows_total + header)
        height = pos["h"] / (rows_total + header)
        return left, 1 - top - height, width, height - pad_top

    results: list[PanelResult] = []
    for panel in panels:
        kind = panel.get("type", "")
        pos = panel["gridPos"]
        if kind == "row":
            left, bottom, width, height = rect(pos)
            fig.text(
                left + 0.004,
                bottom + height * 0.35,
                panel.get("title", ""),
                color=TEXT,
                fontsize=13,
                fontweight="bold",
            )
            continue
        result = PanelResult(panel.get("title", ""), kind)
        results.append(result)
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        unit = defaults.get("unit", "short")
        decimals = defaults.get("decimals")
        left, bottom, width, height = rect(pos)
        margin_x, margin_y = 0.003, 0.004
        frame = fig.add_axes(
            (left + margin_x, bottom + margin_y, width - 2 * margin_x, height - 2 * margin_y)
        )
        frame.set_facecolor(PANEL)
        frame.set_xticks([])
        frame.set_yticks([])
        for spine in frame.spines.values():
            spine.set_color(GRID)
        title_h = 0.32 / (height * fig_h)
        frame.text(
            0.012,
            1 - title_h / 2,
            panel.get("title", ""),
            transform=frame.transAxes,
            color=TEXT,
            fontsize=10.5,
            fontweight="bold",
            va="center",
        )
        targets = [t for t in panel.get("targets", []) if t.get("expr")]

        if kind == "stat":
            texts = []
            for target in targets:
                expr = substitute(target["expr"], rate_interval)
                try:
                    instant = prometheus.query(expr, end)
                except PrometheusError as exc:
                    result.errors.append(str(exc))
                    continue
                result.series += len(instant)
                result.points += len(instant)
                for item in instant:
                    if panel.get("options", {}).get("textMode") == "name":
                        texts.append(legend(target.get("legendFormat", ""), item.labels))
                    else:
                        texts.append(format_value(item.values[-1], unit, decimals))
            shown = "  ".join(texts) if texts else "No data"
            steps = defaults.get("thresholds", {}).get("steps", [])
            color = "#73bf69"
            if texts and steps and panel.get("options", {}).get("textMode") != "name":
                try:
                    value = float(re.sub(r"[^0-9.eE+-]", "", texts[0]) or "nan")
                except ValueError:
                    value = float("nan")
                for step_def in steps:
                    if step_def.get("value") is None or value >= step_def["value"]:
                        color = {"green": "#73bf69", "red": "#f2495c"}.get(
                            step_def["color"], step_def["color"]
                        )
            size = 22 if len(shown) < 14 else 15 if len(shown) < 26 else 12
            frame.text(
                0.5,
                0.42,
                shown,
                transform=frame.transAxes,
                color=color if texts else MUTED,
                fontsize=size,
                fontweight="bold",
                ha="center",
                va="center",
            )
            continue

        plot_rect = (
            left + margin_x + 0.032 * (8 / pos["w"]),
            bottom + margin_y + height * 0.22,
            width - 2 * margin_x - 0.04 * (8 / pos["w"]),
            height * 0.64,
        )
        ax = fig.add_axes(plot_rect)
        ax.set_facecolor(PANEL)
        ax.tick_params(colors=MUTED, labelsize=7.5)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.grid(True, color=GRID, linewidth=0.6)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        ax.set_xlim(
            float(mdates.date2num(datetime.fromtimestamp(start))),
            float(mdates.date2num(datetime.fromtimestamp(end))),
        )

        if kind == "heatmap":
            _heatmap(ax, prometheus, targets, start, end, step, rate_interval, result)
            continue

        overrides = {
            o["matcher"]["options"]: {p["id"]: p["value"] for p in o.get("properties", [])}
            for o in panel.get("fieldConfig", {}).get("overrides", [])
            if o.get("matcher", {}).get("id") == "byName"
        }
        right_ax = None
        handles, names = [], []
        color_index = 0
        for target in targets:
            expr = substitute(target["expr"], rate_interval)
            try:
                series_list = prometheus.query_range(expr, start, end, step)
            except PrometheusError as exc:
                result.errors.append(str(exc))
                continue
            for series in series_list:
                finite = [
                    (t, v) for t, v in zip(series.times, series.values, strict=True) if math.isfinite(v)
                ]
                if not finite:
                    continue
                name = legend(target.get("legendFormat", ""), series.labels)
                target_ax = ax
                override = overrides.get(name, {})
                if override.get("custom.axisPlacement") == "right":
                    if right_ax is None:
                        right_ax = ax.twinx()
                        right_ax.tick_params(colors=MUTED, labelsize=7.5)
                        for spine in right_ax.spines.values():
                            spine.set_visible(False)
                        series_unit = str(override.get("unit", unit))
                        right_ax.yaxis.set_major_formatter(
                            FuncFormatter(
                                lambda v, _p, u=series_unit: format_value(v, u, 0 if u != "s" else None)
                            )
                        )
                    target_ax = right_ax
                color = PALETTE[color_index % len(PALETTE)]
                color_index += 1
                xs: list[float] = []
                ys: list[float] = []
                span_nulls = defaults.get("custom", {}).get("spanNulls", False)
                for index, (t, v) in enumerate(finite):
                    if index and not span_nulls and t - finite[index - 1][0] > 1.5 * step:
                        xs.append(xs[-1])
                        ys.append(math.nan)  # a gap: no line across missing samples
                    xs.append(float(mdates.date2num(datetime.fromtimestamp(t))))
                    ys.append(v)
                (line,) = target_ax.plot(xs, ys, color=color, linewidth=1.6)
                target_ax.fill_between(
                    xs,
                    [0.0 if math.isnan(v) else v for v in ys],
                    color=color,
                    alpha=0.08,
                    linewidth=0,
                    where=[not math.isnan(v) for v in ys],
                )
                handles.append(line)
                names.append(name)
                result.series += 1
                result.points += len(finite)
        if not handles:
            ax.text(
                0.5,
                0.5,
                "No data",
                transform=ax.transAxes,
                color=MUTED,
                ha="center",
                va="center",
                fontsize=11,
            )
        if "min" in defaults:
            ax.set_ylim(bottom=defaults["min"])
        else:
            ax.set_ylim(bottom=0)
        if "max" in defaults:
            ax.set_ylim(top=defaults["max"])
        ax.yaxis.set_major_formatter(
            FuncFormatter(lambda v, _p, u=unit: format_value(v, u, 0 if u == "percentunit" else None))
        )
        if handles:
            ncol = max(1, min(len(names), 4 if pos["w"] <= 8 else 6))
            ax.legend(
                handles,
                names,
                loc="upper left",
                bbox_to_anchor=(-0.02, -0.13),
                ncol=ncol,
                fontsize=7,
                frameon=False,
                labelcolor=TEXT,
                handlelength=1.2,
                columnspacing=1.0,
            )

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, facecolor=BACKGROUND, dpi=dpi)
    plt.close(fig)
    return results


def _heatmap(
    ax: Any,
    prometheus: Prometheus,
    targets: list[dict[str, Any]],
    start: float,
    end: float,
    step: float,
    rate_interval: str,
    result: PanelResult,
) -> None:
    """Cumulative ``le`` buckets over time -> counts per bucket and time step (Grafana's heatmap)."""
    import matplotlib.dates as mdates
    import numpy as np

    bounds: list[float] = []
    columns: dict[float, dict[float, float]] = {}
    for target in targets:
        try:
            series_list = prometheus.query_range(substitute(target["expr"], rate_interval), start, end, step)
        except PrometheusError as exc:
            result.errors.append(str(exc))
            continue
        for series in series_list:
            le = float(series.labels.get("le", "nan"))
            bounds.append(le)
            for t, v in zip(series.times, series.values, strict=True):
                columns.setdefault(t, {})[le] = v
    bounds = sorted(b for b in set(bounds) if math.isfinite(b))
    if not bounds or not columns:
        ax.text(0.5, 0.5, "No data", transform=ax.transAxes, color="#8e8e9e", ha="center", va="center")
        return
    times = sorted(columns)
    grid = np.zeros((len(bounds), len(times)))
    for j, t in enumerate(times):
        previous = 0.0
        for i, b in enumerate(bounds):
            cumulative = columns[t].get(b, previous)
            grid[i, j] = max(0.0, cumulative - previous)
            previous = cumulative
    result.series = len(bounds)
    result.points = int(np.count_nonzero(grid))
    edges = [0.0, *bounds]
    x0 = mdates.date2num(datetime.fromtimestamp(times[0] - step))
    x1 = mdates.date2num(datetime.fromtimestamp(times[-1]))
    ax.imshow(
        np.sqrt(grid),
        aspect="auto",
        origin="lower",
        extent=(x0, x1, edges[0], edges[-1]),
        cmap="inferno",
        interpolation="nearest",
    )
    ax.set_ylim(edges[0], edges[-1])
    ax.grid(False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus base URL")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "dashboard.png")
    parser.add_argument("--minutes", type=float, default=15.0, help="window ending now")
    parser.add_argument("--step", type=float, default=15.0, help="query resolution, seconds")
    parser.add_argument("--rate-interval", default="1m", help="what $__rate_interval becomes")
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    args = parser.parse_args(argv)
    results = render(
        Prometheus(args.prometheus),
        args.out,
        minutes=args.minutes,
        step=args.step,
        rate_interval=args.rate_interval,
        dashboard_path=args.dashboard,
    )
    failed = [r for r in results if r.errors]
    for r in results:
        status = "ERROR " + "; ".join(r.errors) if r.errors else f"{r.series} series, {r.points} points"
        print(f"{r.title:45s} {status}")
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
