# Sourced by the Makefile and the launch scripts before they start Python.
#
# TensorFlow's CPU kernels allocate and free multi-megabyte buffers on every step. glibc's
# malloc returns them to the kernel and faults them in again, zeroed, on the next step; on a
# 2-core machine that kernel time slowed training steps by 2x. tcmalloc keeps the memory, so it
# is preloaded when installed (Debian: libtcmalloc-minimal4, which make installs as root).
# Sets tcmalloc_lib to the library found, empty when there is none.
tcmalloc_lib=
for lib in /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib64/libtcmalloc_minimal.so.4 \
           /usr/lib/libtcmalloc_minimal.so.4; do
    if [ -f "$lib" ]; then tcmalloc_lib="$lib"; break; fi
done
if [ -n "$tcmalloc_lib" ]; then
    case "${LD_PRELOAD:-}" in
        *tcmalloc*) ;;
        *) export LD_PRELOAD="$tcmalloc_lib${LD_PRELOAD:+:$LD_PRELOAD}" ;;
    esac
    # Loading CIFAR-sized arrays is expected; do not report allocations above 1 GiB.
    export TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD="${TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD:-1099511627776}"
fi
