/*
 * Guest micro-benchmark: the per-call cost of common syscalls, the median of several
 * batches, every return value checked (a failed call ends the run with exit 1).
 *
 *   bench WORKDIR [CALLS [OP]]   prints "NAME MICROSECONDS" per operation (only OP's
 *                                line when OP is given: for profiling one operation)
 *
 * CALLS defaults to a small count, so the program doubles as a quick functional test;
 * `make bench` passes a large one.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BATCHES 7

static char file_path[4096], dir_path[4096], self_path[4096];
static int read_fd, write_fd, dir_fd;
static char buf[8192];

static void fail(const char *what)
{
	fprintf(stderr, "bench: %s failed: %s\n", what, strerror(errno));
	exit(1);
}

static double now_us(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts))
		fail("clock_gettime");
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static double median_per_call(void (*op)(void), long calls)
{
	double samples[BATCHES];

	for (int b = 0; b < BATCHES; b++) {
		double start = now_us();

		for (long i = 0; i < calls; i++)
			op();
		samples[b] = (now_us() - start) / calls;
	}
	qsort(samples, BATCHES, sizeof(samples[0]), cmp_double);
	return samples[BATCHES / 2];
}

static void op_stat(void)
{
	struct stat st;

	if (stat(file_path, &st) || st.st_size != 4096)
		fail("stat");
}

static void op_fstat(void)
{
	struct stat st;

	if (fstat(read_fd, &st) || st.st_size != 4096)
		fail("fstat");
}

static void op_open_close(void)
{
	int fd = open(file_path, O_RDONLY);

	if (fd < 0 || close(fd))
		fail("open+close");
}

static void op_lseek_read(void)
{
	if (lseek(read_fd, 128, SEEK_SET) != 128 || read(read_fd, buf, 64) != 64)
		fail("lseek+read");
}

static void op_write(void)
{
	if (pwrite(write_fd, buf, 64, 0) != 64)
		fail("write");
}

/* A syscall number no kernel has: natively the cheapest failing call; under kbox's seccomp
 * tier it is notified and answered ENOSYS at once, so it costs the notification round trip
 * and nothing else (the "notification floor"). */
static void op_enosys(void)
{
	if (syscall(1000) != -1 || errno != ENOSYS)
		fail("syscall 1000");
}

static void op_getpid(void)
{
	if (syscall(SYS_getpid) <= 0)
		fail("getpid");
}

static void op_getdents(void)
{
	/* 100 files plus . and .. must all come back in one call. */
	long n, seen = 0;

	if (lseek(dir_fd, 0, SEEK_SET) != 0)
		fail("getdents64 rewind");
	n = syscall(SYS_getdents64, dir_fd, buf, sizeof(buf));
	if (n <= 0)
		fail("getdents64");
	for (long at = 0; at < n; seen++)
		at += *(unsigned short *)(buf + at + 16);
	if (seen != 102) {
		errno = EIO;
		fail("getdents64 entry count");
	}
}

static void op_mmap(void)
{
	volatile char *p = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, read_fd, 0);

	if (p == MAP_FAILED || p[100] != 'k' || munmap((void *)p, 4096))
		fail("mmap+munmap");
}

static void op_fork_wait(void)
{
	int status;
	pid_t pid = fork();

	if (pid < 0)
		fail("fork");
	if (pid == 0)
		_exit(7);
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 7)
		fail("waitpid");
}

static void op_exec(void)
{
	int status;
	pid_t pid = fork();

	if (pid < 0)
		fail("fork for exec");
	if (pid == 0) {
		char *argv[] = { self_path, "--exit-at-once", NULL };

		execv(self_path, argv);
		_exit(127);
	}
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail("exec of a static binary");
}

/* A syscall number no kernel has: the SIGSYS row's filter traps it. */
#define TRAPPED_NR 1000

static void on_sigsys(int sig, siginfo_t *info, void *ctx)
{
	(void)sig;
	(void)info;
#if defined(__x86_64__)
	((ucontext_t *)ctx)->uc_mcontext.gregs[REG_RAX] = 0;
#elif defined(__aarch64__)
	((ucontext_t *)ctx)->uc_mcontext.regs[0] = 0;
#else
#error "the SIGSYS row needs this architecture's result register"
#endif
}

static void op_sigsys(void)
{
	if (syscall(TRAPPED_NR) != 0)
		fail("trapped syscall");
}

/* The bare cost of a SIGSYS round trip (the trap tier's floor): a child traps one unused
 * syscall number to a handler that answers 0, and reports the median per call. Returns -1
 * where a process cannot install a filter of its own or cannot fork (under kbox's trap
 * tier both are refused): the row is then left out. */
static double sigsys_round_trip(long calls)
{
	int fds[2];
	double result = -1;

	if (pipe(fds))
		return -1;
	pid_t pid = fork();
	if (pid < 0) {
		close(fds[0]);
		close(fds[1]);
		return -1;
	}
	if (pid == 0) {
		struct sock_filter insns[] = {
			BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
			BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TRAPPED_NR, 0, 1),
			BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
			BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		};
		struct sock_fprog prog = { sizeof(insns) / sizeof(insns[0]), insns };
		struct sigaction sa = { 0 };
		double v = -1;

		sa.sa_sigaction = on_sigsys;
		sa.sa_flags = SA_SIGINFO;
		if (sigaction(SIGSYS, &sa, NULL) == 0 && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
		    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0)
			v = median_per_call(op_sigsys, calls);
		if (write(fds[1], &v, sizeof(v)) != sizeof(v))
			_exit(1);
		_exit(0);
	}
	close(fds[1]);
	if (read(fds[0], &result, sizeof(result)) != sizeof(result))
		result = -1;
	close(fds[0]);
	waitpid(pid, NULL, 0);
	return result;
}

/* Whether this process may start others (under kbox's trap tier it may not yet). */
static int can_fork(void)
{
	pid_t pid = fork();

	if (pid < 0)
		return 0;
	if (pid == 0)
		_exit(0);
	waitpid(pid, NULL, 0);
	return 1;
}

static void setup(const char *work, const char *argv0)
{
	char path[4200];
	ssize_t len;

	if (mkdir(work, 0755) && errno != EEXIST)
		fail("mkdir WORKDIR");
	snprintf(file_path, sizeof(file_path), "%s/data", work);
	snprintf(dir_path, sizeof(dir_path), "%s/dir", work);
	memset(buf, 'k', sizeof(buf));
	write_fd = open(file_path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (write_fd < 0 || write(write_fd, buf, 4096) != 4096)
		fail("create data file");
	read_fd = open(file_path, O_RDONLY);
	if (read_fd < 0)
		fail("open data file");
	if (mkdir(dir_path, 0755) && errno != EEXIST)
		fail("mkdir");
	for (int i = 0; i < 100; i++) {
		int fd;

		snprintf(path, sizeof(path), "%s/entry-%03d", dir_path, i);
		fd = open(path, O_WRONLY | O_CREAT, 0644);
		if (fd < 0 || close(fd))
			fail("create directory entry");
	}
	dir_fd = open(dir_path, O_RDONLY | O_DIRECTORY);
	if (dir_fd < 0)
		fail("open directory");
	/* Re-exec ourselves for the exec benchmark; /proc may not be mounted. */
	if (strchr(argv0, '/')) {
		snprintf(self_path, sizeof(self_path), "%s", argv0);
		return;
	}
	len = readlink("/proc/self/exe", self_path, sizeof(self_path) - 1);
	if (len <= 0)
		fail("readlink /proc/self/exe");
	self_path[len] = 0;
}

int main(int argc, char **argv)
{
	long calls = 200;
	static const struct {
		const char *name;
		void (*op)(void);
		int divisor; /* process-level operations run fewer times */
	} ops[] = {
		{ "stat", op_stat, 1 },
		{ "fstat", op_fstat, 1 },
		{ "open+close", op_open_close, 1 },
		{ "lseek+read64", op_lseek_read, 1 },
		{ "write64", op_write, 1 },
		{ "getpid", op_getpid, 1 },
		{ "enosys", op_enosys, 1 },
		{ "getdents64", op_getdents, 1 },
		{ "mmap+munmap", op_mmap, 1 },
		{ "fork+wait", op_fork_wait, 50 },
		{ "exec", op_exec, 100 },
		{ "sigsys", NULL, 1 },
	};

	if (argc == 2 && strcmp(argv[1], "--exit-at-once") == 0)
		return 0;
	if (argc < 2 || argc > 4) {
		fprintf(stderr, "usage: %s WORKDIR [CALLS [OP]]\n", argv[0]);
		return 2;
	}
	if (argc >= 3 && (calls = atol(argv[2])) <= 0) {
		fprintf(stderr, "bench: CALLS must be a positive number\n");
		return 2;
	}
	setup(argv[1], argv[0]);
	int ran = 0, forks = can_fork();
	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
		long n = calls / ops[i].divisor;

		if (argc == 4 && strcmp(argv[3], ops[i].name) != 0)
			continue;
		ran++;
		if (ops[i].divisor > 1 && !forks) {
			fprintf(stderr, "bench: %s left out: this process cannot start others\n",
				ops[i].name);
			continue;
		}
		if (ops[i].op == NULL) {
			double v = sigsys_round_trip(n);
			if (v < 0)
				fprintf(stderr, "bench: sigsys left out: no filter of its own here\n");
			else
				printf("%s %.3f\n", ops[i].name, v);
			continue;
		}
		printf("%s %.3f\n", ops[i].name, median_per_call(ops[i].op, n > 0 ? n : 1));
	}
	if (ran == 0) {
		fprintf(stderr, "bench: no operation named %s\n", argv[3]);
		return 2;
	}
	return 0;
}
