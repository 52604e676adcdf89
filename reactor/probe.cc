#include "reactor/probe.hh"

#include <cstdio>

#include <array>
#include <cerrno>
#include <cstdlib>
#include <liburing.h>
#include <memory>
#include <sys/utsname.h>

namespace shardd {

namespace {

// Where each "since" comes from. First choice is liburing 2.3's own man pages
// (the ones Debian bookworm installs), which say "Available since 5.x":
// io_uring_enter.2 for opcodes, io_uring_setup.2 and io_uring_register.2 for
// flags and register calls, the io_uring_prep_*.3 pages for multishot. Where
// they are silent, the kernel history of include/uapi/linux/io_uring.h: the
// commit adding the opcode and the merge that brought it into mainline.
//
// - NOP, READV, WRITEV, FSYNC, READ_FIXED, WRITE_FIXED, POLL_ADD, POLL_REMOVE:
//   io_uring_enter.2 gives no version. All came with io_uring itself, in the
//   5.1 merge window: "Add io_uring IO interface" (2b188cc1bb85), "add fsync
//   support", "add support for pre-mapped user IO buffers" and "add support
//   for IORING_OP_POLL" (221c5eb23382), pulled by 38e7571c07be
//   ("Merge tag 'io_uring-2019-03-06'", on top of for-5.1/block).
// - SYNC_FILE_RANGE .. MSG_RING, SOCKET, SEND_ZC: io_uring_enter.2 of 2.3.
// - FSETXATTR, SETXATTR, FGETXATTR, GETXATTR: not in 2.3's io_uring_enter.2;
//   added on branch for-5.19/io_uring-socket next to SOCKET (merges
//   27738039fcdc and b5ba65df47ca), so 5.19.
// - URING_CMD: not in 2.3's io_uring_enter.2 (io_uring_setup.2 only says
//   SQE128 is needed "as of 5.19 only [for] IORING_OP_URING_CMD"); added by
//   ee692a21e9bf, pulled by 9836e93c0a7e
//   ("Merge tag 'for-5.19/io_uring-passthrough-2022-05-22'"), so 5.19.
// - SENDMSG_ZC: not in 2.3's man pages; added by 493108d95f14, pulled by
//   0a78a376ef3c ("Merge tag 'for-6.1/io_uring-2022-10-03'"), so 6.1.
//
// Where the sources seem to disagree:
// - SEND_ZC (and feature::multishot_recv, feature::single_issuer) came in a
//   pull named "for-5.20": 5.20 was released as 6.0, which is what the man
//   pages say. Same kernel, two names.
// - io_uring_enter.2 (2.3) says direct-descriptor accept (file_index set) is
//   "Available since 5.5", while its own OPENAT and CLOSE entries say direct
//   descriptors came in 5.15. Plain ACCEPT is 5.5 either way; direct accept
//   is not listed here.
#define SHARDD_OP(op, since)                                                                                           \
    opcode_info { IORING_OP_##op, "IORING_OP_" #op, since }
constexpr std::array opcode_table{
    SHARDD_OP(NOP, "5.1"),
    SHARDD_OP(READV, "5.1"),
    SHARDD_OP(WRITEV, "5.1"),
    SHARDD_OP(FSYNC, "5.1"),
    SHARDD_OP(READ_FIXED, "5.1"),
    SHARDD_OP(WRITE_FIXED, "5.1"),
    SHARDD_OP(POLL_ADD, "5.1"),
    SHARDD_OP(POLL_REMOVE, "5.1"),
    SHARDD_OP(SYNC_FILE_RANGE, "5.2"),
    SHARDD_OP(SENDMSG, "5.3"),
    SHARDD_OP(RECVMSG, "5.3"),
    SHARDD_OP(TIMEOUT, "5.4"),
    SHARDD_OP(TIMEOUT_REMOVE, "5.5"),
    SHARDD_OP(ACCEPT, "5.5"),
    SHARDD_OP(ASYNC_CANCEL, "5.5"),
    SHARDD_OP(LINK_TIMEOUT, "5.5"),
    SHARDD_OP(CONNECT, "5.5"),
    SHARDD_OP(FALLOCATE, "5.6"),
    SHARDD_OP(OPENAT, "5.6"),
    SHARDD_OP(CLOSE, "5.6"),
    SHARDD_OP(FILES_UPDATE, "5.6"),
    SHARDD_OP(STATX, "5.6"),
    SHARDD_OP(READ, "5.6"),
    SHARDD_OP(WRITE, "5.6"),
    SHARDD_OP(FADVISE, "5.6"),
    SHARDD_OP(MADVISE, "5.6"),
    SHARDD_OP(SEND, "5.6"),
    SHARDD_OP(RECV, "5.6"),
    SHARDD_OP(OPENAT2, "5.6"),
    SHARDD_OP(EPOLL_CTL, "5.6"),
    SHARDD_OP(SPLICE, "5.7"),
    SHARDD_OP(PROVIDE_BUFFERS, "5.7"),
    SHARDD_OP(REMOVE_BUFFERS, "5.7"),
    SHARDD_OP(TEE, "5.8"),
    SHARDD_OP(SHUTDOWN, "5.11"),
    SHARDD_OP(RENAMEAT, "5.11"),
    SHARDD_OP(UNLINKAT, "5.11"),
    SHARDD_OP(MKDIRAT, "5.15"),
    SHARDD_OP(SYMLINKAT, "5.15"),
    SHARDD_OP(LINKAT, "5.15"),
    SHARDD_OP(MSG_RING, "5.18"),
    SHARDD_OP(FSETXATTR, "5.19"),
    SHARDD_OP(SETXATTR, "5.19"),
    SHARDD_OP(FGETXATTR, "5.19"),
    SHARDD_OP(GETXATTR, "5.19"),
    SHARDD_OP(SOCKET, "5.19"),
    SHARDD_OP(URING_CMD, "5.19"),
    SHARDD_OP(SEND_ZC, "6.0"),
    SHARDD_OP(SENDMSG_ZC, "6.1"),
};
#undef SHARDD_OP

// find_opcode indexes the table by opcode: a newer liburing header adds
// opcodes, and this stops the build until they are added here.
static_assert(opcode_table.size() == IORING_OP_LAST, "one entry per opcode of <liburing/io_uring.h>");
constexpr bool indexed_by_opcode() {
    for (std::size_t i = 0; i < opcode_table.size(); ++i) {
        if (opcode_table[i].opcode != static_cast<int>(i)) {
            return false;
        }
    }
    return true;
}
static_assert(indexed_by_opcode(), "opcode_table must be in opcode order");

// PROVIDE_BUFFERS is the fallback when buf_ring (5.19) is refused; it is
// implied by SHUTDOWN's 5.11 anyway, so requiring it costs no kernel.
constexpr std::array required_table{
    int{IORING_OP_NOP},          int{IORING_OP_READ},         int{IORING_OP_WRITE},
    int{IORING_OP_READ_FIXED},   int{IORING_OP_WRITE_FIXED},  int{IORING_OP_POLL_ADD},
    int{IORING_OP_POLL_REMOVE},  int{IORING_OP_TIMEOUT},      int{IORING_OP_TIMEOUT_REMOVE},
    int{IORING_OP_LINK_TIMEOUT}, int{IORING_OP_ACCEPT},       int{IORING_OP_CONNECT},
    int{IORING_OP_CLOSE},        int{IORING_OP_SEND},         int{IORING_OP_RECV},
    int{IORING_OP_SHUTDOWN},     int{IORING_OP_ASYNC_CANCEL}, int{IORING_OP_PROVIDE_BUFFERS},
};

constexpr std::array optional_table{int{IORING_OP_SOCKET}};

struct feature_info {
    std::string_view name;
    std::string_view since;
};

// - multishot_accept 5.19: io_uring_prep_multishot_accept.3 (2.3), "The
//   multishot variants are available since 5.19"; kernel 390ed29b5e42, in
//   "Merge tag 'for-5.19/io_uring-2022-05-22'" (3a166bdbf3ab).
// - multishot_recv 6.0: io_uring_prep_recv.3 (2.3), "Multishot variants are
//   available since kernel 6.0"; kernel b3fdea6ecb55, a for-5.20 (= 6.0)
//   commit.
// - buf_ring 5.19: io_uring_register.2 (2.3) for IORING_REGISTER_PBUF_RING
//   and io_uring_register_buf_ring.3 (2.3), both "Available since 5.19".
// - single_issuer 6.0: io_uring_setup.2 (2.3); kernel 97bbdc06a444, a
//   for-5.20 (= 6.0) commit. The man page's rule, that the issuer is the
//   creating task, is from 7cae596bc31f, a fix committed days before 6.0
//   was released; a kernel without it binds the first submitter instead. The
//   runtime creates and submits on one thread, so either rule holds for it.
// - defer_taskrun 6.1: io_uring_setup.2 (2.3); kernel merge 0a78a376ef3c,
//   "Merge tag 'for-6.1/io_uring-2022-10-03'".
// - coop_taskrun 5.19: io_uring_setup.2 (2.3); for-5.19 merge 3a166bdbf3ab.
// - registered_ring_fd 5.18: io_uring_register.2 (2.3) for
//   IORING_REGISTER_RING_FDS; kernel e7a6c00dc77a. liburing 2.3's
//   io_uring_register_ring_fd.3 gives no version; later editions say 5.18.
constexpr std::array<feature_info, feature_count> feature_table{{
    {"IORING_ACCEPT_MULTISHOT", "5.19"},
    {"IORING_RECV_MULTISHOT", "6.0"},
    {"IORING_REGISTER_PBUF_RING", "5.19"},
    {"IORING_SETUP_SINGLE_ISSUER", "6.0"},
    {"IORING_SETUP_DEFER_TASKRUN", "6.1"},
    {"IORING_SETUP_COOP_TASKRUN", "5.19"},
    {"IORING_REGISTER_RING_FDS", "5.18"},
}};
static_assert(static_cast<std::size_t>(feature::registered_ring_fd) + 1 == feature_count,
              "feature_count and feature_table follow enum feature");

// The kernel fills at most this many ops; liburing's own probe uses 256 too,
// room for every opcode an 8-bit sqe->opcode can name.
constexpr unsigned probe_ops = 256;

struct free_deleter {
    void operator()(void* p) const noexcept { std::free(p); }
};

}  // namespace

const opcode_info* find_opcode(int opcode) {
    if (opcode < 0 || opcode >= static_cast<int>(opcode_table.size())) {
        return nullptr;
    }
    return &opcode_table[static_cast<std::size_t>(opcode)];
}

std::span<const int> required_opcodes() { return required_table; }

std::span<const int> optional_opcodes() { return optional_table; }

std::string probe_report::message() const {
    const std::string release = kernel_release.empty() ? "unknown" : kernel_release;
    if (missing.empty()) {
        return "io_uring has every wanted opcode; this kernel is " + release;
    }
    std::string out = "io_uring lacks ";
    for (std::size_t i = 0; i < missing.size(); ++i) {
        if (i > 0) {
            out += ", ";
        }
        out += missing[i]->name;
        out += " (Linux ";
        out += missing[i]->since;
        out += "+)";
    }
    out += "; this kernel is ";
    out += release;
    return out;
}

std::string kernel_release() {
    utsname u{};
    if (uname(&u) != 0) {
        return "unknown";
    }
    return u.release;
}

std::string io_uring_refusal_reason(const std::error_code& ec) {
    if (ec == std::errc::function_not_supported) {
        return "this kernel or sandbox has no io_uring (gVisor, or a kernel built without CONFIG_IO_URING)";
    }
    if (ec != std::errc::operation_not_permitted) {
        return "";
    }
    // /proc/sys/kernel/io_uring_disabled: 0 allows everyone, 1 only
    // CAP_SYS_ADMIN and kernel.io_uring_group, 2 nobody (Linux 6.6).
    int disabled = 0;
    if (FILE* f = std::fopen("/proc/sys/kernel/io_uring_disabled", "re")) {
        if (std::fscanf(f, "%d", &disabled) != 1) {
            disabled = 0;
        }
        std::fclose(f);
    }
    if (disabled == 2) {
        return "the sysctl kernel.io_uring_disabled is 2 (io_uring off for every process); set it to 0";
    }
    if (disabled == 1) {
        return "the sysctl kernel.io_uring_disabled is 1 (io_uring only for privileged processes and "
               "kernel.io_uring_group), or a seccomp filter denies io_uring_setup: add this process's group to "
               "kernel.io_uring_group, set the sysctl to 0, or allow the io_uring calls in the profile";
    }
    return "a seccomp filter denies io_uring_setup (Docker's and containerd's default profiles do): run with a "
           "profile that allows io_uring_setup, io_uring_enter and io_uring_register";
}

expected<probe_report> probe_opcodes(io_uring& ring, std::span<const int> wanted) {
    for (int op : wanted) {
        if (find_opcode(op) == nullptr) {
            return unexpected{errno_code(EINVAL)};
        }
    }
    // io_uring_get_probe_ring() would do this, but answers NULL without the
    // errno; asking io_uring_register_probe() directly keeps it.
    const std::size_t bytes = sizeof(io_uring_probe) + probe_ops * sizeof(io_uring_probe_op);
    std::unique_ptr<io_uring_probe, free_deleter> probe(static_cast<io_uring_probe*>(std::calloc(1, bytes)));
    if (!probe) {
        return unexpected{errno_code(ENOMEM)};
    }
    if (int rc = io_uring_register_probe(&ring, probe.get(), probe_ops); rc < 0) {
        return unexpected{errno_code(rc)};
    }
    probe_report report;
    report.kernel_release = kernel_release();
    for (int op : wanted) {
        const opcode_info* info = find_opcode(op);
        bool listed = false;
        for (const opcode_info* m : report.missing) {
            listed = listed || m == info;
        }
        if (!listed && !io_uring_opcode_supported(probe.get(), op)) {
            report.missing.push_back(info);
        }
    }
    return report;
}

expected<probe_report> probe_opcodes(std::span<const int> wanted) {
    // What io_uring_get_probe() does, by hand for the same reason as above:
    // whether io_uring is there at all is this set-up's errno.
    io_uring ring;
    if (int rc = io_uring_queue_init(2, &ring, 0); rc < 0) {
        return unexpected{errno_code(rc)};
    }
    auto report = probe_opcodes(ring, wanted);
    io_uring_queue_exit(&ring);
    return report;
}

std::optional<std::string> io_uring_unusable_reason() {
    // Set up here rather than through probe_opcodes(wanted), whose one errno
    // cannot tell a refused set-up from a kernel without
    // IORING_REGISTER_PROBE.
    io_uring ring;
    if (int rc = io_uring_queue_init(2, &ring, 0); rc < 0) {
        const std::error_code ec = errno_code(rc);
        const std::string reason = io_uring_refusal_reason(ec);
        return reason.empty() ? "io_uring_setup failed: " + ec.message() : reason;
    }
    auto report = probe_opcodes(ring, required_opcodes());
    io_uring_queue_exit(&ring);
    if (!report) {
        if (report.error() == std::errc::invalid_argument) {
            return "this kernel's io_uring has no IORING_REGISTER_PROBE (Linux 5.6+); this kernel is " +
                   kernel_release();
        }
        return "cannot probe io_uring opcodes: " + report.error().message();
    }
    if (!report->ok()) {
        return report->message();
    }
    return std::nullopt;
}

namespace {
// An enum class can still hold any integer cast into it: answer "" for those
// rather than read past the table.
feature_info lookup(feature f) {
    const auto i = static_cast<std::size_t>(f);
    return i < feature_table.size() ? feature_table[i] : feature_info{};
}
}  // namespace

std::string_view feature_since(feature f) { return lookup(f).since; }

std::string_view feature_name(feature f) { return lookup(f).name; }

}  // namespace shardd
