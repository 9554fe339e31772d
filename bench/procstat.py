"""What a process costs, read from /proc (Linux): CPU time, RSS, open fds."""

from __future__ import annotations

import asyncio
import os
import resource

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime (and those of reaped children) of the pids, in seconds."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2 :].split()
        # fields[0] is field 3 (state); utime..cstime are fields 14..17
        ticks += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def runqueue_wait_seconds(pids: list[int]) -> float:
    """Time the pids spent runnable but waiting for a CPU (/proc/PID/schedstat,
    second field). Grows when other processes compete for the same core."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/schedstat", "rb") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return total / 1e9


def listen_overflows() -> int | None:
    """TcpExt ListenOverflows of this network namespace (/proc/net/netstat): SYNs
    dropped because a listening socket's accept queue was full. Host-wide."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            v = table.get("ListenOverflows")
            return int(v) if v is not None else None
    return None


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            pass
    return total


def fd_count(pids: list[int]) -> int:
    n = 0
    for pid in pids:
        try:
            n += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return n


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Sampler:
    """Samples RSS and fds of some pids every `interval` seconds while running."""

    def __init__(self, pids: list[int], interval: float = 0.1) -> None:
        self.pids = pids
        self.interval = interval
        self.peak_rss = 0
        self.peak_fds = 0
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def sample(self) -> None:
        self.samples += 1
        self.peak_rss = max(self.peak_rss, rss_bytes(self.pids))
        self.peak_fds = max(self.peak_fds, fd_count(self.pids))

    def start(self) -> None:
        if self.pids:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self.sample()


async def settle(
    pids: list[int], idle: float = 0.05, window: float = 0.3, max_wait: float = 15.0
) -> bool:
    """Wait until the pids use less than `idle` of a core over `window` s (a run
    must not pay for the previous one's leftovers). False if they never did."""
    if not pids:
        return True
    loop = asyncio.get_running_loop()
    end = loop.time() + max_wait
    while loop.time() < end:
        c0 = cpu_seconds(pids)
        await asyncio.sleep(window)
        if (cpu_seconds(pids) - c0) / window <= idle:
            return True
    return False


def children(pid: int) -> list[int]:
    """The pids of `pid`'s child processes (/proc/PID/task/*/children)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return sorted(found)
