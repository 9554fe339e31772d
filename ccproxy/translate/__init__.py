"""Pure translation between the Anthropic Messages API and OpenAI chat/completions.

Nothing here imports Twisted: these modules map dicts to dicts (and chunk dicts to
event dicts), so they are tested table-driven without a reactor.
"""
