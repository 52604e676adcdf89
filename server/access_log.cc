#include "server/access_log.hh"

#include "reactor/io.hh"
#include "reactor/net.hh"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <ctime>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

namespace shardd::server {

namespace {

bool is_pipe_like(int fd) {
    struct stat st {};
    return fstat(fd, &st) != 0 || !S_ISREG(st.st_mode);
}

// RFC 3339, UTC, milliseconds: 2026-11-29T10:31:58.123Z.
std::string timestamp(std::chrono::system_clock::time_point at) {
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(at.time_since_epoch()).count();
    const std::time_t secs = static_cast<std::time_t>(ms / 1000);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char buf[96];  // room for any int the format could print
    std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                  tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms % 1000));
    return buf;
}

// Listener names come from the operator's config, where TOML allows any
// character: escaped for JSON, and quoted only where the text form needs it.
void json_string(std::string& out, std::string_view s) {
    out += '"';
    for (const char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (u < 0x20 || u == 0x7f) {
            char esc[8];
            std::snprintf(esc, sizeof(esc), "\\u%04x", u);
            out += esc;
        } else {
            out += c;
        }
    }
    out += '"';
}

void text_field(std::string& out, std::string_view s) {
    const bool plain = !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
        const auto u = static_cast<unsigned char>(c);
        return u > 0x20 && u != 0x7f && c != '"' && c != '\\';
    });
    if (plain) {
        out += s;
    } else {
        json_string(out, s);
    }
}

}  // namespace

std::string access_log::format_line(const access_record& r, config::log_format format,
                                    std::chrono::system_clock::time_point at) {
    const std::string client = r.client ? r.client->to_string() : "-";
    const std::string server = r.server ? r.server->to_string() : "-";
    const double seconds = std::chrono::duration<double>(r.duration).count();
    char dur[32];
    std::snprintf(dur, sizeof(dur), "%.6f", seconds);
    std::string out;
    out.reserve(192);
    if (format == config::log_format::json) {
        out += "{\"time\":\"" + timestamp(at) + "\",\"listener\":";
        json_string(out, r.listener);
        out += ",\"client\":\"" + client + "\",\"server\":";
        out += r.server ? "\"" + server + "\"" : "null";
        out += ",\"bytes_from_client\":" + std::to_string(r.bytes_from_client) +
               ",\"bytes_to_client\":" + std::to_string(r.bytes_to_client) + ",\"duration_s\":" + dur + ",\"end\":\"" +
               std::string(r.end) + "\"}\n";
    } else {
        // time listener client server bytes_from_client bytes_to_client
        // duration end: space-separated, fixed order, "-" for none.
        out += timestamp(at) + " ";
        text_field(out, r.listener);
        out += " " + client + " " + server + " " + std::to_string(r.bytes_from_client) + " " +
               std::to_string(r.bytes_to_client) + " " + dur + " " + std::string(r.end) + "\n";
    }
    return out;
}

access_start::access_start(const access_log* log, int fd, const socket_address* from_header)
    : at(std::chrono::steady_clock::now()) {
    if (log) {
        if (from_header) {
            client = std::make_unique<socket_address>(*from_header);
        } else if (auto p = peer_address(fd)) {
            client = std::make_unique<socket_address>(*p);
        }
    }
}

access_record access_start::record(std::string_view listener) const {
    access_record r;
    r.listener = listener;
    if (client) {
        r.client = *client;
    }
    r.duration = std::chrono::steady_clock::now() - at;
    return r;
}

access_log::access_log(int fd, config::log_format format, access_log_reopen* reopen, shard_counter& dropped)
    : _fd(fd), _pipe_like(is_pipe_like(fd)), _format(format), _reopen(reopen), _dropped(dropped) {
    _buffer.reserve(access_log_flush_bytes * 2);
}

access_log::~access_log() {
    if (_fd >= 0 && _fd != STDERR_FILENO) {
        close_fd(_fd);
    }
}

void access_log::record(const access_record& r) {
    if (_buffer.size() >= access_log_max_buffered) {
        _dropped.add();
        return;
    }
    _buffer += format_line(r, _format, std::chrono::system_clock::now());
    if (_buffer.size() >= access_log_flush_bytes) {
        _wake.set();
    }
}

void access_log::flush() {
    if (!_buffer.empty() || (_reopen && _reopen->fd.load(std::memory_order_relaxed) >= 0)) {
        _wake.set();
    }
}

void access_log::stop() {
    _stopping = true;
    _wake.set();
}

task<void> access_log::run() {
    while (true) {
        if (_buffer.empty() && !_stopping) {
            _wake.reset();
            co_await _wake.wait();
        }
        // Between writes: the place to switch to a reopened file.
        if (_reopen) {
            if (const int fresh = _reopen->fd.exchange(-1, std::memory_order_acquire); fresh >= 0) {
                if (_fd >= 0 && _fd != STDERR_FILENO) {
                    close_fd(_fd);
                }
                // Opened by the main thread: this shard may know its
                // number from an earlier file (the epoll backend).
                internal::fd_opened(fresh);
                _fd = fresh;
                _pipe_like = is_pipe_like(fresh);
            }
        }
        if (_buffer.empty()) {
            if (_stopping) {
                co_return;
            }
            continue;
        }
        std::swap(_writing, _buffer);
        _buffer.clear();
        std::size_t done = 0;
        while (done < _writing.size()) {
            std::size_t len = _writing.size() - done;
            if (_pipe_like && len > PIPE_BUF) {
                // Whole lines, under PIPE_BUF: atomic on a pipe.
                const std::size_t cut = _writing.rfind('\n', done + PIPE_BUF - 1);
                len = cut != std::string::npos && cut >= done ? cut + 1 - done : PIPE_BUF;
            }
            auto n = co_await write(_fd, _writing.data() + done, static_cast<std::uint32_t>(len),
                                    static_cast<std::uint64_t>(-1));
            if (!n || *n <= 0) {
                // The target is gone (a closed pipe, a full disk): drop
                // this buffer, count its lines, and try again with the next.
                _dropped.add(static_cast<std::uint64_t>(
                    std::count(_writing.begin() + static_cast<std::ptrdiff_t>(done), _writing.end(), '\n')));
                break;
            }
            done += static_cast<std::size_t>(*n);
        }
        _writing.clear();
    }
}

}  // namespace shardd::server
