#pragma once

#include <string>

namespace lmtune {

// Where a tensor lives. `meta` has the CPU allocator's policy over fake addresses and
// kernels that do nothing: a step run on meta performs exactly the allocation sequence
// of a real step, with no compute and no memory (see allocator.h).
enum class DeviceKind { cpu, meta, cuda };

struct Device {
  DeviceKind kind = DeviceKind::cpu;
  int index = 0;

  static Device cpu() { return {DeviceKind::cpu, 0}; }
  static Device meta() { return {DeviceKind::meta, 0}; }
  static Device cuda(int i) { return {DeviceKind::cuda, i}; }
  bool is_meta() const { return kind == DeviceKind::meta; }
  bool is_cpu() const { return kind == DeviceKind::cpu; }
  bool operator==(const Device&) const = default;
  std::string str() const;
};

}  // namespace lmtune
