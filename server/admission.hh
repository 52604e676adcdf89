#pragma once
// Admission: what a listener checks of a new connection before it serves
// it, in this order:
//   1. accept_proxy: the peer must be in proxy_trusted, and send a PROXY
//      protocol header (v1 or v2) within proxy_timeout and
//      max_proxy_header bytes; its source address is the client's from
//      then on;
//   2. the ACLs, on the client's address: deny wins; with allow set,
//      anything it does not list is denied;
//   3. the per-source limits (max_connections_per_source,
//      connection_rate_per_source), over all shards, in the listener's
//      source_table (source_table.hh).
// A connection turned away is closed without a byte relayed, counted per
// listener, and logged in the access log with its reason.
//
// A plain listener admits in its accept loop: nothing to wait for, and a
// denied connection costs one getpeername() and a close. An accept_proxy
// listener admits in the connection's own task, which waits for the header
// (the accept loop never waits for a peer).
//
// The socket's bytes after the header are left in the kernel: the header
// is read with MSG_PEEK and only its own bytes are consumed, so echo and
// proxy see the client's first byte as their first byte.

#include "server/shard_state.hh"
#include "server/source_table.hh"

#include "reactor/socket_address.hh"
#include "reactor/task.hh"

#include <memory>

namespace shardd::server {

// Largest PROXY header accepted. v1 is at most 107 bytes; v2 is 16 plus
// its addresses (12 or 36) and TLVs. 4 KiB leaves room for every TLV
// HAProxy, AWS, Azure and GCP send (authority, unique id, SSL details),
// and bounds what a peer can make a shard hold during admission.
inline constexpr std::size_t max_proxy_header = 4096;

// What admission learnt of a connection; on the heap, and only for the
// listeners that use admission (an idle echo connection's frame carries
// one pointer for it).
struct admitted {
    // Made at accept for an accept_proxy listener: the header is still to
    // come (admit_proxied()).
    bool awaiting_header = false;
    // The connection's place in its source's count (per-source limits).
    source_ticket ticket;
    // From the PROXY header: the client and the address it connected to
    // (absent for v1 UNKNOWN, v2 LOCAL: the connection's own stand).
    std::unique_ptr<socket_address> client;
    std::unique_ptr<socket_address> destination;
};

// Whether the listener checks anything at accept (ACLs or limits, no
// accept_proxy).
bool admits_at_accept(const config::listener_config& cfg) noexcept;

// At accept, for a plain listener: the ACLs and per-source limits on the
// peer's address. False when the connection is to be closed (counted and
// logged here); else `out` holds its ticket (or stays null).
bool admit_at_accept(shard_state& sh, listener_state& l, int fd, std::unique_ptr<admitted>& out);

// In the connection's task, for a connection accepted by an accept_proxy
// listener (`out->awaiting_header`): proxy_trusted, the header, then the
// ACLs and limits on the header's client. False when the connection is to
// be closed (counted and logged here). The wait is linked in the guard, so
// that the drain and the idle sweep can end it; the caller links its
// connection in its place.
task<bool> admit_proxied(shard_state& sh, listener_state& l, connection_guard& guard, std::unique_ptr<admitted>& out);

}  // namespace shardd::server
