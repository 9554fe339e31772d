"""The doctor's HTTP probes, over urllib: the only part of it that talks to a network.

Any failure to get an HTTP answer becomes a `Probe` with status None, so the pure
checks (`ccproxy.doctor.checks`) decide what it means.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

from ccproxy.doctor.checks import Probe, Request

DEFAULT_TIMEOUT = 5.0
_MAX_BODY = 64 * 1024


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """The daemon follows no redirect, so a probe must see the 3xx it would get."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects)
"""No HTTP proxy and no redirects: the probes must get what the daemon's requests get."""


def fetch(request: Request, timeout: float = DEFAULT_TIMEOUT) -> Probe:
    """Make one probe; any failure to get an HTTP answer is a `Probe` with status None."""
    raw = urllib.request.Request(
        request.url, data=request.body, headers=dict(request.headers), method=request.method
    )
    try:
        with _OPENER.open(raw, timeout=timeout) as response:
            return Probe(response.status, body=response.read(_MAX_BODY))
    except urllib.error.HTTPError as e:
        with e:
            return Probe(e.code, body=e.read(_MAX_BODY))
    except urllib.error.URLError as e:
        return Probe(None, str(e.reason))
    except (OSError, ValueError) as e:
        return Probe(None, str(e) or type(e).__name__)
