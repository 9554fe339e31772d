"""`python -m ccproxy approve CODE`: a user of the jump host approves their own
`/login` with no secret typed, because the daemon asks the kernel who they are.

The daemon listens on a Unix socket (`login.approve_socket`, mode 0666: every
local account may connect). For each connection it reads the peer's uid from
SO_PEERCRED (the kernel's word, not the client's), maps it to the account name,
and that to the client whose `unix_user` it is; the code is then approved for
that client. One line each way:

    approve WDJB-MJHT            ->   ok approved: Claude Code is signed in as alice
    deny WDJB-MJHT               ->   error no pending code WDJB-MJHT (…)

The account name is looked up on the reactor's thread pool (NSS may ask LDAP).
Each uid may try `login.page_attempts_per_minute` codes a minute, as an address
may on the verification page.
"""

from __future__ import annotations

import argparse
import os
import pwd
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any, ClassVar

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from ccproxy import compat
from ccproxy.config import Config, ConfigError
from ccproxy.errors import ProxyError
from ccproxy.ledger.store import LedgerUnavailable
from ccproxy.web.app import ProxyApp
from ccproxy.web.signin import PageLimiter

LINE_BYTES = 256
ANSWER_SECONDS = 15.0
"""How long a connection may stay before it has said what it wants, or `approve`
waits for the answer."""
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peerUid(transport: Any) -> int | None:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    try:
        raw = transport.getHandle().getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size
        )
    except (OSError, AttributeError):
        return None
    return int(_CREDENTIALS.unpack(raw)[1])


class ApproveProtocol(LineOnlyReceiver):
    """One `approve CODE` or `deny CODE`, one answer, then the connection closes."""

    delimiter = b"\n"
    MAX_LENGTH = LINE_BYTES
    factory: ApproveFactory
    log: ClassVar[Logger] = Logger()
    _timer: Any = None
    _busy = False

    def connectionMade(self) -> None:
        self._timer = self.factory.reactor.callLater(ANSWER_SECONDS, self._late)

    def connectionLost(self, reason: Any = None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()

    def _late(self) -> None:
        self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._answer("error", "the line is too long")

    def lineReceived(self, line: bytes) -> None:
        if self._busy:
            return
        self._busy = True
        verb, _, code = line.decode("utf-8", "replace").strip().partition(" ")
        if verb not in ("approve", "deny") or not code.strip():
            self._answer("error", "say: approve CODE, or deny CODE")
            return
        Deferred.fromCoroutine(self._decide(verb == "approve", code.strip())).addErrback(
            self._failed
        )

    async def _decide(self, allow: bool, code: str) -> None:
        uid = peerUid(self.transport)
        if uid is None:
            self._answer("error", "the kernel did not say who you are")
            return
        try:
            account = await self.factory.accountOf(uid)
        except KeyError:
            self._answer("error", f"uid {uid} has no account name")
            return
        app = self.factory.app
        config = app.config
        if not self.factory.allow(uid, config):
            self._answer("error", "too many codes tried: wait a minute")
            return
        try:
            client = app.signIn.approverFor(config, account)
            message = await app.signIn.approve(config, code, client, allow)
        except ProxyError as e:
            self._answer("error", e.message)
            return
        except LedgerUnavailable as e:
            self._answer("error", f"try again: {e}")
            return
        self.log.info(
            "approve socket: {account} {verb} a sign-in",
            account=account,
            verb="approved" if allow else "refused",
        )
        self._answer("ok", message)

    def _failed(self, failure: Any) -> None:
        self.log.failure("approve socket: unexpected error", failure)
        self._answer("error", "internal error in ccproxy")

    def _answer(self, status: str, message: str) -> None:
        self.sendLine(f"{status} {message}".replace("\n", " ").encode())
        self.transport.loseConnection()


class ApproveFactory(Factory):
    protocol = ApproveProtocol

    def __init__(
        self, app: ProxyApp, reactor: Any, accountOf: Callable[[int], Deferred[str]] | None = None
    ) -> None:
        self.app = app
        self.reactor = reactor
        self.limiter: PageLimiter | None = None
        self.accountOf = accountOf or (
            lambda uid: deferToThreadPool(
                reactor, reactor.getThreadPool(), lambda: pwd.getpwuid(uid).pw_name
            )
        )

    def allow(self, uid: int, config: Config) -> bool:
        """One more code tried by `uid`? At most `login.page_attempts_per_minute`
        a minute, as on the verification page (RFC 8628 §5.1): a local account
        must not try codes without end."""
        perMinute = config.login.pageAttemptsPerMinute
        if self.limiter is None or self.limiter.perMinute != perMinute:
            self.limiter = PageLimiter(perMinute)
        return self.limiter.allow(f"uid {uid}", self.reactor.seconds())


def approveService(app: ProxyApp, reactor: Any, path: str) -> StreamServerEndpointService:
    """The approve socket's listener: world-connectable, a stale file left by a
    daemon that died replaced (its lock file says so), removed on stop."""
    endpoint = UNIXServerEndpoint(reactor, path, mode=0o666, wantPID=True)
    service = StreamServerEndpointService(endpoint, ApproveFactory(app, reactor))
    compat.raiseListenErrorsAtStart(service)
    return service


# -- the command -----------------------------------------------------------------------


def addParser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "approve",
        help="approve a Claude Code /login on this host (you are who the kernel says)",
        description="Approve (or --deny) the code Claude Code's /login shows, through the"
        " daemon's approve socket: it signs in as the client whose unix_user you are.",
    )
    parser.add_argument("code", help="the code Claude Code shows (WDJB-MJHT)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", metavar="PATH", help="the daemon's YAML config")
    where.add_argument("--socket", metavar="PATH", help="the approve socket itself")
    parser.add_argument("--deny", action="store_true", help="refuse the sign-in instead")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """0 approved; 1 refused by the daemon; 2 no socket to talk to."""
    path = args.socket
    if path is None:
        try:
            path = Config.fromPath(args.config).login.approveSocket
        except ConfigError as e:
            return _fail(f"{args.config}: {e}", 2)
        if path is None:
            return _fail(f"{args.config}: login.approve_socket is not set", 2)
    try:
        status, message = ask(path, "deny" if args.deny else "approve", args.code)
    except OSError as e:
        return _fail(f"cannot reach the daemon at {path}: {e.strerror or e}", 2)
    if status != "ok":
        return _fail(message, 1)
    print(message)
    return 0


def ask(path: str, verb: str, code: str, timeout: float = ANSWER_SECONDS) -> tuple[str, str]:
    """One question on the approve socket: (`ok` or `error`, the daemon's words)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(os.fspath(path))
        sock.sendall(f"{verb} {code.strip()[:64]}\n".encode())
        answer = b""
        while not answer.endswith(b"\n") and len(answer) <= 4 * LINE_BYTES:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    status, _, message = answer.decode("utf-8", "replace").strip().partition(" ")
    return (status or "error"), (message or "the daemon closed without an answer")


def _fail(message: str, status: int) -> int:
    print(f"ccproxy approve: {message}", file=sys.stderr)
    return status
