#pragma once
// Env switches read per call: measurement switches and fallback-path test switches (README knob table).
// off(NAME) is true when NAME is set and starts with '0'; get(NAME) is the raw value, nullptr when unset.
#include <cstdlib>

namespace geoops::knobs {
inline const char* get(const char* name) { return std::getenv(name); }
inline bool off(const char* name) { const char* e = get(name); return e && e[0] == '0'; }
}  // namespace geoops::knobs
