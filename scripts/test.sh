#!/usr/bin/env bash
# The project's test command (README step 2; CI runs it too).
# Installs the system tools the tests drive for real when they are missing (headless Chromium,
# Prometheus/promtool, docker-compose for static compose checks, Redis, dciodvfy from dicom3tools to
# validate the DICOM results, Orthanc with its DICOMweb plugin as the PACS of the DICOM node tests and
# dcmtk's storescu to send to the node, npm to fetch axe-core for the page's accessibility check, buildah +
# debootstrap to build and run the container image), makes sure
# Redis answers on 127.0.0.1:6379, then runs the whole suite with the project's virtual environment.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/pytest" ]; then
  echo "no $VENV with the dev extra: run README step 1 first" >&2
  exit 2
fi

ci=false
case "${CI:-}" in 1 | true | TRUE | True | yes) ci=true ;; esac

# Under CI a tool the tests drive must be there: without it those tests would only skip.
missing_tools() {
  if [ "$ci" = true ]; then
    echo "CI: $1; the tests that drive them cannot run" >&2
    exit 3
  fi
  echo "$1: the tests that need them will be skipped (and listed at the end)" >&2
}

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
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v buildah >/dev/null 2>&1 || need+=(buildah)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing test tools: ${need[*]}"
    # Install without starting the packages' services (Debian starts prometheus and redis-server on
    # install): the tests start their own on free ports, and this script must end nothing it did not start.
    no_start=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
      no_start=/usr/sbin/policy-rc.d
    fi
    installed=0
    apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null &&
      installed=1
    [ -z "$no_start" ] || rm -f "$no_start"
    [ "$installed" = 1 ] || missing_tools "apt-get could not install ${need[*]}"
  else
    missing_tools "missing test tools (${need[*]}) and not root with apt-get to install them"
  fi
fi

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

exec "$VENV/bin/pytest" "$@"
