#pragma once
// Socket activation: listening sockets passed by systemd (sd_listen_fds(3),
// without libsystemd). systemd (or systemd-socket-activate) opens the
// sockets of a .socket unit, keeps them across restarts of the service, and
// passes them as descriptors 3, 4, ... with
//   LISTEN_PID      the pid they are meant for (ours, or they are not ours)
//   LISTEN_FDS      how many
//   LISTEN_FDNAMES  their FileDescriptorName=s, ':'-separated
//
// A listener takes the inherited socket whose address is one it lists, or
// whose name is its own (bind_listeners). Shard 0 serves on the inherited
// socket; the other shards bind their own SO_REUSEPORT sockets on the same
// address, which the kernel allows only if the inherited one has
// SO_REUSEPORT too (ReusePort=yes in the .socket unit).

#include "reactor/expected.hh"
#include "reactor/owned_fd.hh"
#include "reactor/socket_address.hh"

#include <string>
#include <vector>

namespace shardd::server {

// sd_listen_fds(3)'s first descriptor.
inline constexpr int listen_fds_start = 3;

struct inherited_socket {
    owned_fd fd;
    int number = -1;          // the descriptor number it came as
    std::string name;         // its FileDescriptorName= ("" if none given)
    socket_address address;   // what it is bound to
    bool reuse_port = false;  // SO_REUSEPORT: other shards can bind beside it
    bool v6_only = true;      // IPV6_V6ONLY, for the shards' own sockets
    bool taken = false;       // by a listener

    std::string describe() const;  // "fd 3 'web' 127.0.0.1:8080"
};

// The sockets systemd passed to this process, none when LISTEN_PID is unset
// or names another process. Each must be a listening TCP socket (errors say
// which is not); each is made close-on-exec and blocking (io_uring waits for
// readiness itself). The LISTEN_* variables are unset, as
// sd_listen_fds(unset_environment=1) does.
expected<std::vector<inherited_socket>, std::string> take_inherited_sockets();

}  // namespace shardd::server
