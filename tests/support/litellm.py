"""A real LiteLLM proxy for the tests, started on 127.0.0.1 in front of another server.

LiteLLM (with its `proxy` extra, some 560 MB with pinned libraries of its own:
FastAPI, openai, boto3, polars…) is not one of ccproxy's test dependencies; .ci/run
installs it into a virtualenv of its own at $CCPROXY_TEST_CACHE/litellm-VERSION
(default ~/.cache/ccproxy-tests/…), pinned to a release from before the PyPI
compromises of 1.82.7, 1.82.8 and 1.107.0. `litellmCommand()` finds that install,
or a `litellm` importable by the interpreter running the tests; the tests that
need one are skipped only where neither is there.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

from tests.support.processes import testCache

LITELLM_VERSION = "1.82.6"


def litellmCommand() -> list[str] | None:
    """The command that runs the LiteLLM proxy's CLI (None: not installed)."""
    for root in (testCache(), Path(tempfile.gettempdir()) / f"ccproxy-tests-{os.getuid()}"):
        script = root / f"litellm-{LITELLM_VERSION}" / "bin" / "litellm"
        if script.exists():
            return [str(script)]
    if importlib.util.find_spec("litellm") is not None:
        script = Path(sys.executable).parent / "litellm"
        if script.exists():
            return [str(script)]
    return None


def litellmConfig(upstreamPort: int, model: str, provider: str = "openai") -> str:
    """A LiteLLM proxy config serving `model` from an OpenAI-compatible server.
    `provider` `openai` forwards `/v1/responses` to the server's own; another one
    without a Responses API of its own in LiteLLM (`custom_openai`) has LiteLLM
    serve `/v1/responses` itself from the server's chat/completions."""
    return (
        "model_list:\n"
        f"  - model_name: {model}\n"
        "    litellm_params:\n"
        f"      model: {provider}/{model}\n"
        f"      api_base: http://127.0.0.1:{upstreamPort}/v1\n"
        "      api_key: sk-scripted\n"
    )


def litellmEnvironment(home: Path) -> dict[str, str]:
    """No network at start: the model price map from the package, no telemetry."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "INFO",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
