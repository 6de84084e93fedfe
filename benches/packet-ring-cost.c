/* What one capture ring costs the kernel to open and to close, step by step:
 * the packet socket, its filter, the TPACKET_V3 ring (4 MiB, as the agent's),
 * the mapping, and the close. Both the ring's set-up and the close wait for
 * an RCU grace period (synchronize_net), which is why the agent keeps one
 * ring open across cases instead of one per case.
 *
 *   gcc -O2 -o /tmp/packet-ring-cost benches/packet-ring-cost.c
 *   sudo /tmp/packet-ring-cost          (needs CAP_NET_RAW)
 */
#include <arpa/inet.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(void) {
    const unsigned block = 256 * 1024, blocks = 16;
    for (int round = 1; round <= 5; round++) {
        double t0 = now_ms();
        int s = socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_ALL));
        if (s < 0) { perror("socket"); return 1; }
        double t1 = now_ms();
        struct sock_filter keep_all[] = {{0x06, 0, 0, 0x0000ffff}};
        struct sock_fprog program = {1, keep_all};
        setsockopt(s, SOL_SOCKET, SO_ATTACH_FILTER, &program, sizeof program);
        double t2 = now_ms();
        int version = TPACKET_V3;
        setsockopt(s, SOL_PACKET, PACKET_VERSION, &version, sizeof version);
        struct tpacket_req3 ring = {block, blocks, 2048, block / 2048 * blocks, 2, 0, 0};
        if (setsockopt(s, SOL_PACKET, PACKET_RX_RING, &ring, sizeof ring)) { perror("ring"); return 1; }
        double t3 = now_ms();
        void *mapped = mmap(0, (size_t)block * blocks, PROT_READ | PROT_WRITE, MAP_SHARED, s, 0);
        if (mapped == MAP_FAILED) { perror("mmap"); return 1; }
        double t4 = now_ms();
        munmap(mapped, (size_t)block * blocks);
        close(s);
        double t5 = now_ms();
        printf("round %d: socket %.2f ms, filter %.2f ms, ring %.2f ms, mmap %.2f ms, close %.2f ms: %.2f ms\n",
               round, t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0);
    }
    return 0;
}
