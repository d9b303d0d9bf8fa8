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
# OpenMPI insists that an rsh agent (ssh or rsh) exists even for jobs on this node alone, where
# it starts no remote daemon; machines without one (minimal containers, the GPU machines) get a
# stand-in that is never called.
if ! command -v ssh >/dev/null 2>&1 && ! command -v rsh >/dev/null 2>&1; then
  export OMPI_MCA_plm_rsh_agent=${OMPI_MCA_plm_rsh_agent:-false}
fi
