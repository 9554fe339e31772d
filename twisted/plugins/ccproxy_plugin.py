"""twistd plugin: `twistd ccproxy --config etc/ccproxy.yaml`.

Kept import-light on purpose: twistd imports every dropin to list plugins, so the
real work lives in `ccproxy.daemon.tap`, loaded only when this plugin is chosen.
"""

from twisted.application.service import ServiceMaker

ccproxy = ServiceMaker(
    "ccproxy",
    "ccproxy.daemon.tap",
    "Anthropic Messages API to OpenAI chat/completions proxy for Claude Code",
    "ccproxy",
)
