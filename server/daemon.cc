#include "server/daemon.hh"

#include "server/cli.hh"
#include "server/logging.hh"
#include "server/sd_notify.hh"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <future>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <thread>
#include <unistd.h>

namespace shardd::server {

namespace {

// Placeholder shard until the reactor lands: a pinned, named thread that
// waits on its eventfd for the stop word. It already follows the reactor's
// start-up order (pin first, then allocate) and its wake-up path (eventfd).
class shard {
public:
    shard(unsigned id, unsigned cpu) : _id(id), _cpu(cpu) {}
    shard(const shard&) = delete;
    shard& operator=(const shard&) = delete;
    ~shard() { stop(); }

    // Starts the thread; the future says whether it got going on its CPU.
    std::future<std::error_code> start() {
        _stop_fd = eventfd(0, EFD_CLOEXEC);
        std::promise<std::error_code> started;
        auto result = started.get_future();
        if (_stop_fd < 0) {
            started.set_value({errno, std::system_category()});
            return result;
        }
        _thread = std::thread([this, started = std::move(started)]() mutable { run(std::move(started)); });
        return result;
    }

    void stop() {
        if (_thread.joinable()) {
            const std::uint64_t one = 1;
            // A full eventfd counter (never here) is the only failure mode;
            // the thread reads any non-zero value as "stop".
            [[maybe_unused]] auto n = write(_stop_fd, &one, sizeof(one));
            _thread.join();
        }
        if (_stop_fd >= 0) {
            close(_stop_fd);
            _stop_fd = -1;
        }
    }

private:
    void run(std::promise<std::error_code> started) {
        // Pin before anything else allocates, so this shard's memory is
        // first touched on its own NUMA node.
        if (auto ec = pin_current_thread(_cpu)) {
            started.set_value(ec);
            return;
        }
        const std::string thread_name = "shardd/" + std::to_string(_id);
        pthread_setname_np(pthread_self(), thread_name.c_str());
        set_thread_label("shard " + std::to_string(_id));
        spdlog::info("started on CPU {}", _cpu);
        started.set_value({});
        std::uint64_t value = 0;
        while (read(_stop_fd, &value, sizeof(value)) < 0 && errno == EINTR) {
        }
        spdlog::info("stopped");
    }

    unsigned _id;
    unsigned _cpu;
    int _stop_fd = -1;
    std::thread _thread;
};

void log_settings(const config::config& cfg, const cpu_set& cpus, const std::string& path) {
    spdlog::info("shardd {} starting: config {}, {} shard{} on CPU{} {}", SHARDD_VERSION, path, cpus.size(),
                 cpus.size() == 1 ? "" : "s", cpus.size() == 1 ? "" : "s", cpus.to_string());
    const auto& rt = cfg.runtime;
    spdlog::info("runtime: io_memory {}, ring_entries {}, spin_before_park {}, preempt_timer {}, "
                 "stall_threshold {}, shutdown_timeout {}, recv buffers {} x {}",
                 config::format_size(rt.io_memory), rt.ring_entries, config::format_duration(rt.spin_before_park),
                 config::format_duration(rt.preempt_timer), config::format_duration(rt.stall_threshold),
                 config::format_duration(rt.shutdown_timeout), rt.recv_buffers,
                 config::format_size(rt.recv_buffer_size));
    for (const auto& l : cfg.listeners) {
        std::string addrs;
        for (const auto& a : l.listen) {
            addrs += (addrs.empty() ? "" : " ") + a.to_string();
        }
        const std::string what = l.mode == config::listener_mode::echo
                                     ? "echo/" + std::string(config::to_string(l.protocol))
                                     : "proxy to " + l.upstream;
        spdlog::info("listener {}: {} on {}, max_connections {}, idle_timeout {}", l.name, what, addrs,
                     l.max_connections, config::format_duration(l.idle_timeout));
    }
    for (const auto& up : cfg.upstreams) {
        std::string servers;
        for (const auto& a : up.servers) {
            servers += (servers.empty() ? "" : " ") + a.to_string();
        }
        spdlog::info("upstream {}: {} over {}", up.name, config::to_string(up.balance), servers);
    }
    if (cfg.admin.listen) {
        spdlog::info("admin endpoint: {}", cfg.admin.listen->to_string());
    }
}

// SIGHUP: read the file again; apply what can change live, keep the running
// config when the new one is bad.
void reload(config::config& running, const cpu_set& shard_cpus, const daemon_options& opts) {
    sd_notify("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(monotonic_usec()));
    auto allowed = allowed_cpus();
    auto result = config::load_file(opts.config_path, opts.over, allowed ? *allowed : shard_cpus);
    for (const auto& d : result.diagnostics) {
        if (d.level == config::severity::error) {
            spdlog::error("reload: {}", d.to_string());
        } else {
            spdlog::warn("reload: {}", d.to_string());
        }
    }
    if (!result.ok()) {
        spdlog::error("reload failed: keeping the running configuration");
    } else {
        config::config next = std::move(*result.cfg);
        const bool log_changed = next.log.level != running.log.level || next.log.format != running.log.format;
        if (log_changed) {
            setup_logging(next.log.level, next.log.format);
            running.log = next.log;
            spdlog::info("reload: log level {}, format {}", config::to_string(running.log.level),
                         config::to_string(running.log.format));
        }
        // Only [log] applies live; say so when the file changed anything else.
        next.log = running.log;
        if (config::to_toml(next) != config::to_toml(running)) {
            spdlog::warn("reload: changes outside [log] take effect on restart");
        } else if (!log_changed) {
            spdlog::info("reload: configuration unchanged");
        }
    }
    sd_notify("READY=1");
}

}  // namespace

int run_daemon(config::config cfg, const cpu_set& cpus, const daemon_options& opts) {
    log_settings(cfg, cpus, opts.config_path);

    // Block the signals we handle before any thread starts, so every thread
    // inherits the mask and they all arrive at the signalfd below.
    sigset_t handled;
    sigemptyset(&handled);
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGUSR1}) {
        sigaddset(&handled, sig);
    }
    if (int rc = pthread_sigmask(SIG_BLOCK, &handled, nullptr); rc != 0) {
        spdlog::critical("cannot block signals: {}", std::strerror(rc));
        return exit_failure;
    }
    // Peers that vanish must not kill the daemon with SIGPIPE.
    std::signal(SIGPIPE, SIG_IGN);
    const int sfd = signalfd(-1, &handled, SFD_CLOEXEC);
    if (sfd < 0) {
        spdlog::critical("signalfd: {}", std::strerror(errno));
        return exit_failure;
    }

    std::vector<std::unique_ptr<shard>> shards;
    std::vector<std::future<std::error_code>> started;
    unsigned id = 0;
    for (unsigned cpu : cpus.cpus()) {
        shards.push_back(std::make_unique<shard>(id++, cpu));
        started.push_back(shards.back()->start());
    }
    bool failed = false;
    for (std::size_t i = 0; i < started.size(); ++i) {
        if (auto ec = started[i].get()) {
            spdlog::critical("shard {} failed to start on CPU {}: {}", i, cpus.cpus()[i], ec.message());
            failed = true;
        }
    }
    if (failed) {
        shards.clear();
        close(sfd);
        return exit_failure;
    }
    spdlog::info("ready: {} shard{} running", shards.size(), shards.size() == 1 ? "" : "s");
    sd_notify("READY=1\nSTATUS=serving on " + std::to_string(shards.size()) +
              " shards\nMAINPID=" + std::to_string(getpid()));

    int status = exit_ok;
    for (bool running = true; running;) {
        signalfd_siginfo si{};
        const ssize_t n = read(sfd, &si, sizeof(si));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n != static_cast<ssize_t>(sizeof(si))) {
            spdlog::critical("signalfd read: {}", std::strerror(errno));
            status = exit_failure;
            break;
        }
        switch (si.ssi_signo) {
        case SIGINT:
        case SIGTERM:
            spdlog::info("SIG{} received: stopping", sigabbrev_np(static_cast<int>(si.ssi_signo)));
            running = false;
            break;
        case SIGHUP:
            spdlog::info("SIGHUP received: reloading {}", opts.config_path);
            reload(cfg, cpus, opts);
            break;
        case SIGUSR1: spdlog::info("SIGUSR1 received: logs go to stderr, nothing to reopen"); break;
        default: break;
        }
    }
    sd_notify("STOPPING=1");
    shards.clear();
    close(sfd);
    spdlog::info("stopped");
    return status;
}

}  // namespace shardd::server
