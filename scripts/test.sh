#!/usr/bin/env bash
# The project's test command (README step 2; CI runs it too).
# Installs the system tools the tests drive for real when they are missing (headless Chromium,
# Prometheus/promtool, docker-compose for static compose checks, Redis, dciodvfy from dicom3tools to
# validate the DICOM results, Orthanc with its DICOMweb plugin as the PACS of the DICOM node tests and
# dcmtk's storescu to send to the node, buildah + debootstrap to build and run the container image), makes sure
# Redis answers on 127.0.0.1:6379, then runs the whole suite with the project's virtual environment.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/pytest" ]; then
  echo "no $VENV with the dev extra: run README step 1 first" >&2
  exit 2
fi

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
command -v Orthanc >/dev/null 2>&1 || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v storescu >/dev/null 2>&1 || need+=(dcmtk)
command -v buildah >/dev/null 2>&1 || need+=(buildah)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing test tools: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "missing test tools (${need[*]}): the tests that need them will be skipped" >&2
  fi
fi
# Debian starts prometheus as a service on install; the tests run their own. (Orthanc's service, where
# it starts, keeps its default ports; the tests run theirs on free ports.)
pkill -x prometheus 2>/dev/null || true

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

exec "$VENV/bin/pytest" "$@"
