/*
 * floor — the least a correct webhook responder can do, for bench/ (issue 17).
 *
 *   floor --secret FILE [--listen [ADDR:]PORT] [--idle-timeout SECS]
 *
 * Takes a listening socket from systemd (fd 3, LISTEN_FDS=1, LISTEN_PID = its pid) or
 * binds --listen itself, and serves up to MAX_CONNECTIONS connections at once (as sockhook
 * does) from one thread with poll(2) and non-blocking sockets. For each connection: reads
 * the head (at most MAX_HEAD_BYTES) and the Content-Length body (at most MAX_BODY_BYTES),
 * all within REQUEST_TIMEOUT_MS; checks X-Hub-Signature-256 against HMAC-SHA256(secret, body) the way
 * sockhook's `auth = "github"` does (401 when missing, malformed or wrong, so a bad
 * signature costs the same work); answers 204; half-closes; drains what the peer still
 * sends until EOF (bounded in bytes and time, so the kernel never resets the answer away);
 * closes. It runs nothing and logs nothing. It exits 0 once no connection has come for
 * --idle-timeout seconds (default 5 under systemd, never with --listen), as sockhook does.
 * Type=notify: READY=1 goes to $NOTIFY_SOCKET first thing, as sockhook sends it.
 *
 * The hash is OpenSSL's (libcrypto.a, statically linked: bench.py builds it with
 * `cc -O2 -static`; a dynamically loaded libcrypto costs about 0.8 ms per exec), whose
 * SHA-256 picks SHA-NI, AVX2 or SSSE3 code at run time (OPENSSL_ia32cap).
 * Exit codes as sockhook's: 0 idle exit, 100 usage, 111 a system call failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* SHA256_Init/Update/Final are deprecated in OpenSSL 3 in favour of EVP, but EVP's
 * provider set-up costs 1.1-1.9 ms of CPU per process start here (measured: an exec that
 * fetches "HMAC" takes 1.6-2.5 ms of CPU, one that does not 0.5 ms), which a one-request
 * activation would pay in full. The low-level calls reach the same assembly
 * (sha256_block_data_order, dispatching on OPENSSL_ia32cap to the SHA-NI code) with no
 * set-up, so the HMAC (RFC 2104) is built on them here. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/crypto.h>
#include <openssl/sha.h>

#define MAX_HEAD_BYTES 8192                   /* as sockhook's read.rs */
#define MAX_BODY_BYTES (25 * 1024 * 1024)     /* the bench hook's max_body */
#define MAX_SECRET_BYTES 4096
#define REQUEST_TIMEOUT_MS 10000              /* whole request, head and body */
#define DRAIN_TIMEOUT_MS 5000                 /* as sockhook's respond.rs */
#define DRAIN_MAX_BYTES (64LL * 1024 * 1024)
#define READ_BYTES (256 * 1024)               /* one read() from the socket */
#define MAX_CONNECTIONS 64                    /* as sockhook's serve.rs */
#define EXIT_USAGE 100
#define EXIT_SYSTEM 111

static unsigned char buf[READ_BYTES];
static unsigned char secret[MAX_SECRET_BYTES];
static size_t secret_len;
static SHA256_CTX inner_keyed, outer_keyed; /* after the key's ipad and opad blocks */

/* HMAC-SHA256 (RFC 2104): the two keyed states are computed once per process. */
static void hmac_setup(void)
{
    unsigned char key[SHA256_CBLOCK] = {0}, pad[SHA256_CBLOCK];
    if (secret_len > SHA256_CBLOCK)
        SHA256(secret, secret_len, key);
    else
        memcpy(key, secret, secret_len);
    for (int i = 0; i < SHA256_CBLOCK; i++)
        pad[i] = key[i] ^ 0x36;
    SHA256_Init(&inner_keyed);
    SHA256_Update(&inner_keyed, pad, sizeof pad);
    for (int i = 0; i < SHA256_CBLOCK; i++)
        pad[i] = key[i] ^ 0x5c;
    SHA256_Init(&outer_keyed);
    SHA256_Update(&outer_keyed, pad, sizeof pad);
    OPENSSL_cleanse(key, sizeof key);
    OPENSSL_cleanse(pad, sizeof pad);
}

static void hmac_final(SHA256_CTX *inner, unsigned char out[SHA256_DIGEST_LENGTH])
{
    unsigned char inner_digest[SHA256_DIGEST_LENGTH];
    SHA256_Final(inner_digest, inner);
    SHA256_CTX outer = outer_keyed;
    SHA256_Update(&outer, inner_digest, sizeof inner_digest);
    SHA256_Final(out, &outer);
}

static void die(int code, const char *what)
{
    if (errno)
        fprintf(stderr, "floor: fatal: %s: %s\n", what, strerror(errno));
    else
        fprintf(stderr, "floor: fatal: %s\n", what);
    exit(code);
}

static int64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void send_all(int fd, const char *text)
{
    size_t len = strlen(text), done = 0;
    /* A short answer into an empty send buffer: it never waits, so needs no timeout. */
    for (int tries = 0; done < len && tries < 100; tries++) {
        ssize_t n = send(fd, text + done, len - done, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0)
            done += (size_t)n;
        else if (n < 0 && errno != EINTR)
            return;
    }
}

static const char R204[] = "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n";
static const char R400[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
static const char R401[] = "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
static const char R405[] = "HTTP/1.1 405 Method Not Allowed\r\nAllow: POST\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
static const char R408[] = "HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
static const char R413[] = "HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
static const char R431[] = "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
static const char R501[] = "HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* The header fields the check needs, from a head that ends in CRLF CRLF. */
struct head {
    int post;
    long long length; /* -1: none */
    int bad;          /* malformed or conflicting framing */
    int chunked;
    int expect_continue;
    int have_signature;
    unsigned char signature[32];
};

static int field_is(const unsigned char *name, size_t len, const char *want)
{
    return len == strlen(want) && strncasecmp((const char *)name, want, len) == 0;
}

static void parse_head(const unsigned char *p, size_t len, struct head *h)
{
    memset(h, 0, sizeof *h);
    h->length = -1;
    const unsigned char *end = p + len, *eol = memmem(p, len, "\r\n", 2);
    if (!eol) {
        h->bad = 1;
        return;
    }
    h->post = eol - p > 5 && memcmp(p, "POST ", 5) == 0;
    for (p = eol + 2; p < end; p = eol + 2) {
        eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        if (!eol || eol == p)
            break; /* the blank line */
        const unsigned char *colon = memchr(p, ':', (size_t)(eol - p));
        if (!colon) {
            h->bad = 1;
            return;
        }
        const unsigned char *v = colon + 1, *ve = eol;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        size_t nlen = (size_t)(colon - p), vlen = (size_t)(ve - v);
        if (field_is(p, nlen, "content-length")) {
            long long n = 0;
            if (vlen == 0 || vlen > 12)
                h->bad = 1;
            for (size_t i = 0; i < vlen; i++) {
                if (v[i] < '0' || v[i] > '9')
                    h->bad = 1;
                n = n * 10 + (v[i] - '0');
            }
            if (h->length >= 0 && h->length != n)
                h->bad = 1;
            h->length = n;
        } else if (field_is(p, nlen, "transfer-encoding")) {
            h->chunked = 1;
        } else if (field_is(p, nlen, "expect")) {
            h->expect_continue = field_is(v, vlen, "100-continue");
        } else if (field_is(p, nlen, "x-hub-signature-256")) {
            h->have_signature = 0;
            if (vlen == 7 + 64 && strncasecmp((const char *)v, "sha256=", 7) == 0) {
                h->have_signature = 1;
                for (int i = 0; i < 32; i++) {
                    int hi = hexval(v[7 + 2 * i]), lo = hexval(v[8 + 2 * i]);
                    if (hi < 0 || lo < 0)
                        h->have_signature = 0;
                    h->signature[i] = (unsigned char)(hi << 4 | lo);
                }
            }
        }
    }
}

/* One connection's state. The head is parsed straight from the read buffer when it
 * arrives in one read (the usual case); only a head split over reads is copied to `head`. */
enum phase { FREE, HEAD, BODY, DRAIN };
struct slot {
    enum phase phase;
    int fd;
    int64_t deadline;          /* of the request (HEAD, BODY) or of the drain */
    size_t have;               /* bytes in head[] */
    long long left;            /* body bytes still to read */
    long long drained;
    SHA256_CTX mac;
    unsigned char signature[SHA256_DIGEST_LENGTH];
    unsigned char head[MAX_HEAD_BYTES];
};
static struct slot slots[MAX_CONNECTIONS];
static int busy;             /* slots not FREE */
static int64_t last_activity; /* when the last connection closed */

static void release(struct slot *c)
{
    close(c->fd);
    c->phase = FREE;
    busy--;
    last_activity = now_ms();
}

/* Answer, half-close, then drain to EOF within DRAIN_TIMEOUT_MS and DRAIN_MAX_BYTES:
 * unread input at close() makes the kernel send RST and destroy the answer (RFC 1122
 * 4.2.2.13, the netcat race). */
static void answer(struct slot *c, const char *response)
{
    send_all(c->fd, response);
    shutdown(c->fd, SHUT_WR);
    c->phase = DRAIN;
    c->drained = 0;
    c->deadline = now_ms() + DRAIN_TIMEOUT_MS;
}

static void body_bytes(struct slot *c, const unsigned char *p, size_t n)
{
    size_t take = (long long)n < c->left ? n : (size_t)c->left;
    SHA256_Update(&c->mac, p, take);
    c->left -= (long long)take;
    if (c->left == 0) {
        unsigned char digest[SHA256_DIGEST_LENGTH];
        hmac_final(&c->mac, digest);
        answer(c, CRYPTO_memcmp(digest, c->signature, sizeof digest) == 0 ? R204 : R401);
    }
}

/* A whole head of head_len bytes at p, followed by `more` bytes already read. */
static void head_done(struct slot *c, const unsigned char *p, size_t head_len, size_t more)
{
    struct head h;
    parse_head(p, head_len, &h);
    if (h.bad)
        return answer(c, R400);
    if (!h.post)
        return answer(c, R405);
    if (h.chunked)
        return answer(c, R501);
    if (!h.have_signature)
        return answer(c, R401);
    long long length = h.length < 0 ? 0 : h.length;
    if (length > MAX_BODY_BYTES)
        return answer(c, R413);
    memcpy(c->signature, h.signature, sizeof c->signature);
    if (h.expect_continue && more == 0 && length > 0)
        send_all(c->fd, "HTTP/1.1 100 Continue\r\n\r\n");
    c->phase = BODY;
    c->mac = inner_keyed;
    c->left = length;
    body_bytes(c, p + head_len, more); /* answers at once when the body is complete (or empty) */
}

/* Reads what is there, until the socket would block or the connection is finished. */
static void progress(struct slot *c)
{
    for (int reads = 0; reads < 4096 && c->phase != FREE; reads++) {
        if (c->phase == HEAD && c->have > 0) { /* a head split over reads */
            ssize_t n = read(c->fd, c->head + c->have, sizeof c->head - c->have);
            if (n < 0 && (errno == EAGAIN || errno == EINTR))
                return;
            if (n <= 0)
                return release(c); /* nobody to answer */
            size_t from = c->have > 3 ? c->have - 3 : 0;
            c->have += (size_t)n;
            unsigned char *end = memmem(c->head + from, c->have - from, "\r\n\r\n", 4);
            if (end) {
                size_t head_len = (size_t)(end - c->head) + 4;
                head_done(c, c->head, head_len, c->have - head_len);
            } else if (c->have == sizeof c->head) {
                answer(c, R431);
            }
            continue;
        }
        size_t want = sizeof buf;
        if (c->phase == BODY && c->left < (long long)want)
            want = (size_t)c->left;
        ssize_t n = read(c->fd, buf, want);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n <= 0) { /* EOF: drained, or the peer left mid-request; or an error */
            return release(c);
        }
        switch (c->phase) {
        case HEAD: {
            size_t scan = (size_t)n < MAX_HEAD_BYTES ? (size_t)n : MAX_HEAD_BYTES;
            unsigned char *end = memmem(buf, scan, "\r\n\r\n", 4);
            if (end) {
                size_t head_len = (size_t)(end - buf) + 4;
                head_done(c, buf, head_len, (size_t)n - head_len);
            } else if ((size_t)n >= MAX_HEAD_BYTES) {
                answer(c, R431);
            } else {
                memcpy(c->head, buf, (size_t)n);
                c->have = (size_t)n;
            }
            break;
        }
        case BODY:
            body_bytes(c, buf, (size_t)n);
            break;
        case DRAIN:
            c->drained += n;
            if (c->drained >= DRAIN_MAX_BYTES)
                return release(c);
            break;
        case FREE:
            break;
        }
    }
}

static void take(int listener)
{
    int fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
        if (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED || errno == EMFILE ||
            errno == ENFILE || errno == ENOBUFS || errno == ENOMEM || errno == EPROTO)
            return;
        die(EXIT_SYSTEM, "accept a connection");
    }
    for (int i = 0; i < MAX_CONNECTIONS; i++) {
        if (slots[i].phase == FREE) {
            struct slot *c = &slots[i];
            c->phase = HEAD;
            c->fd = fd;
            c->have = 0;
            c->deadline = now_ms() + REQUEST_TIMEOUT_MS;
            busy++;
            progress(c); /* the request is usually there already */
            return;
        }
    }
    close(fd); /* not reached: the listener is polled only while a slot is free */
}

/* Serves until nothing has happened for idle_ms (-1: never); returns then. */
static void serve(int listener, int idle_ms)
{
    struct pollfd p[MAX_CONNECTIONS + 1];
    struct slot *of[MAX_CONNECTIONS + 1];
    last_activity = now_ms();
    for (long long round = 0; round < 1000000000000LL; round++) { /* ends when idle, or by SIGTERM */
        int64_t now = now_ms(), wake = INT64_MAX;
        int n = 0;
        if (busy < MAX_CONNECTIONS) { /* at the limit, connections wait in the backlog */
            p[n] = (struct pollfd){.fd = listener, .events = POLLIN};
            of[n++] = NULL;
        }
        for (int i = 0; i < MAX_CONNECTIONS; i++) {
            struct slot *c = &slots[i];
            if (c->phase == FREE)
                continue;
            if (c->deadline <= now) { /* too slow: 408, or a drain that took too long */
                if (c->phase == DRAIN)
                    release(c);
                else
                    answer(c, R408);
                if (c->phase == FREE)
                    continue;
            }
            if (c->deadline < wake)
                wake = c->deadline;
            p[n] = (struct pollfd){.fd = c->fd, .events = POLLIN};
            of[n++] = c;
        }
        /* After the deadlines above, which may have released the last connection. */
        if (!busy && idle_ms >= 0) {
            if (now >= last_activity + idle_ms)
                return;
            wake = last_activity + idle_ms;
        }
        int timeout = wake == INT64_MAX ? -1 : (int)(wake - now > 0 ? wake - now : 0);
        int ready = poll(p, (nfds_t)n, timeout);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            die(EXIT_SYSTEM, "poll");
        }
        for (int i = 0; i < n && ready > 0; i++) {
            if (!p[i].revents)
                continue;
            ready--;
            if (of[i])
                progress(of[i]);
            else
                take(listener);
        }
    }
}

/* READY=1 to $NOTIFY_SOCKET (sd_notify(3)); '@' names an abstract socket. */
static void notify_ready(void)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path)
        return;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    if (len >= sizeof sa.sun_path)
        return;
    memcpy(sa.sun_path, path, len);
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = 0;
    int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return;
    sendto(s, "READY=1", 7, MSG_NOSIGNAL, (struct sockaddr *)&sa,
           (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len));
    close(s);
    unsetenv("NOTIFY_SOCKET");
}

/* fd 3 when systemd passed exactly one listening stream socket to this process. */
static int listener_from_systemd(void)
{
    const char *fds = getenv("LISTEN_FDS"), *pid = getenv("LISTEN_PID");
    if (!fds)
        return -1;
    if (strcmp(fds, "1") != 0 || !pid || strtol(pid, NULL, 10) != (long)getpid()) {
        errno = 0;
        die(EXIT_USAGE, "LISTEN_FDS must be 1 and LISTEN_PID this process");
    }
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDNAMES");
    int type = 0, listening = 0;
    socklen_t len = sizeof type;
    if (getsockopt(3, SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_STREAM)
        die(EXIT_USAGE, "fd 3 is not a stream socket");
    len = sizeof listening;
    if (getsockopt(3, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0 || !listening)
        die(EXIT_USAGE, "fd 3 is not a listening socket");
    if (fcntl(3, F_SETFD, FD_CLOEXEC) < 0)
        die(EXIT_SYSTEM, "set close-on-exec on fd 3");
    return 3;
}

static int bind_listener(const char *spec)
{
    char addr[64] = "127.0.0.1";
    const char *colon = strrchr(spec, ':'), *port = colon ? colon + 1 : spec;
    if (colon) {
        if ((size_t)(colon - spec) >= sizeof addr) {
            errno = 0;
            die(EXIT_USAGE, "--listen: address too long");
        }
        memcpy(addr, spec, (size_t)(colon - spec));
        addr[colon - spec] = 0;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(port))};
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) {
        errno = 0;
        die(EXIT_USAGE, "--listen: not an IPv4 address");
    }
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    if (s < 0)
        die(EXIT_SYSTEM, "create a socket");
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(s, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(s, 4096) < 0)
        die(EXIT_SYSTEM, "bind --listen");
    return s;
}

static void load_secret(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die(EXIT_USAGE, "open --secret");
    ssize_t n = read(fd, secret, sizeof secret);
    close(fd);
    if (n < 0)
        die(EXIT_USAGE, "read --secret");
    secret_len = (size_t)n;
    if (secret_len > 0 && secret[secret_len - 1] == '\n') /* as sockhook: one trailing newline */
        secret_len--;
    if (secret_len > 0 && secret[secret_len - 1] == '\r')
        secret_len--;
    errno = 0;
    if (secret_len == 0 || n == (ssize_t)sizeof secret)
        die(EXIT_USAGE, "--secret: empty or larger than 4095 bytes");
}

static void usage(void)
{
    errno = 0;
    die(EXIT_USAGE, "usage: floor --secret FILE [--listen [ADDR:]PORT] [--idle-timeout SECS]");
}

int main(int argc, char **argv)
{
    notify_ready(); /* Type=notify: before anything can fail, as sockhook does */
    const char *listen_spec = NULL, *secret_path = NULL;
    double idle = -1;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        if (strcmp(argv[i], "--listen") == 0)
            listen_spec = argv[++i];
        else if (strcmp(argv[i], "--secret") == 0)
            secret_path = argv[++i];
        else if (strcmp(argv[i], "--idle-timeout") == 0)
            idle = strtod(argv[++i], NULL);
        else
            usage();
    }
    if (!secret_path)
        usage();
    load_secret(secret_path);
    int listener = listener_from_systemd();
    if (listener < 0) {
        if (!listen_spec) {
            errno = 0;
            die(EXIT_USAGE, "no socket: start from a .socket unit, or pass --listen PORT");
        }
        listener = bind_listener(listen_spec);
    } else if (idle < 0) {
        idle = 5;
    }
    hmac_setup();

    serve(listener, idle < 0 ? -1 : (int)(idle * 1000 + 0.5));
    return 0;
}
