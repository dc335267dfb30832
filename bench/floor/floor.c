/*
 * floor — the least a correct webhook responder can do, for bench/ (issue 17).
 *
 *   floor --secret FILE [--listen [ADDR:]PORT] [--idle-timeout SECS]
 *
 * Takes a listening socket from systemd (fd 3, LISTEN_FDS=1, LISTEN_PID = its pid) or
 * binds --listen itself, and for each connection, one at a time: reads the head (at most
 * MAX_HEAD_BYTES) and the Content-Length body (at most MAX_BODY_BYTES), all within
 * REQUEST_TIMEOUT_MS; checks X-Hub-Signature-256 against HMAC-SHA256(secret, body) the way
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

/* A read that never outlives `deadline`: SO_RCVTIMEO is lowered only when less time is
 * left than it allows, so a fast request costs one read() per chunk and no setsockopt. */
struct conn {
    int fd;
    int64_t timeo_ms; /* SO_RCVTIMEO currently set, 0 = none */
};

static ssize_t read_by(struct conn *c, void *into, size_t len, int64_t deadline)
{
    for (int tries = 0; tries < 1000; tries++) {
        int64_t left = deadline - now_ms();
        if (left <= 0)
            return -2;
        if (c->timeo_ms == 0 || left < c->timeo_ms) {
            struct timeval tv = {.tv_sec = left / 1000, .tv_usec = (left % 1000) * 1000};
            if (setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0)
                return -1;
            c->timeo_ms = left;
        }
        ssize_t n = read(c->fd, into, len);
        if (n >= 0)
            return n;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return -2;
        if (errno != EINTR)
            return -1;
    }
    return -1;
}

static void send_all(int fd, const char *text)
{
    size_t len = strlen(text), done = 0;
    /* A short answer into an empty send buffer: never blocks, never needs a timeout. */
    for (int tries = 0; done < len && tries < 100; tries++) {
        ssize_t n = send(fd, text + done, len - done, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0)
            done += (size_t)n;
        else if (n < 0 && errno != EINTR)
            return;
    }
}

/* Answer, half-close, drain to EOF (bounded), close: unread input at close() would make
 * the kernel send RST and destroy the answer (RFC 1122 4.2.2.13, the netcat race). */
static void finish(struct conn *c, const char *response)
{
    send_all(c->fd, response);
    shutdown(c->fd, SHUT_WR);
    int64_t deadline = now_ms() + DRAIN_TIMEOUT_MS;
    long long drained = 0;
    for (int i = 0; i < (int)(DRAIN_MAX_BYTES / 4096) && drained < DRAIN_MAX_BYTES; i++) {
        ssize_t n = read_by(c, buf, sizeof buf, deadline);
        if (n <= 0)
            break;
        drained += n;
    }
    close(c->fd);
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

static void serve(int fd)
{
    struct conn c = {.fd = fd, .timeo_ms = 0};
    int64_t deadline = now_ms() + REQUEST_TIMEOUT_MS;
    size_t have = 0;
    unsigned char *head_end = NULL;
    while (!head_end) {
        if (have >= MAX_HEAD_BYTES)
            return finish(&c, R431);
        ssize_t n = read_by(&c, buf + have, sizeof buf - have, deadline);
        if (n == -2)
            return finish(&c, R408);
        if (n <= 0) { /* closed or failed before a whole head: nobody to answer */
            close(fd);
            return;
        }
        size_t from = have > 3 ? have - 3 : 0;
        have += (size_t)n;
        size_t scan = (have < MAX_HEAD_BYTES ? have : MAX_HEAD_BYTES) - from;
        head_end = memmem(buf + from, scan, "\r\n\r\n", 4);
    }
    size_t head_len = (size_t)(head_end - buf) + 4;
    struct head h;
    parse_head(buf, head_len, &h);
    if (h.bad)
        return finish(&c, R400);
    if (!h.post)
        return finish(&c, R405);
    if (h.chunked)
        return finish(&c, R501);
    if (!h.have_signature)
        return finish(&c, R401);
    long long length = h.length < 0 ? 0 : h.length;
    if (length > MAX_BODY_BYTES)
        return finish(&c, R413);
    size_t buffered = have - head_len;
    if (h.expect_continue && buffered == 0 && length > 0)
        send_all(fd, "HTTP/1.1 100 Continue\r\n\r\n");

    SHA256_CTX mac = inner_keyed;
    size_t first = buffered < (size_t)length ? buffered : (size_t)length;
    SHA256_Update(&mac, buf + head_len, first);
    long long left = length - (long long)first;
    const char *answer = NULL;
    while (left > 0) {
        ssize_t n = read_by(&c, buf, left < (long long)sizeof buf ? (size_t)left : sizeof buf, deadline);
        if (n == -2) {
            answer = R408;
            break;
        }
        if (n <= 0) { /* the peer went away mid-body */
            close(fd);
            return;
        }
        SHA256_Update(&mac, buf, (size_t)n);
        left -= n;
    }
    if (!answer) {
        unsigned char digest[SHA256_DIGEST_LENGTH];
        hmac_final(&mac, digest);
        answer = CRYPTO_memcmp(digest, h.signature, sizeof digest) == 0 ? R204 : R401;
    }
    finish(&c, answer);
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

    int idle_ms = idle < 0 ? -1 : (int)(idle * 1000 + 0.5);
    struct pollfd p = {.fd = listener, .events = POLLIN};
    for (long long served = 0; served < 1000000000000LL; served++) { /* ends when idle, or by SIGTERM */
        int ready = poll(&p, 1, idle_ms);
        if (ready == 0)
            return 0;
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            die(EXIT_SYSTEM, "poll the listening socket");
        }
        int fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED || errno == EMFILE ||
                errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                continue;
            die(EXIT_SYSTEM, "accept a connection");
        }
        serve(fd);
    }
    return 0;
}
