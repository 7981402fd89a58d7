// SPDX-License-Identifier: MIT
// bench/floor_ring.hpp -- the split ring FORMAT with nothing else: what any implementation of
// 2.7 must do per buffer when nothing is checked, as a bench_pair next to our queues.
//
// It is not a usable queue and it is not in the library: it trusts the peer completely (an id
// or index from the ring indexes its arrays unchecked, a length is never compared, a used idx
// may jump anywhere), it has no notification suppression, no statistics, no error state, no
// lock, and it cannot be reset. What it keeps is exactly what the ring format and the harness
// require: the driver writes a descriptor and an avail entry per buffer and keeps a stack of free
// heads and a token per head; the device reads the avail entry and the descriptor, translates
// nothing (identity memory, like our benchmarks), hands out the same popped_buffer our pop_buffers
// does, and writes a used element per buffer; the driver reads it back, returns the token and frees
// the head; one acquire / release pair per index per batch (2.7.13, 2.7.14).
//
// floor_packed_pair is the same for the packed format (2.8): descriptors written in place, the
// AVAIL/USED bits against a wrap counter, buffer ids from a stack of free ids, in-place used
// descriptors.
//
// count_cycle runs them through the same harness code as our queues (floor-split-32,
// floor-packed-32), so the difference to split-none-32 / packed-none-32 is what our validation,
// suppression and bookkeeping cost: the number docs/performance.md uses to say how far a target
// is from the format's own floor.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "queue_bodies.hpp"
#include "virtq/packed.hpp"
#include "virtq/spec.hpp"
#include "virtq/split.hpp"
#include "virtq/virtqueue.hpp"

namespace virtq_bench {

/// What both floors share: the harness around the four ring operations, identical to
/// queue_pair's (buffers laid out once, `popped_buffer` and `used_entry` arrays, whole batches).
/// Ring provides add / pop / complete / get_used, serve_in_place (pop and complete, reporting
/// `len` or the buffer's length if smaller), publish_avail() after a batch of adds and
/// publish_used() after a batch of completions.
template <class Ring>
class floor_harness {
 public:
  explicit floor_harness(std::uint32_t size)
      : buffers_(std::size_t{size} * buffer_bytes, 4096), bufs_(size), toks_in_(size), size_(size) {
    for (std::uint32_t i = 0; i < size; ++i) {
      bufs_[i] = virtq::buffer{
          reinterpret_cast<std::uintptr_t>(buffers_.data()) + std::uint64_t{i} * buffer_bytes,
          buffer_bytes};
      toks_in_[i] = i;
    }
  }

  std::size_t capacity() const noexcept { return size_; }

  std::size_t send(std::size_t n) {
    std::size_t i = 0;
    while (i < n) {
      const std::size_t k = std::min<std::size_t>(n - i, size_ - next_slot_);
      const std::size_t got = ring().add(std::span(bufs_.data() + next_slot_, k),
                                         std::span(toks_in_.data() + next_slot_, k));
      i += got;
      next_slot_ += static_cast<std::uint32_t>(got);
      if (next_slot_ == size_) next_slot_ = 0;
      if (got != k) break;
    }
    ring().publish_avail();
    return i;
  }

  /// The device pops into popped_buffers and completes from used_entries (the shape of
  /// pop_buffers + complete(span)) instead of serving in place (that of serve_buffers).
  void use_pop_complete(bool on) noexcept { pop_complete_ = on; }

  std::size_t serve(std::size_t n) {
    if (!pop_complete_) {
      const std::size_t got = ring().serve_in_place(n, buffer_bytes);
      if (got != 0) ring().publish_used();
      return got;
    }
    std::size_t i = 0;
    while (i < n) {
      const std::size_t got =
          ring().pop(std::span(popped_, std::min<std::size_t>(n - i, max_batch)));
      if (got == 0) break;
      for (std::size_t k = 0; k < got; ++k) {
        done_[k] = virtq::used_entry{popped_[k].id, buffer_bytes};
      }
      ring().complete(std::span<const virtq::used_entry>(done_, got));
      i += got;
    }
    if (i != 0) ring().publish_used();
    return i;
  }

  std::size_t reap(std::size_t n) {
    return ring().get_used(std::span(used_out_, std::min<std::size_t>(n, max_batch)));
  }

 private:
  Ring& ring() noexcept { return static_cast<Ring&>(*this); }

  virtq::aligned_buffer buffers_;
  std::vector<virtq::buffer> bufs_;
  std::vector<virtq::token_t> toks_in_;
  std::uint32_t size_;
  std::uint32_t next_slot_ = 0;
  bool pop_complete_ = false;
  virtq::used_buffer used_out_[max_batch];
  alignas(64) virtq::popped_buffer popped_[max_batch];
  virtq::used_entry done_[max_batch];
};

class floor_split_pair : public floor_harness<floor_split_pair> {
  using E = virtq::little_endian;
  friend class floor_harness<floor_split_pair>;

 public:
  explicit floor_split_pair(std::uint32_t size = queue_size)
      : floor_harness(size),
        ring_(size),
        view_(ring_.view()),
        size_(size),
        mask_(size - 1),
        free_(size),
        tokens_(size),
        num_free_(size) {
    // The free heads as a stack (popped from the top): the cheapest free structure, no load
    // chain through a list.
    for (std::uint32_t i = 0; i < size; ++i) free_[i] = static_cast<std::uint16_t>(size - 1 - i);
  }

 private:
  // 2.7.13: the entries before the idx (the only barrier of the driver's publish).
  void publish_avail() { virtq::store_release<E>(view_.avail.idx(), avail_); }
  // 2.7.14: the used elements before the idx.
  void publish_used() { virtq::store_release<E>(view_.used.idx(), used_); }

  // Every loop runs over at most two runs of ring entries (before and after the ring's end),
  // each indexed linearly with pointers stepped together: no mask per entry, no spill. A loose
  // floor would make every gap to it look smaller than it is.
  [[gnu::always_inline]] std::size_t add(std::span<const virtq::buffer> bufs,
                                         std::span<const virtq::token_t> toks) {
    const auto k = static_cast<std::uint32_t>(std::min<std::size_t>(bufs.size(), num_free_));
    virtq::split::desc* const table = view_.table;
    const std::uint16_t* top = free_.data() + num_free_;
    virtq::token_t* const tokens = tokens_.data();
    const virtq::buffer* b = bufs.data();
    const virtq::token_t* t = toks.data();
    // Entries [pos, pos + run): at most two runs, before and after the ring's end.
    const auto fill = [&](std::uint32_t pos, std::uint32_t run) __attribute__((always_inline)) {
      virtq::wire<std::uint16_t>* entry = &view_.avail.ring(pos);
      for (virtq::wire<std::uint16_t>* const end = entry + run; entry != end; ++entry, ++b, ++t) {
        const std::uint16_t head = *--top;
        virtq::split::desc& d = table[head];
        virtq::put<E>(d.addr, b->addr);
        virtq::put<E>(d.len, b->len);
        virtq::put<E>(d.flags, virtq::split::desc_f_write);
        tokens[head] = *t;
        virtq::put<E>(*entry, head);
      }
    };
    const std::uint32_t pos = avail_ & mask_;
    const std::uint32_t first = std::min(k, size_ - pos);
    fill(pos, first);
    if (first != k) fill(0, k - first);
    avail_ = static_cast<std::uint16_t>(avail_ + k);
    num_free_ -= k;
    return k;
  }

  [[gnu::always_inline]] std::size_t pop(std::span<virtq::popped_buffer> out) {
    const std::uint16_t idx = virtq::load_acquire<E>(view_.avail.idx());
    const auto k = static_cast<std::uint32_t>(
        std::min<std::size_t>(static_cast<std::uint16_t>(idx - last_avail_), out.size()));
    const virtq::split::desc* const table = view_.table;
    virtq::popped_buffer* o = out.data();
    const auto take = [&](std::uint32_t pos, std::uint32_t run) __attribute__((always_inline)) {
      const virtq::wire<std::uint16_t>* entry = &view_.avail.ring(pos);
      for (const virtq::wire<std::uint16_t>* const end = entry + run; entry != end; ++entry, ++o) {
        const std::uint16_t head = virtq::get<E>(*entry);
        const virtq::split::desc& d = table[head];
        *o = virtq::popped_buffer{reinterpret_cast<std::byte*>(virtq::get<E>(d.addr)),
                                  virtq::get<E>(d.len), head,
                                  (virtq::get<E>(d.flags) & virtq::split::desc_f_write) != 0};
      }
    };
    const std::uint32_t pos = last_avail_ & mask_;
    const std::uint32_t first = std::min(k, size_ - pos);
    take(pos, first);
    if (first != k) take(0, k - first);
    last_avail_ = static_cast<std::uint16_t>(last_avail_ + k);
    return k;
  }

  [[gnu::always_inline]] std::size_t serve_in_place(std::size_t n, std::uint32_t len) {
    const std::uint16_t idx = virtq::load_acquire<E>(view_.avail.idx());
    const auto k = static_cast<std::uint32_t>(
        std::min<std::size_t>(static_cast<std::uint16_t>(idx - last_avail_), n));
    const virtq::split::desc* const table = view_.table;
    std::uint32_t apos = last_avail_ & mask_;
    std::uint32_t upos = used_ & mask_;
    // Runs end where either ring wraps.
    for (std::uint32_t left = k; left != 0;) {
      const std::uint32_t run = std::min({left, size_ - apos, size_ - upos});
      const virtq::wire<std::uint16_t>* entry = &view_.avail.ring(apos);
      virtq::split::used_elem* e = &view_.used.ring(upos);
      for (const virtq::wire<std::uint16_t>* const end = entry + run; entry != end; ++entry, ++e) {
        const std::uint16_t head = virtq::get<E>(*entry);
        virtq::put<E>(e->id, head);
        virtq::put<E>(e->len, std::min(len, virtq::get<E>(table[head].len)));
      }
      left -= run;
      apos = (apos + run) & mask_;
      upos = (upos + run) & mask_;
    }
    last_avail_ = static_cast<std::uint16_t>(last_avail_ + k);
    used_ = static_cast<std::uint16_t>(used_ + k);
    return k;
  }

  [[gnu::always_inline]] void complete(std::span<const virtq::used_entry> done) {
    const virtq::used_entry* u = done.data();
    std::uint32_t pos = used_ & mask_;
    for (auto left = static_cast<std::uint32_t>(done.size()); left != 0; pos = 0) {
      const std::uint32_t run = std::min(left, size_ - pos);
      virtq::split::used_elem* e = &view_.used.ring(pos);
      for (virtq::split::used_elem* const end = e + run; e != end; ++e, ++u) {
        virtq::put<E>(e->id, u->id);
        virtq::put<E>(e->len, u->len);
      }
      left -= run;
    }
    used_ = static_cast<std::uint16_t>(used_ + done.size());
  }

  [[gnu::always_inline]] std::size_t get_used(std::span<virtq::used_buffer> out) {
    const std::uint16_t idx = virtq::load_acquire<E>(view_.used.idx());
    const auto k = static_cast<std::uint32_t>(
        std::min<std::size_t>(static_cast<std::uint16_t>(idx - last_used_), out.size()));
    const virtq::token_t* const tokens = tokens_.data();
    std::uint16_t* top = free_.data() + num_free_;
    virtq::used_buffer* o = out.data();
    const auto reap = [&](std::uint32_t pos, std::uint32_t run) __attribute__((always_inline)) {
      const virtq::split::used_elem* e = &view_.used.ring(pos);
      for (const virtq::split::used_elem* const end = e + run; e != end; ++e, ++o) {
        const std::uint32_t id = virtq::get<E>(e->id);
        *o = virtq::used_buffer{tokens[id], virtq::get<E>(e->len)};
        *top++ = static_cast<std::uint16_t>(id);
      }
    };
    const std::uint32_t pos = last_used_ & mask_;
    const std::uint32_t first = std::min(k, size_ - pos);
    reap(pos, first);
    if (first != k) reap(0, k - first);
    last_used_ = static_cast<std::uint16_t>(last_used_ + k);
    num_free_ += k;
    return k;
  }

  virtq::ring_memory<virtq::split_layout> ring_;
  virtq::split::ring_view view_;
  std::uint32_t size_;
  std::uint32_t mask_;
  // Driver state.
  alignas(64) std::vector<std::uint16_t> free_;
  std::vector<virtq::token_t> tokens_;
  std::uint32_t num_free_;
  std::uint16_t avail_ = 0;
  std::uint16_t last_used_ = 0;
  // Device state.
  alignas(64) std::uint16_t last_avail_ = 0;
  std::uint16_t used_ = 0;
};

class floor_packed_pair : public floor_harness<floor_packed_pair> {
  using E = virtq::little_endian;
  friend class floor_harness<floor_packed_pair>;

 public:
  explicit floor_packed_pair(std::uint32_t size = queue_size)
      : floor_harness(size),
        ring_(size),
        view_(ring_.view()),
        ring_size_(size),
        free_ids_(size),
        tokens_(size),
        num_free_(size) {
    for (std::uint32_t i = 0; i < size; ++i) free_ids_[i] = static_cast<std::uint16_t>(i);
  }

 private:
  // Packed publishes through each batch's first flags (add, complete): nothing more to do.
  void publish_avail() {}
  void publish_used() {}

  // Each loop runs to the end of the ring at most, then flips the wrap counter (2.8.1): no test
  // of the position per descriptor. Indices and bases in locals, pointers stepped together, and
  // the AVAIL/USED test as one mask and compare: a loose floor (spilled registers, a branch per
  // descriptor for the batch's first) would make every gap to it look smaller than it is.
  static constexpr std::uint16_t wrap_mask =
      virtq::packed::desc_f_avail | virtq::packed::desc_f_used;

  [[gnu::always_inline]] std::size_t add(std::span<const virtq::buffer> bufs,
                                         std::span<const virtq::token_t> toks) {
    const auto k = static_cast<std::uint32_t>(std::min<std::size_t>(bufs.size(), num_free_));
    if (k == 0) return 0;
    virtq::packed::desc* const ring = view_.ring;
    const std::uint16_t* free_top = free_ids_.data() + num_free_;
    virtq::token_t* const tokens = tokens_.data();
    std::uint32_t pos = avail_pos_;
    bool wrap = avail_wrap_;
    const auto flags_of = [](bool w) {
      return static_cast<std::uint16_t>(virtq::packed::avail_bits(w) | virtq::packed::desc_f_write);
    };
    // The batch's first descriptor: everything but its flags, which go last (below).
    virtq::packed::desc* const first = &ring[pos];
    const std::uint16_t first_flags = flags_of(wrap);
    {
      const std::uint16_t id = *--free_top;
      virtq::put<E>(first->addr, bufs[0].addr);
      virtq::put<E>(first->len, bufs[0].len);
      virtq::put<E>(first->id, id);
      tokens[id] = toks[0];
    }
    if (++pos == ring_size_) {
      pos = 0;
      wrap = !wrap;
    }
    const virtq::buffer* b = bufs.data() + 1;
    const virtq::token_t* t = toks.data() + 1;
    std::uint32_t left = k - 1;
    while (left != 0) {
      const std::uint32_t run = std::min(left, ring_size_ - pos);
      const std::uint16_t flags = flags_of(wrap);
      virtq::packed::desc* d = ring + pos;
      for (virtq::packed::desc* const end = d + run; d != end; ++d, ++b, ++t) {
        const std::uint16_t id = *--free_top;
        virtq::put<E>(d->addr, b->addr);
        virtq::put<E>(d->len, b->len);
        virtq::put<E>(d->id, id);
        virtq::put<E>(d->flags, flags);
        tokens[id] = *t;
      }
      left -= run;
      pos += run;
      if (pos == ring_size_) {
        pos = 0;
        wrap = !wrap;
      }
    }
    num_free_ -= k;
    avail_pos_ = pos;
    avail_wrap_ = wrap;
    // 2.8.21.1: the first descriptor's flags last, so that the device sees the whole batch.
    virtq::store_release<E>(first->flags, first_flags);
    return k;
  }

  [[gnu::always_inline]] std::size_t pop(std::span<virtq::popped_buffer> out) {
    const virtq::packed::desc* const ring = view_.ring;
    std::uint32_t pos = dev_pos_;
    bool wrap = dev_wrap_;
    virtq::popped_buffer* o = out.data();
    virtq::popped_buffer* const o_end = o + out.size();
    while (o != o_end) {
      const std::uint32_t run =
          std::min<std::uint32_t>(static_cast<std::uint32_t>(o_end - o), ring_size_ - pos);
      const std::uint16_t expect = virtq::packed::avail_bits(wrap);
      const virtq::packed::desc* d = ring + pos;
      const virtq::packed::desc* const end = d + run;
      for (; d != end; ++d, ++o) {
        // 2.8.21.1 (the device's side): the flags before the rest of the descriptor.
        const std::uint16_t flags = virtq::load_acquire<E>(d->flags);
        if ((flags & wrap_mask) != expect) break;
        *o = virtq::popped_buffer{reinterpret_cast<std::byte*>(virtq::get<E>(d->addr)),
                                  virtq::get<E>(d->len), virtq::get<E>(d->id),
                                  (flags & virtq::packed::desc_f_write) != 0};
      }
      pos = static_cast<std::uint32_t>(d - ring);
      if (pos == ring_size_) {
        pos = 0;
        wrap = !wrap;
      }
      if (d != end) break;
    }
    dev_pos_ = pos;
    dev_wrap_ = wrap;
    return static_cast<std::size_t>(o - out.data());
  }

  [[gnu::always_inline]] std::size_t serve_in_place(std::size_t n, std::uint32_t len) {
    virtq::packed::desc* const ring = view_.ring;
    std::uint32_t pos = dev_pos_;
    bool wrap = dev_wrap_;
    std::size_t left = n;
    while (left != 0) {
      const auto run = static_cast<std::uint32_t>(std::min<std::size_t>(left, ring_size_ - pos));
      const std::uint16_t expect = virtq::packed::avail_bits(wrap);
      const std::uint16_t used_flags =
          static_cast<std::uint16_t>(virtq::packed::used_bits(wrap) | virtq::packed::desc_f_write);
      virtq::packed::desc* d = ring + pos;
      virtq::packed::desc* const end = d + run;
      for (; d != end; ++d) {
        // 2.8.21.1 (the device's side): the flags before the rest of the descriptor.
        const std::uint16_t flags = virtq::load_acquire<E>(d->flags);
        if ((flags & wrap_mask) != expect) break;
        // In place: the id is already there.
        virtq::put<E>(d->len, std::min(len, virtq::get<E>(d->len)));
        // 2.8.21.2 (the device's side): len before the flags that hand it over.
        virtq::store_release<E>(d->flags, used_flags);
      }
      left -= static_cast<std::size_t>(d - (ring + pos));
      pos = static_cast<std::uint32_t>(d - ring);
      if (pos == ring_size_) {
        pos = 0;
        wrap = !wrap;
      }
      if (d != end) break;
    }
    dev_pos_ = used_pos_ = pos;
    dev_wrap_ = used_wrap_ = wrap;
    return n - left;
  }

  [[gnu::always_inline]] void complete(std::span<const virtq::used_entry> done) {
    virtq::packed::desc* const ring = view_.ring;
    std::uint32_t pos = used_pos_;
    bool wrap = used_wrap_;
    const virtq::used_entry* u = done.data();
    std::size_t left = done.size();
    while (left != 0) {
      const auto run = static_cast<std::uint32_t>(std::min<std::size_t>(left, ring_size_ - pos));
      const std::uint16_t flags = virtq::packed::used_bits(wrap);
      virtq::packed::desc* d = ring + pos;
      for (virtq::packed::desc* const end = d + run; d != end; ++d, ++u) {
        virtq::put<E>(d->id, u->id);
        virtq::put<E>(d->len, u->len);
        // 2.8.21.2 (the device's side): id and len before the flags that hand them over.
        virtq::store_release<E>(d->flags, flags);
      }
      left -= run;
      pos += run;
      if (pos == ring_size_) {
        pos = 0;
        wrap = !wrap;
      }
    }
    used_pos_ = pos;
    used_wrap_ = wrap;
  }

  [[gnu::always_inline]] std::size_t get_used(std::span<virtq::used_buffer> out) {
    const virtq::packed::desc* const ring = view_.ring;
    std::uint16_t* free_top = free_ids_.data() + num_free_;
    const virtq::token_t* const tokens = tokens_.data();
    std::uint32_t pos = reap_pos_;
    bool wrap = reap_wrap_;
    virtq::used_buffer* o = out.data();
    virtq::used_buffer* const o_end = o + out.size();
    while (o != o_end) {
      const std::uint32_t run =
          std::min<std::uint32_t>(static_cast<std::uint32_t>(o_end - o), ring_size_ - pos);
      const std::uint16_t expect = virtq::packed::used_bits(wrap);
      const virtq::packed::desc* d = ring + pos;
      const virtq::packed::desc* const end = d + run;
      for (; d != end; ++d, ++o) {
        const std::uint16_t flags = virtq::load_acquire<E>(d->flags);
        if ((flags & wrap_mask) != expect) break;
        const std::uint16_t id = virtq::get<E>(d->id);
        *o = virtq::used_buffer{tokens[id], virtq::get<E>(d->len)};
        *free_top++ = id;
      }
      pos = static_cast<std::uint32_t>(d - ring);
      if (pos == ring_size_) {
        pos = 0;
        wrap = !wrap;
      }
      if (d != end) break;
    }
    num_free_ = static_cast<std::uint32_t>(free_top - free_ids_.data());
    reap_pos_ = pos;
    reap_wrap_ = wrap;
    return static_cast<std::size_t>(o - out.data());
  }

  virtq::ring_memory<virtq::packed_layout> ring_;
  virtq::packed::ring_view view_;
  std::uint32_t ring_size_;
  // Driver state.
  alignas(64) std::vector<std::uint16_t> free_ids_;
  std::vector<virtq::token_t> tokens_;
  std::uint32_t num_free_;
  std::uint32_t avail_pos_ = 0;
  bool avail_wrap_ = true;  // 2.8.1: both wrap counters start at 1
  std::uint32_t reap_pos_ = 0;
  bool reap_wrap_ = true;
  // Device state.
  alignas(64) std::uint32_t dev_pos_ = 0;
  bool dev_wrap_ = true;
  std::uint32_t used_pos_ = 0;
  bool used_wrap_ = true;
};

}  // namespace virtq_bench
