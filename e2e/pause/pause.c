/* The lab's pod sandbox ("pause") process: PID 1 of every lab pod.
 *
 * It does nothing but wait for SIGTERM/SIGINT (exit 0) and reap children that get re-parented
 * to it (SIGCHLD). Built with `cc -static -O2` by the e2e crate and packed as an OCI image, so
 * containerd never pulls a sandbox image from a registry. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) {
    (void)sig;
    _exit(0);
}

static void on_child(int sig) {
    (void)sig;
    int saved = errno;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        printf("slicenet lab pause\n");
        return 0;
    }
    if (getpid() != 1) {
        fprintf(stderr, "pause: warning: not running as PID 1\n");
    }

    struct sigaction term = {0};
    term.sa_handler = on_term;
    sigemptyset(&term.sa_mask);
    if (sigaction(SIGTERM, &term, NULL) < 0 || sigaction(SIGINT, &term, NULL) < 0) {
        perror("pause: sigaction");
        return 1;
    }

    struct sigaction child = {0};
    child.sa_handler = on_child;
    sigemptyset(&child.sa_mask);
    child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    if (sigaction(SIGCHLD, &child, NULL) < 0) {
        perror("pause: sigaction");
        return 1;
    }

    for (;;) {
        pause();
    }
}
