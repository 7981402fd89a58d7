/* See linux_virtio_ring.h: the legacy UAPI ring helpers, compiled as C. */
#include "linux_virtio_ring.h"

#include <linux/virtio_ring.h>

unsigned linux_vring_size(unsigned num, unsigned long align) {
  return vring_size(num, align);
}

struct linux_vring_layout linux_vring_init(unsigned num, void* base, unsigned long align) {
  struct vring vr;
  const char* b = (const char*)base;
  struct linux_vring_layout out;
  vring_init(&vr, num, base, align);
  out.desc_offset = (size_t)((const char*)vr.desc - b);
  out.avail_offset = (size_t)((const char*)vr.avail - b);
  out.used_offset = (size_t)((const char*)vr.used - b);
  out.used_event_offset = (size_t)((const char*)&vring_used_event(&vr) - b);
  out.avail_event_offset = (size_t)((const char*)&vring_avail_event(&vr) - b);
  return out;
}

int linux_vring_need_event(uint16_t event_idx, uint16_t new_idx, uint16_t old_idx) {
  return vring_need_event(event_idx, new_idx, old_idx);
}
