#include "reactor/accept_stream.hh"

#include <cerrno>
#include <sys/socket.h>

namespace shardd {

namespace internal {

accept_state::accept_state(int listen_fd, abort_source* abort)
    : stream_core(executor::current()->main_ring(), listen_fd, abort) {
    completion::fn = &on_cqe;
}

void accept_state::prep(io_uring_sqe* sqe) { io_uring_prep_multishot_accept(sqe, _fd, nullptr, nullptr, SOCK_CLOEXEC); }

void accept_state::release_ready() noexcept {
    for (int fd : _ready) {
        if (fd >= 0) {
            close_fd(fd);
        }
    }
    _ready.clear();
}

void accept_state::on_cqe(completion* c, int res, std::uint32_t flags) noexcept {
    auto* s = static_cast<accept_state*>(c);
    const cqe_kind k = s->begin_cqe(flags);
    if (!(k.ended_cancel && res == -ECANCELED)) {
        s->_ready.push_back(res);
    }
    if (!k.final && s->_ready.size() >= accept_stream::max_ready && !s->_orphaned) {
        s->defer_pause();
    }
    s->end_cqe();
}

expected<owned_fd> accept_state::take() {
    if (_ready.empty() || aborted()) {
        return unexpected{std::make_error_code(std::errc::operation_canceled)};
    }
    const int res = _ready.front();
    _ready.pop_front();
    if (res < 0) {
        return unexpected{errno_code(res)};
    }
    return owned_fd(res);
}

}  // namespace internal

accept_stream::accept_stream(int listen_fd, abort_source* abort) : _s(new internal::accept_state(listen_fd, abort)) {}

}  // namespace shardd
