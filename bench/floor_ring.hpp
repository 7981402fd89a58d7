// SPDX-License-Identifier: MIT
// bench/floor_ring.hpp -- the split ring FORMAT with nothing else: what any implementation of
// 2.7 must do per buffer when nothing is checked, as a bench_pair next to our queues.
//
// It is not a usable queue and it is not in the library: it trusts the peer completely (an id
// or index from the ring indexes its arrays unchecked, a length is never compared, a used idx
// may jump anywhere), it has no notification suppression, no statistics, no error state, no
// lock, and it cannot be reset. What it keeps is exactly what the ring format and the harness
// require: the driver writes a descriptor and an avail entry per buffer and keeps a free list
// and a token per head; the device reads the avail entry and the descriptor, translates nothing
// (identity memory, like our benchmarks), hands out the same popped_buffer our pop_buffers does,
// and writes a used element per buffer; the driver reads it back, returns the token and frees the
// head; one acquire / release pair per index per batch (2.7.13, 2.7.14).
//
// floor_packed_pair is the same for the packed format (2.8): descriptors written in place, the
// AVAIL/USED bits against a wrap counter, buffer ids from a free list, in-place used descriptors.
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
        mask_(size - 1),
        next_(size),
        tokens_(size),
        num_free_(size) {
    for (std::uint32_t i = 0; i < size; ++i) next_[i] = static_cast<std::uint16_t>(i + 1U);
  }

 private:
  // 2.7.13: the entries before the idx (the only barrier of the driver's publish).
  void publish_avail() { virtq::store_release<E>(view_.avail.idx(), avail_); }
  // 2.7.14: the used elements before the idx.
  void publish_used() { virtq::store_release<E>(view_.used.idx(), used_); }

  [[gnu::always_inline]] std::size_t add(std::span<const virtq::buffer> bufs,
                                         std::span<const virtq::token_t> toks) {
    const std::size_t k = std::min<std::size_t>(bufs.size(), num_free_);
    // Indices and bases in locals: stores through the arrays would otherwise force reloads.
    std::uint16_t head = free_head_;
    std::uint16_t avail = avail_;
    virtq::split::desc* const table = view_.table;
    const virtq::split::avail_ring ring = view_.avail;
    const std::uint16_t* const next = next_.data();
    virtq::token_t* const tokens = tokens_.data();
    const std::uint32_t mask = mask_;
    for (std::size_t j = 0; j < k; ++j) {
      virtq::split::desc& d = table[head];
      virtq::put<E>(d.addr, bufs[j].addr);
      virtq::put<E>(d.len, bufs[j].len);
      virtq::put<E>(d.flags, virtq::split::desc_f_write);
      tokens[head] = toks[j];
      virtq::put<E>(ring.ring(avail & mask), head);
      ++avail;
      head = next[head];
    }
    avail_ = avail;
    free_head_ = head;
    num_free_ -= static_cast<std::uint32_t>(k);
    return k;
  }

  [[gnu::always_inline]] std::size_t pop(std::span<virtq::popped_buffer> out) {
    const std::uint16_t idx = virtq::load_acquire<E>(view_.avail.idx());
    const std::size_t k =
        std::min<std::size_t>(static_cast<std::uint16_t>(idx - last_avail_), out.size());
    std::uint16_t last = last_avail_;
    const virtq::split::desc* const table = view_.table;
    const virtq::split::avail_ring ring = view_.avail;
    const std::uint32_t mask = mask_;
    for (std::size_t j = 0; j < k; ++j, ++last) {
      const std::uint16_t head = virtq::get<E>(ring.ring(last & mask));
      const virtq::split::desc& d = table[head];
      const std::uint32_t len = virtq::get<E>(d.len);
      out[j] = virtq::popped_buffer{reinterpret_cast<std::byte*>(virtq::get<E>(d.addr)), len, head,
                                    (virtq::get<E>(d.flags) & virtq::split::desc_f_write) != 0};
    }
    last_avail_ = last;
    return k;
  }

  [[gnu::always_inline]] std::size_t serve_in_place(std::size_t n, std::uint32_t len) {
    const std::uint16_t idx = virtq::load_acquire<E>(view_.avail.idx());
    const auto k = static_cast<std::uint32_t>(
        std::min<std::size_t>(static_cast<std::uint16_t>(idx - last_avail_), n));
    const std::uint32_t last = last_avail_;
    const std::uint32_t used = used_;
    const virtq::split::desc* const table = view_.table;
    const virtq::split::avail_ring avail = view_.avail;
    const virtq::split::used_ring ring = view_.used;
    const std::uint32_t mask = mask_;
    for (std::uint32_t j = 0; j < k; ++j) {
      const std::uint16_t head = virtq::get<E>(avail.ring((last + j) & mask));
      virtq::split::used_elem& e = ring.ring((used + j) & mask);
      virtq::put<E>(e.id, head);
      virtq::put<E>(e.len, std::min(len, virtq::get<E>(table[head].len)));
    }
    last_avail_ = static_cast<std::uint16_t>(last + k);
    used_ = static_cast<std::uint16_t>(used + k);
    return k;
  }

  [[gnu::always_inline]] void complete(std::span<const virtq::used_entry> done) {
    std::uint16_t used = used_;
    const virtq::split::used_ring ring = view_.used;
    const std::uint32_t mask = mask_;
    for (const virtq::used_entry& u : done) {
      virtq::split::used_elem& e = ring.ring(used & mask);
      virtq::put<E>(e.id, u.id);
      virtq::put<E>(e.len, u.len);
      ++used;
    }
    used_ = used;
  }

  [[gnu::always_inline]] std::size_t get_used(std::span<virtq::used_buffer> out) {
    const std::uint16_t idx = virtq::load_acquire<E>(view_.used.idx());
    const std::size_t k =
        std::min<std::size_t>(static_cast<std::uint16_t>(idx - last_used_), out.size());
    std::uint16_t free_head = free_head_;
    std::uint16_t last = last_used_;
    const virtq::split::used_ring ring = view_.used;
    const virtq::token_t* const tokens = tokens_.data();
    std::uint16_t* const next = next_.data();
    const std::uint32_t mask = mask_;
    for (std::size_t j = 0; j < k; ++j, ++last) {
      const virtq::split::used_elem& e = ring.ring(last & mask);
      const std::uint32_t id = virtq::get<E>(e.id);
      out[j] = virtq::used_buffer{tokens[id], virtq::get<E>(e.len)};
      next[id] = free_head;
      free_head = static_cast<std::uint16_t>(id);
    }
    last_used_ = last;
    free_head_ = free_head;
    num_free_ += static_cast<std::uint32_t>(k);
    return k;
  }

  virtq::ring_memory<virtq::split_layout> ring_;
  virtq::split::ring_view view_;
  std::uint32_t mask_;
  // Driver state.
  alignas(64) std::vector<std::uint16_t> next_;
  std::vector<virtq::token_t> tokens_;
  std::uint32_t num_free_;
  std::uint16_t free_head_ = 0;
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
  // of the position per descriptor. Indices and bases in locals, as in floor_split_pair.
  [[gnu::always_inline]] std::size_t add(std::span<const virtq::buffer> bufs,
                                         std::span<const virtq::token_t> toks) {
    const std::size_t k = std::min<std::size_t>(bufs.size(), num_free_);
    if (k == 0) return 0;
    virtq::packed::desc* const ring = view_.ring;
    virtq::packed::desc* const first = &ring[avail_pos_];
    std::uint16_t* const free_ids = free_ids_.data();
    virtq::token_t* const tokens = tokens_.data();
    std::uint32_t nfree = num_free_;
    std::uint32_t pos = avail_pos_;
    bool wrap = avail_wrap_;
    const std::uint16_t first_flags =
        static_cast<std::uint16_t>(virtq::packed::avail_bits(wrap) | virtq::packed::desc_f_write);
    for (std::size_t j = 0; j < k;) {
      const std::size_t run_end = j + std::min<std::size_t>(k - j, ring_size_ - pos);
      const std::uint16_t flags =
          static_cast<std::uint16_t>(virtq::packed::avail_bits(wrap) | virtq::packed::desc_f_write);
      for (; j < run_end; ++j, ++pos) {
        const std::uint16_t id = free_ids[--nfree];
        virtq::packed::desc& d = ring[pos];
        virtq::put<E>(d.addr, bufs[j].addr);
        virtq::put<E>(d.len, bufs[j].len);
        virtq::put<E>(d.id, id);
        if (j != 0) virtq::put<E>(d.flags, flags);
        tokens[id] = toks[j];
      }
      if (pos == ring_size_) {
        pos = 0;
        wrap = !wrap;
      }
    }
    num_free_ = nfree;
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
    std::size_t j = 0;
    while (j < out.size()) {
      const std::size_t run_end = j + std::min<std::size_t>(out.size() - j, ring_size_ - pos);
      for (; j < run_end; ++j, ++pos) {
        const virtq::packed::desc& d = ring[pos];
        // 2.8.21.1 (the device's side): the flags before the rest of the descriptor.
        const std::uint16_t flags = virtq::load_acquire<E>(d.flags);
        if (!virtq::packed::is_avail(flags, wrap)) break;
        out[j] = virtq::popped_buffer{reinterpret_cast<std::byte*>(virtq::get<E>(d.addr)),
                                      virtq::get<E>(d.len), virtq::get<E>(d.id),
                                      (flags & virtq::packed::desc_f_write) != 0};
      }
      if (pos == ring_size_) {
        pos = 0;
        wrap = !wrap;
      }
      if (j != run_end) break;
    }
    dev_pos_ = pos;
    dev_wrap_ = wrap;
    return j;
  }

  [[gnu::always_inline]] std::size_t serve_in_place(std::size_t n, std::uint32_t len) {
    virtq::packed::desc* const ring = view_.ring;
    std::uint32_t pos = dev_pos_;
    bool wrap = dev_wrap_;
    std::size_t j = 0;
    while (j < n) {
      const std::size_t run_end = j + std::min<std::size_t>(n - j, ring_size_ - pos);
      const std::uint16_t used_flags =
          static_cast<std::uint16_t>(virtq::packed::used_bits(wrap) | virtq::packed::desc_f_write);
      for (; j < run_end; ++j, ++pos) {
        virtq::packed::desc& d = ring[pos];
        // 2.8.21.1 (the device's side): the flags before the rest of the descriptor.
        const std::uint16_t flags = virtq::load_acquire<E>(d.flags);
        if (!virtq::packed::is_avail(flags, wrap)) break;
        // In place: the id is already there.
        virtq::put<E>(d.len, std::min(len, virtq::get<E>(d.len)));
        // 2.8.21.2 (the device's side): len before the flags that hand it over.
        virtq::store_release<E>(d.flags, used_flags);
      }
      if (pos == ring_size_) {
        pos = 0;
        wrap = !wrap;
      }
      if (j != run_end) break;
    }
    dev_pos_ = used_pos_ = pos;
    dev_wrap_ = used_wrap_ = wrap;
    return j;
  }

  [[gnu::always_inline]] void complete(std::span<const virtq::used_entry> done) {
    virtq::packed::desc* const ring = view_.ring;
    std::uint32_t pos = used_pos_;
    bool wrap = used_wrap_;
    for (std::size_t j = 0; j < done.size();) {
      const std::size_t run_end = j + std::min<std::size_t>(done.size() - j, ring_size_ - pos);
      const std::uint16_t flags = virtq::packed::used_bits(wrap);
      for (; j < run_end; ++j, ++pos) {
        virtq::packed::desc& d = ring[pos];
        virtq::put<E>(d.id, done[j].id);
        virtq::put<E>(d.len, done[j].len);
        // 2.8.21.2 (the device's side): id and len before the flags that hand them over.
        virtq::store_release<E>(d.flags, flags);
      }
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
    std::uint16_t* const free_ids = free_ids_.data();
    const virtq::token_t* const tokens = tokens_.data();
    std::uint32_t nfree = num_free_;
    std::uint32_t pos = reap_pos_;
    bool wrap = reap_wrap_;
    std::size_t j = 0;
    while (j < out.size()) {
      const std::size_t run_end = j + std::min<std::size_t>(out.size() - j, ring_size_ - pos);
      for (; j < run_end; ++j, ++pos) {
        const virtq::packed::desc& d = ring[pos];
        const std::uint16_t flags = virtq::load_acquire<E>(d.flags);
        if (!virtq::packed::is_used(flags, wrap)) break;
        const std::uint16_t id = virtq::get<E>(d.id);
        out[j] = virtq::used_buffer{tokens[id], virtq::get<E>(d.len)};
        free_ids[nfree++] = id;
      }
      if (pos == ring_size_) {
        pos = 0;
        wrap = !wrap;
      }
      if (j != run_end) break;
    }
    num_free_ = nfree;
    reap_pos_ = pos;
    reap_wrap_ = wrap;
    return j;
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
