// Configure-time probe (launch/CMakeLists.txt): prints the MPI library's version string, which
// names MPICH when the library is MPICH.
#include <mpi.h>

#include <cstdio>

int main() {
  char version[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(version, &len);
  std::printf("%s\n", version);
  return 0;
}
