"""`python -m ccproxy doctor`: why does my Claude Code not reach the proxy?

Almost every failure is set-up on the user's side: `~/.claude/settings.json` silently
overriding an export, a base URL with `/v1` on it, a key the proxy does not know, a
model name no route serves. The checks are a pure core (`ccproxy.doctor.checks`:
settings, environment, config and probe results in, `Finding`s out) so they can be
tested as tables; `ccproxy.doctor.probe` makes the HTTP probes; this module only
parses the command line, reads the files and prints.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

from ccproxy.config import Config
from ccproxy.config.claudesettings import (
    PROBLEM,
    WARNING,
    Finding,
    defaultSettingsPath,
    readSettings,
)
from ccproxy.config.endpoints import originOf
from ccproxy.config.schema import ConfigError
from ccproxy.doctor.checks import DEFAULT_URL, diagnose
from ccproxy.doctor.probe import DEFAULT_TIMEOUT, fetch


def addParser(subparsers: Any) -> None:
    """The `doctor` subcommand's options."""
    parser = subparsers.add_parser(
        "doctor",
        help="find out why Claude Code does not connect through the proxy",
        description="Check ~/.claude/settings.json, the environment Claude Code will see, the"
        " proxy and (with --config) the config's routes and upstreams. Exit code 0 when"
        " nothing is a problem (warnings allowed).",
    )
    parser.add_argument("--config", metavar="PATH", help="the proxy's YAML config")
    parser.add_argument(
        "--url",
        metavar="URL",
        type=_proxyURL,
        help="the proxy's URL (default: from --config's listen, else ANTHROPIC_BASE_URL,"
        f" else {DEFAULT_URL})",
    )
    parser.add_argument(
        "--settings",
        metavar="PATH",
        help="Claude Code's settings (default ~/.claude/settings.json)",
    )
    parser.add_argument(
        "--probe-chat",
        action="store_true",
        help="also send each upstream one chat request with max_tokens 1 (spends a few tokens)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"for each HTTP probe (default {DEFAULT_TIMEOUT:g})",
    )
    parser.set_defaults(run=run)


def _proxyURL(text: str) -> str:
    if originOf(text) is None:
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {text!r}")
    return text


def run(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    """`python -m ccproxy doctor`: print the findings; 0 unless one is a problem."""
    env = os.environ if environ is None else environ
    findings: list[Finding] = []
    config = None
    if args.config:
        try:
            config = Config.fromPath(args.config, env)
        except ConfigError as e:
            findings.append(
                Finding(
                    PROBLEM,
                    f"cannot load {args.config}: {e}; the checks that need it are skipped",
                    "run the doctor with the environment the daemon has, or fix the config",
                )
            )
    path = args.settings or defaultSettingsPath(env)
    document, read = readSettings(path)
    findings += read
    findings += diagnose(
        document,
        env,
        config,
        args.url,
        lambda request: fetch(request, args.timeout),
        probeChat=args.probe_chat,
        settingsPath=path,
    )
    for finding in findings:
        print(finding.line())
    problems = sum(f.level == PROBLEM for f in findings)
    warnings = sum(f.level == WARNING for f in findings)
    print(f"{problems} problem(s), {warnings} warning(s)")
    return 1 if problems else 0
