"""Where the daemon listens: a Twisted endpoint description, with a deep accept
queue, and optionally a port shared by several processes (`reuse_port`).

One Python process uses one core. With `workers: N` the master binds the port
(`workerSockets`) and each worker adopts what it inherited (`inheritedService`);
with `reuse_port` alone, separately started processes each bind the port with
SO_REUSEPORT and the kernel spreads new connections between them.
"""

from __future__ import annotations

import resource
import socket
from typing import Any

from attrs import frozen
from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from ccproxy import compat
from ccproxy.config.endpoints import LISTEN_BACKLOG, tcpAddress, withBacklog

_log = Logger()

OPEN_FILES_WANTED = 65536
"""Enough for thousands of streams (each holds a client and an upstream socket)."""
RESERVED_FILES = 64
"""Kept back from client connections: logs, the listening port, DNS, the ledger."""


def raiseOpenFilesLimit(wanted: int = OPEN_FILES_WANTED) -> int:
    """Raise this process's soft open-files limit toward `wanted`, as far as the hard
    limit allows, and return it (logged). A hand-started shell often has 1024 or
    less, where a few hundred idle connections would lock everyone out."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    _log.info(
        "open files limit {soft} (hard {hard}): up to {connections} client connections",
        soft=soft,
        hard=hard,
        connections=connectionCap(soft),
    )
    return int(soft)


def connectionCap(openFiles: int) -> int:
    """Client connections served at once under an open-files limit: each may hold
    an upstream connection too, and some files are kept for everything else."""
    return max(16, (openFiles - RESERVED_FILES) // 2)


def listenService(listen: str, reusePort: bool, factory: Any, reactor: Any) -> IService:
    """The service that binds the port (when its `privilegedStartService` runs)."""
    if not reusePort:
        return strports.service(withBacklog(listen), factory, reactor=reactor)
    address = tcpAddress(listen)
    assert address is not None, "checked when the config was read"
    port, interface, backlog = address
    service = StreamServerEndpointService(
        ReusePortEndpoint(reactor, port, interface, backlog), factory
    )
    compat.raiseListenErrorsAtStart(service)  # as strports.service does: fail the start
    return service


def listeningSocket(port: int, interface: str, backlog: int, reusePort: bool) -> socket.socket:
    """A bound, listening, non-blocking TCP socket (SO_REUSEPORT if asked), for the
    reactor to adopt here or in a worker process. Raises `CannotListenError`."""
    family = socket.AF_INET6 if isIPv6Address(interface) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reusePort:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise CannotListenError(interface, port, e) from None
    return sock


def workerSockets(listen: str, count: int, reusePort: bool) -> list[socket.socket]:
    """What `count` worker processes accept on: one socket they all share (the
    kernel wakes the workers that wait and the first to accept takes the
    connection), or with `reuse_port` one SO_REUSEPORT socket each (the kernel
    hashes each connection to one of them). Port 0 gets one free port for all."""
    address = tcpAddress(listen)
    assert address is not None, "checked when the config was read"
    port, interface, backlog = address
    if not reusePort:
        return [listeningSocket(port, interface, backlog, False)]
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(listeningSocket(port, interface, backlog, True))
            port = sockets[0].getsockname()[1]
    except CannotListenError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


@implementer(IStreamServerEndpoint)
@frozen
class ReusePortEndpoint:
    """A TCP port bound with SO_REUSEPORT, handed to the reactor to serve.

    Twisted's own TCP endpoints cannot set the option on every supported release,
    so the socket is made here and adopted (`IReactorSocket.adoptStreamPort`).
    """

    reactor: Any
    port: int
    interface: str = ""
    backlog: int = LISTEN_BACKLOG

    def listen(self, factory: Any) -> Deferred[IListeningPort]:
        try:
            sock = listeningSocket(self.port, self.interface, self.backlog, True)
        except CannotListenError as e:
            return fail(e)
        try:
            return succeed(self.reactor.adoptStreamPort(sock.fileno(), sock.family, factory))
        finally:
            sock.close()  # the reactor holds its own duplicate


@implementer(IStreamServerEndpoint)
@frozen
class InheritedEndpoint:
    """A listening socket a worker process inherited from its master (at `fd`),
    adopted by the reactor: the Twisted way for processes to share a port."""

    reactor: Any
    fd: int

    def listen(self, factory: Any) -> Deferred[IListeningPort]:
        try:
            sock = socket.socket(fileno=self.fd)
        except OSError as e:
            return fail(CannotListenError("", f"inherited fd {self.fd}", e))
        try:
            return succeed(self.reactor.adoptStreamPort(sock.fileno(), sock.family, factory))
        finally:
            sock.close()  # the reactor holds its own duplicate


def inheritedService(fd: int, factory: Any, reactor: Any) -> IService:
    """The service that serves the socket a worker inherited at `fd`."""
    service = StreamServerEndpointService(InheritedEndpoint(reactor, fd), factory)
    compat.raiseListenErrorsAtStart(service)
    return service
