/*
 * What the *_signal test programs share: their arguments
 * (IPV4 PORT restart|norestart), and a SIGUSR1 handler that prints
 * "handled", installed with SA_RESTART for "restart"; stdout is
 * unbuffered so each line is seen at once.
 */
#ifndef SIGNAL_TEST_H
#define SIGNAL_TEST_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usr1_handler(int sig) {
    (void)sig;
    static const char msg[] = "handled\n";
    ssize_t n = write(1, msg, sizeof msg - 1);
    (void)n;
}

/*
 * Reads the address into `a` and installs the handler. Returns 0, or
 * the exit status to leave with (2: bad arguments, 1: no handler).
 */
static int signal_test_setup(int argc, char **argv, struct sockaddr_in *a) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s IPV4 PORT restart|norestart\n", argv[0]);
        return 2;
    }
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &a->sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", argv[1]);
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = usr1_handler;
    sa.sa_flags = strcmp(argv[3], "restart") == 0 ? SA_RESTART : 0;
    if (sigaction(SIGUSR1, &sa, NULL) != 0) {
        perror("sigaction");
        return 1;
    }
    setvbuf(stdout, NULL, _IONBF, 0);
    return 0;
}

#endif
