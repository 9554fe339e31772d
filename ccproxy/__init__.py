"""ccproxy: lets Claude Code (Anthropic Messages API) talk to OpenAI-compatible gateways."""

__version__ = "0.1.0"
