// SPDX-License-Identifier: MIT
// incident_demo -- the "server stopped receiving" incident, replayed and then prevented.
//
// An emulated virtio-net device (its own thread, the device side of a split virtqueue over
// identity memory) writes frames -- a 12-byte virtio-net header, then Ethernet/IPv4/TCP -- into
// the driver's receive buffers. Two consumers read them: a web server (port 80) that releases
// each buffer at once, and an FTP server's passive data connection (port 3034) that stops reading
// after a while and keeps what it has. Its client keeps sending until the TCP window (more
// frames than the ring has buffers) is full.
//
//  run 1, reserve off: every buffer ends up with the FTP server, the ring empties, the web
//         server starves too, and the starvation detector names the FTP holder.
//  run 2, reserve on:  the last buffers are never lent; packets at the reserve are copied and
//         flagged resources_low; reception goes on.
//
// Exit code 0 only if that is what happened. --smoke: the same story in about 2 s.
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "virtq/rx_pool.hpp"
#include "virtq/rx_queue.hpp"
#include "virtq/split.hpp"

using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;
using virtq::holder_id;

namespace {

constexpr std::uint32_t ring_size = 128;
constexpr std::uint32_t buffer_size = 1526;  // 12-byte header + a 1514-byte frame
constexpr std::uint16_t http_port = 80;
constexpr std::uint16_t ftp_port = 3034;
constexpr std::size_t ftp_window = 160;  // unread frames the FTP client may have in flight

struct timing {
  std::chrono::milliseconds run, ftp_stops, tick, starvation_after, deadline;
};
constexpr timing normal_timing{6000ms, 1500ms, 500ms, 1000ms, 2000ms};
constexpr timing smoke_timing{900ms, 250ms, 100ms, 200ms, 400ms};

bool colour = false;
const char* red() {
  return colour ? "\033[31m" : "";
}
const char* green() {
  return colour ? "\033[32m" : "";
}
const char* bold() {
  return colour ? "\033[1m" : "";
}
const char* plain() {
  return colour ? "\033[0m" : "";
}

// --- frames --------------------------------------------------------------------------------

/// virtio-net header (5.1.6, with VIRTIO_NET_F_MRG_RXBUF / VERSION_1: 12 bytes) + Ethernet +
/// IPv4 + TCP + payload.
std::size_t build_frame(std::array<std::byte, buffer_size>& f, std::uint16_t dst_port,
                        std::uint32_t seq, std::size_t payload) {
  std::memset(f.data(), 0, f.size());
  auto put = [&](std::size_t off, std::initializer_list<unsigned> bytes) {
    for (unsigned b : bytes) f[off++] = static_cast<std::byte>(b);
  };
  put(10, {1, 0});  // num_buffers = 1 (little-endian)
  const std::size_t eth = 12;
  put(eth, {0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x52, 0x54, 0, 0xab, 0xcd, 0xef, 0x08, 0x00});
  const std::size_t ip = eth + 14;
  const auto total = static_cast<unsigned>(20 + 20 + payload);
  put(ip,
      {0x45, 0, total >> 8, total & 0xff, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1});
  const std::size_t tcp = ip + 20;
  const unsigned src = dst_port == ftp_port ? 20 : 51000;
  const unsigned dst = dst_port;
  put(tcp, {src >> 8, src & 0xff, dst >> 8, dst & 0xff, seq >> 24, (seq >> 16) & 0xff,
            (seq >> 8) & 0xff, seq & 0xff, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff});
  return tcp + 20 + payload;
}

std::uint16_t dst_port(std::span<const std::byte> d) {
  const std::size_t off = 12 + 14 + 20 + 2;
  if (d.size() < off + 2) return 0;
  return static_cast<std::uint16_t>((std::to_integer<unsigned>(d[off]) << 8) |
                                    std::to_integer<unsigned>(d[off + 1]));
}

// --- one run ---------------------------------------------------------------------------------

using pool_t = virtq::rx_pool<virtq::rx_thread_safe_policy>;
using driver_t = virtq::split_driver<>;
using device_t = virtq::split_device<>;
using rxq_t = virtq::rx_queue<driver_t, pool_t>;
using packet = rxq_t::packet;

/// The FTP server's socket: frames wait here until the server reads them.
struct ftp_socket {
  std::mutex m;
  std::condition_variable cv;
  std::deque<packet> unread;
  std::atomic<std::size_t> size{0};
  bool closed = false;
  void put(packet p) {
    {
      std::lock_guard g(m);
      unread.push_back(std::move(p));
      size.store(unread.size());
    }
    cv.notify_one();
  }
};

struct outcome {
  std::optional<virtq::starvation_report> report;
  virtq::rx_stats stats;
  std::uint64_t http_rx_after_stop = 0;
  std::uint64_t http_rx = 0, ftp_rx = 0, nic_drops = 0, deadline_asks = 0;
  virtq::shutdown_report shutdown;
};

std::string bar(std::uint32_t n, std::uint32_t of, int width) {
  const int fill =
      of == 0 ? 0
              : static_cast<int>((std::uint64_t{n} * static_cast<unsigned>(width) + of - 1) / of);
  return std::string(static_cast<std::size_t>(fill), '#') +
         std::string(static_cast<std::size_t>(width - fill), '.');
}

outcome run(bool reserve, const timing& t) {
  outcome out;
  virtq::ring_memory<virtq::split_layout> ring(ring_size);
  const auto f = virtq::features{}.with(virtq::feature::version_1).with(virtq::feature::event_idx);
  virtq::identity_memory mem;
  driver_t driver(ring.view(), f);
  device_t device(ring.view(), f, mem);
  pool_t pool(ring_size, buffer_size, "rx");

  virtq::rx_queue_options o;
  o.name = "eth1-rx0";
  o.copy_reserve = reserve;
  o.reserve = 16;
  o.bounce_buffers = 64;
  o.repost_batch = 16;
  o.starvation_after = t.starvation_after;
  o.on_starvation = [&](const virtq::starvation_report& r) {
    out.report = r;
    std::printf("%s%s%s", red(), virtq::to_string(r).c_str(), plain());
  };
  o.loan_deadline = t.deadline;
  o.on_loan_overdue = [&](const virtq::loan_overdue& d) {
    if (out.deadline_asks++ == 0) {
      std::printf("loan deadline: asked '%s' to copy and return %u buffers (oldest %s)\n",
                  d.holder.name.c_str(), d.holder.count,
                  virtq::format_duration(d.holder.oldest).c_str());
    }
  };
  rxq_t rxq(driver, pool, o);
  const holder_id http = rxq.register_holder("http:80");
  const holder_id ftp = rxq.register_holder("ftp-data:3034");
  (void)rxq.refill();

  const auto start = clk::now();
  std::atomic<bool> stop{false};
  ftp_socket sock;
  std::atomic<std::uint64_t> nic_drops{0};

  // The device: 6 frames per 0.5 ms, three FTP data frames for every web frame; the FTP client
  // only sends while its window is open.
  std::thread dev([&] {
    virtq::chain c;
    std::array<std::byte, buffer_size> frame{};
    std::uint32_t seq = 0;
    while (!stop.load()) {
      for (int k = 0; k < 6; ++k) {
        const bool to_ftp = k % 4 != 3;
        if (to_ftp && sock.size.load() >= ftp_window) continue;
        const std::size_t len =
            build_frame(frame, to_ftp ? ftp_port : http_port, seq++, to_ftp ? 1448 : 300);
        if (device.pop(c) != virtq::errc::ok) {
          ++nic_drops;  // no buffer posted: the frame is lost on the wire
          continue;
        }
        const std::size_t n = c.write(std::span(frame.data(), len));
        (void)device.complete(c.id(), static_cast<std::uint32_t>(n));
      }
      (void)device.interrupt_prepare();
      std::this_thread::sleep_for(500us);
    }
  });

  // The FTP server: reads (and releases) until it stops reading.
  std::thread ftp_server([&] {
    std::unique_lock g(sock.m);
    while (!sock.closed) {
      if (clk::now() - start < t.ftp_stops && !sock.unread.empty()) {
        sock.unread.pop_front();  // read: the buffer goes back
        sock.size.store(sock.unread.size());
        continue;
      }
      sock.cv.wait_for(g, 5ms);
    }
  });

  std::printf("%s--- run %d: reserve %s (ring %u, pool %u, reserve %u, bounce %u) ---%s\n", bold(),
              reserve ? 2 : 1, reserve ? "ON" : "OFF", ring_size, ring_size, rxq.reserve(),
              reserve ? o.bounce_buffers : 0, plain());
  std::printf("   time |   rx/s | posted           | holders: buffers (oldest)\n");

  std::array<packet, 32> batch;
  auto next_tick = start + t.tick;
  std::uint64_t rx_in_tick = 0;
  bool announced = false;
  // The run lasts t.run; on a loaded machine it may take longer for the story to unfold (the
  // ring to empty, the reserve to be reached), so it goes on up to 4x as long until it has.
  const auto story_told = [&] {
    return reserve ? rxq.stats().packets_copied != 0 && out.http_rx_after_stop != 0
                   : out.report.has_value();
  };
  while (clk::now() - start < t.run || (!story_told() && clk::now() - start < 4 * t.run)) {
    auto r = rxq.poll(batch);
    if (!r) break;
    for (std::size_t k = 0; k < r->received; ++k) {
      packet& p = batch[k];
      if (dst_port(p.data()) == http_port) {
        (void)p.buffer.pass_to(http);
        ++out.http_rx;
        if (clk::now() - start >= t.ftp_stops) ++out.http_rx_after_stop;
        p = packet{};  // the web server is done with it
      } else {
        (void)p.buffer.pass_to(ftp);
        ++out.ftp_rx;
        sock.put(std::move(p));
      }
      ++rx_in_tick;
    }
    if (r->received == 0) {
      (void)rxq.refill();  // buffers the FTP server returned
      std::this_thread::sleep_for(200us);
    }
    if (!announced && clk::now() - start >= t.ftp_stops) {
      announced = true;
      std::printf("   (the FTP server stops reading its data connection now)\n");
    }
    if (clk::now() >= next_tick) {
      const auto c = rxq.census();
      const auto b = rxq.bounce_census();
      const double secs = std::chrono::duration<double>(t.tick).count();
      const std::uint32_t posted = c.posted;
      std::printf("%6.1fs | %6.0f | %s%s%s %3u | ",
                  std::chrono::duration<double>(clk::now() - start).count(),
                  static_cast<double>(rx_in_tick) / secs, posted == 0 ? red() : green(),
                  bar(posted, ring_size, 12).c_str(), plain(), posted);
      for (const auto& h : c.holders) {
        std::printf("%s %s %3u (%s) ", h.name.c_str(), bar(h.count, ring_size, 10).c_str(), h.count,
                    virtq::format_duration(h.oldest).c_str());
      }
      if (b.held != 0) std::printf("| copies held %u", b.held);
      std::printf("\n");
      rx_in_tick = 0;
      next_tick += t.tick;
    }
  }

  // Stop the device first (queue reset), then drain the receive queue with a deadline: the FTP
  // server still holds its buffers, so the report says who.
  stop.store(true);
  dev.join();
  device.reset();
  out.nic_drops = nic_drops.load();
  out.stats = rxq.stats();
  out.shutdown = rxq.shutdown(t.tick);
  std::printf("%s", virtq::to_string(out.shutdown).c_str());
  const auto& s = out.stats;
  std::printf(
      "stats: packets %llu (lent %llu, copied/resources_low %llu, copy failures %llu), "
      "allocations %llu, reposts %llu, refills %llu, kicks %llu, min posted %u, time starved %s, "
      "longest %s, reports %llu, deadline calls %llu; device found no buffer %llu times\n",
      static_cast<unsigned long long>(s.packets), static_cast<unsigned long long>(s.packets_lent),
      static_cast<unsigned long long>(s.packets_copied),
      static_cast<unsigned long long>(s.copy_failures),
      static_cast<unsigned long long>(s.allocations), static_cast<unsigned long long>(s.reposts),
      static_cast<unsigned long long>(s.refills), static_cast<unsigned long long>(s.kicks),
      s.min_posted, virtq::format_duration(s.time_starved).c_str(),
      virtq::format_duration(s.longest_starvation).c_str(),
      static_cast<unsigned long long>(s.starvation_reports),
      static_cast<unsigned long long>(s.deadline_callbacks),
      static_cast<unsigned long long>(out.nic_drops));

  // The FTP server finally closes its connection: its buffers come back.
  {
    std::lock_guard g(sock.m);
    sock.closed = true;
    sock.unread.clear();
    sock.size.store(0);
  }
  sock.cv.notify_all();
  ftp_server.join();
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  bool smoke = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--smoke") == 0) {
      smoke = true;
    } else {
      std::fprintf(stderr, "usage: %s [--smoke]\n", argv[0]);
      return 2;
    }
  }
  colour = isatty(STDOUT_FILENO) != 0;
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const timing& t = smoke ? smoke_timing : normal_timing;

  const outcome a = run(false, t);
  std::printf("\n");
  const outcome b = run(true, t);

  // The story must have happened; otherwise this is a failure, not a demo.
  std::vector<std::string> problems;
  if (!a.report) {
    problems.push_back("run 1: the starvation detector did not fire");
  } else if (a.report->census.holders.empty() ||
             a.report->census.holders.front().name != "ftp-data:3034") {
    problems.push_back("run 1: the report did not name ftp-data:3034 as the main holder");
  }
  if (b.report) problems.push_back("run 2: starvation although the reserve was on");
  if (b.stats.starvation_reports != 0) problems.push_back("run 2: starvation reports counted");
  if (b.http_rx_after_stop == 0) problems.push_back("run 2: the web server stopped receiving");
  if (b.stats.packets_copied == 0) problems.push_back("run 2: the reserve was never reached");
  if (!a.shutdown.census.conserved || !b.shutdown.census.conserved) {
    problems.push_back("a census found a conservation violation");
  }

  std::printf("\n%ssummary%s\n", bold(), plain());
  std::printf("  run 1 (reserve off): web frames after the FTP server stopped: %llu; detector %s\n",
              static_cast<unsigned long long>(a.http_rx_after_stop),
              a.report ? ("named '" + a.report->census.holders.front().name + "' holding " +
                          std::to_string(a.report->census.holders.front().count) + " buffers")
                             .c_str()
                       : "did not fire");
  std::printf(
      "  run 2 (reserve on):  web frames after the FTP server stopped: %llu; %llu "
      "resources_low copies; min posted %u; starvation reports %llu\n",
      static_cast<unsigned long long>(b.http_rx_after_stop),
      static_cast<unsigned long long>(b.stats.packets_copied), b.stats.min_posted,
      static_cast<unsigned long long>(b.stats.starvation_reports));
  for (const auto& p : problems) std::printf("%sFAILED: %s%s\n", red(), p.c_str(), plain());
  if (problems.empty())
    std::printf("%sOK: the incident happened, was named, and was prevented%s\n", green(), plain());
  return problems.empty() ? 0 : 1;
}
