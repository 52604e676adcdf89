#include "bench/load.hh"

#include "reactor/executor.hh"
#include "reactor/net.hh"

#include <arpa/inet.h>
#include <deque>
#include <endian.h>
#include <random>
#include <sys/socket.h>

namespace shardd::bench {

namespace {

// sockperf's TCP message header: u64 sequence, u16 flags, u32 total length,
// big-endian (DESIGN.md §5).
constexpr std::size_t sockperf_header = 14;
constexpr std::uint16_t flag_client = 0x1;
constexpr std::uint16_t flag_pong_request = 0x2;

// Buffers of the shard's provided buffer ring: 1024 x 16 KiB = 16 MiB.
constexpr unsigned recv_buffers = 1024;
constexpr std::size_t recv_buffer_size = 16 * 1024;
constexpr std::uint16_t recv_group = 1;
// Open loop: at most this many messages in flight per connection before the
// sender waits (and counts itself behind schedule).
constexpr std::size_t open_loop_max_in_flight = 4096;
// After the measured time, how long replies still in flight may take.
constexpr auto drain_grace = std::chrono::seconds(2);
// Closed loop: messages that fit in the window go out together, up to this
// many bytes per send (at least one message).
constexpr std::size_t batch_bytes = 64 * 1024;

struct in_flight {
    std::uint64_t stream_offset;  // of the message's first byte
    std::uint64_t seq;
    std::uint32_t size;
    clock::time_point sent;  // intended send time (open loop) or actual
};

// Wakes one waiting coroutine: the sender waiting for window space.
struct wake_slot {
    std::coroutine_handle<> waiter;
    internal::task_queue* queue = nullptr;
    void notify() {
        if (waiter) {
            executor::current()->schedule(std::exchange(waiter, {}), queue);
        }
    }
    auto wait() {
        struct awaiter {
            wake_slot& slot;
            bool await_ready() const noexcept { return false; }
            void await_suspend(std::coroutine_handle<> h) {
                slot.waiter = h;
                slot.queue = executor::current()->current_queue();
            }
            void await_resume() const noexcept {}
        };
        return awaiter{*this};
    }
};

struct connection {
    connection(const run_plan& p, shard_result& o, live_counters& l, std::uint64_t i)
        : plan(p), out(o), live(l), id(i) {}

    const run_plan& plan;
    shard_result& out;
    live_counters& live;
    std::uint64_t id;
    int fd = -1;
    std::deque<in_flight> flight;
    std::uint64_t tx_offset = 0;
    std::uint64_t rx_offset = 0;  // bytes received so far
    std::uint64_t seq = 0;
    bool failed = false;
    bool sending_done = false;
    // Set at the end of the measured time, so that a sender waiting for
    // replies from a server that stopped answering gives up.
    bool time_up = false;
    void stop_sending() {
        time_up = true;
        sender.notify();
    }
    wake_slot sender;

    void fail(std::uint64_t shard_result::*counter, const std::string& why) {
        if (!failed) {
            ++(out.*counter);
            live.errors.fetch_add(1, std::memory_order_relaxed);
            if (out.first_error.empty()) {
                out.first_error = "connection " + std::to_string(id) + ": " + why;
            }
        }
        failed = true;
        sender.notify();
    }

    // The expected header of the reply to message `m`.
    static void reply_header(const in_flight& m, std::byte* h) {
        const std::uint64_t s = htobe64(m.seq);
        const std::uint16_t f = htobe16(static_cast<std::uint16_t>(flag_pong_request));
        const std::uint32_t l = htobe32(m.size);
        std::memcpy(h, &s, 8);
        std::memcpy(h + 8, &f, 2);
        std::memcpy(h + 10, &l, 4);
    }

    // Checks `len` bytes at offset `pos` within message `m`.
    bool verify(const in_flight& m, std::size_t pos, const std::byte* data, std::size_t len) const {
        if (plan.opts->proto == protocol::raw) {
            return plan.bytes->matches(id, m.stream_offset + pos, data, len);
        }
        if (pos < sockperf_header) {
            std::byte header[sockperf_header];
            reply_header(m, header);
            const std::size_t n = std::min(len, sockperf_header - pos);
            if (std::memcmp(data, header + pos, n) != 0) {
                return false;
            }
            pos += n;
            data += n;
            len -= n;
        }
        return len == 0 || plan.bytes->matches(id, m.stream_offset + pos, data, len);
    }

    void complete_front(clock::time_point now) {
        const in_flight m = flight.front();
        flight.pop_front();
        if (m.sent >= plan.measure_from && m.sent < plan.stop) {
            // Never negative: an open-loop send waits for its intended time.
            const auto waited = std::max(std::chrono::nanoseconds(0), std::chrono::nanoseconds(now - m.sent));
            out.latency.record(static_cast<std::uint64_t>(waited.count()));
            ++out.messages;
            out.bytes += m.size;
            live.messages.fetch_add(1, std::memory_order_relaxed);
        }
        sender.notify();
    }

    task<void> receive(buffer_ring& br) {
        recv_stream in(fd, br);
        std::uint64_t front_start = 0;  // rx offset where flight.front() begins
        for (;;) {
            auto chunk = co_await in.next();
            if (!chunk) {
                if (chunk.error() == std::errc::no_buffer_space) {
                    co_await in.wait_for_buffers();  // released as we go
                    continue;
                }
                if (chunk.error() != std::errc::operation_canceled) {
                    fail(&shard_result::resets, "receive failed: " + chunk.error().message());
                }
                co_return;
            }
            if (chunk->data.empty()) {
                if (!flight.empty() && !sending_done) {
                    fail(&shard_result::early_closes, "the server closed the connection");
                }
                co_return;
            }
            const std::byte* p = chunk->data.data();
            std::size_t left = chunk->data.size();
            const auto now = clock::now();
            bool ok = true;
            while (left > 0) {
                if (flight.empty()) {
                    ok = false;  // bytes nobody asked for
                    break;
                }
                const in_flight& m = flight.front();
                const std::size_t pos = static_cast<std::size_t>(rx_offset - front_start);
                const std::size_t n = std::min<std::size_t>(left, m.size - pos);
                if (!verify(m, pos, p, n)) {
                    // Slow path, once: find the exact byte for the report.
                    std::size_t i = 0;
                    while (i < n && verify(m, pos + i, p + i, 1)) {
                        ++i;
                    }
                    rx_offset += i;
                    ok = false;
                    break;
                }
                p += n;
                left -= n;
                rx_offset += n;
                if (rx_offset - front_start == m.size) {
                    front_start = rx_offset;
                    complete_front(now);
                }
            }
            br.release(chunk->buffer_id);
            if (!ok) {
                fail(&shard_result::verification_errors,
                     "verification failed at byte " + std::to_string(rx_offset) + " of the reply stream");
                co_return;
            }
            if (sending_done && flight.empty()) {
                co_return;
            }
        }
    }

    std::uint32_t pick_size(std::mt19937_64& rng) const {
        const auto& o = *plan.opts;
        if (o.size_min == o.size_max) {
            return static_cast<std::uint32_t>(o.size_min);
        }
        return static_cast<std::uint32_t>(std::uniform_int_distribution<std::size_t>(o.size_min, o.size_max)(rng));
    }

    // Writes message `m` (header and pattern) at `out`.
    void build(const in_flight& m, std::byte* out) const {
        if (plan.opts->proto == protocol::sockperf) {
            const std::uint64_t s = htobe64(m.seq);
            const std::uint16_t f = htobe16(flag_client | flag_pong_request);
            const std::uint32_t l = htobe32(m.size);
            std::memcpy(out, &s, 8);
            std::memcpy(out + 8, &f, 2);
            std::memcpy(out + 10, &l, 4);
            plan.bytes->fill(id, m.stream_offset + sockperf_header, out + sockperf_header, m.size - sockperf_header);
        } else {
            plan.bytes->fill(id, m.stream_offset, out, m.size);
        }
    }

    task<void> send(std::mt19937_64& rng) {
        const auto& o = *plan.opts;
        const bool open_loop = o.rate > 0;
        // Closed loop: every message the window has room for goes out in
        // one send, as a pipelining client does (and as a reply arrives,
        // the next request leaves at once).
        const std::size_t batch_max = open_loop ? 1 : std::max<std::size_t>(1, batch_bytes / o.size_max);
        std::vector<std::byte> buf(o.size_max * std::min<std::size_t>(batch_max, o.depth));
        const auto interval =
            open_loop
                ? std::chrono::nanoseconds(static_cast<std::int64_t>(1e9 * static_cast<double>(o.connections) / o.rate))
                : std::chrono::nanoseconds(0);
        const std::size_t window = open_loop ? open_loop_max_in_flight : o.depth;
        auto intended = clock::now();
        while (!failed) {
            if (open_loop) {
                intended += interval;
                if (intended >= plan.stop) {
                    break;
                }
                if (intended > clock::now()) {
                    co_await sleep_until(intended);
                } else if (clock::now() - intended > interval) {
                    ++out.behind_schedule;
                }
            } else if (clock::now() >= plan.stop) {
                break;
            }
            while (flight.size() >= window && !failed && !time_up) {
                co_await sender.wait();
            }
            if (failed || time_up) {
                break;
            }
            const std::size_t count = std::min({window - flight.size(), batch_max, buf.size() / o.size_max});
            const auto now = clock::now();
            std::size_t len = 0;
            for (std::size_t i = 0; i < count; ++i) {
                in_flight m{tx_offset, seq++, pick_size(rng), open_loop ? intended : now};
                build(m, buf.data() + len);
                tx_offset += m.size;
                len += m.size;
                flight.push_back(m);
            }
            auto sent = co_await send_all(fd, std::span<const std::byte>(buf.data(), len));
            if (!sent) {
                fail(&shard_result::resets, "send failed: " + sent.error().message());
            }
        }
        sending_done = true;
    }

    task<void> run(buffer_ring& br, clock::time_point connect_at) {
        if (connect_at > clock::now()) {
            co_await sleep_until(connect_at);
        }
        auto sock = tcp_socket(plan.opts->target.family());
        if (!sock) {
            fail(&shard_result::connect_errors, "socket: " + sock.error().message());
            co_return;
        }
        fd = sock->release();  // closed below, with close_socket()
        set_nodelay(fd, true);
        auto ec = co_await connect(fd, plan.opts->target);
        if (ec) {
            fail(&shard_result::connect_errors, "connect to " + plan.opts->target.to_string() + ": " + ec.message());
            close_socket(fd);
            co_return;
        }
        ++out.connected;
        std::mt19937_64 rng(id);
        auto receiver = executor::current()->spawn(receive(br));
        co_await send(rng);
        // Let the replies still in flight arrive, for a while.
        const auto give_up = clock::now() + drain_grace;
        while (!flight.empty() && !failed && !receiver.done() && clock::now() < give_up) {
            co_await sleep_for(std::chrono::milliseconds(1));
        }
        out.unanswered += flight.size();
        close_socket(fd);  // cancels the receive if it still waits
        co_await receiver;
    }
};

task<void> publish_p99(shard_result& out, live_counters& live, const bool& finished) {
    while (!finished) {
        co_await sleep_for(std::chrono::milliseconds(500));
        live.p99_ns.store(out.latency.percentile(99), std::memory_order_relaxed);
    }
}

}  // namespace

task<void> run_shard(const run_plan& plan, unsigned shard, unsigned shards, shard_result& out, live_counters& live) {
    executor* ex = executor::current();
    auto br = buffer_ring::create(ex->main_ring(), recv_group, recv_buffers, recv_buffer_size);
    if (!br) {
        out.first_error = "shard " + std::to_string(shard) + ": cannot set up its buffer ring: " + br.error().message();
        ++out.connect_errors;
        live.done.store(true);
        co_return;
    }
    std::deque<connection> conns;
    std::vector<join_handle<void>> running;
    const auto& o = *plan.opts;
    for (unsigned i = shard; i < o.connections; i += shards) {
        auto& c = conns.emplace_back(plan, out, live, i);
        const auto connect_at =
            o.connect_rate > 0
                ? plan.start + std::chrono::nanoseconds(static_cast<std::int64_t>(1e9 * i / o.connect_rate))
                : plan.start;
        running.push_back(ex->spawn(c.run(**br, connect_at)));
    }
    bool finished = false;
    auto reporter = ex->spawn(publish_p99(out, live, finished));
    // At the stop time, wake senders still waiting for replies.
    sleep_op* stop_timer = nullptr;
    auto stopper = ex->spawn([](clock::time_point at, std::deque<connection>& conns, sleep_op*& slot) -> task<void> {
        sleep_op s = sleep_until(at);
        slot = &s;
        const bool expired = co_await s;
        slot = nullptr;
        if (expired) {
            for (auto& c : conns) {
                c.stop_sending();
            }
        }
    }(plan.stop, conns, stop_timer));
    for (auto& r : running) {
        co_await r;
    }
    finished = true;
    if (stop_timer) {
        stop_timer->cancel();
    }
    co_await stopper;
    co_await reporter;
    live.p99_ns.store(out.latency.percentile(99), std::memory_order_relaxed);
    live.done.store(true);
}

}  // namespace shardd::bench
