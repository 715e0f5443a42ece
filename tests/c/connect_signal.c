/*
 * connect_signal: a statically linked program (built by the tests with
 * `gcc -static`) whose one thread blocks in connect() when a signal comes.
 *
 *   connect_signal IPV4 PORT restart|norestart
 *
 * Installs a SIGUSR1 handler (with SA_RESTART or without), prints
 * "connecting" and connects a blocking TCP socket to IPV4:PORT (a
 * listener whose queue is full, so the handshake waits). The handler
 * prints "handled". Without SA_RESTART connect() then fails; the program
 * prints "connect=EINTR" (or the error), connects again (the attempt
 * went on meanwhile) and prints "again=" with that outcome, then once
 * more ("third=", EISCONN on a connected socket). With SA_RESTART it
 * prints "connect=" with the outcome of the one call. Connected, it
 * sends "hello-from-PORT" and closes.
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

static const char *outcome(int rc) {
    if (rc == 0)
        return "0";
    switch (errno) {
    case EINTR:
        return "EINTR";
    case EALREADY:
        return "EALREADY";
    case EISCONN:
        return "EISCONN";
    default:
        return strerror(errno);
    }
}

int main(int argc, char **argv) {
    struct sockaddr_in a;
    int status = signal_test_setup(argc, argv, &a);
    if (status != 0)
        return status;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) {
        perror("socket");
        return 1;
    }
    printf("connecting\n");
    int rc = connect(s, (struct sockaddr *)&a, sizeof a);
    printf("connect=%s\n", outcome(rc));
    if (rc != 0) {
        rc = connect(s, (struct sockaddr *)&a, sizeof a);
        printf("again=%s\n", outcome(rc));
        int third = connect(s, (struct sockaddr *)&a, sizeof a);
        printf("third=%s\n", outcome(third));
    }
    if (rc != 0)
        return 1;
    char msg[64];
    int len = snprintf(msg, sizeof msg, "hello-from-%s", argv[2]);
    if (write(s, msg, (size_t)len) != len) {
        perror("write");
        return 1;
    }
    close(s);
    printf("sent\n");
    return 0;
}
