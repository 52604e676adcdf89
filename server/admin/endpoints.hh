#pragma once
// What the admin endpoint answers, apart from the HTTP plumbing: the body of
// each path, built from a snapshot of what the shards publish. A snapshot is
// a pass of relaxed loads over single-writer counters: no lock, nothing a
// shard waits on; counters read a little apart in time may be a few events
// apart, and each is monotonic.

#include "server/admin/admin_server.hh"
#include "server/admin/http_request.hh"

#include <string>
#include <utility>
#include <vector>

namespace shardd::server::admin {

struct response {
    int status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
    std::vector<std::pair<std::string, std::string>> fields;  // extra header fields
};

// The answer to a parsed request.
response answer(const http_request& req, const admin_sources& src);
// The answer to a request the parser refused (and the connection closes).
response refusal(int status, const std::string& reason);
// Status line, header fields and (unless `head`) the body.
std::string render(const response& r, bool head, bool keep_alive);

std::string metrics_text(const admin_sources& src);
std::string stats_json(const admin_sources& src);
// The shards whose heartbeat is late (empty: all well).
std::vector<unsigned> late_shards(const admin_sources& src);

}  // namespace shardd::server::admin
