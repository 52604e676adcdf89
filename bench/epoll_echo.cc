// epoll-echo: a textbook epoll echo server, one of the strong peers that
// bench/compare measures shardd's raw echo against. It is what a competent
// engineer writes in an afternoon, not a tuned server: if shardd cannot beat
// this, its machinery costs more than it saves.
//
// One thread, non-blocking sockets, level-triggered epoll. Each readable
// connection is read into one shared 64 KiB buffer until EAGAIN or a short
// read, and each chunk is sent back at once. What the kernel does not take
// goes into that connection's pending buffer; while it holds bytes, the
// connection waits for EPOLLOUT and is not read, so a client that does not
// read its replies cannot make the server buffer without bound. Raw echo:
// bytes in = bytes out.
//
//   epoll-echo PORT        listen on 127.0.0.1:PORT (loopback only)

#include <arpa/inet.h>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

namespace {

// Read buffer, shared by every connection: a read never needs more than one
// at a time.
constexpr std::size_t buffer_size = 64 * 1024;
// Events per epoll_wait: enough to batch a busy server's ready connections
// into one syscall, few enough to keep the array on the stack.
constexpr int max_events = 256;

struct connection {
    int fd;
    // Bytes read but not yet sent back. Empty (and holding no memory) except
    // after a short write, so an idle connection costs only this struct.
    std::vector<char> pending;
    std::size_t pending_from = 0;
};

[[noreturn]] void die(const char* what) {
    std::fprintf(stderr, "epoll-echo: %s: %s\n", what, std::strerror(errno));
    std::exit(1);
}

void watch(int ep, int op, connection* c, std::uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.ptr = c;
    if (epoll_ctl(ep, op, c->fd, &ev) != 0) {
        die("epoll_ctl");
    }
}

void close_connection(connection* c) {
    // close() also removes the descriptor from the epoll set.
    close(c->fd);
    delete c;
}

// Sends [data, data + len). Whatever the kernel does not take becomes the
// connection's pending buffer, and the connection then waits for EPOLLOUT
// instead of EPOLLIN. False when the connection is dead.
bool send_or_keep(int ep, connection* c, const char* data, std::size_t len) {
    std::size_t sent = 0;
    while (sent < len) {
        // MSG_NOSIGNAL: a peer that has gone must cost an EPIPE, not the
        // process.
        ssize_t n = send(c->fd, data + sent, len - sent, MSG_NOSIGNAL);
        if (n >= 0) {
            sent += static_cast<std::size_t>(n);
            continue;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            return false;
        }
        c->pending.assign(data + sent, data + len);
        c->pending_from = 0;
        watch(ep, EPOLL_CTL_MOD, c, EPOLLOUT);
        return true;
    }
    return true;
}

// EPOLLIN: read until EAGAIN or a short read, echoing each chunk. False when
// the connection is finished (closed by the peer, or an error).
bool on_readable(int ep, connection* c, char* buffer) {
    for (;;) {
        ssize_t n = read(c->fd, buffer, buffer_size);
        if (n == 0) {
            return false;
        }
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return errno == EAGAIN || errno == EWOULDBLOCK;
        }
        const auto got = static_cast<std::size_t>(n);
        if (!send_or_keep(ep, c, buffer, got)) {
            return false;
        }
        // A short read means the socket is (most likely) empty: skip the
        // read that would only say EAGAIN. Level-triggered epoll reports it
        // again if more arrived meanwhile. With pending bytes, stop reading
        // until they are sent.
        if (got < buffer_size || !c->pending.empty()) {
            return true;
        }
    }
}

// EPOLLOUT: send the pending bytes; once they are all gone, free the buffer
// and go back to reading.
bool on_writable(int ep, connection* c) {
    while (c->pending_from < c->pending.size()) {
        ssize_t n = send(c->fd, c->pending.data() + c->pending_from, c->pending.size() - c->pending_from, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return errno == EAGAIN || errno == EWOULDBLOCK;
        }
        c->pending_from += static_cast<std::size_t>(n);
    }
    std::vector<char>().swap(c->pending);
    c->pending_from = 0;
    watch(ep, EPOLL_CTL_MOD, c, EPOLLIN);
    return true;
}

void accept_all(int ep, int listener) {
    for (;;) {
        int fd = accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                // EMFILE and the like: the connection stays in the backlog and
                // level-triggered epoll reports the listener again; a
                // benchmark peer need not do better.
                std::perror("epoll-echo: accept4");
            }
            return;
        }
        // Small messages go out at once, as shardd's (nodelay = true) do.
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        watch(ep, EPOLL_CTL_ADD, new connection{fd, {}, 0}, EPOLLIN);
    }
}

int listen_on(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        die("socket");
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        die("bind");
    }
    // shardd's default backlog: a burst of connections must not overflow it.
    if (listen(fd, 4096) != 0) {
        die("listen");
    }
    return fd;
}

}  // namespace

int main(int argc, char** argv) {
    int port = argc == 2 ? std::atoi(argv[1]) : 0;
    if (port <= 0 || port > 65535) {
        std::fprintf(stderr, "usage: epoll-echo PORT   (listens on 127.0.0.1:PORT)\n");
        return 2;
    }
    int listener = listen_on(port);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
        die("epoll_create1");
    }
    // The listener is the one entry whose data.ptr is null.
    epoll_event lev{};
    lev.events = EPOLLIN;
    lev.data.ptr = nullptr;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, listener, &lev) != 0) {
        die("epoll_ctl");
    }

    static char buffer[buffer_size];
    epoll_event events[max_events];
    for (;;) {
        int n = epoll_wait(ep, events, max_events, -1);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            die("epoll_wait");
        }
        for (int i = 0; i < n; ++i) {
            auto* c = static_cast<connection*>(events[i].data.ptr);
            if (c == nullptr) {
                accept_all(ep, listener);
                continue;
            }
            // EPOLLHUP and EPOLLERR come whatever the interest set; the send
            // or the read then reports the end or the error. A connection with
            // pending bytes only waits to send them, readable or not.
            const std::uint32_t ev = events[i].events;
            bool alive = true;
            if (!c->pending.empty()) {
                if (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR)) {
                    alive = on_writable(ep, c);
                }
            } else if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                alive = on_readable(ep, c, buffer);
            }
            if (!alive) {
                close_connection(c);
            }
        }
    }
}
