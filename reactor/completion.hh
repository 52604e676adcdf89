#pragma once
// What an SQE's user_data points at: the one contract between the rings and
// everything that waits on them.

#include <cstdint>

namespace shardd {

// Every in-flight operation owns one of these, at a stable address, until its
// last CQE (the one without IORING_CQE_F_MORE) has been delivered. `fn` is a
// plain function pointer rather than a virtual: completion objects live inside
// coroutine frames and awaitables, and this keeps them trivially sized.
struct completion {
    using callback = void (*)(completion* self, int result, std::uint32_t cqe_flags);
    callback fn = nullptr;
};

// user_data 0: a completion nobody waits for (cancellations, fire-and-forget
// housekeeping). Its CQE is consumed and dropped.
inline constexpr std::uint64_t no_completion = 0;

}  // namespace shardd
