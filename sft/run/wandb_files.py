"""W&B's offline run files read back without W&B's reader: the last step a killed offline run holds (a restart
must not send those steps again) and its history rows."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Iterator


def wandb_records(path: Path) -> Iterator[bytes]:
    """The records of a W&B run file (`run-<id>.wandb`): a LevelDB-style log after a 7-byte `:W&B` header, in
    32 KiB blocks of (crc32, length, type) records, a record split over blocks as FIRST, MIDDLE..., LAST."""
    data, pos, pending = path.read_bytes(), 7, b""
    while pos + 7 <= len(data):
        room = 32768 - pos % 32768
        if room < 7:  # a block's tail too short for a header is padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += room
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk


def wandb_history(root: Path, run_id: str) -> list[dict[str, Any]]:
    """Every history row (with its `_step`) of W&B's offline files of run `run_id` under root; [] when unreadable."""
    try:
        from wandb.proto import wandb_internal_pb2
    except ImportError:
        return []
    rows = []
    for path in sorted(root.glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")):
        try:
            for data in wandb_records(path):
                record = wandb_internal_pb2.Record()
                record.ParseFromString(data)
                if record.WhichOneof("record_type") == "history":
                    rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
        except Exception:  # a file cut short by a kill: what was read counts
            continue
    return rows


def offline_last_step(root: Path, run_id: str) -> int:
    return max((int(r["_step"]) for r in wandb_history(root, run_id) if "_step" in r), default=-1)
