"""A small program of many processes, for tests of distributed runs (``processes-per-node``,
``nodes``) on any backend: each rank records its variables, host and pid, and the ranks do an
all-reduce of their ranks over TCP (standard library sockets), so a test sees that they found
each other.

The program takes two arguments: ``FAIL`` (the rank that exits 3 after a moment; ``-2``: none
fails, every rank waits to be stopped; ``-1``: they all-reduce and end) and ``OUT`` (the folder
each rank writes ``rank<N>.json`` into).  Rank 0 listens on every address of its host, as
torch's TCPStore does (a test cluster's own host name may resolve to loopback).
"""

from __future__ import annotations

import json
from pathlib import Path

WORKER = r'''
import json, os, socket, sys, time
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
record = {k: os.environ.get(k) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK",
                                          "NNODES", "MASTER_ADDR", "MASTER_PORT", "MLFLOW_RUN_ID",
                                          "CUDA_VISIBLE_DEVICES")}
record["host"], record["pid"] = socket.gethostname(), os.getpid()
print(f"rank {rank} of {world} ready on {record['host']} pid {os.getpid()}", flush=True)
fail, out = int(sys.argv[1]), sys.argv[2]
if fail == rank:
    time.sleep(0.5)
    sys.exit(3)
if fail >= 0 or fail == -2:  # the others wait (to be stopped)
    json.dump(record, open(os.path.join(out, f"rank{rank}.json"), "w"))
    time.sleep(300)
if rank == 0:  # an all-reduce of the ranks through rank 0
    server = socket.create_server(("", port))
    peers, total = [], rank
    for _ in range(world - 1):
        conn, _ = server.accept()
        peers.append(conn)
        total += int(conn.recv(64))
    for conn in peers:
        conn.sendall(str(total).encode())
else:
    for _ in range(600):
        try:
            conn = socket.create_connection((addr, port), timeout=5)
            break
        except OSError:
            time.sleep(0.05)
    conn.sendall(str(rank).encode())
    total = int(conn.recv(64))
record["sum"] = total
print(f"sum {total}", flush=True)
json.dump(record, open(os.path.join(out, f"rank{rank}.json"), "w"))
'''


def rank_records(out: Path) -> dict[int, dict]:
    """What each rank wrote into ``out``, by rank."""
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in Path(out).glob("rank*.json")}
