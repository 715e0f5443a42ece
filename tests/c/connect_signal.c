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

static void handler(int sig) {
    (void)sig;
    static const char msg[] = "handled\n";
    ssize_t n = write(1, msg, sizeof msg - 1);
    (void)n;
}

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
    if (argc != 4) {
        fprintf(stderr, "usage: connect_signal IPV4 PORT restart|norestart\n");
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = strcmp(argv[3], "restart") == 0 ? SA_RESTART : 0;
    if (sigaction(SIGUSR1, &sa, NULL) != 0) {
        perror("sigaction");
        return 1;
    }
    setvbuf(stdout, NULL, _IONBF, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", argv[1]);
        return 2;
    }
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
