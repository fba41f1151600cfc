#!/bin/sh
# Install rtms-lifecycle with its 'server' and 'postgres' extras into a new virtual environment.
# The Dockerfile runs this script; tests/test_deploy.py runs it too, in a temporary folder.
#
# Usage: sh deploy/install.sh VENV SOURCE
#   VENV    the virtual environment to create (the image uses /opt/rtms-lifecycle)
#   SOURCE  the source tree (the repository's root) or a built wheel
set -eu
venv=${1:?usage: install.sh VENV SOURCE}
source=${2:?usage: install.sh VENV SOURCE}
python3 -m venv "$venv"
"$venv/bin/pip" install --no-cache-dir --disable-pip-version-check "$source[server,postgres]"
"$venv/bin/rtms-lifecycle" --version
