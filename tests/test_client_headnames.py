"""`compat.readHead` reads a header's canonical name from `_nameEncoder`'s cache of
the names it has seen before asking it (a call fewer per header line): the names
come out as Twisted's parser makes them, the unusual ones (ETag, WWW-Authenticate,
DNT…) and those never seen before included, and a name not yet cached is cached."""

from __future__ import annotations

import pytest
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.http_headers import _nameEncoder

from ccproxy import compat
from tests.test_client_fastpaths import _outcome

NAMES = (
    b"etag ETAG www-authenticate Content-Md5 dnt x-xss-protection P3P te Content-Type"
    b" X-Never-Seen-Before-Rd5 x-never-seen-before-rd5"
).split()


@pytest.mark.parametrize("name", NAMES)
def test_a_name_is_canonical_as_twisteds_parser_makes_it(name: bytes) -> None:
    answer = b"HTTP/1.1 200 OK\r\n%b: v\r\nContent-Length: 2\r\n\r\n{}" % name
    ours = _outcome(compat.ClientProtocol, answer, b"POST", 1)
    assert ours == _outcome(HTTP11ClientProtocol, answer, b"POST", 1)


def test_the_encoders_cache_is_what_readHead_reads() -> None:
    """What `readHead` relies on: the cache maps a name `encode` was given to what
    it returned."""
    name = b"x-cached-by-encode-rd5"
    made = _nameEncoder.encode(name)
    assert made == b"X-Cached-By-Encode-Rd5"
    assert _nameEncoder._canonicalHeaderCache.get(name) == made
