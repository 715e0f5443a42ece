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

static void handler(int sig) {
    (void)sig;
    static const char msg[] = "handled\n";
    ssize_t n = write(1, msg, sizeof msg - 1);
    (void)n;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: accept_signal IPV4 PORT restart|norestart\n");
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
    int l = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", argv[1]);
        return 2;
    }
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
