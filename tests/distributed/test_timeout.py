"""A rank that diverges (skips a collective) makes the others fail after the timeout, not hang."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import time

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, results: mp.Queue) -> None:
    import torch

    from brisk.run.distributed import all_reduce_sum, init_distributed

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE="2",
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        BRISK_DIST_TIMEOUT_S="3",
    )
    os.environ.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    init_distributed(torch.device("cpu"))
    if rank == 1:  # diverged: never joins the collective below, and does not exit either
        time.sleep(120)
        return
    start = time.monotonic()
    try:
        all_reduce_sum(torch.ones(1))
        results.put(("returned", "", time.monotonic() - start))
    except Exception as exc:  # the timeout surfaces as an exception the runner records
        results.put((type(exc).__name__, str(exc), time.monotonic() - start))


@pytest.mark.slow
def test_a_collective_without_its_peer_raises_after_the_timeout() -> None:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, results)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        kind, message, waited = results.get(timeout=90)
    finally:
        for p in procs:
            p.terminate()
            p.join(10)
    assert kind != "returned", "all_reduce returned although rank 1 never joined it"
    assert 2.5 <= waited < 30, (kind, message, waited)
