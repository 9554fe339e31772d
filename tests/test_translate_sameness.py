"""The translator makes the same upstream bodies and the same errors as main's.

Every Claude Code request in `tests/fixtures/claude-code` and the bench's corpus
bodies, each with some 400 hostile variants (`tests.translatecases`), go through
`Plan.forRequest` and `bodyFor` for chat and Responses upstreams under several
profiles; the digests of what came out (body bytes, tool names, or the error's
status and message) must equal the ones main's translator gave before its cuts
for speed (`tests/fixtures/translate-sameness.json`).
"""

from __future__ import annotations

import orjson

from tests.translatecases import GOLDEN, digests


def test_same_bodies_and_errors_as_before() -> None:
    expected = orjson.loads(GOLDEN.read_bytes())
    found = digests()
    assert sorted(found) == sorted(expected)
    changed = [label for label in expected if found[label] != expected[label]]
    assert changed == [], f"translated differently: {changed}"


def test_the_variants_reach_every_kind_of_outcome() -> None:
    """The variants are not all refused at the same first check."""
    from tests.translatecases import outcome, requestBodies, variants

    _, body = next(requestBodies())
    outcomes = {outcome(changed)[:3] for _, changed in variants(body)}
    assert any(o.startswith(b"400") for o in outcomes)
    assert any(o.startswith(b"{") for o in outcomes)
