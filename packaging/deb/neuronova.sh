#!/bin/sh
# `neuronova` for administrators of the installed appliance: its data home is
# /var/lib/neuronova, and its files belong to the `neuronova` user, so root runs every
# command as that user (a file root made there would lock the service out).
set -e
NEURONOVA_HOME="${NEURONOVA_HOME:-/var/lib/neuronova}"
export NEURONOVA_HOME
if [ "$(id -u)" = 0 ]; then
    exec setpriv --reuid=neuronova --regid=neuronova --init-groups /opt/neuronova/neuronova "$@"
fi
exec /opt/neuronova/neuronova "$@"
