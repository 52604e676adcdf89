#include "reactor/probe.hh"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <liburing.h>
#include <set>
#include <string>
#include <vector>

using namespace shardd;

namespace {

// "5.19" -> {5, 19}; {0, 0} when it is not MAJOR.MINOR.
std::pair<int, int> parse_version(std::string_view v) {
    int major = 0;
    int minor = 0;
    const char* end = v.data() + v.size();
    auto [p, ec] = std::from_chars(v.data(), end, major);
    if (ec != std::errc{} || p == end || *p != '.') {
        return {0, 0};
    }
    auto [q, ec2] = std::from_chars(p + 1, end, minor);
    if (ec2 != std::errc{} || q != end) {
        return {0, 0};
    }
    return {major, minor};
}

std::vector<int> all_opcodes() {
    std::vector<int> out;
    for (int op = 0; op < IORING_OP_LAST; ++op) {
        out.push_back(op);
    }
    return out;
}

// A ring that is torn down however the test ends.
struct test_ring {
    io_uring ring{};
    int rc = io_uring_queue_init(4, &ring, 0);
    ~test_ring() {
        if (rc == 0) {
            io_uring_queue_exit(&ring);
        }
    }
};

}  // namespace

TEST_CASE("every opcode of the liburing header has a name and a kernel", "[probe]") {
    for (int op = 0; op < IORING_OP_LAST; ++op) {
        INFO("opcode " << op);
        const opcode_info* info = find_opcode(op);
        REQUIRE(info != nullptr);
        CHECK(info->opcode == op);
        CHECK(info->name.substr(0, 10) == "IORING_OP_");
        CHECK(info->name.size() > 10);
        CHECK_FALSE(info->since.empty());
        // io_uring itself is 5.1: nothing can be older.
        CHECK(parse_version(info->since) >= std::pair{5, 1});
    }
}

TEST_CASE("opcode names are unique", "[probe]") {
    std::set<std::string_view> names;
    for (int op = 0; op < IORING_OP_LAST; ++op) {
        names.insert(find_opcode(op)->name);
    }
    CHECK(names.size() == static_cast<std::size_t>(IORING_OP_LAST));
}

TEST_CASE("opcodes outside the header are unknown", "[probe]") {
    CHECK(find_opcode(IORING_OP_LAST) == nullptr);
    CHECK(find_opcode(-1) == nullptr);
    CHECK(find_opcode(255) == nullptr);
}

TEST_CASE("a few kernels, as the man pages and kernel history give them", "[probe]") {
    CHECK(find_opcode(IORING_OP_NOP)->since == "5.1");
    CHECK(find_opcode(IORING_OP_RECV)->name == "IORING_OP_RECV");
    CHECK(find_opcode(IORING_OP_RECV)->since == "5.6");
    CHECK(find_opcode(IORING_OP_SHUTDOWN)->since == "5.11");
    CHECK(find_opcode(IORING_OP_SOCKET)->since == "5.19");
    CHECK(find_opcode(IORING_OP_SEND_ZC)->since == "6.0");
    CHECK(find_opcode(IORING_OP_SENDMSG_ZC)->since == "6.1");
}

TEST_CASE("required and optional opcodes are known, distinct and disjoint", "[probe]") {
    std::set<int> seen;
    std::pair<int, int> newest{0, 0};
    for (int op : required_opcodes()) {
        INFO("opcode " << op);
        REQUIRE(find_opcode(op) != nullptr);
        CHECK(seen.insert(op).second);
        newest = std::max(newest, parse_version(find_opcode(op)->since));
    }
    // probe.hh promises the required set runs on 5.11.
    CHECK(newest == std::pair{5, 11});
    for (int op : optional_opcodes()) {
        INFO("opcode " << op);
        REQUIRE(find_opcode(op) != nullptr);
        CHECK(seen.insert(op).second);
    }
    CHECK(std::count(optional_opcodes().begin(), optional_opcodes().end(), int{IORING_OP_SOCKET}) == 1);
}

TEST_CASE("the message names every missing opcode, its kernel and this kernel", "[probe]") {
    probe_report report;
    report.missing = {find_opcode(IORING_OP_SEND_ZC), find_opcode(IORING_OP_SOCKET)};
    report.kernel_release = "5.15.0-91-generic";
    CHECK_FALSE(report.ok());
    CHECK(report.message() == "io_uring lacks IORING_OP_SEND_ZC (Linux 6.0+), IORING_OP_SOCKET (Linux 5.19+); "
                              "this kernel is 5.15.0-91-generic");

    probe_report fine;
    fine.kernel_release = "6.1.0-18-amd64";
    CHECK(fine.ok());
    CHECK(fine.message() == "io_uring has every wanted opcode; this kernel is 6.1.0-18-amd64");
}

TEST_CASE("this kernel has every required opcode", "[probe]") {
    auto report = probe_opcodes(required_opcodes());
    INFO((report ? report->message() : "probe failed: " + report.error().message()));
    REQUIRE(report.has_value());
    CHECK(report->ok());
    CHECK(report->kernel_release == kernel_release());
    CHECK_FALSE(report->kernel_release.empty());
}

TEST_CASE("io_uring is usable here, so io_uring_unusable_reason() has nothing to say", "[probe]") {
    // The refused cases (seccomp's EPERM, ENOSYS) are in test_cli: they need
    // a filter on a process of their own.
    const auto reason = io_uring_unusable_reason();
    INFO(reason.value_or(""));
    CHECK_FALSE(reason.has_value());
}

TEST_CASE("probing on an existing ring agrees with the standalone probe", "[probe]") {
    test_ring t;
    INFO("io_uring_queue_init: " << t.rc);
    REQUIRE(t.rc == 0);
    const std::vector<int> every = all_opcodes();
    auto on_ring = probe_opcodes(t.ring, every);
    auto standalone = probe_opcodes(every);
    REQUIRE(on_ring.has_value());
    REQUIRE(standalone.has_value());
    CHECK(on_ring->missing == standalone->missing);
    CHECK(on_ring->kernel_release == standalone->kernel_release);
    // A probe does not use up the ring: it still runs a NOP.
    io_uring_sqe* sqe = io_uring_get_sqe(&t.ring);
    REQUIRE(sqe != nullptr);
    io_uring_prep_nop(sqe);
    REQUIRE(io_uring_submit(&t.ring) == 1);
    io_uring_cqe* cqe = nullptr;
    REQUIRE(io_uring_wait_cqe(&t.ring, &cqe) == 0);
    CHECK(cqe->res == 0);
    io_uring_cqe_seen(&t.ring, cqe);
}

TEST_CASE("a wanted opcode listed twice is reported once", "[probe]") {
    // NOP is in every io_uring kernel, so ask for it and for an opcode this
    // kernel may lack; either way no opcode shows up twice.
    const std::vector<int> wanted{IORING_OP_SENDMSG_ZC, IORING_OP_NOP, IORING_OP_SENDMSG_ZC, IORING_OP_NOP};
    auto report = probe_opcodes(wanted);
    REQUIRE(report.has_value());
    CHECK(report->missing.size() <= 1);
    CHECK(std::find(report->missing.begin(), report->missing.end(), find_opcode(IORING_OP_NOP)) ==
          report->missing.end());
}

TEST_CASE("an unknown wanted opcode is an error, not a guess", "[probe]") {
    const std::vector<int> wanted{IORING_OP_NOP, IORING_OP_LAST};
    auto report = probe_opcodes(wanted);
    REQUIRE_FALSE(report.has_value());
    CHECK(report.error() == std::error_code(EINVAL, std::system_category()));
}

TEST_CASE("every feature has a name and a kernel", "[probe]") {
    for (std::size_t i = 0; i < feature_count; ++i) {
        const auto f = static_cast<feature>(i);
        INFO("feature " << i);
        CHECK(feature_name(f).substr(0, 7) == "IORING_");
        CHECK(parse_version(feature_since(f)) >= std::pair{5, 18});
    }
    CHECK(feature_since(feature::multishot_accept) == "5.19");
    CHECK(feature_since(feature::multishot_recv) == "6.0");
    CHECK(feature_since(feature::buf_ring) == "5.19");
    CHECK(feature_since(feature::single_issuer) == "6.0");
    CHECK(feature_since(feature::defer_taskrun) == "6.1");
    CHECK(feature_since(feature::coop_taskrun) == "5.19");
    CHECK(feature_since(feature::registered_ring_fd) == "5.18");
    CHECK(feature_name(feature::defer_taskrun) == "IORING_SETUP_DEFER_TASKRUN");
    CHECK(feature_since(static_cast<feature>(feature_count)).empty());
}
