// Two threads, one driver and one device, stream millions of chains through one ring for every
// layout x suppression policy (tests/layouts.hpp), with the notify / interrupt paths in use:
// each side polls, and when it runs dry re-enables the other side's notifications, re-checks
// (the "pending" answer) and only then waits on a doorbell (an atomic counter standing in for
// the notify register and the interrupt line). A lost wake-up shows up as a wait that times
// out, and fails the test. Content is checked end to end: the driver writes each chain's
// sequence number into its readable buffer; the device checks it against its own count and
// writes it back into the writable buffer; the driver checks that on reap.
//
// Run under ThreadSanitizer in CI (ctest label "threaded"): the ring's shared fields go through
// the atomic accessors, everything else is ordered by the D1/V1 and V2/D3 release/acquire pairs.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "layouts.hpp"
#include "virtq/memory.hpp"

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define VIRTQ_TEST_TSAN 1
#endif
#if __has_feature(address_sanitizer)
#define VIRTQ_TEST_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define VIRTQ_TEST_TSAN 1
#endif
#if defined(__SANITIZE_ADDRESS__)
#define VIRTQ_TEST_ASAN 1
#endif

namespace {

using namespace virtq;
using clock_type = std::chrono::steady_clock;

#if defined(VIRTQ_TEST_TSAN)
constexpr std::uint64_t chains_per_run = 300'000;
#elif defined(VIRTQ_TEST_ASAN)
constexpr std::uint64_t chains_per_run = 300'000;
#else
constexpr std::uint64_t chains_per_run = 2'000'000;
#endif
constexpr std::uint32_t queue_size = 256;
constexpr std::size_t slot_bytes = 32;  // 8 readable + 16 writable + pad
constexpr auto wait_limit = std::chrono::seconds(20);
constexpr std::uint64_t magic = 0x5EC0'0000'0000'0001ULL;

/// A doorbell: the side that rings it bumps a counter; the other side waits for a change.
struct doorbell {
  std::atomic<std::uint64_t> rings{0};
  std::uint64_t current() const noexcept { return rings.load(std::memory_order_acquire); }
  void ring() noexcept { rings.fetch_add(1, std::memory_order_release); }
  /// Spins (yielding) until the counter moves past `seen`, or the limit: then false.
  bool wait_past(std::uint64_t seen, const std::atomic<bool>& stop) const {
    const auto deadline = clock_type::now() + wait_limit;
    std::uint32_t spins = 0;
    while (current() == seen) {
      if (stop.load(std::memory_order_relaxed)) return true;
      if (++spins < 64) continue;
      std::this_thread::yield();
      if ((spins & 1023U) == 0 && clock_type::now() > deadline) return false;
    }
    return true;
  }
};

struct shared_state {
  doorbell kick;  // driver -> device
  doorbell irq;   // device -> driver
  std::atomic<bool> stop{false};
  std::mutex m;
  std::string failure;
  void fail(const std::string& why) {
    {
      std::lock_guard<std::mutex> g(m);
      if (failure.empty()) failure = why;
    }
    stop.store(true);
  }
  bool stopped() const { return stop.load(std::memory_order_relaxed); }
};

/// How both sides call the queues.
enum class calls {
  single,  ///< one chain per call (add / add_inbuf, pop(chain&), complete(chain, len))
  batch,   ///< add_inbufs (up to 64 per call); pop_buffers, then complete(span)
  serve,   ///< add_inbufs; serve_buffers (pop and complete in one pass)
};

template <calls Mode, class Q>
void driver_thread(Q& drv, virtq_test::buffer_arena& arena, shared_state& st, std::uint64_t n) {
  constexpr bool Batch = Mode != calls::single;
  std::uint64_t added = 0;
  std::uint64_t reaped = 0;
  std::vector<used_buffer> used(32);
  std::vector<buffer> bufs(64);
  std::vector<token_t> tokens(64);
  bool use_delayed = false;
  drv.disable_interrupts();
  while (reaped < n && !st.stopped()) {
    // Add as much as fits.
    std::uint32_t batch = 0;
    if constexpr (Batch) {
      // Batch sizes 1..64 in turn, so the calls start and end anywhere in the ring.
      // Only slots that will be added are cleared: the others may hold completions not yet
      // reaped (a short count from add_inbufs is tested in test_*_batch).
      const auto want = static_cast<std::size_t>(
          std::min<std::uint64_t>({n - added, 1 + added % 64, drv.num_free()}));
      for (std::size_t k = 0; k < want; ++k) {
        const std::size_t slot = (added + k) % queue_size;
        std::memset(arena.data() + slot * slot_bytes + 8, 0, 16);
        bufs[k] = arena.at(slot * slot_bytes + 8, 16);
        tokens[k] = added + k;
      }
      const result<std::size_t> got =
          drv.add_inbufs(std::span(bufs.data(), want), std::span(tokens.data(), want));
      if (!got) return st.fail(std::string("driver add_inbufs: ") + to_string(got.error()));
      added += *got;
      batch = static_cast<std::uint32_t>(*got);
    }
    while (!Batch && added < n && batch < 64) {
      const std::size_t slot = added % queue_size;
      std::byte* p = arena.data() + slot * slot_bytes;
      std::memset(p + 8, 0, 16);
      errc e;
      if ((added & 1U) == 0) {
        std::memcpy(p, &added, sizeof added);
        const buffer out[] = {arena.at(slot * slot_bytes, 8)};
        const buffer in[] = {arena.at(slot * slot_bytes + 8, 16)};
        e = drv.add(out, in, added);
      } else {
        e = drv.add_inbuf(arena.at(slot * slot_bytes + 8, 16), added);
      }
      if (e == errc::no_space) break;
      if (e != errc::ok) return st.fail(std::string("driver add: ") + to_string(e));
      ++added;
      ++batch;
    }
    if (batch > 0 && drv.kick_prepare()) st.kick.ring();
    // Reap.
    const auto got = drv.get_used(used);
    if (!got) return st.fail(std::string("driver get_used: ") + to_string(got.error()));
    for (std::size_t i = 0; i < *got; ++i) {
      const used_buffer& u = used[i];
      const std::byte* p = arena.data() + (u.token % queue_size) * slot_bytes + 8;
      std::uint64_t seq = 0, check = 0;
      std::memcpy(&seq, p, 8);
      std::memcpy(&check, p + 8, 8);
      if (u.len != 16 || seq != u.token || check != (seq ^ magic)) {
        return st.fail("driver: bad content for token " + std::to_string(u.token));
      }
    }
    reaped += *got;
    if (*got > 0 || batch > 0) continue;
    // Nothing to do: ask for an interrupt, re-check, then wait.
    const std::uint64_t seen = st.irq.current();
    use_delayed = !use_delayed;
    const bool pending = use_delayed ? drv.enable_interrupts_delayed() : drv.enable_interrupts();
    if (!pending && !st.irq.wait_past(seen, st.stop)) {
      return st.fail("driver: interrupt never came (reaped " + std::to_string(reaped) + ")");
    }
    drv.disable_interrupts();
  }
  if (drv.broken()) st.fail(std::string("driver broken: ") + to_string(drv.error()));
}

template <calls Mode, class Q>
void device_thread(Q& dev, shared_state& st, std::uint64_t n) {
  constexpr bool Batch = Mode != calls::single;
  std::uint64_t popped = 0;
  std::vector<chain> held(16);
  std::vector<popped_buffer> bufs(16);
  std::vector<used_entry> done(16);
  dev.disable_notifications();
  while (popped < n && !st.stopped()) {
    std::size_t k = 0;
    if constexpr (Mode == calls::serve) {
      // Each buffer is filled and completed as it is popped; every chain here is one
      // device-writable buffer, so 0 means the ring is empty.
      bool bad_shape = false;
      const result<std::size_t> got =
          dev.serve_buffers(1 + popped % 16, [&](const popped_buffer& b) noexcept {
            if (!b.writable || b.len != 16) {
              bad_shape = true;
              return 0U;
            }
            const std::uint64_t seq = popped + k++;
            const std::uint64_t check = seq ^ magic;
            std::memcpy(b.data, &seq, 8);
            std::memcpy(b.data + 8, &check, 8);
            return 16U;
          });
      if (!got) return st.fail(std::string("device serve_buffers: ") + to_string(got.error()));
      if (bad_shape) return st.fail("device: unexpected buffer shape");
      if (*got != k) return st.fail("device: serve_buffers miscounted");
      popped += k;
    }
    if constexpr (Mode == calls::batch) {
      // Every chain here is one device-writable buffer: 0 means the ring is empty.
      const result<std::size_t> got = dev.pop_buffers(std::span(bufs.data(), 1 + popped % 16));
      if (!got) return st.fail(std::string("device pop_buffers: ") + to_string(got.error()));
      k = *got;
      for (std::size_t i = 0; i < k; ++i) {
        const popped_buffer& b = bufs[i];
        if (!b.writable || b.len != 16) return st.fail("device: unexpected buffer shape");
        const std::uint64_t seq = popped + i;
        const std::uint64_t check = seq ^ magic;
        std::memcpy(b.data, &seq, 8);
        std::memcpy(b.data + 8, &check, 8);
      }
      popped += k;
      // Completed in reverse every other time (used order need not be avail order).
      for (std::size_t i = 0; i < k; ++i) {
        const std::size_t j = (popped & 16U) != 0 ? k - 1 - i : i;
        done[i] = used_entry{bufs[j].id, 16};
      }
      const result<std::size_t> c = dev.complete(std::span<const used_entry>(done.data(), k));
      if (k > 0 && (!c || *c != k)) return st.fail("device complete(span) refused its own ids");
    }
    for (; !Batch && k < held.size(); ++k) {
      const errc e = dev.pop(held[k]);
      if (e == errc::empty) break;
      if (e != errc::ok) return st.fail(std::string("device pop: ") + to_string(e));
      chain& c = held[k];
      const std::uint64_t seq = popped + k;
      if (c.readable_bytes() > 0) {
        std::uint64_t v = 0;
        std::byte buf[8];
        if (c.read(buf) != 8) return st.fail("device: short readable part");
        std::memcpy(&v, buf, 8);
        if (v != seq) return st.fail("device: out of order chain " + std::to_string(v));
      }
      std::byte reply[16];
      const std::uint64_t check = seq ^ magic;
      std::memcpy(reply, &seq, 8);
      std::memcpy(reply + 8, &check, 8);
      if (c.write(reply) != 16) return st.fail("device: short writable part");
    }
    if constexpr (!Batch) popped += k;
    // Complete the batch, in reverse every other time (used order need not be avail order).
    for (std::size_t i = 0; !Batch && i < k; ++i) {
      const std::size_t j = (popped & 16U) != 0 ? k - 1 - i : i;
      const errc e = dev.complete(held[j], 16);
      if (e != errc::ok) return st.fail(std::string("device complete: ") + to_string(e));
    }
    if (k > 0) {
      if (dev.interrupt_prepare()) st.irq.ring();
      continue;
    }
    const std::uint64_t seen = st.kick.current();
    if (!dev.enable_notifications() && !st.kick.wait_past(seen, st.stop)) {
      return st.fail("device: notification never came (popped " + std::to_string(popped) + ")");
    }
    dev.disable_notifications();
  }
  if (dev.broken()) st.fail(std::string("device broken: ") + to_string(dev.error()));
}

}  // namespace

namespace {

template <calls Mode, class L, class P>
void run_stream() {
  virtq_test::queue_pair<L, P> q(queue_size);
  virtq_test::buffer_arena arena(std::size_t{queue_size} * slot_bytes);
  shared_state st;
  const auto t0 = clock_type::now();
  std::thread dev([&] { device_thread<Mode>(q.device, st, chains_per_run); });
  driver_thread<Mode>(q.driver, arena, st, chains_per_run);
  st.stop.store(true);  // lets the device leave a wait if the driver failed
  dev.join();
  const double secs = std::chrono::duration<double>(clock_type::now() - t0).count();
  INFO(st.failure);
  REQUIRE(st.failure.empty());
  CHECK(q.driver.stats().reaped == chains_per_run);
  CHECK(q.device.stats().popped == chains_per_run);
  CHECK(q.device.stats().completed == chains_per_run);
  CHECK(q.driver.num_free() == queue_size);
  const auto& ds = q.driver.stats();
  const auto& vs = q.device.stats();
  WARN(chains_per_run << " chains in " << secs << " s ("
                      << static_cast<double>(chains_per_run) / secs / 1e6 << " M/s); kicks "
                      << ds.kicks << " suppressed " << ds.kicks_suppressed << "; interrupts "
                      << vs.interrupts << " suppressed " << vs.interrupts_suppressed);
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("threaded: a driver thread and a device thread stream chains", "[threaded]",
                        virtq_test::layout_suppression_combos) {
  run_stream<calls::single, typename TestType::layout, typename TestType::policy>();
}

TEMPLATE_LIST_TEST_CASE("threaded: the batch calls stream chains between two threads", "[threaded]",
                        virtq_test::layout_suppression_combos) {
  run_stream<calls::batch, typename TestType::layout, typename TestType::policy>();
}

TEMPLATE_LIST_TEST_CASE("threaded: serve_buffers streams chains between two threads", "[threaded]",
                        virtq_test::layout_suppression_combos) {
  run_stream<calls::serve, typename TestType::layout, typename TestType::policy>();
}

// The contract of guest_memory_cursor: many devices share one guest_memory table, each through
// a cursor of its own, on threads of their own. The table is only read while they translate;
// each cursor's copy of the last region is its thread's alone. Under TSan a table that kept
// shared state of its own (a cache, a hint) would show up here as a race. Each thread walks
// the regions in a different order, so its cursor misses and asks the table all the time, and
// checks every answer against the region it named.
TEST_CASE("threaded: devices on two threads translate through their own cursors over one table",
          "[threaded][memory]") {
  constexpr std::size_t regions = 4;
  constexpr std::size_t region_bytes = 4096;
  std::vector<aligned_buffer> host;
  host.reserve(regions);
  guest_memory table;
  for (std::size_t r = 0; r < regions; ++r) {
    host.emplace_back(region_bytes, 64);
    table.add_region(0x10000 * (r + 1), region_bytes, host.back().data());
  }
  const auto walk = [&](std::size_t stride, std::size_t rounds, bool& ok) {
    const guest_memory_cursor cursor(table);
    ok = true;
    for (std::size_t i = 0; i < rounds && ok; ++i) {
      const std::size_t r = (i * stride) % regions;
      const std::size_t off = (i * 64) % region_bytes;
      const auto got = cursor.translate(0x10000 * (r + 1) + off, 64);
      ok = got.has_value() && *got == host[r].data() + off;
      // One byte past its region: refused as the table refuses it.
      const auto over = cursor.translate(0x10000 * (r + 1) + region_bytes - 32, 33);
      ok = ok && !over && over.error() == errc::crosses_region_end;
    }
  };
  constexpr std::size_t rounds = 200'000;
  bool ok_a = false;
  bool ok_b = false;
  std::thread a([&] { walk(1, rounds, ok_a); });
  std::thread b([&] { walk(3, rounds, ok_b); });
  a.join();
  b.join();
  CHECK(ok_a);
  CHECK(ok_b);
}
