#include "server/logging.hh"

#include <cstdlib>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

namespace shardd::server {

namespace {

thread_local std::string t_label = "main";

// %* : the thread's label.
class label_flag final : public spdlog::custom_flag_formatter {
public:
    void format(const spdlog::details::log_msg&, const std::tm&, spdlog::memory_buf_t& dest) override {
        dest.append(t_label.data(), t_label.data() + t_label.size());
    }
    std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<label_flag>(); }
};

// %k : syslog priority of the level, for journald's "<N>" prefix.
class priority_flag final : public spdlog::custom_flag_formatter {
public:
    void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
        char p = '6';
        switch (msg.level) {
        case spdlog::level::trace:
        case spdlog::level::debug: p = '7'; break;
        case spdlog::level::info: p = '6'; break;
        case spdlog::level::warn: p = '4'; break;
        case spdlog::level::err: p = '3'; break;
        case spdlog::level::critical: p = '2'; break;
        default: break;
        }
        dest.push_back(p);
    }
    std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<priority_flag>(); }
};

void json_escape(std::string_view in, spdlog::memory_buf_t& dest) {
    static constexpr char hex[] = "0123456789abcdef";
    for (char c : in) {
        switch (c) {
        case '"': dest.append(std::string_view("\\\"")); break;
        case '\\': dest.append(std::string_view("\\\\")); break;
        case '\n': dest.append(std::string_view("\\n")); break;
        case '\r': dest.append(std::string_view("\\r")); break;
        case '\t': dest.append(std::string_view("\\t")); break;
        default:
            if (static_cast<unsigned char>(c) < 0x20) {
                const char esc[] = {'\\', 'u', '0', '0', hex[(c >> 4) & 0xf], hex[c & 0xf]};
                dest.append(esc, esc + sizeof(esc));
            } else {
                dest.push_back(c);
            }
        }
    }
}

// %Q : the message, escaped for a JSON string.
class json_message_flag final : public spdlog::custom_flag_formatter {
public:
    void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
        json_escape(std::string_view(msg.payload.data(), msg.payload.size()), dest);
    }
    std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<json_message_flag>(); }
};

// %J : the label, escaped for a JSON string.
class json_label_flag final : public spdlog::custom_flag_formatter {
public:
    void format(const spdlog::details::log_msg&, const std::tm&, spdlog::memory_buf_t& dest) override {
        json_escape(t_label, dest);
    }
    std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<json_label_flag>(); }
};

// systemd sets JOURNAL_STREAM to "DEV:INODE" of the stream it connected to
// stderr; only when they match is stderr really the journal (a child whose
// stderr was redirected inherits the variable but not the stream).
bool stderr_is_journal() {
    const char* env = std::getenv("JOURNAL_STREAM");
    if (!env) {
        return false;
    }
    unsigned long long dev = 0;
    unsigned long long ino = 0;
    if (std::sscanf(env, "%llu:%llu", &dev, &ino) != 2) {
        return false;
    }
    struct stat st {};
    return fstat(2, &st) == 0 && st.st_dev == dev && st.st_ino == ino;
}

spdlog::level::level_enum to_spdlog(config::log_level level) {
    switch (level) {
    case config::log_level::trace: return spdlog::level::trace;
    case config::log_level::debug: return spdlog::level::debug;
    case config::log_level::info: return spdlog::level::info;
    case config::log_level::warn: return spdlog::level::warn;
    case config::log_level::error: return spdlog::level::err;
    }
    return spdlog::level::info;
}

}  // namespace

void setup_logging(config::log_level level, config::log_format format) {
    // JSON timestamps are UTC ("Z"), for machines; text ones are local time,
    // as a person reading a terminal expects.
    auto formatter = std::make_unique<spdlog::pattern_formatter>(
        format == config::log_format::json ? spdlog::pattern_time_type::utc : spdlog::pattern_time_type::local);
    formatter->add_flag<label_flag>('*');
    formatter->add_flag<priority_flag>('k');
    formatter->add_flag<json_message_flag>('Q');
    formatter->add_flag<json_label_flag>('J');
    if (format == config::log_format::json) {
        formatter->set_pattern(R"({"time":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l","thread":"%J","msg":"%Q"})");
    } else if (stderr_is_journal()) {
        formatter->set_pattern("<%k>[%*] %v");
    } else {
        formatter->set_pattern("%Y-%m-%dT%H:%M:%S.%e %-5l [%*] %v");
    }
    // The logger is made once; a reload swaps its formatter, which the sink
    // does under the same mutex it logs under, so other threads may go on
    // logging meanwhile.
    static const auto logger = [] {
        auto l = std::make_shared<spdlog::logger>("shardd", std::make_shared<spdlog::sinks::stderr_sink_mt>());
        // Every line is flushed as it is written: a daemon that dies must not
        // take its last words with it.
        l->flush_on(spdlog::level::trace);
        spdlog::set_default_logger(l);
        return l;
    }();
    logger->set_formatter(std::move(formatter));
    logger->set_level(to_spdlog(level));
}

void set_thread_label(std::string label) { t_label = std::move(label); }

}  // namespace shardd::server
