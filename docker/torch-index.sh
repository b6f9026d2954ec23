#!/bin/sh
# Prints the package index docker/Dockerfile installs torch from, for an image VARIANT (the rayproject/ray tag
# suffix) and the TORCH_INDEX_URL build argument; refuses a CUDA variant without a CUDA index, which would put a
# CPU-only torch on a GPU image that then trains on CPU without a word.
#   sh docker/torch-index.sh VARIANT [TORCH_INDEX_URL]
set -eu
variant="$1"
index="${2:-}"
if [ "$variant" = cpu ]; then
    echo "${index:-https://download.pytorch.org/whl/cpu}"
    exit 0
fi
case "$index" in
    */whl/cu[0-9]* ) echo "$index" ;;
    * )
        echo "VARIANT=$variant needs a CUDA index of torch, not '${index:-none}': add" \
            "--build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 (a CUDA 12.x build)" >&2
        exit 1
        ;;
esac
