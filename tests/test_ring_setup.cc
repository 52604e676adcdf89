// Ring set-up: the flags each kind of ring gets, and every fallback set
// working on its own (forced by skipping the better sets).
#include "reactor/executor.hh"
#include "reactor/internal/uring_ring.hh"

#include <catch2/catch.hpp>
#include <filesystem>
#include <string>

using namespace shardd;
using namespace shardd::internal;

namespace {

// A NOP submitted and reaped: the ring really works.
bool nop_round_trip(ring& r) {
    struct done_flag : completion {
        int result = 1;
    } done;
    done.fn = [](completion* c, int res, std::uint32_t) { static_cast<done_flag*>(c)->result = res; };
    io_uring_sqe* sqe = r.get_sqe();
    io_uring_prep_nop(sqe);
    r.track(sqe, &done);
    for (int i = 0; i < 1000 && done.result == 1; ++i) {
        if (r.setup_flags() & IORING_SETUP_IOPOLL) {
            r.submit();
        } else {
            r.submit_and_wait();
        }
        r.reap();
    }
    return done.result == 0 && r.in_flight() == 0;
}

}  // namespace

TEST_CASE("each kind of ring gets its best flags on this kernel", "[ring]") {
    auto main_ring = uring_ring::create(ring_kind::main, 64);
    REQUIRE(main_ring.has_value());
    INFO("main: " << (*main_ring)->describe_flags());
    // 6.1+ kernels take SINGLE_ISSUER|DEFER_TASKRUN; older ones fall back.
    CHECK(((*main_ring)->setup_flags() & IORING_SETUP_DEFER_TASKRUN ||
           (*main_ring)->setup_flags() & IORING_SETUP_COOP_TASKRUN || (*main_ring)->describe_flags() == "none"));
    auto latency = uring_ring::create(ring_kind::latency, 64);
    REQUIRE(latency.has_value());
    // The latency ring must interrupt: never COOP or DEFER task-run.
    CHECK_FALSE((*latency)->setup_flags() & (IORING_SETUP_COOP_TASKRUN | IORING_SETUP_DEFER_TASKRUN));
    auto poll = uring_ring::create(ring_kind::poll, 64);
    REQUIRE(poll.has_value());
    CHECK((*poll)->setup_flags() & IORING_SETUP_IOPOLL);
}

TEST_CASE("every fallback flag set makes a working ring", "[ring]") {
    for (auto kind : {ring_kind::main, ring_kind::latency}) {
        for (unsigned k = 0; k < uring_ring::candidate_count(kind); ++k) {
            auto r = uring_ring::create(kind, 8, k);
            INFO(to_string(kind) << " candidate " << k);
            REQUIRE(r.has_value());
            INFO("flags " << (*r)->describe_flags());
            CHECK(nop_round_trip(**r));
        }
    }
}

TEST_CASE("an executor owns exactly three rings (or one epoll instance) and one eventfd", "[ring]") {
    auto count = [](const std::string& what) {
        int n = 0;
        for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
            std::error_code ec;
            auto target = std::filesystem::read_symlink(e.path(), ec).string();
            n += target.find(what) != std::string::npos ? 1 : 0;
        }
        return n;
    };
    const int rings_before = count("io_uring");
    const int epolls_before = count("eventpoll");
    const int eventfds_before = count("eventfd");
    {
        auto ex = executor::create({});
        REQUIRE(ex.has_value());
        // On epoll the three rings share one epoll instance.
        const bool epoll = (*ex)->uses_epoll();
        CHECK(count("io_uring") - rings_before == (epoll ? 0 : 3));
        CHECK(count("eventpoll") - epolls_before == (epoll ? 1 : 0));
        CHECK(count("eventfd") - eventfds_before == 1);
    }
    CHECK(count("io_uring") == rings_before);
    CHECK(count("eventpoll") == epolls_before);
    CHECK(count("eventfd") == eventfds_before);
}
