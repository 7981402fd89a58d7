// libFuzzer target: a hostile DEVICE writes what a device may write (split: the used ring and
// avail_event; packed: the descriptor slots and the device event area); the driver side must
// answer with errc values and a broken queue, hand back only tokens it gave out, each at most
// once, and return every other one from reset() (docs/fuzzing.md). Input layout: config bytes
// (fuzz_common.hpp), then a stream of operations and their operands.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <span>
#include <vector>

#include "fuzz_common.hpp"
#include "virtq/memory.hpp"
#include "virtq/virtqueue.hpp"

namespace {

using namespace virtq;
using virtq_fuzz::reader;

template <class Layout, class Policy>
void run(const virtq_fuzz::config& cfg, reader& in) {
  using driver_type = typename Layout::template driver<Policy>;
  ring_memory<Layout> ring(cfg.size);
  driver_options opts;
  if (cfg.features.has(feature::indirect_desc)) {
    opts.indirect_max = 1U + in.u8() % cfg.size;
    opts.indirect_threshold = in.u8() % 4U;
  }
  driver_type drv(ring.view(), cfg.features, opts);
  const auto areas = virtq_fuzz::device_areas(ring);

  std::map<token_t, std::uint64_t> outstanding;  // token -> writable bytes of its chain
  std::set<token_t> all_added;
  std::set<token_t> reaped;
  token_t next_token = 1;

  // The driver never touches buffer memory, so the addresses only have to be plausible.
  const auto add_some = [&](std::uint8_t n) {
    for (std::uint8_t k = 0; k < n; ++k) {
      const std::uint8_t shape = in.u8();
      std::array<buffer, 6> bufs{};  // up to 3 readable + 3 writable
      const std::size_t n_out = shape & 3U;
      const std::size_t n_in = (shape >> 2) & 3U;
      std::uint64_t writable = 0;
      for (std::size_t j = 0; j < n_out + n_in; ++j) {
        bufs[j] = buffer{0x100000 + 0x1000 * j, 1U + (in.u16() & 0x3FFU)};
        if (j >= n_out) writable += bufs[j].len;
      }
      const token_t t = next_token++;
      const errc e = drv.add(std::span(bufs).first(n_out), std::span(bufs).subspan(n_out, n_in), t);
      if (e == errc::ok) {
        outstanding.emplace(t, writable);
        all_added.insert(t);
      } else {
        // Caller errors and a full ring are refusals that leave the queue as it was.
        FUZZ_CHECK(e == errc::no_space || e == errc::invalid_argument || e == errc::broken);
        FUZZ_CHECK((e == errc::broken) == drv.broken());
      }
    }
  };
  // add_inbufs / add_outbufs: as many one-buffer chains as fit, no more, in one call.
  const auto add_batch = [&](std::size_t n, bool writable) {
    std::array<buffer, 8> bufs{};
    std::array<token_t, 8> tokens{};
    for (std::size_t j = 0; j < n; ++j) {
      bufs[j] = buffer{0x100000 + 0x1000 * j, 1U + (in.u16() & 0x3FFU)};
      tokens[j] = next_token++;
    }
    const std::uint32_t room = drv.num_free();
    const result<std::size_t> got =
        writable ? drv.add_inbufs(std::span(bufs).first(n), std::span(tokens).first(n))
                 : drv.add_outbufs(std::span(bufs).first(n), std::span(tokens).first(n));
    if (!got) {
      FUZZ_CHECK(got.error() == errc::broken && drv.broken());
      return;
    }
    // A single buffer takes one slot, direct or as an indirect table of one.
    FUZZ_CHECK(*got == std::min<std::size_t>(n, room));
    for (std::size_t j = 0; j < *got; ++j) {
      outstanding.emplace(tokens[j], writable ? bufs[j].len : 0U);
      all_added.insert(tokens[j]);
    }
  };
  const auto reap = [&](const used_buffer& u) {
    const auto it = outstanding.find(u.token);
    FUZZ_CHECK(it != outstanding.end());  // given out, and not returned before
    FUZZ_CHECK(u.len <= it->second);      // 2.7.8.2: never more than the chain's writable bytes
    outstanding.erase(it);
    FUZZ_CHECK(reaped.insert(u.token).second);
  };
  const auto check_fatal = [&](errc e) {
    FUZZ_CHECK(e != errc::ok && e != errc::empty && e != errc::invalid_argument &&
               e != errc::no_space);
    FUZZ_CHECK(drv.broken());
    FUZZ_CHECK(drv.stats().rejects[static_cast<std::size_t>(e)] == 1);
    FUZZ_CHECK(!drv.get_used().has_value());
    FUZZ_CHECK(drv.get_used().error() == errc::broken);
    const buffer b{0x100000, 8};
    FUZZ_CHECK(drv.add_inbuf(b, next_token++) == errc::broken);
  };

  add_some(static_cast<std::uint8_t>(1U + in.u8() % cfg.size));
  (void)drv.kick_prepare();

  std::array<used_buffer, 8> batch{};
  const std::uint32_t rounds = 4 * cfg.size + 16;
  for (std::uint32_t i = 0; i < rounds && in.left() != 0; ++i) {
    const std::uint8_t op = in.u8();
    errc e = errc::ok;
    switch (op % 8U) {
      case 0:
      case 1: {  // the device writes some bytes where it may
        const auto& area = areas[(op >> 3) % areas.size()];
        const std::uint16_t at = in.u16();
        const std::size_t n = 1U + ((op >> 4) & 15U);
        for (std::size_t k = 0; k < n; ++k) area[(at + k) % area.size()] = std::byte{in.u8()};
        break;
      }
      case 2: {
        const result<used_buffer> u = drv.get_used();
        if (u) {
          reap(*u);
        } else {
          e = u.error();
        }
        break;
      }
      case 3: {
        const result<std::size_t> n = drv.get_used(std::span(batch).first(1U + (op >> 5)));
        if (n) {
          FUZZ_CHECK(*n <= 1U + (op >> 5));
          for (std::size_t k = 0; k < *n; ++k) reap(batch[k]);
          if (*n == 0) e = errc::empty;
        } else {
          e = n.error();
        }
        break;
      }
      case 4:
        (void)drv.enable_interrupts();
        break;
      case 5:
        if ((op & 8U) != 0) {
          (void)drv.enable_interrupts_delayed();
        } else {
          drv.disable_interrupts();
        }
        break;
      case 6:
        if ((op & 0x80U) != 0) {
          add_batch(static_cast<std::size_t>(1U + ((op >> 3) & 7U)), (op & 0x40U) != 0);
        } else {
          add_some(static_cast<std::uint8_t>(1U + ((op >> 3) & 3U)));
        }
        break;
      default:
        (void)drv.kick_prepare();
        break;
    }
    if (e != errc::ok && e != errc::empty) {
      FUZZ_CHECK(drv.error() == e);
      check_fatal(e);
      break;
    }
    if (drv.broken()) {
      // A batch that reaped some completions before the device broke a rule returns them;
      // the rule is then in error() (get_used(span) contract).
      FUZZ_CHECK(op % 8U == 3U);
      check_fatal(drv.error());
      break;
    }
    FUZZ_CHECK(drv.stats().rejected() == 0);
  }
  FUZZ_CHECK(drv.broken() == (drv.stats().rejected() > 0));

  // Reset hands back every chain still out, once: reaped and reset together are all added.
  std::vector<token_t> returned;
  drv.reset([&](token_t t) { returned.push_back(t); });
  FUZZ_CHECK(!drv.broken());
  for (const token_t t : returned) {
    FUZZ_CHECK(outstanding.erase(t) == 1);
    FUZZ_CHECK(reaped.count(t) == 0);
  }
  FUZZ_CHECK(outstanding.empty());
  FUZZ_CHECK(returned.size() + reaped.size() == all_added.size());
  FUZZ_CHECK(drv.num_free() == cfg.size);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  reader in(data, size);
  const virtq_fuzz::config cfg = virtq_fuzz::read_config(in);
  virtq_fuzz::dispatch(cfg, [&]<class L, class P>() { run<L, P>(cfg, in); });
  return 0;
}
