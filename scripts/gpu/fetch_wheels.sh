#!/usr/bin/env bash
# bash scripts/gpu/fetch_wheels.sh   (here, where pip reaches an index; then scripts/gpu/bench_arch.sh there)
#
# Fills .whl/ (git-ignored, at the repo root) with the wheels the GPU machine lacks or has in other versions
# than this checkout was tested with, for CPython 3.12 on x86-64 Linux: the device tool carries the folder when
# a run names it (carry: [".whl"]); the whole working tree that travels must stay under 64 MiB.
# bitsandbytes' wheel holds a CUDA library per CUDA release (43 MB); only the CUDA 13.x ones (the device's torch
# is a cu130 build) and the CPU one are kept, with the wheel's RECORD rewritten to match (about 3 MB).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DEST=.whl
# the versions of this checkout's .venv, where the CPU tests ran; the device has torch, accelerate, numpy,
# pyarrow, pandas, xxhash, psutil, huggingface-hub, tokenizers and safetensors already
PACKAGES=(bitsandbytes==0.50.2 trl==1.16.0 transformers==5.24.0 peft==0.21.2 datasets==5.2.0 dill==0.4.1
          multiprocess==0.70.19 hydra-core==1.3.2 omegaconf==2.3.1 regex==2026.11.19 liger-kernel==0.8.0
          pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 gguf==0.19.0)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do PLATFORMS+=(--platform "$p"); done
mkdir -p "$DEST"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" "${PACKAGES[@]}"
# antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 pins) is published as a source archive only: pure Python,
# so a wheel built here installs there
ls "$DEST"/antlr4_python3_runtime-4.9.3-*.whl >/dev/null 2>&1 ||
  "$PY" -m pip wheel -q --no-deps antlr4-python3-runtime==4.9.3 -w "$DEST"
"$PY" - "$DEST" <<'PYEOF'
import glob, os, re, sys, zipfile

KEEP = re.compile(r"libbitsandbytes_(cpu|cuda13\d)\.so$")
for path in glob.glob(os.path.join(sys.argv[1], "bitsandbytes-*.whl")):
    with zipfile.ZipFile(path) as src:
        names = src.namelist()
        drop = {n for n in names if n.endswith(".so") and not KEEP.search(n)}
        if not drop:
            continue
        tmp = path + ".tmp"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
            for name in names:
                if name in drop:
                    continue
                data = src.read(name)
                if name.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines()
                    data = ("\n".join(l for l in lines if l.split(",")[0] not in drop) + "\n").encode()
                out.writestr(src.getinfo(name), data)
    os.replace(tmp, path)
    print(f"{os.path.basename(path)}: left out {len(drop)} libraries for other CUDA/ROCm/XPU releases")
PYEOF
du -ch "$DEST"/*.whl | tail -1
