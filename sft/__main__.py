"""python -m sft COMMAND [overrides]  -- the console scripts without installed entry points (sft-COMMAND)."""

import sys

from sft import cli

COMMANDS = cli.COMMANDS  # each picks the C allocator (sft.allocator), then runs its Hydra main

USAGE = f"usage: python -m sft {{{','.join(sorted(COMMANDS))}}} [hydra overrides]   (python -m sft COMMAND --help: its settings)"

if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] in ("--help", "-h"):
        print(USAGE)
        sys.exit(0)
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    command = sys.argv.pop(1)
    COMMANDS[command]()
