// SPDX-License-Identifier: MIT
// tests/dpdk_vhost_user.cpp -- virtq's device side against a real virtio driver.
//
// DPDK's virtio-user PMD (inside dpdk-testpmd, another process) is the driver; it reaches our
// vhost-user backend (vhost_user_backend.hpp) over a unix socket and shares its memory by fd.
// The backend pops the driver's transmit queue with split_device / packed_device. testpmd is
// driven interactively through a pipe so that it sends an exact number of frames, and every
// frame is checked: the 12-byte virtio-net header (5.1.6), then a plausible IPv4/UDP frame.
// The hostile-frontend cases below play the frontend themselves and need no DPDK.
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "testpmd_child.hpp"
#include "vhost_user_backend.hpp"

namespace {

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

std::string unique_name(const char* what) {
  static std::atomic<int> counter{0};
  return std::string("virtq-") + what + "-" + std::to_string(::getpid()) + "-" +
         std::to_string(counter.fetch_add(1));
}

// --- frame checks (run on the backend's thread; the test thread reads them after join) ------

std::uint16_t be16(const std::byte* p) {
  return static_cast<std::uint16_t>((std::to_integer<unsigned>(p[0]) << 8) |
                                    std::to_integer<unsigned>(p[1]));
}
std::uint16_t le16(const std::byte* p) {
  return static_cast<std::uint16_t>(std::to_integer<unsigned>(p[0]) |
                                    (std::to_integer<unsigned>(p[1]) << 8));
}

struct frame_checker {
  std::uint64_t frames = 0;
  std::uint64_t good = 0;
  std::uint64_t slots = 0;  // ring slots (packed: where the driver resumes)
  std::map<std::uint64_t, std::uint64_t> lengths;
  std::map<std::uint32_t, std::uint64_t> descriptors;
  std::map<std::uint32_t, std::uint64_t> ring_slots;
  std::string first_bad;

  void bad(const std::string& why) {
    if (first_bad.empty()) first_bad = "frame " + std::to_string(frames) + ": " + why;
  }

  void operator()(const vhost::tx_frame& f) {
    ++frames;
    slots += f.ring_slots;
    ++lengths[f.length];
    ++descriptors[f.descriptors];
    ++ring_slots[f.ring_slots];
    const auto& b = f.bytes;
    if (f.has_writable) return bad("device-writable buffer in a transmit chain");
    constexpr std::size_t hdr = 12;  // virtio_net_hdr with num_buffers: VERSION_1 (5.1.6)
    if (b.size() != f.length) return bad("frame not fully readable");
    if (b.size() < hdr + 14 + 20 + 8) return bad("too short: " + std::to_string(b.size()));
    // 5.1.6.2: without VIRTIO_NET_F_CSUM the driver does not ask for checksumming, and without
    // any TSO/UFO feature gso_type is VIRTIO_NET_HDR_GSO_NONE.
    const unsigned flags = std::to_integer<unsigned>(b[0]);
    const unsigned gso_type = std::to_integer<unsigned>(b[1]);
    if (flags != 0) return bad("virtio-net header flags " + std::to_string(flags));
    if (gso_type != 0) return bad("virtio-net header gso_type " + std::to_string(gso_type));
    if (le16(&b[4]) != 0) return bad("gso_size without GSO");
    const std::byte* eth = b.data() + hdr;
    const std::size_t eth_len = b.size() - hdr;
    if (be16(eth + 12) != 0x0800) return bad("ethertype " + std::to_string(be16(eth + 12)));
    const std::byte* ip = eth + 14;
    if (std::to_integer<unsigned>(ip[0]) != 0x45) return bad("not IPv4 without options");
    if (be16(ip + 2) != eth_len - 14) return bad("IPv4 total length disagrees with the frame");
    if (std::to_integer<unsigned>(ip[9]) != 17) return bad("not UDP");
    std::uint32_t sum = 0;  // RFC 791: the ones' complement sum of the header is 0xFFFF
    for (int i = 0; i < 20; i += 2) sum += be16(ip + i);
    while ((sum >> 16) != 0) sum = (sum & 0xFFFFU) + (sum >> 16);
    if (sum != 0xFFFFU) return bad("IPv4 header checksum wrong");
    if (be16(ip + 20 + 4) != eth_len - 14 - 20) return bad("UDP length disagrees");
    ++good;
  }
};

/// testpmd's "TX-packets:" counts in its forward statistics (per stop), summed over all.
std::uint64_t testpmd_tx_packets(const std::string& log) {
  // The accumulated block ("Accumulated forward statistics for all ports") repeats the port's
  // numbers: only the per-port lines "TX-packets: N  TX-dropped: M" of port blocks are summed.
  std::uint64_t total = 0;
  std::istringstream in(log);
  std::string line;
  bool in_port_block = false;
  while (std::getline(in, line)) {
    if (line.find("Forward statistics for port") != std::string::npos) in_port_block = true;
    if (line.find("Accumulated forward statistics") != std::string::npos) in_port_block = false;
    const auto at = line.find("TX-packets:");
    if (in_port_block && at != std::string::npos) {
      total += std::strtoull(line.c_str() + at + 11, nullptr, 10);
      in_port_block = false;
    }
  }
  return total;
}

struct run_options {
  bool packed = false;
  bool busy_poll = false;
  int rounds = 5;  // "start tx_first <bursts>" repeated; each round waits for its frames
  int bursts = 4;  // tx_first count
  int burst = 16;  // --burst
  std::chrono::milliseconds txonly_for{0};  // > 0: a txonly rate run of this long instead
  bool indirect = false;                    // offer VIRTIO_F_INDIRECT_DESC
  bool in_order = false;                    // offer VIRTIO_F_IN_ORDER (and ask testpmd for it)
  bool batch_in_order = false;              // complete each IN_ORDER batch with one used entry
  bool exact = true;   // false: a round may fall short (a driver that stalls); 1 s per round
  std::string txpkts;  // testpmd --txpkts: segment sizes of each frame
  // What each chain must look like (0: do not check).
  std::uint32_t want_descriptors = 0;
  std::uint32_t want_slots = 0;

  std::string name() const {
    std::string n = packed ? "packed" : "split";
    if (indirect) n += "+indirect";
    if (in_order) n += batch_in_order ? "+in_order(batched used)" : "+in_order";
    if (!txpkts.empty()) n += "+txpkts " + txpkts;
    return n;
  }
};

struct run_result {
  bool skipped = false;
  vhost::session_report report;
  frame_checker frames;
  std::vector<std::uint64_t> after_round;  // frames seen when each round settled
  std::uint64_t testpmd_tx = 0;
  std::string log;
  std::string failure;  // a step of the harness that did not happen in time
};

std::string tail(const std::string& s, std::size_t n = 3000) {
  return s.size() <= n ? s : s.substr(s.size() - n);
}

run_result run_testpmd(const run_options& o) {
  run_result res;
  const std::string testpmd = testpmd::find();
  if (testpmd.empty()) {
    res.skipped = true;
    return res;
  }
  const std::string name = unique_name(o.packed ? "packed" : "split");
  const std::string sock = "/tmp/" + name + ".sock";
  const std::string log = "/tmp/" + name + ".log";
  const std::string prefix = name;

  vhost::backend_options bo;
  bo.socket_path = sock;
  bo.busy_poll = o.busy_poll;
  bo.offer_indirect = o.indirect;
  bo.offer_in_order = o.in_order;
  bo.batch_in_order = o.batch_in_order;
  bo.cpu = 1;  // testpmd's two lcores share CPU 0
  bo.accept_timeout = 20s;
  bo.session_timeout = 60s;
  vhost::backend be(bo);

  std::atomic<bool> stop{false}, done{false};
  const vhost::frame_sink sink = [&](const vhost::tx_frame& f) { res.frames(f); };
  std::thread server([&] {
    res.report = be.serve(sink, &stop);
    done.store(true, std::memory_order_release);
  });

  const bool txonly = o.txonly_for.count() > 0;
  std::string vdev = "net_virtio_user0,path=" + sock + ",queues=1,queue_size=256";
  if (o.packed) vdev += ",packed_vq=1";
  vdev += o.in_order ? ",in_order=1" : ",in_order=0";
  std::vector<std::string> argv = testpmd::command_line(testpmd, prefix, vdev);
  argv.insert(argv.end(), {"--burst=" + std::to_string(o.burst),
                           txonly ? "--forward-mode=txonly" : "--forward-mode=io"});
  if (!o.txpkts.empty()) {
    // Frames of several segments: the header cannot be pushed in front of the data, so each
    // chain is a header descriptor and one per segment (or an indirect table of them).
    argv.push_back("--txpkts=" + o.txpkts);
    argv.push_back("--tx-offloads=0x8000");  // RTE_ETH_TX_OFFLOAD_MULTI_SEGS
  }
  try {
    testpmd::child pmd(argv, log);
    const auto wait_for = [&](auto pred, std::chrono::milliseconds t) {
      const auto deadline = clock_type::now() + t;
      while (!pred()) {
        if (clock_type::now() >= deadline || done.load(std::memory_order_acquire)) return pred();
        std::this_thread::sleep_for(2ms);
      }
      return true;
    };
    if (!wait_for([&] { return be.tx_started(); }, 20s)) {
      res.failure = "the transmit ring never started";
    } else if (txonly) {
      pmd.write("start\n");
      std::this_thread::sleep_for(o.txonly_for);
      pmd.write("stop\n");
      wait_for([] { return false; }, 300ms);  // the last in-flight frames
    } else {
      const std::uint64_t per_round =
          static_cast<std::uint64_t>(o.bursts) * static_cast<std::uint64_t>(o.burst);
      for (int r = 1; r <= o.rounds && res.failure.empty(); ++r) {
        pmd.write("start tx_first " + std::to_string(o.bursts) + "\n");
        const std::uint64_t want = per_round * static_cast<std::uint64_t>(r);
        if (!wait_for([&] { return be.tx_frames() >= want; }, o.exact ? 10s : 1s) && o.exact) {
          res.failure = "round " + std::to_string(r) + ": " + std::to_string(be.tx_frames()) +
                        " frames, expected " + std::to_string(want);
        }
        wait_for([] { return false; }, 50ms);  // anything beyond the exact count shows up now
        res.after_round.push_back(be.tx_frames());
        pmd.write("stop\n");
      }
    }
    pmd.write("quit\n");
    pmd.close_stdin();
    if (!pmd.wait_exit(20s)) {
      if (res.failure.empty()) res.failure = "testpmd did not quit";
      pmd.kill_now();
    }
  } catch (const std::exception& e) {  // the server thread must be joined whatever happens
    res.failure = std::string("launching testpmd: ") + e.what();
  }
  // The backend ends when testpmd's connection closes; a hung session is stopped.
  const auto deadline = clock_type::now() + 5s;
  while (!done.load(std::memory_order_acquire) && clock_type::now() < deadline) {
    std::this_thread::sleep_for(5ms);
  }
  stop.store(true, std::memory_order_release);
  server.join();
  res.log = testpmd::read_file(log);
  res.testpmd_tx = testpmd_tx_packets(res.log);
  std::error_code ec;
  std::filesystem::remove_all("/var/run/dpdk/" + prefix, ec);
  std::filesystem::remove(log, ec);
  return res;
}

/// The driver-visible position after `slots` ring slots of a packed ring of `size`: offset in
/// bits 0-14, wrap counter (starting at 1, 2.8.1) in bit 15.
std::uint32_t packed_position(std::uint64_t slots, std::uint32_t size) {
  const std::uint64_t laps = slots / size;
  const auto off = static_cast<std::uint32_t>(slots % size);
  return off | ((laps % 2 == 0) ? 0x8000U : 0U);
}

void check_exact_run(const run_options& o, const run_result& r) {
  INFO(o.name());
  INFO(tail(r.log));
  INFO("harness: " << r.failure);
  INFO("backend: " << r.report.error);
  REQUIRE(r.failure.empty());
  REQUIRE(r.report.connected);
  REQUIRE(r.report.error.empty());
  REQUIRE(r.report.disconnected);
  const auto& tx = r.report.queues[1];
  const auto& rx = r.report.queues[0];
  const std::uint64_t per_round =
      static_cast<std::uint64_t>(o.bursts) * static_cast<std::uint64_t>(o.burst);
  const std::uint64_t expected = per_round * static_cast<std::uint64_t>(o.rounds);
  // Exactly as many frames as asked for, round by round, and as testpmd says it sent.
  REQUIRE(r.after_round.size() == static_cast<std::size_t>(o.rounds));
  for (std::size_t i = 0; i < r.after_round.size(); ++i) {
    CHECK(r.after_round[i] == per_round * (i + 1));
  }
  CHECK(r.frames.frames == expected);
  CHECK(r.testpmd_tx == expected);
  CHECK(tx.frames == expected);
  INFO("first bad frame: " << r.frames.first_bad);
  CHECK(r.frames.good == expected);
  // The rings were what was negotiated, and neither queue ever broke.
  CHECK(tx.started);
  CHECK(rx.started);
  CHECK(tx.packed == o.packed);
  CHECK(((r.report.features >> virtq::feature::ring_packed) & 1U) == (o.packed ? 1U : 0U));
  CHECK(((r.report.features >> virtq::feature::version_1) & 1U) == 1U);
  CHECK(((r.report.features >> virtq::feature::in_order) & 1U) == (o.in_order ? 1U : 0U));
  if (o.want_descriptors != 0) {
    CHECK(r.frames.descriptors.size() == 1);
    CHECK(r.frames.descriptors.count(o.want_descriptors) == 1);
  }
  if (o.want_slots != 0) {
    CHECK(r.frames.ring_slots.size() == 1);
    CHECK(r.frames.ring_slots.count(o.want_slots) == 1);
  }
  CHECK_FALSE(tx.broken);
  CHECK_FALSE(rx.broken);
  CHECK(tx.stats.rejected() == 0);
  CHECK(tx.stats.popped == expected);
  CHECK(tx.stats.completed == expected);
  CHECK(tx.via_batch + tx.via_chain == expected);
  CHECK(rx.stats.popped == 0);
  // The driver stopped both rings, and the positions we reported are where it resumes.
  CHECK(tx.got_vring_base);
  CHECK(rx.got_vring_base);
  if (o.packed) {
    CHECK(tx.vring_base == packed_position(r.frames.slots, tx.size));
    CHECK(rx.vring_base == 0x8000U);
  } else {
    CHECK(tx.vring_base == static_cast<std::uint32_t>(expected & 0xFFFFU));
    CHECK(rx.vring_base == 0U);
  }
  std::ostringstream shape;
  for (const auto& [len, n] : r.frames.lengths) shape << " len " << len << " x" << n << ";";
  for (const auto& [d, n] : r.frames.descriptors) shape << " " << d << " desc x" << n << ";";
  for (const auto& [d, n] : r.frames.ring_slots) shape << " " << d << " slots x" << n << ";";
  WARN(o.name() << ": " << r.frames.frames << " frames (" << tx.via_batch << " via " << tx.batches
                << " batch calls, " << tx.via_chain << " via pop(chain)), kicks " << tx.kicks
                << ", calls " << tx.calls << ", vring base 0x" << std::hex << tx.vring_base
                << std::dec << ";" << shape.str());
}

}  // namespace

TEST_CASE("virtio-user split ring: exact frame count into split_device", "[dpdk][vhost-user]") {
  run_options o;
  o.want_descriptors = 1;  // VERSION_1: the header is pushed in front of the frame (5.1.6)
  const run_result r = run_testpmd(o);
  if (r.skipped) {
    WARN("dpdk-testpmd is not installed: skipped");
    return;
  }
  check_exact_run(o, r);
}

TEST_CASE("virtio-user packed ring: exact frame count into packed_device", "[dpdk][vhost-user]") {
  run_options o;
  o.packed = true;
  o.want_descriptors = o.want_slots = 1;
  const run_result r = run_testpmd(o);
  if (r.skipped) {
    WARN("dpdk-testpmd is not installed: skipped");
    return;
  }
  check_exact_run(o, r);
}

TEST_CASE("virtio-user chain shapes: linked, indirect and in-order chains into both layouts",
          "[dpdk][vhost-user]") {
  for (const bool packed : {false, true}) {
    // hdr + 2 segments linked by NEXT; the same through an indirect table (one ring slot;
    // split only, see the next test for packed); IN_ORDER with one-descriptor chains and with
    // linked ones.
    std::vector<run_options> variants(4);
    variants[0].txpkts = "40,24";
    variants[0].want_descriptors = variants[0].want_slots = 3;
    variants[1].in_order = true;
    variants[1].want_descriptors = variants[1].want_slots = 1;
    variants[2].in_order = true;
    variants[2].txpkts = "40,24";
    variants[2].want_descriptors = variants[2].want_slots = 3;
    variants[3].txpkts = "40,24";
    variants[3].indirect = true;
    variants[3].want_descriptors = 3;
    variants[3].want_slots = 1;
    variants.push_back(variants[1]);        // IN_ORDER, a batch given back as one used entry
    variants.back().batch_in_order = true;  // (within one lap of the ring: see below)
    if (packed) variants.erase(variants.begin() + 3);  // indirect: see the next test
    for (run_options& o : variants) {
      o.packed = packed;
      o.rounds = 3;
      const run_result r = run_testpmd(o);
      if (r.skipped) {
        WARN("dpdk-testpmd is not installed: skipped");
        return;
      }
      check_exact_run(o, r);
    }
  }
}

// DPDK 22.11's virtio PMD fills a packed indirect table with the header entry marked WRITE
// (0x2) and the data entries with AVAIL and NEXT (0x81, 0x80): 2.8.7 "The driver MUST NOT set
// any flags except DESC_F_WRITE within an indirect descriptor", and a device-writable header
// before device-readable data also breaks 2.8.4. packed_device refuses the chain: this pins
// that the refusal is clean (queue broken with the rule named, no frame delivered, testpmd
// disconnected and quits) rather than a crash or a hang.
TEST_CASE("virtio-user packed indirect chains break the 2.8.7 flag rule and are refused cleanly",
          "[dpdk][vhost-user]") {
  run_options o;
  o.packed = true;
  o.indirect = true;
  o.txpkts = "40,24";
  o.rounds = 1;
  const run_result r = run_testpmd(o);
  if (r.skipped) {
    WARN("dpdk-testpmd is not installed: skipped");
    return;
  }
  INFO(tail(r.log));
  INFO("harness: " << r.failure);
  CHECK_THAT(r.report.error, Catch::Contains("packed indirect entry with flags other than WRITE") &&
                                 Catch::Contains("indirect entries' flags: 0x2 0x81 0x80"));
  CHECK(r.report.queues[1].broken);
  CHECK(r.report.queues[1].error == virtq::errc::indirect_bad_flags);
  CHECK(r.frames.frames == 0);
  CHECK(r.failure.find("did not quit") == std::string::npos);
}

// 2.7.9 / 2.8.11: with IN_ORDER a device may give a whole batch back with ONE used entry (the
// last chain's id). Over more than a lap of the ring this shows whether the driver reclaims
// every chain of the batch. Whatever the driver does, our side must stay exact: every frame
// the driver counts as sent arrives intact, the queue never breaks, the stop is answered.
// (Observed with DPDK 22.11: the packed ring takes it; the split ring's in-order transmit
// path reclaims one descriptor per used entry, so it stalls after about a ring's worth.)
TEST_CASE("virtio-user IN_ORDER with batched used entries over several laps",
          "[dpdk][vhost-user]") {
  for (const bool packed : {false, true}) {
    run_options o;
    o.packed = packed;
    o.in_order = true;
    o.batch_in_order = true;
    o.rounds = 8;  // 512 chains on a ring of 256
    o.exact = false;
    const run_result r = run_testpmd(o);
    if (r.skipped) {
      WARN("dpdk-testpmd is not installed: skipped");
      return;
    }
    INFO(o.name());
    INFO(tail(r.log));
    INFO("harness: " << r.failure << "; backend: " << r.report.error);
    REQUIRE(r.failure.empty());
    REQUIRE(r.report.error.empty());
    const auto& tx = r.report.queues[1];
    CHECK(r.frames.frames == r.testpmd_tx);
    CHECK(r.frames.good == r.frames.frames);
    CHECK_FALSE(tx.broken);
    CHECK(tx.stats.completed == tx.stats.popped);
    CHECK(tx.got_vring_base);
    CHECK(tx.vring_base == (packed ? packed_position(r.frames.slots, tx.size)
                                   : static_cast<std::uint32_t>(r.frames.frames & 0xFFFFU)));
    std::ostringstream rounds;
    for (const auto n : r.after_round) rounds << " " << n;
    WARN(o.name() << ": " << r.frames.frames << " of " << 8 * 64
                  << " frames arrived; after each round:" << rounds.str());
  }
}

TEST_CASE("virtio-user txonly rate into our device: report only", "[dpdk][vhost-user][rate]") {
  for (const bool packed : {false, true}) {
    run_options o;
    o.packed = packed;
    o.busy_poll = true;
    o.burst = 32;
    o.txonly_for = 2000ms;
    const run_result r = run_testpmd(o);
    if (r.skipped) {
      WARN("dpdk-testpmd is not installed: skipped");
      return;
    }
    INFO(tail(r.log));
    INFO("harness: " << r.failure << "; backend: " << r.report.error);
    REQUIRE(r.failure.empty());
    REQUIRE(r.report.error.empty());
    const auto& tx = r.report.queues[1];
    // No timed assertion: only that every frame testpmd counts as sent arrived intact.
    CHECK(r.frames.frames == r.testpmd_tx);
    CHECK(r.frames.good == r.frames.frames);
    CHECK_FALSE(tx.broken);
    CHECK(tx.got_vring_base);
    const double secs = std::chrono::duration<double>(tx.last_frame - tx.first_frame).count();
    const double mpps = secs > 0 ? static_cast<double>(tx.frames) / secs / 1e6 : 0.0;
    WARN((packed ? "packed" : "split")
         << " txonly: " << tx.frames << " frames in " << secs << " s = " << mpps
         << " Mpps (busy-polling device; " << tx.idle_polls << " idle / " << tx.busy_polls
         << " busy service turns, " << (tx.busy_polls ? tx.frames / tx.busy_polls : 0)
         << " frames per busy turn)");
  }
}

// --- a hostile frontend: bad input gives a clear error, never a crash --------------------------

namespace {

struct fake_session {
  std::string sock = "/tmp/" + unique_name("hostile") + ".sock";
  vhost::backend be{[this] {
    vhost::backend_options o;
    o.socket_path = sock;
    o.accept_timeout = 5s;
    o.session_timeout = 5s;
    return o;
  }()};
  vhost::session_report report;
  std::thread server;
  vhost::unique_fd fd;
  std::uint64_t frames = 0;
  std::vector<std::uint64_t> lengths;
  std::vector<unsigned> first_bytes;
  vhost::frame_sink sink = [this](const vhost::tx_frame& f) {
    ++frames;
    lengths.push_back(f.length);
    first_bytes.push_back(f.bytes.empty() ? 0U : std::to_integer<unsigned>(f.bytes[0]));
  };

  fake_session() {
    server = std::thread([this] { report = be.serve(sink); });
    fd = vhost::backend::connect_to(sock);
  }
  ~fake_session() {
    if (server.joinable()) server.join();
  }
  void send(vhost::request r, std::span<const std::byte> payload = {},
            std::span<const int> fds = {}) {
    vhost::backend::send_message(fd.get(), static_cast<std::uint32_t>(r), payload, fds);
  }
  /// Ends the session (closing our end) and returns the backend's verdict.
  const vhost::session_report& finish() {
    fd.reset();
    server.join();
    return report;
  }
};

template <class... T>
std::vector<std::byte> pack(T... v) {
  std::vector<std::byte> b;
  (
      [&] {
        const auto at = b.size();
        b.resize(at + sizeof(v));
        std::memcpy(b.data() + at, &v, sizeof(v));
      }(),
      ...);
  return b;
}

/// A memfd of `bytes`, as a frontend's guest memory.
vhost::unique_fd memory_file(std::size_t bytes) {
  vhost::unique_fd fd(::memfd_create("virtq-guest", MFD_CLOEXEC));
  REQUIRE(fd);
  REQUIRE(::ftruncate(fd.get(), static_cast<off_t>(bytes)) == 0);
  return fd;
}

std::vector<std::byte> one_region(std::uint64_t gpa, std::uint64_t size, std::uint64_t uva,
                                  std::uint64_t offset) {
  return pack(std::uint32_t{1}, std::uint32_t{0}, gpa, size, uva, offset);
}

}  // namespace

TEST_CASE("vhost-user backend: a clean session without rings ends without error",
          "[vhost-user][hostile]") {
  fake_session s;
  s.send(vhost::request::set_owner);
  s.send(vhost::request::get_features);
  std::uint8_t reply[20] = {};
  REQUIRE(::recv(s.fd.get(), reply, sizeof(reply), MSG_WAITALL) == 20);
  std::uint32_t hdr[3];
  std::uint64_t features;
  std::memcpy(hdr, reply, 12);
  std::memcpy(&features, reply + 12, 8);
  CHECK(hdr[0] == 1U);
  CHECK(hdr[1] == (vhost::flag_version | vhost::flag_reply));
  CHECK(hdr[2] == 8U);
  CHECK(((features >> virtq::feature::version_1) & 1U) == 1U);
  CHECK(((features >> vhost::feature_protocol_features) & 1U) == 0U);
  CHECK(((features >> virtq::feature::event_idx) & 1U) == 0U);
  const auto& r = s.finish();
  CHECK(r.error.empty());
  CHECK(r.disconnected);
}

TEST_CASE("vhost-user backend: malformed messages are named, not crashed on",
          "[vhost-user][hostile]") {
  SECTION("short header") {
    fake_session s;
    const auto b = pack(std::uint32_t{3}, std::uint16_t{1});  // 6 of 12 bytes, then EOF
    vhost::backend::send_raw(s.fd.get(), b);
    CHECK_THAT(s.finish().error, Catch::Contains("short message"));
  }
  SECTION("payload shorter than its header says") {
    fake_session s;
    const auto b = pack(std::uint32_t{2}, std::uint32_t{1}, std::uint32_t{8}, std::uint32_t{0});
    vhost::backend::send_raw(s.fd.get(), b);
    CHECK_THAT(s.finish().error, Catch::Contains("SET_FEATURES: short message"));
  }
  SECTION("oversized payload") {
    fake_session s;
    const auto b = pack(std::uint32_t{5}, std::uint32_t{1}, std::uint32_t{1U << 20});
    vhost::backend::send_raw(s.fd.get(), b);
    CHECK_THAT(s.finish().error, Catch::Contains("exceeds the largest message"));
  }
  SECTION("unknown request") {
    fake_session s;
    s.send(static_cast<vhost::request>(77));
    CHECK_THAT(s.finish().error, Catch::Contains("unknown request 77"));
  }
  SECTION("wrong version bits") {
    fake_session s;
    vhost::backend::send_message(s.fd.get(), 3, {}, {}, 2);
    CHECK_THAT(s.finish().error, Catch::Contains("header version 2"));
  }
  SECTION("wrong payload size for the request") {
    fake_session s;
    s.send(vhost::request::set_vring_num, pack(std::uint32_t{1}));
    CHECK_THAT(s.finish().error, Catch::Contains("SET_VRING_NUM: payload of 4 bytes, expected 8"));
  }
  SECTION("features that were not offered") {
    fake_session s;
    s.send(vhost::request::set_features,
           pack(std::uint64_t{1} << vhost::feature_protocol_features));
    CHECK_THAT(s.finish().error, Catch::Contains("were not offered"));
  }
  SECTION("protocol features were declined") {
    fake_session s;
    s.send(vhost::request::get_protocol_features);
    CHECK_THAT(s.finish().error, Catch::Contains("did not offer"));
  }
  SECTION("a queue that does not exist") {
    fake_session s;
    s.send(vhost::request::set_vring_num, pack(std::uint32_t{7}, std::uint32_t{256}));
    CHECK_THAT(s.finish().error, Catch::Contains("queue 7 does not exist"));
  }
  SECTION("kick without its fd") {
    fake_session s;
    s.send(vhost::request::set_vring_kick, pack(std::uint64_t{1}));
    CHECK_THAT(s.finish().error, Catch::Contains("0 fds attached, expected 1"));
  }
}

TEST_CASE("vhost-user backend: memory tables that cannot be mapped are refused",
          "[vhost-user][hostile]") {
  SECTION("fd is a pipe, not memory") {
    fake_session s;
    int p[2];
    REQUIRE(::pipe(p) == 0);
    vhost::unique_fd a(p[0]), b(p[1]);
    const int fds[1] = {a.get()};
    s.send(vhost::request::set_mem_table, one_region(0x1000, 0x1000, 0x7000, 0), fds);
    CHECK_THAT(s.finish().error, Catch::Contains("not a memory file"));
  }
  SECTION("region runs past the end of its file") {
    fake_session s;
    const auto m = memory_file(0x2000);
    const int fds[1] = {m.get()};
    s.send(vhost::request::set_mem_table, one_region(0x1000, 0x2000, 0x7000, 0x1000), fds);
    CHECK_THAT(s.finish().error, Catch::Contains("file is only 0x2000 bytes"));
  }
  SECTION("region count and fds disagree") {
    fake_session s;
    const auto m = memory_file(0x2000);
    const int fds[1] = {m.get()};
    auto two = pack(std::uint32_t{2}, std::uint32_t{0});
    for (int i = 0; i < 2; ++i) {
      const auto r = pack(std::uint64_t{0x1000}, std::uint64_t{0x1000}, std::uint64_t{0x7000},
                          std::uint64_t{0});
      two.insert(two.end(), r.begin(), r.end());
    }
    s.send(vhost::request::set_mem_table, two, fds);
    CHECK_THAT(s.finish().error, Catch::Contains("1 fds attached, expected 2"));
  }
  SECTION("a region wrapping 2^64") {
    fake_session s;
    const auto m = memory_file(0x2000);
    const int fds[1] = {m.get()};
    s.send(vhost::request::set_mem_table, one_region(~std::uint64_t{0} - 0xFFF, 0x2000, 0x7000, 0),
           fds);
    CHECK_THAT(s.finish().error, Catch::Contains("wraps 2^64"));
  }
  SECTION("overlapping regions") {
    fake_session s;
    const auto m = memory_file(0x4000);
    const int fds[2] = {m.get(), m.get()};
    auto two = pack(std::uint32_t{2}, std::uint32_t{0});
    for (std::uint64_t i = 0; i < 2; ++i) {
      const auto r = pack(std::uint64_t{0x10000 + i * 0x1000}, std::uint64_t{0x2000},
                          std::uint64_t{0x70000 + i * 0x4000}, std::uint64_t{0});
      two.insert(two.end(), r.begin(), r.end());
    }
    s.send(vhost::request::set_mem_table, two, fds);
    CHECK_THAT(s.finish().error, Catch::Contains("overlap"));
  }
}

TEST_CASE("vhost-user backend: ring addresses outside the shared memory are refused",
          "[vhost-user][hostile]") {
  // One 64 KiB region at guest 0x100000 = user 0x7f0000000000; a split ring of 256 needs
  // 4096 + 518 + 2054 bytes, so a ring that starts 0x10 bytes before the end does not fit.
  const std::uint64_t gpa = 0x100000, uva = 0x7f0000000000, size = 0x10000;
  const auto set_up = [&](fake_session& s, const vhost::unique_fd& m, std::uint64_t desc,
                          std::uint64_t avail, std::uint64_t used,
                          std::uint64_t features = std::uint64_t{1} << virtq::feature::version_1,
                          std::uint32_t base = 0) {
    const int fds[1] = {m.get()};
    s.send(vhost::request::set_owner);
    s.send(vhost::request::set_features, pack(features));
    s.send(vhost::request::set_mem_table, one_region(gpa, size, uva, 0), fds);
    s.send(vhost::request::set_vring_num, pack(std::uint32_t{1}, std::uint32_t{256}));
    s.send(vhost::request::set_vring_base, pack(std::uint32_t{1}, base));
    s.send(vhost::request::set_vring_addr,
           pack(std::uint32_t{1}, std::uint32_t{0}, desc, used, avail, std::uint64_t{0}));
    vhost::unique_fd kick(::eventfd(0, EFD_CLOEXEC));
    const int kfd[1] = {kick.get()};
    s.send(vhost::request::set_vring_kick, pack(std::uint64_t{1}), kfd);
    return kick;
  };
  SECTION("descriptor table at a guest-physical instead of a user address") {
    fake_session s;
    const auto m = memory_file(size);
    set_up(s, m, gpa, uva + 0x1000, uva + 0x2000);
    CHECK_THAT(s.finish().error,
               Catch::Contains("queue 1: descriptor table at user address 0x100000") &&
                   Catch::Contains("outside every memory region"));
  }
  SECTION("used ring running past the region's end") {
    fake_session s;
    const auto m = memory_file(size);
    set_up(s, m, uva, uva + 0x1000, uva + size - 0x10);
    CHECK_THAT(s.finish().error,
               Catch::Contains("used ring") && Catch::Contains("crosses the end of its region"));
  }
  SECTION("a split ring whose used idx disagrees with its base (chains in flight) is refused") {
    fake_session s;
    const auto m = memory_file(size);
    set_up(s, m, uva, uva + 0x1000, uva + 0x2000, std::uint64_t{1} << virtq::feature::version_1, 5);
    CHECK_THAT(s.finish().error, Catch::Contains("used idx 0 differs from SET_VRING_BASE 5"));
  }
  SECTION("a packed ring offset outside the ring is refused") {
    fake_session s;
    const auto m = memory_file(size);
    set_up(s, m, uva, uva + 0x1000, uva + 0x1004,
           (std::uint64_t{1} << virtq::feature::version_1) |
               (std::uint64_t{1} << virtq::feature::ring_packed),
           0x8000U | 256U);  // offset 256 of a 256-descriptor ring
    CHECK_THAT(s.finish().error, Catch::Contains("offset not below the queue size"));
  }
  SECTION("a packed ring resumed at offset 5, wrap 0 starts there and reports it back") {
    fake_session s;
    const auto m = memory_file(size);
    {
      // A ring in its second lap: every descriptor was used in the first one (2.8.1: AVAIL ==
      // USED == 1), so with wrap counter 0 none is available yet.
      void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, m.get(), 0);
      REQUIRE(p != MAP_FAILED);
      for (std::size_t i = 0; i < 256; ++i) {
        const std::uint16_t used_lap1 = 0x8080;
        std::memcpy(static_cast<std::byte*>(p) + 16 * i + 14, &used_lap1, 2);
      }
      ::munmap(p, size);
    }
    const auto kick = set_up(s, m, uva, uva + 0x1000, uva + 0x1004,
                             (std::uint64_t{1} << virtq::feature::version_1) |
                                 (std::uint64_t{1} << virtq::feature::ring_packed),
                             0x0005);
    s.send(vhost::request::get_vring_base, pack(std::uint32_t{1}, std::uint32_t{0}));
    std::uint8_t reply[20] = {};
    pollfd pf{s.fd.get(), POLLIN, 0};
    REQUIRE(::poll(&pf, 1, 3000) == 1);
    const auto got = ::recv(s.fd.get(), reply, sizeof(reply), MSG_WAITALL);
    if (got != 20) FAIL_CHECK(s.finish().error);
    REQUIRE(got == 20);
    std::uint32_t state[2];
    std::memcpy(state, reply + 12, 8);
    CHECK(state[0] == 1U);
    CHECK(state[1] == 0x0005U);  // the device's own avail_position(): nothing was popped
    CHECK(s.finish().error.empty());
  }
  SECTION("a kick fd that hangs up") {
    fake_session s;
    const auto m = memory_file(size);
    const int fds[1] = {m.get()};
    s.send(vhost::request::set_features, pack(std::uint64_t{1} << virtq::feature::version_1));
    s.send(vhost::request::set_mem_table, one_region(gpa, size, uva, 0), fds);
    s.send(vhost::request::set_vring_num, pack(std::uint32_t{1}, std::uint32_t{256}));
    s.send(vhost::request::set_vring_addr, pack(std::uint32_t{1}, std::uint32_t{0}, uva,
                                                uva + 0x2000, uva + 0x1000, std::uint64_t{0}));
    int p[2];
    REQUIRE(::pipe(p) == 0);
    vhost::unique_fd rd(p[0]), wr(p[1]);
    const int kfd[1] = {rd.get()};
    s.send(vhost::request::set_vring_kick, pack(std::uint64_t{1}), kfd);
    wr.reset();
    pollfd pf{s.fd.get(), POLLIN, 0};
    CHECK(::poll(&pf, 1, 3000) == 1);  // the backend ends the session on its own
    CHECK_THAT(s.finish().error, Catch::Contains("kick fd hung up"));
  }
  SECTION("misaligned descriptor table") {
    fake_session s;
    const auto m = memory_file(size);
    set_up(s, m, uva + 8, uva + 0x1008, uva + 0x2000);
    CHECK_THAT(s.finish().error, Catch::Contains("queue 1: ring area is misaligned"));
  }
  SECTION("a well-placed ring starts, and a bad descriptor breaks the queue, not the process") {
    fake_session s;
    const auto m = memory_file(size);
    const auto kick = set_up(s, m, uva, uva + 0x1000, uva + 0x2000);
    // Write one chain through our own mapping of the memfd: a descriptor naming memory
    // outside the table. The backend must report the broken queue.
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, m.get(), 0);
    REQUIRE(p != MAP_FAILED);
    auto* bytes = static_cast<std::byte*>(p);
    const std::uint64_t addr = 0xdead0000;  // no region there
    const std::uint32_t len = 64;
    const std::uint16_t flags = 0, next = 0, idx = 1, head = 0;
    std::memcpy(bytes + 0, &addr, 8);
    std::memcpy(bytes + 8, &len, 4);
    std::memcpy(bytes + 12, &flags, 2);
    std::memcpy(bytes + 14, &next, 2);
    std::memcpy(bytes + 0x1000 + 4, &head, 2);  // avail ring[0]
    std::atomic_ref<std::uint16_t>(*reinterpret_cast<std::uint16_t*>(bytes + 0x1000 + 2))
        .store(idx, std::memory_order_release);  // avail idx
    const std::uint64_t one = 1;
    REQUIRE(::write(kick.get(), &one, sizeof(one)) == sizeof(one));
    // The backend ends the session itself once the queue broke: our end sees the close.
    pollfd pf{s.fd.get(), POLLIN, 0};
    CHECK(::poll(&pf, 1, 3000) == 1);
    const auto& r = s.finish();
    ::munmap(p, size);
    CHECK_THAT(r.error, Catch::Contains("transmit queue broken") &&
                            Catch::Contains("outside every memory region"));
    CHECK(s.frames == 0);
    CHECK(r.queues[1].broken);
    CHECK(r.queues[1].error == virtq::errc::address_out_of_range);
  }
}

TEST_CASE("vhost-user backend: a split ring resumed at SET_VRING_BASE 65530 crosses the wrap",
          "[vhost-user]") {
  // A well-behaved frontend played by the test: 12 one-descriptor chains posted from avail
  // idx 65530 (device_options::initial_index), so both indices wrap past 65535.
  const std::uint64_t gpa = 0x100000, uva = 0x7f0000000000, size = 0x10000;
  const std::uint32_t qsize = 256;
  const std::uint16_t base = 65530;
  const int chains = 12;
  fake_session s;
  const auto m = memory_file(size);
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, m.get(), 0);
  REQUIRE(p != MAP_FAILED);
  auto* bytes = static_cast<std::byte*>(p);
  auto* avail_idx = reinterpret_cast<std::uint16_t*>(bytes + 0x1000 + 2);
  auto* used_idx = reinterpret_cast<std::uint16_t*>(bytes + 0x2000 + 2);
  *avail_idx = base;
  *used_idx = base;  // every chain before the base came back (no inflight)
  const int fds[1] = {m.get()};
  s.send(vhost::request::set_owner);
  s.send(vhost::request::set_features, pack(std::uint64_t{1} << virtq::feature::version_1));
  s.send(vhost::request::set_mem_table, one_region(gpa, size, uva, 0), fds);
  s.send(vhost::request::set_vring_num, pack(std::uint32_t{1}, qsize));
  s.send(vhost::request::set_vring_base, pack(std::uint32_t{1}, std::uint32_t{base}));
  s.send(vhost::request::set_vring_addr, pack(std::uint32_t{1}, std::uint32_t{0}, uva, uva + 0x2000,
                                              uva + 0x1000, std::uint64_t{0}));
  vhost::unique_fd kick(::eventfd(0, EFD_CLOEXEC));
  const int kfd[1] = {kick.get()};
  s.send(vhost::request::set_vring_kick, pack(std::uint64_t{1}), kfd);
  // Chains: descriptor i -> 64 bytes at guest 0x104000 + 64 i (a guest-physical address,
  // unlike the ring addresses above), each filled with its own index.
  for (int i = 0; i < chains; ++i) {
    const std::uint64_t addr = gpa + 0x4000 + 64U * static_cast<std::uint64_t>(i);
    const std::uint32_t len = 64;
    const std::uint16_t flags = 0, next = 0;
    std::byte* d = bytes + 16 * i;
    std::memcpy(d, &addr, 8);
    std::memcpy(d + 8, &len, 4);
    std::memcpy(d + 12, &flags, 2);
    std::memcpy(d + 14, &next, 2);
    std::memset(bytes + 0x4000 + 64 * i, i + 1, 64);
    const auto slot = static_cast<std::uint16_t>(base + i) % qsize;
    const auto head = static_cast<std::uint16_t>(i);
    std::memcpy(bytes + 0x1000 + 4 + 2 * slot, &head, 2);
  }
  std::atomic_ref<std::uint16_t>(*avail_idx)
      .store(static_cast<std::uint16_t>(base + chains), std::memory_order_release);
  const std::uint64_t one = 1;
  REQUIRE(::write(kick.get(), &one, sizeof(one)) == sizeof(one));
  const auto deadline = clock_type::now() + 3s;
  while (s.be.tx_frames() < static_cast<std::uint64_t>(chains) && clock_type::now() < deadline) {
    std::this_thread::sleep_for(1ms);
  }
  // Stop the ring: the reply names where the driver resumes, past the wrap.
  s.send(vhost::request::get_vring_base, pack(std::uint32_t{1}, std::uint32_t{0}));
  std::uint8_t reply[20] = {};
  pollfd pf{s.fd.get(), POLLIN, 0};
  REQUIRE(::poll(&pf, 1, 3000) == 1);
  REQUIRE(::recv(s.fd.get(), reply, sizeof(reply), MSG_WAITALL) == 20);
  std::uint32_t hdr[3], state[2];
  std::memcpy(hdr, reply, 12);
  std::memcpy(state, reply + 12, 8);
  CHECK(hdr[0] == 11U);
  CHECK(hdr[1] == (vhost::flag_version | vhost::flag_reply));
  CHECK(state[0] == 1U);
  CHECK(state[1] == static_cast<std::uint16_t>(base + chains));
  CHECK(std::atomic_ref<std::uint16_t>(*used_idx).load(std::memory_order_acquire) ==
        static_cast<std::uint16_t>(base + chains));
  for (int i = 0; i < chains; ++i) {  // used ring: each chain once, in order, 0 bytes written
    const auto slot = static_cast<std::uint16_t>(base + i) % qsize;
    std::uint32_t id, len;
    std::memcpy(&id, bytes + 0x2000 + 4 + 8 * slot, 4);
    std::memcpy(&len, bytes + 0x2000 + 4 + 8 * slot + 4, 4);
    CHECK(id == static_cast<std::uint32_t>(i));
    CHECK(len == 0U);
  }
  const auto& r = s.finish();
  ::munmap(p, size);
  CHECK(r.error.empty());
  CHECK(s.frames == static_cast<std::uint64_t>(chains));
  for (std::size_t i = 0; i < s.first_bytes.size(); ++i) {  // each buffer read, in order
    CHECK(s.first_bytes[i] == i + 1);
    CHECK(s.lengths[i] == 64U);
  }
  CHECK(r.queues[1].got_vring_base);
  CHECK(r.queues[1].stats.popped == static_cast<std::uint64_t>(chains));
  CHECK_FALSE(r.queues[1].broken);
}
