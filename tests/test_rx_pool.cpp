// Receive-buffer pool: refcount semantics, misuse detection, poisoning, census, conservation.
#include <catch2/catch.hpp>

#include <string>
#include <thread>
#include <vector>

#include "virtq/rx_pool.hpp"

using namespace virtq;

namespace {
using debug_pool = rx_pool<rx_pool_policy<true, spin_lock, /*Poison=*/true>>;
using plain_pool = rx_pool<rx_single_thread_policy>;

/// Takes `n` buffers to the posted state and lends them to `h` at time `t`.
template <class Pool>
std::vector<typename Pool::handle> lend_n(Pool& p, std::size_t n, holder_id h, std::int64_t t) {
  std::vector<std::uint32_t> idx(n);
  REQUIRE(p.take(idx) == n);
  std::vector<typename Pool::handle> out;
  for (auto i : idx) out.push_back(p.lend(i, h, t));
  return out;
}
}  // namespace

TEMPLATE_TEST_CASE("rx_pool: copying adds a reference, moving does not; the last release frees",
                   "[rx_pool]", debug_pool, plain_pool, rx_pool<>) {
  TestType pool(4, 256);
  auto hs = lend_n(pool, 1, holder_stack, 0);
  auto h = std::move(hs[0]);
  REQUIRE(h);
  CHECK(pool.held_count() == 1);
  CHECK(pool.free_count() == 3);

  {
    auto copy = h;  // two references
    CHECK(copy.index() == h.index());
    CHECK(copy.release() == errc::ok);
    CHECK_FALSE(copy);
    CHECK(pool.held_count() == 1);  // h still holds it
  }
  auto moved = std::move(h);
  CHECK_FALSE(h);  // NOLINT(bugprone-use-after-move): moved-from is documented empty
  CHECK(pool.held_count() == 1);
  {
    auto c2 = moved;
    moved = typename TestType::handle{};  // assignment releases one reference
    CHECK(pool.held_count() == 1);
  }  // c2's destructor releases the last one
  CHECK(pool.held_count() == 0);
  CHECK(pool.free_count() == 4);
  CHECK(pool.misuse_total() == 0);
}

TEST_CASE("rx_pool: the data span addresses the buffer and the guest address is identity",
          "[rx_pool]") {
  rx_pool<> pool(3, 2048);
  auto hs = lend_n(pool, 3, holder_stack, 0);
  for (std::uint32_t k = 0; k < 3; ++k) {
    auto d = hs[k].data();
    REQUIRE(d.size() == 2048);
    CHECK(hs[k].guest_address() == reinterpret_cast<std::uintptr_t>(d.data()));
    CHECK(d.data() == pool.host_address(hs[k].index()));
  }
}

TEST_CASE("rx_pool: a region one byte short of count times buffer_size is invalid_argument",
          "[rx_pool]") {
  aligned_buffer region(4 * 512);
  guest_memory mem;
  mem.add_region(0x100000, region.size(), region.data());  // every buffer's start is mapped
  const auto thrown = [&](std::size_t bytes) {
    try {
      rx_pool<> pool(4, 512, region.span().first(bytes), mem);
    } catch (const virtq::error& e) {
      return e.value();
    }
    return errc::ok;
  };
  CHECK(thrown(4 * 512 - 1) == errc::invalid_argument);  // the last buffer would end past it
  CHECK(thrown(4 * 512) == errc::ok);                    // exactly enough
}

TEST_CASE("rx_pool: buffers carved from a guest_memory region get its guest addresses",
          "[rx_pool]") {
  aligned_buffer region(4 * 512);
  guest_memory mem;
  mem.add_region(0x100000, region.size(), region.data());
  rx_pool<> pool(4, 512, region.span(), mem, "mapped");
  for (std::uint32_t i = 0; i < 4; ++i) CHECK(pool.guest_address(i) == 0x100000 + i * 512u);
  aligned_buffer small(100);
  CHECK_THROWS_AS(rx_pool<>(4, 512, small.span(), mem), virtq::error);
  aligned_buffer outside(4 * 512);
  CHECK_THROWS_AS(rx_pool<>(4, 512, outside.span(), mem), virtq::error);
  CHECK_THROWS_AS(rx_pool<>(0, 512), virtq::error);
}

TEMPLATE_TEST_CASE("rx_pool: releasing a detached reference twice is double_release", "[rx_pool]",
                   debug_pool, plain_pool, rx_pool<>) {
  TestType pool(2, 64);
  auto hs = lend_n(pool, 1, holder_stack, 0);
  rx_ref r = hs[0].detach();
  CHECK_FALSE(hs[0]);
  CHECK(pool.release(r) == errc::ok);
  CHECK(pool.release(r) == errc::double_release);
  CHECK(pool.misuse(errc::double_release) == 1);
  CHECK(pool.free_count() == 2);  // not pushed twice
  auto c = pool.census(0);
  CHECK(c.conserved);
}

TEST_CASE("rx_pool: an empty handle's release is invalid_argument", "[rx_pool]") {
  rx_pool<> pool(2, 64);
  auto hs = lend_n(pool, 1, holder_stack, 0);
  CHECK(hs[0].release() == errc::ok);
  CHECK(hs[0].release() == errc::invalid_argument);
}

TEST_CASE("rx_pool: a buffer of another pool is foreign_buffer", "[rx_pool]") {
  rx_pool<> a(2, 64, "a"), b(2, 64, "b");
  auto ha = lend_n(a, 1, holder_stack, 0);
  auto hb = lend_n(b, 1, holder_stack, 0);
  CHECK(b.release(std::move(ha[0])) == errc::foreign_buffer);
  CHECK(ha[0]);  // untouched: still a's reference
  CHECK(b.misuse(errc::foreign_buffer) == 1);
  rx_ref r = ha[0].detach();
  CHECK(b.release(r) == errc::foreign_buffer);
  CHECK_FALSE(b.adopt(r));
  CHECK(b.misuse(errc::foreign_buffer) == 3);
  CHECK(b.held_count() == 1);
  CHECK(a.release(r) == errc::ok);
  CHECK(a.held_count() == 0);
  // An index no pool has.
  CHECK(a.release(rx_ref{&a, 99, 0}) == errc::foreign_buffer);
}

TEMPLATE_TEST_CASE(
    "rx_pool: unpost of an index one past the pool is foreign_buffer and changes nothing",
    "[rx_pool]", debug_pool, plain_pool, rx_pool<>) {
  TestType pool(4, 64);
  std::uint32_t i = 0;
  REQUIRE(pool.take(std::span(&i, 1)) == 1);
  CHECK(pool.unpost(pool.size()) == errc::foreign_buffer);
  CHECK(pool.misuse(errc::foreign_buffer) == 1);
  CHECK(pool.misuse_total() == 1);
  CHECK(pool.posted_count() == 1);
  CHECK(pool.free_count() == 3);
  CHECK(pool.unpost(i) == errc::ok);
  CHECK(pool.census(0).conserved);
}

TEMPLATE_TEST_CASE(
    "rx_pool: adopting a reference with an index one past the pool is foreign_buffer", "[rx_pool]",
    debug_pool, plain_pool, rx_pool<>) {
  TestType pool(2, 64);
  auto hs = lend_n(pool, 1, holder_stack, 0);
  // The pool is right and the generation is the live loan's; only the index is out of range.
  CHECK_FALSE(pool.adopt(rx_ref{&pool, pool.size(), hs[0].generation()}));
  CHECK(pool.misuse(errc::foreign_buffer) == 1);
  CHECK(pool.misuse_total() == 1);
  CHECK(pool.held_count() == 1);
  CHECK(hs[0].release() == errc::ok);
  CHECK(pool.census(0).conserved);
}

TEST_CASE("rx_pool: the holder registry refuses a new name past max_holders but finds old ones",
          "[rx_pool]") {
  holder_registry reg;  // "stack" is holder 0; the others are named by their number
  for (std::size_t k = 1; k < holder_registry::max_holders; ++k) {
    REQUIRE(reg.register_holder(std::to_string(k)) == k);
  }
  errc e = errc::ok;
  try {
    (void)reg.register_holder("one-too-many");
  } catch (const virtq::error& x) {
    e = x.value();
  }
  CHECK(e == errc::invalid_argument);
  CHECK_FALSE(reg.valid(holder_id{holder_registry::max_holders}));
  // Names already there are still found (no new entry needed).
  CHECK(reg.register_holder("stack") == holder_stack);
  const std::size_t last = holder_registry::max_holders - 1;
  CHECK(reg.register_holder(std::to_string(last)) == last);
  CHECK(reg.name(static_cast<holder_id>(last)) == std::to_string(last));
}

TEMPLATE_TEST_CASE("rx_pool: a handle from an earlier loan is stale_handle and harms nothing",
                   "[rx_pool]", debug_pool, plain_pool, rx_pool<>) {
  TestType pool(1, 64);  // one buffer: the next loan reuses it
  auto first = lend_n(pool, 1, holder_stack, 0);
  rx_ref old = first[0].detach();
  auto keep = pool.adopt(old);  // a second handle value for the same reference (misuse below)
  REQUIRE(keep);
  rx_ref dup = keep.detach();
  CHECK(pool.release(old) == errc::ok);
  auto second = lend_n(pool, 1, holder_stack, 5);  // the buffer is lent again
  REQUIRE(second[0].index() == old.index);
  CHECK(second[0].generation() != old.generation);

  CHECK(pool.release(dup) == errc::stale_handle);
  CHECK(pool.misuse(errc::stale_handle) == 1);
  CHECK_FALSE(pool.adopt(dup));
  CHECK(pool.misuse(errc::stale_handle) == 2);
  // The current loan is intact.
  CHECK(second[0].data().size() == 64);
  CHECK(pool.held_count() == 1);
  CHECK(pool.census(5).conserved);
}

TEMPLATE_TEST_CASE("rx_pool: a stale copy's data is empty and its pass_to and release do nothing",
                   "[rx_pool]", debug_pool, plain_pool, rx_pool<>) {
  TestType pool(1, 64);
  const holder_id ftp = pool.register_holder("ftp");
  auto h = std::move(lend_n(pool, 1, holder_stack, 0)[0]);
  rx_ref r = h.detach();
  auto a = pool.adopt(r);
  CHECK(pool.release(r) == errc::ok);  // over-release through the raw reference
  CHECK(a.data().empty());             // a's loan is gone
  CHECK(pool.misuse(errc::double_release) == 1);
  // Naming a holder for a loan that ended is the same misuse: refused, counted, and the free
  // buffer is not booked to anyone.
  CHECK(a.pass_to(ftp) == errc::double_release);
  CHECK(pool.misuse(errc::double_release) == 2);
  const auto c = pool.census(0);
  CHECK(c.conserved);
  CHECK(c.free == 1);
  CHECK(c.held == 0);
  CHECK(c.find("ftp") == nullptr);
  auto b = a;  // copying a stale handle gives an empty one
  CHECK_FALSE(b);
  CHECK(a.release() == errc::double_release);
  CHECK(pool.free_count() == 1);
}

TEST_CASE("rx_pool: poisoning catches a write after release", "[rx_pool]") {
  debug_pool pool(1, 128);
  auto h = std::move(lend_n(pool, 1, holder_stack, 0)[0]);
  std::byte* p = h.data().data();
  CHECK(h.release() == errc::ok);
  // Released buffers are filled with the pattern.
  CHECK(std::all_of(p, p + 128, [](std::byte b) { return b == debug_pool::poison_byte; }));
  p[17] = std::byte{0};  // the bug: writing into a buffer we gave back
  std::uint32_t i = 0;
  CHECK(pool.take(std::span(&i, 1)) == 1);
  CHECK(pool.misuse(errc::use_after_release) == 1);
  CHECK(pool.unpost(i) == errc::ok);
  CHECK(pool.take(std::span(&i, 1)) == 1);  // re-poisoned: no second report
  CHECK(pool.misuse(errc::use_after_release) == 1);
}

TEST_CASE("rx_pool: census counts per holder with ages and checks conservation", "[rx_pool]") {
  rx_pool<> pool(16, 64);
  const holder_id ftp = pool.register_holder("ftp-data:3034");
  const holder_id web = pool.register_holder("http:80");
  CHECK(pool.register_holder("ftp-data:3034") == ftp);  // same name, same id
  constexpr std::int64_t ms = 1'000'000;

  auto a = lend_n(pool, 5, holder_stack, 0);
  for (auto& h : a) CHECK(h.pass_to(ftp) == errc::ok);
  auto b = lend_n(pool, 2, web, 900 * ms);
  std::uint32_t posted[3];
  REQUIRE(pool.take(posted) == 3);
  CHECK(b[0].pass_to(holder_id{999}) == errc::invalid_argument);

  const auto c = pool.census(1000 * ms);
  CHECK(c.conserved);
  CHECK(c.total == 16);
  CHECK(c.free == 6);
  CHECK(c.posted == 3);
  CHECK(c.held == 7);
  REQUIRE(c.holders.size() == 2);
  CHECK(c.holders[0].name == "ftp-data:3034");  // most buffers first
  CHECK(c.holders[0].count == 5);
  CHECK(c.holders[0].oldest == std::chrono::milliseconds(1000));
  CHECK(c.holders[0].ages[age_bucket(std::chrono::milliseconds(1000))] == 5);
  CHECK(age_bucket(std::chrono::milliseconds(1000)) == 10);  // [512, 1024) ms
  const auto* w = c.find("http:80");
  REQUIRE(w != nullptr);
  CHECK(w->count == 2);
  CHECK(w->oldest == std::chrono::milliseconds(100));
  CHECK(w->ages[7] == 2);  // [64, 128) ms
  const std::string text = to_string(c);
  CHECK(text.find("ftp-data:3034") != std::string::npos);
  CHECK(text.find("conserved") != std::string::npos);

  a.clear();
  for (auto i : posted) CHECK(pool.unpost(i) == errc::ok);
  CHECK(pool.unpost(posted[0]) == errc::double_release);
  const auto c2 = pool.census(1000 * ms);
  CHECK(c2.conserved);
  CHECK(c2.held == 2);
  CHECK(c2.free == 14);
  CHECK(c2.find("ftp-data:3034") == nullptr);
}

TEST_CASE("rx_pool: age buckets are log2 milliseconds", "[rx_pool]") {
  using std::chrono::milliseconds;
  CHECK(age_bucket(std::chrono::microseconds(999)) == 0);
  CHECK(age_bucket(milliseconds(1)) == 1);
  CHECK(age_bucket(milliseconds(2)) == 2);
  CHECK(age_bucket(milliseconds(3)) == 2);
  CHECK(age_bucket(milliseconds(4)) == 3);
  CHECK(age_bucket(std::chrono::hours(100)) == age_buckets - 1);
  CHECK(age_bucket(std::chrono::nanoseconds(-5)) == 0);
}

TEST_CASE("rx_pool: allocate hands free buffers out directly, and an empty pool says so",
          "[rx_pool]") {
  rx_pool<> pool(2, 64);
  auto a = pool.allocate(holder_stack, 0);
  auto b = pool.allocate(holder_stack, 0);
  auto c = pool.allocate(holder_stack, 0);
  CHECK(a);
  CHECK(b);
  CHECK_FALSE(c);
  CHECK(pool.census(0).held == 2);
  CHECK(pool.census(0).conserved);
  std::uint32_t i = 0;
  CHECK(pool.take(std::span(&i, 1)) == 0);
  CHECK(pool.lend(1, holder_stack, 0).pool() == nullptr);  // not posted: refused
  CHECK(pool.misuse(errc::invalid_argument) == 1);
}

TEST_CASE("rx_pool: copies released on several threads return the buffer exactly once",
          "[rx_pool]") {
  rx_pool<> pool(8, 64);
  for (int round = 0; round < 200; ++round) {
    auto hs = lend_n(pool, 8, holder_stack, 0);
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; ++t) {
      std::vector<rx_pool<>::handle> mine(hs.begin(), hs.end());  // a copy of each
      ts.emplace_back([m = std::move(mine)]() mutable { m.clear(); });
    }
    hs.clear();
    for (auto& t : ts) t.join();
    REQUIRE(pool.free_count() == 8);
  }
  CHECK(pool.census(0).conserved);
  CHECK(pool.misuse_total() == 0);
}

TEST_CASE("rx_pool: with the census policy off, counts stay exact and loans are anonymous",
          "[rx_pool]") {
  rx_pool<rx_pool_policy<true, spin_lock, false, /*Census=*/false>> pool(8, 64);
  const holder_id ftp = pool.register_holder("ftp");
  auto hs = lend_n(pool, 3, ftp, 1'000'000);
  CHECK(hs[0].pass_to(ftp) == errc::ok);
  const auto c = pool.census(5'000'000'000);
  CHECK(c.conserved);
  CHECK(c.held == 3);
  REQUIRE(c.holders.size() == 1);
  CHECK(c.holders[0].name == "stack");
  CHECK(c.holders[0].oldest == std::chrono::nanoseconds(0));
}

TEMPLATE_TEST_CASE(
    "rx_pool: a bulk release frees last references, keeps shared ones, and names "
    "each misuse",
    "[rx_pool]", debug_pool, plain_pool, rx_pool<>) {
  TestType pool(8, 256);
  TestType other(2, 256, "other");
  auto hs = lend_n(pool, 5, holder_stack, 0);
  auto theirs = lend_n(other, 1, holder_stack, 0);
  auto copy = hs[1];                            // hs[1]'s buffer has two references
  auto stale = hs[2];                           // a second reference, released below
  REQUIRE(stale.release() == errc::ok);         // hs[2] is now the only reference
  auto detached = hs[3].detach();               // hs[3] empty, the reference lives in `detached`
  REQUIRE(pool.release(detached) == errc::ok);  // ... and is gone: buffer free again

  std::vector<typename TestType::handle> batch;
  batch.push_back(std::move(hs[0]));      // last reference: freed
  batch.push_back(std::move(hs[1]));      // shared: one reference dropped, still held
  batch.push_back(std::move(hs[2]));      // last reference: freed
  batch.push_back({});                    // empty: skipped
  batch.push_back(std::move(theirs[0]));  // another pool's: released into it
  batch.push_back(std::move(hs[4]));      // last reference: freed
  CHECK(pool.release(std::span(batch)) == errc::ok);
  for (const auto& h : batch) CHECK_FALSE(h);
  CHECK(pool.held_count() == 1);  // copy's buffer
  CHECK(pool.free_count() == 7);
  CHECK(other.held_count() == 0);
  CHECK(other.free_count() == 2);
  CHECK(pool.census(0).conserved);

  // A handle whose buffer was released in between: the bulk call reports it and still frees
  // the others.
  auto again = lend_n(pool, 2, holder_stack, 1);
  auto dup = again[0];
  REQUIRE(again[0].release() == errc::ok);
  REQUIRE(dup.release() == errc::ok);  // the buffer is free now
  std::vector<typename TestType::handle> late;
  late.push_back(std::move(again[1]));
  late.push_back(std::move(copy));
  CHECK(pool.release(std::span(late)) == errc::ok);
  CHECK(pool.held_count() == 0);
  CHECK(pool.free_count() == 8);
  CHECK(pool.misuse_total() == 0);
  CHECK(pool.census(0).conserved);
}

TEMPLATE_TEST_CASE(
    "rx_pool: a bulk release names a stale or double-released handle and still frees the "
    "rest",
    "[rx_pool]", debug_pool, plain_pool, rx_pool<>) {
  TestType pool(2, 64);
  // Two handle values for one reference (a misuse adopt() makes possible): the first release
  // frees the buffer, the second is double_release -- in the same bulk call.
  auto first = lend_n(pool, 2, holder_stack, 0);
  rx_ref r = first[0].detach();
  std::vector<typename TestType::handle> batch;
  batch.push_back(pool.adopt(r));
  batch.push_back(pool.adopt(r));
  batch.push_back(std::move(first[1]));
  CHECK(pool.release(std::span(batch)) == errc::double_release);
  for (const auto& h : batch) CHECK_FALSE(h);
  CHECK(pool.misuse(errc::double_release) == 1);
  CHECK(pool.held_count() == 0);
  CHECK(pool.free_count() == 2);  // buffer 0 pushed once, not twice
  CHECK(pool.census(0).conserved);

  // A handle from an earlier loan of a buffer lent again: stale_handle; the new loan survives.
  auto a = lend_n(pool, 1, holder_stack, 1);
  rx_ref old = a[0].detach();
  auto dup = pool.adopt(old);
  REQUIRE(pool.release(old) == errc::ok);
  auto b = lend_n(pool, 2, holder_stack, 2);  // buffer of `old` is lent again
  std::vector<typename TestType::handle> late;
  late.push_back(std::move(dup));
  late.push_back(std::move(b[1]));
  CHECK(pool.release(std::span(late)) == errc::stale_handle);
  CHECK(pool.misuse(errc::stale_handle) == 1);
  CHECK(pool.held_count() == 1);  // b[0] intact
  CHECK(b[0].data().size() == 64);
  CHECK(pool.census(2).conserved);
}

TEST_CASE("rx_pool: take() for posting hands out index and guest address of each buffer",
          "[rx_pool]") {
  rx_pool<> pool(6, 512);
  std::vector<std::pair<std::uint32_t, std::uint64_t>> got;
  const std::size_t n = pool.take(4, [&](std::size_t k, std::uint32_t i, std::uint64_t a) {
    CHECK(k == got.size());
    got.emplace_back(i, a);
  });
  CHECK(n == 4);
  REQUIRE(got.size() == 4);
  for (const auto& [i, a] : got) {
    CHECK(pool.state(i) == rx_state::posted);
    CHECK(a == pool.guest_address(i));
  }
  CHECK(pool.posted_count() == 4);
  CHECK(pool.free_count() == 2);
  // Asking for more than is free takes what there is.
  CHECK(pool.take(10, [](std::size_t, std::uint32_t, std::uint64_t) {}) == 2);
  CHECK(pool.free_count() == 0);
  for (std::uint32_t i = 0; i < 6; ++i) CHECK(pool.unpost(i) == errc::ok);
  CHECK(pool.census(0).conserved);
}

TEST_CASE("rx_pool: loan ages are exact in microseconds and survive the stamp's 48-bit wrap",
          "[rx_pool]") {
  constexpr std::int64_t us = 1'000;
  // The stamp keeps the clock's low 48 bits of microseconds: lend just before they wrap.
  constexpr std::int64_t wrap = std::int64_t{1} << 48;
  const std::int64_t t0 = (wrap - 3) * us;
  CHECK(loan_stamp::age(loan_stamp::make(holder_stack, t0), t0 + 7 * us) ==
        std::chrono::microseconds(7));
  // A clock that starts below zero reads the same way.
  CHECK(loan_stamp::age(loan_stamp::make(holder_stack, -5 * us), 20 * us) ==
        std::chrono::microseconds(25));
  // A loan stamped after `now` (a caller's older clock) is age 0, not 4 years.
  CHECK(loan_stamp::age(loan_stamp::make(holder_stack, 50 * us), 10 * us).count() == 0);
  // A loan of 4 years is still read as such.
  constexpr std::int64_t four_years_us = std::int64_t{4} * 365 * 24 * 3600 * 1'000'000;
  CHECK(loan_stamp::age(loan_stamp::make(holder_stack, t0), t0 + four_years_us * us) ==
        std::chrono::microseconds(four_years_us));

  rx_pool<> pool(4, 64);
  const holder_id ftp = pool.register_holder("ftp");
  auto hs = lend_n(pool, 2, holder_stack, t0);
  CHECK(hs[1].pass_to(ftp) == errc::ok);  // keeps the loan's time
  const auto c = pool.census(t0 + 1500 * us);
  REQUIRE(c.holders.size() == 2);
  for (const auto& h : c.holders) {
    CHECK(h.count == 1);
    CHECK(h.oldest == std::chrono::microseconds(1500));
    CHECK(h.ages[age_bucket(std::chrono::microseconds(1500))] == 1);
  }
  CHECK(c.find("ftp") != nullptr);
}

TEMPLATE_TEST_CASE(
    "rx_pool: references beyond the first are counted apart; whichever copy goes "
    "last frees the buffer, and the next loan starts with one reference",
    "[rx_pool]", debug_pool, plain_pool, rx_pool<>) {
  TestType pool(1, 64);  // one buffer: every loan reuses it
  for (int order = 0; order < 4; ++order) {
    auto hs = lend_n(pool, 1, holder_stack, 0);
    std::vector<typename TestType::handle> refs{hs[0], hs[0], hs[0]};
    refs.push_back(std::move(hs[0]));  // four references, the loan's own among them
    // Release in a different order each round; only the fourth release frees.
    for (int k = 0; k < 4; ++k) {
      CHECK(pool.held_count() == 1);
      CHECK(refs[static_cast<std::size_t>((k + order) % 4)].release() == errc::ok);
    }
    CHECK(pool.held_count() == 0);
    CHECK(pool.free_count() == 1);
    CHECK(pool.census(0).conserved);
    // The next loan: a single release frees it (its count starts clean).
    auto again = lend_n(pool, 1, holder_stack, 0);
    CHECK(again[0].release() == errc::ok);
    CHECK(pool.held_count() == 0);
    CHECK(pool.free_count() == 1);
  }
  CHECK(pool.misuse_total() == 0);
}

TEST_CASE("rx_pool: the lender refuses a token out of range or not posted", "[rx_pool]") {
  rx_pool<rx_single_thread_policy> pool(4, 64);
  std::uint32_t i = 0;
  REQUIRE(pool.take(std::span(&i, 1)) == 1);
  const auto l = pool.lend_batch();
  CHECK(l.is_posted(i));
  CHECK_FALSE(l.is_posted(i + 1));                   // free
  CHECK_FALSE(l.is_posted(4));                       // one past the end
  CHECK_FALSE(l.is_posted(std::uint64_t{1} << 32));  // truncates to 0, which is posted
  auto h = pool.lend(i, holder_stack, 0);
  CHECK_FALSE(pool.lend_batch().is_posted(i));  // held now
  CHECK(h.release() == errc::ok);
}
