"""What the tests are built on: the fakes, the ways of running the proxy around them,
and the data they share. Nothing here is a test.

From the fastest to the most real:

``harness``: the app between two StubTreqs, on one Clock.
    ``Harness.build(config)`` wires a ``ProxyApp`` (with its real ``Dispatcher`` and
    ``UpstreamClient``) to a ``fakes.FakeOpenAI``; the test talks to the app through
    ``h.client`` and the app to the fake through ``h.upstreamTreq``, two
    ``treq.testing.StubTreq``s, and every timer of the app and the fake is on
    ``h.clock``. ``h.post(body)`` sends a request and returns the whole
    ``ClientReply``; ``message()``, ``parseSSE`` and ``resultOf`` are there too.
    Its caveats:

    - A StubTreq delivers a request, and whatever answers at once, as soon as it is
      made, so a plain request needs no flush. ``h.flush()`` is for bytes that a
      timer writes later (an ``sseReply`` frame after ``h.clock.advance``), and it
      pumps each StubTreq only on its own connections: one round moves what the
      upstream wrote to the app and what the app then wrote to the client, in
      that order; a second round is for the way back (a client that hung up, so
      the app aborts its upstream connection). It does three rounds, one more
      than it needs; the suite passes with one.
    - ``flush()`` never moves the clock, not even for ``callLater(0)``: timeouts,
      retry waits, pings and delayed frames happen only at ``h.clock.advance(s)``.
    - Bytes are real HTTP/1.1 on both sides, but the server in front of the app is
      the plain ``Site`` StubTreq makes, on a clock of its own: not ``ProxySite``
      (its body limit: ``test_fuzz.postThroughSite``), and not the daemon's pool,
      endpoints or connect timeouts (``Harness.build(http=…)`` puts a client of the
      test's making in place of the upstream StubTreq).
    - The dispatcher's jitter is fixed (``random=lambda: 0.5``).

``memorynet``: the whole daemon on a network in memory.
    ``MemoryNet`` puts the real ``ProxyService`` (``buildService``: its
    ``ProxySite``, ``Agent``, pool and endpoints), servers of any kind (a scripted
    byte-level ``Protocol``, a fake's ``Site``) and a treq client on one
    ``MemoryReactorClock``, joined by ``iosim`` transports. ``net.run(d)`` moves
    bytes until nothing moves, then jumps the clock to its next timer, until ``d``
    has its result: a stall or a slowloris that would take seconds takes
    milliseconds, with every timer firing at its own time. Its docstring lists
    what differs from a socket (no RST, no back pressure, black holes and
    refusals by port); test_faults runs its timed faults here and one case of
    each over sockets.

``loopback``: the real service over real sockets, in this process.
    ``startLoopback(config)`` listens a ``FakeOpenAI`` on a real ``Site`` and starts
    the daemon's service in front of it on 127.0.0.1, under the global reactor
    (run by pytest-twisted); ``serveFake`` and ``startProxy`` are the halves. For
    the few tests of the whole path: real clients (the Anthropic SDK in a
    thread), keep-alive, draining, a port that stops accepting.

``processes``: subprocesses, for end to end.
    ``Processes`` starts and stops ``scripted_upstream.py`` and ``twistd -n
    ccproxy`` (or anything else) with their output in files; ``freePort``,
    ``waitFor`` (a bounded readiness poll that notices a process that died),
    ``twistd`` and ``checkoutEnvironment`` for the daemonized twistd of
    test_daemon.

``fakes``: the fake OpenAI-compatible upstream.
    ``FakeOpenAI`` answers each request with the next queued reply (``jsonReply``,
    ``sseReply`` with frames on its clock, ``rawReply``, ``stallReply``) or, when
    none is queued, its ``otherwise`` reply; it records what it received and
    whether its client hung up. ``completion`` and ``toolCall`` build answers.

``scripted_upstream``: a ``FakeOpenAI`` with a script, as a program.
    What ``Processes.scriptedUpstream`` runs: it calls Claude Code's ``Read`` tool,
    then answers once the tool's result is back, and logs every request.

``faultkit``: what fault tests share.
    A bounded treq ``Client`` (over sockets, or on a ``MemoryNet``), ``within``
    and ``waitUntil`` on the global reactor, and the checks of what a client must
    see: ``assertEnvelope``, ``assertStreamError``, ``textOf``/``blocksOf``.

``redisserver``: a real Redis.
    The ``redisServer`` fixture (import it into the test module) starts
    ``redis-server`` on a free loopback port in the test's temporary directory,
    persisting nothing, and stops it after; ``kill``/``start`` make an outage on
    the same port, ``pause``/``resume`` a Redis that answers nothing,
    ``command`` asks it through redis-cli. Skipped without ``redis-server``,
    except in CI.

``ledger``: the ledger's contract in memory.
    ``MemoryLedger`` keeps ``Row``s in a list and sums them for ``spent`` (or
    raises ``fail``), for the tests of what builds on the ledger (budgets).

``fixtures``: data.
    The requests captured from Claude Code (``requestBodies()``,
    ``requestBody("NNN")``, ``capturedBodies(pattern)``) and a tool to offer
    (``TOOLS``).

``examples``: hypothesis example counts.
    ``examples(n)`` scales a property test's own count to the active profile
    (see tests/conftest.py: ``HYPOTHESIS_PROFILE=dev`` for quick local runs).
"""
