"""`twistd ccproxy`: command-line options and the service maker.

The config is read and validated in `postOptions`, before twistd daemonizes, so a
bad file stops the start with one line naming the key and the problem.
"""

from __future__ import annotations

import os
import sys

from attrs import evolve
from twisted.python import usage

from ccproxy.config import Config, ConfigError
from ccproxy.config.claudesettings import defaultSettingsPath, settingsWarnings
from ccproxy.config.endpoints import endpoint
from ccproxy.config.load import checkOpenListen
from ccproxy.config.seed import defaultDotenv, settingsFromEnvironment
from ccproxy.daemon.service import ProxyService


class Options(usage.Options):
    """Options of `twistd ccproxy`."""

    synopsis = "[--config PATH] [--listen ENDPOINT]"
    optParameters = [
        [
            "config",
            "c",
            None,
            "Path of the YAML configuration file (without it: the environment, as the "
            "original single-gateway proxy read it).",
        ],
        ["listen", "l", None, "Twisted endpoint to listen on (overrides the config's listen)."],
    ]

    def postOptions(self) -> None:
        path = self["config"]
        if path:
            path = self["config"] = os.path.abspath(path)  # twistd chdirs when daemonizing
            try:
                config = Config.fromPath(path)
            except ConfigError as e:
                # One line naming the file, the key and the problem; no usage dump.
                raise SystemExit(f"ccproxy: {path}: {e}") from None
        else:
            config = _fromEnvironment()
        if self["listen"]:
            try:
                config = evolve(config, listen=endpoint(self["listen"], "--listen"))
                checkOpenListen(config)
            except ConfigError as e:
                raise SystemExit(f"ccproxy: --listen: {e.problem}") from None
        self["loaded"] = config


def _fromEnvironment() -> Config:
    """Seed-compatible mode: no --config, so the original single-gateway proxy's
    environment variables (and a .env in the working directory) describe it."""
    try:
        seed = settingsFromEnvironment(os.environ, defaultDotenv())
    except ConfigError as e:
        raise SystemExit(f"ccproxy: no --config given, so the environment is read: {e}") from None
    config = evolve(seed.config, pretty=seed.pretty)
    if seed.logPayloadMaxChars:
        config = evolve(config, logPayloadMaxChars=seed.logPayloadMaxChars)
    return config


def makeService(options: Options) -> ProxyService:
    """Build the service tree; the one place that touches the global reactor."""
    from twisted.internet import reactor

    warnings = [f.line() for f in settingsWarnings(defaultSettingsPath(os.environ), os.environ)]
    return ProxyService(
        options["loaded"],
        reactor,
        configPath=options["config"],
        stdout=sys.stdout,
        startupWarnings=warnings,
    )
