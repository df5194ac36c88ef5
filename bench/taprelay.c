/*
 * taprelay: a wire with a delay, for bench/run's WAN workload.
 *
 *   taprelay TAP_A TAP_B DELAY_MS
 *
 * Creates two TAP devices and forwards every Ethernet frame that leaves one into the other,
 * holding each for DELAY_MS (one way). The script moves each TAP into its own network namespace,
 * so QUIC and TCP cross the same delayed path: shaping (tc tbf) and loss (nftables) are added
 * in the namespaces. This kernel has no netem, hence this program.
 *
 * One thread per direction: it reads frames as they come, stamps them with their release time,
 * and writes out those that are due. A full queue drops the frame, as a real queue would.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 16384
#define FRAME 2048 /* an MTU-1500 frame and room to spare */

struct slot {
    uint64_t due_ns;
    uint32_t len;
    unsigned char data[FRAME];
};

struct direction {
    int in, out;
    uint64_t delay_ns;
    struct slot *ring;
    uint64_t head, tail; /* frames [tail, head) are waiting */
    uint64_t forwarded, dropped;
};

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int open_tap(const char *name) {
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK);
    if (fd < 0) {
        perror("open /dev/net/tun");
        exit(1);
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        perror("TUNSETIFF");
        exit(1);
    }
    return fd;
}

static void *run(void *arg) {
    struct direction *d = arg;
    for (;;) {
        uint64_t now = now_ns();
        /* Release what is due. */
        while (d->tail != d->head) {
            struct slot *s = &d->ring[d->tail % SLOTS];
            if (s->due_ns > now)
                break;
            if (write(d->out, s->data, s->len) < 0 && errno != EAGAIN && errno != EIO)
                perror("write");
            d->tail++;
            d->forwarded++;
        }
        /* Wait for a frame or for the next release. */
        struct timespec timeout = {1, 0};
        if (d->tail != d->head) {
            uint64_t due = d->ring[d->tail % SLOTS].due_ns;
            uint64_t wait = due > now ? due - now : 0;
            timeout.tv_sec = wait / 1000000000u;
            timeout.tv_nsec = wait % 1000000000u;
        }
        struct pollfd p = {.fd = d->in, .events = POLLIN};
        if (ppoll(&p, 1, &timeout, NULL) < 0 && errno != EINTR) {
            perror("ppoll");
            exit(1);
        }
        if (!(p.revents & POLLIN))
            continue;
        /* Take every frame that is waiting. */
        for (;;) {
            if (d->head - d->tail >= SLOTS) {
                unsigned char scratch[FRAME];
                if (read(d->in, scratch, sizeof scratch) < 0)
                    break;
                d->dropped++;
                continue;
            }
            struct slot *s = &d->ring[d->head % SLOTS];
            ssize_t n = read(d->in, s->data, FRAME);
            if (n < 0)
                break;
            s->len = (uint32_t)n;
            s->due_ns = now_ns() + d->delay_ns;
            d->head++;
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s TAP_A TAP_B DELAY_MS\n", argv[0]);
        return 2;
    }
    int a = open_tap(argv[1]), b = open_tap(argv[2]);
    uint64_t delay = (uint64_t)atol(argv[3]) * 1000000u;
    struct direction ab = {.in = a, .out = b, .delay_ns = delay};
    struct direction ba = {.in = b, .out = a, .delay_ns = delay};
    ab.ring = calloc(SLOTS, sizeof(struct slot));
    ba.ring = calloc(SLOTS, sizeof(struct slot));
    if (!ab.ring || !ba.ring) {
        perror("calloc");
        return 1;
    }
    pthread_t t1, t2;
    pthread_create(&t1, NULL, run, &ab);
    pthread_create(&t2, NULL, run, &ba);
    fprintf(stderr, "taprelay: %s <-> %s, %s ms each way\n", argv[1], argv[2], argv[3]);
    pthread_join(t1, NULL);
    return 0;
}
