#!/bin/sh
# `neuronova` for administrators of the installed appliance: its data home is
# /var/lib/neuronova, and its files belong to the `neuronova` user, so root runs every
# command as that user (a file root made there would lock the service out).
set -e
if [ -n "${NEURONOVA_HOME:-}" ]; then
    exec /opt/neuronova/neuronova "$@"  # a home of the caller's choosing
fi
NEURONOVA_HOME=/var/lib/neuronova
export NEURONOVA_HOME
case "$(id -un)" in
    root)
        exec setpriv --reuid=neuronova --regid=neuronova --init-groups \
            /opt/neuronova/neuronova "$@"
        ;;
    neuronova)
        exec /opt/neuronova/neuronova "$@"
        ;;
esac
echo "Error: $NEURONOVA_HOME belongs to the neuronova user: run 'sudo neuronova $*'" \
    "(or set NEURONOVA_HOME to a home of your own)." >&2
exit 1
