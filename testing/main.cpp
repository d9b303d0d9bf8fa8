// main() of Tessera::testing: a program that links the harness and defines no main of its own gets
// this one (in its own object file, so a program with its own main calls run_all_tests itself).
#include "testing/harness.h"

int main(int argc, char** argv) { return tessera::testing::run_all_tests(&argc, argv); }
