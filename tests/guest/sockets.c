/* sockets WORKDIR: loopback sockets as event loops, resolvers and servers use them, over
 * IPv4 and IPv6 (NAME4 / NAME6):
 *   udp-self        an unconnected UDP socket sends to itself (sendto); recvfrom returns
 *                   the bytes and its own address as the sender
 *   udp-pair        two unconnected sockets: A sends to B, B sees A's address and answers
 *                   to it, A gets the answer
 *   udp-connected   A connects to B: send/recv without addresses, B sees A's address
 *   mmsg            sendmmsg of 3 datagrams to B, recvmmsg of 3 with their sender
 *   dns             a request/response between two processes (a forked server)
 *   nb-connect      a non-blocking TCP connect: EINPROGRESS, then POLLOUT with SO_ERROR 0,
 *                   and bytes flow once accepted
 *   nb-refused      a non-blocking connect to a closed port: EINPROGRESS, then SO_ERROR
 *                   ECONNREFUSED
 *   listen-poll     poll on a listening socket says POLLIN once a client connects, and
 *                   a non-blocking accept before that is EAGAIN
 *   accepted        an accepted connection is a TCP socket: TCP_NODELAY can be set, and
 *                   its names are the server's address and the client's
 * Prints "ok NAME" or "FAIL NAME: ..." per check and exits 1 when any failed. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

static int family;
static char name[64];

static const char *tag(const char *what)
{
    snprintf(name, sizeof name, "%s%c", what, family == AF_INET ? '4' : '6');
    return name;
}

/* The loopback address of `family`, port 0 (any). */
static socklen_t loopback(struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        a->sin_family = AF_INET;
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        return sizeof *a;
    }
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
    a->sin6_family = AF_INET6;
    a->sin6_addr = in6addr_loopback;
    return sizeof *a;
}

static int port_of(const struct sockaddr_storage *ss)
{
    return ntohs(family == AF_INET ? ((const struct sockaddr_in *)ss)->sin_port
                                   : ((const struct sockaddr_in6 *)ss)->sin6_port);
}

/* Whether two addresses are the same loopback address and port. */
static int same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != family || b->ss_family != family || port_of(a) != port_of(b))
        return 0;
    if (family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)b)->sin_addr.s_addr;
    return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                  &((const struct sockaddr_in6 *)b)->sin6_addr, 16) == 0;
}

/* A socket of `type` bound to loopback; its address in *ss. */
static int bound(int type, struct sockaddr_storage *ss)
{
    int s = socket(family, type, 0);
    socklen_t len = loopback(ss);
    if (s < 0 || bind(s, (struct sockaddr *)ss, len))
        return -1;
    len = sizeof *ss;
    if (getsockname(s, (struct sockaddr *)ss, &len))
        return -1;
    return s;
}

/* Waits up to 2 s for `events` on `fd`; the revents (0 on timeout). */
static int wait_for(int fd, short events)
{
    struct pollfd p = {.fd = fd, .events = events};
    return poll(&p, 1, 2000) == 1 ? p.revents : 0;
}

static void udp_self(void)
{
    struct sockaddr_storage me, from;
    int s = bound(SOCK_DGRAM, &me);
    socklen_t flen = sizeof from;
    char buf[16] = {0};
    long sent = s < 0 ? -1 : sendto(s, "self", 4, 0, (struct sockaddr *)&me, sizeof me);
    long got = -1;
    if (sent == 4 && wait_for(s, POLLIN) & POLLIN)
        got = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &flen);
    check(got == 4 && memcmp(buf, "self", 4) == 0 && same_addr(&from, &me), tag("udp-self"),
          "sent %ld, received %ld (or not from itself)", sent, got);
    close(s);
}

static void udp_pair(void)
{
    struct sockaddr_storage a_addr, b_addr, from;
    int a = bound(SOCK_DGRAM, &a_addr), b = bound(SOCK_DGRAM, &b_addr);
    socklen_t flen = sizeof from;
    char buf[16] = {0};
    long got = -1, back = -1;
    if (a >= 0 && b >= 0 &&
        sendto(a, "ping", 4, 0, (struct sockaddr *)&b_addr, sizeof b_addr) == 4 &&
        wait_for(b, POLLIN) & POLLIN)
        got = recvfrom(b, buf, sizeof buf, 0, (struct sockaddr *)&from, &flen);
    if (got == 4 && same_addr(&from, &a_addr) &&
        sendto(b, "pong", 4, 0, (struct sockaddr *)&from, flen) == 4 &&
        wait_for(a, POLLIN) & POLLIN)
        back = recv(a, buf, sizeof buf, 0);
    check(got == 4 && back == 4 && memcmp(buf, "pong", 4) == 0, tag("udp-pair"),
          "request %ld bytes, answer %ld bytes", got, back);
    close(a);
    close(b);
}

static void udp_connected(void)
{
    struct sockaddr_storage a_addr, b_addr, from;
    int a = bound(SOCK_DGRAM, &a_addr), b = bound(SOCK_DGRAM, &b_addr);
    socklen_t flen = sizeof from;
    char buf[16] = {0};
    long got = -1;
    if (a >= 0 && b >= 0 && connect(a, (struct sockaddr *)&b_addr, sizeof b_addr) == 0 &&
        send(a, "conn", 4, 0) == 4 && wait_for(b, POLLIN) & POLLIN)
        got = recvfrom(b, buf, sizeof buf, 0, (struct sockaddr *)&from, &flen);
    check(got == 4 && memcmp(buf, "conn", 4) == 0 && same_addr(&from, &a_addr),
          tag("udp-connected"), "received %ld bytes, want %ld from A", got, 4L);
    close(a);
    close(b);
}

static void mmsg(void)
{
    struct sockaddr_storage a_addr, b_addr;
    int a = bound(SOCK_DGRAM, &a_addr), b = bound(SOCK_DGRAM, &b_addr);
    char out[3][4] = {"one", "two", "six"}, in[3][8];
    struct iovec oiov[3], iiov[3];
    struct mmsghdr om[3], im[3];
    struct sockaddr_storage from[3];
    memset(om, 0, sizeof om);
    memset(im, 0, sizeof im);
    for (int i = 0; i < 3; i++) {
        oiov[i] = (struct iovec){.iov_base = out[i], .iov_len = 3};
        om[i].msg_hdr = (struct msghdr){.msg_name = &b_addr, .msg_namelen = sizeof b_addr,
                                        .msg_iov = &oiov[i], .msg_iovlen = 1};
        iiov[i] = (struct iovec){.iov_base = in[i], .iov_len = sizeof in[i]};
        im[i].msg_hdr = (struct msghdr){.msg_name = &from[i], .msg_namelen = sizeof from[i],
                                        .msg_iov = &iiov[i], .msg_iovlen = 1};
    }
    int sent = a < 0 || b < 0 ? -1 : sendmmsg(a, om, 3, 0);
    int got = 0;
    /* Datagrams may arrive one poll at a time; gather all three within 2 s. */
    while (sent == 3 && got < 3 && wait_for(b, POLLIN) & POLLIN) {
        int n = recvmmsg(b, im + got, 3 - got, MSG_DONTWAIT, NULL);
        if (n <= 0)
            break;
        got += n;
    }
    int right = got == 3;
    for (int i = 0; right && i < 3; i++)
        right = im[i].msg_len == 3 && memcmp(in[i], out[i], 3) == 0 &&
                same_addr(&from[i], &a_addr);
    check(right, tag("mmsg"), "sent %ld, received %ld (or wrong bytes or senders)", sent, got);
    close(a);
    close(b);
}

static void dns(void)
{
    struct sockaddr_storage srv, from;
    int s = bound(SOCK_DGRAM, &srv);
    pid_t pid = fork();
    if (pid == 0) {
        char q[64];
        struct sockaddr_storage peer;
        socklen_t plen = sizeof peer;
        long n = recvfrom(s, q, sizeof q, 0, (struct sockaddr *)&peer, &plen);
        if (n <= 0)
            _exit(1);
        q[0] = 'A';
        _exit(sendto(s, q, n, 0, (struct sockaddr *)&peer, plen) == n ? 0 : 2);
    }
    /* The parent keeps its copy of the server socket until the exchange is over: a close
     * right after fork can reach kbox before the child's first call, and the child then
     * misses the socket (docs/dispatch.md, limits). */
    int c = socket(family, SOCK_DGRAM, 0);
    char a[64] = {0};
    long got = -1;
    socklen_t flen = sizeof from;
    if (sendto(c, "Qexample", 8, 0, (struct sockaddr *)&srv, sizeof srv) == 8 &&
        wait_for(c, POLLIN) & POLLIN)
        got = recvfrom(c, a, sizeof a, 0, (struct sockaddr *)&from, &flen);
    int st = 0;
    if (got < 0)
        kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    close(s);
    check(got == 8 && memcmp(a, "Aexample", 8) == 0 && same_addr(&from, &srv), tag("dns"),
          "answer of %ld bytes, server status %#lx", got, (long)st);
    close(c);
}

static void nb_connect(void)
{
    struct sockaddr_storage srv;
    int l = bound(SOCK_STREAM, &srv);
    if (l < 0 || listen(l, 4)) {
        check(0, tag("nb-connect"), "listener: errno %ld %ld", errno, 0L);
        return;
    }
    int c = socket(family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    long r = connect(c, (struct sockaddr *)&srv, sizeof srv);
    int e = errno;
    int rev = wait_for(c, POLLOUT);
    int err = -1;
    socklen_t elen = sizeof err;
    getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &elen);
    int a = accept(l, NULL, NULL);
    char b = 0;
    long n = -1;
    if (a >= 0 && write(c, "z", 1) == 1 && wait_for(a, POLLIN) & POLLIN)
        n = read(a, &b, 1);
    check(r == -1 && e == EINPROGRESS && rev & POLLOUT && err == 0 && n == 1 && b == 'z',
          tag("nb-connect"), "connect %ld errno %ld (or no POLLOUT, SO_ERROR, data)", r, e);
    close(c);
    close(a);
    close(l);
}

static void nb_refused(void)
{
    struct sockaddr_storage srv;
    /* A port that was just free: bound, then closed without listening. */
    int t = bound(SOCK_STREAM, &srv);
    close(t);
    int c = socket(family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    long r = connect(c, (struct sockaddr *)&srv, sizeof srv);
    int e = errno;
    wait_for(c, POLLOUT);
    int err = 0;
    socklen_t elen = sizeof err;
    getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &elen);
    check(r == -1 && e == EINPROGRESS && err == ECONNREFUSED, tag("nb-refused"),
          "connect errno %ld, SO_ERROR %ld", r == -1 ? e : 0, err);
    close(c);
}

static void listen_poll(void)
{
    struct sockaddr_storage srv;
    int l = bound(SOCK_STREAM, &srv);
    if (l < 0 || listen(l, 4) || fcntl(l, F_SETFL, O_NONBLOCK)) {
        check(0, tag("listen-poll"), "listener: errno %ld %ld", errno, 0L);
        return;
    }
    long early = accept(l, NULL, NULL);
    int early_errno = errno;
    struct pollfd p = {.fd = l, .events = POLLIN};
    int quiet = poll(&p, 1, 100);
    int c = socket(family, SOCK_STREAM, 0);
    connect(c, (struct sockaddr *)&srv, sizeof srv);
    int rev = wait_for(l, POLLIN);
    int a = accept(l, NULL, NULL);
    check(early == -1 && early_errno == EAGAIN && quiet == 0 && rev & POLLIN && a >= 0,
          tag("listen-poll"), "early accept errno %ld, later accept %ld (or poll wrong)",
          early == -1 ? early_errno : 0, a);
    close(a);
    close(c);
    close(l);
}

static void accepted(void)
{
    struct sockaddr_storage srv, me, peer, cli;
    int l = bound(SOCK_STREAM, &srv);
    if (l < 0 || listen(l, 4)) {
        check(0, tag("accepted"), "listener: errno %ld %ld", errno, 0L);
        return;
    }
    int c = socket(family, SOCK_STREAM, 0);
    socklen_t clen = sizeof cli;
    if (connect(c, (struct sockaddr *)&srv, sizeof srv) ||
        getsockname(c, (struct sockaddr *)&cli, &clen)) {
        check(0, tag("accepted"), "connect: errno %ld %ld", errno, 0L);
        return;
    }
    int a = accept(l, NULL, NULL);
    int one = 1;
    long opt = setsockopt(a, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int opt_errno = errno;
    socklen_t mlen = sizeof me, plen = sizeof peer;
    int names = getsockname(a, (struct sockaddr *)&me, &mlen) == 0 &&
                getpeername(a, (struct sockaddr *)&peer, &plen) == 0 && same_addr(&me, &srv) &&
                same_addr(&peer, &cli);
    check(a >= 0 && opt == 0 && names, tag("accepted"),
          "TCP_NODELAY: errno %ld (0 is right); names right: %ld", opt ? opt_errno : 0,
          (long)names);
    close(a);
    close(c);
    close(l);
}

/* A closed socket frees its port at once, even when another socket of the process got
 * traffic going after it was opened (a connected UDP socket, as glibc's getaddrinfo makes
 * one to sort addresses while Python binds a socket to "localhost"): binding the port
 * again succeeds. */
static void port_freed(void)
{
    struct sockaddr_storage u_addr, t_addr, again;
    int t = bound(SOCK_STREAM, &t_addr);
    int u = bound(SOCK_DGRAM, &u_addr);
    long sent = -1;
    if (u >= 0 && connect(u, (struct sockaddr *)&u_addr, sizeof u_addr) == 0)
        sent = send(u, "busy", 4, 0);
    close(t);
    int r = socket(family, SOCK_STREAM, 0);
    socklen_t len = loopback(&again);
    if (family == AF_INET)
        ((struct sockaddr_in *)&again)->sin_port = htons((unsigned short)port_of(&t_addr));
    else
        ((struct sockaddr_in6 *)&again)->sin6_port = htons((unsigned short)port_of(&t_addr));
    errno = 0;
    int b = r < 0 || t < 0 ? -1 : bind(r, (struct sockaddr *)&again, len);
    check(sent == 4 && b == 0, tag("port-freed"), "send %ld, bind again errno %ld", sent,
          b == 0 ? 0 : errno);
    close(r);
    close(u);
}

/* A stream socket that has not connected has no peer: recv fails at once, neither
 * waiting nor saying EAGAIN (TLS libraries check this before a handshake on a socket
 * wrapped before connect). Linux says ENOTCONN for TCP and EINVAL for a unix socket;
 * kbox says EINVAL for both (docs/dispatch.md), which such checks accept. */
static void unconnected(void)
{
    char c;
    int s = socket(family, SOCK_STREAM, 0);
    errno = 0;
    long r = s < 0 ? -2 : recv(s, &c, 1, MSG_DONTWAIT);
    check(r == -1 && (errno == ENOTCONN || errno == EINVAL), tag("unconnected-recv"),
          "recv %ld, errno %ld", r, errno);
    close(s);
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    int families[2] = {AF_INET, AF_INET6};
    for (int i = 0; i < 2; i++) {
        family = families[i];
        udp_self();
        udp_pair();
        udp_connected();
        mmsg();
        dns();
        nb_connect();
        nb_refused();
        listen_poll();
        accepted();
        port_freed();
        unconnected();
    }
    return failures ? 1 : 0;
}
