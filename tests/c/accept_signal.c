/*
 * accept_signal: a statically linked program (built by the tests with
 * `gcc -static`) whose one thread blocks in accept() when a signal comes.
 *
 *   accept_signal IPV4 PORT restart|norestart
 *
 * Installs a SIGUSR1 handler (with SA_RESTART or without), listens on
 * IPV4:PORT, prints "listening", and blocks in accept(). The handler
 * prints "handled". Without SA_RESTART accept() then fails and the
 * program prints "accept=EINTR"; with it accept() goes on, and the
 * program prints "data=" and the bytes of the connection it accepts.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "signal_test.h"

int main(int argc, char **argv) {
    struct sockaddr_in a;
    int status = signal_test_setup(argc, argv, &a);
    if (status != 0)
        return status;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 4) != 0) {
        perror("bind/listen");
        return 1;
    }
    printf("listening\n");
    int c = accept(l, NULL, NULL);
    if (c < 0) {
        printf("accept=%s\n", errno == EINTR ? "EINTR" : strerror(errno));
        return 0;
    }
    printf("data=");
    char buf[4096];
    for (;;) {
        ssize_t n = read(c, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        fwrite(buf, 1, (size_t)n, stdout);
    }
    printf("\n");
    return 0;
}
