#!/usr/bin/env python3
"""python3 scripts/gpu/gguf_parts.py split   (here)  /  join   (on the GPU machine)  -- the embedded GGUF in parts.

The embedded SmolLM2 GGUF (94 MiB) is larger than what one call of the device tool carries (64 MiB with the
working tree and .whl/), so it travels in parts, one per call, into the git-ignored .gguf/ folder; the machine
keeps ignored files between calls while it stays warm. `split` writes .gguf/part-1 ... part-N and
.gguf/manifest.json (sizes and sha256 of each part and of the whole file), and .gguf/prompts.json (the
first 64 records of the benchmark's Alpaca data, which lies outside the checkout and does not travel): the last part is sized to travel
beside .whl/ and the tree, the earlier ones alone with the tree. It prints the calls to make. `join` checks
every part against the manifest, writes the file atomically (never half-written) and prints its path; a
missing or different part (a fresh machine between the calls) exits 3 with the part named.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

MIB = 1 << 20
CARRY_LIMIT = 64 * MIB  # what one call of the device tool carries: tree, shared/ and carried paths together
MARGIN = 1 * MIB  # for files that change between split and the calls (a log, a new test)
MANIFEST = "manifest.json"
PROMPTS = "prompts.json"
PROMPT_RECORDS = 64
REPO = Path(__file__).resolve().parents[2]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            h.update(block)
    return h.hexdigest()


def tree_bytes(repo: Path) -> int:
    """Bytes of the files that travel with every call: tracked, and untracked but not ignored."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         check=True, capture_output=True).stdout
    return sum((repo / p).stat().st_size for p in out.decode().split("\0") if p and (repo / p).is_file())


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def part_sizes(total: int, first_room: int, last_room: int) -> list[int]:
    """Sizes of the parts: the last at most `last_room` (it travels beside the wheels), the others at most
    `first_room` each, as few parts as that allows."""
    if first_room <= 0 or last_room <= 0:
        raise ValueError(f"no room for a part: {first_room} bytes alone, {last_room} beside the wheels")
    last = min(total, last_room)
    rest = total - last
    n = -(-rest // first_room)  # ceil
    sizes = [rest // n + (i < rest % n) for i in range(n)] if n else []
    return sizes + [last]


def split(src: Path, out: Path, first_room: int, last_room: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    sizes = part_sizes(src.stat().st_size, first_room, last_room)
    for old in out.glob("part-*"):
        old.unlink()
    parts = []
    with src.open("rb") as f:
        for i, size in enumerate(sizes, 1):
            path = out / f"part-{i}"
            path.write_bytes(f.read(size))
            parts.append({"name": path.name, "bytes": size, "sha256": sha256(path)})
    manifest = {"file": src.name, "bytes": src.stat().st_size, "sha256": sha256(src), "parts": parts}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


class PartError(Exception):
    pass


def join(folder: Path, target: Path) -> Path:
    """Concatenate the parts named in the manifest into `target`, each and the whole checked by sha256."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise PartError(f"{manifest_path}: missing (carry .gguf/{MANIFEST} with the last part)")
    manifest = json.loads(manifest_path.read_text())
    for part in manifest["parts"]:
        path = folder / part["name"]
        if not path.is_file():
            raise PartError(f"{path}: missing (it travels in its own call, on the same warm machine)")
        if path.stat().st_size != part["bytes"] or sha256(path) != part["sha256"]:
            raise PartError(f"{path}: not the part of this manifest (size or sha256 differ)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        for part in manifest["parts"]:
            f.write((folder / part["name"]).read_bytes())
    if sha256(tmp) != manifest["sha256"]:
        tmp.unlink()
        raise PartError(f"{target}: the joined parts do not match the manifest's sha256")
    tmp.replace(target)
    return target


def embedded_gguf() -> Path:
    sys.path.insert(0, str(REPO))
    from sft.model.load import embedded_gguf as find

    return find()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("split", help="the GGUF into .gguf/part-* and manifest.json, and the calls to make")
    s.add_argument("--src", type=Path, help="default: the embedded SmolLM2 GGUF of this checkout's environment")
    s.add_argument("--out", type=Path, default=REPO / ".gguf")
    s.add_argument("--wheels", type=Path, default=REPO / ".whl", help="what travels beside the last part")
    s.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "alpaca_en_demo.json",
                   help=f"Alpaca records (JSON list): the first {PROMPT_RECORDS} go to {PROMPTS}")
    j = sub.add_parser("join", help="the parts back into one file, checked")
    j.add_argument("--dir", type=Path, default=REPO / ".gguf")
    j.add_argument("target", type=Path)
    args = ap.parse_args()
    if args.command == "join":
        try:
            print(join(args.dir, args.target))
        except PartError as e:
            print(f"error: {e}", file=sys.stderr)
            return 3
        return 0
    tree = tree_bytes(REPO)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / PROMPTS).write_text(json.dumps(json.loads(args.data.read_text())[:PROMPT_RECORDS], ensure_ascii=False))
    room = CARRY_LIMIT - tree - MARGIN - (args.out / PROMPTS).stat().st_size
    manifest = split(args.src or embedded_gguf(), args.out, room, room - folder_bytes(args.wheels))
    rel = args.out.resolve().relative_to(REPO) if args.out.resolve().is_relative_to(REPO) else args.out
    parts = manifest["parts"]
    print(f"{manifest['file']}: {manifest['bytes'] / MIB:.1f} MiB in {len(parts)} parts under {rel}/ "
          f"(tree {tree / MIB:.1f} MiB, wheels {folder_bytes(args.wheels) / MIB:.1f} MiB)")
    for i, part in enumerate(parts[:-1], 1):
        print(f"  call {i}: carry [\"{rel}/{part['name']}\"], command: ls -l {rel}")
    print(f"  call {len(parts)} (within the machine's warm time of the last): carry [\".whl\", \"{rel}/{parts[-1]['name']}\", "
          f"\"{rel}/{MANIFEST}\", \"{rel}/{PROMPTS}\"], command: bash scripts/gpu/issue19.sh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
