// IN_ORDER (VIRTIO 2.7.9) on the split ring's batch paths: split_driver::get_used(span) takes
// runs of used elements that each name the oldest outstanding chain, and hands anything else
// (an element standing for several chains, or a bad one) to the one-at-a-time reap. These tests
// write the used ring by hand, as an untrusted device would, and check the driver reports what
// the rules say; test_split_batch compares the batch calls with the single calls at random.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "layouts.hpp"
#include "virtq/split.hpp"

using namespace virtq;
using LE = little_endian;
using virtq_test::buffer_arena;

namespace {

features f_in_order() {
  return virtq_test::base_features<split_layout>().with(feature::in_order);
}

/// An IN_ORDER driver with six published chains of one 64-byte device-writable buffer (tokens
/// 1..6, heads 0..5: 2.7.9 puts them in ring order) and a used ring the test writes itself.
struct in_order_driver {
  explicit in_order_driver(std::uint16_t start = 0)
      : q(8, f_in_order(), driver_options{0, 2, nullptr, nullptr, start}),
        arena(4096),
        base(start) {
    std::vector<buffer> bufs;
    std::vector<token_t> toks;
    for (std::uint32_t i = 0; i < 6; ++i) {
      bufs.push_back(arena.at(i * 64, 64));
      toks.push_back(i + 1U);
    }
    REQUIRE(*q.driver.add_inbufs(bufs, toks) == 6);
    q.driver.kick_prepare();
  }
  /// The n-th used element (counted from the initial index) names `id` with `len`.
  void used(std::uint16_t n, std::uint32_t id, std::uint32_t len) {
    const auto& v = q.ring.view();
    const std::uint32_t at = static_cast<std::uint16_t>(base + n) & 7U;
    put<LE>(v.used.ring(at).id, id);
    put<LE>(v.used.ring(at).len, len);
  }
  void publish(std::uint16_t n) {
    store_release<LE>(q.ring.view().used.idx(), static_cast<std::uint16_t>(base + n));
  }
  std::vector<used_buffer> reap(std::size_t room) {
    std::vector<used_buffer> u(room);
    const auto got = q.driver.get_used(u);
    REQUIRE(got);
    u.resize(*got);
    return u;
  }
  /// After a refused element: what came before it was reaped, the queue is broken and says why.
  void expect(std::size_t room, std::size_t reaped, errc e) {
    std::vector<used_buffer> u(room);
    const auto got = q.driver.get_used(u);
    if (reaped == 0) {
      CHECK(got.error() == e);
    } else {
      REQUIRE(got);
      CHECK(*got == reaped);
      for (std::size_t i = 0; i < reaped; ++i) CHECK(u[i].token == i + 1U);
    }
    CHECK(q.driver.broken());
    CHECK(q.driver.error() == e);
    CHECK(q.driver.stats().rejects[static_cast<std::size_t>(e)] == 1);
    CHECK(q.driver.get_used(u).error() == errc::broken);
  }
  virtq_test::queue_pair<split_layout> q;
  buffer_arena arena;
  std::uint16_t base;
};

void check(const used_buffer& u, token_t token, std::uint32_t len) {
  CHECK(u.token == token);
  CHECK(u.len == len);
}

}  // namespace

TEST_CASE("IN_ORDER reap: one used element per chain, reaped in one call (2.7.9)",
          "[split][in_order]") {
  const std::uint16_t start = GENERATE(std::uint16_t{0}, std::uint16_t{65533});
  in_order_driver d(start);
  for (std::uint16_t i = 0; i < 6; ++i) d.used(i, i, 10U * i);
  d.publish(6);
  const auto u = d.reap(8);
  REQUIRE(u.size() == 6);
  for (std::uint16_t i = 0; i < 6; ++i) check(u[i], i + 1U, 10U * i);
  CHECK(d.q.driver.num_free() == 8);
  CHECK(d.q.driver.stats().reaped == 6);
  CHECK_FALSE(d.q.driver.broken());
  // The descriptors come back as one run: the next batch continues in ring order (2.7.9).
  const buffer more[] = {d.arena.at(0, 8), d.arena.at(8, 8), d.arena.at(16, 8)};
  const token_t toks[] = {7, 8, 9};
  REQUIRE(*d.q.driver.add_inbufs(more, toks) == 3);
  for (std::uint16_t i = 0; i < 3; ++i) {
    CHECK(get<LE>(d.q.ring.view().avail.ring(static_cast<std::uint16_t>(start + 6U + i) & 7U)) ==
          ((6U + i) & 7U));
  }
}

TEST_CASE("IN_ORDER reap: a batched used element in the middle of a per-chain run (2.7.9)",
          "[split][in_order]") {
  // Chain 1 by itself, chains 2..4 as one element naming 4 (the others get len 0), then 5.
  const auto write = [](in_order_driver& d) {
    d.used(0, 0, 10);
    d.used(1, 3, 40);
    d.used(2, 4, 50);
    d.publish(3);
  };
  SECTION("all in one call") {
    in_order_driver d;
    write(d);
    const auto u = d.reap(8);
    REQUIRE(u.size() == 5);
    check(u[0], 1, 10);
    check(u[1], 2, 0);
    check(u[2], 3, 0);
    check(u[3], 4, 40);
    check(u[4], 5, 50);
    CHECK(d.q.driver.num_free() == 7);
  }
  SECTION("calls too short for the batch: it continues where the last call stopped") {
    in_order_driver d;
    write(d);
    auto u = d.reap(2);
    REQUIRE(u.size() == 2);
    check(u[0], 1, 10);
    check(u[1], 2, 0);
    u = d.reap(2);
    REQUIRE(u.size() == 2);
    check(u[0], 3, 0);
    check(u[1], 4, 40);
    u = d.reap(2);
    REQUIRE(u.size() == 1);
    check(u[0], 5, 50);
    CHECK(d.q.driver.get_used(u).value() == 0);
    CHECK_FALSE(d.q.driver.broken());
  }
}

TEST_CASE("IN_ORDER reap, untrusted device: id out of range mid-run (2.7.8)",
          "[split][in_order][hostile]") {
  in_order_driver d;
  d.used(0, 0, 1);
  d.used(1, 1, 1);
  d.used(2, 8, 1);
  d.publish(3);
  d.expect(8, 2, errc::used_id_out_of_range);
}

TEST_CASE("IN_ORDER reap, untrusted device: an id not outstanding mid-run (2.7.8)",
          "[split][in_order][hostile]") {
  SECTION("a chain reaped earlier in the run") {
    in_order_driver d;
    d.used(0, 0, 1);
    d.used(1, 1, 1);
    d.used(2, 0, 1);
    d.publish(3);
    d.expect(8, 2, errc::used_id_not_outstanding);
  }
  SECTION("a descriptor never made available") {
    in_order_driver d;
    d.used(0, 0, 1);
    d.used(1, 7, 0);
    d.publish(2);
    d.expect(8, 1, errc::used_id_not_outstanding);
  }
  SECTION("the oldest chain once the batch before it took every chain") {
    in_order_driver d;
    d.used(0, 5, 1);
    d.used(1, 0, 1);
    d.publish(2);
    // The first element stands for all six chains; the second names one already used.
    std::vector<used_buffer> u(8);
    const auto got = d.q.driver.get_used(u);
    REQUIRE(got);
    CHECK(*got == 6);
    CHECK(d.q.driver.broken());
    CHECK(d.q.driver.error() == errc::used_id_not_outstanding);
  }
}

TEST_CASE("IN_ORDER reap, untrusted device: a staged, unpublished chain (2.7.8)",
          "[split][in_order][hostile]") {
  in_order_driver d;
  // Head 6 is staged but not published. The batch naming 5 is legitimate; the next element
  // names head 6, now the oldest outstanding chain, which the device cannot have seen.
  const buffer staged[] = {d.arena.at(512, 64)};
  const token_t t[] = {7};
  REQUIRE(*d.q.driver.add_inbufs(staged, t) == 1);
  d.used(0, 5, 1);
  d.used(1, 6, 1);
  d.publish(2);
  d.expect(8, 6, errc::used_id_not_outstanding);
}

TEST_CASE("IN_ORDER reap, untrusted device: len beyond the writable bytes (2.7.8.2)",
          "[split][in_order][hostile]") {
  SECTION("the oldest chain, mid-run") {
    in_order_driver d;
    d.used(0, 0, 64);
    d.used(1, 1, 65);
    d.publish(2);
    d.expect(8, 1, errc::used_len_too_large);
  }
  SECTION("the chain a batched element names") {
    in_order_driver d;
    d.used(0, 0, 64);
    d.used(1, 3, 65);
    d.publish(2);
    d.expect(8, 1, errc::used_len_too_large);
  }
}

TEST_CASE("IN_ORDER reap, untrusted device: used idx beyond the outstanding chains",
          "[split][in_order][hostile]") {
  SECTION("at once") {
    in_order_driver d;
    for (std::uint16_t i = 0; i < 7; ++i) d.used(i, i, 0);
    d.publish(7);
    d.expect(8, 0, errc::used_idx_jump);
  }
  SECTION("after a per-chain run") {
    in_order_driver d;
    d.used(0, 0, 1);
    d.used(1, 1, 1);
    d.publish(2);
    REQUIRE(d.reap(8).size() == 2);
    d.publish(7);  // 5 more with 4 outstanding
    std::vector<used_buffer> u(8);
    CHECK(d.q.driver.get_used(u).error() == errc::used_idx_jump);
    CHECK(d.q.driver.broken());
  }
}

TEST_CASE("complete(span) with IN_ORDER: nothing held, or len beyond the oldest's room",
          "[split][in_order]") {
  virtq_test::queue_pair<split_layout> q(8, f_in_order());
  buffer_arena arena(4096);
  const buffer bufs[] = {arena.at(0, 64), arena.at(64, 32)};
  const token_t toks[] = {1, 2};
  REQUIRE(*q.driver.add_inbufs(bufs, toks) == 2);
  q.driver.kick_prepare();
  popped_buffer p[2];
  REQUIRE(*q.device.pop_buffers(p) == 2);
  // 2.7.8.2: the oldest chain, but more than it could hold.
  const used_entry too_long[] = {{p[0].id, 65}};
  CHECK(q.device.complete(too_long).error() == errc::invalid_argument);
  const used_entry both[] = {{p[0].id, 64}, {p[1].id, 32}};
  REQUIRE(*q.device.complete(both) == 2);
  // Nothing is held now: the last completed id, the one the order record ends with, again.
  const used_entry again[] = {{p[1].id, 0}};
  CHECK(q.device.complete(again).error() == errc::invalid_argument);
  const used_entry first_again[] = {{p[0].id, 0}};
  CHECK(q.device.complete(first_again).error() == errc::invalid_argument);
  CHECK(q.device.complete(p[1].id, 0) == errc::invalid_argument);
  CHECK_FALSE(q.device.broken());
  CHECK(q.device.stats().completed == 2);
}

TEST_CASE("IN_ORDER reap with chains staged behind the published ones (2.7.8, 2.7.9)",
          "[split][in_order][hostile]") {
  const std::uint16_t start = GENERATE(std::uint16_t{0}, std::uint16_t{65534});
  in_order_driver d(start);
  // Heads 0..5 used as one batch; then heads 6, 7, 0, 1 published (the descriptors wrap) and
  // heads 2, 3, 4 staged behind them, never published.
  d.used(0, 5, 0);
  d.publish(1);
  REQUIRE(d.reap(8).size() == 6);
  const auto add = [&](token_t first, std::uint32_t count) {
    std::vector<buffer> bufs;
    std::vector<token_t> toks;
    for (std::uint32_t i = 0; i < count; ++i) {
      bufs.push_back(d.arena.at(i * 64, 64));
      toks.push_back(first + i);
    }
    REQUIRE(*d.q.driver.add_inbufs(bufs, toks) == count);
  };
  add(10, 4);
  d.q.driver.kick_prepare();
  add(20, 3);
  SECTION("one element per published chain") {
    d.used(1, 6, 1);
    d.used(2, 7, 2);
    d.used(3, 0, 3);
    d.used(4, 1, 4);
    d.publish(5);
    const auto u = d.reap(8);
    REQUIRE(u.size() == 4);
    for (std::uint32_t i = 0; i < 4; ++i) check(u[i], 10U + i, 1U + i);
    CHECK_FALSE(d.q.driver.broken());
  }
  SECTION("one element for all the published chains") {
    d.used(1, 1, 4);
    d.publish(2);
    const auto u = d.reap(8);
    REQUIRE(u.size() == 4);
    check(u[0], 10, 0);
    check(u[3], 13, 4);
    CHECK_FALSE(d.q.driver.broken());
  }
  SECTION("after them, an element naming the oldest staged chain") {
    d.used(1, 1, 4);
    d.used(2, 2, 1);
    d.publish(3);
    std::vector<used_buffer> u(8);
    REQUIRE(d.q.driver.get_used(u).value() == 4);
    CHECK(d.q.driver.broken());
    CHECK(d.q.driver.error() == errc::used_id_not_outstanding);
  }
  SECTION("an element naming the newest staged chain") {
    d.used(1, 4, 1);
    d.publish(2);
    std::vector<used_buffer> u(8);
    CHECK(d.q.driver.get_used(u).error() == errc::used_id_not_outstanding);
    CHECK(d.q.driver.broken());
  }
}

TEST_CASE("IN_ORDER add: a chain's descriptors are consecutive and next is i + 1 (2.7.9)",
          "[split][in_order]") {
  // 2.7.9: with IN_ORDER the driver uses descriptors in ring order, so a device may take a
  // chain's descriptors without following links. Chains of several descriptors, one of them
  // across the end of the table; and an indirect table, whose entries link 0 -> 1 -> 2.
  virtq_test::queue_pair<split_layout> q(8, f_in_order());
  buffer_arena arena(4096);
  const auto& v = q.ring.view();
  const auto check_chain = [&](std::uint16_t head, std::uint32_t n) {
    std::uint32_t d = head;
    for (std::uint32_t k = 0; k + 1 < n; ++k) {
      const split::desc& x = v.table[d];
      CHECK((get<LE>(x.flags) & split::desc_f_next) != 0);
      CHECK(get<LE>(x.next) == ((d + 1U) & 7U));
      d = (d + 1U) & 7U;
    }
    CHECK((get<LE>(v.table[d].flags) & split::desc_f_next) == 0);
  };
  const buffer out[] = {arena.at(0, 8)};
  const buffer in[] = {arena.at(64, 8), arena.at(72, 8), arena.at(80, 8)};
  REQUIRE(q.driver.add(out, std::span(in, 2), 1) == errc::ok);  // descriptors 0..2
  REQUIRE(q.driver.add({}, std::span(in, 3), 2) == errc::ok);   // 3..5
  q.driver.kick_prepare();
  CHECK(get<LE>(v.avail.ring(0)) == 0);
  CHECK(get<LE>(v.avail.ring(1)) == 3);
  check_chain(0, 3);
  check_chain(3, 3);
  for (int i = 0; i < 2; ++i) {
    chain c;
    REQUIRE(q.device.pop(c) == errc::ok);
    REQUIRE(q.device.complete(c, 0) == errc::ok);
  }
  q.device.interrupt_prepare();
  used_buffer u[2];
  REQUIRE(*q.driver.get_used(std::span<used_buffer>(u)) == 2);
  REQUIRE(q.driver.add(out, std::span(in, 3), 3) == errc::ok);  // 6, 7, 0, 1: across the end
  q.driver.kick_prepare();
  CHECK(get<LE>(v.avail.ring(2)) == 6);
  check_chain(6, 4);

  SECTION("an indirect table links its entries 0 -> 1 -> 2") {
    driver_options o;
    o.indirect_max = 4;
    o.indirect_threshold = 2;
    virtq_test::queue_pair<split_layout> r(8, f_in_order(), o);
    REQUIRE(r.driver.add(out, std::span(in, 2), 9) == errc::ok);
    r.driver.kick_prepare();
    const split::desc& head = r.ring.view().table[0];
    REQUIRE(get<LE>(head.flags) == split::desc_f_indirect);
    REQUIRE(get<LE>(head.len) == 3 * 16);
    const auto* t =
        reinterpret_cast<const split::desc*>(static_cast<std::uintptr_t>(get<LE>(head.addr)));
    for (std::uint16_t k = 0; k < 2; ++k) {
      CHECK((get<LE>(t[k].flags) & split::desc_f_next) != 0);
      CHECK(get<LE>(t[k].next) == k + 1U);
    }
    CHECK((get<LE>(t[2].flags) & split::desc_f_next) == 0);
  }
}
