// SPDX-License-Identifier: MIT
// bench/count_dpdk_virtio.cpp -- a real virtio driver and device, DPDK's, through the receive
// cycle of count_cycle's rx-* scenarios, N cycles exactly, for instruction counting under
// valgrind (scripts/callgrind.sh): the peer our receive path is compared with.
//
//   count_dpdk_virtio <scenario> <cycles>   e.g. count_dpdk_virtio dpdk-split-rx-32 20000
//   count_dpdk_virtio --time <scenario> [N]   wall-clock ns per packet, median of 7
//   count_dpdk_virtio --list | --smoke
//
// One process: DPDK's net_vhost PMD is the device (librte_vhost, the vhost-user backend of
// OVS-DPDK and others), its virtio-user PMD the driver (the guest's virtio-net driver, split or
// packed ring, talking vhost-user to it over a unix socket). A cycle moves 32 frames of 64 bytes
// from the "wire" to the driver's stack and back:
//   phase_wire          the same 32 wire mbufs, one more reference each (vhost frees what it
//                       sent): not virtio work, reported so that it can be left out
//   phase_device_serve  rte_eth_tx_burst on the vhost port: the device takes 32 posted receive
//                       buffers, writes the 12-byte virtio-net header and the frame into each,
//                       completes them and decides about the interrupt (vhost-user's enqueue)
//   phase_rx_receive    rte_eth_rx_burst on the virtio-user port (the driver reaps 32 used
//                       buffers into mbufs and refills its ring from the mempool, one kick
//                       decision), then the stack frees the 32 mbufs (rte_pktmbuf_free_bulk)
// The same work as count_cycle's rx-*-copy-32 (device copies a frame in, rx_queue::poll lends,
// the stack releases), with DPDK's mbufs as the pool.
#include <rte_dev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <unistd.h>

#include "rx_bodies.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <concepts>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr std::uint16_t burst = 32;
constexpr std::uint16_t ring_size = 256;
constexpr std::uint16_t frame_bytes = 64;

/// The two ports, set up and started, and the wire's mbufs.
struct dpdk_pair {
  std::uint16_t vhost = 0;
  std::uint16_t virtio = 0;
  rte_mempool* pool = nullptr;
  std::array<rte_mbuf*, burst> wire{};
  std::array<rte_mbuf*, burst> got{};
};

bool start_port(std::uint16_t port, rte_mempool* pool) {
  rte_eth_conf conf{};
  const int socket = rte_eth_dev_socket_id(port);
  return rte_eth_dev_configure(port, 1, 1, &conf) == 0 &&
         rte_eth_rx_queue_setup(port, 0, ring_size, static_cast<unsigned>(socket), nullptr, pool) ==
             0 &&
         rte_eth_tx_queue_setup(port, 0, ring_size, static_cast<unsigned>(socket), nullptr) == 0 &&
         rte_eth_dev_start(port) == 0;
}

template <class Pair>
[[gnu::noinline]] void phase_wire(Pair& p) {
  for (rte_mbuf* m : p.wire) rte_mbuf_refcnt_update(m, 1);
}

template <class Pair>
[[gnu::noinline]] std::uint16_t phase_device_serve(Pair& p) {
  const std::uint16_t sent = rte_eth_tx_burst(p.vhost, 0, p.wire.data(), burst);
  // Frames the device had no buffer for stay ours: drop the reference the wire gave them.
  for (std::uint16_t k = sent; k < burst; ++k) rte_mbuf_refcnt_update(p.wire[k], -1);
  return sent;
}

template <class Pair>
[[gnu::noinline]] std::uint16_t phase_rx_receive(Pair& p) {
  const std::uint16_t n = rte_eth_rx_burst(p.virtio, 0, p.got.data(), burst);
  rte_pktmbuf_free_bulk(p.got.data(), n);
  return n;
}

bool run(dpdk_pair& p, std::uint64_t cycles) {
  for (std::uint64_t c = 0; c < cycles; ++c) {
    phase_wire(p);
    const std::uint16_t sent = phase_device_serve(p);
    const std::uint16_t n = phase_rx_receive(p);
    if (sent != burst || n != burst) return false;
  }
  return true;
}

/// EAL, the vhost port (its socket exists once it is started), then the virtio-user port
/// plugged in against it. false with a message when DPDK or its drivers are not usable here.
bool set_up(dpdk_pair& p, const std::string& driver_args, const std::string& dir) {
  const std::string prefix = "virtq_count_" + std::to_string(::getpid());
  const std::string sock = dir + "/" + prefix + ".sock";
  std::vector<std::string> eal_args = {"count_dpdk_virtio",
                                       "-l",
                                       "0",
                                       "--no-huge",
                                       "-m",
                                       "256",
                                       "--no-pci",
                                       "--no-telemetry",
                                       "--log-level=error",
                                       "--file-prefix",
                                       prefix,
                                       "--vdev",
                                       "net_vhost0,iface=" + sock + ",queues=1"};
  std::vector<char*> argv;
  for (auto& a : eal_args) argv.push_back(a.data());
  if (rte_eal_init(static_cast<int>(argv.size()), argv.data()) < 0) {
    std::fprintf(stderr, "rte_eal_init failed: %s\n", rte_strerror(rte_errno));
    return false;
  }
  p.pool = rte_pktmbuf_pool_create("count_rx", 4095, 256, 0, RTE_MBUF_DEFAULT_BUF_SIZE,
                                   static_cast<int>(rte_socket_id()));
  if (p.pool == nullptr || rte_eth_dev_count_avail() != 1 || !start_port(0, p.pool)) {
    std::fprintf(stderr, "vhost port: %s\n", rte_strerror(rte_errno));
    return false;
  }
  p.vhost = 0;
  const std::string virtio = "net_virtio_user0,path=" + sock +
                             ",queues=1,queue_size=" + std::to_string(ring_size) +
                             ",mac=02:00:00:00:00:01" + driver_args;
  if (rte_dev_probe(virtio.c_str()) != 0 || rte_eth_dev_count_avail() != 2) {
    std::fprintf(stderr, "virtio-user port: %s\n", rte_strerror(rte_errno));
    return false;
  }
  p.virtio = 1;
  if (!start_port(p.virtio, p.pool)) {
    std::fprintf(stderr, "virtio-user port did not start\n");
    return false;
  }
  // The vhost port's link comes up once the driver's rings are set up (vhost-user messages,
  // handled by vhost's own thread).
  for (int i = 0; i < 500; ++i) {
    rte_eth_link link{};
    if (rte_eth_link_get_nowait(p.vhost, &link) == 0 && link.link_status != 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (rte_pktmbuf_alloc_bulk(p.pool, p.wire.data(), burst) != 0) return false;
  for (rte_mbuf* m : p.wire) {
    char* d = rte_pktmbuf_append(m, frame_bytes);
    if (d == nullptr) return false;
    std::memset(d, 0x5a, frame_bytes);
  }
  // A few cycles first: the driver's ring fills and both sides reach their steady state.
  return run(p, 64);
}

/// Our receive path through the same cycle (count_cycle's rx-*-32 with the device writing the
/// header and frame, as vhost does): device serve_buffers, rx_queue::poll, release.
template <class Fixture>
requires(!std::same_as<Fixture, dpdk_pair>)  // DPDK's own phase_rx_receive is above
    [[gnu::noinline]] std::size_t phase_rx_receive(Fixture& f) {
  return f.cycle(burst);
}

using cycles_fn = std::function<bool(std::uint64_t)>;

/// Set up once (empty when that failed), then run N cycles on demand.
struct scenario {
  std::string name;
  std::function<cycles_fn(const std::string& dir)> make;
};

cycles_fn dpdk_side(const std::string& driver_args, const std::string& dir) {
  auto p = std::make_shared<dpdk_pair>();
  if (!set_up(*p, driver_args, dir)) return {};
  return [p](std::uint64_t cycles) { return run(*p, cycles); };
}

/// M: identity_memory, or guest_memory with a table of three regions (the pool's last), which
/// the device walks per buffer as vhost walks the table SET_MEM_TABLE gave it.
template <class Layout, bool Bursts, class M = virtq::identity_memory>
cycles_fn virtq_side() {
  namespace vb = virtq_bench;
  using fixture =
      vb::rx_fixture<Layout, vb::p_event, vb::rx_plain, virtq::steady_clock_source, true, M>;
  auto f = std::make_shared<fixture>(/*copy_reserve=*/true, /*bulk_release=*/true, Bursts);
  if (!f->ok()) return {};
  return [f](std::uint64_t cycles) {
    for (std::uint64_t c = 0; c < cycles; ++c) {
      if (phase_rx_receive(*f) != burst) return false;
    }
    return true;
  };
}

std::vector<scenario> scenarios() {
  // DPDK's virtio-user driver in two configurations: its defaults (the mergeable receive path,
  // as VIRTIO_NET_F_MRG_RXBUF is negotiated) and without mergeable buffers (one buffer per
  // frame, as our receive queue posts them). Its vectorized paths are not measured: under
  // valgrind the AVX-512 one is never chosen (valgrind does not report the feature), and
  // vectorized=1 left the split counts unchanged here.
  const auto dpdk = [](std::string args) {
    return [args](const std::string& dir) { return dpdk_side(args, dir); };
  };
  return {
      {"dpdk-split-rx-32", dpdk("")},
      {"dpdk-split-nomrg-rx-32", dpdk(",mrg_rxbuf=0")},
      {"dpdk-packed-rx-32", dpdk(",packed_vq=1")},
      {"dpdk-packed-nomrg-rx-32", dpdk(",packed_vq=1,mrg_rxbuf=0")},
      {"virtq-split-rx-32",
       [](const std::string&) { return virtq_side<virtq::split_layout, false>(); }},
      {"virtq-split-burst-rx-32",
       [](const std::string&) { return virtq_side<virtq::split_layout, true>(); }},
      {"virtq-packed-rx-32",
       [](const std::string&) { return virtq_side<virtq::packed_layout, false>(); }},
      {"virtq-packed-burst-rx-32",
       [](const std::string&) { return virtq_side<virtq::packed_layout, true>(); }},
      {"virtq-split-guestmem-rx-32",
       [](const std::string&) {
         return virtq_side<virtq::split_layout, false, virtq::guest_memory>();
       }},
      {"virtq-packed-guestmem-rx-32",
       [](const std::string&) {
         return virtq_side<virtq::packed_layout, false, virtq::guest_memory>();
       }},
      {"virtq-split-cursor-rx-32",
       [](const std::string&) {
         return virtq_side<virtq::split_layout, false, virtq::guest_memory_cursor>();
       }},
      {"virtq-packed-cursor-rx-32",
       [](const std::string&) {
         return virtq_side<virtq::packed_layout, false, virtq::guest_memory_cursor>();
       }},
  };
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<scenario> all = scenarios();
  if (argc == 2 && std::strcmp(argv[1], "--list") == 0) {
    for (const auto& s : all) std::printf("%s\n", s.name.c_str());
    return 0;
  }
  const bool smoke = argc == 2 && std::strcmp(argv[1], "--smoke") == 0;
  const bool timing = argc >= 3 && std::strcmp(argv[1], "--time") == 0;
  const char* const wanted = timing ? argv[2] : argv[1];
  const scenario* chosen = nullptr;
  for (const auto& s : all) {
    if (argc >= 3 && s.name == wanted) chosen = &s;
  }
  if (!smoke && chosen == nullptr) {
    std::fprintf(stderr,
                 "usage: %s <scenario> <cycles> | --time <scenario> [cycles] | --list | --smoke\n",
                 argv[0]);
    return 2;
  }
  // The ports are not stopped at the end (see below): a vhost-user message to a closed socket
  // must not end the process.
  std::signal(SIGPIPE, SIG_IGN);
  const std::string dir = std::filesystem::temp_directory_path().string();
  // --smoke: each scenario in a child of its own (EAL initialises once per process).
  if (smoke) {
    for (const auto& s : all) {
      const std::string cmd = std::string(argv[0]) + " " + s.name + " 200 >/dev/null";
      if (std::system(cmd.c_str()) != 0) {
        std::fprintf(stderr, "%s failed\n", s.name.c_str());
        return 1;
      }
    }
    std::printf("ok\n");
    return 0;
  }
  const std::uint64_t cycles = timing ? (argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 20000)
                                      : std::strtoull(argv[2], nullptr, 10);
  const cycles_fn go = chosen->make(dir);
  bool ok = static_cast<bool>(go);
  if (timing) {
    // Wall-clock ns per packet, median of 7 runs of N cycles after the set-up. Not a test:
    // the machine's load moves it.
    std::vector<double> per;
    for (int rep = 0; ok && rep < 7; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      ok = go(cycles);
      const std::chrono::duration<double, std::nano> d = std::chrono::steady_clock::now() - t0;
      per.push_back(d.count() / static_cast<double>(cycles * burst));
    }
    if (ok) {
      std::sort(per.begin(), per.end());
      std::printf("%s %.2f ns/packet (median of 7; %.2f .. %.2f)\n", wanted, per[3], per[0],
                  per[6]);
    }
  } else {
    ok = ok && go(cycles);
    std::printf("%s: %llu cycles of %u frames%s\n", wanted, static_cast<unsigned long long>(cycles),
                unsigned{burst}, ok ? "" : " (FAILED)");
  }
  std::fflush(stdout);
  // Stopping the ports makes virtio-user and vhost tear their vhost-user session down from two
  // threads of one process, which DPDK 22.11 does not do cleanly (GET_VRING_BASE on a closed
  // socket). Remove what EAL and vhost left on disk, and leave without the teardown.
  if (rte_eal_get_runtime_dir() != nullptr && std::strstr(chosen->name.c_str(), "dpdk-")) {
    std::error_code ec;
    std::filesystem::remove(dir + "/virtq_count_" + std::to_string(::getpid()) + ".sock", ec);
    const std::string rt = rte_eal_get_runtime_dir();
    if (rt.find("virtq_count_") != std::string::npos) std::filesystem::remove_all(rt, ec);
  }
  _exit(ok ? 0 : 1);
}
