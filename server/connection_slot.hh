#pragma once
// connection_slot: a connection's place under its listener's
// max_connections, taken at accept and given back on every exit from the
// connection's task, an exception included.

#include "server/listeners.hh"

#include <atomic>

namespace shardd::server {

class connection_slot {
public:
    // Takes a slot of `shared` if fewer than `limit` are taken; empty (false)
    // otherwise.
    static connection_slot try_take(listener_shared& shared, std::uint64_t limit) noexcept {
        if (shared.connections.fetch_add(1, std::memory_order_relaxed) >= limit) {
            shared.connections.fetch_sub(1, std::memory_order_relaxed);
            return connection_slot();
        }
        return connection_slot(&shared);
    }

    connection_slot() = default;
    connection_slot(connection_slot&& o) noexcept : _shared(std::exchange(o._shared, nullptr)) {}
    connection_slot& operator=(connection_slot&& o) noexcept {
        if (this != &o) {
            reset();
            _shared = std::exchange(o._shared, nullptr);
        }
        return *this;
    }
    connection_slot(const connection_slot&) = delete;
    connection_slot& operator=(const connection_slot&) = delete;
    ~connection_slot() { reset(); }

    explicit operator bool() const noexcept { return _shared != nullptr; }
    void reset() noexcept {
        if (_shared) {
            std::exchange(_shared, nullptr)->connections.fetch_sub(1, std::memory_order_relaxed);
        }
    }

private:
    explicit connection_slot(listener_shared* s) noexcept : _shared(s) {}
    listener_shared* _shared = nullptr;
};

}  // namespace shardd::server
