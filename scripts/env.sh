# Sourced by the scripts: the build folder and what mpirun needs on this kind of machine.
TESSERA_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TESSERA_BUILD_DIR=${TESSERA_BUILD_DIR:-$TESSERA_ROOT/build}
export TESSERA_ROOT TESSERA_BUILD_DIR
if [ "$(id -u)" = 0 ]; then
  # OpenMPI refuses to run as root unless told twice (containers and CI run as root).
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
# More ranks than cores (4 ranks on a 2-core machine) is fine for tests and demos.
export OMPI_MCA_rmaps_base_oversubscribe=${OMPI_MCA_rmaps_base_oversubscribe:-1}
