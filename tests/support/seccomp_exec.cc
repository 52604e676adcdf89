// seccomp-exec: runs a program with some system calls denied, as a container
// runtime's seccomp profile or a hardened host would deny them.
//
//   seccomp-exec SYSCALL[:ENOSYS][,SYSCALL...] PROGRAM [ARG...]
//
// Each named system call fails with EPERM (what Docker's default profile
// answers), or ENOSYS with the suffix (what a kernel or sandbox without the
// call answers, gVisor's io_uring_setup), everything else is allowed; the filter survives execve and is
// inherited by every thread. Tests use it to reach the fallbacks that only a
// refused kernel feature takes (server/splice_pipes.hh: splice(2)).

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <seccomp.h>
#include <sstream>
#include <string>
#include <unistd.h>

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: seccomp-exec SYSCALL[,SYSCALL...] PROGRAM [ARG...]\n");
        return 2;
    }
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (ctx == nullptr) {
        std::fprintf(stderr, "seccomp-exec: seccomp_init failed\n");
        return 1;
    }
    std::istringstream names(argv[1]);
    for (std::string name; std::getline(names, name, ',');) {
        int answer = EPERM;
        if (const auto colon = name.find(':'); colon != std::string::npos) {
            if (name.substr(colon + 1) != "ENOSYS") {
                std::fprintf(stderr, "seccomp-exec: %s: the only answer besides EPERM is ENOSYS\n", name.c_str());
                return 2;
            }
            answer = ENOSYS;
            name.resize(colon);
        }
        const int nr = seccomp_syscall_resolve_name(name.c_str());
        if (nr == __NR_SCMP_ERROR) {
            std::fprintf(stderr, "seccomp-exec: unknown system call %s\n", name.c_str());
            return 2;
        }
        if (int rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(answer), nr, 0); rc < 0) {
            std::fprintf(stderr, "seccomp-exec: %s: %s\n", name.c_str(), std::strerror(-rc));
            return 1;
        }
    }
    // libseccomp sets no_new_privs first, so this needs no privilege.
    if (int rc = seccomp_load(ctx); rc < 0) {
        std::fprintf(stderr, "seccomp-exec: seccomp_load: %s\n", std::strerror(-rc));
        return 1;
    }
    seccomp_release(ctx);
    execv(argv[2], argv + 2);
    std::fprintf(stderr, "seccomp-exec: %s: %s\n", argv[2], std::strerror(errno));
    return 127;
}
