#pragma once
// The admin endpoint's HTTP/1.x request parser: strict, small, and safe on
// any input. It reads the request line and the header fields (RFC 9112
// sections 3 and 5), nothing more: the admin endpoint takes no request
// bodies, so a request that announces one is refused rather than read.
//
//   http_request_parser p;
//   auto r = p.parse(bytes_so_far);   // call again with more bytes while
//   if (r.state == parse_state::complete) { serve(p.request()); drop(r.consumed); }
//
// What it refuses, with the status to answer (and then close):
//   400  a malformed request line or header field, a bare CR, obs-fold
//        (a line starting with whitespace), no Host or two (HTTP/1.1), a
//        Content-Length that is not a number, Transfer-Encoding
//   413  a Content-Length above 0: no body is ever read
//   414  a request target longer than max_target
//   431  a request line plus header section longer than max_head
//   505  a version other than HTTP/1.0 and HTTP/1.1
// A method other than GET or HEAD is not the parser's business: it parses,
// and the server answers 405.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shardd::server::admin {

// The most a request line plus its header section may take, CRLFs included.
// 8 KiB is what nginx (large_client_header_buffers) and HAProxy
// (tune.bufsize minus rewrite space) accept by default, far above what
// Prometheus, curl or a load balancer's health check send (~200 bytes).
inline constexpr std::size_t max_head = 8 * 1024;
// The most a request target may take: the admin endpoint's paths are short.
inline constexpr std::size_t max_target = 2 * 1024;
// Header fields kept: a request with more is refused (431).
inline constexpr std::size_t max_fields = 64;

struct http_request {
    std::string method;
    std::string target;                                       // as sent: "/metrics", "/stats?x=1"
    int minor_version = 1;                                    // HTTP/1.<minor>
    std::vector<std::pair<std::string, std::string>> fields;  // names lower-cased
    // Whether the connection stays open after the answer: HTTP/1.1 unless
    // "Connection: close", HTTP/1.0 only with "Connection: keep-alive".
    bool keep_alive = true;

    // The target's path, without the query.
    std::string_view path() const noexcept;
    // The first field named `name` (lower case), or nullptr.
    const std::string* field(std::string_view name) const noexcept;
};

enum class parse_state { incomplete, complete, error };

struct parse_result {
    parse_state state = parse_state::incomplete;
    // complete: the bytes of this request (line and header section); the
    // next request, if pipelined, starts there.
    std::size_t consumed = 0;
    // error: the status to answer, and why (for the log and the body).
    int status = 0;
    std::string reason;
};

class http_request_parser {
public:
    // Parses the request at the start of `data`, everything received so far
    // on the connection since the previous request. Stateless between calls
    // apart from the result: call with more data while it is incomplete.
    parse_result parse(std::string_view data);
    // The request, after a complete result.
    const http_request& request() const noexcept { return _request; }

private:
    parse_result parse_head(std::string_view head);
    http_request _request;
};

}  // namespace shardd::server::admin
