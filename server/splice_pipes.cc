#include "server/splice_pipes.hh"

#include "reactor/owned_fd.hh"

#include <atomic>
#include <cerrno>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

namespace shardd::server {

namespace {
std::atomic<bool> splice_works{true};
}  // namespace

bool splice_pipes::open(splice_pipe& out) noexcept {
    if (_open >= _max) {
        return false;
    }
    int fds[2];
    if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
        return false;
    }
    out = {fds[0], fds[1]};
    ++_open;
    return true;
}

void splice_pipes::close(splice_pipe p) noexcept {
    close_fd(p.read_end);
    close_fd(p.write_end);
    --_open;
}

expected<std::size_t> splice_some(int in_fd, int out_fd, std::size_t len) noexcept {
    const ssize_t n = ::splice(in_fd, nullptr, out_fd, nullptr, len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n < 0) {
        return unexpected{std::error_code(errno, std::system_category())};
    }
    return static_cast<std::size_t>(n);
}

std::error_code make_nonblocking(int fd) noexcept {
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ((flags & O_NONBLOCK) == 0 && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)) {
        return {errno, std::system_category()};
    }
    return {};
}

bool splice_usable() noexcept { return splice_works.load(std::memory_order_relaxed); }

void splice_unusable(std::error_code why) noexcept {
    if (splice_works.exchange(false, std::memory_order_relaxed)) {
        spdlog::warn("splice(2) between sockets does not work here ({}): bulk streams are copied instead",
                     why.message());
    }
}

bool says_splice_unusable(std::error_code ec) noexcept {
    const int e = ec.value();
    return e == EINVAL || e == ENOSYS || e == EPERM || e == EOPNOTSUPP;
}

}  // namespace shardd::server
