"""python -m sft COMMAND [overrides]  -- the console scripts without installed entry points (sft-COMMAND)."""

import sys

from sft import cli

COMMANDS = cli.COMMANDS  # each picks the C allocator (sft.allocator), then runs its Hydra main

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python -m sft {{{','.join(sorted(COMMANDS))}}} [hydra overrides]", file=sys.stderr)
        sys.exit(2)
    command = sys.argv.pop(1)
    COMMANDS[command]()
