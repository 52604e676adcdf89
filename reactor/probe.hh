#pragma once
// Start-up feature probe for the io_uring runtime.
//
// Which io_uring operations a kernel has is asked of the kernel
// (IORING_REGISTER_PROBE), never inferred from `uname -r`: distributions
// backport io_uring into old version numbers and leave it out of new ones
// (CONFIG_IO_URING=n, the io_uring_disabled sysctl, seccomp). The "since"
// versions below only word the messages: they tell an operator which kernel
// would have it, they decide nothing.

#include "reactor/expected.hh"

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

struct io_uring;

namespace shardd {

struct opcode_info {
    int opcode;
    std::string_view name;   // "IORING_OP_RECV"
    std::string_view since;  // mainline kernel that added it, "5.6"
};

// Name and minimum kernel of every opcode in liburing 2.3's
// <liburing/io_uring.h> (IORING_OP_NOP .. IORING_OP_SENDMSG_ZC); nullptr for
// anything else, including IORING_OP_LAST.
const opcode_info* find_opcode(int opcode);

// Opcodes without which the runtime cannot run at all: start-up fails when one
// is missing. Together they need Linux 5.11 (IORING_OP_SHUTDOWN).
std::span<const int> required_opcodes();

// Opcodes the runtime uses when present and works around when not (today
// IORING_OP_SOCKET, else socket(2)): probe them and log, never fail on them.
std::span<const int> optional_opcodes();

struct probe_report {
    // Wanted opcodes the kernel lacks, in the order they were asked for.
    std::vector<const opcode_info*> missing;
    // `uname -r`, for the message: "5.15.0-91-generic".
    std::string kernel_release;

    bool ok() const { return missing.empty(); }
    // "io_uring lacks IORING_OP_SEND_ZC (Linux 6.0+), IORING_OP_SOCKET
    // (Linux 5.19+); this kernel is 5.15.0-91-generic"
    std::string message() const;
};

// Probes on a two-entry ring of its own, set up and torn down here. An error
// is the errno of that set-up (ENOSYS: no io_uring; EPERM: disabled by the
// io_uring_disabled sysctl or seccomp) or of the probe (EINVAL: a kernel older
// than 5.6, which has no IORING_REGISTER_PROBE). EINVAL too when `wanted` holds
// an opcode find_opcode() does not know.
expected<probe_report> probe_opcodes(std::span<const int> wanted);

// Probes on an existing ring. Call it on the ring's submitter thread: an
// IORING_SETUP_SINGLE_ISSUER ring may refuse registrations from any other task
// (EEXIST).
expected<probe_report> probe_opcodes(io_uring& ring, std::span<const int> wanted);

// `uname -r`, or "unknown" should uname(2) fail.
std::string kernel_release();

// Why io_uring_setup(2) answered `ec`, when that means io_uring is not
// allowed or not there, with what to do about it; "" for any other error.
//   EPERM: kernel.io_uring_disabled (Linux 6.6+) is 2; or it is 1 and
//     this process is neither privileged nor in kernel.io_uring_group (or
//     a seccomp filter: EPERM does not say which); else a seccomp filter
//     (Docker's and containerd's default profiles deny io_uring_setup).
//   ENOSYS: no io_uring in this kernel or sandbox (gVisor, kernels built
//     without CONFIG_IO_URING).
std::string io_uring_refusal_reason(const std::error_code& ec);

// Whether an executor could run on io_uring in this process: nullopt when a
// ring sets up and has every required_opcodes(), else a sentence saying why
// not (io_uring_refusal_reason(), a probe_report's message(), or the errno).
// For `shardd --check`, which reports the backend that would run without
// starting one: a two-entry ring, set up and torn down here.
std::optional<std::string> io_uring_unusable_reason();

// What the runtime uses that no opcode probe can tell: flags and register
// calls. The ring set-up code finds out by trying each one (a kernel refuses a
// flag or call it does not know, with EINVAL) and falls back; these only word
// its logs.
enum class feature {
    // IORING_ACCEPT_MULTISHOT: one accept SQE posts a CQE per connection.
    multishot_accept,
    // IORING_RECV_MULTISHOT: one recv SQE, with a provided buffer group,
    // posts a CQE per chunk received.
    multishot_recv,
    // io_uring_register_buf_ring (IORING_REGISTER_PBUF_RING): provided
    // buffers in a ring shared with the kernel, refilled without an SQE
    // (IORING_OP_PROVIDE_BUFFERS is the older, per-SQE way).
    buf_ring,
    // IORING_SETUP_SINGLE_ISSUER: only the creating thread submits, so the
    // kernel can skip its submission locking.
    single_issuer,
    // IORING_SETUP_DEFER_TASKRUN: completion work runs only when the shard
    // asks for events, not whenever it enters the kernel. Needs
    // single_issuer.
    defer_taskrun,
    // IORING_SETUP_COOP_TASKRUN: no inter-processor interrupt to make a
    // busy shard run completion work; it runs at the next kernel entry.
    coop_taskrun,
    // io_uring_register_ring_fd (IORING_REGISTER_RING_FDS): io_uring_enter
    // skips the fget/fput on the ring fd, which a threaded process pays as
    // atomics on a shared file table.
    registered_ring_fd,
};
inline constexpr std::size_t feature_count = 7;

// Mainline kernel that added it: "5.19". "" for a value outside the enum.
std::string_view feature_since(feature f);
// The flag or call as the kernel spells it: "IORING_SETUP_DEFER_TASKRUN".
// "" for a value outside the enum.
std::string_view feature_name(feature f);

}  // namespace shardd
