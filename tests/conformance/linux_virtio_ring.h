/* Access, from C++, to the parts of <linux/virtio_ring.h> that only compile as C.
 *
 * The UAPI header's legacy helpers (vring_init, vring_size, vring_used_event and
 * vring_avail_event) convert from void* implicitly, which C++ rejects, so
 * linux_virtio_ring.c compiles them as C and this header exposes them to
 * tests/test_spec_conformance.cpp. */
#ifndef VIRTQ_TESTS_CONFORMANCE_LINUX_VIRTIO_RING_H
#define VIRTQ_TESTS_CONFORMANCE_LINUX_VIRTIO_RING_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Where vring_init() puts each part of a split ring that starts at `base`, as byte offsets. */
struct linux_vring_layout {
  size_t desc_offset;
  size_t avail_offset;
  size_t used_offset;
  size_t used_event_offset;  /* vring_used_event(): avail->ring[num] */
  size_t avail_event_offset; /* vring_avail_event(): after used->ring[num] */
};

/* Linux's vring_size(num, align). */
unsigned linux_vring_size(unsigned num, unsigned long align);

/* Runs Linux's vring_init(num, base, align) and reports the offsets; `base` must point to at
 * least linux_vring_size(num, align) bytes aligned to `align`. */
struct linux_vring_layout linux_vring_init(unsigned num, void* base, unsigned long align);

/* Linux's vring_need_event(), called through the C translation unit. */
int linux_vring_need_event(uint16_t event_idx, uint16_t new_idx, uint16_t old_idx);

#ifdef __cplusplus
}
#endif

#endif
