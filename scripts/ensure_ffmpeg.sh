#!/usr/bin/env bash
# Make sure FFmpeg's shared libraries (what torchcodec loads) are present.
# Installs Debian's ffmpeg when missing and we are root; otherwise says what to install and fails.
set -euo pipefail
have_libs() { ldconfig -p 2>/dev/null | grep -q 'libavcodec\.so\.' && command -v ffmpeg >/dev/null 2>&1; }
if have_libs; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "FFmpeg not found: installing Debian's ffmpeg (apt-get)..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null
  have_libs && exit 0
fi
echo "error: FFmpeg's shared libraries (libavcodec etc.) and the ffmpeg binary are required by torchcodec." >&2
echo "       Install them, e.g. 'sudo apt-get install -y ffmpeg' on Debian/Ubuntu, then re-run make." >&2
exit 1
