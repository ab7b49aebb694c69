"""Keep a CPU engine's busy cores apart from the processes that must answer at once.

vLLM's CPU build runs the model in a worker process and drives it from an engine-core process, and
both wait for each other by spinning (a shared-memory ring polled with sched_yield). On a small host
everything else (the API server that streams the tokens, the engine core's own I/O threads, the
load generator, the cross-check) then shares cores with spinners, and where the kernel happens to
put them decides how the server behaves: on a 2-core host the same server alternated, for seconds at
a time, between streaming every token as it came and holding a request's whole answer until it
finished while admitting no other (a concurrency-4 step served one request at a time). Two clients
measuring it minutes apart read up to 2x apart. Splitting the host removes the coin toss: the
engine (worker and engine core) on `engine`, the API server and the clients on `frontend`.

`server.cpus` in the plan turns it on: the worker binds its threads to `engine`
(VLLM_CPU_OMP_THREADS_BIND), the API server is started under `taskset -c <frontend>`, every other
process of the server's group (the engine core and its helpers) is moved to `engine` once the
server is healthy, and ridgeline's own process (with the Locust workers and the cross-check it
starts) runs on `frontend` for the length of the run.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable, Iterator, Optional

BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"


def cpu_list(cpus: Iterable[int]) -> str:
    """'0,2,3' as taskset and vLLM read it."""
    return ",".join(str(c) for c in cpus)


def frontend_prefix(frontend: Iterable[int]) -> list[str]:
    """The argv prefix that starts the API server on the frontend CPUs (taskset execs it: same pid)."""
    return ["taskset", "-c", cpu_list(frontend)]


def without_prefix(argv: list[str]) -> list[str]:
    """argv without a leading `taskset -c LIST` (what a pod, with no such host, runs)."""
    return argv[3:] if len(argv) > 3 and argv[0] == "taskset" and argv[1] == "-c" else list(argv)


def engine_env(engine: Iterable[int]) -> dict[str, str]:
    """The worker's OpenMP binding: exactly the engine CPUs (its own 'auto' would read the frontend's mask)."""
    return {BIND_ENV: cpu_list(engine)}


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return [pid]


def set_process_affinity(pid: int, cpus: set[int]) -> bool:
    """Move every thread of pid onto cpus; False when the process is gone or refuses."""
    moved = False
    for tid in _threads(pid):
        try:
            os.sched_setaffinity(tid, cpus)
            moved = True
        except OSError:  # the thread ended, or the process is not ours to move
            continue
    return moved


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def pin_engine(leader: int, members: Iterable[int], engine: Iterable[int]) -> dict[str, str]:
    """Every process of the server's group but the API server itself (the group leader) onto the
    engine CPUs; pid -> process name of those moved (what the manifest records)."""
    cpus = set(engine)
    out: dict[str, str] = {}
    for pid in members:
        if pid != leader and set_process_affinity(pid, cpus):
            out[str(pid)] = _name(pid)
    return out


@contextlib.contextmanager
def client_on(frontend: Optional[Iterable[int]]) -> Iterator[Optional[list[int]]]:
    """Run this process (all its threads, and what it starts meanwhile) on the frontend CPUs, then
    give back the affinity it had. None: leave it as it is."""
    if frontend is None:
        yield None
        return
    pid = os.getpid()
    before = {tid: cpus for tid in _threads(pid) if (cpus := _affinity(tid)) is not None}
    set_process_affinity(pid, set(frontend))
    try:
        yield sorted(os.sched_getaffinity(0))
    finally:
        for tid, cpus in before.items():
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass
        main_cpus = before.get(pid)
        if main_cpus is not None:  # threads started meanwhile inherited the frontend: give them the main's
            for tid in _threads(pid):
                if tid not in before:
                    try:
                        os.sched_setaffinity(tid, main_cpus)
                    except OSError:
                        pass


def _affinity(tid: int) -> Optional[set[int]]:
    try:
        return os.sched_getaffinity(tid)
    except OSError:  # the thread ended meanwhile
        return None
