#!/bin/sh
# reactor/ is the runtime library: it must know nothing of the daemon. Fails
# when a file in reactor/ includes anything from config/ or server/.
root=${1:?source root}
bad=$(grep -rnE '^[[:space:]]*#[[:space:]]*include[[:space:]]*[<"](config|server)/' "$root/reactor" || true)
if [ -n "$bad" ]; then
    echo "reactor/ must not include config/ or server/:"
    echo "$bad"
    exit 1
fi
bad=$(grep -rnE '^[[:space:]]*#[[:space:]]*include[[:space:]]*[<"]server/' "$root/config" || true)
if [ -n "$bad" ]; then
    echo "config/ must not include server/:"
    echo "$bad"
    exit 1
fi
echo "layering OK"
