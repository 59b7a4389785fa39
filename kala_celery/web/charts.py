"""The dashboard's charts, drawn on the server as inline SVG: no JavaScript, no library
(Decision 35 of docs/design.md).

Each chart is a `Chart`: the SVG (stretched to the width of its card: the shapes scale, the
lines keep their width, and there is no text inside it), the time labels under it and the
value labels beside it as plain HTML, and a one-line summary that is also the SVG's accessible
name. The numbers behind each chart are in a table the templates put in a <details>; a bar of
a job's strip also carries its own <title> (a tooltip, read by screen readers).

- `run_strip`: a job's last runs on a time axis, one bar each (height: duration; colour:
  state; below the line: how late it started), and its next occurrences on the same axis.
- `runs_per_minute`: the runs due per minute, stacked by state (store/activity.py).
- `lateness_per_minute`: the p50 and p99 of due -> start per minute, on a log scale, with the
  KalaRunLatenessHigh threshold (deploy/prometheus/) as a dashed line.

Colours are CSS classes (`c-success`, ...: static/style.css); the page's CSP allows no inline
styles, so positions are SVG attributes and HTML labels are spaced by flexbox.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from markupsafe import Markup, escape

from kala_celery.schedule.words import when
from kala_celery.store.activity import Activity, Hour

# Bottom to top in the stack; the words the pages use for each state (_macros.html).
STATES = ("success", "failed", "lost", "skipped", "started", "sent", "pending")
STATE_WORDS = {"pending": "pending", "sent": "queued", "started": "running",
               "success": "success", "failed": "failed", "lost": "lost", "skipped": "skipped"}
LATENESS_ALERT = 60.0  # seconds: KalaRunLatenessHigh's threshold (p99 over 5 min)
# The lateness axis: log scale from 10 ms to 10,000 s, lines at round times.
LATE_LOW, LATE_HIGH = -2, 4
LATE_LINES = (0.1, 1, 10, 60, 600, 3600)


HEIGHT = 100.0  # every chart's viewBox is this tall (CSS: the same height for all)
AXIS_W = 44.0  # the value axis's viewBox width (CSS: aspect-ratio 44 / 100)


@dataclass(frozen=True)
class Chart:
    svg: Markup
    summary: str
    ticks: list[str] = field(default_factory=list)  # time labels, evenly spaced, left to right
    axis: Markup = field(default_factory=Markup)  # the value labels beside it, at their heights


def _axis(labels: list[tuple[float, str]]) -> Markup:
    """Value labels at their y (in the chart's units): an SVG as tall as the chart, not
    stretched, so the text keeps its shape and each label sits at its line."""
    texts = "".join(
        f'<text x="{_n(AXIS_W - 2)}" y="{_n(y)}" dy=".35em" text-anchor="end">{escape(t)}</text>'
        for y, t in labels
    )
    return Markup(f'<svg class="levels" viewBox="0 0 {_n(AXIS_W)} {_n(HEIGHT)}" '
                  f'aria-hidden="true" focusable="false">{texts}</svg>')


def _n(x: float) -> str:
    """A coordinate: at most two decimals, no trailing zeros."""
    text = f"{x:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _svg(width: float, height: float, label: str, body: list[str], css: str) -> Markup:
    return Markup(
        f'<svg class="chart {css}" viewBox="0 0 {_n(width)} {_n(height)}" '
        f'preserveAspectRatio="none" role="img" aria-label="{escape(label)}" '
        f'focusable="false">{"".join(body)}</svg>'
    )


def seconds_words(seconds: float | None) -> str:
    """A lateness or duration, short: "40 ms", "2.5 s", "38 s", "3.7 min", "1.2 h"."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    for unit, size in (("s", 1), ("min", 60), ("h", 3600)):
        value = seconds / size
        if value < 10:
            return f"{value:.1f}".removesuffix(".0") + f" {unit}"
        if value < 60 or unit == "h":
            return f"{value:,.0f} {unit}"
    raise AssertionError("unreachable")


def _ticks(start: datetime, end: datetime, count: int, zone: Any, now: datetime) -> list[str]:
    """`count` times from start to end: "06:00", with the day where it changes ("7 Dec
    00:00"); with seconds over less than ten minutes, only days over more than three days."""
    step = (end - start) / (count - 1)
    out, day = [], None
    for i in range(count):
        local = (start + i * step).astimezone(zone)
        year = f" {local.year}" if local.year != now.astimezone(zone).year else ""
        if end - start > timedelta(days=3):
            out.append(f"{local.day} {local:%b}{year}")
        else:
            label = f"{local:%H:%M:%S}" if end - start < timedelta(minutes=10) else f"{local:%H:%M}"
            out.append(label if local.date() == day else f"{local.day} {local:%b}{year} {label}")
        day = local.date()
    return out


# ---------------------------------------------------------------- a job's runs


@dataclass(frozen=True)
class StripRun:
    """One run as the strip draws it (web/queries.py: chart_runs)."""

    id: str
    state: str
    trigger: str
    scheduled_for: datetime
    started_at: datetime | None
    duration_ns: int | None

    def seconds(self, now: datetime) -> float | None:
        """How long it ran, or has been running."""
        if self.duration_ns is not None:
            return self.duration_ns / 1e9
        if self.state == "started" and self.started_at is not None:
            return max((now - self.started_at).total_seconds(), 0.0)
        return None

    @property
    def lateness(self) -> float | None:
        if self.started_at is None:
            return None
        return max((self.started_at - self.scheduled_for).total_seconds(), 0.0)


STRIP_W, STRIP_TOP = 1000.0, 74.0  # bars above STRIP_TOP, lateness below


def run_strip(runs: Sequence[StripRun], upcoming: Sequence[datetime], now: datetime,
              zone: Any) -> Chart | None:
    """The runs (any order) as bars at their due time, the next occurrences as dashed marks;
    None when there is nothing to draw."""
    if not runs and not upcoming:
        return None
    times = [r.scheduled_for for r in runs] + list(upcoming) + [now]
    start, end = min(times), max(times)
    span = (end - start).total_seconds()
    pad = max(span * 0.02, (10.0 - span) / 2)  # at least 10 s across, the runs centred
    start, end = start - timedelta(seconds=pad), end + timedelta(seconds=pad)
    total = (end - start).total_seconds()

    def x(t: datetime) -> float:
        return (t - start).total_seconds() / total * STRIP_W

    slots = max(len(runs) + len(upcoming), 24)
    bar = min(STRIP_W / slots * 0.7, 12.0)
    # the scale: the longest ended run (a run still going past it reaches the top)
    longest = max((r.duration_ns / 1e9 for r in runs if r.duration_ns is not None),
                  default=0.0) or max((r.seconds(now) or 0.0 for r in runs), default=0.0) or 1.0
    latest = max(max((r.lateness or 0.0 for r in runs), default=0.0), 1.0)
    base = STRIP_TOP + 2
    late_room = HEIGHT - base - 2
    body = [f'<line class="axis" x1="0" x2="{_n(STRIP_W)}" y1="{_n(base)}" y2="{_n(base)}" '
            'vector-effect="non-scaling-stroke"/>']
    nx = x(now)
    body.append(f'<line class="now" x1="{_n(nx)}" x2="{_n(nx)}" y1="0" '
                f'y2="{_n(HEIGHT)}" vector-effect="non-scaling-stroke"/>')
    for r in sorted(runs, key=lambda r: r.scheduled_for):
        took = r.seconds(now)
        height = 2.0 if took is None else min(max(took / longest * STRIP_TOP, 2.0), STRIP_TOP)
        left = x(r.scheduled_for) - bar / 2
        tip = f"{STATE_WORDS.get(r.state, r.state)} · due {when(r.scheduled_for, zone, now=now)}"
        if took is not None:
            tip += f" · {'running for' if r.duration_ns is None else 'took'} {seconds_words(took)}"
        if r.lateness is not None:
            tip += f" · started {seconds_words(r.lateness)} late"
        if r.trigger != "schedule":
            tip += f" · {r.trigger}"
        body.append(
            f'<g class="bar" data-run="{escape(r.id)}" data-state="{escape(r.state)}">'
            f'<title>{escape(tip)}</title>'
            f'<rect class="c-{escape(r.state)}" x="{_n(left)}" y="{_n(STRIP_TOP - height)}" '
            f'width="{_n(bar)}" height="{_n(height)}"/>'
        )
        if r.lateness:
            depth = max(r.lateness / latest * late_room, 1.0)
            body.append(f'<rect class="c-late" x="{_n(left)}" y="{_n(base + 1)}" '
                        f'width="{_n(bar)}" height="{_n(depth)}"/>')
        body.append("</g>")
    for t in upcoming:
        ux = x(t)
        body.append(
            f'<g class="next"><title>next run: {escape(when(t, zone, now=now))}</title>'
            f'<line x1="{_n(ux)}" x2="{_n(ux)}" y1="6" y2="{_n(STRIP_TOP)}" '
            'vector-effect="non-scaling-stroke"/>'
            f'<rect x="{_n(ux - bar / 2)}" y="{_n(STRIP_TOP - 6)}" width="{_n(bar)}" height="6"/>'
            "</g>"
        )
    longest_run = max((r.duration_ns / 1e9 for r in runs if r.duration_ns is not None),
                      default=None)
    latest_start = max((r.lateness for r in runs if r.lateness is not None), default=None)
    failed = sum(1 for r in runs if r.state in ("failed", "lost"))
    parts = []
    if runs:
        parts.append(f"the last {len(runs)} run{'s' if len(runs) != 1 else ''} ({failed} failed "
                     f"or lost; the longest took {seconds_words(longest_run)}, the latest start "
                     f"was {seconds_words(latest_start)} after due)")
    if upcoming:
        parts.append(f"the next {len(upcoming)} occurrence{'s' if len(upcoming) != 1 else ''}")
    summary = " and ".join(parts)
    summary = summary[:1].upper() + summary[1:]
    labels = [(0.0, seconds_words(longest)), (base, "0")]
    if latest_start:
        labels.append((HEIGHT - 2, seconds_words(latest)))
    return Chart(_svg(STRIP_W, HEIGHT, summary, body, "strip"), summary,
                 ticks=_ticks(start, end, 5, zone, now), axis=_axis(labels))


# ---------------------------------------------------------------- the last 24 hours


AREA_H = HEIGHT
MINUTE, HOUR = timedelta(minutes=1), timedelta(hours=1)


def _step_path(values: Sequence[float], first: int = 0) -> str:
    """A step line through values[i] over [first + i, first + i + 1], in H/V commands (a
    corner only where the value changes: a flat day is a few bytes)."""
    d = f"M{first} {_n(values[0])}"
    for i in range(1, len(values)):
        if values[i] != values[i - 1]:
            d += f"H{first + i}V{_n(values[i])}"
    return d + f"H{first + len(values)}"


def _nice(peak: float) -> float:
    """A round axis top at or above `peak` (1, 2 or 5 times a power of ten)."""
    if peak <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(peak))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= peak)


def _hover(activity: Activity, hours: Sequence[Hour], height: float, tip: Any) -> list[str]:
    """A transparent band over each hour with runs, whose <title> (a tooltip, read by screen
    readers) gives the hour's numbers: the chart's table, where the pointer is."""
    window, out = activity.window, []
    for hour in hours:
        first = max(int((hour.start - window.start) / MINUTE), 0)
        last = min(int((hour.start + HOUR - window.start) / MINUTE), window.minutes)
        out.append(f'<rect class="hover" x="{first}" y="0" width="{last - first}" '
                   f'height="{_n(height)}"><title>{escape(tip(hour))}</title></rect>')
    return out


def _hour_words(hour: Hour, zone: Any, now: datetime) -> str:
    """"7 Dec 05:00 UTC to 05:59"."""
    last = (hour.start + HOUR - MINUTE).astimezone(zone)
    return f"{when(hour.start, zone, now=now)} to {last:%H:%M}"


def runs_per_minute(activity: Activity, zone: Any, now: datetime,
                    hours: Sequence[Hour] = ()) -> Chart:
    """The runs due in each minute of the window, stacked by their state now; `hours` (the
    window's Activity.hours()) get a tooltip each."""
    window = activity.window
    minutes = window.minutes
    totals = [activity.total(k) for k in range(minutes)]
    peak = max(totals, default=0)
    top = _nice(peak)  # the viewBox is `top` runs tall: y is a whole number of runs
    body = [f'<line class="grid" x1="0" x2="{minutes}" y1="{_n(gy)}" y2="{_n(gy)}" '
            'vector-effect="non-scaling-stroke"/>' for gy in (0.0, top / 2)]
    # Each state's area reaches from the bottom to the top of its place in the stack, drawn
    # top of the stack first, so the ones below paint over it (one boundary per path).
    present = [s for s in STATES if any(activity.by_state.get(s, ()))]
    stacked, cumulative = [], [0] * minutes
    for state in present:
        cumulative = [c + n for c, n in zip(cumulative, activity.by_state[state], strict=True)]
        stacked.append((state, cumulative))
    for state, heights in reversed(stacked):
        body.append(f'<path class="c-{state}" data-state="{state}" '
                    f'd="{_step_path([top - h for h in heights])}V{_n(top)}H0Z"/>')
    body.append(f'<line class="axis" x1="0" x2="{minutes}" y1="{_n(top)}" y2="{_n(top)}" '
                'vector-effect="non-scaling-stroke"/>')
    body += _hover(activity, hours, top, lambda h: (
        f"{_hour_words(h, zone, now)}: {h.total:,} runs ("
        + ", ".join(f"{h.by_state[s]:,} {STATE_WORDS[s]}" for s in STATES if s in h.by_state)
        + ")"))
    runs = sum(totals)
    if runs:
        at = max(range(minutes), key=lambda k: totals[k])
        summary = (f"{runs:,} runs due in the last {minutes // 60} h; at most {peak:,} in a "
                   f"minute ({when(window.minute(at), zone, now=now)})")
    else:
        summary = f"No runs due in the last {minutes // 60} h"
    return Chart(_svg(minutes, top, summary, body, "area"), summary,
                 ticks=_ticks(window.start, window.end, 5, zone, now),
                 axis=_axis([(0.0, f"{top:,g}"), (AREA_H / 2, f"{top / 2:,g}"), (AREA_H, "0")]))


def _late_y(seconds: float) -> float:
    low, high = LATE_LOW, LATE_HIGH
    level = math.log10(max(seconds, 10.0**low))
    return AREA_H - (min(level, high) - low) / (high - low) * AREA_H


def lateness_per_minute(activity: Activity, zone: Any, now: datetime,
                        hours: Sequence[Hour] = ()) -> Chart:
    """p50 and p99 of due -> start per minute (scheduled runs that started), log scale;
    `hours` get a tooltip each."""
    window = activity.window
    body = []
    for seconds in LATE_LINES:
        gy = _late_y(seconds)
        body.append(f'<line class="grid" x1="0" x2="{window.minutes}" y1="{_n(gy)}" '
                    f'y2="{_n(gy)}" vector-effect="non-scaling-stroke"/>')
    ay = _late_y(LATENESS_ALERT)
    body.append(f'<line class="alert" x1="0" x2="{window.minutes}" y1="{_n(ay)}" '
                f'y2="{_n(ay)}" vector-effect="non-scaling-stroke"/>')
    worst: tuple[float, int] | None = None
    for q, css in ((0.99, "p99"), (0.5, "p50")):
        # a line through the minutes with runs; a gap where a minute had none
        runs: list[tuple[int, list[float]]] = []  # (first minute, y of each minute)
        for k in range(window.minutes):
            value = activity.percentile(k, q)
            if value is None:
                continue
            if q == 0.99 and (worst is None or value > worst[0]):
                worst = (value, k)
            y = round(_late_y(value), 1)
            if runs and runs[-1][0] + len(runs[-1][1]) == k:
                runs[-1][1].append(y)
            else:
                runs.append((k, [y]))
        if runs:
            d = "".join(_step_path(ys, first) for first, ys in runs)
            body.append(f'<path class="{css}" d="{d}" fill="none" '
                        'vector-effect="non-scaling-stroke"/>')
    body += _hover(activity, [h for h in hours if h.started], AREA_H, lambda h: (
        f"{_hour_words(h, zone, now)}: {h.started:,} started, p50 "
        f"{seconds_words(h.percentile(0.5))}, p99 {seconds_words(h.percentile(0.99))}"))
    if worst is None:
        summary = "No scheduled run started in the last 24 h"
    else:
        summary = (f"Due → start, p50 and p99 per minute; the worst p99 "
                   f"{seconds_words(worst[0])} ({when(window.minute(worst[1]), zone, now=now)})")
    labels = [(_late_y(t), seconds_words(t)) for t in LATE_LINES]
    return Chart(_svg(window.minutes, AREA_H, summary, body, "lines"), summary,
                 ticks=_ticks(window.start, window.end, 5, zone, now), axis=_axis(labels))


def share(part: int, whole: int) -> str:
    """A bar's width in a 0..100 viewBox (the failing jobs' table)."""
    return _n(100.0 * part / whole) if whole else "0"
