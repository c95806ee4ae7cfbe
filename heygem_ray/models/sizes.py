"""The networks' fixed sizes, apart from their code (no PyTorch here): a pack's
description (its crop geometry, its stages' shapes) reads them where no network runs, in
the driver and the job tasks. Each network's module defines its own names from these
(``models.wav2lip.FACE_SIZE`` is ``WAV2LIP_FACE``)."""

# warp (models/warp.py): the crop's side in pixels, mel columns per frame (125 ms at 80
# columns/s), and the mouth's height in the crop (models/warp.py's coordinates).
WARP_CROP = 160
WARP_WINDOW = 10
WARP_MOUTH_Y = 0.2

# Wav2Lip (models/wav2lip.py): the square face crop's side in pixels, and the channels of
# the audio embedding and of the face bottleneck.
WAV2LIP_FACE = 96
WAV2LIP_EMBED = 512

# MuseTalk 1.5 (models/musetalk.py): the face crop's side (32×32 latents), audio tokens per frame.
MUSETALK_CROP = 256
MUSETALK_POSITIONS = 50

# The files MuseTalk's networks are read from, inside its models/ folder as its download
# script lays it out (the folder holds others no MuseTalk 1.5 network reads: the v1 UNet,
# DWPose, a SyncNet, a face parser).
MUSETALK_FILES = {
    "unet_config": "musetalkV15/musetalk.json",
    "unet": "musetalkV15/unet.pth",
    "vae_config": "sd-vae/config.json",
    "vae": "sd-vae/diffusion_pytorch_model.bin",
    "whisper_config": "whisper/config.json",
    "whisper": "whisper/pytorch_model.bin",
    "whisper_features": "whisper/preprocessor_config.json",
}
