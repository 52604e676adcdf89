#pragma once
// The sd_notify(3) protocol without libsystemd: one datagram to the socket
// named by $NOTIFY_SOCKET. A no-op when the variable is unset (not started by
// systemd, or by a test that does not listen).

#include <optional>
#include <string_view>
#include <system_error>

namespace shardd::server {

// Sends `state` ("READY=1", "STOPPING=1", "STATUS=...", lines joined by '\n').
// Returns the error when the socket is named but cannot be reached.
std::error_code sd_notify(std::string_view state);

// A decimal number as systemd writes its environment variables
// (WATCHDOG_USEC, LISTEN_PID, LISTEN_FDS); nullopt when `text` is null,
// empty or anything else.
std::optional<unsigned long long> parse_env_number(const char* text);

// CLOCK_MONOTONIC in microseconds, for "RELOADING=1\nMONOTONIC_USEC=...".
unsigned long long monotonic_usec();

}  // namespace shardd::server
