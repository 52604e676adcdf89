#pragma once
// One proxied connection: a client, the server picked for it, and the two
// transits between them.
//
//   accept -> pick a server (upstream_local::pick) -> socket + CONNECT
//   (connect_timeout as a linked timeout; refused or timed out: the next
//   server, up to `retries` more) -> two transits at once:
//       client --transit up-->   server
//       client <--transit down-- server
//
// Each direction is a transit (server/transit.hh): the shard's receive pool
// for the round, at most max_pending of its own memory when its receiver
// is slow, and then its receive stops, so the sender's TCP window closes.
// When one side reads nothing, the other side is not read either.
//
// Ends:
// - EOF from one side: everything before it goes out, then shutdown(SHUT_WR)
//   towards the other side; the other direction flows on, for at most
//   half_close_timeout.
// - A reset or another error on either side: the other direction is
//   aborted and both sockets close with SO_LINGER 0, so the other side gets
//   an RST too.
// - abort() (the idle sweep, the drain): every wait ends, both close.

#include "server/admission.hh"
#include "server/proxy/upstream.hh"
#include "server/served_connection.hh"
#include "server/shard_state.hh"
#include "server/transit.hh"

#include "reactor/join_handle.hh"
#include "reactor/task.hh"

#include <memory>
#include <optional>

namespace shardd::server::proxy {

class proxy_pair final : public served_connection {
public:
    // `adm`: what admission learnt (a PROXY header's addresses), or null.
    proxy_pair(shard_state& sh, listener_state& l, int client_fd, const admitted* adm);
    proxy_pair(const proxy_pair&) = delete;
    proxy_pair& operator=(const proxy_pair&) = delete;

    // Connects, relays until both directions have ended, closes the server
    // socket. The client socket is the caller's to close.
    task<void> run();

    void abort() noexcept override;
    std::uint64_t activity() const noexcept override;

    // For the access log, once run() returned: the server, the bytes each
    // way as the client saw them, and how the pair ended ("" when the
    // shard aborted it: the guard knows why).
    const std::optional<socket_address>& server() const noexcept { return _server_address; }
    std::uint64_t bytes_from_client() const noexcept { return _from_client; }
    std::uint64_t bytes_to_client() const noexcept { return _to_client; }
    std::string_view end() const noexcept { return _end; }

private:
    // The server socket, connected, and which server it is; none when
    // every try failed (or abort()).
    task<std::optional<std::size_t>> connect_upstream();
    // Waits in the shard's queue until a server slot may be free; false
    // when the queue is full, queue_timeout passed (from the first wait,
    // `deadline_ns`), or abort().
    task<bool> wait_in_queue(std::int64_t& deadline_ns);
    // The PROXY header server `i` is configured for, if any; false when it
    // could not be sent.
    task<bool> send_proxy_header(std::size_t i, const socket_address& client);
    task<void> pump(transit& t, int out_fd, int which);
    task<void> half_close_timer();

    shard_state& _sh;
    listener_state& _l;
    // The upstream generation the pair started with: a reload that
    // replaces it leaves this one alive until the pair ends.
    std::shared_ptr<upstream_local> _up_owner;
    upstream_local& _up;
    int _client_fd;
    const admitted* _adm;
    owned_fd _server_fd;
    std::optional<socket_address> _server_address;
    std::uint64_t _from_client = 0;
    std::uint64_t _to_client = 0;
    std::string_view _end;
    abort_source _abort;
    // While queued for a server slot.
    std::optional<queue_waiter> _waiter;
    // Ends the half-close timer once both directions have ended.
    abort_source _timer_stop;
    std::optional<join_handle<void>> _timer;
    transit* _dir[2] = {nullptr, nullptr};  // up, down
    bool _ended[2] = {false, false};
    bool _reset = false;
    std::uint64_t _activity = 0;
};

// A proxy listener's connection task, as serve() is for echo.
task<void> serve(shard_state& sh, listener_state& l, owned_fd fd, connection_slot slot, std::unique_ptr<admitted> adm);

}  // namespace shardd::server::proxy
