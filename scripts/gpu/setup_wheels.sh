# source scripts/gpu/setup_wheels.sh   (on the GPU machine, from the repo root, with .whl/ carried; OUT_DIR set)
#
# Installs the carried wheels (scripts/gpu/fetch_wheels.sh fills .whl/ where pip reaches an index) into /tmp/site,
# sets the environment every GPU script here runs in, and records the versions in $OUT_DIR/versions.txt.
WHEELS=${WHEELS:-.whl}
mkdir -p "$OUT_DIR"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  "$WHEELS"/*.whl || return 1
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
  TOKENIZERS_PARALLELISM=false SFT_CACHE_DIR=/tmp/sft-cache
# bitsandbytes loads libbitsandbytes_cuda<torch's CUDA>.so; the carried wheel keeps the CUDA 13.0 and 13.2 ones
cuda=$(python3 -c 'import torch; print((torch.version.cuda or "").replace(".", ""))')
if [[ -n "$cuda" && ! -e /tmp/site/bitsandbytes/libbitsandbytes_cuda$cuda.so ]]; then
  export BNB_CUDA_VERSION=130
  echo "torch is built for CUDA $cuda: no such bitsandbytes library in the wheel, BNB_CUDA_VERSION=130"
fi
python3 - <<'PYEOF' | tee "$OUT_DIR/versions.txt"
import importlib.metadata as m, torch
print("gpu:", torch.cuda.get_device_name() if torch.cuda.is_available() else "none", "torch:", torch.__version__)
print(" ".join(f"{p}={m.version(p)}" for p in ("transformers", "peft", "trl", "accelerate", "bitsandbytes",
      "datasets", "pyarrow", "fsspec", "huggingface-hub", "tokenizers", "safetensors")))
import bitsandbytes, trl, sft.train.trainer  # noqa: F401 -- fail here, not in every stack
PYEOF
[[ ${PIPESTATUS[0]} -eq 0 ]] || return 1
