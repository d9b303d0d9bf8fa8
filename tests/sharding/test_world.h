// The world communicator shared by the sharding test executable's files (MPI is initialised once,
// by the environment in communicator_test.cpp).
#pragma once

#include "sharding/mpi/mpi_communicator.h"

namespace tessera::sharding {
MpiCommunicator& test_world();
}
