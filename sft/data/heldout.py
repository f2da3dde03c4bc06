"""The held-out set a run trained without, as recorded in held_out.json, and its check at evaluation time.

sft-train records, per source, each held-out record's id (its position in its file) and a short hash of its
content (sft.data.splits.record_hash), as the split gave them. sft-eval and sft-generate split=eval re-derive the
split from the run's config with the code of today: when a change to that code (the split rule, the reading of
records), to the file or to the data settings makes it give records the run did not hold out, those may be
records it trained on, and the run is refused. The file:

    {"format": 1, "sources": {"<name>": {"path": ..., "eval_path": ..., "eval_fraction": ..., "split_seed": ...,
                                          "max_records": ..., "records": [[id, "hash"], ...]}}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sft.data.load import Record
from sft.data.sources import Source
from sft.data.splits import held_out_records, record_hash
from sft.errors import DataError
from sft.io import write_text_atomic
from sft.run.rundir import HELD_OUT  # the same name in a source's cache entry (its own records), sft-prepare's out_dir

FORMAT = 1
SHOWN = 5  # record ids a refusal names


def held_out_file(sources: list[Source], held: dict[str, list[tuple[int, str]]]) -> dict[str, Any]:
    """What held_out.json holds: every source's settings that choose its held-out records, and those records."""
    return {"format": FORMAT, "sources": {s.name: {
        "path": s.data.path, "eval_path": s.data.eval_path, "eval_fraction": s.data.eval_fraction,
        "split_seed": s.data.split_seed, "max_records": s.data.max_records,
        "records": [[int(i), h] for i, h in held[s.name]]} for s in sources}}


def source_held_out(source: Source, entry: Path) -> list[tuple[int, str]]:
    """A source's held-out records as its cache entry holds them; an entry from before entries held them is read
    once more (without tokenizing) and gets the file (every process writes the same, atomically)."""
    if (entry / HELD_OUT).is_file():
        return [(i, h) for i, h in json.loads((entry / HELD_OUT).read_text())]
    held = held_out_records(source.data)
    write_held_out(entry / HELD_OUT, held)
    return held


def write_held_out(path: Path, obj: Any) -> None:
    """On one line, no indent: about 26 bytes a held-out record (50,000 of a 1M-record source: 1.3 MB)."""
    write_text_atomic(path, json.dumps(obj, ensure_ascii=False) + "\n")


def by_source(records: list[Record], sources: list[Source]) -> dict[str, list[tuple[int, str]]]:
    """(id, record_hash) of the records of each source (a mixture's records name theirs; one source's do not)."""
    out: dict[str, list[tuple[int, str]]] = {s.name: [] for s in sources}
    for r in records:
        out[r.get("source", sources[0].name)].append((r["id"], record_hash(r)))
    return out


def check_held_out(recorded: dict[str, Any], run: Path, sources: list[Source], records: list[Record]) -> list[str]:
    """Refuse held-out records the run did not record as held out (other ids, or other content at an id), for
    every source read from the files it was recorded with; other files are other data, not checked. Returns a
    note per source evaluated on fewer records than it held out (data.max_records or a smaller eval_fraction
    given now), which is no leak."""
    notes = []
    now = by_source(records, sources)
    for source in sources:
        entry = recorded.get("sources", {}).get(source.name)
        if entry is None or (entry["path"], entry["eval_path"]) != (source.data.path, source.data.eval_path):
            continue
        theirs = {int(i): h for i, h in entry["records"]}
        unknown = [i for i, _ in now[source.name] if i not in theirs]
        changed = [i for i, h in now[source.name] if i in theirs and theirs[i] != h]
        if unknown or changed:
            raise DataError(refusal(run, source, len(theirs), unknown, changed))
        if len(now[source.name]) < len(theirs):
            notes.append(f"note: data source {source.name!r}: evaluating {len(now[source.name])} of the "
                         f"{len(theirs)} records {run} held out")
    return notes


def refusal(run: Path, source: Source, recorded: int, unknown: list[int], changed: list[int]) -> str:
    what = []
    if unknown:
        what.append(f"{len(unknown)} that it did not hold out (records {', '.join(map(str, unknown[:SHOWN]))}"
                    f"{', ...' if len(unknown) > SHOWN else ''}): it may have trained on them")
    if changed:
        what.append(f"{len(changed)} whose content differs from what it held out (records "
                    f"{', '.join(map(str, changed[:SHOWN]))}{', ...' if len(changed) > SHOWN else ''})")
    return (f"{run}: data source {source.name!r} ({source.data.path}) now gives held-out records that do not match "
            f"the {recorded} in its held_out.json: {'; '.join(what)}. The file, the data settings or sft's split "
            "rule changed since training; restore the file and settings, or evaluate on other data explicitly "
            "(data.path=... data.eval_path=...)")
