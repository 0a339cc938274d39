#!/usr/bin/env bash
# The GPU check's kit, for a CUDA machine that has Python 3.12 and torch but neither the package index nor
# SimpleITK and MONAI: run here (with the index), it downloads their wheels into .whl/ at the repository's root
# (ignored by git; at most 60 MiB, checked) and prints the one command to run on the GPU machine, in the
# repository's root with .whl/ beside it:
#
#     bash Testing/Benchmarks/gpu_kit.sh [OUTPUT_FOLDER]      (default: the literal $OUT, expanded there)
#
# That command installs the wheels into a folder of its own (gpu_check.py --wheels: pip install --no-index
# --target, PYTHONPATH for every stage), records the versions, runs every stage within its budget, and writes
# gpu-check.json (after every setting and stage) and gpu-check.log into OUTPUT_FOLDER.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUTPUT="${1:-\$OUT}"
KIT="$ROOT/.whl"
LIMIT_MIB=60
PYTHON_VERSION=3.12
# The versions the test suite runs with (SimpleITK's wheel is abi3: one for every CPython from 3.11).
WHEELS=(SimpleITK==2.5.7 monai==1.6.1)

rm -rf "$KIT"
mkdir -p "$KIT"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --dest "$KIT" "${WHEELS[@]}"

size=$(du -cb "$KIT"/*.whl | tail -n 1 | cut -f 1)
mib=$(( (size + 1048575) / 1048576 ))
ls -l "$KIT" >&2
if (( mib > LIMIT_MIB )); then
    echo "gpu_kit: the wheels in $KIT take $mib MiB, more than the $LIMIT_MIB MiB the GPU machine's transfer allows." >&2
    exit 1
fi
echo "gpu_kit: $mib MiB of wheels in $KIT; on the GPU machine, in the repository's root with .whl/ beside it, run:" >&2
echo "set -o pipefail; mkdir -p \"$OUTPUT\"; PYTHONUNBUFFERED=1 NCCL_SOCKET_IFNAME=lo SEMISUPSEG_DIST_TIMEOUT_S=60 python3 Testing/Benchmarks/gpu_check.py --wheels .whl --json \"$OUTPUT/gpu-check.json\" 2>&1 | tee \"$OUTPUT/gpu-check.log\""
