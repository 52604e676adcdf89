#pragma once
// owned_fd: a file descriptor with one owner, closed when the owner goes.
//
// The reactor hands out sockets as owned_fd (listen_socket, tcp_socket,
// accept_stream), so that no exit path, an exception included, leaks one.
//
// Closing is close(2), synchronous (and the epoll backend forgets the
// descriptor's registration first, see ring::forget_fd()): for a socket it only drops our
// descriptor (the kernel sends the FIN, or the RST with SO_LINGER 0, without
// waiting). It is safe with io_uring operations still in flight on the
// socket, which hold their own reference to it, but those keep the
// connection open until they end: stop them first (recv_stream::stop(), an
// abort_source) when the peer must see the close at once.

#include <unistd.h>
#include <utility>

namespace shardd {

namespace internal {
// On the calling thread's executor, if it runs the epoll backend: `fd` is
// about to be closed (executor.cc).
void fd_closing(int fd) noexcept;
// The same for a descriptor just opened, or handed over from another
// thread: whatever the backend knew of its number is of an earlier file.
inline void fd_opened(int fd) noexcept { fd_closing(fd); }
}  // namespace internal

// close(2), telling the backend first. For descriptors the reactor may have
// waited on that are not held in an owned_fd.
inline int close_fd(int fd) noexcept {
    internal::fd_closing(fd);
    return ::close(fd);
}

class owned_fd {
public:
    owned_fd() = default;
    explicit owned_fd(int fd) noexcept : _fd(fd) {}
    owned_fd(owned_fd&& o) noexcept : _fd(std::exchange(o._fd, -1)) {}
    owned_fd& operator=(owned_fd&& o) noexcept {
        if (this != &o) {
            reset();
            _fd = std::exchange(o._fd, -1);
        }
        return *this;
    }
    owned_fd(const owned_fd&) = delete;
    owned_fd& operator=(const owned_fd&) = delete;
    ~owned_fd() { reset(); }

    int get() const noexcept { return _fd; }
    explicit operator bool() const noexcept { return _fd >= 0; }
    // Gives up ownership without closing.
    int release() noexcept { return std::exchange(_fd, -1); }
    void reset() noexcept {
        if (_fd >= 0) {
            close_fd(std::exchange(_fd, -1));
        }
    }

private:
    int _fd = -1;
};

}  // namespace shardd
