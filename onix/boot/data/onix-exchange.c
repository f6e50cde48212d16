/*
 * onix-exchange A B: swap two paths atomically, durably, and say so.
 *
 * The initrd runs this to make an archived state live before anything runs from
 * /usr: renameat2(RENAME_EXCHANGE) swaps the archived tree and /usr in one step, so
 * /usr is always one whole state, never a mix. Then both parent directories are
 * fsync'd and the file system synced, so the swap survives a power cut right after
 * switch_root.
 *
 * Both must be real directories: renameat2 does not follow a final symlink, so an
 * exchange with a link would leave /usr a symlink to wherever it pointed. init checks
 * the directories above them; this checks the two themselves, for any init.
 *
 * Exit status: 0 exchanged and synced; 1 not exchanged (nothing changed);
 * 2 usage; 3 exchanged, but the sync failed (the swap happened; it may not be
 * on disk yet).
 *
 * Build: musl-gcc -static -Os -o onix-exchange onix-exchange.c (gcc works too).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif
/* musl has no renameat2() wrapper in older releases, so call the syscall itself */
#ifndef SYS_renameat2
#error "this architecture's headers do not define SYS_renameat2"
#endif

/* fsync the directory holding path (that is where the rename is recorded), then syncfs */
static int sync_parent(const char *path)
{
    char *copy = strdup(path);
    if (copy == NULL) {
        fprintf(stderr, "onix-exchange: out of memory\n");
        return -1;
    }
    const char *dir = dirname(copy);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "onix-exchange: cannot open %s: %s\n", dir, strerror(errno));
        free(copy);
        return -1;
    }
    int rc = 0;
    if (fsync(fd) != 0 || syncfs(fd) != 0) {
        fprintf(stderr, "onix-exchange: cannot sync %s: %s\n", dir, strerror(errno));
        rc = -1;
    }
    close(fd);
    free(copy);
    return rc;
}

/* 0 if path is a directory and not a symlink; else say why and return -1 */
static int real_directory(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0) {
        fprintf(stderr, "onix-exchange: cannot exchange %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (S_ISLNK(st.st_mode)) {
        fprintf(stderr, "onix-exchange: %s is a symlink; it exchanges only real directories\n",
                path);
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        fprintf(stderr, "onix-exchange: %s is not a directory\n", path);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: onix-exchange A B  (swap A and B atomically)\n");
        return 2;
    }
    const char *a = argv[1], *b = argv[2];
    if (real_directory(a) != 0 || real_directory(b) != 0)
        return 1;
    if (syscall(SYS_renameat2, AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) != 0) {
        int e = errno;
        fprintf(stderr, "onix-exchange: cannot exchange %s and %s: %s%s\n", a, b, strerror(e),
                e == ENOSYS || e == EINVAL
                    ? " (needs Linux >= 3.15 and a file system with RENAME_EXCHANGE)"
                    : "");
        return 1;
    }
    int rc = 0;
    if (sync_parent(a) != 0)
        rc = 3;
    if (sync_parent(b) != 0)
        rc = 3;
    if (rc != 0)
        fprintf(stderr, "onix-exchange: %s and %s were exchanged, but not synced\n", a, b);
    return rc;
}
