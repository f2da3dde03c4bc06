"""Files that are whole or absent, and config diffs: one of each, for every command.

- `write_text_atomic`, `write_json_atomic`, `write_rows_atomic`: a temporary sibling renamed over the target,
  so a reader (or a rerun after a kill) never sees half a file.
- `publish_dir`: the same for a whole directory, also when several processes write the same one at once;
  `build_once`: under a lock, so that of several processes (or nodes) only one builds it.
- `differing_keys`: the dotted keys where two nested configs differ.
- `cache_root`: where converted models and processed data are cached.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable


def cache_root() -> Path:
    """$SFT_CACHE_DIR, else ~/.cache/sft."""
    return Path(os.environ.get("SFT_CACHE_DIR") or Path.home() / ".cache" / "sft")


def current_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes it 0600; colleagues read runs as open() would allow
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_rows_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """JSON lines, one row each."""
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def publish_dir(target: Path, write: Callable[[Path], None], marker: str) -> None:
    """Fill a sibling temporary directory with `write(tmp)`, then rename it to `target`. `marker` is the file
    that makes an entry complete: a process that loses the rename to another keeps the other's entry (the
    same content, since both name it by the same key), and an entry without its marker is replaced."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not (target / marker).is_file():  # left by a crash
        shutil.rmtree(target, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it 0700: as mkdir would, once renamed
        write(tmp)
        os.replace(tmp, target)
    except OSError:
        if not (target / marker).is_file():  # not a lost race: a real error
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_once(target: Path, write: Callable[[Path], None], marker: str, announce: Callable[[], None],
               reuse: bool = True) -> bool:
    """publish_dir under an exclusive lock on `<target>.lock`: the first process to take it builds the entry
    (calling announce() first), the others wait and find it complete. True when this process built it. The lock
    is an flock, which holds across the nodes of a shared file system (NFS, Lustre mounted with flock): two
    nodes preparing the same data at once build it once, not twice. reuse=False (cache=false) builds it anew
    whatever is there."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{target}.lock"):
        if reuse and (target / marker).is_file():
            return False
        announce()
        publish_dir(target, write, marker)
        return True


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def differing_keys(old: dict[str, Any], new: dict[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """The dotted keys whose values differ (absent on one side counts), sorted; a key in `ignore`, or under
    one, is not compared."""
    a, b = flatten(old), flatten(new)
    skipped = tuple(ignore)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)
                  and not any(k == s or k.startswith(f"{s}.") for s in skipped))
