#pragma once
// The one thing every kind of connection gives its shard.

#include <cstdint>

namespace shardd::server {

// What the idle sweep and the drain need of a connection, whatever serves it.
class served_connection {
public:
    // Ends whatever the connection waits for; it then closes by itself.
    virtual void abort() noexcept = 0;
    // Grows with every byte in or out: the idle sweep compares snapshots.
    virtual std::uint64_t activity() const noexcept = 0;

protected:
    ~served_connection() = default;
};

}  // namespace shardd::server
