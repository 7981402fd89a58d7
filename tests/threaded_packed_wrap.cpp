// SPDX-License-Identifier: MIT
// Packed ring on two threads at the edges the generic stream test does not reach: odd queue
// sizes down to 1, chains of every length up to the whole queue (wrapping mid-chain), indirect
// tables, out-of-order completion, and IN_ORDER batches with one used descriptor for several
// chains. Both sides poll. Under ThreadSanitizer this checks that relaxed flags stores of the
// non-first heads of a batch are covered by the first head's release (D1/V1) and likewise on
// the used side (V2/D3).
#include <atomic>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "test_packed_common.hpp"

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define VIRTQ_TEST_SLOW 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define VIRTQ_TEST_SLOW 1
#endif
#endif

namespace {

using namespace virtq;
using namespace packed_test;

#if defined(VIRTQ_TEST_SLOW)
constexpr std::uint64_t chains = 20'000;
#else
constexpr std::uint64_t chains = 200'000;
#endif
constexpr std::uint64_t magic = 0xC0FFEE0000000000ULL;
constexpr std::size_t slot_bytes = 8;

struct config {
  std::uint32_t size;
  std::uint32_t indirect_max;
  bool in_order;
};

void run(const config& cfg) {
  features f = packed_features<>();
  if (cfg.in_order) f = f.with(feature::in_order);
  driver_options o;
  o.indirect_max = cfg.indirect_max;
  o.indirect_threshold = 3;
  pair<> q(cfg.size, f, o);
  // One area of size * size slots: a chain of n buffers owns area[k * size .. k * size + n).
  virtq_test::buffer_arena arena(std::size_t{cfg.size} * cfg.size * slot_bytes);
  std::atomic<bool> stop{false};
  std::string device_failure;

  std::thread device([&] {
    std::mt19937 rng(cfg.size * 7U + 1U);
    std::vector<chain> held;
    chain c;
    std::uint64_t done = 0;
    while (done < chains && !stop.load(std::memory_order_relaxed)) {
      const errc e = q.device.pop(c);
      if (e == errc::ok) {
        std::uint64_t seq = 0;
        std::byte b[8];
        if (c.read(b) != 8) {
          device_failure = "short readable part";
          break;
        }
        std::memcpy(&seq, b, 8);
        const std::uint64_t reply = seq ^ magic;
        std::memcpy(b, &reply, 8);
        if (!c.writable().empty() && c.write(b) != 8) {
          device_failure = "short writable part";
          break;
        }
        held.push_back(c);
      } else if (e != errc::empty) {
        device_failure = std::string("pop: ") + to_string(e);
        break;
      }
      // Complete some of what is held once nothing more comes or enough is held.
      if (held.empty()) {
        if (e == errc::empty) std::this_thread::yield();
        continue;
      }
      if (e == errc::ok && held.size() < 1 + rng() % 4) continue;
      if (cfg.in_order) {
        const auto n = static_cast<std::uint16_t>(1 + rng() % held.size());
        const chain& last = held[n - 1U];
        if (q.device.complete_in_order(n, last.writable().empty() ? 0U : 8U) != errc::ok) {
          device_failure = "complete_in_order";
          break;
        }
        held.erase(held.begin(), held.begin() + n);
        done += n;
      } else {
        // Newest first: used order differs from avail order.
        while (!held.empty()) {
          const chain& h = held.back();
          if (q.device.complete(h, h.writable().empty() ? 0U : 8U) != errc::ok) {
            device_failure = "complete";
            break;
          }
          held.pop_back();
          ++done;
        }
      }
      (void)q.device.interrupt_prepare();
    }
  });

  std::mt19937 rng(cfg.size);
  std::vector<std::uint32_t> free_areas;
  for (std::uint32_t k = 0; k < cfg.size; ++k) free_areas.push_back(k);
  std::vector<std::uint32_t> len_of(cfg.size);
  std::uint64_t seq = 0, reaped = 0;
  std::string failure;
  while (reaped < chains && failure.empty()) {
    // Stage a few chains of random length (1..size), then publish them with one kick.
    for (int b = 0; b < 4 && seq < chains && !free_areas.empty(); ++b) {
      const auto n = static_cast<std::uint32_t>(1 + rng() % cfg.size);
      const std::uint32_t area = free_areas.back();
      std::byte* base = arena.data() + std::size_t{area} * cfg.size * slot_bytes;
      std::memcpy(base, &seq, 8);
      std::memset(base + slot_bytes, 0, slot_bytes);
      std::vector<buffer> out{arena.at(std::size_t{area} * cfg.size * slot_bytes, 8)};
      std::vector<buffer> in;
      for (std::uint32_t i = 1; i < n; ++i) {
        in.push_back(arena.at((std::size_t{area} * cfg.size + i) * slot_bytes, 8));
      }
      const errc e = q.driver.add(out, in, (seq << 16) | area);
      if (e == errc::no_space) break;
      if (e != errc::ok) {
        failure = std::string("add: ") + to_string(e);
        break;
      }
      free_areas.pop_back();
      len_of[area] = n;
      ++seq;
    }
    (void)q.driver.kick_prepare();
    used_buffer u[8];
    const auto got = q.driver.get_used(u);
    if (!got) {
      failure = std::string("get_used: ") + to_string(got.error());
      break;
    }
    for (std::size_t i = 0; i < *got; ++i) {
      const auto area = static_cast<std::uint32_t>(u[i].token & 0xFFFF);
      const std::uint64_t s = u[i].token >> 16;
      const std::byte* w = arena.data() + (std::size_t{area} * cfg.size + 1) * slot_bytes;
      std::uint64_t reply = 0;
      std::memcpy(&reply, w, 8);
      // With IN_ORDER the earlier chains of a batch report length 0; their data is there.
      const bool has_writable = len_of[area] > 1;
      if (has_writable && reply != (s ^ magic)) failure = "bad reply for " + std::to_string(s);
      if (u[i].len != 0 && u[i].len != 8) failure = "bad len";
      free_areas.push_back(area);
    }
    reaped += *got;
    if (*got == 0) std::this_thread::yield();
  }
  stop.store(true);
  device.join();
  INFO(failure << device_failure);
  REQUIRE(failure.empty());
  REQUIRE(device_failure.empty());
  REQUIRE(reaped == chains);
  REQUIRE(q.driver.num_free() == cfg.size);
  REQUIRE_FALSE(q.driver.broken());
  REQUIRE_FALSE(q.device.broken());
}

}  // namespace

TEST_CASE("threaded packed: odd sizes, chains up to the whole queue, out-of-order completion") {
  for (const std::uint32_t size : {1U, 3U, 7U, 64U}) {
    CAPTURE(size);
    run({size, 0, false});
  }
}

TEST_CASE("threaded packed: indirect tables mixed with direct chains") {
  for (const std::uint32_t size : {3U, 7U}) {
    CAPTURE(size);
    run({size, size, false});
  }
}

TEST_CASE("threaded packed: IN_ORDER batches, one used descriptor for several chains") {
  for (const std::uint32_t size : {1U, 5U, 16U}) {
    CAPTURE(size);
    run({size, 0, true});
  }
}
