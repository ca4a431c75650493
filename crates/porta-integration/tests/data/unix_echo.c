/* A Unix stream socket service and its client, for the sharing tests.
 *   unix_echo server PATH        listen at PATH; answer each line with "A: LINE"
 *   unix_echo client PATH MSG    connect, send MSG, print the answer
 *   unix_echo hold PATH FIFO     connect, exchange once, wait for a line on FIFO, then
 *                                try again and print "closed" or the error
 * Exit status 2 and the error on stderr when the connection cannot be made. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>

static int dial(const char *path) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, path, sizeof a.sun_path - 1);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
        fprintf(stderr, "connect %s: %s\n", path, strerror(errno));
        exit(2);
    }
    return s;
}

/* Sends msg and prints what comes back (one read). Returns the bytes read, or -errno. */
static int exchange(int s, const char *msg) {
    char buf[512];
    if (write(s, msg, strlen(msg)) < 0)
        return -errno;
    ssize_t n = read(s, buf, sizeof buf - 1);
    if (n < 0)
        return -errno;
    buf[n] = 0;
    fputs(buf, stdout);
    fflush(stdout);
    return (int)n;
}

static void serve(int c) {
    char buf[512], out[600];
    ssize_t n;
    while ((n = read(c, buf, sizeof buf - 1)) > 0) {
        buf[n] = 0;
        int m = snprintf(out, sizeof out, "A: %s", buf);
        if (write(c, out, m) < 0)
            break;
    }
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "server")) {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        strncpy(a.sun_path, argv[2], sizeof a.sun_path - 1);
        unlink(argv[2]);
        int l = socket(AF_UNIX, SOCK_STREAM, 0);
        if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 16) < 0) {
            perror("listen");
            return 1;
        }
        signal(SIGCHLD, SIG_IGN);
        for (;;) {
            int c = accept(l, 0, 0);
            if (c < 0)
                continue;
            if (fork() == 0)
                serve(c);
            close(c);
        }
    }
    if (argc >= 4 && !strcmp(argv[1], "client")) {
        int n = exchange(dial(argv[2]), argv[3]);
        return n > 0 ? 0 : 3;
    }
    if (argc >= 4 && !strcmp(argv[1], "hold")) {
        int s = dial(argv[2]);
        if (exchange(s, "ping\n") <= 0)
            return 3;
        FILE *f = fopen(argv[3], "r");
        char line[64];
        if (!f || !fgets(line, sizeof line, f))
            return 4;
        signal(SIGPIPE, SIG_IGN);
        int n = exchange(s, "again\n");
        if (n == 0)
            puts("closed");
        else if (n < 0)
            printf("%s\n", strerror(-n));
        return 0;
    }
    fprintf(stderr, "usage: unix_echo server PATH | client PATH MSG | hold PATH FIFO\n");
    return 1;
}
