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
# The daemon asks the reactor for operations (reactor/io.hh, net.hh) and
# never builds io_uring requests itself: the one place that knows the
# backend is the reactor (issue 15's epoll backend goes behind that seam).
bad=$(grep -rnE 'io_uring_prep_|io_uring_sqe' "$root/server" || true)
if [ -n "$bad" ]; then
    echo "server/ must not build io_uring requests (use reactor/io.hh or reactor/net.hh):"
    echo "$bad"
    exit 1
fi
echo "layering OK"
