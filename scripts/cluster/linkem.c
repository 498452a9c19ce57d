// linkem: a two-port Ethernet forwarder that adds delay, jitter and random loss, for kernels
// without tc's netem (this project's test machine has tbf and htb but no netem, fq or gact).
//
//   linkem IF_A IF_B DELAY_US JITTER_US LOSS_PPM SEED
//
// Every frame that arrives on IF_A leaves on IF_B and the other way round, each after
// DELAY_US + a normal(0, JITTER_US) sample (clamped at 0) microseconds, or is dropped with
// probability LOSS_PPM / 10^6. Frames are released in order of their release time, so jitter
// reorders frames as netem does. Rate limits are left to tbf on the interfaces.
// scripts/cluster/lib.sh builds it (cc -O2) and runs it inside the switch namespace between the
// host's veth port and a second veth pair plugged into the bridge.
//
// It uses AF_PACKET sockets with virtio-net headers (PACKET_VNET_HDR), so that veth's large
// segmentation-offloaded frames and partial checksums pass through unchanged, and ppoll with a
// nanosecond timeout and 1 ns timer slack for the release times. SIGTERM/SIGINT end it; on exit
// it prints how many frames it forwarded and dropped per direction.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <math.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXFRAME (65536 + 64)
#define MAXQUEUE 65536

typedef struct { uint64_t release; uint64_t seq; int out; size_t len; unsigned char *data; } Frame;

static Frame heap[MAXQUEUE];
static size_t nheap;
static volatile sig_atomic_t stop;
static uint64_t rng;

static void on_signal(int s) { (void)s; stop = 1; }

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static double uniform(void) { // xorshift64*, in (0, 1)
    rng ^= rng >> 12; rng ^= rng << 25; rng ^= rng >> 27;
    return ((double)((rng * 2685821657736338717ull) >> 11) + 0.5) / 9007199254740992.0;
}

static double normal(void) { return sqrt(-2.0 * log(uniform())) * cos(2.0 * M_PI * uniform()); }

static int earlier(const Frame *a, const Frame *b) {
    return a->release < b->release || (a->release == b->release && a->seq < b->seq);
}

static void push(Frame f) {
    size_t i = nheap++;
    heap[i] = f;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!earlier(&heap[i], &heap[p])) break;
        Frame t = heap[i]; heap[i] = heap[p]; heap[p] = t; i = p;
    }
}

static Frame pop(void) {
    Frame top = heap[0];
    heap[0] = heap[--nheap];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < nheap && earlier(&heap[l], &heap[m])) m = l;
        if (r < nheap && earlier(&heap[r], &heap[m])) m = r;
        if (m == i) break;
        Frame t = heap[i]; heap[i] = heap[m]; heap[m] = t; i = m;
    }
    return top;
}

static int open_port(const char *name) {
    int ifindex = (int)if_nametoindex(name);
    if (ifindex == 0) { fprintf(stderr, "linkem: no interface %s\n", name); exit(2); }
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK, htons(ETH_P_ALL));
    if (fd < 0) { perror("linkem: socket(AF_PACKET)"); exit(2); }
    int one = 1;
    if (setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof one) < 0) { perror("linkem: PACKET_VNET_HDR"); exit(2); }
#ifdef PACKET_IGNORE_OUTGOING
    setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one);
#endif
    int buf = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
    struct sockaddr_ll a = {0};
    a.sll_family = AF_PACKET;
    a.sll_protocol = htons(ETH_P_ALL);
    a.sll_ifindex = ifindex;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("linkem: bind"); exit(2); }
    struct packet_mreq m = {0};
    m.mr_ifindex = ifindex;
    m.mr_type = PACKET_MR_PROMISC;
    setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &m, sizeof m);
    return fd;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: linkem IF_A IF_B DELAY_US JITTER_US LOSS_PPM SEED\n");
        return 2;
    }
    const double delay = atof(argv[3]) * 1e3, jitter = atof(argv[4]) * 1e3; // ns
    const double loss = atof(argv[5]) / 1e6;
    rng = strtoull(argv[6], NULL, 10) * 0x9E3779B97F4A7C15ull + 1;
    int fd[2] = {open_port(argv[1]), open_port(argv[2])};
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    unsigned long forwarded[2] = {0, 0}, dropped[2] = {0, 0}, overflow[2] = {0, 0};
    uint64_t seq = 0;
    static unsigned char buf[MAXFRAME];
    while (!stop) {
        uint64_t t = now_ns();
        while (nheap > 0 && heap[0].release <= t) {
            Frame f = pop();
            // A full send buffer: wait for room rather than drop (the link's loss is LOSS_PPM).
            for (int tries = 0; tries < 1000; tries++) {
                if (send(f.out == 0 ? fd[0] : fd[1], f.data, f.len, 0) >= 0 || (errno != EAGAIN && errno != ENOBUFS)) break;
                usleep(20);
            }
            free(f.data);
        }
        struct timespec timeout = {1, 0};
        if (nheap > 0) {
            uint64_t d = heap[0].release > t ? heap[0].release - t : 0;
            timeout.tv_sec = (time_t)(d / 1000000000ull);
            timeout.tv_nsec = (long)(d % 1000000000ull);
        }
        struct pollfd p[2] = {{fd[0], POLLIN, 0}, {fd[1], POLLIN, 0}};
        int n = ppoll(p, 2, &timeout, NULL);
        if (n < 0) { if (errno == EINTR) continue; perror("linkem: ppoll"); break; }
        for (int i = 0; i < 2; i++) {
            if (!(p[i].revents & POLLIN)) continue;
            for (int burst = 0; burst < 256; burst++) {
                struct sockaddr_ll from;
                socklen_t fl = sizeof from;
                ssize_t len = recvfrom(fd[i], buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
                if (len < 0) break;
                if (from.sll_pkttype == PACKET_OUTGOING) continue;   // our own sends
                if (loss > 0 && uniform() < loss) { dropped[i]++; continue; }
                if (nheap >= MAXQUEUE) { overflow[i]++; continue; }
                double d = delay + (jitter > 0 ? jitter * normal() : 0);
                if (d < 0) d = 0;
                Frame f = {now_ns() + (uint64_t)d, seq++, 1 - i, (size_t)len, malloc((size_t)len)};
                if (!f.data) { overflow[i]++; continue; }
                memcpy(f.data, buf, (size_t)len);
                push(f);
                forwarded[i]++;
            }
        }
    }
    fprintf(stderr, "linkem %s<->%s: %s->%s %lu forwarded, %lu dropped, %lu over the queue; %s->%s %lu forwarded, %lu dropped, %lu over the queue\n",
            argv[1], argv[2], argv[1], argv[2], forwarded[0], dropped[0], overflow[0],
            argv[2], argv[1], forwarded[1], dropped[1], overflow[1]);
    return 0;
}
