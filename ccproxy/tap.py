"""`twistd ccproxy`: command-line options and the service maker.

The config is read and validated in `postOptions`, before twistd daemonizes, so a
bad file stops the start with one line naming the key and the problem.
"""

from __future__ import annotations

import os
import sys

from attrs import evolve
from twisted.python import usage

from ccproxy.config import Config, ConfigError, checkOpenListen, endpoint
from ccproxy.service import ProxyService


class Options(usage.Options):
    """Options of `twistd ccproxy`."""

    synopsis = "--config PATH [--listen ENDPOINT]"
    optParameters = [
        ["config", "c", None, "Path of the YAML configuration file."],
        ["listen", "l", None, "Twisted endpoint to listen on (overrides the config's listen)."],
    ]

    def postOptions(self) -> None:
        path = self["config"]
        if not path:
            raise usage.UsageError("--config PATH is required (see etc/ccproxy.yaml)")
        path = self["config"] = os.path.abspath(path)  # twistd chdirs when it daemonizes
        try:
            config = Config.fromPath(path)
        except ConfigError as e:
            # One line naming the file, the key and the problem; no usage dump.
            raise SystemExit(f"ccproxy: {path}: {e}") from None
        if self["listen"]:
            try:
                config = evolve(config, listen=endpoint(self["listen"], "--listen"))
                checkOpenListen(config)
            except ConfigError as e:
                raise SystemExit(f"ccproxy: --listen: {e.problem}") from None
        self["loaded"] = config


def makeService(options: Options) -> ProxyService:
    """Build the service tree; the one place that touches the global reactor."""
    from twisted.internet import reactor

    return ProxyService(options["loaded"], reactor, configPath=options["config"], stdout=sys.stdout)
