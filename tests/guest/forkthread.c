/* forkthread WORKDIR: a child forked by a second thread has the state of the fork, even
 * when the main thread changes that state before the child makes any call.
 *
 * A thread forks; the child waits on a pipe. Meanwhile the main thread closes a directory FD
 * and changes directory. Then the child checks that it still has the FD (fstat, fchdir) and
 * the old working directory, as fork(2) promises. Under kbox the child's kernel state is
 * copied when kbox first meets it, so kbox has to notice children forked by any thread. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

static int go[2], report[2];
static int dirfd_kept;
static char start_dir[PATH_MAX];

static void child(void)
{
    char c, cwd[PATH_MAX] = "";
    struct stat st;
    int bad = 0;

    /* A host pipe read: no call kbox sees before the parent has changed its state. */
    if (read(go[0], &c, 1) != 1)
        _exit(3);
    if (!getcwd(cwd, sizeof(cwd)) || strcmp(cwd, start_dir) != 0)
        bad |= 1;
    if (fstat(dirfd_kept, &st) != 0 || !S_ISDIR(st.st_mode))
        bad |= 2;
    if (fchdir(dirfd_kept) != 0)
        bad |= 4;
    if (write(report[1], &bad, sizeof(bad)) != sizeof(bad))
        _exit(3);
    _exit(0);
}

/* The forking thread stays alive until the child has reported: a thread's children move
 * to another thread of the process only when it exits. */
static pthread_barrier_t forked, reported;

static void *forker(void *arg)
{
    pid_t *kid = arg;
    *kid = fork();
    if (*kid == 0)
        child();
    pthread_barrier_wait(&forked);
    pthread_barrier_wait(&reported);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s WORKDIR\n", argv[0]);
        return 2;
    }
    char sub[PATH_MAX], elsewhere[PATH_MAX];
    snprintf(sub, sizeof(sub), "%s/kept", argv[1]);
    snprintf(elsewhere, sizeof(elsewhere), "%s/elsewhere", argv[1]);
    if (mkdir(sub, 0755) || mkdir(elsewhere, 0755) || chdir(argv[1]) ||
        !getcwd(start_dir, sizeof(start_dir)) || pipe(go) || pipe(report))
        return 2;
    dirfd_kept = open(sub, O_RDONLY | O_DIRECTORY);
    if (dirfd_kept < 0)
        return 2;

    pthread_barrier_init(&forked, NULL, 2);
    pthread_barrier_init(&reported, NULL, 2);
    for (int round = 0; round < 20; round++) {
        pid_t kid = -1;
        pthread_t t;
        if (pthread_create(&t, NULL, forker, &kid))
            return 2;
        pthread_barrier_wait(&forked);
        if (kid < 0)
            return 2;
        /* The fork's state changes now, from the main thread. */
        int saved = dup(dirfd_kept);
        close(dirfd_kept);
        if (chdir(elsewhere))
            return 2;
        if (write(go[1], "g", 1) != 1)
            return 2;
        int bad = -1;
        if (read(report[0], &bad, sizeof(bad)) != sizeof(bad))
            bad = -1;
        pthread_barrier_wait(&reported);
        pthread_join(t, NULL);
        int st = 0;
        waitpid(kid, &st, 0);
        char name[64];
        snprintf(name, sizeof(name), "round %d: child has the fork's cwd and FD", round);
        check(bad == 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, name,
              "bad bits %ld (1 cwd, 2 fstat, 4 fchdir), status %ld", bad, st);
        /* Back to the state of the next fork: the FD at its number, the old cwd. */
        if (dup2(saved, dirfd_kept) != dirfd_kept || close(saved) || chdir(start_dir))
            return 2;
    }
    return failures ? 1 : 0;
}
