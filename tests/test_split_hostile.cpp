// A hostile peer on a split ring (virtio-rules.md "Hostile input"): every rule a driver can break
// gets its own test on the device side, every rule a device can break on the driver side. Each
// asserts the specific errc, a broken queue that refuses further work, and recovery by reset.
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include <catch2/catch.hpp>

#include "layouts.hpp"
#include "virtq/split.hpp"

using namespace virtq;
using LE = little_endian;

namespace {

constexpr std::uint64_t guest_base = 0x10000;
constexpr std::uint64_t guest_size = 0x10000;
// A 1 GiB region that is never touched (a host with 32-bit pointers has room for it too).
constexpr std::uint64_t huge_base = 0x100000000ULL;
constexpr std::uint32_t huge_size = 1U << 30;

/// A device over a ring that the test writes by hand, as a hostile driver would, with one
/// region of guest memory (plus a 1 GiB one, for chains whose total nears 2^32, that pop never
/// reads).
struct hostile_ring {
  explicit hostile_ring(features f = virtq_test::base_features<split_layout>(),
                        std::uint32_t size = 8)
      : ring(size), guest(guest_size, 64), huge(64, 64), device(ring.view(), f, mem) {
    mem.add_region(guest_base, guest_size, guest.data());
    mem.add_region(huge_base, huge_size, huge.data());
    init();
  }
  void init() {
    std::memset(ring.bytes().data(), 0, ring.bytes().size());
    next_avail = 0;
  }
  split::desc& desc(std::uint32_t i) const { return ring.view().table[i]; }
  void set(split::desc& d, std::uint64_t addr, std::uint32_t len, std::uint16_t flags,
           std::uint16_t next = 0) const {
    put<LE>(d.addr, addr);
    put<LE>(d.len, len);
    put<LE>(d.flags, flags);
    put<LE>(d.next, next);
  }
  void set(std::uint32_t i, std::uint64_t addr, std::uint32_t len, std::uint16_t flags,
           std::uint16_t next = 0) const {
    set(desc(i), addr, len, flags, next);
  }
  /// An indirect table at guest offset `off`.
  split::desc* table_at(std::uint64_t off) const {
    return reinterpret_cast<split::desc*>(guest.data() + off);
  }
  void publish(std::uint16_t head) {
    const auto& v = ring.view();
    put<LE>(v.avail.ring(next_avail & (v.size - 1)), head);
    ++next_avail;
    store_release<LE>(v.avail.idx(), next_avail);
  }
  void set_avail_idx(std::uint16_t idx) { store_release<LE>(ring.view().avail.idx(), idx); }

  /// The device must have failed with `e`, stay broken, and come back after reset.
  void expect_failure(errc got, errc e) {
    CHECK(got == e);
    CHECK(device.broken());
    CHECK(device.error() == e);
    CHECK(device.stats().rejects[static_cast<std::size_t>(e)] == 1);
    chain c;
    CHECK(device.pop(c) == errc::broken);
    CHECK(device.complete(0, 0) == errc::broken);
    CHECK(device.complete_in_order(1, 0) == errc::broken);
    CHECK_FALSE(device.interrupt_prepare());
    CHECK_FALSE(device.enable_notifications());
    // Reset: the driver re-initializes the ring, the device forgets; a good chain flows.
    device.reset();
    init();
    CHECK_FALSE(device.broken());
    set(0, guest_base, 64, split::desc_f_write);
    publish(0);
    REQUIRE(device.pop(c) == errc::ok);
    CHECK(c.writable_bytes() == 64);
    CHECK(device.complete(c, 64) == errc::ok);
    CHECK(device.interrupt_prepare());
  }

  ring_memory<split_layout> ring;
  aligned_buffer guest;
  aligned_buffer huge;
  guest_memory mem;
  std::uint16_t next_avail = 0;
  split_device<default_policy, guest_memory> device;
};

errc pop(hostile_ring& h) {
  chain c;
  return h.device.pop(c);
}

}  // namespace

// --- device side: the driver is hostile ------------------------------------------------------

TEST_CASE("hostile driver: avail idx moved by more than the queue size", "[hostile]") {
  hostile_ring h;
  h.set_avail_idx(9);  // 9 > 8 chains cannot be available
  h.expect_failure(pop(h), errc::avail_idx_jump);
}

TEST_CASE("hostile driver: avail idx moved by exactly the queue size is fine", "[hostile]") {
  hostile_ring h;
  for (std::uint16_t i = 0; i < 8; ++i) h.set(i, guest_base + i * 16U, 16, 0);
  for (std::uint16_t i = 0; i < 8; ++i) h.publish(i);
  for (int i = 0; i < 8; ++i) CHECK(pop(h) == errc::ok);
  CHECK(pop(h) == errc::empty);
}

TEST_CASE("hostile driver: head index >= queue size", "[hostile]") {
  hostile_ring h;
  h.publish(8);
  h.expect_failure(pop(h), errc::desc_index_out_of_range);
}

TEST_CASE("hostile driver: next out of range", "[hostile]") {
  hostile_ring h;
  h.set(0, guest_base, 16, split::desc_f_next, 8);
  h.publish(0);
  h.expect_failure(pop(h), errc::next_out_of_range);
}

TEST_CASE("hostile driver: next out of range inside an indirect table", "[hostile]") {
  // 2.7.5.3.1: inside a table `next` indexes the table. 5 would be a good ring index (< 8),
  // but this table has 2 entries.
  hostile_ring h;
  split::desc* t = h.table_at(0x1000);
  h.set(t[0], guest_base, 16, split::desc_f_next, 5);
  h.set(t[1], guest_base + 16, 16, 0);
  h.set(0, guest_base + 0x1000, 2 * 16, split::desc_f_indirect);
  h.publish(0);
  h.expect_failure(pop(h), errc::next_out_of_range);
}

TEST_CASE("hostile driver: a loop in the descriptor table", "[hostile]") {
  hostile_ring h;
  h.set(0, guest_base, 16, split::desc_f_next, 1);
  h.set(1, guest_base + 16, 16, split::desc_f_next, 2);
  h.set(2, guest_base + 32, 16, split::desc_f_next, 0);
  h.publish(0);
  h.expect_failure(pop(h), errc::chain_loop);
}

TEST_CASE("hostile driver: a descriptor pointing at itself", "[hostile]") {
  hostile_ring h;
  h.set(3, guest_base, 16, split::desc_f_next, 3);
  h.publish(3);
  h.expect_failure(pop(h), errc::chain_loop);
}

TEST_CASE("hostile driver: a loop inside an indirect table", "[hostile]") {
  hostile_ring h;
  split::desc* t = h.table_at(0x1000);
  h.set(t[0], guest_base, 16, split::desc_f_next, 1);
  h.set(t[1], guest_base, 16, split::desc_f_next, 0);
  h.set(0, guest_base + 0x1000, 2 * 16, split::desc_f_indirect);
  h.publish(0);
  h.expect_failure(pop(h), errc::chain_loop);
}

TEST_CASE("hostile driver: chain longer than the queue size", "[hostile]") {
  // Two direct descriptors, then an indirect table of 8: 10 descriptors in a queue of 8.
  hostile_ring h;
  split::desc* t = h.table_at(0x1000);
  for (std::uint16_t i = 0; i < 8; ++i) {
    h.set(t[i], guest_base, 16, i < 7 ? split::desc_f_next : 0, static_cast<std::uint16_t>(i + 1));
  }
  h.set(0, guest_base, 16, split::desc_f_next, 1);
  h.set(1, guest_base, 16, split::desc_f_next, 2);
  h.set(2, guest_base + 0x1000, 8 * 16, split::desc_f_indirect);
  h.publish(0);
  h.expect_failure(pop(h), errc::chain_too_long);
}

TEST_CASE("hostile driver: chain longer than the queue size with fewer segments than descriptors",
          "[hostile]") {
  // 2.7.5.2: the limit counts descriptors, not the buffers they name. Two empty direct
  // descriptors (no segment each) and a table of 7: 9 descriptors in a queue of 8, only 7
  // segments, so the chain's storage never fills and the count alone must refuse it.
  hostile_ring h;
  split::desc* t = h.table_at(0x1000);
  for (std::uint16_t i = 0; i < 7; ++i) {
    h.set(t[i], guest_base, 16, i < 6 ? split::desc_f_next : 0, static_cast<std::uint16_t>(i + 1));
  }
  h.set(0, guest_base, 0, split::desc_f_next, 1);
  h.set(1, guest_base, 0, split::desc_f_next, 2);
  h.set(2, guest_base + 0x1000, 7 * 16, split::desc_f_indirect);
  h.publish(0);
  h.expect_failure(pop(h), errc::chain_too_long);
}

TEST_CASE("hostile driver: an empty descriptor after the first is not translated (2.7.5)",
          "[hostile]") {
  // A zero-length buffer names no bytes: its address, even one in no region, is not looked up
  // and it adds no segment.
  hostile_ring h;
  h.set(0, guest_base, 16, split::desc_f_next, 1);
  h.set(1, 0x1, 0, 0);
  h.publish(0);
  chain c;
  REQUIRE(h.device.pop(c) == errc::ok);
  CHECK(c.readable().size() == 1);
  CHECK(c.readable_bytes() == 16);
  CHECK(c.descriptors() == 2);
}

TEST_CASE("hostile driver: a reused chain checks its first descriptor as a fresh one does",
          "[hostile]") {
  // pop() into a chain whose storage is already grown takes the first descriptor on a fast
  // path: the same rules must hold there (translation, 2.7.5; an empty buffer untranslated).
  hostile_ring h;
  chain c;
  h.set(0, guest_base, 64, split::desc_f_write);
  h.publish(0);
  REQUIRE(h.device.pop(c) == errc::ok);
  REQUIRE(h.device.complete(c, 0) == errc::ok);
  SECTION("an empty buffer at an address in no region") {
    h.set(1, 0x1, 0, 0);
    h.publish(1);
    REQUIRE(h.device.pop(c) == errc::ok);
    CHECK(c.readable().empty());
    CHECK(c.writable().empty());
    CHECK(c.descriptors() == 1);
  }
  SECTION("a buffer outside guest memory") {
    h.set(1, guest_base - 0x100, 16, 0);
    h.publish(1);
    h.expect_failure(h.device.pop(c), errc::address_out_of_range);
  }
}

TEST_CASE("hostile driver: direct descriptors followed by one indirect are accepted", "[hostile]") {
  // 2.7.5.3.1 lets a chain end in one indirect descriptor after direct ones.
  hostile_ring h;
  split::desc* t = h.table_at(0x1000);
  h.set(t[0], guest_base + 0x100, 32, split::desc_f_next, 1);
  h.set(t[1], guest_base + 0x200, 48, split::desc_f_write);
  h.set(0, guest_base, 16, split::desc_f_next, 5);
  // WRITE on the descriptor that refers to a table is ignored (2.7.5.3.1).
  h.set(5, guest_base + 0x1000, 2 * 16, split::desc_f_indirect | split::desc_f_write);
  h.publish(0);
  chain c;
  REQUIRE(h.device.pop(c) == errc::ok);
  CHECK(c.readable_bytes() == 48);
  CHECK(c.writable_bytes() == 48);
  CHECK(c.ring_slots() == 2);
  CHECK(c.descriptors() == 3);
}

TEST_CASE("hostile driver: indirect table of length zero", "[hostile]") {
  hostile_ring h;
  h.set(0, guest_base + 0x1000, 0, split::desc_f_indirect);
  h.publish(0);
  h.expect_failure(pop(h), errc::indirect_bad_length);
}

TEST_CASE("hostile driver: indirect table length not a multiple of 16", "[hostile]") {
  hostile_ring h;
  h.set(0, guest_base + 0x1000, 20, split::desc_f_indirect);
  h.publish(0);
  h.expect_failure(pop(h), errc::indirect_bad_length);
}

TEST_CASE("hostile driver: indirect table larger than the queue size", "[hostile]") {
  hostile_ring h;
  h.set(0, guest_base + 0x1000, 9 * 16, split::desc_f_indirect);
  h.publish(0);
  h.expect_failure(pop(h), errc::indirect_bad_length);
}

TEST_CASE("hostile driver: nested indirect table", "[hostile]") {
  hostile_ring h;
  split::desc* t = h.table_at(0x1000);
  h.set(t[0], guest_base + 0x2000, 16, split::desc_f_indirect);
  h.set(0, guest_base + 0x1000, 16, split::desc_f_indirect);
  h.publish(0);
  h.expect_failure(pop(h), errc::indirect_nested);
}

TEST_CASE("hostile driver: INDIRECT together with NEXT", "[hostile]") {
  hostile_ring h;
  split::desc* t = h.table_at(0x1000);
  h.set(t[0], guest_base, 16, 0);
  h.set(0, guest_base + 0x1000, 16, split::desc_f_indirect | split::desc_f_next, 1);
  h.set(1, guest_base, 16, 0);
  h.publish(0);
  h.expect_failure(pop(h), errc::indirect_with_next);
}

TEST_CASE("hostile driver: INDIRECT without VIRTIO_F_INDIRECT_DESC", "[hostile]") {
  hostile_ring h(virtq_test::base_features<split_layout>().without(feature::indirect_desc));
  split::desc* t = h.table_at(0x1000);
  h.set(t[0], guest_base, 16, 0);
  h.set(0, guest_base + 0x1000, 16, split::desc_f_indirect);
  h.publish(0);
  h.expect_failure(pop(h), errc::indirect_not_negotiated);
}

TEST_CASE("hostile driver: indirect table outside guest memory", "[hostile]") {
  hostile_ring h;
  h.set(0, 0x500, 16, split::desc_f_indirect);
  h.publish(0);
  h.expect_failure(pop(h), errc::address_out_of_range);
}

TEST_CASE("hostile driver: writable descriptor before a readable one", "[hostile]") {
  hostile_ring h;
  h.set(0, guest_base, 16, split::desc_f_write | split::desc_f_next, 1);
  h.set(1, guest_base + 16, 16, 0);
  h.publish(0);
  h.expect_failure(pop(h), errc::write_before_read);
}

TEST_CASE("hostile driver: writable before readable inside an indirect table", "[hostile]") {
  hostile_ring h;
  split::desc* t = h.table_at(0x1000);
  h.set(t[0], guest_base, 16, split::desc_f_write | split::desc_f_next, 1);
  h.set(t[1], guest_base, 16, 0);
  h.set(0, guest_base + 0x1000, 32, split::desc_f_indirect);
  h.publish(0);
  h.expect_failure(pop(h), errc::write_before_read);
}

TEST_CASE("hostile driver: address + length overflows 2^64", "[hostile]") {
  hostile_ring h;
  h.set(0, std::numeric_limits<std::uint64_t>::max() - 7, 16, 0);
  h.publish(0);
  h.expect_failure(pop(h), errc::address_overflow);
}

TEST_CASE("hostile driver: buffer outside guest memory", "[hostile]") {
  hostile_ring h;
  h.set(0, guest_base - 0x100, 16, 0);
  h.publish(0);
  h.expect_failure(pop(h), errc::address_out_of_range);
}

TEST_CASE("hostile driver: buffer running past the end of its region", "[hostile]") {
  hostile_ring h;
  h.set(0, guest_base + guest_size - 8, 16, 0);
  h.publish(0);
  h.expect_failure(pop(h), errc::crosses_region_end);
}

TEST_CASE("hostile driver: total chain length over 2^32", "[hostile]") {
  // 2.7.5.2: at most 2^32 bytes in total. Four descriptors of 1 GiB make exactly 2^32 (each
  // one translatable on any host), which is allowed; a fifth byte is one too many.
  const auto chain_of = [](hostile_ring& h, std::uint32_t last_len) {
    for (std::uint16_t i = 0; i < 4; ++i) {
      h.set(i, huge_base, huge_size, split::desc_f_next, static_cast<std::uint16_t>(i + 1U));
    }
    h.set(4, huge_base, last_len, 0);
    h.publish(0);
  };
  {
    hostile_ring h;
    chain_of(h, 0);  // a zero-length last descriptor: 2^32 in total
    chain c;
    REQUIRE(h.device.pop(c) == errc::ok);
    CHECK(c.readable_bytes() == std::uint64_t{1} << 32);
  }
  hostile_ring h;
  chain_of(h, 1);
  h.expect_failure(pop(h), errc::chain_too_large);
}

TEST_CASE("hostile driver: a failed pop leaves the chain unusable, never half-filled",
          "[hostile]") {
  hostile_ring h;
  h.set(0, guest_base, 16, split::desc_f_next, 1);
  h.set(1, 0x1, 16, 0);  // outside memory
  h.publish(0);
  chain c;
  CHECK(h.device.pop(c) == errc::address_out_of_range);
  CHECK(h.device.stats().popped == 0);
  CHECK(h.device.complete(0, 0) == errc::broken);
}

// --- driver side: the device is hostile ------------------------------------------------------

namespace {

struct untrusted_device {
  untrusted_device() : q(8), arena(4096) {}

  /// Adds a chain of one readable and `writable` bytes of writable buffer, publishes it, and the
  /// device pops it. Returns the head.
  std::uint16_t offer(token_t t, std::uint32_t writable = 64) {
    const buffer out[] = {arena.at(0, 16)};
    const buffer in[] = {arena.at(256, writable)};
    REQUIRE(q.driver.add(out, in, t) == errc::ok);
    q.driver.kick_prepare();
    chain c;
    REQUIRE(q.device.pop(c) == errc::ok);
    return c.id();
  }
  /// Writes used element number `n` and publishes used idx `idx`, as a hostile device would.
  void used(std::uint16_t n, std::uint32_t id, std::uint32_t len, std::uint16_t idx) {
    const auto& v = q.ring.view();
    put<LE>(v.used.ring(n & (v.size - 1)).id, id);
    put<LE>(v.used.ring(n & (v.size - 1)).len, len);
    store_release<LE>(v.used.idx(), idx);
  }
  void expect_failure(errc got, errc e) {
    CHECK(got == e);
    CHECK(q.driver.broken());
    CHECK(q.driver.error() == e);
    CHECK(q.driver.stats().rejects[static_cast<std::size_t>(e)] == 1);
    CHECK(q.driver.get_used().error() == errc::broken);
    CHECK(q.driver.add_inbuf(arena.at(0, 8), 1) == errc::broken);
    CHECK(q.driver.add({}, std::span(&in1, 1), 1) == errc::broken);
    CHECK_FALSE(q.driver.kick_prepare());
    CHECK_FALSE(q.driver.enable_interrupts());
    std::vector<token_t> back;
    q.device.reset();
    q.driver.reset([&](token_t t) { back.push_back(t); });
    CHECK_FALSE(q.driver.broken());
    CHECK(q.driver.num_free() == 8);
    // Works again.
    offer(99);
    REQUIRE(q.device.complete(0, 0) == errc::ok);
    q.device.interrupt_prepare();
    const auto u = q.driver.get_used();
    REQUIRE(u);
    CHECK(u->token == 99);
  }

  virtq_test::queue_pair<split_layout, default_policy> q;
  virtq_test::buffer_arena arena;
  buffer in1{0, 0};
};

}  // namespace

TEST_CASE("untrusted device: used id out of range", "[hostile][driver]") {
  untrusted_device d;
  d.offer(1);
  d.used(0, 8, 0, 1);
  d.expect_failure(d.q.driver.get_used().error(), errc::used_id_out_of_range);
}

TEST_CASE("untrusted device: used id that is not a chain head", "[hostile][driver]") {
  untrusted_device d;
  const std::uint16_t head = d.offer(1);  // two descriptors: head and head's successor
  const std::uint16_t second = get<LE>(d.q.ring.view().table[head].next);
  REQUIRE(second != head);
  d.used(0, second, 0, 1);
  d.expect_failure(d.q.driver.get_used().error(), errc::used_id_not_outstanding);
}

TEST_CASE("untrusted device: used id completed twice", "[hostile][driver]") {
  untrusted_device d;
  const std::uint16_t head = d.offer(1);
  d.offer(2);
  d.used(0, head, 0, 1);
  REQUIRE(d.q.driver.get_used()->token == 1);
  d.used(1, head, 0, 2);  // the same head again
  d.expect_failure(d.q.driver.get_used().error(), errc::used_id_not_outstanding);
}

TEST_CASE("untrusted device: used id of a chain that was never published", "[hostile][driver]") {
  untrusted_device d;
  d.offer(1);
  const buffer in[] = {d.arena.at(512, 8)};
  REQUIRE(d.q.driver.add({}, in, 2) == errc::ok);  // staged, not published
  const std::uint16_t staged = get<LE>(d.q.ring.view().avail.ring(1));
  d.used(0, staged, 0, 1);
  d.expect_failure(d.q.driver.get_used().error(), errc::used_id_not_outstanding);
}

TEST_CASE("untrusted device: used len larger than the writable space", "[hostile][driver]") {
  untrusted_device d;
  const std::uint16_t head = d.offer(1, 64);
  d.used(0, head, 65, 1);
  d.expect_failure(d.q.driver.get_used().error(), errc::used_len_too_large);
}

TEST_CASE("untrusted device: used idx moved by more than the outstanding chains",
          "[hostile][driver]") {
  untrusted_device d;
  const std::uint16_t head = d.offer(1);
  d.used(0, head, 0, 2);  // one chain outstanding, two used
  std::vector<used_buffer> out(4);
  d.expect_failure(d.q.driver.get_used(out).error(), errc::used_idx_jump);
}

TEST_CASE("untrusted device: the batch form reports what it reaped before the failure",
          "[hostile][driver]") {
  untrusted_device d;
  const std::uint16_t h1 = d.offer(1);
  d.offer(2);
  d.used(0, h1, 10, 1);
  d.used(1, 8, 0, 2);  // second element is bad
  std::vector<used_buffer> out(4);
  const auto n = d.q.driver.get_used(out);
  REQUIRE(n);
  CHECK(*n == 1);
  CHECK(out[0].token == 1);
  CHECK(out[0].len == 10);
  CHECK(d.q.driver.broken());
  CHECK(d.q.driver.error() == errc::used_id_out_of_range);
}

TEST_CASE("untrusted device: IN_ORDER driver rejects a batch naming a chain it does not hold",
          "[hostile][driver]") {
  virtq_test::queue_pair<split_layout, default_policy> q(
      4, virtq_test::base_features<split_layout>().with(feature::in_order));
  virtq_test::buffer_arena arena(256);
  REQUIRE(q.driver.add_inbuf(arena.at(0, 8), 1) == errc::ok);
  q.driver.kick_prepare();
  const auto& v = q.ring.view();
  put<LE>(v.used.ring(0).id, 2);  // descriptor 2 was never used
  put<LE>(v.used.ring(0).len, 0);
  store_release<LE>(v.used.idx(), 1);
  CHECK(q.driver.get_used().error() == errc::used_id_not_outstanding);
  CHECK(q.driver.broken());
}
