// Bulk release (rx_pool::release(span)) against the handle-by-handle release it stands for.
//
// The receive path gives each burst back with one call, which runs a loop of its own for the
// common case (every handle ours, live and the sole reference) and hands the first other handle
// to the general loop. Whatever the mix -- shared copies, empty handles, another pool's handles,
// two handle values for one reference (the misuse adopt() makes possible), handles whose buffer
// was lent again meanwhile -- the outcome must be exactly that of releasing the same handles one
// by one, in order: the same first misuse, the same misuse counters, the same buffers freed in
// the same free-list order, conservation intact.
#include <rapidcheck.h>
#include <rapidcheck/catch.h>
#include <catch2/catch.hpp>

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "property.hpp"
#include "virtq/rx_pool.hpp"

using namespace virtq;

namespace {

constexpr std::uint32_t pool_buffers = 6;

enum class op : int { lend, copy, dup, release_now, foreign, empty };

struct step {
  op what;
  std::size_t k;  // which handle (modulo the list's size)
};

/// One pool with a second one ("another pool's handles") and the handles made so far.
template <class Pool>
struct side {
  explicit side(bool repost) { pool.keep_repost_list(repost); }
  Pool pool{pool_buffers, 64, "rx"};
  Pool other{2, 64, "other"};
  std::vector<typename Pool::handle> hs;
  std::vector<errc> now_results;  // results of release_now steps

  void lend_one(Pool& p, std::int64_t t) {
    std::array<std::uint32_t, 1> i{};
    if (p.take(std::span(i)) != 1) return;
    hs.push_back(p.lend(i[0], holder_stack, t));
  }

  void apply(const step& s, std::int64_t t) {
    const std::size_t n = hs.size();
    switch (s.what) {
      case op::lend:
        lend_one(pool, t);
        break;
      case op::copy:
        if (n != 0) hs.push_back(hs[s.k % n]);
        break;
      case op::dup:
        // Two handle values for one reference.
        if (n != 0 && hs[s.k % n].pool() == &pool) {
          const rx_ref r = hs[s.k % n].detach();
          hs[s.k % n] = pool.adopt(r);
          hs.push_back(pool.adopt(r));
        }
        break;
      case op::release_now:
        if (n != 0) now_results.push_back(hs[s.k % n].release());
        break;
      case op::foreign:
        lend_one(other, t);
        break;
      case op::empty:
        hs.emplace_back();
        break;
    }
  }
};

/// The handle-by-handle release the bulk call must match: the first misuse of this pool's
/// handles, else the first of the other pool's (those are released after the pool's lock).
template <class Pool>
errc release_each(side<Pool>& s) {
  errc own = errc::ok, foreign = errc::ok;
  for (auto& h : s.hs) {
    if (!h) continue;
    const bool mine = h.pool() == &s.pool;
    const errc e = h.release();
    errc& first = mine ? own : foreign;
    if (e != errc::ok && first == errc::ok) first = e;
  }
  return own != errc::ok ? own : foreign;
}

template <class Pool>
void same_pool(const Pool& a, const Pool& b) {
  RC_ASSERT(a.free_count() == b.free_count());
  RC_ASSERT(a.ready_count() == b.ready_count());
  RC_ASSERT(a.held_count() == b.held_count());
  RC_ASSERT(a.posted_count() == b.posted_count());
  for (std::uint32_t i = 0; i < a.size(); ++i) RC_ASSERT(a.state(i) == b.state(i));
  for (std::size_t e = 0; e < errc_count; ++e) {
    RC_ASSERT(a.misuse(static_cast<errc>(e)) == b.misuse(static_cast<errc>(e)));
  }
  RC_ASSERT(a.census(0).conserved);
}

/// The repost list's buffers in order (posting them all) -- or nothing without one.
template <class Pool>
std::vector<token_t> post_all_ready(Pool& p) {
  std::vector<token_t> got;
  const std::size_t n = p.post_ready([&](std::size_t count, auto src) {
    for (std::size_t k = 0; k < count; ++k, src.advance()) {
      RC_ASSERT(src.addr() == p.guest_address(static_cast<std::uint32_t>(src.token())));
      RC_ASSERT(src.len() == p.buffer_size());
      got.push_back(src.token());
    }
    return count;
  });
  RC_ASSERT(n == got.size());
  return got;
}

template <class Pool>
void run_model(bool repost) {
  const auto steps = *rc::gen::container<std::vector<step>>(rc::gen::build<step>(
      rc::gen::set(&step::what, rc::gen::weightedElement<op>({{5, op::lend},
                                                              {3, op::copy},
                                                              {1, op::dup},
                                                              {2, op::release_now},
                                                              {1, op::foreign},
                                                              {1, op::empty}})),
      rc::gen::set(&step::k, virtq_test::uniform_gen<std::size_t>(0, 64))));
  side<Pool> bulk(repost), each(repost);
  std::int64_t t = 0;
  for (const step& s : steps) {
    bulk.apply(s, t);
    each.apply(s, t);
    ++t;
  }
  RC_ASSERT(bulk.now_results == each.now_results);
  RC_ASSERT(bulk.hs.size() == each.hs.size());

  const errc got = bulk.pool.release(std::span(bulk.hs));
  const errc want = release_each(each);
  RC_ASSERT(got == want);
  for (const auto& h : bulk.hs) RC_ASSERT(!h);
  same_pool(bulk.pool, each.pool);
  same_pool(bulk.other, each.other);
  RC_ASSERT(bulk.pool.held_count() == 0u);
  if (!repost || !Pool::can_repost) RC_ASSERT(bulk.pool.ready_count() == 0u);
  for (std::uint32_t i = 0; i < pool_buffers; ++i) {
    RC_ASSERT(bulk.pool.state(i) != rx_state::held);
  }

  // The repost lists hold the same buffers in the same order; posted, they are lent like
  // any posted buffer.
  RC_ASSERT(post_all_ready(bulk.pool) == post_all_ready(each.pool));
  same_pool(bulk.pool, each.pool);
  RC_ASSERT(bulk.pool.ready_count() == 0u);

  // The free lists hold the same buffers in the same order: the next loans agree.
  bulk.hs.clear();
  each.hs.clear();
  for (std::uint32_t k = 0; k < pool_buffers; ++k) {
    bulk.lend_one(bulk.pool, t);
    each.lend_one(each.pool, t);
  }
  RC_ASSERT(bulk.hs.size() == each.hs.size());
  for (std::size_t k = 0; k < bulk.hs.size(); ++k) {
    RC_ASSERT(bulk.hs[k].index() == each.hs[k].index());
  }
  RC_ASSERT(bulk.pool.release(std::span(bulk.hs)) == errc::ok);
  RC_ASSERT(release_each(each) == errc::ok);
  same_pool(bulk.pool, each.pool);
}

using plain_pool = rx_pool<rx_pool_policy<false, no_lock, false, true>>;
using plain_poison_pool = rx_pool<rx_pool_policy<false, no_lock, true, true>>;
using plain_locked_pool = rx_pool<rx_pool_policy<false, spin_lock, false, true>>;
using atomic_poison_pool = rx_pool<rx_pool_policy<true, spin_lock, true, true>>;

}  // namespace

TEMPLATE_TEST_CASE("rx_pool: a bulk release does what releasing each handle in order does",
                   "[rx_pool][property]", plain_pool, plain_poison_pool, plain_locked_pool,
                   atomic_poison_pool, rx_pool<>) {
  rc::prop("bulk == one by one", [] { run_model<TestType>(false); });
  rc::prop("bulk == one by one, repost list on", [] { run_model<TestType>(true); });
}
