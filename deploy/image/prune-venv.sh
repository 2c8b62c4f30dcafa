#!/bin/sh
# Remove from the image's virtual environment what the service never loads at run time
# (docs/deployment.md, "Image size"). deploy/image/selfcheck.py runs afterwards and fails the build
# if something the service needs went with it.
#
#   sh deploy/image/prune-venv.sh /opt/squid
set -eu
venv=${1:?usage: prune-venv.sh VENV}

# The installers: nothing is installed into a finished image.
"$venv/bin/python" -m pip uninstall --yes --quiet pip setuptools

for site in "$venv"/lib/python3*/site-packages; do
  # Model conversion and quantisation tools of onnxruntime; numpy's Fortran and C build helpers.
  rm -rf "$site/onnxruntime/transformers" "$site/onnxruntime/quantization" "$site/onnxruntime/tools" \
    "$site/numpy/f2py" "$site/numpy/distutils"
  # Test suites of the dependencies.
  find "$site" -depth -type d -name tests -exec rm -rf {} +
done
rm -f "$venv/bin/f2py" "$venv/bin/numpy-config"
# Byte code: pip compiled none (--no-compile); this removes what the steps above wrote.
find "$venv" -depth -type d -name __pycache__ -exec rm -rf {} +
