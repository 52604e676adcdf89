#include "server/admin/prometheus.hh"

#include <cmath>
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace shardd::server::admin {

namespace {

bool name_char(char c, bool first, bool colon) noexcept {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':')) {
        return true;
    }
    return !first && c >= '0' && c <= '9';
}

std::string format_double(double v) {
    if (std::isnan(v)) {
        return "NaN";
    }
    if (std::isinf(v)) {
        return v > 0 ? "+Inf" : "-Inf";
    }
    // The shortest text that reads back as the same double.
    return fmt::format("{}", v);
}

}  // namespace

bool is_metric_name(std::string_view n) noexcept {
    for (std::size_t i = 0; i < n.size(); ++i) {
        if (!name_char(n[i], i == 0, true)) {
            return false;
        }
    }
    return !n.empty();
}

bool is_label_name(std::string_view n) noexcept {
    for (std::size_t i = 0; i < n.size(); ++i) {
        if (!name_char(n[i], i == 0, false)) {
            return false;
        }
    }
    // Names beginning with __ are reserved for Prometheus's own use.
    return !n.empty() && n.substr(0, 2) != "__";
}

// The format's escapes: backslash and newline everywhere, the double quote
// only inside a label value's quotes.
static std::string escape(std::string_view v, bool quote) {
    std::string out;
    out.reserve(v.size());
    for (char c : v) {
        if (c == '\\') {
            out += "\\\\";
        } else if (c == '\n') {
            out += "\\n";
        } else if (c == '"' && quote) {
            out += "\\\"";
        } else {
            out += c;
        }
    }
    return out;
}

std::string escape_label_value(std::string_view v) { return escape(v, true); }

std::string escape_help(std::string_view v) { return escape(v, false); }

void exposition::family(std::string_view name, std::string_view type, std::string_view help) {
    if (!is_metric_name(name)) {
        throw std::invalid_argument("not a metric name: " + std::string(name));
    }
    if (type != "counter" && type != "gauge" && type != "histogram" && type != "summary" && type != "untyped") {
        throw std::invalid_argument("not a metric type: " + std::string(type));
    }
    _out += "# HELP ";
    _out += name;
    _out += ' ';
    _out += escape_help(help);
    _out += "\n# TYPE ";
    _out += name;
    _out += ' ';
    _out += type;
    _out += '\n';
}

void exposition::labels_and_value(std::string_view name, const label* first, std::size_t n, std::string_view value) {
    if (!is_metric_name(name)) {
        throw std::invalid_argument("not a metric name: " + std::string(name));
    }
    _out += name;
    if (n > 0) {
        _out += '{';
        for (std::size_t i = 0; i < n; ++i) {
            if (!is_label_name(first[i].first)) {
                throw std::invalid_argument("not a label name: " + std::string(first[i].first));
            }
            if (i > 0) {
                _out += ',';
            }
            _out += first[i].first;
            _out += "=\"";
            _out += escape_label_value(first[i].second);
            _out += '"';
        }
        _out += '}';
    }
    _out += ' ';
    _out += value;
    _out += '\n';
}

void exposition::sample(std::string_view name, std::initializer_list<label> labels, std::uint64_t value) {
    labels_and_value(name, labels.begin(), labels.size(), std::to_string(value));
}

void exposition::sample(std::string_view name, std::initializer_list<label> labels, double value) {
    labels_and_value(name, labels.begin(), labels.size(), format_double(value));
}

void exposition::sample(std::string_view name, const std::vector<label>& labels, std::uint64_t value) {
    labels_and_value(name, labels.data(), labels.size(), std::to_string(value));
}

void exposition::sample(std::string_view name, const std::vector<label>& labels, double value) {
    labels_and_value(name, labels.data(), labels.size(), format_double(value));
}

}  // namespace shardd::server::admin
