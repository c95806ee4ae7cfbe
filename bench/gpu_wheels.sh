#!/usr/bin/env bash
# What bench/bench_gpu.py needs on the lent GPU machine beyond that machine's image, into
# .whl/ (git-ignored; the `run` tool's carry). How it is used there: docs/gpu-benchmark.md.
#
#   bash bench/gpu_wheels.sh          # from the repository root, on the development machine
#
# 1. Wheels for the GPU machine's Python (3.12, x86-64 Linux) at constraints.txt's versions:
#    av (media.py probes with PyAV), ffmpeg-python and its one dependency future (media.py
#    builds ffmpeg's command lines with it), diffusers (MuseTalk's UNet and VAE). The image
#    has the rest the benchmark imports: torch, onnx, onnxruntime, numpy, scipy, pyarrow,
#    opencv-python-headless, transformers. It imports no Ray.
# 2. .whl/ffmpeg: the ffmpeg binary the jobs decode and encode with. imageio-ffmpeg's wheel
#    (68 MB) alone is over the 64 MiB a call can carry, so this is FFmpeg built from
#    Debian's source package with only the parts media.py and the benchmark use: libx264
#    linked in statically, h264_nvenc and NVDEC through NVIDIA's loader headers (they open
#    the driver's libraries at run time). 5.5 MiB. Built once (minutes); kept if it runs.
# Then it prints the sizes: .whl/, the tree that travels with it, and their sum against 64 MiB.
set -euo pipefail

cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DEST=.whl
WORK=${TMPDIR:-/tmp}/heygem-gpu-ffmpeg
mkdir -p "$DEST"

pin() {  # NAME → NAME==VERSION from constraints.txt
    local line
    line=$(grep -i "^$1==" constraints.txt) || { echo "constraints.txt pins no $1" >&2; exit 1; }
    echo "$line"
}

# -- 1. wheels -----------------------------------------------------------------------------------
rm -f "$DEST"/*.whl  # one version of each: two stop the install there
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$DEST" \
    "$(pin av)" "$(pin ffmpeg-python)" "$(pin future)" "$(pin diffusers)"

# -- 2. ffmpeg -----------------------------------------------------------------------------------
build_ffmpeg() {
    for tool in gcc make pkg-config dpkg-deb apt-get; do
        command -v "$tool" >/dev/null || { echo "building ffmpeg needs $tool: apt-get install it" >&2; exit 1; }
    done
    rm -rf "$WORK" && mkdir -p "$WORK/lists/partial" "$WORK/sources" "$WORK/tools"
    # This machine's own Debian sources, with their source packages too, in lists of our own.
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] || continue
        sed 's/^Types: deb$/Types: deb deb-src/' "$f" >"$WORK/sources/$(basename "$f")"
    done
    if [ -f /etc/apt/sources.list ]; then
        sed -n 's/^deb \(.*\)$/deb \1\ndeb-src \1/p' /etc/apt/sources.list >"$WORK/sources/main.list"
    fi
    local apt=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$WORK/sources"
               -o "Dir::State::Lists=$WORK/lists" -q)
    # The build's tools and headers are unpacked into $WORK, never installed.
    (cd "$WORK" && apt-get "${apt[@]}" update && apt-get "${apt[@]}" download nasm libx264-dev libffmpeg-nvenc-dev \
        && apt-get "${apt[@]}" source --download-only ffmpeg) >"$WORK/apt.log" 2>&1 \
        || { tail -20 "$WORK/apt.log" >&2; exit 1; }
    for deb in "$WORK"/*.deb; do dpkg-deb -x "$deb" "$WORK/tools"; done
    local usr=$WORK/tools/usr
    mkdir -p "$WORK/pkgconfig" "$WORK/x264"
    cp "$usr"/lib/x86_64-linux-gnu/libx264.a "$WORK/x264/"  # alone in its folder: linked statically
    sed "s|^prefix=.*|prefix=$usr|" "$usr/share/pkgconfig/ffnvcodec.pc" >"$WORK/pkgconfig/ffnvcodec.pc"
    printf 'Name: x264\nDescription: x264 (static)\nVersion: %s\nLibs: -L%s -lx264 -lpthread -lm -ldl\nCflags: -I%s\n' \
        "$(sed -n 's/^#define X264_POINTVER "\(.*\)"/\1/p' "$usr/include/x264_config.h")" \
        "$WORK/x264" "$usr/include" >"$WORK/pkgconfig/x264.pc"
    tar -xf "$WORK"/ffmpeg_*.orig.tar.xz -C "$WORK"
    cd "$WORK"/ffmpeg-*/
    # What media.py's command lines do with the benchmark's own media, and nothing else:
    # read MP4 (H.264, AAC) and WAV, raw frames and PCM through pipes; write MP4 (libx264 or
    # h264_nvenc, AAC), raw frames and PCM; the filters media.py builds (fps, crop, scale,
    # format, apad, atrim) and those ffmpeg adds (conversions, autorotate's).
    PATH="$usr/bin:$PATH" PKG_CONFIG_PATH="$WORK/pkgconfig" ./configure \
        --disable-everything --disable-autodetect --disable-doc --disable-ffplay --disable-ffprobe \
        --disable-avdevice --disable-postproc --disable-network --disable-debug --enable-gpl --enable-libx264 \
        --enable-ffnvcodec --enable-nvenc --enable-nvdec --enable-cuvid \
        --enable-protocol=file,pipe \
        --enable-demuxer=mov,wav,rawvideo,pcm_f32le,pcm_s16le \
        --enable-muxer=mp4,rawvideo,pcm_f32le,null \
        --enable-decoder=h264,aac,rawvideo,pcm_s16le,pcm_s24le,pcm_f32le,h264_cuvid \
        --enable-encoder=libx264,h264_nvenc,aac,rawvideo,pcm_f32le,wrapped_avframe \
        --enable-parser=h264,aac \
        --enable-bsf=h264_mp4toannexb,aac_adtstoasc,extract_extradata,null \
        --enable-hwaccel=h264_nvdec \
        --enable-filter=fps,crop,scale,format,aformat,apad,atrim,trim,aresample,anull,null,transpose,hflip,vflip,rotate,setpts,asetpts,copy,hwupload_cuda,hwdownload \
        >"$WORK/configure.log"
    PATH="$usr/bin:$PATH" make -j"$(nproc)" ffmpeg >"$WORK/make.log" 2>&1 \
        || { tail -20 "$WORK/make.log" >&2; exit 1; }
    strip ffmpeg
    cd - >/dev/null
    cp "$WORK"/ffmpeg-*/ffmpeg "$DEST/ffmpeg"
}

if ! "$DEST/ffmpeg" -hide_banner -encoders 2>/dev/null | grep -q libx264; then
    build_ffmpeg
fi
"$DEST/ffmpeg" -version | head -1

# -- sizes ---------------------------------------------------------------------------------------
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
carried=$(du -cb "$DEST"/* | tail -1 | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
ls -l "$DEST"
echo "carried $DEST: $(mib "$carried"); the tree that travels: $(mib "$tree"); together: $(mib $((carried + tree))) of 64 MiB"
