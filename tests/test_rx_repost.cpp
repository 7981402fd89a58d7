// The pool's repost list: with nothing shared, a buffer whose last reference goes is written
// straight into the arrays a ring's batch add takes, in the `ready` state, and post_ready()
// hands them to the ring. Ready is free for every purpose but posting: the census counts it as
// free, a completion naming it is refused, a handle of the ended loan is double_release or
// stale exactly as through the free list.
#include <catch2/catch.hpp>

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "virtq/rx_pool.hpp"

using namespace virtq;

namespace {
using plain_pool = rx_pool<rx_single_thread_policy>;
using poison_pool = rx_pool<rx_pool_policy<false, no_lock, /*Poison=*/true>>;

template <class Pool>
std::vector<typename Pool::handle> lend_n(Pool& p, std::size_t n, std::int64_t t) {
  std::vector<std::uint32_t> idx(n);
  REQUIRE(p.take(idx) == n);
  std::vector<typename Pool::handle> out;
  for (auto i : idx) out.push_back(p.lend(i, holder_stack, t));
  return out;
}

/// post_ready() into a "ring" that accepts at most `room`; the tokens it was offered.
template <class Pool>
std::vector<token_t> post(Pool& p, std::size_t room, std::size_t* accepted = nullptr) {
  std::vector<token_t> seen;
  const std::size_t n = p.post_ready([&](std::size_t count, auto src) {
    for (std::size_t k = 0; k < count; ++k, src.advance()) {
      CHECK(src.addr() == p.guest_address(static_cast<std::uint32_t>(src.token())));
      CHECK(src.len() == p.buffer_size());
      seen.push_back(src.token());
    }
    return std::min(room, count);
  });
  if (accepted != nullptr) *accepted = n;
  return seen;
}
}  // namespace

TEMPLATE_TEST_CASE("rx_pool: released buffers go to the repost list, counted as free",
                   "[rx_pool][repost]", plain_pool, poison_pool) {
  TestType pool(4, 64);
  pool.keep_repost_list(true);
  auto hs = lend_n(pool, 3, 0);
  const std::uint32_t a = hs[0].index(), b = hs[1].index(), c = hs[2].index();
  auto copy = hs[2];                   // two references: not the last release below
  CHECK(hs[0].release() == errc::ok);  // single release
  CHECK(pool.release(std::span(hs).subspan(1)) == errc::ok);  // bulk: b last, c shared
  CHECK(pool.state(a) == rx_state::ready);
  CHECK(pool.state(b) == rx_state::ready);
  CHECK(pool.state(c) == rx_state::held);
  CHECK(pool.ready_count() == 2);
  CHECK(pool.free_count() == 1 + 2);  // the never-taken buffer and the two ready ones
  CHECK(pool.held_count() == 1);
  auto cen = pool.census(0);
  CHECK(cen.conserved);
  CHECK(cen.free == 3);
  CHECK(cen.held == 1);

  // In release order; the ring takes one, the other goes to the free list.
  std::size_t accepted = 0;
  CHECK(post(pool, 1, &accepted) == std::vector<token_t>{a, b});
  CHECK(accepted == 1);
  CHECK(pool.state(a) == rx_state::posted);
  CHECK(pool.state(b) == rx_state::free);
  CHECK(pool.ready_count() == 0);
  CHECK(pool.posted_count() == 1);
  CHECK(pool.free_count() == 2);
  CHECK(pool.census(0).conserved);
  // A posted buffer from the list is lent like any other.
  auto again = pool.lend(a, holder_stack, 1);
  REQUIRE(again);
  CHECK(again.data().size() == 64);
  CHECK(again.release() == errc::ok);
  CHECK(copy.release() == errc::ok);
  CHECK(pool.ready_count() == 2);
  CHECK(pool.misuse_total() == 0);
  CHECK(pool.census(0).conserved);
}

TEMPLATE_TEST_CASE(
    "rx_pool: a handle whose loan ended on the repost list is double_release, "
    "then stale once the buffer is lent again",
    "[rx_pool][repost]", plain_pool, poison_pool) {
  TestType pool(2, 64);
  pool.keep_repost_list(true);
  auto hs = lend_n(pool, 1, 0);
  const rx_ref r = hs[0].detach();
  auto dup = pool.adopt(r);  // a second handle value for the one reference (misuse)
  REQUIRE(dup);
  CHECK(pool.release(r) == errc::ok);
  CHECK(pool.state(r.index) == rx_state::ready);
  CHECK(pool.release(r) == errc::double_release);
  CHECK(pool.misuse(errc::double_release) == 1);
  CHECK(dup.data().empty());  // counted too
  CHECK(pool.misuse(errc::double_release) == 2);
  CHECK(pool.ready_count() == 1);  // listed once, not twice
  // In a bulk release too, and the list is unchanged.
  std::vector<typename TestType::handle> batch;
  batch.push_back(pool.adopt(r));  // empty: adopt refuses an ended loan (counted)
  CHECK_FALSE(batch[0]);
  batch.push_back(std::move(dup));
  CHECK(pool.release(std::span(batch)) == errc::double_release);
  CHECK(pool.ready_count() == 1);

  post(pool, 1);
  auto next = pool.lend(r.index, holder_stack, 1);  // the buffer's next loan
  REQUIRE(next);
  CHECK(pool.release(r) == errc::stale_handle);
  CHECK(next.data().size() == 64);  // the current loan is unharmed
  CHECK(pool.held_count() == 1);
  CHECK(pool.census(1).conserved);
}

TEMPLATE_TEST_CASE("rx_pool: the repost list's buffers are not posted: not lendable, not unposted",
                   "[rx_pool][repost]", plain_pool, poison_pool) {
  TestType pool(2, 64);
  pool.keep_repost_list(true);
  auto hs = lend_n(pool, 1, 0);
  const std::uint32_t i = hs[0].index();
  CHECK(hs[0].release() == errc::ok);
  REQUIRE(pool.state(i) == rx_state::ready);
  auto l = pool.lend_batch();
  CHECK_FALSE(l.is_posted(i));
  l.finish(0);
  CHECK_FALSE(pool.lend(i, holder_stack, 0));
  CHECK(pool.misuse(errc::invalid_argument) == 1);
  CHECK(pool.unpost(i) == errc::double_release);  // a ring reset cannot return it either
  CHECK(pool.ready_count() == 1);
  CHECK(pool.census(0).conserved);
  // take() sees only the free list; turning the list off gives its buffers to it.
  std::array<std::uint32_t, 2> got{};
  CHECK(pool.take(std::span(got)) == 1);
  CHECK(got[0] != i);
  pool.keep_repost_list(false);
  CHECK(pool.state(i) == rx_state::free);
  CHECK(pool.ready_count() == 0);
  CHECK(pool.take(std::span(got).first(1)) == 1);
  CHECK(got[0] == i);
  CHECK(pool.census(0).conserved);
}

TEST_CASE("rx_pool: poisoning checks the repost list's buffers when they are posted",
          "[rx_pool][repost]") {
  poison_pool pool(1, 64);
  pool.keep_repost_list(true);
  auto hs = lend_n(pool, 1, 0);
  std::byte* p = hs[0].data().data();
  CHECK(hs[0].release() == errc::ok);
  p[5] = std::byte{1};  // a write after release
  CHECK(pool.misuse(errc::use_after_release) == 0);
  post(pool, 1);
  CHECK(pool.misuse(errc::use_after_release) == 1);
}

TEST_CASE("rx_pool: pools shared between threads keep no repost list", "[rx_pool][repost]") {
  STATIC_REQUIRE_FALSE(rx_pool<>::can_repost);
  STATIC_REQUIRE(plain_pool::can_repost);
  rx_pool<> pool(2, 64);
  pool.keep_repost_list(true);
  auto hs = lend_n(pool, 1, 0);
  const std::uint32_t i = hs[0].index();
  CHECK(hs[0].release() == errc::ok);
  CHECK(pool.state(i) == rx_state::free);
  CHECK(pool.ready_count() == 0);
  CHECK(post(pool, 1).empty());
}
