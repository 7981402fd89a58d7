// Where each barrier sits, checked deterministically on one thread. The threaded tests can only
// catch a misplaced barrier by chance (and TSan only what C++'s model sees); here a barrier
// policy whose fences call a hook looks at the ring at the instant of each fence, and changes
// it there: a value the queue still reads after the fence must show up in its answer, a value
// it wrote before the fence must already be in memory. Named by the barrier pairs of
// virtqueue.hpp (D1..D4 driver, V1..V4 device) and the spec rule each one serves. A hook runs
// inside a noexcept fence, so it CHECKs (a failed REQUIRE there would terminate).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <iterator>
#include <vector>

#include <catch2/catch.hpp>

#include "layouts.hpp"
#include "virtq/packed.hpp"
#include "virtq/policy.hpp"
#include "virtq/split.hpp"

using namespace virtq;
using virtq_test::buffer_arena;
using virtq_test::queue_pair;

namespace {

using LE = little_endian;

enum class fence { full, before_publish, after_observe };

/// The hook every probe_barriers fence calls (the policy's functions are static, so it is one
/// for the whole test). A hook that drives the other side of the ring (whose calls fence too)
/// is not re-entered.
struct probe {
  static inline std::function<void(fence)> hook;
  static inline bool inside = false;
  static void at(fence f) noexcept {
    if (!hook || inside) return;
    inside = true;
    hook(f);
    inside = false;
  }
};

/// smp_barriers plus the hook: the barrier policy concept admits any type with these members.
struct probe_barriers {
  static constexpr bool is_platform = false;
  static void full() noexcept {
    probe::at(fence::full);
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
  static void before_publish() noexcept { probe::at(fence::before_publish); }
  static void after_observe() noexcept { probe::at(fence::after_observe); }
};
static_assert(barrier_policy<probe_barriers>);

/// Installs a hook for one scope.
class on_fence {
 public:
  explicit on_fence(std::function<void(fence)> f) { probe::hook = std::move(f); }
  ~on_fence() { probe::hook = nullptr; }
  on_fence(const on_fence&) = delete;
  on_fence& operator=(const on_fence&) = delete;
};

using probe_event = queue_policy<no_lock, suppress_event_idx, probe_barriers>;
using probe_flags = queue_policy<no_lock, suppress_flags, probe_barriers>;

template <class P>
using split_q = queue_pair<split_layout, P>;
template <class P>
using packed_q = queue_pair<packed_layout, P>;

constexpr std::uint16_t pA = packed::desc_f_avail;
constexpr std::uint16_t pNEXT = packed::desc_f_next;
constexpr std::uint16_t pWRITE = packed::desc_f_write;

std::uint16_t packed_flags(const packed::ring_view& v, std::uint32_t slot) {
  return load_relaxed<LE>(v.ring[slot].flags);
}

/// Adds `n` 8-byte receive buffers (tokens 1..n) and publishes them with no hook installed.
template <class Q>
void post(Q& q, const buffer_arena& a, std::uint32_t n) {
  for (std::uint32_t i = 0; i < n; ++i) {
    REQUIRE(q.driver.add_inbuf(a.at(8U * i, 8), i + 1U) == errc::ok);
  }
  q.driver.kick_prepare();
}

/// The device pops two chains and completes them newest first, with 6 and 4 bytes, without
/// publishing: what V2 must find written before its barrier.
template <class Q>
void complete_reversed(Q& q, chain& c0, chain& c1) {
  REQUIRE(q.device.pop(c0) == errc::ok);
  REQUIRE(q.device.pop(c1) == errc::ok);
  REQUIRE(q.device.complete(c1, 6) == errc::ok);
  REQUIRE(q.device.complete(c0, 4) == errc::ok);
}

}  // namespace

// =============================================================================================
// Split ring
// =============================================================================================

TEST_CASE(
    "D1 2.7.13.3 split: descriptors and avail entries are written before the publishing "
    "barrier and avail idx after it",
    "[barrier][split]") {
  split_q<probe_event> q(8);
  buffer_arena a(256);
  const auto& v = q.ring.view();
  const buffer bufs[] = {a.at(0, 8), a.at(8, 16), a.at(32, 24)};
  const token_t toks[] = {1, 2, 3};
  REQUIRE(*q.driver.add_inbufs(bufs, toks) == 3);
  std::vector<fence> seen;
  bool written = false;
  std::uint16_t idx_before = 0xFFFF;
  std::uint16_t idx_at_full = 0xFFFF;
  {
    on_fence h([&](fence f) {
      seen.push_back(f);
      if (f == fence::before_publish) {
        idx_before = load_relaxed<LE>(v.avail.idx());
        written = true;
        for (std::uint32_t i = 0; i < 3; ++i) {
          const split::desc& d = v.table[get<LE>(v.avail.ring(i))];
          written = written && get<LE>(d.addr) == bufs[i].addr && get<LE>(d.len) == bufs[i].len &&
                    get<LE>(d.flags) == split::desc_f_write;
        }
      } else if (f == fence::full) {
        idx_at_full = load_relaxed<LE>(v.avail.idx());
      }
    });
    q.driver.kick_prepare();
  }
  CHECK(seen == std::vector<fence>{fence::before_publish, fence::full});
  CHECK(written);
  CHECK(idx_before == 0);
  CHECK(idx_at_full == 3);
}

TEST_CASE(
    "D2 2.7.13.4 split: the driver reads the device's suppression only after its full "
    "barrier",
    "[barrier][split]") {
  buffer_arena a(256);
  SECTION("EVENT_IDX: avail_event moved into the published range inside the barrier") {
    split_q<probe_event> q(8);
    const auto& v = q.ring.view();
    store_relaxed<LE>(v.used.avail_event(), 5);  // not passed by 0 -> 1
    REQUIRE(q.driver.add_inbuf(a.at(0, 8), 1) == errc::ok);
    on_fence h([&](fence f) {
      if (f == fence::full) store_relaxed<LE>(v.used.avail_event(), 0);
    });
    CHECK(q.driver.kick_prepare());
  }
  SECTION("EVENT_IDX: avail_event moved out of it inside the barrier") {
    split_q<probe_event> q(8);
    const auto& v = q.ring.view();
    REQUIRE(q.driver.add_inbuf(a.at(0, 8), 1) == errc::ok);
    on_fence h([&](fence f) {
      if (f == fence::full) store_relaxed<LE>(v.used.avail_event(), 5);
    });
    CHECK_FALSE(q.driver.kick_prepare());
  }
  SECTION("flags: NO_NOTIFY set inside the barrier") {
    split_q<probe_flags> q(8);
    const auto& v = q.ring.view();
    REQUIRE(q.driver.add_inbuf(a.at(0, 8), 1) == errc::ok);
    on_fence h([&](fence f) {
      if (f == fence::full) store_relaxed<LE>(v.used.flags(), split::used_f_no_notify);
    });
    CHECK_FALSE(q.driver.kick_prepare());
  }
}

TEST_CASE(
    "V2 2.7.14 and V3 2.7.7.2 split: used elements are written before the publishing "
    "barrier and used_event is read after the full barrier",
    "[barrier][split]") {
  split_q<probe_event> q(8);
  buffer_arena a(256);
  const auto& v = q.ring.view();
  post(q, a, 2);
  chain c0;
  chain c1;
  complete_reversed(q, c0, c1);  // used entry 0 names c1 (6 bytes), entry 1 names c0 (4 bytes)
  store_relaxed<LE>(v.avail.used_event(), 5);  // not passed by 0 -> 2
  bool written = false;
  std::uint16_t idx_before = 0xFFFF;
  std::uint16_t idx_at_full = 0xFFFF;
  on_fence h([&](fence f) {
    if (f == fence::before_publish) {
      idx_before = load_relaxed<LE>(v.used.idx());
      written = get<LE>(v.used.ring(0).id) == c1.id() && get<LE>(v.used.ring(0).len) == 6 &&
                get<LE>(v.used.ring(1).id) == c0.id() && get<LE>(v.used.ring(1).len) == 4;
    } else if (f == fence::full) {
      idx_at_full = load_relaxed<LE>(v.used.idx());
      store_relaxed<LE>(v.avail.used_event(), 1);  // now inside [0, 2)
    }
  });
  CHECK(q.device.interrupt_prepare());
  CHECK(written);
  CHECK(idx_before == 0);
  CHECK(idx_at_full == 2);
}

TEST_CASE("V3 2.7.7.2 split flags: NO_INTERRUPT is read after the full barrier",
          "[barrier][split]") {
  split_q<probe_flags> q(8);
  buffer_arena a(256);
  const auto& v = q.ring.view();
  post(q, a, 1);
  chain c;
  REQUIRE(q.device.pop(c) == errc::ok);
  REQUIRE(q.device.complete(c, 0) == errc::ok);
  on_fence h([&](fence f) {
    if (f == fence::full) store_relaxed<LE>(v.avail.flags(), split::avail_f_no_interrupt);
  });
  CHECK_FALSE(q.device.interrupt_prepare());
}

TEST_CASE(
    "D4 2.7.7.2 split: enable_interrupts writes its request before the full barrier and "
    "looks at used idx after it",
    "[barrier][split]") {
  buffer_arena a(256);
  SECTION("EVENT_IDX") {
    split_q<probe_event> q(8);
    const auto& v = q.ring.view();
    post(q, a, 1);
    chain c;
    REQUIRE(q.device.pop(c) == errc::ok);
    q.driver.disable_interrupts();
    REQUIRE(load_relaxed<LE>(v.avail.used_event()) != 0);
    std::uint16_t event_at_full = 0xFFFF;
    bool completes = false;
    SECTION("a completion inside the window is reported") {
      completes = true;
    }
    SECTION("nothing completed: nothing pending") {}
    on_fence h([&](fence f) {
      if (f != fence::full) return;
      event_at_full = load_relaxed<LE>(v.avail.used_event());
      if (completes) {
        CHECK(q.device.complete(c, 0) == errc::ok);
        q.device.interrupt_prepare();
      }
    });
    CHECK(q.driver.enable_interrupts() == completes);
    CHECK(event_at_full == 0);
  }
  SECTION("flags") {
    split_q<probe_flags> q(8);
    const auto& v = q.ring.view();
    post(q, a, 1);
    chain c;
    REQUIRE(q.device.pop(c) == errc::ok);
    q.driver.disable_interrupts();
    REQUIRE(load_relaxed<LE>(v.avail.flags()) == split::avail_f_no_interrupt);
    std::uint16_t flags_at_full = 0xFFFF;
    on_fence h([&](fence f) {
      if (f != fence::full) return;
      flags_at_full = load_relaxed<LE>(v.avail.flags());
      CHECK(q.device.complete(c, 0) == errc::ok);
      q.device.interrupt_prepare();
    });
    CHECK(q.driver.enable_interrupts());
    CHECK(flags_at_full == 0);
  }
}

TEST_CASE(
    "V4 2.7.10 split: enable_notifications writes its request before the full barrier "
    "and looks at avail idx after it",
    "[barrier][split]") {
  buffer_arena a(256);
  SECTION("EVENT_IDX") {
    split_q<probe_event> q(8);
    const auto& v = q.ring.view();
    post(q, a, 2);
    chain c;
    REQUIRE(q.device.pop(c) == errc::ok);
    REQUIRE(q.device.pop(c) == errc::ok);
    q.device.disable_notifications();
    store_relaxed<LE>(v.used.avail_event(), 1234);  // anything but where the device is (2)
    std::uint16_t event_at_full = 0xFFFF;
    bool adds = false;
    SECTION("a chain published inside the window is reported") {
      adds = true;
    }
    SECTION("nothing published: nothing pending") {}
    on_fence h([&](fence f) {
      if (f != fence::full) return;
      event_at_full = load_relaxed<LE>(v.used.avail_event());
      if (adds) {
        CHECK(q.driver.add_inbuf(a.at(64, 8), 9) == errc::ok);
        q.driver.kick_prepare();
      }
    });
    CHECK(q.device.enable_notifications() == adds);
    CHECK(event_at_full == 2);
  }
  SECTION("flags") {
    split_q<probe_flags> q(8);
    const auto& v = q.ring.view();
    q.device.disable_notifications();
    REQUIRE(load_relaxed<LE>(v.used.flags()) == split::used_f_no_notify);
    std::uint16_t flags_at_full = 0xFFFF;
    on_fence h([&](fence f) {
      if (f != fence::full) return;
      flags_at_full = load_relaxed<LE>(v.used.flags());
      CHECK(q.driver.add_inbuf(a.at(64, 8), 9) == errc::ok);
      q.driver.kick_prepare();
    });
    CHECK(q.device.enable_notifications());
    CHECK(flags_at_full == 0);
  }
}

// =============================================================================================
// Packed ring
// =============================================================================================

TEST_CASE(
    "D1 2.8.21.1 packed: a batch's descriptors are written before the publishing "
    "barrier and the first head's flags after it",
    "[barrier][packed]") {
  packed_q<probe_event> q(8);
  buffer_arena a(256);
  const auto& v = q.ring.view();
  const buffer out[] = {a.at(0, 16)};
  const buffer in[] = {a.at(16, 8), a.at(24, 8)};
  REQUIRE(q.driver.add(out, in, 7) == errc::ok);            // slots 0 (head), 1, 2
  REQUIRE(q.driver.add_inbuf(a.at(32, 8), 8) == errc::ok);  // slot 3
  std::vector<fence> seen;
  std::uint16_t f_before[4] = {};
  std::uint64_t head_addr = 0;
  std::uint16_t head_flags_at_full = 0;
  {
    on_fence h([&](fence f) {
      seen.push_back(f);
      if (f == fence::before_publish) {
        for (std::uint32_t s = 0; s < 4; ++s) f_before[s] = packed_flags(v, s);
        head_addr = get<LE>(v.ring[0].addr);
      } else if (f == fence::full) {
        head_flags_at_full = packed_flags(v, 0);
      }
    });
    q.driver.kick_prepare();
  }
  CHECK(seen == std::vector<fence>{fence::before_publish, fence::full});
  CHECK((f_before[0] & pA) == 0);  // the head is the one store after the barrier
  CHECK(head_addr == out[0].addr);
  CHECK(f_before[1] == (pA | pNEXT | pWRITE));
  CHECK(f_before[2] == (pA | pWRITE));
  CHECK(f_before[3] == (pA | pWRITE));
  CHECK(head_flags_at_full == (pA | pNEXT));
}

TEST_CASE(
    "D2 2.8.21.3 packed: the driver reads the device's event area only after its full "
    "barrier",
    "[barrier][packed]") {
  buffer_arena a(256);
  SECTION("EVENT_IDX: desc mode naming the published slot, written inside the barrier") {
    packed_q<probe_event> q(8);
    const auto& v = q.ring.view();
    store_relaxed<LE>(v.device_event->flags, packed::event_flags_disable);
    REQUIRE(q.driver.add_inbuf(a.at(0, 8), 1) == errc::ok);
    on_fence h([&](fence f) {
      if (f != fence::full) return;
      store_relaxed<LE>(v.device_event->off_wrap, packed::make_off_wrap(0, true));
      store_relaxed<LE>(v.device_event->flags, packed::event_flags_desc);
    });
    CHECK(q.driver.kick_prepare());
  }
  SECTION("flags: disabled inside the barrier") {
    packed_q<probe_flags> q(8);
    const auto& v = q.ring.view();
    REQUIRE(q.driver.add_inbuf(a.at(0, 8), 1) == errc::ok);
    on_fence h([&](fence f) {
      if (f == fence::full) store_relaxed<LE>(v.device_event->flags, packed::event_flags_disable);
    });
    CHECK_FALSE(q.driver.kick_prepare());
  }
}

TEST_CASE(
    "V2 2.8.21.2 and V3 2.8.21.3 packed: used ids and lengths are written before the "
    "publishing barrier and the driver's event area is read after the full barrier",
    "[barrier][packed]") {
  packed_q<probe_event> q(8);
  buffer_arena a(256);
  const auto& v = q.ring.view();
  post(q, a, 2);
  chain c0;
  chain c1;
  complete_reversed(q, c0, c1);  // used entry 0 names c1 (6 bytes), entry 1 names c0 (4 bytes)
  store_relaxed<LE>(v.driver_event->flags, packed::event_flags_disable);
  bool written = false;
  std::uint16_t first_before = 0;
  std::uint16_t first_at_full = 0;
  const std::uint16_t used = packed::used_bits(true);
  on_fence h([&](fence f) {
    if (f == fence::before_publish) {
      first_before = packed_flags(v, 0);
      written = get<LE>(v.ring[0].id) == c1.id() && get<LE>(v.ring[0].len) == 6 &&
                get<LE>(v.ring[1].id) == c0.id() && get<LE>(v.ring[1].len) == 4 &&
                packed_flags(v, 1) == (used | pWRITE);
    } else if (f == fence::full) {
      first_at_full = packed_flags(v, 0);
      store_relaxed<LE>(v.driver_event->flags, packed::event_flags_enable);
    }
  });
  CHECK(q.device.interrupt_prepare());
  CHECK(written);
  CHECK((first_before & packed::desc_f_used) == 0);
  CHECK(first_at_full == (used | pWRITE));
}

TEST_CASE(
    "D4 2.8.21.3 packed: enable_interrupts writes its request before the full barrier "
    "and looks at the ring after it",
    "[barrier][packed]") {
  buffer_arena a(256);
  packed_q<probe_flags> q(8);
  const auto& v = q.ring.view();
  post(q, a, 1);
  chain c;
  REQUIRE(q.device.pop(c) == errc::ok);
  q.driver.disable_interrupts();
  REQUIRE(load_relaxed<LE>(v.driver_event->flags) == packed::event_flags_disable);
  std::uint16_t flags_at_full = 0xFFFF;
  bool completes = false;
  SECTION("a completion inside the window is reported") {
    completes = true;
  }
  SECTION("nothing completed: nothing pending") {}
  on_fence h([&](fence f) {
    if (f != fence::full) return;
    flags_at_full = load_relaxed<LE>(v.driver_event->flags);
    if (completes) {
      CHECK(q.device.complete(c, 0) == errc::ok);
      q.device.interrupt_prepare();
    }
  });
  CHECK(q.driver.enable_interrupts() == completes);
  CHECK(flags_at_full == packed::event_flags_enable);
}

TEST_CASE(
    "V4 2.8.21.3 packed: enable_notifications writes its request before the full "
    "barrier and looks at the ring after it",
    "[barrier][packed]") {
  buffer_arena a(256);
  packed_q<probe_event> q(8);
  const auto& v = q.ring.view();
  q.device.disable_notifications();
  REQUIRE(load_relaxed<LE>(v.device_event->flags) == packed::event_flags_disable);
  std::uint16_t flags_at_full = 0xFFFF;
  std::uint16_t off_wrap_at_full = 0;
  bool adds = false;
  SECTION("a chain published inside the window is reported") {
    adds = true;
  }
  SECTION("nothing published: nothing pending") {}
  on_fence h([&](fence f) {
    if (f != fence::full) return;
    flags_at_full = load_relaxed<LE>(v.device_event->flags);
    off_wrap_at_full = load_relaxed<LE>(v.device_event->off_wrap);
    if (adds) {
      CHECK(q.driver.add_inbuf(a.at(0, 8), 1) == errc::ok);
      q.driver.kick_prepare();
    }
  });
  CHECK(q.device.enable_notifications() == adds);
  CHECK(flags_at_full == packed::event_flags_desc);
  CHECK(off_wrap_at_full == packed::make_off_wrap(0, true));
}

// =============================================================================================
// Both layouts: what is read after observing the other side's index or flags
// =============================================================================================

namespace {

/// The length field of the descriptor of the first chain the driver made available.
template <class Layout>
wire<std::uint32_t>& first_desc_len(const typename Layout::view& v) {
  if constexpr (Layout::is_packed) {
    return v.ring[0].len;
  } else {
    return v.table[get<LE>(v.avail.ring(0))].len;
  }
}

/// The length field of the first used element (split) or used descriptor (packed).
template <class Layout>
wire<std::uint32_t>& first_used_len(const typename Layout::view& v) {
  if constexpr (Layout::is_packed) {
    return v.ring[0].len;
  } else {
    return v.used.ring(0).len;
  }
}

}  // namespace

TEMPLATE_LIST_TEST_CASE(
    "V1 2.7.13 / 2.8.21.1: the device reads a descriptor only after it "
    "observed avail idx or the head's flags",
    "[barrier]", virtq_test::all_layouts) {
  using Layout = TestType;
  queue_pair<Layout, probe_event> q(8);
  buffer_arena a(256);
  post(q, a, 1);
  // Inside the barrier the driver (here: the test) shortens the buffer: a device that read the
  // descriptor before it would report the old length.
  wire<std::uint32_t>& len_field = first_desc_len<Layout>(q.ring.view());
  on_fence h([&](fence f) {
    if (f == fence::after_observe) put<LE>(len_field, 5U);
  });
  SECTION("pop") {
    chain c;
    REQUIRE(q.device.pop(c) == errc::ok);
    CHECK(c.writable_bytes() == 5);
  }
  SECTION("pop_buffers") {
    popped_buffer b[2];
    REQUIRE(*q.device.pop_buffers(b) == 1);
    CHECK(b[0].len == 5);
  }
  SECTION("serve_buffers") {
    std::uint32_t len = 0;
    REQUIRE(*q.device.serve_buffers(4, [&](const popped_buffer& b) noexcept {
      len = b.len;
      return 0U;
    }) == 1);
    CHECK(len == 5);
  }
}

TEMPLATE_LIST_TEST_CASE(
    "D3 2.7.14 / 2.8.21.2: the driver reads a used entry's length only after "
    "it observed used idx or the used flags",
    "[barrier]", virtq_test::all_layouts) {
  using Layout = TestType;
  queue_pair<Layout, probe_event> q(8);
  buffer_arena a(256);
  post(q, a, 1);
  chain c;
  REQUIRE(q.device.pop(c) == errc::ok);
  REQUIRE(q.device.complete(c, 8) == errc::ok);
  q.device.interrupt_prepare();
  wire<std::uint32_t>& len_field = first_used_len<Layout>(q.ring.view());
  on_fence h([&](fence f) {
    if (f == fence::after_observe) put<LE>(len_field, 3U);
  });
  SECTION("get_used()") {
    const result<used_buffer> u = q.driver.get_used();
    REQUIRE(u);
    CHECK(u->len == 3);
  }
  SECTION("get_used(span)") {
    used_buffer u[4];
    REQUIRE(*q.driver.get_used(std::span<used_buffer>(u)) == 1);
    CHECK(u[0].len == 3);
  }
}

// =============================================================================================
// VIRTIO_F_ORDER_PLATFORM
// =============================================================================================

namespace {

/// probe_barriers fit for ORDER_PLATFORM, counting each kind of fence.
struct counting_platform_barriers {
  static constexpr bool is_platform = true;
  static inline std::uint64_t counts[3] = {};
  static void full() noexcept {
    ++counts[0];
    platform_barriers::full();
  }
  static void before_publish() noexcept {
    ++counts[1];
    platform_barriers::before_publish();
  }
  static void after_observe() noexcept {
    ++counts[2];
    platform_barriers::after_observe();
  }
};

}  // namespace

TEMPLATE_LIST_TEST_CASE(
    "ORDER_PLATFORM: a queue with platform barriers carries traffic and "
    "fences every publish and every observe",
    "[barrier][platform]", virtq_test::all_layouts) {
  using Layout = TestType;
  const features f = virtq_test::base_features<Layout>().with(feature::order_platform);
  buffer_arena a(4096);
  SECTION("platform_barriers, several laps") {
    queue_pair<Layout, queue_policy<no_lock, suppress_event_idx, platform_barriers>> q(4, f);
    for (token_t t = 0; t < 20; ++t) {
      REQUIRE(q.driver.add_inbuf(a.at(static_cast<std::size_t>(t) * 8U, 8), t) == errc::ok);
      q.driver.kick_prepare();
      chain c;
      REQUIRE(q.device.pop(c) == errc::ok);
      REQUIRE(q.device.complete(c, 8) == errc::ok);
      q.device.interrupt_prepare();
      const auto u = q.driver.get_used();
      REQUIRE(u);
      CHECK(u->token == t);
    }
  }
  SECTION("each publish and each observe goes through the policy") {
    using counted = counting_platform_barriers;
    queue_pair<Layout, queue_policy<no_lock, suppress_event_idx, counted>> q(4, f);
    std::fill(std::begin(counted::counts), std::end(counted::counts), 0U);
    constexpr std::uint64_t rounds = 10;
    for (token_t t = 0; t < rounds; ++t) {
      REQUIRE(q.driver.add_inbuf(a.at(static_cast<std::size_t>(t) * 8U, 8), t) == errc::ok);
      q.driver.kick_prepare();  // publish: before_publish, then full before the event read
      chain c;
      REQUIRE(q.device.pop(c) == errc::ok);  // observe
      REQUIRE(q.device.complete(c, 8) == errc::ok);
      q.device.interrupt_prepare();  // publish, full
      REQUIRE(q.driver.get_used());  // observe
    }
    CHECK(counted::counts[0] == 2 * rounds);  // full: one per kick and one per interrupt decision
    CHECK(counted::counts[1] == 2 * rounds);  // before_publish: the two publishes of a round
    CHECK(counted::counts[2] >= 2 * rounds);  // after_observe: at least the pop and the reap
  }
}
