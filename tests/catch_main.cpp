// The one translation unit that holds Catch2's main(); every test executable
// links the object library built from this file (virtq_catch_main).
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
