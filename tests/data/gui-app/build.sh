#!/bin/sh
# Build the validation's "GUI app" as a Nix-style store path tree:
#   build.sh OUT GLVND_LIBDIR
# OUT/bin/egl-frame        gcc -O2, no link-time GL dependency (dlopen), RUNPATH
#                          /run/opengl-driver/lib, interpreter and libc from the machine
# OUT/lib/libEGL.so.1, OUT/lib/libGLdispatch.so.0
#                          glvnd's dispatcher, copied from GLVND_LIBDIR (e.g. a state's
#                          usr/lib/x86_64-linux-gnu holding the mesa stone): like
#                          libglvnd in a Nix app's closure. The Mesa driver itself comes
#                          only from /run/opengl-driver at run time.
# Needs gcc and libc6-dev on the build host; nothing else.
set -eu
out=$1 glvnd=$2
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out/bin" "$out/lib"
gcc -O2 -Wall -Wextra -o "$out/bin/egl-frame" "$here/egl-frame.c" \
    -Wl,-rpath,/run/opengl-driver/lib -Wl,--build-id=sha1
for lib in libEGL.so.1 libGLdispatch.so.0; do
    cp -L "$glvnd/$lib" "$out/lib/$lib"
    chmod 0555 "$out/lib/$lib"
done
chmod 0555 "$out/bin/egl-frame" "$out/bin" "$out/lib"
