// shardd-churn: new connections as fast as one thread makes them, each
// one byte there and back, then closed with an RST (SO_LINGER 0: no
// TIME_WAIT pile-up over tens of thousands of connections from one port
// range). With --proxy-header each connection starts with a PROXY v1 line.
// bench/admission_cost uses it to price a listener's admission per
// connection. Not installed.
//
//   shardd-churn 127.0.0.1:7300 20000 [--proxy-header]

#include "reactor/socket_address.hh"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: shardd-churn HOST:PORT COUNT [--proxy-header]\n");
        return 64;
    }
    auto to = shardd::socket_address::parse(argv[1]);
    if (!to) {
        std::fprintf(stderr, "shardd-churn: %s\n", to.error().c_str());
        return 64;
    }
    const long count = std::strtol(argv[2], nullptr, 10);
    const bool header = argc > 3 && std::strcmp(argv[3], "--proxy-header") == 0;
    const std::string first = header ? "PROXY TCP4 192.0.2.1 198.51.100.1 5001 80\r\nx" : "x";
    long ok = 0;
    for (long i = 0; i < count; ++i) {
        const int fd = socket(to->family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
        const linger lg{1, 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        if (fd < 0 || connect(fd, to->get(), to->length()) != 0) {
            std::perror("shardd-churn: connect");
            return 1;
        }
        char c = 0;
        if (send(fd, first.data(), first.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(first.size()) &&
            recv(fd, &c, 1, 0) == 1) {
            ++ok;
        }
        close(fd);
    }
    std::printf("%ld of %ld connections echoed\n", ok, count);
    return ok == count ? 0 : 1;
}
