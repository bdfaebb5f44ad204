#include <cstring>
#include <exception>

#include "check.h"

int main(int argc, char** argv) {
  const char* filter = argc > 1 ? argv[1] : nullptr;
  int passed = 0, failed = 0;
  for (auto& c : kvt::registry()) {
    if (filter && !std::strstr(c.name, filter)) continue;
    try {
      c.fn();
      passed++;
      std::printf("ok   %s\n", c.name);
    } catch (const kvt::Failure& f) {
      failed++;
      std::printf("FAIL %s\n     %s\n", c.name, f.msg.c_str());
    } catch (const std::exception& e) {
      failed++;
      std::printf("FAIL %s\n     unexpected exception: %s\n", c.name, e.what());
    }
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 && passed > 0 ? 0 : 1;
}
