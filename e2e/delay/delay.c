/* The lab's WAN delay (this kernel has no netem): holds each packet of NFQUEUE queue Q for D
 * milliseconds, in order, then accepts it. Speaks nfnetlink_queue directly (no
 * libnetfilter_queue), copies only packet metadata.
 *
 * usage: delay QUEUE DELAY_MS          runs until SIGTERM/SIGINT
 */
#include <arpa/inet.h> /* before the linux headers: glibc's netinet/in.h sets their guards */
#include <errno.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <linux/netlink.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RING (1u << 20)

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static int fd;
static uint16_t queue;
static uint32_t seq;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void put_attr(struct nlmsghdr *nh, uint16_t type, const void *data, uint16_t len) {
    struct nlattr *a = (struct nlattr *)((char *)nh + NLMSG_ALIGN(nh->nlmsg_len));
    a->nla_type = type;
    a->nla_len = (uint16_t)(NLA_HDRLEN + len);
    memcpy((char *)a + NLA_HDRLEN, data, len);
    nh->nlmsg_len = NLMSG_ALIGN(nh->nlmsg_len) + NLA_ALIGN(a->nla_len);
}

static struct nlmsghdr *start_msg(char *buf, uint8_t msg_type, uint16_t flags) {
    memset(buf, 0, 256);
    struct nlmsghdr *nh = (struct nlmsghdr *)buf;
    nh->nlmsg_len = NLMSG_LENGTH(sizeof(struct nfgenmsg));
    nh->nlmsg_type = (NFNL_SUBSYS_QUEUE << 8) | msg_type;
    nh->nlmsg_flags = NLM_F_REQUEST | flags;
    nh->nlmsg_seq = ++seq;
    struct nfgenmsg *g = NLMSG_DATA(nh);
    g->nfgen_family = AF_UNSPEC;
    g->version = NFNETLINK_V0;
    g->res_id = htons(queue);
    return nh;
}

static int send_msg(struct nlmsghdr *nh) {
    struct sockaddr_nl to = {.nl_family = AF_NETLINK};
    return sendto(fd, nh, nh->nlmsg_len, 0, (struct sockaddr *)&to, sizeof to) < 0 ? -1 : 0;
}

static void verdict(uint32_t id_be) {
    char buf[256];
    struct nlmsghdr *nh = start_msg(buf, NFQNL_MSG_VERDICT, 0);
    struct nfqnl_msg_verdict_hdr v = {.verdict = htonl(NF_ACCEPT), .id = id_be};
    put_attr(nh, NFQA_VERDICT_HDR, &v, sizeof v);
    if (send_msg(nh) < 0) perror("delay: verdict");
}

static struct { uint32_t id; uint64_t due; } *ring;
static size_t head, tail;

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s QUEUE DELAY_MS\n", argv[0]);
        return 2;
    }
    queue = (uint16_t)atoi(argv[1]);
    uint64_t delay = (uint64_t)atoll(argv[2]) * 1000000ull;
    ring = calloc(RING, sizeof *ring);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    fd = socket(AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER);
    if (fd < 0 || !ring) { perror("delay: socket"); return 1; }
    int rcv = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcv, sizeof rcv);
    struct sockaddr_nl me = {.nl_family = AF_NETLINK};
    if (bind(fd, (struct sockaddr *)&me, sizeof me) < 0) { perror("delay: bind"); return 1; }

    char buf[256];
    struct nlmsghdr *nh = start_msg(buf, NFQNL_MSG_CONFIG, 0);
    struct nfqnl_msg_config_cmd cmd = {.command = NFQNL_CFG_CMD_BIND, .pf = htons(AF_INET)};
    put_attr(nh, NFQA_CFG_CMD, &cmd, sizeof cmd);
    if (send_msg(nh) < 0) { perror("delay: bind queue"); return 1; }
    nh = start_msg(buf, NFQNL_MSG_CONFIG, 0);
    struct nfqnl_msg_config_params params = {.copy_range = htonl(0), .copy_mode = NFQNL_COPY_META};
    put_attr(nh, NFQA_CFG_PARAMS, &params, sizeof params);
    uint32_t maxlen = htonl(65536);
    put_attr(nh, NFQA_CFG_QUEUE_MAXLEN, &maxlen, sizeof maxlen);
    if (send_msg(nh) < 0) { perror("delay: params"); return 1; }
    fprintf(stderr, "delay: queue %u, %llu ms\n", queue, (unsigned long long)(delay / 1000000ull));

    static char rx[1 << 16];
    while (!stop) {
        int timeout = -1;
        if (head != tail) {
            uint64_t t = now_ns();
            timeout = ring[head].due > t ? (int)((ring[head].due - t + 999999) / 1000000) : 0;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, timeout);
        if (r < 0 && errno != EINTR) { perror("delay: poll"); return 1; }
        if (r > 0) {
            ssize_t n = recv(fd, rx, sizeof rx, MSG_DONTWAIT);
            if (n < 0 && errno != EAGAIN && errno != EINTR && errno != ENOBUFS) { perror("delay: recv"); return 1; }
            uint64_t t = now_ns();
            for (struct nlmsghdr *m = (struct nlmsghdr *)rx; n > 0 && NLMSG_OK(m, (size_t)n); m = NLMSG_NEXT(m, n)) {
                if (m->nlmsg_type == NLMSG_ERROR) {
                    struct nlmsgerr *e = NLMSG_DATA(m);
                    if (e->error) { fprintf(stderr, "delay: netlink error %d\n", e->error); return 1; }
                    continue;
                }
                if ((m->nlmsg_type & 0xff) != NFQNL_MSG_PACKET) continue;
                int len = (int)(m->nlmsg_len - NLMSG_LENGTH(sizeof(struct nfgenmsg)));
                struct nlattr *a = (struct nlattr *)((char *)NLMSG_DATA(m) + NLMSG_ALIGN(sizeof(struct nfgenmsg)));
                while (len >= (int)NLA_HDRLEN && a->nla_len >= NLA_HDRLEN && a->nla_len <= len) {
                    if ((a->nla_type & NLA_TYPE_MASK) == NFQA_PACKET_HDR) {
                        struct nfqnl_msg_packet_hdr *h = (void *)((char *)a + NLA_HDRLEN);
                        if (((tail + 1) & (RING - 1)) == head) {
                            verdict(h->packet_id); /* full: pass it on undelayed */
                        } else {
                            ring[tail].id = h->packet_id;
                            ring[tail].due = t + delay;
                            tail = (tail + 1) & (RING - 1);
                        }
                        break;
                    }
                    len -= NLA_ALIGN(a->nla_len);
                    a = (struct nlattr *)((char *)a + NLA_ALIGN(a->nla_len));
                }
            }
        }
        uint64_t t = now_ns();
        while (head != tail && ring[head].due <= t) {
            verdict(ring[head].id);
            head = (head + 1) & (RING - 1);
        }
    }
    /* Let what is held go. */
    while (head != tail) {
        verdict(ring[head].id);
        head = (head + 1) & (RING - 1);
    }
    return 0;
}
