/* A process holding a memory object (memfd) as descriptor 3, the way an application
 * keeps shared memory: the sharing tests give it to another container with
 * `porta share ID:/proc/1/fd/3 ...`. It writes its first content, then waits. */
#define _GNU_SOURCE
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(void) {
    int fd = memfd_create("shared-object", 0);
    const char *first = "hello from A\n";
    if (fd < 0 || write(fd, first, strlen(first)) != (ssize_t)strlen(first))
        return 1;
    if (fd != 3 && (dup2(fd, 3) < 0 || close(fd) < 0))
        return 1;
    for (;;)
        pause();
}
