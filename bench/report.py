"""The figures, checked against the targets, as markdown tables."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from bench import payloads
from bench.procs import hot_spots

# figure: (comparison, bound, unit); the targets for one process on one core
TARGETS = {
    "lat_cpu_ms": ("<=", 2.0, "ms"),
    "lat_added_ms": ("<=", 2.5, "ms"),
    "tput_rps": (">=", 400.0, "req/s"),
    "stream_cpu_ms": ("<=", 8.0, "ms"),
    "ttfb_added_ms": ("<=", 1.0, "ms"),
    "drip_rss_mb": ("<=", 150.0, "MB"),
    "drip_ttft_s": ("<=", 0.5, "s"),
    "drip_ratio": ("<=", 1.1, "x"),
}


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1000


def figures(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per figure: the direct and ccproxy values, the value checked, met or not."""
    s = results["scenarios"]

    def g(scn: str, who: str, key: str) -> Any:
        return (s.get(scn) or {}).get(who, {}).get(key)

    def both(scn: str, key: str, scale: float = 1.0) -> dict[str, Any]:
        d, p = g(scn, "direct", key), g(scn, "ccproxy", key)
        return {
            "direct": None if d is None else d * scale,
            "ccproxy": None if p is None else p * scale,
        }

    f: dict[str, dict[str, Any]] = {
        "lat_cpu_ms": both("lat", "proxy_cpu_ms_per_req"),
        "lat_added_ms": both("lat", "t_done_p50", 1000),
        "lat_p99_ms": both("lat", "t_done_p99", 1000),
        "tput_rps": both("tput", "ok_per_s"),
        "tput_cpu_ms": both("tput", "proxy_cpu_ms_per_req"),
        "tput_p50_ms": both("tput", "t_done_p50", 1000),
        "stream_cpu_ms": both("stream", "proxy_cpu_ms_per_req"),
        "ttfb_added_ms": both("stream", "t_first_byte_p50", 1000),
        "stream_total_ms": both("stream", "t_done_p50", 1000),
        "responses_cpu_ms": both("responses", "proxy_cpu_ms_per_req"),
        "responses_ttfb_ms": both("responses", "t_first_byte_p50", 1000),
        "responses_total_ms": both("responses", "t_done_p50", 1000),
        "drip_rss_mb": both("drip", "rss_peak_mb"),
        "drip_ttft_s": both("drip", "t_first_text_p50"),
        "drip_ratio": both("drip", "t_done_p50"),
        "drip_total_p99_s": both("drip", "t_done_p99"),
        "drip_fds": both("drip", "fds_peak"),
        "drip_fds_before": both("drip", "fds_before"),
        "drip_fds_after": both("drip", "fds_after"),
        "drip_ttfb_s": both("drip", "t_first_byte_p50"),
        "drip_ttfb_p90_s": both("drip", "t_first_byte_p90"),
        "drip_overflows": both("drip", "listen_overflows"),
        "pass_lat_cpu_ms": both("pass_lat", "proxy_cpu_ms_per_req"),
        "pass_lat_ms": both("pass_lat", "t_done_p50", 1000),
        "pass_stream_cpu_ms": both("pass_stream", "proxy_cpu_ms_per_req"),
        "pass_ttfb_ms": both("pass_stream", "t_first_byte_p50", 1000),
    }
    f["lat_added_ms"]["value"] = _diff(f["lat_added_ms"]["ccproxy"], f["lat_added_ms"]["direct"])
    f["ttfb_added_ms"]["value"] = _diff(f["ttfb_added_ms"]["ccproxy"], f["ttfb_added_ms"]["direct"])
    for k in ("pass_lat_ms", "pass_ttfb_ms"):
        f[k]["value"] = _diff(f[k]["ccproxy"], f[k]["direct"])
    r = f["drip_ratio"]
    r["value"] = r["ccproxy"] / r["direct"] if r["ccproxy"] is not None and r["direct"] else None
    f["drip_rss_mb"]["idle"] = g("drip", "ccproxy", "rss_before_mb")
    for k, v in f.items():
        v.setdefault("value", v["ccproxy"])
        if k in TARGETS and v["value"] is not None:
            op, bound, _ = TARGETS[k]
            v["met"] = v["value"] <= bound if op == "<=" else v["value"] >= bound
    return f


def num(v: float | None, unit: str = "", digits: int | None = None, sign: bool = False) -> str:
    if v is None:
        return "-"
    if digits is None:
        digits = 2 if abs(v) < 100 else 0
    s = f"{v:+,.{digits}f}" if sign else f"{v:,.{digits}f}"
    return s + ("" if not unit else unit if unit == "x" else " " + unit)


def secs(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f} s" if v >= 1 else f"{v * 1000:.2f} ms"


def pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.0f}%"


def _target(k: str) -> str:
    if k not in TARGETS:
        return "-"
    op, bound, unit = TARGETS[k]
    text = f"{'≤' if op == '<=' else '≥'} {bound:g}{'' if unit == 'x' else ' '}{unit}"
    return text + (" added" if k.endswith("added_ms") else "")


def failures(results: dict[str, Any]) -> int:
    """Answers that failed validation (warm-up included) plus bad upstream requests."""
    n = 0
    for runs in results["scenarios"].values():
        for x in runs.values():
            n += x["failed"] + x["warmup_failed"]
            n += sum((x.get("upstream_request_problems") or {}).values())
    return n


def table(results: dict[str, Any], a: argparse.Namespace) -> str:
    f = figures(results)
    results["figures"] = f
    s = results["scenarios"]
    lines = [
        "| figure | direct (upstream alone) | ccproxy | target | met? |",
        "|---|---|---|---|---|",
    ]

    def row(label: str, k: str, direct: str, proxy: str) -> None:
        met = f[k].get("met")
        ok = "" if met is None else "yes" if met else "**no**"
        lines.append(f"| {label} | {direct} | {proxy} | {_target(k)} | {ok} |")

    def added(k: str) -> str:
        return f"{num(f[k]['ccproxy'], 'ms')} (**{num(f[k]['value'], 'ms', sign=True)}** added)"

    if "lat" in s:
        row(
            "(a) CPU per non-streaming request (36-60 KB body, tool call answer)",
            "lat_cpu_ms",
            "-",
            num(f["lat_cpu_ms"]["ccproxy"], "ms"),
        )
        row(
            "(a) latency at concurrency 1, p50",
            "lat_added_ms",
            num(f["lat_added_ms"]["direct"], "ms"),
            added("lat_added_ms"),
        )
        row(
            "(a) latency at concurrency 1, p99",
            "lat_p99_ms",
            num(f["lat_p99_ms"]["direct"], "ms"),
            num(f["lat_p99_ms"]["ccproxy"], "ms"),
        )
    if "tput" in s:
        row(
            f"(b) non-streaming throughput, concurrency {a.tput_c}",
            "tput_rps",
            num(f["tput_rps"]["direct"], "req/s", 0),
            num(f["tput_rps"]["ccproxy"], "req/s", 0),
        )
        row(
            "(b) same: latency p50; ccproxy CPU per request",
            "tput_p50_ms",
            num(f["tput_p50_ms"]["direct"], "ms"),
            f"{num(f['tput_p50_ms']['ccproxy'], 'ms')}; "
            f"{num(f['tput_cpu_ms']['ccproxy'], 'ms')} CPU",
        )
    if "stream" in s:
        frames = payloads.sse_frames()
        size = f"{sum(map(len, frames)) / 1024:.0f} KB SSE, {len(frames)} chunks, one tool call"
        row(
            f"(c) CPU per streamed answer ({size})",
            "stream_cpu_ms",
            "-",
            num(f["stream_cpu_ms"]["ccproxy"], "ms"),
        )
        row(
            "(c) time to first byte, streaming, concurrency 1, p50",
            "ttfb_added_ms",
            num(f["ttfb_added_ms"]["direct"], "ms"),
            added("ttfb_added_ms"),
        )
        row(
            "(c) same: full stream time, p50",
            "stream_total_ms",
            num(f["stream_total_ms"]["direct"], "ms"),
            num(f["stream_total_ms"]["ccproxy"], "ms"),
        )
    if "responses" in s:
        frames = payloads.responses_frames()
        size = f"{sum(map(len, frames)) / 1024:.0f} KB SSE, {len(frames)} events, one tool call"
        row(
            f"(e) CPU per streamed answer from an `api: responses` upstream ({size})",
            "responses_cpu_ms",
            "-",
            num(f["responses_cpu_ms"]["ccproxy"], "ms"),
        )
        row(
            "(e) same: time to first byte p50; full stream time p50",
            "responses_ttfb_ms",
            "-",
            f"{num(f['responses_ttfb_ms']['ccproxy'], 'ms')}; "
            f"{num(f['responses_total_ms']['ccproxy'], 'ms')}",
        )
    if "drip" in s:
        what = (
            f"{a.drip_streams} concurrent slow streams "
            f"({a.drip_rate:g} chunks/s for {a.drip_seconds:g} s)"
        )
        v = f["drip_rss_mb"]
        row(
            f"(d) {what}: peak RSS",
            "drip_rss_mb",
            "-",
            f"{num(v['ccproxy'], 'MB', 0)} (before: {num(v['idle'], 'MB', 0)})",
        )
        row(
            "(d) same: time to first text, p50",
            "drip_ttft_s",
            num(f["drip_ttft_s"]["direct"], "s", 2),
            num(f["drip_ttft_s"]["ccproxy"], "s", 2),
        )
        v = f["drip_ratio"]
        row(
            "(d) same: full stream time p50 (ccproxy / direct)",
            "drip_ratio",
            num(v["direct"], "s", 2),
            f"{num(v['ccproxy'], 's', 2)} (**{num(v['value'], 'x', 2)}**)",
        )
        row(
            "(d) same: full stream time p99",
            "drip_total_p99_s",
            num(f["drip_total_p99_s"]["direct"], "s", 2),
            num(f["drip_total_p99_s"]["ccproxy"], "s", 2),
        )
        p50, p90 = f["drip_ttfb_s"], f["drip_ttfb_p90_s"]
        row(
            "(d) same: time to first byte, p50 / p90",
            "drip_ttfb_s",
            f"{num(p50['direct'], 's', 3)} / {num(p90['direct'], 's', 3)}",
            f"{num(p50['ccproxy'], 's', 3)} / {num(p90['ccproxy'], 's', 3)}",
        )
        row(
            "(d) same: listen queue overflows (dropped SYNs, host-wide)",
            "drip_overflows",
            num(f["drip_overflows"]["direct"], "", 0),
            num(f["drip_overflows"]["ccproxy"], "", 0),
        )
        row("(d) same: peak open fds", "drip_fds", "-", num(f["drip_fds"]["ccproxy"], "", 0))
        row(
            "(d) same: open fds before / after (settled)",
            "drip_fds_after",
            "-",
            f"{num(f['drip_fds_before']['ccproxy'], '', 0)} / "
            f"{num(f['drip_fds_after']['ccproxy'], '', 0)}",
        )
    if "pass_lat" in s:
        row(
            "(p) passthrough (`api: messages`): CPU per non-streaming request",
            "pass_lat_cpu_ms",
            "-",
            num(f["pass_lat_cpu_ms"]["ccproxy"], "ms"),
        )
        row(
            "(p) same: latency at concurrency 1, p50",
            "pass_lat_ms",
            num(f["pass_lat_ms"]["direct"], "ms"),
            added("pass_lat_ms"),
        )
    if "pass_stream" in s:
        frames = payloads.anthropic_sse_frames()
        size = f"{sum(map(len, frames)) / 1024:.0f} KB SSE, {len(frames)} events"
        row(
            f"(p) passthrough: CPU per streamed answer ({size})",
            "pass_stream_cpu_ms",
            "-",
            num(f["pass_stream_cpu_ms"]["ccproxy"], "ms"),
        )
        row(
            "(p) same: time to first byte, p50",
            "pass_ttfb_ms",
            num(f["pass_ttfb_ms"]["direct"], "ms"),
            added("pass_ttfb_ms"),
        )
    totals = {}
    for who in ("direct", "ccproxy"):
        n = ok = 0
        for runs in s.values():
            if who in runs:
                x = runs[who]
                n += x["requests"] + x["warmup_requests"]
                ok += x["ok"] + x["warmup_requests"] - x["warmup_failed"]
        totals[who] = f"{ok}/{n} ok" if n else "-"
    good = "yes" if not failures(results) else "**no**"
    lines.append(
        f"| answers validated (all runs, warm-ups included) | {totals['direct']} "
        f"| {totals['ccproxy']} | all valid | {good} |"
    )
    return "\n".join(lines)


def details(results: dict[str, Any]) -> str:
    lines = [
        "| run | valid | rate | full time p50 / p90 / p99 | first byte p50 | first text p50 "
        "| ccproxy CPU/req | ccproxy CPU util | ccproxy waited for CPU | RSS peak "
        "| driver+mock CPU util | problems |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in results["scenarios"].items():
        for who, x in runs.items():
            probs = dict(x["problems"])
            probs.update({"warmup:" + k: v for k, v in x["warmup_problems"].items()})
            upstream = x.get("upstream_request_problems") or {}
            probs.update({"upstream_request:" + k: v for k, v in upstream.items()})
            load = (x["driver_cpu_util"] or 0) + (x["mock_cpu_util"] or 0)
            cells = [
                f"{name} {who} (c={x['concurrency']})",
                f"{x['ok']}/{x['requests']}",
                num(x["ok_per_s"], "/s", 1),
                " / ".join(secs(x[f"t_done_p{q}"]) for q in (50, 90, 99)),
                secs(x["t_first_byte_p50"]),
                secs(x["t_first_text_p50"]) if x["stream"] else "-",
                num(x.get("proxy_cpu_ms_per_req"), "ms"),
                num(x.get("proxy_cpu_util"), "", 2),
                pct(x.get("proxy_runqueue_wait")),
                num(x.get("rss_peak_mb"), "MB", 0),
                num(load, "", 2),
                ", ".join(f"{k}={v}" for k, v in probs.items()) or "none",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _notes(results: dict[str, Any], pinned: bool) -> list[str]:
    s = results["scenarios"]
    proxy_runs = {n: r["ccproxy"] for n, r in s.items() if "ccproxy" in r}
    out = []
    busy = [
        n
        for n, x in proxy_runs.items()
        if pinned and (x["driver_cpu_util"] or 0) + (x["mock_cpu_util"] or 0) > 0.9
    ]
    if busy:
        out.append(
            f"Note: mock and driver kept their core >90% busy in the ccproxy runs of: "
            f"{', '.join(busy)}; those figures may be bounded by the harness, not by ccproxy."
        )
    noisy = [
        f"{n} ({pct(x.get('proxy_runqueue_wait'))})"
        for n, x in proxy_runs.items()
        if (x.get("proxy_runqueue_wait") or 0) > 0.05
    ]
    if noisy:
        out.append(
            "Note: other processes competed with ccproxy for its core (time it was runnable "
            f"but waiting, over the run's duration): {', '.join(noisy)}. Latency and "
            "throughput of those runs are pessimistic; CPU per request much less affected. "
            "Rerun on a quiet host for figures to quote."
        )
    ovf = [
        f"{n} ({x['listen_overflows']})"
        for n, x in proxy_runs.items()
        if (x.get("listen_overflows") or 0) > 0
    ]
    if ovf:
        out.append(
            f"Note: a listen queue overflowed during: {', '.join(ovf)} (dropped SYNs; clients "
            "retry after 1 s, 3 s, 7 s...). ccproxy's backlog is its listen endpoint's "
            "(Twisted's default 50; `--backlog N` tries another)."
        )
    return out


def render(bench: Any) -> str:
    """The whole report of a finished Bench."""
    a, results = bench.a, bench.results
    title = "ccproxy bench" + (" (QUICK: reduced counts, indicative only)" if a.quick else "")
    load = ""
    if os.path.exists("/proc/loadavg"):
        with open("/proc/loadavg") as fh:
            load = " ".join(fh.read().split()[:3])
    proxy = results.get("proxy") or {}
    out = [
        f"## {title}",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}; {os.cpu_count()} CPUs; load average {load}; "
        f"ccproxy processes: {a.processes} ({proxy.get('listen_mode', '-')}); "
        f"python {sys.version.split()[0]}",
        "",
    ]
    out += [f"- {n}" for n in results["notes"]]
    if bench.skipped:
        out.append(f"- {bench.skipped}")
    out += ["", table(results, a), "", details(results)]
    out += ["\n" + n for n in _notes(results, bool(bench.load_cpus))]
    if bench.profiles:
        out.append(
            "\nccproxy profile (py-spy, 250 Hz; shares of the samples where ccproxy was busy, "
            "idle epoll and thread waits left out)"
        )
        for path in bench.profiles:
            busy, selfs, ccp = hot_spots(path)
            name = os.path.basename(path)[len("profile-") : -len(".txt")]
            out.append(f"\n{name}: {busy} busy samples. Top self time:")
            out += [f"  {share * 100:5.1f}%  {fn}" for fn, share in selfs]
            out.append("  inclusive, in ccproxy/:")
            out += [f"  {share * 100:5.1f}%  {fn}" for fn, share in ccp]
    out.append(f"\nworkdir: {bench.workdir} (configs, logs, results.json)")
    return "\n".join(out)
