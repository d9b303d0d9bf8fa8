// Preloaded into the processes of scripts/sanitize.sh address-all: dlclose() does nothing, so
// the plugins that Open MPI and PMIx load stay mapped until exit and LeakSanitizer can name
// them (lsan.supp's mca_/libpmix entries) in the stacks of their process-lifetime allocations.
// Without it, Open MPI 4.1 (which has no mca_base_component_disable_dlclose) unloads them in
// MPI_Finalize and every mpirun rank fails the leak check on frames in "<unknown module>".
int dlclose(void* handle) {
  (void)handle;
  return 0;
}
