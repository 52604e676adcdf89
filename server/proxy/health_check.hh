#pragma once
// Active health checks of an upstream's servers.
//
// Each server is checked by one shard, not by every shard: server i of an
// upstream belongs to shard (hash(upstream name) + i) mod shards, so a pool
// behind 64 shards gets one check per interval per server, and an
// upstream's servers spread over the shards. The verdict goes into the
// server's shared line (upstream.hh: check_down), which every shard's next
// pick reads; the transition is logged and counted once, by the shard that
// made it.
//
// A check is a TCP connect, then, if health_check.send is set, those
// bytes, then, if health_check.expect is set, a reply that must start with
// those bytes (read until that many arrive, the peer closes, or the check's
// timeout). A server configured for PROXY headers gets one first, as
// HAProxy's check-send-proxy: v1 "PROXY UNKNOWN", v2 LOCAL (the spec's
// command for a proxy's own connections, such as health checks), so that
// it does not refuse the check as a connection without a header. It
// passes when every step does, within health_check.timeout
// from the connect. `fall` failures in a row mark an up server down; then
// only `rise` passes in a row bring it back (passive health can mark it
// down too, upstream.hh).
//
// The first check runs at once (a shard that starts with a dead server
// finds out within a timeout), then every interval, with each shard's
// servers spread over the interval so that their checks do not go out in
// one burst.

#include "server/proxy/upstream.hh"

#include "reactor/abort_source.hh"
#include "reactor/task.hh"

#include <memory>

namespace shardd::server::proxy {

// Which shard checks server `i` of the upstream named `name`.
unsigned checking_shard(std::string_view name, std::size_t i, std::size_t shards) noexcept;

// Checks, until `stop`, the servers of `up` that belong to `shard`. Spawn
// it when the shard takes an upstream generation with health_check
// enabled; abort `stop` when the generation is replaced or at the drain.
task<void> run_health_checks(std::shared_ptr<upstream_local> up, unsigned shard, std::shared_ptr<abort_source> stop);

}  // namespace shardd::server::proxy
