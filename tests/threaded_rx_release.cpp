// Buffers released on other threads while the receive queue polls and reposts (thread-safe pool
// policies), with a device on its own thread and a watchdog calling check_starvation()/census()
// concurrently. Every frame is delivered once or counted as a copy failure; every buffer comes
// back. The same with bursts handed to consumers whole. Run under ThreadSanitizer in CI.
#include <catch2/catch.hpp>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <set>
#include <thread>

#include "layouts.hpp"
#include "test_rx_common.hpp"

using namespace virtq;
using namespace virtq_test;

namespace {

template <class Packet>
class mailbox {
 public:
  void put(Packet p) {
    {
      std::lock_guard g(m_);
      q_.push_back(std::move(p));
    }
    cv_.notify_one();
  }
  /// False when closed and empty.
  bool take(Packet& p) {
    std::unique_lock g(m_);
    cv_.wait(g, [&] { return !q_.empty() || closed_; });
    if (q_.empty()) return false;
    p = std::move(q_.front());
    q_.pop_front();
    return true;
  }
  void close() {
    {
      std::lock_guard g(m_);
      closed_ = true;
    }
    cv_.notify_all();
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<Packet> q_;
  bool closed_ = false;
};

template <class Layout, class PoolPolicy>
struct case_t {
  using layout = Layout;
  using pool_policy = PoolPolicy;
};

using cases = std::tuple<case_t<split_layout, rx_pool_policy<true, spin_lock>>,
                         case_t<split_layout, rx_pool_policy<true, mutex_lock>>,
                         case_t<split_layout, rx_pool_policy<false, spin_lock>>,
                         case_t<packed_layout, rx_pool_policy<true, spin_lock>>>;

/// What both cases share: a ring of 64, a pool of 96 with 16 bounce buffers, a receive queue with
/// `consumers` named holders, a device thread sending `frames` frames (to port 1000 + seq %
/// consumers), and a watchdog running the detector and the census until the end.
template <class Case>
struct threaded_rig {
  static constexpr std::uint64_t frames = 20000;
  static constexpr std::size_t consumers = 3;
  using pool_t = rx_pool<typename Case::pool_policy>;
  using pair_t = queue_pair<typename Case::layout>;
  using rxq_t = rx_queue<typename pair_t::driver_type, pool_t>;

  static rx_queue_options options() {
    rx_queue_options o;
    o.reserve = 8;
    o.bounce_buffers = 16;
    o.repost_batch = 8;
    return o;
  }

  threaded_rig() : qp(64), pool(96, 256, "rx"), rxq(qp.driver, pool, options()) {
    for (std::size_t c = 0; c < consumers; ++c) {
      ids[c] = rxq.register_holder("consumer-" + std::to_string(c));
    }
    REQUIRE(rxq.refill().has_value());
    device = std::thread([this] {
      fake_nic<typename pair_t::device_type> nic{qp.device};
      std::uint64_t seq = 0;
      while (seq < frames && !done.load()) {
        const auto f = make_frame(static_cast<std::uint16_t>(1000 + seq % consumers), seq);
        if (nic.send(f) == errc::ok) {
          ++seq;
          if (seq % 8 == 0) nic.flush();
        } else {
          nic.flush();
          std::this_thread::yield();
        }
      }
      nic.flush();
    });
    watchdog = std::thread([this] {
      while (!done.load()) {
        (void)rxq.check_starvation();
        if (!rxq.census().conserved) ++thread_failures;
        std::this_thread::yield();
      }
    });
  }
  threaded_rig(const threaded_rig&) = delete;
  threaded_rig& operator=(const threaded_rig&) = delete;
  // A failed REQUIRE leaves through here: the device stops sending rather than wait for buffers
  // nobody will post.
  ~threaded_rig() {
    done.store(true);
    stop();
  }

  /// Polls `receive()` (packets delivered by the call, 0 when none) until every frame was
  /// delivered or counted as a copy failure; returns how many were delivered.
  template <class Receive>
  std::uint64_t receive_all(Receive&& receive) {
    std::uint64_t delivered = 0;
    for (;;) {
      const std::size_t n = receive();
      delivered += n;
      if (n == 0) {
        REQUIRE(rxq.refill().has_value());  // buffers may have come back since the last poll
        if (delivered + rxq.stats().copy_failures == frames) return delivered;
        std::this_thread::yield();
      }
    }
  }

  /// Joins the device and the watchdog (the consumers must be done).
  void stop() {
    if (device.joinable()) device.join();
    done.store(true);
    if (watchdog.joinable()) watchdog.join();
  }

  /// After stop(): every frame once across the consumers, everything delivered or counted, no
  /// misuse, and every buffer back after the queue's shutdown.
  void check_end(const std::array<std::vector<std::uint64_t>, consumers>& seen,
                 std::uint64_t delivered) {
    CHECK(thread_failures.load() == 0);
    std::set<std::uint64_t> all;
    for (auto& v : seen) {
      for (auto q : v) REQUIRE(all.insert(q).second);
    }
    const auto st = rxq.stats();
    CHECK(all.size() == delivered);
    CHECK(delivered + st.copy_failures == frames);
    CHECK(st.packets == delivered);
    CHECK(pool.misuse_total() == 0);
    qp.device.reset();
    const auto rep = rxq.shutdown(std::chrono::seconds(10));
    CHECK(rep.drained);
    CHECK(rep.census.conserved);
    CHECK(rep.census.free == 96);
    CHECK(rep.bounce.free == 16);
  }

  pair_t qp;
  pool_t pool;
  rxq_t rxq;
  std::array<holder_id, consumers> ids{};
  std::atomic<bool> done{false};
  // Catch2's assertions are not thread-safe: other threads count failures, the main thread checks.
  std::atomic<int> thread_failures{0};
  std::thread device;
  std::thread watchdog;
};

}  // namespace

TEMPLATE_LIST_TEST_CASE("rx threaded: consumers release on their threads while the queue polls",
                        "[rx_threaded]", cases) {
  using rig_t = threaded_rig<TestType>;
  using packet = typename rig_t::rxq_t::packet;
  constexpr bool shared_copies = TestType::pool_policy::atomic_refs;
  constexpr std::size_t consumers = rig_t::consumers;
  rig_t rig;

  std::array<mailbox<packet>, consumers> boxes;
  std::array<std::vector<std::uint64_t>, consumers> seen;
  std::vector<std::thread> workers;
  for (std::size_t c = 0; c < consumers; ++c) {
    workers.emplace_back([&, c] {
      packet p;
      std::vector<packet> keep;  // hold a few for a while, then release them together
      while (boxes[c].take(p)) {
        if (p.buffer.pass_to(rig.ids[c]) != errc::ok) ++rig.thread_failures;
        seen[c].push_back(frame_seq(p.data()));
        if (shared_copies && seen[c].size() % 5 == 0) {
          auto copy = p;  // a second reference, released on this thread first
          if (copy.buffer.release() != errc::ok) ++rig.thread_failures;
        }
        keep.push_back(std::move(p));
        if (keep.size() >= 4) keep.clear();
      }
    });
  }

  std::array<packet, 32> batch;
  const std::uint64_t delivered = rig.receive_all([&]() -> std::size_t {
    auto r = rig.rxq.poll(batch);
    REQUIRE(r.has_value());
    for (std::size_t k = 0; k < r->received; ++k) {
      const std::size_t c = frame_port(batch[k].data()) % 1000 % consumers;
      boxes[c].put(std::move(batch[k]));
    }
    return r->received;
  });
  for (auto& b : boxes) b.close();
  for (auto& w : workers) w.join();
  rig.stop();
  rig.check_end(seen, delivered);
}

TEMPLATE_LIST_TEST_CASE(
    "rx threaded: bursts are handed to consumers whole and released on their threads",
    "[rx_threaded]", cases) {
  using rig_t = threaded_rig<TestType>;
  using packet = typename rig_t::rxq_t::packet;
  using burst = rx_burst<typename rig_t::pool_t>;
  constexpr std::size_t consumers = rig_t::consumers;
  rig_t rig;

  // Each consumer reads its bursts, names itself in the census, keeps every seventh packet as a
  // handle for a while, and gives the rest back whole on its own thread.
  std::array<mailbox<burst>, consumers> boxes;
  std::array<std::vector<std::uint64_t>, consumers> seen;
  std::vector<std::thread> workers;
  for (std::size_t c = 0; c < consumers; ++c) {
    workers.emplace_back([&, c] {
      burst b;
      std::vector<packet> kept;
      while (boxes[c].take(b)) {
        if (b.pass_to(rig.ids[c]) != errc::ok) ++rig.thread_failures;
        for (std::size_t k = 0; k < b.size(); ++k) {
          if (b.len(k) != rx_frame_len) ++rig.thread_failures;
          seen[c].push_back(frame_seq(b.data(k)));
          if (seen[c].size() % 7 == 0) {
            const std::uint32_t len = b.len(k);
            kept.push_back(packet{b.keep(k), len, 0});
            if (!kept.back().buffer) ++rig.thread_failures;
          }
        }
        if (b.release() != errc::ok) ++rig.thread_failures;
        if (kept.size() >= 4) kept.clear();
      }
    });
  }

  std::size_t next = 0;
  const std::uint64_t delivered = rig.receive_all([&]() -> std::size_t {
    burst b;
    auto r = rig.rxq.poll(b);
    REQUIRE(r.has_value());
    REQUIRE(r->received == b.size());
    if (!b.empty()) {
      boxes[next].put(std::move(b));
      next = (next + 1) % consumers;
    }
    return r->received;
  });
  for (auto& bx : boxes) bx.close();
  for (auto& w : workers) w.join();
  rig.stop();
  rig.check_end(seen, delivered);
}
