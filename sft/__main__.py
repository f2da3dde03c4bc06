"""python -m sft COMMAND [overrides]  -- the console scripts without installed entry points (sft-COMMAND)."""

import sys

from sft import cli

COMMANDS = {name[: -len("_main")]: getattr(cli, name) for name in dir(cli) if name.endswith("_main")}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python -m sft {{{','.join(sorted(COMMANDS))}}} [hydra overrides]", file=sys.stderr)
        sys.exit(2)
    command = sys.argv.pop(1)
    COMMANDS[command]()
