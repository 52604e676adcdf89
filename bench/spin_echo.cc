// spin-echo: the least a server can do per round trip, as a yardstick for
// ping-pong latency on this machine. Not a server anyone should run.
//
// One connection at a time, on the calling CPU, busy-polling: a non-blocking
// recv(2) in a loop (so the server never sleeps and never needs waking), then
// one sendmsg(2) of the replies. Two syscalls per message, no event loop, no
// io_uring, nothing else. It speaks sockperf's protocol through shardd's own
// parser (server/sockperf_framing), so sockperf's client drives it
// unmodified.
//
// What it is for: a ping-pong round trip is the client's send, the server's
// work, and the client being woken when the reply lands. No server can do
// better than this one on the middle part, so its p50 against sockperf's
// client bounds what any server, shardd with spin_before_park included, can
// reach. bench/compare runs it next to the others.
//
//   spin-echo PORT        listen on 127.0.0.1:PORT (loopback only)

#include "server/sockperf_framing.hh"

#include <arpa/inet.h>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

namespace {

// One receive buffer: the framing keeps nothing of it once its replies are
// sent (a header cut by a read is copied into the parser).
constexpr std::size_t chunk_size = 64 * 1024;
// sockperf's largest message (65507 B) and then some.
constexpr std::uint64_t max_message = 1 << 20;

bool send_all(int fd, std::vector<iovec>& iov) {
    std::size_t first = 0;
    while (first < iov.size()) {
        msghdr msg{};
        msg.msg_iov = iov.data() + first;
        msg.msg_iovlen = iov.size() - first;
        ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return false;
        }
        auto left = static_cast<std::size_t>(n);
        while (first < iov.size() && left >= iov[first].iov_len) {
            left -= iov[first].iov_len;
            ++first;
        }
        if (left > 0) {
            iov[first].iov_base = static_cast<std::byte*>(iov[first].iov_base) + left;
            iov[first].iov_len -= left;
        }
    }
    return true;
}

void serve(int fd) {
    static std::array<std::byte, chunk_size> chunk;
    shardd::server::sockperf_framing framing(max_message);
    std::vector<iovec> out;
    shardd::server::header_copies copies;
    for (;;) {
        std::byte* buf = chunk.data();
        ssize_t n = recv(fd, buf, chunk_size, MSG_DONTWAIT);
        if (n == 0) {
            return;
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                continue;  // the busy poll: never sleep, never be woken
            }
            return;
        }
        out.clear();
        copies.clear();
        if (auto error = framing.feed(buf, static_cast<std::size_t>(n), out, copies); !error.empty()) {
            std::fprintf(stderr, "spin-echo: closing: %s\n", error.c_str());
            return;
        }
        if (!out.empty() && !send_all(fd, out)) {
            return;
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: spin-echo PORT\n");
        return 64;
    }
    const int port = std::atoi(argv[1]);
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    const int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (port <= 0 || port > 65535 || bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        listen(listener, 16) != 0) {
        std::fprintf(stderr, "spin-echo: cannot listen on 127.0.0.1:%s: %s\n", argv[1], std::strerror(errno));
        return 1;
    }
    for (;;) {
        int fd = accept(listener, nullptr, nullptr);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }
            std::fprintf(stderr, "spin-echo: accept: %s\n", std::strerror(errno));
            return 1;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        serve(fd);
        close(fd);
    }
}
