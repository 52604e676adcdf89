#pragma once
// Prometheus text exposition format 0.0.4, written: the admin endpoint's
// /metrics body. Each family gets its # HELP and # TYPE lines, then its
// samples; label values and help texts are escaped as the format requires
// (backslash, double quote and newline in label values; backslash and
// newline in help texts), so any listener, upstream or server name is safe.
//
//   exposition e;
//   e.family("shardd_connections_accepted_total", "counter", "Connections accepted.");
//   e.sample("shardd_connections_accepted_total", {{"shard", "0"}, {"listener", "echo"}}, 42);
//   std::string body = e.take();
//
// Names follow the format's rules ([a-zA-Z_:][a-zA-Z0-9_:]* for metrics,
// [a-zA-Z_][a-zA-Z0-9_]* for labels); the caller's names are constants, and
// a wrong one throws std::invalid_argument rather than writing a body that
// scrapers reject.

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shardd::server::admin {

using label = std::pair<std::string_view, std::string_view>;

// The Content-Type of the format.
inline constexpr std::string_view exposition_content_type = "text/plain; version=0.0.4; charset=utf-8";

class exposition {
public:
    // Opens a family; `type` is counter, gauge, histogram, summary or untyped.
    void family(std::string_view name, std::string_view type, std::string_view help);
    // One sample line. `name` is the family's name, or it plus a suffix
    // (_bucket, _sum, _count) for histograms and summaries.
    void sample(std::string_view name, std::initializer_list<label> labels, std::uint64_t value);
    void sample(std::string_view name, std::initializer_list<label> labels, double value);
    void sample(std::string_view name, const std::vector<label>& labels, std::uint64_t value);
    void sample(std::string_view name, const std::vector<label>& labels, double value);

    const std::string& text() const noexcept { return _out; }
    std::string take() noexcept { return std::move(_out); }

private:
    void labels_and_value(std::string_view name, const label* first, std::size_t n, std::string_view value);
    std::string _out;
};

// The format's escapes, exposed for tests.
std::string escape_label_value(std::string_view v);
std::string escape_help(std::string_view v);
bool is_metric_name(std::string_view n) noexcept;
bool is_label_name(std::string_view n) noexcept;

}  // namespace shardd::server::admin
