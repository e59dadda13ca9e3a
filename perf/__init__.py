"""The kernels' machine code, read without a GPU: ahead-of-time builds for sm_80/sm_90 and their checks
(`python -m perf.aot`), the SASS reader (perf.sass), the launches and their work (perf.launches, perf.work)."""
